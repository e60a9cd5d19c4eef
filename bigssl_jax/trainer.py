"""The training loop every stage shares: a `TrainModel`, an optimizer, data, a mesh.

    result = trainer.train(model=model, optimizer=OptimizerConfig(...), config=TrainerConfig(...),
                           mesh=mesh, train_iter=iterator, model_dir=model_dir,
                           eval_iter_fn=lambda: make_iterator(dev_config))

Sections of `train`: restore order (resume > init_checkpoint > scratch, see
`bigssl_jax.checkpointing`), sharded init, fitted statistics (`models.base.StatisticsModel`,
on a fresh start only), the jitted step, then the loop: one step per batch, metrics, periodic
log / eval / checkpoint, preemption.

The step is `train_step.make_train_step` (pure: microbatch accumulation and the non-finite
guard are described there). The loop counts the steps the guard skipped, stops after
`max_consecutive_nonfinite` in a row (`NonFiniteError`), and never saves a non-finite state,
because none is ever produced. Reading that flag is the loop's one device-to-host copy per
step (a scalar); everything else stays asynchronous until a log line.

Evaluation: every `eval_every` steps, the eval loss (and its metrics) averaged over up to
`eval_batches` batches; a `models.base.ScoredModel` (ASR, classifiers) is also scored on
them (`score`: decoding + WER, accuracy...), its metrics joining the eval metrics (so
`best_metric` may be 'wer') and its report files going to `<model_dir>/eval/<step>/`. With
`OptimizerConfig.ema_decay` set, what is evaluated is the EMA of the params, as what the
run's checkpoints serve to inference and to other runs (`bigssl_jax.checkpointing`).

It is jitted once per batch shape with explicit state / batch shardings and the state donated
(`partitioning.jit_train_step`). Metrics are `clu.metrics.Average`s over the steps since the last
log; they go to TensorBoard (`clu.metric_writers`, under `train/` and `eval/`) and to one log
line per `log_every`, with `clu.periodic_actions.ReportProgress` adding steps/s and the ETA.
Without TensorFlow (which clu's writers import) they go to the log alone (`summaries`).
"""

import dataclasses
import functools
import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from absl import logging
from clu import metrics as clu_metrics

from bigssl_jax import checkpointing, optimizers, partitioning, paths, summaries
from bigssl_jax import train_state as train_state_lib
from bigssl_jax import train_step as train_step_lib
from bigssl_jax.models import base

TrainState = train_state_lib.TrainState


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainerConfig:
    """The loop's settings.

    Attributes:
      num_steps: train until `state.step` reaches this many applied updates.
      log_every: steps between log lines / train summaries.
      eval_every: steps between evaluations on the eval data (0: only at the end).
      eval_batches: at most this many eval batches per evaluation (None: the whole set).
      checkpoint_every: steps between checkpoints (the last step is always saved).
      keep_last: K most recent checkpoints kept.
      keep_best: M best checkpoints by eval `best_metric` kept besides them (0: none).
      best_metric: eval metric that ranks checkpoints, e.g. 'loss'.
      best_mode: 'min' or 'max'.
      microbatches: k, gradient accumulation steps per batch (the batch size must divide).
      max_consecutive_nonfinite: stop after this many skipped steps in a row.
      seed: seed of init and of every step's randomness.
      init_checkpoint: when not resuming, start from this checkpoint (see checkpointing).
      init_params_only: take only the params of `init_checkpoint` (fresh optimizer, step 0).
      init_params_scopes: with `init_params_only`, take only these top-level params subtrees
        (e.g. ('encoder',) to fine-tune a pre-trained encoder: the pre-training heads are
        dropped and the new heads keep their fresh init; an encoder saved with other stage
        cuts, such as w2v-BERT's, is regrouped); empty takes every param.
      async_checkpointing: write checkpoints in a background thread.
    """

    num_steps: int = 1000
    log_every: int = 50
    eval_every: int = 0
    eval_batches: int | None = 20
    checkpoint_every: int = 1000
    keep_last: int = 3
    keep_best: int = 0
    best_metric: str = "loss"
    best_mode: str = "min"
    microbatches: int = 1
    max_consecutive_nonfinite: int = 10
    seed: int = 0
    init_checkpoint: str | None = None
    init_params_only: bool = False
    init_params_scopes: tuple[str, ...] = ()
    async_checkpointing: bool = True


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """How `train` ended: the final state, its step, whether it stopped for a signal."""

    state: TrainState
    step: int
    preempted: bool
    nonfinite_total: int
    eval_metrics: dict[str, float]


class NonFiniteError(RuntimeError):
    """Too many consecutive steps had a non-finite loss, gradient or update."""


# ---------------------------------------------------------------------------------------
# Sharded init and restore.
# ---------------------------------------------------------------------------------------


def _shapes(batch: base.Batch) -> dict[str, jax.ShapeDtypeStruct]:
    return {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype) for k, v in batch.items()}


def _state_factory(model: base.TrainModel, tx: optax.GradientTransformation, batch: base.Batch):
    """`init_fn(rng) -> boxed TrainState` for the shapes of `batch`."""
    return functools.partial(train_step_lib.init_state, model, tx, batch=_shapes(batch))


def _init_or_restore(init_fn, rng, mesh, rules, config, checkpointer, latest, regroup=None):
    """The state by the restore order (resume > init_checkpoint > scratch), its shardings, and
    whether its model state is freshly initialised (False when a whole state was restored).
    `regroup`: the model's `regroup_params` hook, if any (`models.base.RegroupsParams`)."""
    with nn.logical_axis_rules(()):
        boxed = jax.eval_shape(init_fn, rng)
    shardings = partitioning.state_shardings(boxed, mesh, rules)
    abstract = checkpointing.abstract_state(nn.unbox(boxed), shardings)
    if latest is not None:
        logging.info("resuming from step %d of %s", latest, checkpointer.directory)
        state, _ = checkpointer.restore(latest, abstract)
        return state, shardings, False
    if config.init_checkpoint and not config.init_params_only:
        return checkpointing.restore_from(config.init_checkpoint, abstract), shardings, False
    state, _ = partitioning.init_sharded_state(init_fn, mesh, rules, rng, shardings=shardings)
    if config.init_checkpoint:
        params = checkpointing.restore_init_params(
            config.init_checkpoint,
            abstract.params,
            state.params,
            scopes=config.init_params_scopes,
            regroup=regroup,
        )
        state = state.replace(
            params=params,
            opt_state=jax.jit(state.tx.init, out_shardings=shardings.opt_state)(params),
        )
    return state, shardings, True


def fit_statistics(
    model: base.StatisticsModel, state: TrainState, batches: Iterator[base.Batch], mesh, shardings
) -> TrainState:
    """`state` with the collections `model.fit_statistics` fits on `statistics_batches` batches.

    Features are computed on the mesh from global batches and gathered replicated, so every
    process fits the same statistics from every process's rows (padded rows dropped).
    """

    def features_and_weights(params, model_state, batch):
        return model.statistics_features({"params": params, **model_state}, batch), batch["weights"]

    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    features_fn = jax.jit(features_and_weights, out_shardings=replicated)
    rows = []
    for batch in itertools.islice(batches, model.statistics_batches):
        global_batch = partitioning.make_global_batch(numeric_fields(batch), mesh)
        with partitioning.mesh_context(mesh):
            features, weights = features_fn(state.params, state.model_state, global_batch)
        rows.append(np.asarray(features)[np.asarray(weights) > 0])
    if not rows:
        raise ValueError("no training batch to fit the model's statistics on")
    fitted = model.fit_statistics(np.concatenate(rows))
    logging.info("fitted %s on %d rows", sorted(fitted), sum(len(r) for r in rows))
    model_state = {**state.model_state, **fitted}
    return state.replace(model_state=jax.device_put(model_state, shardings.model_state))


# ---------------------------------------------------------------------------------------
# Metrics and evaluation.
# ---------------------------------------------------------------------------------------


@functools.lru_cache
def _averages(names: tuple[str, ...]) -> type[clu_metrics.Collection]:
    """A clu collection (one class per name set) averaging each named scalar over steps."""
    return clu_metrics.Collection.create(
        **{name: clu_metrics.Average.from_output(name) for name in names}
    )


def _to_floats(collection: clu_metrics.Collection) -> dict[str, float]:
    return {k: float(v) for k, v in collection.compute().items()}


def evaluate(eval_step, state, batches: Iterator[base.Batch], mesh, rng, max_batches):
    """Averages `eval_step`'s metrics over up to `max_batches` batches.

    Each batch weighs its `LOSS_WEIGHT` (masked frames, target tokens...; 1 without it), so
    the eval loss is the mean over the whole set, as one big batch would give;
    `LOSS_WEIGHT` itself is reported as its mean per batch.

    Returns:
      {name: value}, or {} when there is no batch.
    """
    params = optimizers.served_params(state.params, state.opt_state)
    sums, total_weight, num_batches = {}, 0.0, 0
    for index, batch in enumerate(batches):
        if max_batches is not None and index >= max_batches:
            break
        global_batch = partitioning.make_global_batch(numeric_fields(batch), mesh)
        with partitioning.mesh_context(mesh):
            metrics = eval_step(
                params,
                state.model_state,
                global_batch,
                jax.random.fold_in(rng, index),
                state.step,
            )
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        weight = metrics.get(base.LOSS_WEIGHT, 1.0)
        for name, value in metrics.items():
            sums[name] = sums.get(name, 0.0) + (
                value if name == base.LOSS_WEIGHT else weight * value
            )
        total_weight, num_batches = total_weight + weight, num_batches + 1
    return {
        name: value / (num_batches if name == base.LOSS_WEIGHT else max(total_weight, 1e-12))
        for name, value in sums.items()
    }


def numeric_fields(batch: base.Batch) -> dict[str, Any]:
    """The batch without its string fields (ids, reference texts kept for scoring)."""
    return {k: v for k, v in batch.items() if np.asarray(v).dtype.kind not in "OSU"}


def _log_line(step: int, num_steps: int, prefix: str, values: dict[str, float]) -> str:
    shown = " ".join(f"{k} {v:.4g}" for k, v in sorted(values.items()))
    return f"step {step}/{num_steps} {prefix}: {shown}"


# ---------------------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Progress:
    """Host-side counters saved in each checkpoint's meta."""

    nonfinite_total: int = 0
    nonfinite_consecutive: int = 0

    def meta(self, step, train_iter, rng) -> dict:
        return {
            "step": step,
            "input": train_iter.get_state(),
            "rng": np.asarray(jax.random.key_data(rng)).tolist(),
            "nonfinite_total": self.nonfinite_total,
            "nonfinite_consecutive": self.nonfinite_consecutive,
        }


def _check_nonfinite(progress: _Progress, skipped: bool, step: int, config, checkpointer) -> None:
    if not skipped:
        progress.nonfinite_consecutive = 0
        return
    progress.nonfinite_total += 1
    progress.nonfinite_consecutive += 1
    logging.warning(
        "step %d: non-finite loss, gradient or update, update skipped (%d in a row, %d in all)",
        step,
        progress.nonfinite_consecutive,
        progress.nonfinite_total,
    )
    if progress.nonfinite_consecutive >= config.max_consecutive_nonfinite:
        latest = checkpointer.latest_step()
        saved = f"The latest checkpoint (step {latest}) holds finite values"
        if latest is None:
            saved = "No checkpoint was saved"
        raise NonFiniteError(
            f"{progress.nonfinite_consecutive} consecutive steps with a non-finite loss, "
            f"gradient or update at step {step}; stopping. {saved}: lower the learning rate "
            "or check the data, then resume."
        )


def train(
    *,
    model: base.TrainModel,
    optimizer: optimizers.OptimizerConfig,
    config: TrainerConfig,
    mesh: jax.sharding.Mesh,
    train_iter: Any,
    model_dir: os.PathLike,
    eval_iter_fn: Callable[[], Iterator[base.Batch]] | None = None,
    rules: partitioning.LogicalRules = partitioning.LOGICAL_AXIS_RULES,
    hooks: Sequence[Callable[[int, TrainState], None]] = (),
) -> TrainResult:
    """Trains `model` until `config.num_steps` (see the module docstring).

    Args:
      model: the model wrapper.
      optimizer: the optimizer settings.
      config: the loop settings.
      mesh: the device mesh.
      train_iter: an iterator of this host's numpy batches with `get_state` / `set_state`
        (`input_pipeline.InputIterator`).
      model_dir: checkpoints under `<model_dir>/checkpoints`, TensorBoard events in it.
      eval_iter_fn: makes a fresh iterator over the eval data (None: no evaluation).
      rules: logical axis rules.
      hooks: `hook(step, state)` after every applied step (e.g. profiling, tests).

    Returns:
      How training ended.

    Raises:
      NonFiniteError: `max_consecutive_nonfinite` skipped steps in a row.
    """
    checkpointer = checkpointing.Checkpointer(
        model_dir,
        keep_last=config.keep_last,
        keep_best=config.keep_best,
        best_metric=config.best_metric,
        best_mode=config.best_mode,
        async_save=config.async_checkpointing,
    )
    writer = summaries.create_writer(model_dir, just_logging=jax.process_index() > 0)
    run = _Run(
        model=model,
        config=config,
        mesh=mesh,
        rules=rules,
        train_iter=train_iter,
        eval_iter_fn=eval_iter_fn,
        checkpointer=checkpointer,
        writer=writer,
        model_dir=model_dir,
    )
    try:
        with checkpointing.PreemptionHandler() as preemption:
            state, batch = run.restore_or_init(optimizer)
            return run.loop(state, batch, optimizer, preemption, hooks)
    finally:
        checkpointer.close()
        writer.flush()


@dataclasses.dataclass
class _Run:
    """One `train` call: its inputs, I/O objects, rng and counters; the loop's parts."""

    model: base.TrainModel
    config: TrainerConfig
    mesh: jax.sharding.Mesh
    rules: partitioning.LogicalRules
    train_iter: Any
    eval_iter_fn: Callable[[], Iterator[base.Batch]] | None
    checkpointer: checkpointing.Checkpointer
    writer: summaries.Writer
    model_dir: os.PathLike = "."
    rng: jax.Array | None = None
    progress: _Progress = dataclasses.field(default_factory=_Progress)
    shardings: Any = None
    eval_step: Any = None

    def restore_or_init(self, optimizer) -> tuple[TrainState, base.Batch]:
        """The state by the restore order, and the first batch (after the restored position)."""
        init_rng, self.rng = jax.random.split(jax.random.key(self.config.seed))
        latest = self.checkpointer.latest_step()
        if latest is not None:
            meta = self.checkpointer.restore_meta(latest)
            self.train_iter.set_state(meta["input"])
            self.rng = jax.random.wrap_key_data(np.asarray(meta["rng"], np.uint32))
            self.progress = _Progress(meta["nonfinite_total"], meta["nonfinite_consecutive"])
        position = self.train_iter.get_state()
        batch = next(self.train_iter)
        init_fn = _state_factory(self.model, optimizers.make_optimizer(optimizer), batch)
        regroup = self.model.regroup_params if isinstance(self.model, base.RegroupsParams) else None
        state, self.shardings, fresh_model_state = _init_or_restore(
            init_fn,
            init_rng,
            self.mesh,
            self.rules,
            self.config,
            self.checkpointer,
            latest,
            regroup,
        )
        if (
            fresh_model_state
            and isinstance(self.model, base.StatisticsModel)
            and self.model.statistics_batches
        ):
            self.train_iter.set_state(position)
            state = fit_statistics(self.model, state, self.train_iter, self.mesh, self.shardings)
            self.train_iter.set_state(position)  # the fit's batches are trained on too
            batch = next(self.train_iter)
        return state, batch

    def save(self, state: TrainState, step: int, metrics: dict | None = None) -> None:
        meta = self.progress.meta(step, self.train_iter, self.rng)
        self.checkpointer.save(step, state, meta, metrics=metrics)

    def evaluate(self, state: TrainState, step: int) -> dict[str, float]:
        if self.eval_step is None:
            self.eval_step = jax.jit(train_step_lib.make_eval_step(self.model))
        values = evaluate(
            self.eval_step,
            state,
            self.eval_iter_fn(),
            self.mesh,
            self.rng,
            self.config.eval_batches,
        )
        if isinstance(self.model, base.ScoredModel):
            values.update(self.score(state, step))
        self.writer.write_scalars(step, {f"eval/{k}": v for k, v in values.items()})
        logging.info(_log_line(step, self.config.num_steps, "eval", values))
        return values

    def score(self, state: TrainState, step: int) -> dict[str, float]:
        """`model.score` on the eval data (decoding, WER...); the report goes to
        `<model_dir>/eval/<step>/`. Single-process runs only: a multi-host job scores with
        `bigssl evaluate` after training."""
        if jax.process_count() > 1:
            return {}
        batches = itertools.islice(self.eval_iter_fn(), self.config.eval_batches)
        params = optimizers.served_params(state.params, state.opt_state)
        report = self.model.score({"params": params, **state.model_state}, batches)
        report.write(paths.as_path(self.model_dir) / "eval" / str(step))
        return dict(report.metrics)

    def log_train(self, step: int, collection: clu_metrics.Collection) -> None:
        values = _to_floats(collection)
        self.writer.write_scalars(step, {f"train/{k}": v for k, v in values.items()})
        logging.info(_log_line(step, self.config.num_steps, "train", values))

    def periodic(self, state: TrainState, step: int, eval_metrics: dict) -> dict:
        """Eval and checkpoint when due at `step`; returns the latest eval metrics."""
        config = self.config
        evaluated = (
            self.eval_iter_fn is not None
            and config.eval_every > 0
            and step % config.eval_every == 0
        )
        if evaluated:
            eval_metrics = self.evaluate(state, step)
        if step % config.checkpoint_every == 0 or (evaluated and config.keep_best):
            self.save(state, step, eval_metrics if evaluated and eval_metrics else None)
        return eval_metrics

    def loop(self, state, batch, optimizer, preemption, hooks) -> TrainResult:
        """Steps until `num_steps`, the data's end, a signal or too many non-finite steps."""
        config, step = self.config, int(state.step)
        logging.info("training from step %d to %d", step, config.num_steps)
        step_fn = train_step_lib.make_train_step(
            self.model,
            microbatches=config.microbatches,
            learning_rate_fn=optimizers.make_schedule(optimizer),
        )
        train_step = partitioning.jit_train_step(
            step_fn, self.shardings, partitioning.batch_sharding(self.mesh), self.mesh, self.rules
        )
        report = summaries.progress_reporter(config.num_steps, self.writer, config.log_every)
        collection, eval_metrics = None, {}
        while step < config.num_steps:
            if batch is None and (batch := next(self.train_iter, None)) is None:
                logging.warning("step %d: the training data ran out", step)
                break
            global_batch = partitioning.make_global_batch(batch, self.mesh)
            state, metrics = train_step(state, global_batch, self.rng)
            batch, skipped = None, bool(metrics[train_step_lib.NONFINITE])
            _check_nonfinite(self.progress, skipped, step, config, self.checkpointer)
            if not skipped:
                step += 1
                single = _averages(tuple(sorted(metrics))).single_from_model_output(**metrics)
                collection = single if collection is None else collection.merge(single)
                report(step)
                for hook in hooks:
                    hook(step, state)
                if step % config.log_every == 0:
                    self.log_train(step, collection)
                    collection = None
                eval_metrics = self.periodic(state, step, eval_metrics)
            # A local signal is acted on alone only in a single-process job; a multi-host job
            # agrees on the step through JAX's preemption sync point (`reached_preemption`).
            local = preemption.requested and jax.process_count() == 1
            if local or self.checkpointer.reached_preemption(step):
                self.save(state, step)
                self.checkpointer.wait()
                logging.warning("stopped at step %d on a signal; checkpoint saved", step)
                return TrainResult(state, step, True, self.progress.nonfinite_total, eval_metrics)
        done_eval = config.eval_every and step % config.eval_every == 0 and eval_metrics
        if self.eval_iter_fn is not None and not done_eval:
            eval_metrics = self.evaluate(state, step)
        self.save(state, step, eval_metrics or None)
        self.checkpointer.wait()
        return TrainResult(state, step, False, self.progress.nonfinite_total, eval_metrics)
