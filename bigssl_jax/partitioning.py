"""Meshes, logical-axis rules, and sharded init / train-step helpers.

The device mesh has three named axes, outermost first:

  * `data`: pure data parallelism; parameters and optimizer state are replicated.
  * `fsdp`: data parallelism with parameters and optimizer state sharded along their
    `embed` dimension (ZeRO-3 style: XLA all-gathers weights before use and
    reduce-scatters gradients).
  * `tensor`: tensor (model) parallelism over attention heads, feed-forward hidden units
    and the vocabulary.

Each axis has an in-slice (ICI) size and an across-slice (DCN) size; the mesh axis size is
their product. Modules never name mesh axes: they annotate logical axis names, and the one
table `LOGICAL_AXIS_RULES` below maps those to mesh axes:

  ====================  ==================  ============================================
  logical axis          mesh axes           what it is
  ====================  ==================  ============================================
  activation_batch      ('data', 'fsdp')    batch dimension of activations
  activation_length     replicated          time frames
  activation_embed      replicated          model dimension of activations
  activation_mlp        'tensor'            feed-forward hidden units of activations
  activation_heads      'tensor'            attention heads of activations
  activation_kv         replicated          per-head dimension of activations
  embed                 'fsdp'              model dimension of parameters (ZeRO-3)
  mlp                   'tensor'            feed-forward hidden units of parameters
  heads                 'tensor'            attention heads of parameters
  vocab                 'tensor'            output vocabulary of parameters
  kv                    replicated          per-head dimension of parameters
  conv_kernel           replicated          convolution kernel taps
  conv_in, conv_out     replicated          convolution channels (subsampling stem)
  mel                   replicated          mel-filterbank channels (stacked: 2F)
  relative_buckets      replicated          T5 relative-position buckets
  relative_distance     replicated          clipped offsets of relative keys (w2v-BERT 2.0)
  layers                replicated          the stacked-layers axis of `nn.scan`
  ====================  ==================  ============================================

A logical name may appear only once per array (flax rejects repeats; use None for a
second replicated dimension). A name missing from the table is an error here (not
silently replicated), so a typo in a module cannot go unnoticed.

Typical use (see `tests/test_partitioning.py` for a full step):

    mesh = make_mesh(MeshConfig(fsdp=-1))
    state, state_shardings = init_sharded_state(init_fn, mesh, LOGICAL_AXIS_RULES, rng)
    step = jit_train_step(train_step, state_shardings, batch_sharding(mesh), mesh)
    state, metrics = step(state, make_global_batch(local_batch, mesh), rng)
"""

import collections
import contextlib
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bigssl_jax import train_state as train_state_lib

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

LogicalRules = Sequence[tuple[str, str | tuple[str, ...] | None]]

LOGICAL_AXIS_RULES: LogicalRules = (
    # Activations.
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_mlp", "tensor"),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    # Parameters.
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("conv_kernel", None),
    ("conv_in", None),
    ("conv_out", None),
    ("mel", None),
    ("relative_buckets", None),
    ("relative_distance", None),
    ("layers", None),
)


# ---------------------------------------------------------------------------------------
# Mesh.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshConfig:
    """Sizes of the mesh axes, split into in-slice (ICI) and across-slice (DCN) parts.

    The mesh axis `a` has size `a * dcn_a`. At each level, one size may be -1: it takes
    whatever is left (devices per slice for ICI, slices for DCN). The DCN granules are
    TPU slices (`device.slice_index`), or processes on platforms without slices (GPU).

    Attributes:
      data: ICI size of the `data` axis (replicated parameters).
      fsdp: ICI size of the `fsdp` axis (parameters sharded along `embed`).
      tensor: ICI size of the `tensor` axis (heads / mlp / vocab sharded).
      dcn_data: DCN size of the `data` axis (number of slices it spans).
      dcn_fsdp: DCN size of the `fsdp` axis.
      dcn_tensor: DCN size of the `tensor` axis.
      allow_split_physical_axes: let a logical axis span parts of several physical TPU
        torus axes when the ICI shape does not map onto the torus directly.
    """

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    dcn_data: int = 1
    dcn_fsdp: int = 1
    dcn_tensor: int = 1
    allow_split_physical_axes: bool = False

    @property
    def ici_sizes(self) -> tuple[int, int, int]:
        return (self.data, self.fsdp, self.tensor)

    @property
    def dcn_sizes(self) -> tuple[int, int, int]:
        return (self.dcn_data, self.dcn_fsdp, self.dcn_tensor)


def _resolve_sizes(sizes: Sequence[int], total: int, level: str, unit: str) -> tuple[int, ...]:
    """Replaces the one -1 in `sizes` so that their product is `total` (of `unit`)."""
    described = " x ".join(f"{a}={s}" for a, s in zip(MESH_AXES, sizes, strict=True))
    if sum(s == -1 for s in sizes) > 1:
        raise ValueError(f"MeshConfig: at most one {level} size may be -1, got {described}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"MeshConfig: {level} sizes must be positive or -1, got {described}")
    known = math.prod(s for s in sizes if s != -1)
    if total % known:
        raise ValueError(
            f"MeshConfig: {level} sizes {described} (product {known}) do not divide "
            f"the {total} {unit}"
        )
    resolved = tuple(total // known if s == -1 else s for s in sizes)
    if math.prod(resolved) != total:
        raise ValueError(
            f"MeshConfig: {level} sizes {described} use {known} of the {total} {unit}; "
            "set one size to -1 to take the rest"
        )
    return resolved


def _granule_key(devices: Sequence[Any]) -> str:
    """The device attribute that separates DCN granules: TPU slices, else processes."""
    return "slice_index" if hasattr(devices[0], "slice_index") else "process_index"


def device_array(config: MeshConfig, devices: Sequence[Any]) -> np.ndarray:
    """Lays `devices` out as a [data, fsdp, tensor] array, slices outermost per axis.

    Args:
      config: the mesh sizes.
      devices: every device of the job (all processes).

    Returns:
      An object array of devices of shape [data * dcn_data, fsdp * dcn_fsdp,
      tensor * dcn_tensor].

    Raises:
      ValueError: if the sizes do not divide the devices or the slices are uneven.
    """
    key = _granule_key(devices)
    counts = collections.Counter(getattr(d, key) for d in devices)
    num_granules = len(counts)
    if len(set(counts.values())) != 1:
        raise ValueError(f"MeshConfig: uneven devices per {key}: {dict(counts)}")
    granule = "slice" if key == "slice_index" else "process"
    dcn = _resolve_sizes(config.dcn_sizes, num_granules, "DCN", f"{granule} groups")
    per_granule = len(devices) // num_granules
    ici = _resolve_sizes(config.ici_sizes, per_granule, "ICI", f"devices per {granule}")
    if math.prod(dcn) == 1:
        return mesh_utils.create_device_mesh(
            ici, devices, allow_split_physical_axes=config.allow_split_physical_axes
        )
    return mesh_utils.create_hybrid_device_mesh(
        ici,
        dcn,
        devices,
        process_is_granule=key == "process_index",
        allow_split_physical_axes=config.allow_split_physical_axes,
    )


def make_mesh(config: MeshConfig, devices: Sequence[Any] | None = None) -> Mesh:
    """Builds the ('data', 'fsdp', 'tensor') mesh with Auto axis types.

    Args:
      config: the mesh sizes.
      devices: the devices to use; defaults to `jax.devices()` (all processes' devices).

    Returns:
      A `jax.sharding.Mesh` whose axes have `AxisType.Auto` (flax linen's logical
      partitioning rejects Explicit axes).
    """
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(
        device_array(config, devices),
        MESH_AXES,
        axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
    )


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules: LogicalRules = LOGICAL_AXIS_RULES):
    """Makes `mesh` and the logical-axis `rules` current (for tracing sharded code)."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


# ---------------------------------------------------------------------------------------
# Logical boxes -> shardings.
# ---------------------------------------------------------------------------------------


def _is_box(x: Any) -> bool:
    return isinstance(x, nn.Partitioned)


def _check_known_names(tree: Any, rules: LogicalRules) -> None:
    """Raises if a boxed leaf of `tree` uses a logical axis name missing from `rules`."""
    known = {name for name, _ in rules}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree, is_leaf=_is_box):
        if not _is_box(leaf):
            continue
        unknown = [n for n in leaf.names if n is not None and n not in known]
        if unknown:
            raise ValueError(
                f"Logical axis names {unknown} of {jax.tree_util.keystr(path)} "
                "have no partitioning rule"
            )


def logical_to_mesh_shardings(tree: Any, mesh: Mesh, rules: LogicalRules) -> Any:
    """Shardings for a tree whose leaves may be boxed with logical axis names.

    Args:
      tree: a pytree (usually abstract, from `jax.eval_shape`) whose leaves are arrays or
        `nn.LogicallyPartitioned` boxes.
      mesh: the device mesh.
      rules: logical axis name -> mesh axes.

    Returns:
      The unboxed tree's structure with a `NamedSharding` per leaf: boxed leaves follow
      the rules, plain leaves are replicated.
    """
    _check_known_names(tree, rules)
    specs = nn.get_partition_spec(tree)
    shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
    values = jax.tree.map(
        lambda x: x.unbox(apply_constraint=False) if _is_box(x) else x, tree, is_leaf=_is_box
    )
    _check_divisible(values, shardings)
    return shardings


def _check_divisible(tree: Any, shardings: Any) -> None:
    """Raises, naming the leaf, if a sharded dimension does not divide its mesh axes."""
    flat = jax.tree_util.tree_leaves_with_path(tree)
    for (path, leaf), sharding in zip(flat, jax.tree.leaves(shardings), strict=True):
        for dim, axes in zip(leaf.shape, sharding.spec, strict=False):
            axes = (axes,) if isinstance(axes, str) else axes or ()
            ways = math.prod(sharding.mesh.shape[a] for a in axes)
            if dim % ways:
                raise ValueError(
                    f"{jax.tree_util.keystr(path)} of shape {leaf.shape} cannot be split "
                    f"as {sharding.spec} over mesh {dict(sharding.mesh.shape)}: {dim} is "
                    f"not divisible by {ways}"
                )


def optimizer_state_shardings(
    tx: optax.GradientTransformation,
    abstract_opt_state: optax.OptState,
    param_shardings: Any,
    mesh: Mesh,
    abstract_params: Any,
) -> Any:
    """Shardings of an optax state: its copies of the params tree follow the params'.

    Every subtree of the state that mirrors the params (Adam's moments, EMA copies, ...)
    gets `param_shardings`; every other leaf (step counts, scalars) is replicated, and so
    are statistics whose shape differs from their parameter's (Adafactor's factored row /
    column second moments: O(rows + columns) numbers per matrix).

    Args:
      tx: the optax transformation that built the state.
      abstract_opt_state: `jax.eval_shape(tx.init, params)` (unboxed params).
      param_shardings: one `NamedSharding` per parameter.
      mesh: the device mesh.
      abstract_params: the (unboxed) params or their `jax.ShapeDtypeStruct`s.

    Returns:
      The state's structure with a `NamedSharding` per leaf.
    """
    replicated = NamedSharding(mesh, P())

    def like_param(leaf, sharding, param):
        return sharding if leaf.shape == param.shape else replicated

    return optax.tree_utils.tree_map_params(
        tx,
        like_param,
        abstract_opt_state,
        param_shardings,
        abstract_params,
        transform_non_params=lambda _: replicated,
    )


def state_shardings(abstract_state: Any, mesh: Mesh, rules: LogicalRules) -> Any:
    """Shardings of a (possibly boxed) tree; for a `TrainState` via its params.

    A `TrainState`'s optimizer state is sharded like its params (see
    `optimizer_state_shardings`) and its step is replicated; any other tree goes
    through `logical_to_mesh_shardings`.
    """
    if not isinstance(abstract_state, train_state_lib.TrainState):
        return logical_to_mesh_shardings(abstract_state, mesh, rules)
    param_shardings = logical_to_mesh_shardings(abstract_state.params, mesh, rules)
    return abstract_state.replace(
        step=NamedSharding(mesh, P()),
        params=param_shardings,
        opt_state=optimizer_state_shardings(
            abstract_state.tx,
            abstract_state.opt_state,
            param_shardings,
            mesh,
            nn.unbox(abstract_state.params),
        ),
        model_state=logical_to_mesh_shardings(abstract_state.model_state, mesh, rules),
    )


def init_sharded_state(
    init_fn: Callable[..., Any],
    mesh: Mesh,
    rules: LogicalRules,
    *args: Any,
    shardings: Any = None,
) -> tuple[Any, Any]:
    """Initializes a state directly into its shards (no full copy on any one device).

    eval_shape -> logical partition specs -> mesh shardings -> `jax.jit(init_fn,
    out_shardings=...)`, so each device only materializes its own shards.

    `init_fn` is traced with no logical-axis rules active: the out_shardings alone place
    the state, and activation constraints would only slow down compiling an init whose
    forward outputs are dropped.

    Args:
      init_fn: `init_fn(*args)` returns the state; its params may be boxed with logical
        axis names (`nn.with_logical_partitioning`). Arrays in `args` are replicated.
      mesh: the device mesh.
      rules: logical axis name -> mesh axes.
      *args: arguments of `init_fn` (e.g. an rng key).
      shardings: the state's shardings when the caller has them already (from
        `state_shardings` of `jax.eval_shape(init_fn, *args)`); None computes them.

    Returns:
      (state, shardings): the unboxed state placed on `mesh`, and a tree of the same
      structure holding each leaf's `NamedSharding` (use it for the train step).
    """
    with nn.logical_axis_rules(()):
        if shardings is None:
            shardings = state_shardings(jax.eval_shape(init_fn, *args), mesh, rules)
        with jax.set_mesh(mesh):
            state = jax.jit(lambda *a: nn.unbox(init_fn(*a)), out_shardings=shardings)(*args)
    return state, shardings


# ---------------------------------------------------------------------------------------
# Batches and the train step.
# ---------------------------------------------------------------------------------------


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Shards an array's leading (batch) dimension over ('data', 'fsdp')."""
    return NamedSharding(mesh, P(BATCH_AXES))


def make_global_batch(local_batch: Any, mesh: Mesh) -> Any:
    """Assembles each process's part of the batch into global batch-sharded arrays.

    Args:
      local_batch: a pytree of host arrays, this process's rows [B / processes, ...].
      mesh: the device mesh.

    Returns:
      The same pytree of global `jax.Array`s [B, ...] sharded by `batch_sharding(mesh)`.
    """
    sharding = batch_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )


def jit_train_step(
    step_fn: Callable[..., tuple[Any, Any]],
    state_shardings: Any,
    batch_shardings: Any,
    mesh: Mesh,
    rules: LogicalRules = LOGICAL_AXIS_RULES,
) -> Callable[..., tuple[Any, Any]]:
    """Jits `step_fn(state, batch, rng) -> (state, metrics)` for `mesh`.

    The state keeps `state_shardings` in and out and is donated (updated in place); the
    batch comes in with `batch_shardings`; the rng and the metrics are replicated. Calls
    run with `mesh` and `rules` current, so logical constraints inside resolve.

    Args:
      step_fn: the pure train step.
      state_shardings: from `init_sharded_state`.
      batch_shardings: a sharding (or a pytree prefix of the batch), e.g.
        `batch_sharding(mesh)`.
      mesh: the device mesh.
      rules: logical axis name -> mesh axes.

    Returns:
      The jitted step, same signature as `step_fn`.
    """
    replicated = NamedSharding(mesh, P())
    jitted = jax.jit(
        step_fn,
        in_shardings=(state_shardings, batch_shardings, replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )

    def step(state, batch, rng):
        with mesh_context(mesh, rules):
            return jitted(state, batch, rng)

    return step


# ---------------------------------------------------------------------------------------
# Per-device randomness.
# ---------------------------------------------------------------------------------------


def per_device_random(
    fn: Callable[..., Any], mesh: Mesh, batch_axes: Sequence[str] = BATCH_AXES
) -> Callable[..., Any]:
    """Runs a per-example random op on each device's batch shard with its own key.

    Inside `jax.shard_map`, device `i` along `batch_axes` (row-major linear index, the
    same order in which `P(batch_axes)` lays out the batch) calls
    `fn(jax.random.fold_in(rng, i), *shards)` on its rows only: no cross-device
    communication, and each shard draws independent randomness. Devices that differ
    only along other mesh axes (e.g. 'tensor') share a shard and a key, so they agree.

    Specs:
      in:  rng -> P() (replicated); each array -> P(batch_axes) on its leading dim.
      out: every output leaf -> P(batch_axes) on its leading dim.

    Args:
      fn: `fn(rng, *arrays) -> pytree of arrays`, each with the batch leading.
      mesh: the device mesh.
      batch_axes: the mesh axes the batch is sharded over.

    Returns:
      `wrapped(rng, *arrays)`, same outputs as `fn` with global [B, ...] arrays.
    """
    batch_axes = tuple(batch_axes)
    batch_spec = P(batch_axes)

    def per_shard(rng, *arrays):
        index = jax.lax.axis_index(batch_axes)
        return fn(jax.random.fold_in(rng, index), *arrays)

    def wrapped(rng, *arrays):
        return jax.shard_map(
            per_shard,
            mesh=mesh,
            in_specs=(P(), *([batch_spec] * len(arrays))),
            out_specs=batch_spec,
        )(rng, *arrays)

    return wrapped
