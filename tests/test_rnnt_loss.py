"""RNN-T loss against a numpy lattice recursion (loss and gradients) and brute force."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bigssl_jax.losses import reduction, rnnt


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_rnnt(logits, labels, num_frames, num_labels, blank_id=0):
    """Loss and d loss / d logits of one sequence, from alpha and beta in float64.

    Graves (2012), eq. 16, with occupancy alpha(t, u) beta(t, u) / P:
      d L / d z[t, u, k] = p(k|t,u) occ(t, u)
                           - alpha(t, u) p(k|t,u) / P * (beta(t+1, u) [k = blank]
                                                      + beta(t, u+1) [k = y_{u+1}]).
    """
    logits = logits.astype(np.float64)
    log_probs = _log_softmax(logits)
    t_len, u_len = num_frames, num_labels
    blank = log_probs[:t_len, : u_len + 1, blank_id]
    label = log_probs[:t_len][:, np.arange(u_len), labels[:u_len]]  # [T_b, U_b]
    alpha = np.full((t_len, u_len + 1), -np.inf)
    for t in range(t_len):
        for u in range(u_len + 1):
            if t == 0 and u == 0:
                alpha[t, u] = 0.0
                continue
            terms = []
            if t > 0:
                terms.append(alpha[t - 1, u] + blank[t - 1, u])
            if u > 0:
                terms.append(alpha[t, u - 1] + label[t, u - 1])
            alpha[t, u] = np.logaddexp.reduce(terms)
    # beta[t, u] = log P(rest of the path | node (t, u)); beta[T, U] = 0 after the last blank.
    beta = np.full((t_len + 1, u_len + 2), -np.inf)
    beta[t_len, u_len] = 0.0
    for t in reversed(range(t_len)):
        for u in reversed(range(u_len + 1)):
            terms = [beta[t + 1, u] + blank[t, u]]
            if u < u_len:
                terms.append(beta[t, u + 1] + label[t, u])
            beta[t, u] = np.logaddexp.reduce(terms)
    log_p = alpha[-1, -1] + blank[-1, -1]
    np.testing.assert_allclose(beta[0, 0], log_p, rtol=1e-10)
    grad = np.zeros_like(logits)
    probs = np.exp(log_probs)
    for t in range(t_len):
        for u in range(u_len + 1):
            occupancy = np.exp(alpha[t, u] + beta[t, u] - log_p)
            grad[t, u] = probs[t, u] * occupancy
            scale = np.exp(alpha[t, u] - log_p)
            grad[t, u, blank_id] -= scale * probs[t, u, blank_id] * np.exp(beta[t + 1, u])
            if u < u_len:
                grad[t, u, labels[u]] -= scale * probs[t, u, labels[u]] * np.exp(beta[t, u + 1])
    return -log_p, grad


def _random_batch(rng, batch, frames, num_labels, vocab, frame_lens, label_lens):
    logits = rng.standard_normal((batch, frames, num_labels + 1, vocab)).astype(np.float32)
    labels = rng.integers(1, vocab, (batch, num_labels)).astype(np.int32)
    logit_paddings = (np.arange(frames)[None] >= np.asarray(frame_lens)[:, None]).astype(np.float32)
    label_paddings = (np.arange(num_labels)[None] >= np.asarray(label_lens)[:, None]).astype(
        np.float32
    )
    # Padding holds garbage: it must not matter.
    logits = np.where(logit_paddings[:, :, None, None] > 0, 30.0, logits)
    for b, u_len in enumerate(label_lens):
        logits[b, :, u_len + 1 :] = -20.0
    # Padded labels: the last id, or out of range (-1) on odd rows.
    pad_ids = np.where(np.arange(batch) % 2, -1, vocab - 1)[:, None]
    labels = np.where(label_paddings > 0, pad_ids, labels).astype(np.int32)
    return logits, logit_paddings, labels, label_paddings


def _loss_sum(logits, *args):
    per_seq = rnnt.rnnt_loss(logits, *args)
    return jnp.sum(per_seq), per_seq


# (loss sum, per-sequence losses), d sum / d logits.
_loss_and_grad = jax.jit(jax.value_and_grad(_loss_sum, has_aux=True))


@pytest.mark.parametrize(
    "frames,num_labels,vocab,frame_lens,label_lens",
    [
        # Full lengths, U_b = 0, T_b = 1, U_b > T_b, both padded, U_b = U with T_b < T.
        (7, 6, 5, [7, 6, 1, 3, 4, 5], [6, 0, 2, 6, 3, 6]),
        (3, 2, 9, [3, 2], [2, 1]),
    ],
)
def test_loss_and_grad_match_numpy(frames, num_labels, vocab, frame_lens, label_lens):
    rng = np.random.default_rng(frames * 10 + num_labels)
    batch = len(frame_lens)
    logits, logit_pad, labels, label_pad = _random_batch(
        rng, batch, frames, num_labels, vocab, frame_lens, label_lens
    )
    (total, per_seq), grad = _loss_and_grad(logits, logit_pad, labels, label_pad)
    for b in range(batch):
        want_loss, want_grad = _np_rnnt(logits[b], labels[b], frame_lens[b], label_lens[b])
        np.testing.assert_allclose(per_seq[b], want_loss, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(grad[b], want_grad, atol=2e-6)
    np.testing.assert_allclose(total, np.sum(per_seq), rtol=1e-6)


def test_brute_force_over_alignments():
    rng = np.random.default_rng(1)
    frames, num_labels, vocab = 3, 2, 4
    logits = rng.standard_normal((1, frames, num_labels + 1, vocab)).astype(np.float32)
    labels = np.array([[2, 2]], np.int32)
    log_probs = _log_softmax(logits[0].astype(np.float64))
    # An alignment is T blanks and U labels in any order, ending with a blank.
    path_scores = []
    for moves in set(itertools.permutations([0] * (frames - 1) + [1] * num_labels)):
        t = u = 0
        score = 0.0
        for is_label in (*moves, 0):
            if is_label:
                score += log_probs[t, u, labels[0, u]]
                u += 1
            else:
                score += log_probs[t, u, 0]
                t += 1
        path_scores.append(score)
    assert len(path_scores) == 6  # C(T - 1 + U, U)
    (_, got), _ = _loss_and_grad(logits, np.zeros((1, frames)), labels, np.zeros((1, 2)))
    np.testing.assert_allclose(got, [-np.logaddexp.reduce(path_scores)], rtol=1e-6)


def test_from_log_probs_under_vmap_matches_batched():
    rng = np.random.default_rng(2)
    logits, logit_pad, labels, label_pad = _random_batch(
        rng, 4, 5, 3, 6, [5, 2, 4, 1], [3, 1, 0, 2]
    )
    log_probs = jax.nn.log_softmax(logits)
    blank = log_probs[..., 0]
    safe_labels = np.maximum(labels, 0)[:, None, :, None]
    label = jnp.take_along_axis(log_probs[:, :, :-1], safe_labels, axis=-1)[..., 0]
    # A fused joint may score moves that cannot happen with -inf.
    label = jnp.where(label_pad[:, None, :] > 0, -jnp.inf, label)
    batched = jax.jit(rnnt.rnnt_loss_from_log_probs)(blank, label, logit_pad, label_pad)
    one_row = lambda *xs: rnnt.rnnt_loss_from_log_probs(*(x[None] for x in xs))[0]
    vmapped = jax.jit(jax.vmap(one_row))(blank, label, logit_pad, label_pad)
    np.testing.assert_allclose(vmapped, batched, rtol=1e-6)
    (_, per_seq), _ = _loss_and_grad(logits, logit_pad, labels, label_pad)
    np.testing.assert_allclose(batched, per_seq, rtol=1e-5)
    lattice_sum = lambda b, y: jnp.sum(rnnt.rnnt_loss_from_log_probs(b, y, logit_pad, label_pad))
    grads = jax.jit(jax.grad(lattice_sum, argnums=(0, 1)))(blank, label)
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_sharded_batch_matches_unsharded_and_bf16_is_float32():
    rng = np.random.default_rng(3)
    lens = rng.integers(1, 5, 8)
    logits, logit_pad, labels, label_pad = _random_batch(rng, 8, 4, 3, 5, lens, lens % 4)
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    shard = lambda x: jax.device_put(
        x, NamedSharding(mesh, PartitionSpec("data", *([None] * (x.ndim - 1))))
    )
    loss_fn = jax.jit(jax.grad(lambda *a: jnp.sum(rnnt.rnnt_loss(*a))))
    sharded = loss_fn(*map(shard, (logits, logit_pad, labels, label_pad)))
    np.testing.assert_allclose(sharded, loss_fn(logits, logit_pad, labels, label_pad), atol=1e-6)
    low = jax.eval_shape(rnnt.rnnt_loss, logits.astype(jnp.bfloat16), logit_pad, labels, label_pad)
    assert low.dtype == jnp.float32
    low_grad = jax.eval_shape(loss_fn, logits.astype(jnp.bfloat16), logit_pad, labels, label_pad)
    assert low_grad.dtype == jnp.bfloat16


def test_no_frames_row_and_weighted_token_mean():
    rng = np.random.default_rng(4)
    logits, logit_pad, labels, label_pad = _random_batch(rng, 3, 4, 2, 5, [4, 0, 3], [2, 0, 1])
    weights = np.array([1.0, 0.0, 0.5], np.float32)
    loss_fn = lambda z: rnnt.rnnt_loss_and_weight(z, logit_pad, labels, label_pad, weights)
    (loss, num_tokens), grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(logits)
    (_, per_seq), _ = _loss_and_grad(logits, logit_pad, labels, label_pad)
    assert per_seq[1] == 0.0
    np.testing.assert_allclose(num_tokens, 2.5)
    np.testing.assert_allclose(loss, (per_seq[0] + 0.5 * per_seq[2]) / 2.5, rtol=1e-6)
    assert np.all(np.isfinite(grad)) and np.all(grad[1] == 0.0)
    no_rows = reduction.token_mean(per_seq, label_pad, np.zeros(3, np.float32))
    np.testing.assert_array_equal(no_rows, (0.0, 0.0))
