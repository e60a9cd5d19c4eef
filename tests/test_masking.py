"""Tests of span masking against exact properties and an exact numpy expectation."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigssl_jax.layers import masking

# One compilation per shape instead of one per primitive (eager dispatch is slow on CPU).
_span_mask = jax.jit(masking.compute_span_mask, static_argnames=("span_length", "min_masks"))


def _paddings(lengths, max_length):
    return (np.arange(max_length)[None, :] >= np.asarray(lengths)[:, None]).astype(np.float32)


def _runs(row):
    """Lengths of the maximal runs of True in a 1-D bool array."""
    runs, current = [], 0
    for value in row:
        if value:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    return runs + ([current] if current else [])


@pytest.mark.parametrize("mask_prob", [0.0, 0.065, 0.65])
def test_every_utterance_masked_and_padding_never(mask_prob):
    lengths = [0, 1, 3, 9, 10, 11, 25, 60]
    paddings = _paddings(lengths, 60)
    for seed in range(5):
        mask = np.asarray(
            _span_mask(
                jax.random.key(seed), jnp.asarray(paddings), mask_prob=mask_prob, span_length=10
            )
        )
        assert mask.dtype == bool and mask.shape == paddings.shape
        assert not np.any(mask & (paddings > 0.5))
        for row, length in zip(mask, lengths, strict=True):
            if length == 0:
                assert not row.any()
            elif length < 10:  # one span, cut at the last valid frame
                np.testing.assert_array_equal(row[:length], True)
            else:  # at least one span, and every masked run is made of whole spans
                assert row.sum() >= 10
                assert min(_runs(row)) >= 10


def test_deterministic_given_rng_and_jittable():
    paddings = jnp.asarray(_paddings([30, 17, 5], 30))
    compute = functools.partial(masking.compute_span_mask, mask_prob=0.65, span_length=4)
    first = compute(jax.random.key(7), paddings)
    np.testing.assert_array_equal(first, compute(jax.random.key(7), paddings))
    np.testing.assert_array_equal(first, jax.jit(compute)(jax.random.key(7), paddings))
    assert np.any(np.asarray(first) != np.asarray(compute(jax.random.key(8), paddings)))


def test_mean_start_count_is_mask_prob_times_length():
    # With span 1 the masked count is the start count, whose mean is exactly p L / 1.
    paddings = jnp.asarray(_paddings([50] * 2000, 50))
    mask = _span_mask(jax.random.key(0), paddings, mask_prob=0.3, span_length=1)
    counts = np.asarray(mask).sum(axis=1)
    assert set(np.unique(counts)) <= {15}
    paddings = jnp.asarray(_paddings([47] * 4000, 47))
    mask = _span_mask(jax.random.key(1), paddings, mask_prob=0.3, span_length=1)
    counts = np.asarray(mask).sum(axis=1)  # 14.1 -> 14 or 15 with probabilities 0.9 / 0.1
    assert set(np.unique(counts)) <= {14, 15}
    assert abs(counts.mean() - 14.1) < 0.03


def test_per_frame_mask_rate_matches_exact_expectation():
    length, span, mask_prob, rows = 40, 10, 0.65, 4000
    paddings = jnp.asarray(_paddings([length] * rows, length))
    mask = _span_mask(jax.random.key(3), paddings, mask_prob=mask_prob, span_length=span)
    observed = np.asarray(mask).mean(axis=0)

    # n starts without replacement among N positions; frame t is missed iff none of the w_t
    # starts that cover it is drawn: P = C(N - w_t, n) / C(N, n).
    candidates = length - span + 1
    expected_starts = mask_prob * length / span  # 2.6: n = 2 w.p. 0.4, n = 3 w.p. 0.6
    low = math.floor(expected_starts)
    count_probs = {low: 1 - (expected_starts - low), low + 1: expected_starts - low}
    expected = np.zeros(length)
    for t in range(length):
        covering = min(t, candidates - 1) - max(t - span + 1, 0) + 1
        for n, prob in count_probs.items():
            missed = math.comb(candidates - covering, n) / math.comb(candidates, n)
            expected[t] += prob * (1 - missed)
    np.testing.assert_allclose(observed, expected, atol=0.03)
