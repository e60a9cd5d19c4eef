"""Multi-head self-attention with key padding masks and an optional relative position term.

Attention runs through `jax.nn.dot_product_attention`, JAX's entry point for fused attention.
Its default implementation (`implementation=None` or 'xla') is XLA's (einsum, float32 logits
and softmax even for bfloat16 inputs, einsum), which XLA fuses on TPU, with key padding as a
boolean mask. 'cudnn' (the GPU default, `platform_defaults`) is cuDNN's flash kernel: it
takes the relative position bias as its additive bias and returns the bias gradient, but
padding only as key lengths, so `cudnn_attention` counts each row's valid frames (the speech
convention pads at the end, so the valid frames come first) and, as the kernel's backward
with a bias needs an even length, pads an odd T by one frame. It needs bfloat16 or float16
inputs and Dh <= 128 (256 from Hopper on), a multiple of 8, and no sharding of T or Dh.

Relative positions: the published Conformer L uses Transformer-XL relative positional encoding
(sinusoids of the offset, projected per block by a D x D matrix, plus two learned [H, Dh]
biases, with a "relative shift" of the logits). We use the T5 relative position bias instead: a
learned per-head scalar for each bucket of the offset j - i (exact buckets for small offsets,
logarithmic ones up to `max_distance`), added to the logits. It keeps attention a single
`dot_product_attention` call (the bias is one of its inputs, as for the fused kernels), costs
num_buckets x H parameters per block instead of D^2 + 2D (so L stays at the published 0.1B),
and is invariant to the amount of padding.

w2v-BERT 2.0 (the `Wav2Vec2BertModel` checkpoints, imported by `bigssl import-encoder`) uses
Shaw et al.'s relative *keys* instead ('shaw_key'): a learned [R, Dh] table E of R =
max_left + max_right + 1 offset embeddings, shared by the heads, whose dot product with the
query is added to the logits for the offset clipped to [-max_left, max_right]. It enters the
same call as a [B, H, T, T] bias, computed as q E^T ([B, H, T, R]) gathered at each pair's
clipped offset (never a [T, T, Dh] tensor).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """T5's bidirectional bucketing of offsets r = j - i between query i and key j.

    Half of the buckets hold r < 0 and half r > 0 (r = 0 shares the non-negative half). Within a
    half of n = num_buckets / 2 buckets, |r| < n / 2 gets its own bucket and larger |r| fall into
    n / 2 logarithmically spaced buckets up to `max_distance`, beyond which the last bucket is
    used.

    Args:
      length: T, the sequence length (static).
      num_buckets: the number of buckets (even).
      max_distance: the offset from which all offsets share the last bucket.

    Returns:
      int32 numpy array [T, T] of bucket ids in [0, num_buckets).
    """
    positions = np.arange(length)
    relative = positions[None, :] - positions[:, None]
    half = num_buckets // 2
    buckets = (relative > 0).astype(np.int32) * half
    distance = np.abs(relative)
    max_exact = half // 2
    scaled = np.log(np.maximum(distance, 1) / max_exact) / np.log(max_distance / max_exact)
    large = max_exact + (scaled * (half - max_exact)).astype(np.int32)
    large = np.minimum(large, half - 1)
    return (buckets + np.where(distance < max_exact, distance, large)).astype(np.int32)


def cudnn_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    bias: jax.Array | None,
    paddings: jax.Array,
    implementation: str = "cudnn",
) -> jax.Array:
    """Self-attention with padding as key lengths and T made even (module docstring).

    Args:
      query, key, value: [B, T, H, Dh].
      bias: [1, H, T, T] or None; cast to the inputs' dtype.
      paddings: [B, T] float, 1.0 at padded frames, which follow the valid ones.
      implementation: 'cudnn'; 'xla' computes the same on any platform (tests).

    Returns:
      [B, T, H, Dh]; rows of padded queries are unspecified.
    """
    length = query.shape[1]
    lengths = jnp.sum(paddings < 0.5, axis=1).astype(jnp.int32)
    bias = None if bias is None else bias.astype(query.dtype)  # the kernel's one input dtype
    if length % 2:
        query, key, value = (
            jnp.pad(x, ((0, 0), (0, 1), (0, 0), (0, 0))) for x in (query, key, value)
        )
        bias = None if bias is None else jnp.pad(bias, ((0, 0), (0, 0), (0, 1), (0, 1)))
    encoded = jax.nn.dot_product_attention(
        query, key, value, bias=bias, key_value_seq_lengths=lengths, implementation=implementation
    )
    return encoded[:, :length]


def clipped_offsets(length: int, max_left: int, max_right: int) -> np.ndarray:
    """Shaw-style offset ids: clip(j - i, -max_left, max_right) + max_left, int32 [T, T].

    Query i and key j with key j more than `max_left` frames before i share id 0, more than
    `max_right` frames after it id max_left + max_right.
    """
    positions = np.arange(length)
    relative = np.clip(positions[None, :] - positions[:, None], -max_left, max_right)
    return (relative + max_left).astype(np.int32)


class Projection(nn.Module):
    """A linear map written as an einsum: y = einsum(equation, x, W) + b.

    W has `kernel_shape` with one logical axis name per dimension (`nn.DenseGeneral` cannot
    be used: it initialises a flattened 2-D kernel, which a 3-name box cannot constrain
    under a mesh). b spans the output dimensions of W (those not in `fan_in_axes`).

    Attributes:
      equation: einsum of the input and the kernel, e.g. 'btd,dhk->bthk'.
      kernel_shape: shape of W.
      kernel_axes: logical axis name of each dimension of W.
      fan_in_axes: the contracted dimensions of W (for LeCun-normal initialisation).
      dtype: compute dtype; parameters are float32.
    """

    equation: str
    kernel_shape: tuple[int, ...]
    kernel_axes: tuple[str, ...]
    fan_in_axes: tuple[int, ...]
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out_axes = tuple(i for i in range(len(self.kernel_shape)) if i not in self.fan_in_axes)
        init = nn.initializers.lecun_normal(in_axis=self.fan_in_axes, out_axis=out_axes)
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(init, self.kernel_axes),
            self.kernel_shape,
            jnp.float32,
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(
                nn.initializers.zeros_init(), tuple(self.kernel_axes[i] for i in out_axes)
            ),
            tuple(self.kernel_shape[i] for i in out_axes),
            jnp.float32,
        )
        y = jnp.einsum(self.equation, x.astype(self.dtype), kernel.astype(self.dtype))
        return y + bias.astype(self.dtype)


RELATIVE_POSITION_KINDS = ("t5", "shaw_key")


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention over valid frames.

    With q = x Wq + bq, k = x Wk + bk, v = x Wv + bv split into H heads of width Dh:
      logits[b, h, i, j] = q[b, i, h] . k[b, j, h] / sqrt(Dh) + rel[b, h, i, j]
      a[b, i, h] = sum_j softmax_j(logits[b, h, i, j] masked to valid keys j) v[b, j, h]
      out = concat_h(a) Wo + bo
    The relative term is present only when `relative_position` is set:
      't5':       rel[b, h, i, j] = bias[bucket(j - i), h]                   (learned [32, H])
      'shaw_key': rel[b, h, i, j] = q[b, i, h] . E[c(j - i)] / sqrt(Dh)       (learned [R, Dh])
    with c(r) = clip(r, -max_left, max_right) + max_left (`clipped_offsets`). Padded keys get
    no weight; padded queries produce values that callers ignore.

    Attributes:
      num_heads: H.
      head_dim: Dh (the model width D = H * Dh).
      relative_position: adds the relative position term.
      relative_position_kind: 't5' (bucketed bias) or 'shaw_key' (w2v-BERT 2.0's keys).
      num_buckets: relative position buckets (T5 default 32).
      max_distance: offset (in frames) from which relative positions share one bucket.
      max_left: 'shaw_key': keys further left than this share one embedding (64 in w2v-BERT
        2.0).
      max_right: 'shaw_key': keys further right than this share one embedding (8).
      dtype: compute dtype; parameters are float32.
      implementation: of `jax.nn.dot_product_attention`: None or 'xla' (XLA's, a mask for
        padding), 'cudnn' (cuDNN's flash kernel through `cudnn_attention`).
    """

    num_heads: int
    head_dim: int
    relative_position: bool = False
    relative_position_kind: str = "t5"
    num_buckets: int = 32
    max_distance: int = 128
    max_left: int = 64
    max_right: int = 8
    dtype: jnp.dtype = jnp.float32
    implementation: str | None = None

    def _project(self, x: jax.Array, name: str) -> jax.Array:
        y = Projection(
            "btd,dhk->bthk",
            (x.shape[-1], self.num_heads, self.head_dim),
            ("embed", "heads", "kv"),
            fan_in_axes=(0,),
            dtype=self.dtype,
            name=name,
        )(x)
        return nn.with_logical_constraint(
            y, ("activation_batch", "activation_length", "activation_heads", "activation_kv")
        )

    def _relative_bias(self, length: int) -> jax.Array:
        """[1, H, T, T] float32 bias from a learned [num_buckets, H] table."""
        table = self.param(
            "relative_bias",
            nn.with_logical_partitioning(
                nn.initializers.zeros_init(), ("relative_buckets", "heads")
            ),
            (self.num_buckets, self.num_heads),
            jnp.float32,
        )
        buckets = relative_position_buckets(length, self.num_buckets, self.max_distance)
        return jnp.transpose(table[buckets], (2, 0, 1))[None]

    def _relative_key_bias(self, query: jax.Array) -> jax.Array:
        """The [B, H, T, T] float32 'shaw_key' term q . E[c(j - i)] / sqrt(Dh), q [B, T, H, Dh]."""
        table = self.param(
            "distance_embedding",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), ("relative_distance", "kv")),
            (self.max_left + self.max_right + 1, self.head_dim),
            jnp.float32,
        )
        scores = jnp.einsum("bihk,rk->bhir", query, table.astype(self.dtype))
        offsets = clipped_offsets(query.shape[1], self.max_left, self.max_right)
        rows = np.arange(query.shape[1])[:, None]
        return scores[:, :, rows, offsets].astype(jnp.float32) / np.sqrt(self.head_dim)

    def _relative_term(self, query: jax.Array) -> jax.Array | None:
        if not self.relative_position:
            return None
        if self.relative_position_kind == "shaw_key":
            return self._relative_key_bias(query)
        return self._relative_bias(query.shape[1])

    @nn.compact
    def __call__(self, x: jax.Array, paddings: jax.Array) -> jax.Array:
        """Attends from every frame to the valid frames of its utterance.

        Args:
          x: [B, T, D] inputs.
          paddings: [B, T] float, 1.0 at padded frames.

        Returns:
          [B, T, D] outputs in the compute dtype.
        """
        query = self._project(x, "query")
        key = self._project(x, "key")
        value = self._project(x, "value")
        bias = self._relative_term(query)
        if self.implementation == "cudnn":
            encoded = cudnn_attention(query, key, value, bias, paddings)
        else:
            mask = (paddings < 0.5)[:, None, None, :]
            encoded = jax.nn.dot_product_attention(
                query, key, value, bias=bias, mask=mask, implementation=self.implementation
            )
        encoded = nn.with_logical_constraint(
            encoded, ("activation_batch", "activation_length", "activation_heads", "activation_kv")
        )
        return Projection(
            "bthk,hkd->btd",
            (self.num_heads, self.head_dim, x.shape[-1]),
            ("heads", "kv", "embed"),
            fan_in_axes=(0, 1),
            dtype=self.dtype,
            name="output",
        )(encoded)
