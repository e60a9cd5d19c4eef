"""Flags every `bigssl` command shares, defined once (absl flags are process-global).

`bigssl_jax.cli` imports this module before any command, so a command reads e.g.
`common_flags.data_dir()` without defining `--data_dir` itself.
"""

import os
import pathlib

from absl import flags

from bigssl_jax import paths

GIN_FILE = flags.DEFINE_multi_string(
    "gin_file", [], "Gin file to parse (repeatable); also searched under the repo's gin/."
)
GIN_BINDINGS = flags.DEFINE_multi_string(
    "gin_bindings", [], "Gin binding such as 'EncoderConfig.num_layers = 4' (repeatable)."
)
MODEL_DIR = flags.DEFINE_string(
    "model_dir", None, "Run directory: checkpoints, summaries and the operative gin config."
)
JOBS = flags.DEFINE_integer(
    "jobs", 1, "Worker processes, for the commands that use them (outputs never depend on it)."
)
SEED = flags.DEFINE_integer("seed", 0, "Random seed of what the command makes.")
CHECKPOINT = flags.DEFINE_string(
    "checkpoint",
    None,
    "A trained run: its directory, its checkpoints/ directory or one step directory.",
)
BEAM_SIZE = flags.DEFINE_integer(
    "beam_size", None, "Decode with this many hypotheses (default: the run's DecodingConfig)."
)
LM_CHECKPOINT = flags.DEFINE_string(
    "lm_checkpoint",
    None,
    "A `bigssl train-lm` run (same vocabulary) to shallow-fuse into the beam search.",
)
LM_WEIGHT = flags.DEFINE_float(
    "lm_weight", None, "Shallow-fusion weight of --lm_checkpoint (default: the run's)."
)
VERBOSE = flags.DEFINE_bool(
    "verbose",
    False,
    "Also show the libraries' log lines and native start-up messages on the console "
    "(otherwise only in <model_dir>/bigssl.log).",
)
DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Data directory; default $BIGSSL_DATA_DIR, else ./bigssl_data."
)


def gin_overrides(*bindings: str) -> tuple[list[str], list[str]]:
    """(--gin_file, --gin_bindings + `bindings`): what a command that applies a trained run
    parses on top of the run's own config (`gin_utils.run_model(overrides=...)`)."""
    return list(GIN_FILE.value), [*GIN_BINDINGS.value, *bindings]


def jobs_or_all_cores() -> int:
    """`--jobs` if given, else every core: for commands whose outputs do not depend on it."""
    return JOBS.value if JOBS.present else os.cpu_count() or 1


def data_dir() -> pathlib.Path:
    """`--data_dir`, else `paths.default_data_dir()`."""
    return pathlib.Path(DATA_DIR.value) if DATA_DIR.value else paths.default_data_dir()


# Multi-process JAX (see bigssl_jax/distributed.py): off unless asked for.
DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    None,
    "Call jax.distributed.initialize before the command (default: $BIGSSL_DISTRIBUTED).",
)
COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address",
    None,
    "host:port of process 0 (default: $JAX_COORDINATOR_ADDRESS, else auto-detected).",
)
NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Processes in the job (default: $BIGSSL_NUM_PROCESSES, else auto)."
)
PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index (default: $BIGSSL_PROCESS_ID, else auto)."
)


def maybe_initialize_distributed() -> bool:
    """`distributed.maybe_initialize` with the flags above; whether it initialised."""
    from bigssl_jax import distributed

    return distributed.maybe_initialize(
        enabled=DISTRIBUTED.value,
        coordinator_address=COORDINATOR_ADDRESS.value,
        num_processes=NUM_PROCESSES.value,
        process_id=PROCESS_ID.value,
    )
