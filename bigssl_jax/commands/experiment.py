"""`bigssl experiment <name>`: experiments built from the main job's stages.

    bigssl experiment data-efficiency --preset=demo --fractions=0.05,0.1,0.25,1.0 --seeds=0,1
    bigssl experiment data-efficiency --preset=smoke --fractions=0.5,1.0   # minutes on a CPU

Experiments:
  data-efficiency  supervised only vs pre-trained + fine-tuned vs pre-trained + self-trained +
                   fine-tuned at several labeled fractions (`bigssl_jax.jobs.data_efficiency`).
                   `--seeds` are the training seeds of every arm; `--seed` is the data seed
                   (of the synthetic corpus, as for `bigssl pipeline`, and of the labeled subsets).

Exit codes: 0 done; 1 a failed stage (one line on stderr naming its log); 2 no or an unknown
experiment named, or a bad flag value (one line on stderr).
"""

import sys

from absl import flags

from bigssl_jax.commands import common_flags
from bigssl_jax.jobs import data_efficiency, pipeline, stage_processes

TAKES_ARGUMENTS = True  # the experiment's name

EXPERIMENTS = ("data-efficiency",)

_PRESET = flags.DEFINE_enum(
    "preset", "demo", list(pipeline.PRESETS), "Corpus, gins and step budgets (pipeline presets)."
)
_FRACTIONS = flags.DEFINE_list(
    "fractions", ["0.05", "0.1", "0.25", "1.0"], "Labeled shares of the labeled pool, in (0, 1]."
)
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Training seeds of every arm.")
_DRAWS = flags.DEFINE_list(
    "draws", ["0"], "Random labeled subsets of each fraction below 1 (0: the data seed's)."
)


def _parse(values, kind, name: str) -> list:
    """`values` converted by `kind`; ValueError names the flag and the bad value."""
    parsed = []
    for value in values:
        try:
            parsed.append(kind(value))
        except ValueError:
            raise ValueError(f"--{name}: '{value}' is not a {kind.__name__}") from None
    return parsed


def _flag_values() -> tuple[list[float], list[int], list[int]]:
    """(fractions, seeds, draws) of the flags; ValueError (a usage error) names a bad one."""
    fractions = _parse(_FRACTIONS.value, float, "fractions")
    if not fractions or not all(0.0 < f <= 1.0 for f in fractions):
        raise ValueError(f"--fractions must be in (0, 1], got {','.join(_FRACTIONS.value)}")
    seeds = _parse(_SEEDS.value, int, "seeds")
    draws = _parse(_DRAWS.value, int, "draws")
    if not seeds or not draws:
        raise ValueError("--seeds and --draws must name at least one each")
    return fractions, seeds, draws


def _data_efficiency(fractions: list[float], seeds: list[int], draws: list[int]) -> int:
    return data_efficiency.run(
        _PRESET.value,
        data_dir=common_flags.data_dir(),
        fractions=fractions,
        seeds=seeds,
        draws=draws,
        data_seed=common_flags.SEED.value,
        # Corpus synthesis output does not depend on --jobs.
        jobs=common_flags.jobs_or_all_cores(),
    )


def main(argv) -> int:
    """Runs the experiment named by the one positional argument."""
    if len(argv) != 2:
        print(
            f"experiment: usage: bigssl experiment {{{','.join(EXPERIMENTS)}}} [flags]",
            file=sys.stderr,
        )
        return 2
    if argv[1] not in EXPERIMENTS:
        print(
            f"experiment: unknown experiment '{argv[1]}' (known: {', '.join(EXPERIMENTS)})",
            file=sys.stderr,
        )
        return 2
    try:
        flag_values = _flag_values()
    except ValueError as error:
        print(f"experiment: {error}", file=sys.stderr)
        return 2
    try:
        with stage_processes.forwarding_sigterm():
            return _data_efficiency(*flag_values)
    except (ValueError, *pipeline.USER_ERRORS) as error:
        print(f"experiment: {error}", file=sys.stderr)
        return 1
