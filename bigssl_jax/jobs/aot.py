"""Ahead-of-time compilation of a train step for a TPU topology, without a TPU.

With `libtpu` installed (`pip install -e ".[tpu-aot]"`), XLA's TPU compiler runs on any host:
`jax.experimental.topologies.get_topology_desc` gives compile-only device objects for a named
slice, a mesh is built on them as on real chips, and the full train step of any audio
`TrainModel` (BEST-RQ, wav2vec 2.0, w2v-BERT, CTC, RNN-T...: `train_step.make_train_step`,
forward, backward, optimizer update; parameters and optimizer state sharded by the
logical-axis rules, the batch sharded, the state donated) is lowered from
`jax.ShapeDtypeStruct`s and compiled. Nothing is allocated. The compiled program reports
per-device memory (`memory_analysis()`) and XLA's cost model (`cost_analysis()`), so an
out-of-memory configuration is caught before a job queues.

Topology names (`parse_topology`):

  ======  =======================  ============  ===========  ==========================
  family  name counts              HBM per chip  bf16 peak    example
  ======  =======================  ============  ===========  ==========================
  v4      TensorCores (2 / chip)   32 GiB        275 TFLOP/s  v4-64 = 32 chips, 2x4x4
  v5p     TensorCores (2 / chip)   95 GiB        459 TFLOP/s  v5p-256 = 128 chips, 4x4x8
  v5e     chips (1 core)           16 GiB        197 TFLOP/s  v5e-256 = 256 chips, 16x16
  v6e     chips (1 core)           32 GiB        918 TFLOP/s  v6e-64 = 64 chips, 8x8
  ======  =======================  ============  ===========  ==========================

A raw topology such as `v4:2x4x4` is accepted too. Devices: v4 and v5p chips have two
TensorCores that JAX drives as one "megacore" device, so we ask libtpu for the 'megacore' chip
configuration and get one device per chip (the default configuration of v4 gives one device per
core, two per chip, each with half the HBM). Then one device = one chip, `memory_analysis()` is
per chip, and it is compared with the chip's HBM above.

Caveat on XLA's FLOP count: the cost model counts the body of a while loop once, so with
`scan_layers` (the default) its 'flops' covers one Conformer block of the stack, not all of
them. Use the analytic count (`bigssl_jax.jobs.flops`) for utilisation; XLA's 'optimal_seconds' has
the same limitation.
"""

import dataclasses
import importlib.util
import math
import os
import re
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import topologies
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bigssl_jax import optimizers, partitioning, train_step
from bigssl_jax.jobs import flops as flops_lib
from bigssl_jax.layers import frontend
from bigssl_jax.models import base, best_rq, ctc_model
from bigssl_jax.models import encoder as encoder_lib

GIB = 2**30
SAMPLE_RATE = 16000
INSTALL_HINT = 'libtpu is not installed: pip install -e ".[tpu-aot]"'


@dataclasses.dataclass(frozen=True)
class TpuFamily:
    """A TPU generation as the topology names count it.

    Attributes:
      hbm_bytes: HBM per chip.
      cores_per_name_unit: 2 where names count TensorCores (v4-8 = 4 chips), 1 for chips.
      torus_dims: 3 for a 3-D torus (v4, v5p), 2 for a 2-D one (v5e, v6e).
      megacore: the chip's cores form one JAX device.
      peak_bf16_flops: the chip's published dense bfloat16 peak, FLOP/s.
    """

    hbm_bytes: int
    cores_per_name_unit: int
    torus_dims: int
    megacore: bool
    peak_bf16_flops: float


TPU_FAMILIES = {
    "v4": TpuFamily(32 * GIB, 2, 3, True, 275e12),
    "v5p": TpuFamily(95 * GIB, 2, 3, True, 459e12),
    "v5e": TpuFamily(16 * GIB, 1, 2, False, 197e12),
    "v6e": TpuFamily(32 * GIB, 1, 2, False, 918e12),
}


@dataclasses.dataclass(frozen=True)
class TpuTopology:
    """One TPU slice (or several identical ones).

    Attributes:
      name: the user-facing name ('v4-64' or 'v4:2x4x4').
      family: 'v4', 'v5p', 'v5e' or 'v6e'.
      chip_shape: chips along each torus axis, e.g. (2, 4, 4).
      num_slices: identical slices joined over the data-center network.
    """

    name: str
    family: str
    chip_shape: tuple[int, ...]
    num_slices: int = 1

    @property
    def topology_name(self) -> str:
        """libtpu's name of one slice, e.g. 'v4:2x4x4'."""
        return f"{self.family}:{'x'.join(map(str, self.chip_shape))}"

    @property
    def chips_per_slice(self) -> int:
        return math.prod(self.chip_shape)

    @property
    def num_chips(self) -> int:
        return self.chips_per_slice * self.num_slices

    @property
    def hbm_bytes_per_chip(self) -> int:
        return TPU_FAMILIES[self.family].hbm_bytes


def chip_shape(num_chips: int, torus_dims: int) -> tuple[int, ...]:
    """The standard slice shape of `num_chips` chips (a power of two).

    3-D: 4 chips are 2x2x1; from 2x2x2 on, the first of the smallest axes counted from the
    end doubles (2x2x4, 2x4x4, 4x4x4, 4x4x8, ...), as Cloud TPU lays out v4 and v5p slices.
    2-D: 1x1, 1x2, 2x2, 2x4, 4x4, ... 16x16.
    """
    if num_chips < 1 or num_chips & (num_chips - 1):
        raise ValueError(f"{num_chips} chips is not a power of two")
    if torus_dims == 3 and num_chips < 4:
        raise ValueError(f"a 3-D slice has at least 4 chips, got {num_chips}")
    if torus_dims == 3 and num_chips == 4:
        return (2, 2, 1)
    shape = [2, 2, 2] if torus_dims == 3 else [1, 1]
    while math.prod(shape) < num_chips:
        smallest = min(shape)
        index = max(i for i, size in enumerate(shape) if size == smallest)
        shape[index] *= 2
    return tuple(shape)


def parse_topology(name: str, num_slices: int = 1) -> TpuTopology:
    """Parses 'v4-64', 'v5p-256', 'v5e-256', 'v6e-64' or a raw 'v4:2x4x4'.

    Args:
      name: the topology name (see the module docstring for what the number counts).
      num_slices: identical slices.

    Returns:
      The topology.

    Raises:
      ValueError: for an unknown family or a count that is not a standard slice.
    """
    raw = re.fullmatch(r"(v\w+):(\d+(?:x\d+)+)", name)
    named = re.fullmatch(r"(v\w+)-(\d+)", name)
    family = (raw or named).group(1) if (raw or named) else None
    if family not in TPU_FAMILIES:
        raise ValueError(
            f"unknown TPU topology {name!r}: expected <family>-<count> or <family>:<AxBxC> "
            f"with family one of {sorted(TPU_FAMILIES)}"
        )
    spec = TPU_FAMILIES[family]
    if raw:
        shape = tuple(int(size) for size in raw.group(2).split("x"))
        if len(shape) != spec.torus_dims:
            raise ValueError(f"{name!r}: {family} slices have {spec.torus_dims} axes")
    else:
        count = int(named.group(2))
        if count % spec.cores_per_name_unit:
            raise ValueError(f"{name!r}: {family} names count TensorCores, 2 per chip")
        try:
            shape = chip_shape(count // spec.cores_per_name_unit, spec.torus_dims)
        except ValueError as error:
            raise ValueError(f"{name!r} is not a standard slice: {error}") from None
    return TpuTopology(name, family, shape, num_slices)


def _quiet_libtpu_env(topology: TpuTopology) -> None:
    """Environment for compile-only libtpu: no TPU host discovery, no lock, no log noise.

    libtpu otherwise warns that it cannot find TPU worker hostnames / accelerator type (it looks
    for a TPU VM's metadata) and takes /tmp/libtpu_lockfile, which would keep two compiles (or a
    compile and a test) from running side by side. Values already set are kept.
    """
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    units = topology.chips_per_slice * TPU_FAMILIES[topology.family].cores_per_name_unit
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{topology.family}-{units}")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def libtpu_available() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def topology_devices(topology: TpuTopology) -> list[Any]:
    """Compile-only device objects of the topology, one per chip.

    Raises:
      RuntimeError: if libtpu is not installed (the message says how to install it).
    """
    if not libtpu_available():
        raise RuntimeError(INSTALL_HINT)
    _quiet_libtpu_env(topology)
    spec = TPU_FAMILIES[topology.family]
    # One host per slice: the host split changes only which process feeds which chip, not
    # the compiled program, and it keeps every chip of a slice in one mesh granule.
    host_bounds = topology.chip_shape + (1,) * (3 - len(topology.chip_shape))
    description = topologies.get_topology_desc(
        platform="tpu",
        topology_name=topology.topology_name,
        chip_config_name="megacore" if spec.megacore else "default",
        chips_per_host_bounds=host_bounds,
        num_slices=topology.num_slices,
    )
    return list(description.devices)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompileConfig:
    """What `bigssl compile` compiles (mesh gins under gin/mesh/tpu/ bind these).

    Attributes:
      topology: TPU topology name (see `parse_topology`).
      num_slices: identical slices (multi-slice over DCN).
      per_chip_batch_size: utterances per chip; the global batch is this times the chips.
      audio_seconds: length of every utterance (the pre-training crop).
      target_length: target tokens per utterance for labeled (fine-tuning) models.
    """

    topology: str = "v4-8"
    num_slices: int = 1
    per_chip_batch_size: int = 8
    audio_seconds: float = 16.0
    target_length: int = 128


def _with_shardings(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(
        lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s), tree, shardings
    )


def abstract_batch(
    mesh: jax.sharding.Mesh, batch_size: int, num_samples: int, target_length: int = 0
) -> dict[str, jax.ShapeDtypeStruct]:
    """The train batch (`feature_converters` layout) as `ShapeDtypeStruct`s sharded on B.

    Args:
      mesh: the device mesh.
      batch_size: B, the global batch.
      num_samples: S, samples per utterance.
      target_length: L, target tokens per utterance; 0 for unlabeled audio (no targets).

    Returns:
      {'audio', 'audio_paddings': f32[B, S], 'weights': f32[B]} and, when labeled,
      {'targets': i32[B, L], 'target_paddings': f32[B, L], 'confidence': f32[B]}.
    """
    sharding = partitioning.batch_sharding(mesh)
    shapes = {
        "audio": ((batch_size, num_samples), jnp.float32),
        "audio_paddings": ((batch_size, num_samples), jnp.float32),
        "weights": ((batch_size,), jnp.float32),
    }
    if target_length:
        shapes["targets"] = ((batch_size, target_length), jnp.int32)
        shapes["target_paddings"] = ((batch_size, target_length), jnp.float32)
        shapes["confidence"] = ((batch_size,), jnp.float32)
    return {
        name: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
        for name, (shape, dtype) in shapes.items()
    }


def abstract_inputs(
    model: base.TrainModel,
    optimizer: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    batch: dict[str, jax.ShapeDtypeStruct],
    rules: partitioning.LogicalRules = partitioning.LOGICAL_AXIS_RULES,
) -> tuple[Any, Any, Any]:
    """Sharded `ShapeDtypeStruct`s of the train state and rng (nothing is allocated).

    Args:
      model: any audio `TrainModel`.
      optimizer: the optax transform (its state is part of the train state).
      mesh: the device mesh.
      batch: the abstract batch (`abstract_batch`); only its shapes reach `init_variables`.
      rules: logical axis name -> mesh axes.

    Returns:
      (state, state_shardings, rng): the abstract unboxed `TrainState` and its shardings,
      and a replicated key.
    """
    init_batch = {name: jax.ShapeDtypeStruct(x.shape, x.dtype) for name, x in batch.items()}
    key = jax.eval_shape(lambda: jax.random.key(0))
    boxed = jax.eval_shape(
        lambda rng: train_step.init_state(model, optimizer, rng, init_batch), key
    )
    shardings = partitioning.state_shardings(boxed, mesh, rules)
    state = _with_shardings(nn.unbox(boxed), shardings)
    rng = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=NamedSharding(mesh, P()))
    return state, shardings, rng


def compile_train_step(
    model: base.TrainModel,
    state: Any,
    state_shardings: Any,
    batch: Any,
    rng: Any,
    mesh: jax.sharding.Mesh,
    rules: partitioning.LogicalRules = partitioning.LOGICAL_AXIS_RULES,
    *,
    microbatches: int = 1,
) -> jax.stages.Compiled:
    """Lowers and compiles the train step as `bigssl train` jits it (state donated)."""
    replicated = NamedSharding(mesh, P())
    step = jax.jit(
        train_step.make_train_step(model, microbatches=microbatches),
        in_shardings=(state_shardings, partitioning.batch_sharding(mesh), replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )
    with partitioning.mesh_context(mesh, rules):
        return step.lower(state, batch, rng).compile()


def largest_arguments(state: Any, count: int = 5) -> list[dict[str, Any]]:
    """The `count` state leaves that take the most memory per chip, largest first.

    Args:
      state: abstract state leaves with shardings (from `abstract_inputs`).
      count: how many to list.

    Returns:
      [{'path', 'shape', 'dtype', 'per_chip_bytes'}, ...].
    """
    rows = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        shard = leaf.sharding.shard_shape(leaf.shape)
        rows.append(
            {
                "path": jax.tree_util.keystr(path, simple=True, separator="/"),
                "shape": list(leaf.shape),
                "dtype": str(leaf.dtype),
                "per_chip_bytes": int(np.prod(shard)) * leaf.dtype.itemsize,
            }
        )
    return sorted(rows, key=lambda row: -row["per_chip_bytes"])[:count]


def memory_report(compiled: jax.stages.Compiled, hbm_bytes: int) -> dict[str, Any]:
    """Per-chip memory of a compiled program against the chip's HBM.

    total = arguments + outputs - aliased (donated buffers reused as outputs) + temporaries.
    """
    stats = compiled.memory_analysis()
    total = (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        - stats.alias_size_in_bytes
        + stats.temp_size_in_bytes
    )
    return {
        "argument_bytes": int(stats.argument_size_in_bytes),
        "output_bytes": int(stats.output_size_in_bytes),
        "alias_bytes": int(stats.alias_size_in_bytes),
        "temp_bytes": int(stats.temp_size_in_bytes),
        "generated_code_bytes": int(stats.generated_code_size_in_bytes),
        "total_bytes": int(total),
        "hbm_bytes": int(hbm_bytes),
        "total_gib": round(total / GIB, 2),
        "hbm_gib": round(hbm_bytes / GIB, 2),
        "fits": bool(total <= hbm_bytes),
        "headroom_gib": round((hbm_bytes - total) / GIB, 2),
    }


def cost_report(compiled: jax.stages.Compiled) -> dict[str, float]:
    """XLA's per-chip FLOPs and estimated step time (see the module docstring's caveat)."""
    costs = compiled.cost_analysis()
    costs = costs[0] if isinstance(costs, Sequence) else costs
    report = {"flops_per_chip": float(costs.get("flops", 0.0))}
    # Absent on some platforms, and negative (meaningless) for some large programs.
    if costs.get("optimal_seconds", -1.0) > 0:
        report["optimal_seconds"] = float(costs["optimal_seconds"])
    return report


_SIZE = r"([\d.]+)([KMGT]?)i?B?"
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
# The TPU compiler's out-of-memory messages, e.g. "the total memory required for HLO
# temporaries (16.07G) exceeds available HBM (15.75G)" or "Used 40.1G of 31.2G hbm".
_OOM_PATTERNS = (
    rf"required for (?P<what>[^(]+?) \({_SIZE}\) exceeds available HBM \({_SIZE}\)",
    rf"(?P<what>)Used {_SIZE} of {_SIZE} hbm",
)


def _gib(number: str, unit: str) -> float:
    return round(float(number) * _UNITS[unit] / GIB, 2)


def compile_error_report(error: Exception) -> dict[str, Any]:
    """Turns an XLA compile error into a short report: out of memory (by how much) or not.

    Returns:
      {'fits': False, 'error': one line} and, for out-of-memory errors, 'required_gib' (what
      the compiler needed), 'available_gib' (the HBM it may use, a little below the chip's)
      and 'over_by_gib'.
    """
    message = str(error)
    for pattern in _OOM_PATTERNS:
        match = re.search(pattern, message)
        if match:
            required, available = _gib(*match.group(2, 3)), _gib(*match.group(4, 5))
            what = match.group("what").strip() or "the program"
            return {
                "fits": False,
                "error": f"does not fit: XLA needs {required} GiB for {what}, "
                f"{available} GiB of HBM is available",
                "required_gib": required,
                "available_gib": available,
                "over_by_gib": round(required - available, 2),
            }
    first = next((line.strip() for line in message.splitlines() if line.strip()), message)
    return {"fits": False, "error": f"XLA compile error: {first[:300]}"}


def _per_chip_bytes(tree: Any) -> int:
    return sum(
        int(np.prod(leaf.sharding.shard_shape(leaf.shape))) * leaf.dtype.itemsize
        for leaf in jax.tree.leaves(tree)
    )


def analytic_flops(model: base.TrainModel, num_frames: int, batch_size: int) -> dict[str, Any]:
    """Model FLOPs of one train step (`bigssl_jax.jobs.flops`) and what they cover.

    BEST-RQ counts encoder, head and quantiser; CTC the encoder and its vocabulary projection;
    any other model (wav2vec 2.0, w2v-BERT, RNN-T, classifiers) the encoder alone, whose
    blocks are nearly all of the work at these sizes.
    """
    if isinstance(model, best_rq.BestRqTrainModel):
        counts = flops_lib.best_rq_train_step_flops(
            model.encoder, model.objective, num_frames, batch_size
        )
        return {**counts, "covers": "encoder + head + quantizer"}
    if isinstance(model, ctc_model.CtcTrainModel):
        counts = flops_lib.train_step_flops(
            model.encoder, num_frames, batch_size, head_outputs=model.vocab_size
        )
        return {**counts, "covers": "encoder + head"}
    return {
        **flops_lib.train_step_flops(model.encoder, num_frames, batch_size),
        "covers": "encoder",
    }


def _describe(
    topology: TpuTopology,
    mesh: jax.sharding.Mesh,
    model: base.TrainModel,
    optimizer_name: str,
    state: Any,
    batch: dict[str, jax.ShapeDtypeStruct],
) -> dict[str, Any]:
    """The compile-independent part of the report: what is compiled, and its model FLOPs."""
    batch_size, num_samples = batch["audio"].shape
    num_frames = frontend.num_frames(num_samples, _log_mel(model))
    analytic = analytic_flops(model, num_frames, batch_size)
    analytic["per_chip"] = analytic["train_step"] / topology.num_chips
    peak = TPU_FAMILIES[topology.family].peak_bf16_flops
    analytic["step_seconds_at_peak"] = analytic["per_chip"] / peak
    described_batch = {
        "global": batch_size,
        "per_chip": batch_size / topology.num_chips,
        "audio_seconds": num_samples / SAMPLE_RATE,
        "feature_frames": num_frames,
    }
    if "targets" in batch:
        described_batch["target_length"] = batch["targets"].shape[1]
    return {
        "topology": {
            "name": topology.name,
            "libtpu_name": topology.topology_name,
            "num_slices": topology.num_slices,
            "chips": topology.num_chips,
            "hbm_gib_per_chip": round(topology.hbm_bytes_per_chip / GIB, 2),
        },
        "mesh": dict(mesh.shape),
        "model": {
            "name": type(model).__name__,
            "params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params)),
            "dtype": model.encoder.dtype,
            "remat_policy": model.encoder.remat_policy,
            "optimizer": optimizer_name,
        },
        "batch": described_batch,
        "analytic": analytic,
    }


def _log_mel(model: base.EncoderModel) -> frontend.LogMelConfig:
    return model.log_mel or frontend.LogMelConfig()


def best_rq_model(
    encoder_config: encoder_lib.EncoderConfig,
    objective: best_rq.BestRqConfig | None = None,
    log_mel: frontend.LogMelConfig | None = None,
) -> best_rq.BestRqTrainModel:
    """The BEST-RQ model `bigssl compile` builds when the gin binds no experiment model."""
    return best_rq.BestRqTrainModel(
        encoder=encoder_config,
        objective=objective or best_rq.BestRqConfig(),
        log_mel=log_mel or frontend.LogMelConfig(),
    )


def compile_report(
    model: base.TrainModel,
    mesh_config: partitioning.MeshConfig,
    config: CompileConfig,
    *,
    labeled: bool = False,
    optimizer: optimizers.OptimizerConfig | None = None,
    microbatches: int = 1,
    global_batch_size: int | None = None,
) -> dict[str, Any]:
    """Compiles `model`'s train step for `config.topology`; returns a JSON-able report.

    Args:
      model: any audio `TrainModel` with an `encoder` (BEST-RQ, wav2vec 2.0, w2v-BERT, CTC,
        RNN-T, classifiers), e.g. gin's `ExperimentConfig.model`.
      mesh_config: the mesh (mesh gin).
      config: topology and batch.
      labeled: the batch carries targets of `config.target_length` tokens (fine-tuning).
      optimizer: default `OptimizerConfig()`, the XL recipe's Adam (two float32 moments per
        parameter, the most state any of the recipe's optimizers keeps).
      microbatches: gradient accumulation steps, as `TrainerConfig.microbatches`.
      global_batch_size: overrides `config.per_chip_batch_size` x chips.

    Returns:
      {'topology', 'mesh', 'model', 'batch', 'memory_per_chip', 'xla', 'analytic',
      'compile_seconds'}; an out-of-memory or failed compile gives 'memory_per_chip' from
      `compile_error_report` instead, and a configuration that does not fit lists the largest
      per-chip state buffers under 'largest_state_buffers'.

    Raises:
      RuntimeError: without libtpu. ValueError: for a model without an audio encoder, a bad
      topology, mesh or batch size.
    """
    if not isinstance(model, base.EncoderModel):
        raise ValueError(f"{type(model).__name__} has no audio encoder to compile")
    optimizer = optimizer or optimizers.OptimizerConfig()
    topology = parse_topology(config.topology, config.num_slices)
    mesh = partitioning.make_mesh(mesh_config, topology_devices(topology))
    batch_size = global_batch_size or config.per_chip_batch_size * topology.num_chips
    batch_shards = mesh.shape["data"] * mesh.shape["fsdp"] * microbatches
    if batch_size % batch_shards:
        raise ValueError(
            f"global batch {batch_size} does not divide over data x fsdp x microbatches = "
            f"{batch_shards}"
        )
    num_samples = round(config.audio_seconds * SAMPLE_RATE)
    batch = abstract_batch(mesh, batch_size, num_samples, config.target_length if labeled else 0)
    state, shardings, rng = abstract_inputs(
        model, optimizers.make_optimizer(optimizer), mesh, batch
    )
    report = _describe(topology, mesh, model, optimizer.name, state, batch)
    start = time.perf_counter()
    try:
        compiled = compile_train_step(
            model, state, shardings, batch, rng, mesh, microbatches=microbatches
        )
    except jax.errors.JaxRuntimeError as error:
        report["memory_per_chip"] = compile_error_report(error)
    else:
        report["memory_per_chip"] = memory_report(compiled, topology.hbm_bytes_per_chip)
        report["xla"] = cost_report(compiled)
    report["compile_seconds"] = round(time.perf_counter() - start, 1)
    if not report["memory_per_chip"]["fits"]:
        report["memory_per_chip"]["state_gib"] = round(_per_chip_bytes(state) / GIB, 2)
        report["memory_per_chip"]["batch_gib"] = round(_per_chip_bytes(batch) / GIB, 2)
        report["largest_state_buffers"] = largest_arguments(state)
    return report
