"""`bigssl make-corpus`: synthesise the embedded speech corpus (no internet, no system packages).

    bigssl make-corpus --preset=small --jobs=2
    bigssl make-corpus --preset=tiny --seed=1 --word_vocab_size=1000 --snr_db_range=0,20 \\
        --output_dir=/tmp/corpus

Writes `<output_dir>/corpus.json` and `<output_dir>/<split>/{manifest.jsonl,audio/*.flac}`
(see `bigssl_jax.data.synthetic_corpus`); the default output directory is
`<data_dir>/embedded/<preset>`. Running it again on a complete corpus does nothing.
"""

import sys
import time

from absl import flags

from bigssl_jax import paths
from bigssl_jax.commands import common_flags
from bigssl_jax.data import synthetic_corpus

_PRESET = flags.DEFINE_enum(
    "preset",
    "tiny",
    list(synthetic_corpus.PRESETS),
    "Corpus preset: tiny (CI), small, medium, closed (1,000 words, text-only sentences).",
)
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Where to write the corpus; default <data_dir>/embedded/<preset>."
)
_WORD_VOCAB_SIZE = flags.DEFINE_integer(
    "word_vocab_size", None, "Keep only sentences within the N most frequent words (difficulty)."
)
_SNR_DB_RANGE = flags.DEFINE_list(
    "snr_db_range", None, "min,max SNR in dB of the additive noise (default 5,25)."
)


def _snr_range(values: list[str] | None) -> tuple[float, float] | None:
    if values is None:
        return None
    try:
        low, high = (float(value) for value in values)
    except ValueError as error:
        raise synthetic_corpus.CorpusError(
            f"--snr_db_range wants two numbers 'min,max', got '{','.join(values)}'"
        ) from error
    if low > high:
        raise synthetic_corpus.CorpusError(f"--snr_db_range min {low} exceeds max {high}")
    return low, high


def main(argv) -> int:
    """Makes the corpus and prints a one-line summary."""
    if common_flags.JOBS.value < 1:
        print(
            f"make-corpus: --jobs must be at least 1, got {common_flags.JOBS.value}",
            file=sys.stderr,
        )
        return 2
    try:
        snr_db_range = _snr_range(_SNR_DB_RANGE.value)
    except synthetic_corpus.CorpusError as error:
        print(f"make-corpus: {error}", file=sys.stderr)
        return 2
    data_dir = common_flags.data_dir()
    output_dir = _OUTPUT_DIR.value or paths.embedded_corpus_dir(data_dir, _PRESET.value)
    start = time.perf_counter()
    try:
        info, made = synthetic_corpus.make_corpus(
            output_dir,
            preset=_PRESET.value,
            seed=common_flags.SEED.value,
            jobs=common_flags.JOBS.value,
            vocab_size=_WORD_VOCAB_SIZE.value,
            snr_db_range=snr_db_range,
        )
    except (synthetic_corpus.CorpusError, OSError) as error:
        print(f"make-corpus: {error}", file=sys.stderr)
        return 1
    splits = info["splits"]
    counts = ", ".join(f"{name} {split['num_utterances']}" for name, split in splits.items())
    hours = sum(split["hours"] for split in splits.values())
    status = "made" if made else "already complete, nothing to do:"
    print(
        f"make-corpus: {status} {output_dir} ({_PRESET.value}, "
        f"seed {common_flags.SEED.value}): {counts} "
        f"utterances, {hours:.2f} h in {time.perf_counter() - start:.1f} s"
    )
    return 0
