"""`bigssl pipeline`: the main job, every stage on the embedded corpus (see `bigssl_jax.pipeline`).

bigssl pipeline --preset=demo      # the small corpus (~2,500 utterances)
bigssl pipeline --preset=smoke     # the tiny corpus, a few steps per stage (minutes)
"""

import sys

from absl import flags

from bigssl_jax import pipeline
from bigssl_jax.commands import common_flags

_PRESET = flags.DEFINE_enum(
    "preset",
    "demo",
    list(pipeline.PRESETS),
    "smoke (tiny corpus, minutes), demo (small corpus, ~42 min) or small (~2.5 h).",
)


def main(argv) -> int:
    """Runs the pipeline; user errors are one line on stderr and exit code 1."""
    try:
        return pipeline.run(
            _PRESET.value,
            data_dir=common_flags.data_dir(),
            seed=common_flags.SEED.value,
            # Corpus synthesis output does not depend on --jobs.
            jobs=common_flags.jobs_or_all_cores(),
        )
    except pipeline.USER_ERRORS as error:
        print(f"pipeline: {error}", file=sys.stderr)
        return 1
