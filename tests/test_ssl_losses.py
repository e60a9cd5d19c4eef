"""Tests of the self-supervised losses against independent numpy computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigssl_jax.losses import ssl_losses

_contrastive = jax.jit(ssl_losses.contrastive_loss, static_argnames=("num_negatives",))
_sample_negatives = jax.jit(ssl_losses.sample_negatives, static_argnames=("num_negatives",))

# Masked frames per utterance: many, 2, 1 and 0 (the last three are the crash-prone cases).
_MASK = np.zeros((4, 12), bool)
_MASK[0, [0, 1, 2, 5, 6, 7, 11]] = True
_MASK[1, [3, 9]] = True
_MASK[2, 4] = True


def _cosine(a, b):
    return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))


def _numpy_contrastive(context, targets, mask, indices, valid, temperature):
    """Loop-by-loop wav2vec 2.0 loss, float64; duplicates are exact equality (fairseq)."""
    losses, correct = [], []
    for b, t in zip(*np.nonzero(mask), strict=True):
        positive = _cosine(context[b, t], targets[b, t]) / temperature
        negatives = [
            _cosine(context[b, t], targets[b, j]) / temperature
            for j, ok in zip(indices[b, t], valid[b, t], strict=True)
            if ok and not np.array_equal(targets[b, j], targets[b, t])
        ]
        logits = np.array([positive] + negatives)
        losses.append(np.log(np.sum(np.exp(logits))) - positive)
        correct.append(all(positive > n for n in negatives))
    if not losses:
        return 0.0, 0.0
    return float(np.mean(losses)), float(np.mean(correct))


def test_sample_negatives_are_other_masked_frames_of_the_utterance():
    indices, valid = _sample_negatives(jax.random.key(0), jnp.asarray(_MASK), num_negatives=500)
    indices, valid = np.asarray(indices), np.asarray(valid)
    assert indices.shape == valid.shape == (4, 12, 500)
    for b, t in zip(*np.nonzero(_MASK), strict=True):
        others = set(np.nonzero(_MASK[b])[0]) - {t}
        assert valid[b, t].all() == bool(others) and valid[b, t].any() == bool(others)
        if others:
            assert set(indices[b, t]) == others  # all drawn, nothing else, never t itself
    # Uniform over the 6 other masked frames of utterance 0.
    drawn = indices[0][_MASK[0]].ravel()
    frequency = np.bincount(drawn, minlength=12)[_MASK[0]] / drawn.size
    np.testing.assert_allclose(frequency, 6 / 7 / 6, atol=0.02)


def test_contrastive_loss_matches_numpy_with_duplicates_and_few_masked_frames():
    rng = np.random.default_rng(0)
    codebook = rng.normal(size=(3, 5)).astype(np.float32)
    targets = codebook[rng.integers(0, 3, size=(4, 12))]  # many exact duplicate targets
    context = rng.normal(size=(4, 12, 5)).astype(np.float32)
    key = jax.random.key(1)
    loss, metrics = _contrastive(context, targets, _MASK, key, num_negatives=5, temperature=0.1)
    indices, valid = _sample_negatives(key, jnp.asarray(_MASK), num_negatives=5)
    want_loss, want_accuracy = _numpy_contrastive(
        context.astype(np.float64), targets, _MASK, np.asarray(indices), np.asarray(valid), 0.1
    )
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["contrastive_accuracy"], want_accuracy, rtol=1e-6)
    assert float(metrics["num_masked_frames"]) == _MASK.sum()


def test_contrastive_gradient_matches_numpy_finite_differences():
    rng = np.random.default_rng(1)
    context = rng.normal(size=(4, 12, 3)).astype(np.float32)
    targets = rng.normal(size=(4, 12, 3)).astype(np.float32)
    key = jax.random.key(2)
    indices, valid = (np.asarray(a) for a in _sample_negatives(key, jnp.asarray(_MASK), 4))

    def loss_of(c, q):
        return _contrastive(c, q, _MASK, key, num_negatives=4, temperature=0.1)[0]

    grads = jax.jit(jax.grad(loss_of, argnums=(0, 1)))(context, targets)
    for argnum, grad in enumerate(grads):
        assert np.all(np.isfinite(grad))
        base = [context.astype(np.float64), targets.astype(np.float64)]
        numeric = np.zeros_like(base[argnum])
        for position in np.ndindex(numeric.shape):
            values = []
            for step in (1e-6, -1e-6):
                shifted = [a.copy() for a in base]
                shifted[argnum][position] += step
                values.append(_numpy_contrastive(*shifted, _MASK, indices, valid, 0.1)[0])
            numeric[position] = (values[0] - values[1]) / 2e-6
        np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=2e-4)


def test_contrastive_loss_without_masked_frames_is_zero_and_finite():
    x = jnp.ones((2, 3, 4))
    loss, metrics = _contrastive(
        x, x, jnp.zeros((2, 3), bool), jax.random.key(0), num_negatives=100
    )
    assert float(loss) == 0.0 and float(metrics["num_masked_frames"]) == 0.0
    grad = jax.jit(
        jax.grad(
            lambda c: ssl_losses.contrastive_loss(c, x, jnp.zeros((2, 3), bool), jax.random.key(0))[
                0
            ]
        )
    )(x)
    assert np.all(np.isfinite(grad))


def _numpy_diversity(probs, mask):
    groups, codes = probs.shape[-2:]
    mean = probs[mask].mean(axis=0)  # [G, V]
    perplexity = sum(np.exp(-np.sum(mean[g] * np.log(mean[g]))) for g in range(groups))
    return (groups * codes - perplexity) / (groups * codes), perplexity


def test_diversity_loss_matches_numpy_value_and_gradient():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 6, 2, 5))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    mask = rng.random((2, 6)) < 0.6
    loss, metrics = jax.jit(ssl_losses.diversity_loss)(probs.astype(np.float32), mask)
    want_loss, want_perplexity = _numpy_diversity(probs, mask)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["prob_perplexity"], want_perplexity, rtol=1e-5)

    grad = jax.grad(lambda p: ssl_losses.diversity_loss(p, mask)[0])(probs.astype(np.float32))
    numeric = np.zeros_like(probs)
    for position in np.ndindex(probs.shape):
        plus, minus = probs.copy(), probs.copy()
        plus[position] += 1e-7
        minus[position] -= 1e-7
        numeric[position] = (
            _numpy_diversity(plus, mask)[0] - _numpy_diversity(minus, mask)[0]
        ) / 2e-7
    np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-6)


def test_diversity_loss_extremes():
    uniform = jnp.full((1, 4, 2, 8), 1 / 8)
    collapsed = jax.nn.one_hot(jnp.zeros((1, 4, 2), jnp.int32), 8)
    mask = jnp.ones((1, 4), bool)
    np.testing.assert_allclose(ssl_losses.diversity_loss(uniform, mask)[0], 0.0, atol=1e-6)
    np.testing.assert_allclose(ssl_losses.diversity_loss(collapsed, mask)[0], 14 / 16, rtol=1e-6)


@pytest.mark.parametrize("grouped", [False, True])
def test_masked_prediction_loss_matches_numpy_value_and_gradient(grouped):
    rng = np.random.default_rng(3)
    shape = (2, 5, 2) if grouped else (2, 5)
    logits = rng.normal(size=shape + (7,)).astype(np.float32)
    ids = rng.integers(0, 7, size=shape)
    ids[0, 0] = logits[0, 0].argmax(-1)  # at least one correct guess
    mask = np.array([[1, 0, 1, 1, 0], [0, 1, 0, 0, 0]], bool)
    (loss, metrics), grad = jax.jit(
        jax.value_and_grad(ssl_losses.masked_prediction_loss, has_aux=True)
    )(logits, ids, mask)

    weights = np.broadcast_to(mask.reshape(mask.shape + (1,) * (ids.ndim - 2)), ids.shape)
    softmax = np.exp(logits.astype(np.float64))
    softmax /= softmax.sum(-1, keepdims=True)
    losses, hits = [], []
    for position in zip(*np.nonzero(weights), strict=True):
        losses.append(-np.log(softmax[position][ids[position]]))
        hits.append(softmax[position].argmax() == ids[position])
    np.testing.assert_allclose(loss, np.mean(losses), rtol=1e-5)
    np.testing.assert_allclose(metrics["mlm_accuracy"], np.mean(hits), rtol=1e-6)
    one_hot = np.eye(7)[ids]
    want_grad = (softmax - one_hot) * weights[..., None] / weights.sum()
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-7)


def test_codebook_metrics_match_numpy():
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 6, size=(3, 7, 2))
    mask = rng.random((3, 7)) < 0.7
    metrics = jax.jit(ssl_losses.codebook_metrics, static_argnames="num_codes")(
        ids, mask, num_codes=10
    )
    perplexities, usages = [], []
    for g in range(2):
        counts = np.bincount(ids[..., g][mask], minlength=10)
        p = counts[counts > 0] / counts.sum()
        perplexities.append(np.exp(-np.sum(p * np.log(p))))
        usages.append(np.count_nonzero(counts) / 10)
    np.testing.assert_allclose(metrics["code_perplexity"], np.mean(perplexities), rtol=1e-5)
    np.testing.assert_allclose(metrics["code_usage"], np.mean(usages), rtol=1e-6)
    single = ssl_losses.codebook_metrics(ids[..., 0], mask, num_codes=10)
    np.testing.assert_allclose(single["code_perplexity"], perplexities[0], rtol=1e-5)


def test_combine_losses():
    weights = ssl_losses.SSLLossWeights(diversity=0.2, mlm=0.5)
    terms = {
        "contrastive": jnp.float32(2.0),
        "diversity": jnp.float32(1.0),
        "mlm": jnp.float32(4.0),
    }
    total, metrics = ssl_losses.combine_losses(terms, weights)
    np.testing.assert_allclose(total, 2.0 + 0.2 * 1.0 + 0.5 * 4.0)
    assert metrics == {"loss": total}
    best_rq, _ = ssl_losses.combine_losses({"mlm": jnp.float32(3.0)}, ssl_losses.SSLLossWeights())
    np.testing.assert_allclose(best_rq, 3.0)
    with pytest.raises(ValueError, match="unknown loss terms"):
        ssl_losses.combine_losses({"ctc": jnp.float32(1.0)}, weights)
