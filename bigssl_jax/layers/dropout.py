"""Dropout whose mask bits come from an integer hash of the element index, not from threefry.

Flax's `nn.Dropout` draws one threefry-2x32 output (20 rounds of add-rotate-xor on two words)
per element. On TPU that is cheap; on CPU it was ~23% of the Conformer stack's train step
(docs/peer_benchmark.md; `benchmarks/cpu_step.py` times the demo's step both ways). Here one
threefry draw per call gives a 32-bit seed s, and element i of the flattened input keeps its
value when

    h(i + s mod 2^32) >= rate * 2^32,   h = lowbias32 (two multiply-xorshift rounds),

which XLA fuses into the elementwise consumer. lowbias32 (C. Wellons' hash-prospector) is a
bijection on 32-bit words with full avalanche, so the bits are uniform for any s and adjacent
elements are uncorrelated; two calls with different keys use offsets s that differ with
probability 1 - 2^-32 (tests/test_dropout.py checks the keep rate, the correlation between
neighbours and between keys). A mask is not the one `nn.Dropout` would draw from the same
key: training runs are reproducible, but not bit-equal to runs before this change.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def lowbias32(x: jax.Array) -> jax.Array:
    """C. Wellons' lowbias32 integer hash of uint32 `x` (elementwise, any shape)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def keep_mask(key: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
    """[*shape] bool, True with probability 1 - `rate`, from one threefry draw of `key`."""
    seed = jax.random.bits(key, (), jnp.uint32)
    index = jax.lax.iota(jnp.uint32, math.prod(shape))
    bits = lowbias32(index + seed).reshape(shape)
    threshold = jnp.uint32(min(round(rate * 2**32), 2**32 - 1))
    return bits >= threshold


class Dropout(nn.Module):
    """Inverted dropout with hashed mask bits (see the module docstring); drop-in for
    `nn.Dropout(rate)` with the same 'dropout' rng stream.

    Attributes:
      rate: probability of zeroing an element, in [0, 1).
    """

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        """Args: x [...]; deterministic: no dropout. Returns: x's shape and dtype."""
        if deterministic or self.rate == 0.0:
            return x
        keep = keep_mask(self.make_rng("dropout"), self.rate, x.shape)
        return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x))
