"""Checkpoints of a run: Orbax `CheckpointManager`, retention, preemption, restore order.

Layout: `<model_dir>/checkpoints/<step>/` with two items,

  * `state`: the `TrainState` (step, params, optimizer state, model state), `StandardSave`;
    each process writes its own shards.
  * `meta`: JSON (`JsonSave`): the input iterator's `get_state()`, the base rng key, the
    non-finite step counters, the step; anything the loop needs to continue exactly.

Writes are atomic: Orbax writes a step into a temporary directory and renames it when every
item is finalised, so a step killed halfway (even by SIGKILL) is never listed; leftover
temporaries are removed when the next manager opens the directory. Saves are asynchronous:
`save` returns once the arrays are copied off the devices, and the next save (or `wait`)
waits for the previous write.

Retention: keep-last-K and keep-best-M coexist as a union (`AnyPreservationPolicy`): a step
survives if it is among the K most recent (`LatestN(K)`) *or* among the M best by
`best_metric` of the steps saved with metrics (`BestN(M)`, steps without metrics never count
as best). So with K=2, M=1 a run keeps at most three steps: the two latest and the best
evaluated one (which may be one of them). A step's metrics are written beside it
(`<step>/metrics/metrics`, JSON), so the best step survives a resume and `best_step` finds it
for evaluation.

Restore order (`restore_or_init` in the trainer):
  1. resume: the latest finalised step of `<model_dir>/checkpoints` (step, params, optimizer
     state, rng and data position);
  2. init from another run: `init_checkpoint` (a checkpoint directory `.../checkpoints/<step>`,
     or a model dir / checkpoints dir meaning its latest step), either the whole state
     (training continues from its step with a fresh data position) or the params it serves
     (below; fresh optimizer, step 0);
  3. scratch.

Served params: what a checkpoint gives other runs (`init_checkpoint` params, inference,
embeddings; `restore_params`, `saved_params`, `read_params_to_host`) is the exponential
moving average of its params when its optimizer kept one (`OptimizerConfig.ema_decay`: an
`optimizers.EmaState` in the saved optax chain state), else its params. Inference can ask
for the raw params (`ema=False`, `bigssl evaluate --noema`).

Restoring onto another mesh: `restore` takes an abstract state whose leaves are
`jax.ShapeDtypeStruct`s carrying the *new* shardings (`abstract_state`), and Orbax reads each
device's slice from the saved arrays whatever mesh wrote them.

Paths: the model dir may be a URI (`gs://bucket/runs/x`); every directory here is an
`etils.epath.Path` (`paths.as_path`), which Orbax takes as it is (for `gs://` it asks the
Cloud Storage API about the bucket's layout: `google-cloud-storage` must be installed on the
hosts; array data goes through TensorStore's own GCS driver). Every process of a
multi-process job constructs the `Checkpointer` and calls `save` / `restore` with the same
step: Orbax writes each process's shards and lets process 0 write the metadata and finalise.

Preemption: `PreemptionHandler` turns SIGTERM / SIGINT into a flag that the loop polls each
step; together with `CheckpointManager.reached_preemption` (multi-host preemption notices) the
loop then saves the current step, waits for the write, and stops. In a multi-process job only
the sync point counts (every process must save the same step together); enable JAX's
preemption service there (`jax.distributed.initialize`) for TPU maintenance events.
"""

import json
import os
import signal
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from orbax.checkpoint import checkpoint_managers

from bigssl_jax import paths

CHECKPOINTS = "checkpoints"
STATE, META = "state", "meta"
METRICS = "metrics"  # the item Orbax writes a step's tracked metrics to
EMA = "ema"  # the field of `optimizers.EmaState`


def checkpoint_dir(model_dir: os.PathLike | str) -> epath.Path:
    """`<model_dir>/checkpoints`, absolute (a `gs://` model dir stays a URI)."""
    return paths.as_path(model_dir) / CHECKPOINTS


def abstract_state(abstract: Any, shardings: Any) -> Any:
    """`jax.ShapeDtypeStruct`s of `abstract` (from `jax.eval_shape`) carrying `shardings`."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings
    )


def on_one_device(abstract: Any) -> Any:
    """`abstract_state` of `abstract` with every leaf on this process's first local device
    (the targets for reading a checkpoint into one device, e.g. for inference)."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return abstract_state(abstract, jax.tree.map(lambda _: device, abstract))


def _preservation_policy(keep_last: int, keep_best: int, best_metric: str | None, mode: str):
    policies = [checkpoint_managers.LatestN(n=keep_last)]
    if best_metric and keep_best:
        policies.append(
            checkpoint_managers.BestN(
                get_metric_fn=lambda metrics: float(metrics[best_metric]),
                reverse=mode == "min",
                n=keep_best,
                keep_checkpoints_without_metrics=False,
            )
        )
    return checkpoint_managers.AnyPreservationPolicy(policies)


class Checkpointer:
    """Saves and restores a run's `state` + `meta` under `<model_dir>/checkpoints`.

    Args:
      model_dir: the run directory.
      keep_last: K, the most recent steps kept.
      keep_best: M, the best steps by `best_metric` kept besides them (0: none).
      best_metric: name of the metric passed to `save(..., metrics=)` that ranks steps.
      best_mode: 'min' or 'max': which end of `best_metric` is best.
      async_save: write in a background thread.
    """

    def __init__(
        self,
        model_dir: os.PathLike | str,
        *,
        keep_last: int = 3,
        keep_best: int = 0,
        best_metric: str | None = None,
        best_mode: str = "min",
        async_save: bool = True,
    ):
        if best_mode not in ("min", "max"):
            raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}")
        self.best_metric = best_metric if keep_best else None
        tracked = {}
        if self.best_metric:  # Orbax writes a step's metrics only when it tracks a best_fn
            tracked = dict(best_fn=lambda metrics: float(metrics[best_metric]), best_mode=best_mode)
        options = ocp.CheckpointManagerOptions(
            preservation_policy=_preservation_policy(keep_last, keep_best, best_metric, best_mode),
            **tracked,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            create=True,
        )
        self.directory = checkpoint_dir(model_dir)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=(STATE, META)
        )

    def latest_step(self) -> int | None:
        """The newest finalised step, or None."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """Every finalised step kept, ascending."""
        return sorted(self.manager.all_steps())

    def save(
        self,
        step: int,
        state: Any,
        meta: Mapping[str, Any],
        *,
        metrics: Mapping[str, float] | None = None,
    ) -> bool:
        """Starts writing `state` and `meta` as `step` (no-op if `step` is already saved).

        Args:
          step: the step number (directory name).
          state: the train state (sharded `jax.Array`s).
          meta: JSON-able dict.
          metrics: scalars for keep-best (must hold `best_metric` when it is set); steps
            saved without them are kept only as latest.

        Returns:
          Whether a save was started.
        """
        if step in self.manager.all_steps():
            return False
        if metrics is not None and self.best_metric:
            metrics = {self.best_metric: float(metrics[self.best_metric])}
        else:
            metrics = None
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                **{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(dict(meta))}
            ),
            metrics=metrics,
            force=True,
        )

    def restore(self, step: int, abstract: Any) -> tuple[Any, dict]:
        """Reads `step` into the structure and shardings of `abstract` (see `abstract_state`)."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                **{STATE: ocp.args.StandardRestore(abstract), META: ocp.args.JsonRestore()}
            ),
        )
        return restored[STATE], dict(restored[META])

    def restore_meta(self, step: int) -> dict:
        """Reads only the `meta` item of `step`."""
        restored = self.manager.restore(
            step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()})
        )
        return dict(restored[META])

    def reached_preemption(self, step: int) -> bool:
        """Whether the job received a (multi-host) preemption notice by `step`."""
        return self.manager.reached_preemption(step)

    def wait(self) -> None:
        """Blocks until the pending write (if any) is finalised."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending writes and releases the manager."""
        self.manager.close()


def resolve_init_checkpoint(path: os.PathLike | str) -> epath.Path:
    """A checkpoint step directory from a step dir, a checkpoints dir or a model dir.

    Raises:
      FileNotFoundError: nothing finalised is found there.
    """
    path = paths.as_path(path)
    if (path / STATE).is_dir():
        return path
    for directory in (path / CHECKPOINTS, path):
        if directory.is_dir():
            steps = ocp.utils.checkpoint_steps(directory)
            if steps:
                return directory / str(max(steps))
    raise FileNotFoundError(f"no finalised checkpoint at {path}")


def best_step(model_dir: os.PathLike | str, *, mode: str = "min") -> epath.Path:
    """The kept step of a run with the best saved metric (the lowest with `mode` 'min'; the
    later step of a tie), or its latest step when no kept step has metrics (a run without
    `keep_best`).

    Raises:
      FileNotFoundError: nothing finalised is found there.
    """
    latest = resolve_init_checkpoint(model_dir)
    scored = {}
    for step in ocp.utils.checkpoint_steps(latest.parent):
        metrics_file = latest.parent / str(step) / METRICS / METRICS
        if metrics_file.exists():
            (value,) = json.loads(metrics_file.read_text()).values()
            scored[step] = float(value)
    if not scored:
        return latest
    sign = 1.0 if mode == "min" else -1.0
    return latest.parent / str(min(scored, key=lambda step: (sign * scored[step], -step)))


def restore_from(path: os.PathLike | str, abstract: Any) -> Any:
    """Reads another run's whole train state (see `resolve_init_checkpoint`) into `abstract`
    (the same structure as the saved one, e.g. the same optimizer), placed by its shardings."""
    step_dir = resolve_init_checkpoint(path)
    logging.info("init from %s (whole state)", step_dir)
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(step_dir / STATE, abstract)


def _restore_item(
    step_dir: epath.Path, item: Mapping[str, Any], restore_args: Any = None
) -> Mapping[str, Any]:
    """The fields of the state saved at `step_dir` that `item` names, read into it (a
    partial restore: `item` may hold subtrees, and None where a list entry is skipped).
    `restore_args` default: arrays placed as `item`'s leaves say."""
    if restore_args is None:
        restore_args = ocp.checkpoint_utils.construct_restore_args(item)
    with ocp.PyTreeCheckpointer() as checkpointer:
        return checkpointer.restore(
            step_dir / STATE,
            args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True),
        )


def restore_part(path: os.PathLike | str, part: str, abstract: Any) -> Any:
    """Reads one field of another run's saved state (e.g. 'model_state') into `abstract`,
    which may name a subtree of it (one collection of the model state). For the params use
    `restore_params`."""
    step_dir = resolve_init_checkpoint(path)
    logging.info("init from %s (%s)", step_dir, part)
    return _restore_item(step_dir, {part: abstract})[part]


def _ema_slot(tree: Mapping[str, Any], ema: bool) -> int | None:
    """The index of the params' EMA in the saved optax-chain state of `tree` (a saved state's
    metadata) when `ema` is set and the optimizer kept one, else None."""
    opt_state = tree.get("opt_state")
    if ema and isinstance(opt_state, list):
        for index, part in enumerate(opt_state):
            if isinstance(part, Mapping) and set(part) == {EMA}:
                return index
    return None


def _at_served_params(tree: Mapping[str, Any], slot: int | None, value: Any) -> dict[str, Any]:
    """A restore item holding `value` where the saved state `tree` keeps its served params."""
    if slot is None:
        return {"params": value}
    opt_state = [None] * len(tree["opt_state"])
    opt_state[slot] = {EMA: value}
    return {"opt_state": opt_state}


def _served_params(restored: Mapping[str, Any], slot: int | None) -> Any:
    """The served params of a restored `_at_served_params` item."""
    return restored["params"] if slot is None else restored["opt_state"][slot][EMA]


def params_source(path: os.PathLike | str, *, ema: bool = True) -> str:
    """'ema' when another run's checkpoint serves the EMA of its params, else 'params'."""
    return "params" if _ema_slot(_saved_tree(path), ema) is None else EMA


def restore_params(path: os.PathLike | str, abstract: Any, *, ema: bool = True) -> Any:
    """The params another run's checkpoint serves (module docstring), read into `abstract`
    (the abstract params tree, or a subtree of it such as {'encoder': ...}).

    Args:
      path: where the checkpoint is (see `resolve_init_checkpoint`).
      abstract: the abstract params (sub)tree, its leaves carrying the target shardings.
      ema: serve the EMA of the params when the run's optimizer kept one; False: the params.
    """
    step_dir = resolve_init_checkpoint(path)
    tree = _saved_tree(step_dir)
    slot = _ema_slot(tree, ema)
    logging.info("init from %s (%s)", step_dir, "params EMA" if slot is not None else "params")
    return _served_params(_restore_item(step_dir, _at_served_params(tree, slot, abstract)), slot)


def restore_init_params(
    path: os.PathLike | str,
    abstract_params: Any,
    fresh_params: Any,
    *,
    scopes: tuple[str, ...] = (),
    regroup: Callable[[str, Mapping[str, Any]], Any] | None = None,
) -> Any:
    """The params another run's checkpoint serves, or only its top-level `scopes` with the
    rest `fresh_params` (`TrainerConfig.init_checkpoint`, `init_params_scopes`).

    A scope saved with other shapes than the model's is read to host and handed to
    `regroup(scope, saved)`, the model's hook (`models.base.RegroupsParams`; e.g. an encoder
    saved with other stage cuts, such as w2v-BERT's, is restaged), when it gives one.

    Raises:
      ValueError: a scope is not a param of the model or of the checkpoint, or a param the
        model wants is absent from the checkpoint or has another shape there.
    """
    saved = saved_params(path)
    if not scopes:
        _check_saved_shapes(path, saved, abstract_params)
        return restore_params(path, abstract_params)
    missing = [scope for scope in scopes if scope not in abstract_params]
    if missing:
        raise ValueError(
            f"init_params_scopes {missing} are not params of this model "
            f"(top-level params: {sorted(abstract_params)})"
        )
    absent = [scope for scope in scopes if scope not in saved]
    if absent:
        raise ValueError(
            f"init_params_scopes {absent} are not in the params of {path} "
            f"(top-level params: {sorted(saved)})"
        )
    wanted = {scope: abstract_params[scope] for scope in scopes}
    restored = {}
    for scope in list(wanted):
        if regroup is None or _param_shapes(saved[scope]) == _param_shapes(wanted[scope]):
            continue
        regrouped = regroup(scope, read_params_to_host(path, scope))
        if regrouped is None:
            continue
        logging.info("init from %s: regrouped params[%r]", path, scope)
        target = {scope: wanted.pop(scope)}
        _check_saved_shapes(path, {scope: regrouped}, target)
        restored.update(place({scope: regrouped}, target))
    if wanted:
        _check_saved_shapes(path, {scope: saved[scope] for scope in wanted}, wanted)
        restored.update(restore_params(path, wanted))
    return {**fresh_params, **restored}


def _check_saved_shapes(path: os.PathLike | str, saved: Any, wanted: Any) -> None:
    """Raises a one-line ValueError naming the first param of `wanted` that the checkpoint
    lacks or holds with another shape (instead of Orbax's error deep in TensorStore)."""
    have = _param_shapes(saved)
    for key, shape in _param_shapes(wanted).items():
        if have.get(key) != shape:
            found = f"has shape {have[key]}" if key in have else "is absent"
            raise ValueError(
                f"init_checkpoint {path}: params{key} {found}; this model's is {shape}"
            )


def _param_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{path: shape} of a params tree (arrays, abstract arrays or Orbax metadata)."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in leaves}


def saved_model_state(path: os.PathLike | str) -> tuple[str, ...]:
    """The collections of the model state saved in another run's checkpoint (sorted)."""
    return tuple(sorted(_saved_tree(path).get("model_state") or ()))


def saved_params(path: os.PathLike | str) -> Mapping[str, Any]:
    """The params tree another run's checkpoint serves (`restore_params`): leaves carry
    `.shape` and `.dtype` (Orbax array metadata); nothing is read but the metadata."""
    tree = _saved_tree(path)
    return _served_params(tree, _ema_slot(tree, ema=True))


def read_params_to_host(path: os.PathLike | str, scope: str) -> dict[str, Any]:
    """The subtree `scope` of the params another run's checkpoint serves (`restore_params`),
    as numpy arrays in the layout it was saved with (every process reads all of it)."""
    step_dir = resolve_init_checkpoint(path)
    tree = _saved_tree(step_dir)
    slot = _ema_slot(tree, ema=True)
    item = _at_served_params(tree, slot, {scope: _served_params(tree, slot)[scope]})
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    return _served_params(_restore_item(step_dir, item, restore_args), slot)[scope]


def place(host: Any, abstract: Any) -> Any:
    """Host arrays as global arrays with the dtypes and shardings of `abstract` (same shapes);
    each device takes its slice of the host copy."""

    def one(array, target):
        array = np.asarray(array, target.dtype)
        return jax.make_array_from_callback(target.shape, target.sharding, lambda i: array[i])

    return jax.tree.map(one, host, abstract)


def _saved_tree(path: os.PathLike | str) -> Mapping[str, Any]:
    """The metadata tree of the state saved in another run's checkpoint."""
    with ocp.PyTreeCheckpointer() as checkpointer:
        return checkpointer.metadata(resolve_init_checkpoint(path) / STATE).item_metadata


class PreemptionHandler:
    """Turns SIGTERM / SIGINT into a flag (`requested`) the loop polls; a context manager.

    The previous handlers are put back on exit. A second signal while the flag is set
    falls through to the previous handler (e.g. a second Ctrl-C interrupts at once).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame):
        if self.signum is not None:
            previous = self._previous.get(signum)
            if callable(previous):
                previous(signum, frame)
            return
        logging.warning("received %s: saving a checkpoint before exiting", signal.Signals(signum))
        self.signum = signum

    def __enter__(self) -> "PreemptionHandler":
        for signum in self.SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: no signal handling
                pass
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
