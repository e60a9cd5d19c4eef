"""Hashed dropout (layers/dropout.py): the keep rate, independence of neighbouring elements and
of keys, the inverted scaling, and agreement with lowbias32's published values."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigssl_jax.layers import dropout


def test_lowbias32_matches_the_reference_implementation():
    def reference(x: int) -> int:  # hash-prospector's lowbias32, in Python integers
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    inputs = np.array([0, 1, 2, 12345, 2**31, 2**32 - 1], np.uint32)
    expected = [reference(int(x)) for x in inputs]
    assert np.asarray(dropout.lowbias32(jnp.asarray(inputs))).tolist() == expected


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_keep_rate_and_independence(rate):
    keep = np.asarray(dropout.keep_mask(jax.random.key(0), rate, (64, 100, 144)), np.float64)
    n = keep.size
    assert abs(keep.mean() - (1 - rate)) < 4 * np.sqrt(rate * (1 - rate) / n)
    centred = keep.reshape(-1) - keep.mean()
    for lag in (1, 144, 14400):  # next feature, next frame, next utterance
        correlation = np.mean(centred[:-lag] * centred[lag:]) / centred.var()
        assert abs(correlation) < 5 / np.sqrt(n)
    other = np.asarray(dropout.keep_mask(jax.random.key(1), rate, (64, 100, 144)), np.float64)
    between = np.mean((keep - keep.mean()) * (other - other.mean())) / keep.var()
    assert abs(between) < 5 / np.sqrt(n)


def test_the_module_scales_kept_values_and_passes_through_when_deterministic():
    x = jnp.ones((16, 50, 32))
    layer = dropout.Dropout(0.25)
    assert layer.apply({}, x, deterministic=True) is x
    y = np.asarray(layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(3)}))
    np.testing.assert_allclose(np.unique(y), [0.0, 1 / 0.75], rtol=1e-6)
    assert abs(y.mean() - 1.0) < 0.02  # inverted dropout keeps the expectation
    again = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(3)})
    np.testing.assert_array_equal(y, np.asarray(again))  # the key decides the mask


def test_it_draws_from_the_dropout_stream_like_flax():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return dropout.Dropout(0.5)(x, deterministic=False)

    with pytest.raises(Exception, match="dropout"):
        Net().apply({}, jnp.ones((4, 4)))  # no 'dropout' rng given
