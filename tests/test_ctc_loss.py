"""CTC loss against a numpy forward recursion over the blank-extended label sequence."""

import jax
import jax.numpy as jnp
import numpy as np

from bigssl_jax.losses import ctc


def _np_ctc(logits, labels, blank_id=0):
    """-log P(labels | logits) for one unpadded sequence, in float64 (Graves et al. 2006).

    Over the extended sequence l' = (blank, y_1, blank, ..., y_U, blank) of length S = 2U + 1:
      alpha[0, 0] = p_0(blank), alpha[0, 1] = p_0(y_1),
      alpha[t, s] = p_t(l'_s) (alpha[t-1, s] + alpha[t-1, s-1]
                               + alpha[t-1, s-2] [l'_s != blank and l'_s != l'_{s-2}]),
      P = alpha[T-1, S-1] + alpha[T-1, S-2].
    """
    z = logits.astype(np.float64)
    log_probs = z - np.logaddexp.reduce(z, axis=-1, keepdims=True)
    ext = [blank_id]
    for y in labels:
        ext += [int(y), blank_id]
    alpha = np.full(len(ext), -np.inf)
    alpha[0] = log_probs[0, blank_id]
    if len(ext) > 1:
        alpha[1] = log_probs[0, ext[1]]
    for t in range(1, len(z)):
        prev = alpha.copy()
        for s, k in enumerate(ext):
            terms = [prev[s]] + ([prev[s - 1]] if s > 0 else [])
            if s > 1 and k != blank_id and k != ext[s - 2]:
                terms.append(prev[s - 2])
            alpha[s] = np.logaddexp.reduce(terms) + log_probs[t, k]
    return -np.logaddexp.reduce(alpha[-2:])


def _paddings(lengths, size):
    return (np.arange(size)[None] >= np.asarray(lengths)[:, None]).astype(np.float32)


def _loss_sum(logits, *args):
    per_seq = ctc.ctc_loss(logits, *args)
    return jnp.sum(per_seq), per_seq


# (loss sum, per-sequence losses), d sum / d logits.
_loss_and_grad = jax.jit(jax.value_and_grad(_loss_sum, has_aux=True))

# Repeated labels, an empty target, a target needing every frame, a single frame.
_TARGETS = [[1, 1, 2, 2], [3, 4], [], [1, 2, 3], [], [4, 4, 4]]
_FRAME_LENS = [8, 6, 8, 3, 1, 7]


def _batch(rng, pad_value, vocab=5, frames=8, num_labels=4):
    batch = len(_TARGETS)
    logits = rng.standard_normal((batch, frames, vocab)).astype(np.float32)
    logit_paddings = _paddings(_FRAME_LENS, frames)
    logits = np.where(logit_paddings[:, :, None] > 0, pad_value, logits)
    # Padded labels repeat the last label, are random, or out of range: none may matter.
    labels = rng.integers(1, vocab, (batch, num_labels)).astype(np.int32)
    labels[4] = -1
    for b, target in enumerate(_TARGETS):
        labels[b, : len(target)] = target
        if target and b % 2:
            labels[b, len(target) :] = target[-1]
    label_paddings = _paddings([len(t) for t in _TARGETS], num_labels)
    return logits, logit_paddings, labels, label_paddings


def test_loss_matches_numpy_and_padding_is_ignored():
    rng = np.random.default_rng(0)
    logits, logit_pad, labels, label_pad = _batch(rng, pad_value=25.0)
    (_, per_seq), grad = _loss_and_grad(logits, logit_pad, labels, label_pad)
    for b, target in enumerate(_TARGETS):
        want = _np_ctc(logits[b, : _FRAME_LENS[b]], target)
        np.testing.assert_allclose(per_seq[b], want, rtol=1e-5, atol=1e-5)
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad[logit_pad > 0], 0.0)
    # Softmax rows sum to one, so the gradient of each valid frame sums to zero over V.
    np.testing.assert_allclose(grad.sum(-1), 0.0, atol=1e-5)

    other = np.where(logit_pad[:, :, None] > 0, -7.0, logits)
    (_, per_seq_other), _ = _loss_and_grad(other, logit_pad, labels, label_pad)
    np.testing.assert_array_equal(per_seq_other, per_seq)


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    logits, logit_pad, labels, label_pad = _batch(rng, pad_value=0.0)
    _, grad = _loss_and_grad(logits, logit_pad, labels, label_pad)
    eps = 1e-3
    for b, t, k in [(0, 2, 1), (3, 0, 0), (5, 6, 4), (1, 5, 3)]:
        up, down = logits.astype(np.float64).copy(), logits.astype(np.float64).copy()
        up[b, t, k] += eps
        down[b, t, k] -= eps
        t_len = _FRAME_LENS[b]
        numeric = _np_ctc(up[b, :t_len], _TARGETS[b]) - _np_ctc(down[b, :t_len], _TARGETS[b])
        np.testing.assert_allclose(grad[b, t, k], numeric / (2 * eps), atol=1e-4)


def test_float32_output_and_weighted_token_mean():
    rng = np.random.default_rng(2)
    logits, logit_pad, labels, label_pad = _batch(rng, pad_value=0.0)
    low = jax.eval_shape(ctc.ctc_loss, logits.astype(jnp.bfloat16), logit_pad, labels, label_pad)
    assert low.dtype == jnp.float32
    (_, per_seq), _ = _loss_and_grad(logits, logit_pad, labels, label_pad)
    weights = np.array([1.0, 0.0, 1.0, 2.0, 1.0, 0.0], np.float32)
    loss, num_tokens = jax.jit(ctc.ctc_loss_and_weight)(
        logits, logit_pad, labels, label_pad, weights
    )
    np.testing.assert_allclose(num_tokens, 4 + 0 + 2 * 3 + 0)
    want = (per_seq[0] + per_seq[2] + 2 * per_seq[3] + per_seq[4]) / 10.0
    np.testing.assert_allclose(loss, want, rtol=1e-6)
