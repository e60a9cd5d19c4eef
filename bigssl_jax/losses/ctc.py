"""Connectionist temporal classification (CTC) loss on padded batches.

For frame log-probabilities p_t(k) = log_softmax(z_t)[k], t < T_b, and a target y_1..y_U_b,
CTC sums over every alignment pi (a frame-level path of labels and blanks that collapses to
y once repeats are merged and blanks removed):

    L_b = -log sum_{pi -> y} prod_{t < T_b} exp(p_t(pi_t)).

The forward recursion is `optax.ctc_loss`'s; this module fixes the dtype (float32 whatever
the logits' dtype) and adds the per-token batch mean a trainer needs.
"""

import jax
import jax.numpy as jnp
import optax

from bigssl_jax.losses import reduction


def ctc_loss(
    logits: jax.Array,
    logit_paddings: jax.Array,
    labels: jax.Array,
    label_paddings: jax.Array,
    *,
    blank_id: int = 0,
) -> jax.Array:
    """Per-sequence CTC negative log-likelihood, in float32.

    Padded frames (and padded labels) are ignored whatever their values. Targets longer than
    their alignment allows (more labels plus needed blanks between repeats than frames) get
    a large finite loss (about 1e5) rather than infinity.

    Args:
      logits: [B, T, V] unnormalised scores; class `blank_id` is the blank.
      logit_paddings: f32[B, T], 1.0 = padded frame (right-padded).
      labels: i32[B, U] target ids (never `blank_id` where valid).
      label_paddings: f32[B, U], 1.0 = padded label (right-padded).
      blank_id: the blank's class id.

    Returns:
      f32[B], L_b.
    """
    return optax.ctc_loss(
        logits.astype(jnp.float32),
        logit_paddings.astype(jnp.float32),
        labels.astype(jnp.int32),
        label_paddings.astype(jnp.float32),
        blank_id=blank_id,
    )


def ctc_loss_and_weight(
    logits: jax.Array,
    logit_paddings: jax.Array,
    labels: jax.Array,
    label_paddings: jax.Array,
    weights: jax.Array,
    *,
    blank_id: int = 0,
) -> tuple[jax.Array, jax.Array]:
    """Batch CTC loss per target token and its weight (see `reduction.token_mean`).

    Args:
      logits: [B, T, V] unnormalised scores.
      logit_paddings: f32[B, T], 1.0 = padded frame.
      labels: i32[B, U] target ids.
      label_paddings: f32[B, U], 1.0 = padded label.
      weights: f32[B], per-row weights (0 = padded row, contributes nothing).
      blank_id: the blank's class id.

    Returns:
      (loss, num_tokens): f32 scalars, sum_b w_b L_b / N and N = sum_b w_b U_b, ready to be a
      `TrainModel`'s loss and `LOSS_WEIGHT`.
    """
    per_seq = ctc_loss(logits, logit_paddings, labels, label_paddings, blank_id=blank_id)
    return reduction.token_mean(per_seq, label_paddings, weights)
