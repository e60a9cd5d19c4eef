"""`bigssl pipeline`: the main job, every stage on the embedded corpus (`bigssl_jax.jobs.pipeline`).

bigssl pipeline --preset=demo      # the data-efficiency claim on the closed corpus
bigssl pipeline --preset=smoke     # the tiny corpus, a few steps per stage (minutes)
bigssl pipeline --preset=demo --publish=docs/results/demo.json   # a finished run's record

`--publish` runs nothing: it writes a finished run's `run.json` (error rates in %, the claims
recomputed from its evaluations) to the path given.
"""

import sys

from absl import flags

from bigssl_jax.commands import common_flags
from bigssl_jax.jobs import pipeline, stage_processes

_PRESET = flags.DEFINE_enum(
    "preset",
    "demo",
    list(pipeline.PRESETS),
    "smoke (tiny corpus, minutes), demo (the claim, closed corpus), small_demo or small.",
)
_PUBLISH = flags.DEFINE_string(
    "publish", None, "Write the finished run's record (rates in %) to this path; run nothing."
)


def main(argv) -> int:
    """Runs the pipeline; user errors are one line on stderr and exit code 1."""
    try:
        if _PUBLISH.value:
            return pipeline.publish(_PRESET.value, common_flags.data_dir(), _PUBLISH.value)
        with stage_processes.forwarding_sigterm():
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
