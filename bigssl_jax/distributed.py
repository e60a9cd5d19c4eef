"""Multi-process JAX: when `jax.distributed.initialize` runs, and with which arguments.

One process per host (TPU VM worker, GPU node, or one per GPU) runs the same `bigssl`
command; `jax.distributed.initialize` connects them so that `jax.devices()` lists every
device of the job and each process feeds and checkpoints its own shards.

Gating is explicit: nothing is initialised unless the command runs with `--distributed`
or `BIGSSL_DISTRIBUTED=1` (the launch scripts under `launch/` set it). A single-host run
never waits for a coordinator.

Arguments, each from its flag, else the environment, else auto-detected by JAX:

  =====================  =======================  ======================================
  flag                   environment              auto-detected on
  =====================  =======================  ======================================
  --coordinator_address  JAX_COORDINATOR_ADDRESS  TPU VMs (metadata), SLURM, Open MPI
  --num_processes        BIGSSL_NUM_PROCESSES     TPU VMs, SLURM (SLURM_NTASKS), Open MPI
  --process_id           BIGSSL_PROCESS_ID        TPU VMs, SLURM (SLURM_PROCID), Open MPI
  =====================  =======================  ======================================

On a TPU pod slice all three are left unset. A plain multi-node GPU launch sets all three
(`launch/gpu_cluster.sh`); under `srun` JAX reads SLURM's variables.

Feeding the trainer from several hosts (`MultiHostIterator` around each host's iterator):

  * hosts bucket their own examples, so their batches are padded to the longest shape
    across processes before `jax.make_array_from_process_local_data` assembles them;
  * an input position differs per process, but Orbax's JSON checkpoint items are written by
    the primary process only: `all_processes_json` gathers every process's position so that
    the saved meta holds all of them and each process restores its own.
"""

import dataclasses
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from absl import logging

ENABLE_ENV = "BIGSSL_DISTRIBUTED"
COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "BIGSSL_NUM_PROCESSES"
PROCESS_ID_ENV = "BIGSSL_PROCESS_ID"
_TRUE = ("1", "true", "yes", "on")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistributedConfig:
    """Arguments of `jax.distributed.initialize`; None leaves one to JAX's auto-detection.

    Attributes:
      coordinator_address: 'host:port' of process 0's coordination service.
      num_processes: processes in the job.
      process_id: this process's index in [0, num_processes).
      initialization_timeout: seconds to wait for every process to connect.
    """

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    initialization_timeout: int = 300

    def __post_init__(self):
        given = (self.num_processes, self.process_id)
        if None not in given and not 0 <= self.process_id < self.num_processes:
            raise ValueError(
                f"process_id {self.process_id} is not in [0, num_processes={self.num_processes})"
            )

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments for `jax.distributed.initialize` (unset ones left out)."""
        values = {
            "coordinator_address": self.coordinator_address,
            "num_processes": self.num_processes,
            "process_id": self.process_id,
        }
        given = {k: v for k, v in values.items() if v is not None}
        return {**given, "initialization_timeout": self.initialization_timeout}


def _int_or_none(text: str | None, name: str) -> int | None:
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {text!r}") from None


def is_enabled(flag: bool | None, environ: Mapping[str, str] | None = None) -> bool:
    """Whether to initialise: `flag` when given, else `$BIGSSL_DISTRIBUTED` is true-ish."""
    environ = os.environ if environ is None else environ
    if flag is not None:
        return flag
    return environ.get(ENABLE_ENV, "").strip().lower() in _TRUE


def resolve_config(
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> DistributedConfig:
    """Flags first, then the environment (see the module docstring); None stays unset.

    Raises:
      ValueError: a value is malformed or the process id is out of range.
    """
    environ = os.environ if environ is None else environ
    if num_processes is None:
        num_processes = _int_or_none(environ.get(NUM_PROCESSES_ENV), NUM_PROCESSES_ENV)
    if process_id is None:
        process_id = _int_or_none(environ.get(PROCESS_ID_ENV), PROCESS_ID_ENV)
    return DistributedConfig(
        coordinator_address=coordinator_address or environ.get(COORDINATOR_ENV) or None,
        num_processes=num_processes,
        process_id=process_id,
    )


def initialize(config: DistributedConfig) -> None:
    """Calls `jax.distributed.initialize` once (a second call is a no-op).

    Must run before anything touches a JAX backend (`jax.devices()`, a jitted call).
    """
    import jax

    if jax.distributed.is_initialized():
        return
    kwargs = config.kwargs()
    logging.info("jax.distributed.initialize(%s)", kwargs)
    jax.distributed.initialize(**kwargs)
    logging.info(
        "process %d of %d: %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def maybe_initialize(
    *,
    enabled: bool | None = None,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> bool:
    """Initialises multi-process JAX when enabled (flag, else `$BIGSSL_DISTRIBUTED`).

    Args:
      enabled: `--distributed`; None defers to the environment.
      coordinator_address: `--coordinator_address`; None: environment / auto-detection.
      num_processes: `--num_processes`; None: environment / auto-detection.
      process_id: `--process_id`; None: environment / auto-detection.
      environ: the environment (default `os.environ`).

    Returns:
      Whether `jax.distributed.initialize` was called.
    """
    if not is_enabled(enabled, environ):
        return False
    initialize(
        resolve_config(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            environ=environ,
        )
    )
    return True


def all_processes_json(value: Any) -> list[Any]:
    """Every process's JSON-able `value`, indexed by process (a collective: all must call).

    Encodes each value as UTF-8 bytes, pads them to the longest, and all-gathers them with
    `multihost_utils.process_allgather`. In a single process: `[value]`.
    """
    import jax
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return [value]
    data = np.frombuffer(json.dumps(value, sort_keys=True).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.int32(data.size))
    padded = np.zeros(int(np.max(lengths)), np.uint8)
    padded[: data.size] = data
    gathered = multihost_utils.process_allgather(padded)
    return [
        json.loads(bytes(row[:length]).decode())
        for row, length in zip(gathered, lengths, strict=True)
    ]


class MultiHostIterator(Iterator):
    """Wraps one host's batch iterator so that every process agrees on shapes and positions.

    * Shapes: hosts bucket their own examples, so at one step their batches may have
      different audio (and target) lengths; each batch is padded to the longest across
      processes (`feature_converters.pad_batch`) before `make_array_from_process_local_data`.
    * Positions: `get_state` returns every process's position (`all_processes_json`), so
      the checkpoint's JSON meta, written by the primary process alone, holds them all;
      `set_state` takes this process's entry.

    In a single process it passes batches and states through unchanged. `__next__` and
    `get_state` are collectives: every process calls them at the same steps (the trainer
    does).

    Args:
      iterator: this host's batches with `get_state` / `set_state`
        (`input_pipeline.InputIterator`).
    """

    def __init__(self, iterator: Any):
        self.iterator = iterator

    def __next__(self) -> dict:
        import jax

        batch = next(self.iterator)
        if jax.process_count() == 1:
            return batch
        from jax.experimental import multihost_utils

        from bigssl_jax import feature_converters

        has_targets = "targets" in batch
        lengths = [batch["audio"].shape[1], batch["targets"].shape[1] if has_targets else 0]
        longest = np.max(multihost_utils.process_allgather(np.asarray(lengths, np.int32)), 0)
        return feature_converters.pad_batch(
            batch,
            audio_length=int(longest[0]),
            target_length=int(longest[1]) if has_targets else None,
        )

    def get_state(self) -> dict:
        """{'processes': [state of process 0, state of process 1, ...]}."""
        return {"processes": all_processes_json(self.iterator.get_state())}

    def set_state(self, state: dict) -> None:
        """Restores this process's entry of a `get_state` value.

        Raises:
          ValueError: the state was saved by a job with another number of processes.
        """
        import jax

        states = state["processes"]
        if len(states) != jax.process_count():
            raise ValueError(
                f"input state saved by {len(states)} processes, restored by "
                f"{jax.process_count()}: resume with the same number of hosts"
            )
        self.iterator.set_state(states[jax.process_index()])
