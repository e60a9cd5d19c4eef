"""Batch reduction of per-sequence losses to a mean per target token.

A sequence loss (CTC, RNN-T) returns one negative log-likelihood per utterance, L_b. The
training loss is its mean per target token over the utterances that count (weight w_b > 0),

    L = sum_b w_b L_b / N,    N = sum_b w_b U_b,

where U_b is the number of valid (unpadded) target tokens of row b. N is what a
`models.base.TrainModel` reports as `LOSS_WEIGHT`, so that microbatches combine into the
whole batch's mean.
"""

import jax
import jax.numpy as jnp


def token_mean(
    per_seq_loss: jax.Array, label_paddings: jax.Array, weights: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The weighted mean loss per target token and the weighted token count.

    Rows with weight 0 contribute nothing, even if their loss is not finite. An all-zero
    weight gives (0, 0).

    Args:
      per_seq_loss: f32[B], L_b.
      label_paddings: f32[B, U], 1.0 = padded target token.
      weights: f32[B], w_b (0 for padded rows).

    Returns:
      (L, N): f32 scalars.
    """
    weights = weights.astype(jnp.float32)
    num_tokens = jnp.sum(weights * jnp.sum(1.0 - label_paddings.astype(jnp.float32), axis=-1))
    weighted = jnp.where(weights > 0, weights * per_seq_loss.astype(jnp.float32), 0.0)
    mean = jnp.sum(weighted) / jnp.maximum(num_tokens, 1e-8)
    return jnp.where(num_tokens > 0, mean, 0.0), num_tokens
