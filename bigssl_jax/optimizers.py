"""Optimizers of the recipe: Adam with the Transformer schedule, Adafactor, clipping, EMA.

    tx = make_optimizer(OptimizerConfig(name="adam", peak_lr=2e-3, warmup_steps=25_000,
                                        clip_norm=20.0))

The chain is: global-norm clipping -> the optimizer's scaling -> (decoupled weight decay) ->
-learning-rate(step) -> (EMA of the parameters, which leaves the updates unchanged).

Schedule (`transformer_schedule`), with s the number of updates already applied:

    lr(s) = peak_lr * min((s + 1) / warmup_steps, sqrt(warmup_steps / (s + 1)))

a linear warm-up to `peak_lr` at s + 1 = warmup_steps, then inverse-square-root decay
(Vaswani et al. 2017, rescaled so that its maximum is `peak_lr`). `decay="constant"` holds the
peak after the warm-up; `decay="cosine"` decays to 0 at `decay_steps`.

Adafactor here is the recipe's: first moment with beta1 (0.9), a factored second moment with a
*fixed* beta2 (0.98; optax's `adafactor` uses the 1 - t^-0.8 schedule instead), RMS update
clipping at 1, no parameter-scale multiplication. For a matrix gradient G [.., R, C]:

    r <- beta2 r + (1 - beta2) mean_c(G^2 + eps)        [.., R]
    c <- beta2 c + (1 - beta2) mean_r(G^2 + eps)        [.., C]
    v = r c^T / mean(r)                                 [.., R, C]
    u = G / sqrt(v);  u <- u / max(1, rms(u));  m <- beta1 m + (1 - beta1) u

(vectors and scalars keep a full v). Its update is `m`, scaled by -lr(s).

Encoder and head schedules (fine-tuning, `encoder_peak_lr`): the params under the top-level
'encoder' get their own schedule (peak `encoder_peak_lr`, warm-up `encoder_warmup_steps`,
same decay) and every other param (the decoder, a classifier head) the main one; the recipe
fine-tunes with encoder 3e-4 / 5k and decoder 1e-3 / 1.5k. `freeze_encoder_steps` = N
multiplies the encoder's rate by 0 for the first N updates (its Adam moments still track).

EMA (`ema_decay`): after each update, ema <- d * ema + (1 - d) * params, starting from the
initial params. It lives in the optimizer state (sharded like the params), so it is
checkpointed with it; read it with `ema_params(opt_state)`. It is then what the run is:
the trainer evaluates it and its checkpoints serve it to inference and to runs initialised
from them (`served_params`, `bigssl_jax.checkpointing`).
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("adam", "adafactor", "sgd")
DECAYS = ("rsqrt", "constant", "cosine")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """The optimizer and its schedule.

    Attributes:
      name: 'adam' (AdamW when weight_decay > 0), 'adafactor' or 'sgd'.
      peak_lr: the learning rate at the end of the warm-up.
      warmup_steps: linear warm-up length in updates.
      decay: after the warm-up: 'rsqrt' (Transformer schedule), 'constant' or 'cosine'.
      decay_steps: for 'cosine', the update at which the rate reaches 0.
      b1: first-moment decay (Adam, Adafactor).
      b2: second-moment decay (Adam; Adafactor's fixed beta2).
      eps: Adam's epsilon; Adafactor's epsilon inside the squared gradient.
      weight_decay: decoupled weight decay coefficient (multiplied by the learning rate).
      clip_norm: global gradient-norm clipping threshold; None disables it.
      ema_decay: keep an exponential moving average of the params with this decay; None
        disables it.
      encoder_peak_lr: a separate peak rate for the params under 'encoder' (None: one
        schedule for all params).
      encoder_warmup_steps: the encoder schedule's warm-up (None: `warmup_steps`).
      freeze_encoder_steps: the encoder's rate is 0 for this many updates.
    """

    name: str = "adam"
    peak_lr: float = 2e-3
    warmup_steps: int = 25_000
    decay: str = "rsqrt"
    decay_steps: int = 0
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-9
    weight_decay: float = 0.0
    clip_norm: float | None = 20.0
    ema_decay: float | None = None
    encoder_peak_lr: float | None = None
    encoder_warmup_steps: int | None = None
    freeze_encoder_steps: int = 0

    @property
    def separate_encoder(self) -> bool:
        """Whether the 'encoder' params have their own schedule."""
        return self.encoder_peak_lr is not None or self.freeze_encoder_steps > 0

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"OptimizerConfig.name {self.name!r} is not one of {OPTIMIZERS}")
        if self.decay not in DECAYS:
            raise ValueError(f"OptimizerConfig.decay {self.decay!r} is not one of {DECAYS}")
        if self.warmup_steps < 1:
            raise ValueError(f"OptimizerConfig.warmup_steps must be >= 1, got {self.warmup_steps}")
        if self.decay == "cosine" and self.decay_steps <= self.warmup_steps:
            raise ValueError("OptimizerConfig.decay_steps must exceed warmup_steps for 'cosine'")


# ---------------------------------------------------------------------------------------
# Schedules.
# ---------------------------------------------------------------------------------------


def transformer_schedule(peak_lr: float, warmup_steps: int) -> optax.Schedule:
    """lr(s) = peak_lr * min((s + 1) / warmup_steps, sqrt(warmup_steps / (s + 1)))."""

    def schedule(count):
        s = jnp.asarray(count, jnp.float32) + 1.0
        return peak_lr * jnp.minimum(s / warmup_steps, jnp.sqrt(warmup_steps / s))

    return schedule


def linear_warmup(peak_lr: float, warmup_steps: int) -> optax.Schedule:
    """lr(s) = peak_lr * min((s + 1) / warmup_steps, 1)."""

    def schedule(count):
        s = jnp.asarray(count, jnp.float32) + 1.0
        return peak_lr * jnp.minimum(s / warmup_steps, 1.0)

    return schedule


def make_schedule(config: OptimizerConfig) -> optax.Schedule:
    """The learning rate as a function of the number of applied updates."""
    return _schedule(config.decay, config.peak_lr, config.warmup_steps, config.decay_steps)


def make_encoder_schedule(config: OptimizerConfig) -> optax.Schedule:
    """The 'encoder' params' rate: its own peak and warm-up, 0 while frozen."""
    peak = config.peak_lr if config.encoder_peak_lr is None else config.encoder_peak_lr
    warmup = config.encoder_warmup_steps or config.warmup_steps
    schedule = _schedule(config.decay, peak, warmup, config.decay_steps)
    frozen = config.freeze_encoder_steps

    def encoder_schedule(count):
        return jnp.where(jnp.asarray(count) < frozen, 0.0, schedule(count))

    return encoder_schedule


def _schedule(decay: str, peak_lr: float, warmup_steps: int, decay_steps: int) -> optax.Schedule:
    if decay == "rsqrt":
        return transformer_schedule(peak_lr, warmup_steps)
    warmup = linear_warmup(peak_lr, warmup_steps)
    if decay == "constant":
        return warmup
    cosine = optax.cosine_decay_schedule(peak_lr, decay_steps - warmup_steps + 1)
    return optax.join_schedules([warmup, cosine], [warmup_steps - 1])


# ---------------------------------------------------------------------------------------
# Adafactor with a fixed beta2.
# ---------------------------------------------------------------------------------------


class FactoredRmsState(NamedTuple):
    """Row / column (or full, for vectors) second-moment averages per parameter."""

    row: Any
    col: Any
    full: Any


def _factored(x) -> bool:
    return x.ndim >= 2


def scale_by_factored_rms(beta2: float = 0.98, eps: float = 1e-30) -> optax.GradientTransformation:
    """u = G / sqrt(v) with Adafactor's factored v and a fixed beta2 (see the module docstring).

    Args:
      beta2: decay of the second-moment averages.
      eps: added to G^2 before averaging.

    Returns:
      The transformation (no RMS clipping or momentum; see `adafactor`).
    """

    def init(params):
        def zeros(shape_fn):
            return jax.tree.map(lambda p: jnp.zeros(shape_fn(p), jnp.float32), params)

        # Factored leaves keep `full` as a scalar; vectors keep `row` and `col` as scalars.
        return FactoredRmsState(
            row=zeros(lambda p: p.shape[:-1] if _factored(p) else ()),
            col=zeros(lambda p: p.shape[:-2] + p.shape[-1:] if _factored(p) else ()),
            full=zeros(lambda p: () if _factored(p) else p.shape),
        )

    def update_one(g, row, col, full):
        g2 = jnp.square(g.astype(jnp.float32)) + eps
        if not _factored(g):
            full = beta2 * full + (1 - beta2) * g2
            return g * jax.lax.rsqrt(full), row, col, full
        row = beta2 * row + (1 - beta2) * jnp.mean(g2, axis=-1)
        col = beta2 * col + (1 - beta2) * jnp.mean(g2, axis=-2)
        v = row[..., :, None] * col[..., None, :] / jnp.mean(row, axis=-1)[..., None, None]
        return g * jax.lax.rsqrt(v), row, col, full

    def update(updates, state, params=None):
        del params
        grads, treedef = jax.tree.flatten(updates)
        stats = [jax.tree.leaves(getattr(state, name)) for name in FactoredRmsState._fields]
        outs = [update_one(g, *s) for g, *s in zip(grads, *stats, strict=True)]
        u, row, col, full = (treedef.unflatten(list(x)) for x in zip(*outs, strict=True))
        return u, FactoredRmsState(row=row, col=col, full=full)

    return optax.GradientTransformation(init, update)


def adafactor(
    b1: float = 0.9, b2: float = 0.98, eps: float = 1e-30
) -> optax.GradientTransformation:
    """Adafactor's direction: factored RMS scaling, RMS clipping at 1, momentum b1."""
    return optax.chain(
        scale_by_factored_rms(b2, eps),
        optax.clip_by_block_rms(1.0),
        optax.ema(b1, debias=False),
    )


# ---------------------------------------------------------------------------------------
# EMA of the parameters.
# ---------------------------------------------------------------------------------------


class EmaState(NamedTuple):
    """The moving average of the params (same tree, float32)."""

    ema: Any


def params_ema(decay: float) -> optax.GradientTransformation:
    """Tracks ema <- decay * ema + (1 - decay) * (params + updates); updates pass unchanged.

    Must be the last transformation of a chain (it needs the final updates).
    """

    def init(params):
        return EmaState(ema=jax.tree.map(lambda p: p, params))

    def update(updates, state, params):
        if params is None:
            raise ValueError("params_ema needs the params in tx.update(updates, state, params)")
        ema = jax.tree.map(
            lambda e, p, u: decay * e + (1 - decay) * (p + u), state.ema, params, updates
        )
        return updates, EmaState(ema=ema)

    return optax.GradientTransformation(init, update)


def _ema_state(opt_state: optax.OptState) -> EmaState | None:
    """The `EmaState` in `opt_state`, or None."""
    leaves = jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, EmaState))
    return next((s for s in leaves if isinstance(s, EmaState)), None)


def ema_params(opt_state: optax.OptState) -> Any:
    """The EMA params stored in an optimizer state built with `ema_decay` set.

    Raises:
      ValueError: the state holds no EMA.
    """
    state = _ema_state(opt_state)
    if state is None:
        raise ValueError("the optimizer state has no EMA (set OptimizerConfig.ema_decay)")
    return state.ema


def served_params(params: Any, opt_state: optax.OptState) -> Any:
    """What a run evaluates and serves: the EMA of `params` when `opt_state` keeps one
    (`ema_params`), else `params` (`bigssl_jax.checkpointing` reads the same from a saved
    state)."""
    return params if _ema_state(opt_state) is None else ema_params(opt_state)


# ---------------------------------------------------------------------------------------
# The optimizer.
# ---------------------------------------------------------------------------------------


ENCODER = "encoder"


def scale_by_group_learning_rates(
    schedule: optax.Schedule, encoder_schedule: optax.Schedule
) -> optax.GradientTransformation:
    """u <- -lr(s) u, with lr = `encoder_schedule` under the top-level params 'encoder', else
    `schedule`; s counts updates. Its state is one counter (no params-shaped leaves)."""

    def init(params):
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        del params
        rates = {False: -schedule(state.count), True: -encoder_schedule(state.count)}

        def scale(path, update):
            in_encoder = getattr(path[0], "key", None) == ENCODER
            return update * jnp.asarray(rates[in_encoder], update.dtype)

        scaled = jax.tree_util.tree_map_with_path(scale, updates)
        return scaled, optax.ScaleByScheduleState(count=optax.safe_int32_increment(state.count))

    return optax.GradientTransformation(init, update)


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    """The optax chain described by `config` (see the module docstring)."""
    schedule = make_schedule(config)
    parts = []
    if config.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(config.clip_norm))
    if config.name == "adam":
        parts.append(optax.scale_by_adam(config.b1, config.b2, config.eps))
    elif config.name == "adafactor":
        parts.append(adafactor(config.b1, config.b2, config.eps))
    if config.weight_decay:
        parts.append(optax.add_decayed_weights(config.weight_decay))
    if config.separate_encoder:
        parts.append(scale_by_group_learning_rates(schedule, make_encoder_schedule(config)))
    else:
        parts.append(optax.scale_by_learning_rate(schedule))
    if config.ema_decay is not None:
        parts.append(params_ema(config.ema_decay))
    return optax.chain(*parts)
