"""`bigssl vocab`: train the sentencepiece vocabulary of a prepared corpus.

    bigssl vocab --corpus=embedded_tiny
    bigssl vocab --corpus=librispeech --split=train_960 --vocab_size=1024

Trains a unigram model on the normalised transcripts of one labeled split (see
`bigssl_tasks.vocab`) and writes `<data_dir>/vocab/<corpus>_<vocab_size>.model`.
`--vocab_size` is a soft limit: a corpus too small for that many pieces gets a smaller
vocabulary (the count is printed) and keeps the file name of the size asked for.
"""

import sys
import time

from absl import flags

from bigssl_jax import paths
from bigssl_jax.commands import common_flags
from bigssl_jax.data import registry as registry_lib

_CORPUS = flags.DEFINE_string("corpus", None, "Registered corpus name (see registry.json).")
_SPLIT = flags.DEFINE_string("split", "labeled", "Labeled split whose transcripts to use.")
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 1024, "Pieces asked for (a soft limit).")


def main(argv) -> int:
    """Trains the vocabulary and prints where it went and how many pieces it has."""
    if not _CORPUS.value:
        print("vocab: --corpus is required", file=sys.stderr)
        return 2
    if _VOCAB_SIZE.value < 4:
        print(f"vocab: --vocab_size must be at least 4, got {_VOCAB_SIZE.value}", file=sys.stderr)
        return 2
    data_dir = common_flags.data_dir()
    registry = registry_lib.CorpusRegistry(paths.registry_path(data_dir))
    try:
        info = registry.split(_CORPUS.value, _SPLIT.value)
    except (registry_lib.CorpusNotFoundError, ValueError) as error:
        print(f"vocab: {error}", file=sys.stderr)
        return 1
    if not info.labeled:
        labeled = [name for name, s in registry.splits(_CORPUS.value).items() if s.labeled]
        print(
            f"vocab: split '{_SPLIT.value}' of corpus '{_CORPUS.value}' has no transcripts; "
            f"pass a labeled split with --split (labeled: {', '.join(labeled) or 'none'})",
            file=sys.stderr,
        )
        return 1

    from bigssl_tasks import vocab

    start = time.perf_counter()
    output = vocab.vocab_path(data_dir, _CORPUS.value, _VOCAB_SIZE.value)
    try:
        texts = vocab.read_transcripts(info.files)
        size = vocab.train_vocabulary(texts, output, vocab_size=_VOCAB_SIZE.value)
    except (OSError, ValueError, RuntimeError) as error:
        print(f"vocab: {error}", file=sys.stderr)
        return 1
    note = (
        ""
        if size == _VOCAB_SIZE.value
        else (f" (asked {_VOCAB_SIZE.value}; the corpus supports fewer)")
    )
    print(
        f"vocab: wrote {output}: {size} pieces{note} from {len(texts)} transcripts of "
        f"{_CORPUS.value}/{_SPLIT.value} in {time.perf_counter() - start:.1f} s"
    )
    return 0
