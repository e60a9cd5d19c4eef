"""RNN-Transducer loss (Graves 2012) in JAX, on padded batches.

The joint network scores every (frame t, emitted-labels u) pair: z[t, u] in R^V for
t < T, u <= U. With p(k | t, u) = softmax(z[t, u])[k], the log-probabilities of the two
moves out of lattice node (t, u) are

    blank[t, u] = log p(blank | t, u)        (t, u) -> (t + 1, u)
    label[t, u] = log p(y_{u+1} | t, u)      (t, u) -> (t, u + 1)

and the forward variables alpha[t, u] = log P(y_1..y_u emitted in frames 0..t, at node (t, u))
follow

    alpha[0, 0] = 0
    alpha[t, u] = logaddexp(alpha[t-1, u] + blank[t-1, u], alpha[t, u-1] + label[t, u-1]).

The loss of row b, with T_b frames and U_b labels, is

    L_b = -(alpha[T_b - 1, U_b] + blank[T_b - 1, U_b]).

Node (t, u) depends only on nodes of the previous anti-diagonal t + u = n - 1, so the
recursion is a `lax.scan` over the T + U anti-diagonals, each step a vectorised logaddexp
over [B, U + 1]. The lattice is stored skewed (row u shifted right by u, by pad and reshape,
no gather) so that step n reads one contiguous slice. The lattice's gradients come from
autodiff through the scan, whose residuals are O(B T U) floats, a factor V below the logits;
the logits' gradient has its own VJP (see `_move_log_probs_bwd`).

Lattice nodes past a row's lengths never reach its read-out node, so padded frames and labels
need no masking. Rows with T_b = 0 get loss 0.
"""

import functools

import jax
import jax.numpy as jnp

from bigssl_jax.losses import reduction

# Log-probability of impossible lattice moves: finite, so that logaddexp and its gradient
# stay NaN-free; sums of a few thousand of them stay far inside float32's range.
_LOG_ZERO = -1e30


def _skew(x: jax.Array) -> jax.Array:
    """Shifts row u of the lattice right by u: [B, T, U1] -> [T + U1 - 1, B, U1].

    out[n, b, u] = x[b, n - u, u] where 0 <= n - u < T, else _LOG_ZERO.
    """
    batch, num_frames, width = x.shape
    num_diagonals = num_frames + width - 1
    rows = jnp.swapaxes(x, 1, 2)  # [B, U1, T]
    rows = jnp.pad(rows, ((0, 0), (0, 0), (0, width)), constant_values=_LOG_ZERO)
    flat = rows.reshape(batch, width * (num_frames + width))[:, : width * num_diagonals]
    return jnp.transpose(flat.reshape(batch, width, num_diagonals), (2, 0, 1))


def rnnt_loss_from_log_probs(
    blank_log_probs: jax.Array,
    label_log_probs: jax.Array,
    logit_paddings: jax.Array,
    label_paddings: jax.Array,
) -> jax.Array:
    """Per-sequence RNN-T negative log-likelihood from the lattice's move log-probabilities.

    The entry point for a joint network that computes the two log-probabilities itself (e.g.
    fused with the output projection, never materialising [B, T, U + 1, V]).

    Args:
      blank_log_probs: [B, T, U + 1], blank[t, u] = log p(blank | t, u).
      label_log_probs: [B, T, U], label[t, u] = log p(y_{u+1} | t, u).
      logit_paddings: f32[B, T], 1.0 = padded frame (right-padded).
      label_paddings: f32[B, U], 1.0 = padded label (right-padded).

    Returns:
      f32[B], L_b (0 for rows without frames).
    """
    # -inf (e.g. a fused joint's masked moves) becomes _LOG_ZERO, keeping gradients finite.
    blank_log_probs = jnp.maximum(blank_log_probs.astype(jnp.float32), _LOG_ZERO)
    label_log_probs = jnp.maximum(label_log_probs.astype(jnp.float32), _LOG_ZERO)
    batch, num_frames, width = blank_log_probs.shape
    frame_lens = jnp.sum(1.0 - logit_paddings, axis=1).round().astype(jnp.int32)
    label_lens = jnp.sum(1.0 - label_paddings, axis=1).round().astype(jnp.int32)
    # The node whose blank ends the path: diagonal T_b - 1 + U_b, position U_b.
    last_diagonal = frame_lens - 1 + label_lens
    at_last_label = jnp.arange(width)[None, :] == label_lens[:, None]  # [B, U1]

    blank_skewed = _skew(blank_log_probs)  # [N, B, U1]
    # label[t, u - 1] moves into node (t, u): shift labels one column right.
    into = jnp.pad(label_log_probs, ((0, 0), (0, 0), (1, 0)), constant_values=_LOG_ZERO)
    into_skewed = _skew(into)  # [N, B, U1]

    def read_out(n, exit_scores, loss):
        value = jnp.sum(jnp.where(at_last_label, exit_scores, 0.0), axis=1)
        return jnp.where(last_diagonal == n, value, loss)

    def step(carry, inputs):
        alpha, exit_scores, loss = carry  # alpha and alpha + blank on diagonal n - 1
        n, blank_n, into_n = inputs
        from_left = jnp.pad(alpha[:, :-1], ((0, 0), (1, 0)), constant_values=_LOG_ZERO)
        alpha = jnp.logaddexp(exit_scores, from_left + into_n)
        exit_scores = alpha + blank_n
        return (alpha, exit_scores, read_out(n, exit_scores, loss)), None

    alpha0 = jnp.full((batch, width), _LOG_ZERO, jnp.float32).at[:, 0].set(0.0)
    exit0 = alpha0 + blank_skewed[0]
    loss0 = read_out(0, exit0, jnp.zeros((batch,), jnp.float32))
    inputs = (jnp.arange(1, blank_skewed.shape[0]), blank_skewed[1:], into_skewed[1:])
    (_, _, log_likelihood), _ = jax.lax.scan(step, (alpha0, exit0, loss0), inputs)
    return jnp.where(frame_lens > 0, -log_likelihood, 0.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _move_log_probs(logits: jax.Array, labels: jax.Array, blank_id: int):
    """(blank [B, T, U + 1], label [B, T, U]) log-probabilities from logits [B, T, U + 1, V]."""
    return _move_log_probs_fwd(logits, labels, blank_id)[0]


def _move_log_probs_fwd(logits, labels, blank_id):
    logits32 = logits.astype(jnp.float32)
    log_norm = jax.nn.logsumexp(logits32, axis=-1)  # [B, T, U1]
    blank = logits32[..., blank_id] - log_norm
    label_ids = jnp.broadcast_to(labels[:, None, :, None], (*logits.shape[:2], labels.shape[1], 1))
    label = jnp.take_along_axis(logits32[:, :, :-1], label_ids, axis=-1)[..., 0]
    return (blank, label - log_norm[:, :, :-1]), (logits, labels, log_norm)


def _move_log_probs_bwd(blank_id, residuals, cotangents):
    """The logits' cotangent, one elementwise pass over [B, T, U + 1, V]:

        d/dz[k] (g_b (z[blank] - lse) + g_y (z[y] - lse))
            = g_b [k = blank] + g_y [k = y] - (g_b + g_y) p_k,   p_k = exp(z[k] - lse),

    so neither a softmax nor a scatter buffer of the logits' size is kept.
    """
    logits, labels, log_norm = residuals
    d_blank, d_label = cotangents
    d_label = jnp.pad(d_label, ((0, 0), (0, 0), (0, 1)))  # node u = U emits no label
    next_label = jnp.pad(labels, ((0, 0), (0, 1)), constant_values=-1)[:, None, :, None]
    vocab_ids = jnp.arange(logits.shape[-1])
    probs = jnp.exp(logits.astype(jnp.float32) - log_norm[..., None])
    d_logits = (
        jnp.where(vocab_ids == blank_id, d_blank[..., None], 0.0)
        + jnp.where(vocab_ids == next_label, d_label[..., None], 0.0)
        - (d_blank + d_label)[..., None] * probs
    )
    return d_logits.astype(logits.dtype), None


_move_log_probs.defvjp(_move_log_probs_fwd, _move_log_probs_bwd)


def rnnt_loss(
    logits: jax.Array,
    logit_paddings: jax.Array,
    labels: jax.Array,
    label_paddings: jax.Array,
    *,
    blank_id: int = 0,
) -> jax.Array:
    """Per-sequence RNN-T negative log-likelihood from the joint's logits, in float32.

    log p(k | t, u) = z[t, u, k] - logsumexp_k' z[t, u, k'] is evaluated only for k = blank
    and k = y_{u+1}. A custom VJP writes d L / d z in one elementwise pass from the saved
    logits and logsumexp, so no softmax or scatter buffer of the logits' size is kept.

    Args:
      logits: [B, T, U + 1, V], z[b, t, u] = joint(encoder[b, t], prediction[b, u]).
      logit_paddings: f32[B, T], 1.0 = padded frame (right-padded).
      labels: i32[B, U] target ids (never `blank_id` where valid).
      label_paddings: f32[B, U], 1.0 = padded label (right-padded).
      blank_id: the blank's class id.

    Returns:
      f32[B], L_b (0 for rows without frames).
    """
    # Padded labels may hold any id (even out of range): they index the blank instead.
    labels = jnp.where(label_paddings > 0, blank_id, labels).astype(jnp.int32)
    blank_log_probs, label_log_probs = _move_log_probs(logits, labels, blank_id)
    return rnnt_loss_from_log_probs(
        blank_log_probs, label_log_probs, logit_paddings, label_paddings
    )


def rnnt_loss_and_weight(
    logits: jax.Array,
    logit_paddings: jax.Array,
    labels: jax.Array,
    label_paddings: jax.Array,
    weights: jax.Array,
    *,
    blank_id: int = 0,
) -> tuple[jax.Array, jax.Array]:
    """Batch RNN-T loss per target token and its weight (see `reduction.token_mean`).

    Args:
      logits: [B, T, U + 1, V] joint logits.
      logit_paddings: f32[B, T], 1.0 = padded frame.
      labels: i32[B, U] target ids.
      label_paddings: f32[B, U], 1.0 = padded label.
      weights: f32[B], per-row weights (0 = padded row, contributes nothing).
      blank_id: the blank's class id.

    Returns:
      (loss, num_tokens): f32 scalars, a `TrainModel`'s loss and `LOSS_WEIGHT`.
    """
    per_seq = rnnt_loss(logits, logit_paddings, labels, label_paddings, blank_id=blank_id)
    return reduction.token_mean(per_seq, label_paddings, weights)
