"""Span masking of encoder frames for wav2vec 2.0, w2v-BERT and BEST-RQ pre-training.

Convention (fairseq's `compute_mask_indices`, "static" spans): `mask_prob` is the fraction of
valid frames that would be masked if spans never overlapped. An utterance with L valid frames
gets

    n = clip(max(floor(mask_prob * L / span_length + u), min_masks), 0, N),   u ~ U[0, 1),

span starts, drawn uniformly *without replacement* from the N = max(L - span_length + 1, 1)
start positions whose span fits in the valid frames (N = 0 when L = 0). Each start masks the
`span_length` frames that follow it; spans may overlap, so the masked fraction is below
`mask_prob` (about 0.49 for 0.65 x 10). Since E[floor(a + u)] = a, the expected number of starts
is exactly mask_prob * L / span_length (before the clip): every frame is a start with
probability mask_prob / span_length. The two published settings are therefore the same:
wav2vec 2.0's fairseq `mask_prob=0.65, mask_length=10` and w2v-BERT's "start probability
p = 0.065, span 10" are both `compute_span_mask(..., mask_prob=0.65, span_length=10)`.

Short utterances: when L < span_length the only start is frame 0 and the span is cut at the
last valid frame (the whole utterance is masked); padded frames are never masked and an
utterance without valid frames gets no mask.
"""

import jax
import jax.numpy as jnp


def compute_span_mask(
    rng: jax.Array,
    paddings: jax.Array,
    *,
    mask_prob: float,
    span_length: int,
    min_masks: int = 1,
) -> jax.Array:
    """Samples wav2vec 2.0 span masks (see the module docstring for the exact distribution).

    Jit-able with static shapes: starts are the `n_b` lowest of per-frame uniform scores among
    the candidate positions, and spans are expanded with a cumulative sum.

    Args:
      rng: PRNG key.
      paddings: [B, T] float32, 1.0 at padded frames; valid frames come first in each row.
      mask_prob: fraction of frames covered by spans before overlap (fairseq's `mask_prob`).
      span_length: frames per span (M).
      min_masks: least number of spans per utterance with at least one valid frame.

    Returns:
      [B, T] bool, True at masked frames (never at padded ones).
    """
    if span_length < 1:
        raise ValueError(f"span_length must be >= 1, got {span_length}")
    batch, length = paddings.shape
    valid = paddings < 0.5
    lengths = jnp.sum(valid, axis=1, dtype=jnp.int32)  # [B]
    num_candidates = jnp.where(lengths > 0, jnp.maximum(lengths - span_length + 1, 1), 0)

    count_rng, start_rng = jax.random.split(rng)
    jitter = jax.random.uniform(count_rng, (batch,))
    num_starts = jnp.floor(mask_prob * lengths / span_length + jitter).astype(jnp.int32)
    num_starts = jnp.clip(jnp.maximum(num_starts, min_masks), 0, num_candidates)  # [B]

    # Uniform sampling without replacement: the n_b lowest random scores among candidates.
    positions = jnp.arange(length)[None, :]
    scores = jax.random.uniform(start_rng, (batch, length))
    scores = jnp.where(positions < num_candidates[:, None], scores, 2.0)
    ranks = jnp.argsort(jnp.argsort(scores, axis=1), axis=1)
    starts = (ranks < num_starts[:, None]).astype(jnp.int32)  # [B, T]

    # Frame t is masked iff a start lies in [t - span_length + 1, t].
    cumulative = jnp.cumsum(starts, axis=1)
    lagged = jnp.pad(cumulative, ((0, 0), (span_length, 0)))[:, :length]
    return (cumulative - lagged > 0) & valid
