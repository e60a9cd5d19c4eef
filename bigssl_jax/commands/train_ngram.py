"""`bigssl train-ngram`: count a token n-gram LM for fast shallow fusion.

    bigssl train-ngram --text_file=<data_dir>/embedded/closed/text_only.txt \\
        --corpus=embedded_closed --vocab_size=64 --order=5 --model_dir=/runs/ngram
    bigssl pseudo-label --checkpoint=/runs/teacher --beam_size=4 \\
        --lm_checkpoint=/runs/ngram --lm_weight=0.5 ...

Reads sentences (one a line, normalised like transcripts), tokenises them with the corpus's
sentencepiece model (`<data_dir>/vocab/<corpus>_<vocab_size>.model`, or `--vocabulary`), and
writes the run directory: `ngram_lm.npz` (`bigssl_jax.decoding.ngram_lm`), `vocabulary.model`
(the vocabulary it counted in, so that a model of another vocabulary is refused at fusion) and
`ngram.json` (order, sentences, tokens, histories, and the per-token perplexity of
`--eval_text_file` if given). `--lm_checkpoint=<that dir>` fuses it wherever the Transformer LM
of `bigssl train-lm` fuses (evaluate, transcribe, pseudo-label). A run dir that is complete
(`ngram.json` is written last) is left as it is.
"""

import json
import math
import os
import pathlib
import shutil
import sys
import time

from absl import flags

from bigssl_jax.commands import common_flags
from bigssl_jax.inference import NGRAM_FILE, VOCABULARY_FILE

INFO_FILE = "ngram.json"

_TEXT_FILE = flags.DEFINE_multi_string("text_file", None, "Sentences to count, one a line.")
_EVAL_TEXT_FILE = flags.DEFINE_string(
    "eval_text_file", None, "Held-out sentences whose per-token perplexity is reported."
)
_CORPUS = flags.DEFINE_string("corpus", None, "Corpus whose vocabulary tokenises the text.")
_VOCAB_SIZE = flags.DEFINE_integer(
    "vocab_size", 64, "Token ids V: the ASR model's VOCAB_SIZE (at least the pieces it has)."
)
_VOCABULARY = flags.DEFINE_string("vocabulary", None, "A sentencepiece .model (not --corpus).")
_ORDER = flags.DEFINE_integer("order", 5, "n: a history holds n - 1 tokens.")


def read_sentences(path: os.PathLike) -> list[str]:
    """The normalised, non-empty lines of a UTF-8 text file."""
    from bigssl_tasks import vocab

    lines = pathlib.Path(path).read_text(encoding="utf-8").splitlines()
    return [text for text in (vocab.normalize_text(line) for line in lines) if text]


def _vocabulary_file() -> pathlib.Path:
    if _VOCABULARY.value:
        return pathlib.Path(_VOCABULARY.value)
    from bigssl_tasks import vocab

    return pathlib.Path(vocab.vocab_path(common_flags.data_dir(), _CORPUS.value, _VOCAB_SIZE.value))


def train(model_dir: pathlib.Path, vocabulary: pathlib.Path) -> dict:
    """Counts the text into `model_dir` and returns what `ngram.json` records."""
    import sentencepiece as spm

    from bigssl_jax.decoding import ngram_lm

    processor = spm.SentencePieceProcessor(model_file=str(vocabulary))
    texts = [text for path in _TEXT_FILE.value for text in read_sentences(path)]
    if not texts:
        raise ValueError(f"no sentences in {', '.join(_TEXT_FILE.value)}")
    if processor.get_piece_size() > _VOCAB_SIZE.value:
        raise ValueError(
            f"{vocabulary} has {processor.get_piece_size()} pieces, over --vocab_size "
            f"{_VOCAB_SIZE.value}"
        )
    sequences = processor.encode(texts)
    lm = ngram_lm.NgramLanguageModel.estimate(sequences, _VOCAB_SIZE.value, order=_ORDER.value)
    model_dir.mkdir(parents=True, exist_ok=True)
    lm.save(model_dir / NGRAM_FILE)
    shutil.copyfile(vocabulary, model_dir / VOCABULARY_FILE)
    info = {
        "order": _ORDER.value,
        "text_files": [os.fspath(p) for p in _TEXT_FILE.value],
        "sentences": len(texts),
        "tokens": sum(len(s) + 1 for s in sequences),
        "histories": int(lm.keys.shape[0]),
        "vocab_size": _VOCAB_SIZE.value,
        "pieces": processor.get_piece_size(),
    }
    if _EVAL_TEXT_FILE.value:
        held_out = processor.encode(read_sentences(_EVAL_TEXT_FILE.value))
        log_prob = lm.score(held_out).sum()
        info["eval_text_file"] = _EVAL_TEXT_FILE.value
        info["eval_perplexity"] = math.exp(-log_prob / sum(len(s) + 1 for s in held_out))
    return info


def main(argv) -> int:
    """Counts the LM and prints a one-line summary."""
    model_dir = common_flags.MODEL_DIR.value
    if not model_dir or not _TEXT_FILE.value:
        print("train-ngram: --model_dir and --text_file are required", file=sys.stderr)
        return 2
    if not (_VOCABULARY.value or _CORPUS.value):
        print("train-ngram: pass --corpus (with --vocab_size) or --vocabulary", file=sys.stderr)
        return 2
    model_dir = pathlib.Path(model_dir)
    if (model_dir / INFO_FILE).exists():
        print(f"train-ngram: {model_dir} is complete, nothing to do")
        return 0
    vocabulary = _vocabulary_file()
    if not vocabulary.is_file():
        print(f"train-ngram: no vocabulary at {vocabulary} (run `bigssl vocab`)", file=sys.stderr)
        return 1
    start = time.perf_counter()
    try:
        info = train(model_dir, vocabulary)
    except (OSError, ValueError) as error:
        print(f"train-ngram: {error}", file=sys.stderr)
        return 1
    (model_dir / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    perplexity = (
        f", held-out perplexity {info['eval_perplexity']:.2f}" if "eval_perplexity" in info else ""
    )
    print(
        f"train-ngram: wrote {model_dir}: order {info['order']}, {info['histories']} histories "
        f"from {info['sentences']} sentences{perplexity} in {time.perf_counter() - start:.1f} s"
    )
    return 0
