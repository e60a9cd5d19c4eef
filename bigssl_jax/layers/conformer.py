"""The Conformer block (Gulati et al., 2020) in its macaron form.

  x = x + 1/2 FFN(x)
  x = x + MHSA(x)
  x = x + Conv(x)
  x = x + 1/2 FFN(x)
  y = LayerNorm(x)

Every sub-module starts with its own LayerNorm (pre-norm) and ends with dropout on the residual
branch. Parameters are float32 and carry logical axis names; activations are computed in `dtype`
and constrained to logical axes, with LayerNorm statistics and the attention softmax in float32.

Speech convention (praxis): paddings are float32 with 1.0 = padded, 0.0 = valid.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigssl_jax.layers import attention, dropout

_ACTIVATION_AXES = ("activation_batch", "activation_length", "activation_embed")
_HIDDEN_AXES = ("activation_batch", "activation_length", "activation_mlp")


def layer_norm(
    dtype: jnp.dtype, name: str, axis_name: str = "embed", epsilon: float = 1e-6
) -> nn.LayerNorm:
    """LayerNorm with float32 statistics, output in `dtype`, scale and bias named (axis_name,)."""
    return nn.LayerNorm(
        epsilon=epsilon,
        dtype=dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), (axis_name,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axis_name,)),
        name=name,
    )


def dense(features: int, axes: tuple[str, str], dtype: jnp.dtype, name: str) -> nn.Dense:
    """A Dense layer whose kernel is named `axes` and whose bias is named `axes[1:]`."""
    return nn.Dense(
        features,
        dtype=dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), axes[1:]),
        name=name,
    )


class FeedForward(nn.Module):
    """Pre-norm feed-forward module (without the residual or its 1/2 scale).

      FFN(x) = dropout(W2 dropout(swish(W1 LayerNorm(x) + b1)) + b2)     [B, T, D] -> [B, T, D]

    Attributes:
      hidden_dim: the width of W1 (4 D in the recipe).
      dropout_rate: dropout on the output (residual branch).
      hidden_dropout_rate: dropout on the hidden activations.
      dtype: compute dtype.
      epsilon: the LayerNorm epsilon.
    """

    hidden_dim: int
    dropout_rate: float = 0.0
    hidden_dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32
    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Args: x [B, T, D]; train enables dropout. Returns: [B, T, D]."""
        model_dim = x.shape[-1]
        h = layer_norm(self.dtype, "norm", epsilon=self.epsilon)(x)
        h = dense(self.hidden_dim, ("embed", "mlp"), self.dtype, "hidden")(h)
        h = nn.with_logical_constraint(nn.swish(h), _HIDDEN_AXES)
        h = dropout.Dropout(self.hidden_dropout_rate)(h, deterministic=not train)
        h = dense(model_dim, ("mlp", "embed"), self.dtype, "output")(h)
        return dropout.Dropout(self.dropout_rate)(h, deterministic=not train)


class ConvolutionModule(nn.Module):
    """Pre-norm convolution module (without the residual).

      n = LayerNorm(x)
      h = (n Wa + ba) * sigmoid(n Wg + bg)               GLU of a pointwise D -> 2D conv
      h = depthwise_conv_K(h * m) + b                     m = 1 at valid frames, 0 at padded
      Conv(x) = dropout(W2 swish(LayerNorm(h)) + b2)

    The GLU's value and gate halves are two D x D kernels, and the inner width is named 'mlp'
    like a feed-forward's hidden width: under tensor parallelism each device holds matching
    channels of value, gate and depthwise kernel, so the GLU and the depthwise convolution are
    local and only the output projection reduces across devices.

    Padded frames are zeroed before the depthwise convolution, so valid frames never see them.
    The normalisation after the depthwise convolution is a LayerNorm, not the paper's BatchNorm:
    it is per frame, so it needs no running statistics (no mutable state, no cross-device
    synchronisation, no train/eval mismatch) and padded frames cannot affect it. The
    convolution is centred, (K - 1) // 2 frames of left context and K // 2 of right context,
    or, `causal` (w2v-BERT 2.0's), K - 1 frames of left context and none of right:
      centred: h'[t] = sum_k h[t + k - (K - 1) // 2] w[k]
      causal:  h'[t] = sum_k h[t + k - K + 1] w[k]
    w2v-BERT 2.0's convolutions have no biases; imported, ba, bg, b and b2 are zeros.

    Attributes:
      kernel_size: K, the depthwise kernel width in frames.
      dropout_rate: dropout on the output (residual branch).
      dtype: compute dtype.
      causal: left context only.
      epsilon: the LayerNorm epsilon.
    """

    kernel_size: int
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32
    causal: bool = False
    epsilon: float = 1e-6

    def _depthwise(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        kernel = self.param(
            "depthwise_kernel",
            nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("conv_kernel", "mlp")),
            (self.kernel_size, channels),
            jnp.float32,
        )
        bias = self.param(
            "depthwise_bias",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), ("mlp",)),
            (channels,),
            jnp.float32,
        )
        # y[t] = sum_k x[t + k - left] * w[k], written as K shifted multiply-adds rather than a
        # grouped `conv_general_dilated`: XLA fuses them into one elementwise loop, where its
        # CPU backend runs grouped convolutions (and their gradients) an order of magnitude
        # slower (benchmarks/peer_benchmark.py; docs/peer_benchmark.md).
        length = x.shape[1]
        left = self.kernel_size - 1 if self.causal else (self.kernel_size - 1) // 2
        padded = jnp.pad(x, ((0, 0), (left, self.kernel_size - 1 - left), (0, 0)))
        kernel = kernel.astype(self.dtype)
        y = sum(padded[:, k : k + length, :] * kernel[k] for k in range(self.kernel_size))
        return y + bias.astype(self.dtype)

    @nn.compact
    def __call__(self, x: jax.Array, paddings: jax.Array, *, train: bool) -> jax.Array:
        """Args: x [B, T, D]; paddings [B, T]; train enables dropout. Returns: [B, T, D]."""
        model_dim = x.shape[-1]
        n = layer_norm(self.dtype, "norm", epsilon=self.epsilon)(x)
        value = dense(model_dim, ("embed", "mlp"), self.dtype, "glu_value")(n)
        gate = dense(model_dim, ("embed", "mlp"), self.dtype, "glu_gate")(n)
        h = value * nn.sigmoid(gate) * (1.0 - paddings)[..., None].astype(self.dtype)
        h = nn.with_logical_constraint(h, _HIDDEN_AXES)
        h = self._depthwise(h)
        norm = layer_norm(self.dtype, "depthwise_norm", axis_name="mlp", epsilon=self.epsilon)
        h = nn.swish(norm(h))
        h = dense(model_dim, ("mlp", "embed"), self.dtype, "pointwise_out")(h)
        return dropout.Dropout(self.dropout_rate)(h, deterministic=not train)


class ConformerBlock(nn.Module):
    """One macaron Conformer block: [B, T, D] -> [B, T, D] (formula in the module docstring).

    The call returns `(outputs, None)`, the (carry, per-step output) pair `nn.scan` expects,
    so the same module runs scanned or in a Python loop.

    Attributes:
      num_heads: attention heads H (D must be divisible by H).
      ff_dim: feed-forward hidden width.
      conv_kernel_size: depthwise convolution width K.
      relative_position: adds the relative position term to attention.
      relative_position_kind: its kind ('t5' or 'shaw_key', `attention.MultiHeadSelfAttention`).
      max_left: 'shaw_key' left clipping distance.
      max_right: 'shaw_key' right clipping distance.
      causal_conv: the depthwise convolution sees only past frames (`ConvolutionModule`).
      dropout_rate: dropout on every residual branch.
      ff_dropout_rate: dropout on the feed-forward hidden activations.
      epsilon: the epsilon of every LayerNorm.
      dtype: compute dtype.
      attention_implementation: of `jax.nn.dot_product_attention` (None: XLA's; 'cudnn').
    """

    num_heads: int
    ff_dim: int
    conv_kernel_size: int
    relative_position: bool = False
    relative_position_kind: str = "t5"
    max_left: int = 64
    max_right: int = 8
    causal_conv: bool = False
    dropout_rate: float = 0.0
    ff_dropout_rate: float = 0.0
    epsilon: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    attention_implementation: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, paddings: jax.Array, train: bool) -> tuple[jax.Array, None]:
        """Args: x [B, T, D]; paddings [B, T]; train enables dropout. Returns: ([B, T, D], None)."""
        model_dim = x.shape[-1]
        x = nn.with_logical_constraint(x, _ACTIVATION_AXES)

        def ffn(name: str) -> FeedForward:
            return FeedForward(
                self.ff_dim,
                self.dropout_rate,
                self.ff_dropout_rate,
                self.dtype,
                self.epsilon,
                name=name,
            )

        x = x + 0.5 * ffn("ffn_in")(x, train=train)
        h = layer_norm(self.dtype, "attention_norm", epsilon=self.epsilon)(x)
        h = attention.MultiHeadSelfAttention(
            self.num_heads,
            model_dim // self.num_heads,
            relative_position=self.relative_position,
            relative_position_kind=self.relative_position_kind,
            max_left=self.max_left,
            max_right=self.max_right,
            dtype=self.dtype,
            implementation=self.attention_implementation,
            name="attention",
        )(h, paddings)
        x = x + dropout.Dropout(self.dropout_rate)(h, deterministic=not train)
        x = x + ConvolutionModule(
            self.conv_kernel_size,
            self.dropout_rate,
            self.dtype,
            self.causal_conv,
            self.epsilon,
            name="conv",
        )(x, paddings, train=train)
        x = x + 0.5 * ffn("ffn_out")(x, train=train)
        x = layer_norm(self.dtype, "final_norm", epsilon=self.epsilon)(x)
        return nn.with_logical_constraint(x, _ACTIVATION_AXES), None
