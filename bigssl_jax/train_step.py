"""The pure functions of a run: `init_state`, the train step and the eval step.

    state = init_state(model, tx, rng, batch)
    state, metrics = jax.jit(make_train_step(model, microbatches=4))(state, batch, rng)

The loop that jits and drives them (shardings, data, checkpoints, evaluation) is
`bigssl_jax.trainer`; the AOT report (`bigssl_jax.jobs.aot`) and the benchmarks compile them
alone.

The train step is `train_step(state, batch, rng) -> (state, metrics)`:

  * rng = fold_in(base_rng, state.step), so a resumed run draws the same randomness;
  * the batch [B, ...] is cut into k microbatches (row i goes to microbatch i mod k, so each
    device's rows split locally); a `lax.scan` sums w_j * grad L_j and w_j * L_j and divides by
    sum_j w_j, w_j = the microbatch's `LOSS_WEIGHT` (see `models/base.py`): the update equals
    the whole batch's;
  * non-finite guard: if the loss, the gradient norm, the new parameters or the new optimizer
    state hold a non-finite value (an update can overflow where the gradient did not: a huge
    learning rate, an Adam denominator underflow), the state is returned unchanged (step
    included) and metrics['nonfinite'] = 1; the loop (`bigssl_jax.trainer`) counts these.

The eval step is the loss in eval mode, at the train step's `step`.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from bigssl_jax import train_state as train_state_lib
from bigssl_jax.models import base

TrainState = train_state_lib.TrainState
NONFINITE = "nonfinite"


def init_state(
    model: base.TrainModel,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    batch: base.Batch,
) -> TrainState:
    """A step-0 state of `model`; params stay boxed with logical axis names (for sharded init).

    Args:
      model: the model.
      tx: the optax transform.
      rng: init key.
      batch: an example batch (arrays or `jax.ShapeDtypeStruct`s); only shapes matter.

    Returns:
      A `TrainState` with the 'params' collection as params and every other collection
      (e.g. BEST-RQ's 'frozen' quantiser) as model_state.
    """
    variables = dict(model.init_variables(rng, batch))
    params = variables.pop("params")
    return TrainState.create(params=params, tx=tx, model_state=variables)


def _split_microbatches(batch: base.Batch, k: int) -> base.Batch:
    """[B, ...] -> [k, B / k, ...], microbatch i holding rows i, i + k, i + 2k, ..."""

    def split(x):
        if x.shape[0] % k:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by {k} microbatches")
        return x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)

    return jax.tree.map(split, batch)


def _weighted_loss_and_grads(model, state, batch, rng, k):
    """(loss, metrics, grads) of the batch, accumulated over k microbatches."""

    def one(params, microbatch, microbatch_rng):
        def loss_fn(p):
            variables = {"params": p, **state.model_state}
            return model.loss(variables, microbatch, microbatch_rng, step=state.step, train=True)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        weight = jnp.asarray(metrics.get(base.LOSS_WEIGHT, 1.0), jnp.float32)
        return loss, metrics, grads, weight

    if k == 1:
        loss, metrics, grads, _ = one(state.params, batch, rng)
        return loss, metrics, grads

    def body(carry, xs):
        grad_sum, loss_sum, weight_sum = carry
        index, microbatch = xs
        loss, metrics, grads, weight = one(state.params, microbatch, jax.random.fold_in(rng, index))
        grad_sum = jax.tree.map(lambda a, g: a + weight * g, grad_sum, grads)
        return (grad_sum, loss_sum + weight * loss, weight_sum + weight), (metrics, weight)

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    xs = (jnp.arange(k), _split_microbatches(batch, k))
    (grad_sum, loss_sum, total), (metrics, weights) = jax.lax.scan(
        body, (zeros, jnp.float32(0.0), jnp.float32(0.0)), xs
    )
    denominator = jnp.maximum(total, 1e-12)
    shares = weights / denominator
    metrics = {name: jnp.sum(value * shares) for name, value in metrics.items()}
    if base.LOSS_WEIGHT in metrics:
        metrics[base.LOSS_WEIGHT] = total
    grads = jax.tree.map(lambda g: g / denominator, grad_sum)
    return loss_sum / denominator, metrics, grads


def _all_finite(tree: Any) -> jax.Array:
    """True (a bool scalar) when every floating-point leaf of `tree` is finite everywhere."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.stack([jnp.isfinite(x).all() for x in leaves]).all() if leaves else jnp.bool_(True)


def make_train_step(
    model: base.TrainModel,
    *,
    microbatches: int = 1,
    learning_rate_fn: optax.Schedule | None = None,
) -> Callable[[TrainState, base.Batch, jax.Array], tuple[TrainState, base.Metrics]]:
    """The pure train step (see the module docstring).

    Args:
      model: the model.
      microbatches: k, gradient accumulation steps.
      learning_rate_fn: adds metrics['learning_rate'] = learning_rate_fn(step) when given.

    Returns:
      `train_step(state, batch, rng) -> (state, metrics)`; metrics are the model's, with
      'loss', 'grad_norm' (before clipping), 'nonfinite' (1.0 = update skipped).
    """

    def train_step(state, batch, rng):
        rng = jax.random.fold_in(rng, state.step)
        loss, metrics, grads = _weighted_loss_and_grads(model, state, batch, rng, microbatches)
        grad_norm = optax.global_norm(grads)
        updated = state.apply_gradients(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        finite &= _all_finite((updated.params, updated.opt_state))
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
        metrics = {
            **metrics,
            "loss": loss,
            "grad_norm": grad_norm,
            NONFINITE: 1.0 - finite.astype(jnp.float32),
        }
        if learning_rate_fn is not None:
            metrics["learning_rate"] = learning_rate_fn(state.step)
        return new_state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}

    return train_step


def make_eval_step(model: base.TrainModel) -> Callable[..., base.Metrics]:
    """`eval_step(params, model_state, batch, rng, step) -> metrics`, the loss in eval mode
    (at the train step `step`, so annealed quantities such as the Gumbel temperature are the
    ones training uses)."""

    def eval_step(params, model_state, batch, rng, step):
        variables = {"params": params, **model_state}
        loss, metrics = model.loss(variables, batch, rng, step=step, train=False)
        return {k: jnp.asarray(v, jnp.float32) for k, v in {**metrics, "loss": loss}.items()}

    return eval_step
