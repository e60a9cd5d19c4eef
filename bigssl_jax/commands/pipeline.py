"""`bigssl pipeline`: the main job, every stage on the embedded corpus (see `bigssl_jax.pipeline`).

    bigssl pipeline --preset=demo      # the small corpus (~2,500 utterances)
    bigssl pipeline --preset=smoke     # the tiny corpus, seconds
"""

import sys

from absl import flags

from bigssl_jax import pipeline
from bigssl_jax.commands import common_flags
from bigssl_jax.data import prepare, sources, synthetic_corpus

_PRESET = flags.DEFINE_enum(
    "preset", "demo", list(pipeline.PRESETS), "What to run: smoke (tiny corpus) or demo (small)."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the embedded corpus.")
_JOBS = flags.DEFINE_integer("jobs", 2, "Worker processes for corpus synthesis.")


def main(argv) -> int:
    """Runs the pipeline; user errors are one line on stderr and exit code 1."""
    if len(argv) > 1:
        print(f"pipeline: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 2
    try:
        return pipeline.run(
            _PRESET.value, data_dir=common_flags.data_dir(), seed=_SEED.value, jobs=_JOBS.value
        )
    except (
        synthetic_corpus.CorpusError,
        prepare.PrepareError,
        sources.SourceError,
        OSError,
    ) as error:
        print(f"pipeline: {error}", file=sys.stderr)
        return 1
