"""Time reduction layers: the 2-D convolution front end, frame stacking, and w2v-BERT 2.0's
stacked feature projection.

Both keep paddings consistent with their outputs: an output frame is padded exactly when the
input frame at its stride position (2t) is padded, so right-padded batches stay right-padded.
Padded frames are zeroed before every convolution or concatenation, and the convolutions pad
time by a fixed (1, 1) rather than XLA's 'SAME' (whose split depends on the parity of T), so a
valid output frame never depends on how much padding the batch carries.

Speech convention (praxis): paddings are float32 with 1.0 = padded, 0.0 = valid.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

_CONV_KERNEL = 3
_CONV_STRIDE = 2


def subsample_paddings(paddings: jax.Array, stride: int) -> jax.Array:
    """Paddings after a stride-s reduction: out[b, t] = paddings[b, s * t], [B, ceil(T / s)]."""
    return paddings[:, ::stride]


def _conv_output_size(size: int) -> int:
    """ceil(size / 2): output length of a kernel-3, stride-2 convolution padded by (1, 1)."""
    return (size + 2 - _CONV_KERNEL) // _CONV_STRIDE + 1


class ConvSubsampling(nn.Module):
    """Two stride-2 3x3 convolutions over (time, mel), then a projection to the model width.

    With m = 1 - paddings (1 at valid frames) and strides of 2 in time and frequency:
      h1  = relu(conv2d_1(x * m))                       [B, T/2, F/2, C]
      h2  = relu(conv2d_2(h1 * m1))                     [B, T/4, F/4, C]
      out = dense(flatten_{F/4, C}(h2)) * m2            [B, T/4, D]
    where m1, m2 are the subsampled validity masks (ceil division throughout).

    Attributes:
      channels: C, the output channels of both convolutions.
      model_dim: D, the width of the projected output.
      dtype: compute dtype; parameters are float32.
    """

    channels: int
    model_dim: int
    dtype: jnp.dtype = jnp.float32

    def _conv(self, x: jax.Array, in_channels: int, name: str) -> jax.Array:
        # Taps are stored flattened, [3 * 3, C_in, C_out] (time-major), so that every
        # dimension has its own logical axis name (flax rejects a name used twice).
        kernel = self.param(
            f"{name}_kernel",
            nn.with_logical_partitioning(
                nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2),
                ("conv_kernel", "conv_in", "conv_out"),
            ),
            (_CONV_KERNEL * _CONV_KERNEL, in_channels, self.channels),
            jnp.float32,
        )
        kernel = kernel.reshape(_CONV_KERNEL, _CONV_KERNEL, in_channels, self.channels)
        bias = self.param(
            f"{name}_bias",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)),
            (self.channels,),
            jnp.float32,
        )
        y = jax.lax.conv_general_dilated(
            x,
            kernel.astype(self.dtype),
            window_strides=(_CONV_STRIDE, _CONV_STRIDE),
            padding=((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return nn.relu(y + bias.astype(self.dtype))

    @nn.compact
    def __call__(self, features: jax.Array, paddings: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Subsamples time by 4.

        Args:
          features: [B, T, F] log-mel features.
          paddings: [B, T] float, 1.0 at padded frames.

        Returns:
          ([B, ceil(ceil(T/2)/2), D] outputs with padded frames zeroed, the matching paddings).
        """
        x = features.astype(self.dtype)[..., None]
        x = x * (1.0 - paddings)[:, :, None, None].astype(self.dtype)
        x = self._conv(x, 1, "conv1")
        paddings = subsample_paddings(paddings, _CONV_STRIDE)
        x = x * (1.0 - paddings)[:, :, None, None].astype(self.dtype)
        x = self._conv(x, self.channels, "conv2")
        paddings = subsample_paddings(paddings, _CONV_STRIDE)
        batch, time, freq, channels = x.shape
        x = x.reshape(batch, time, freq * channels)
        x = nn.Dense(
            self.model_dim,
            dtype=self.dtype,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), ("conv_out", "embed")
            ),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
            name="projection",
        )(x)
        x = x * (1.0 - paddings)[..., None].astype(self.dtype)
        return x, paddings

    @staticmethod
    def output_frames(num_frames: int) -> int:
        """The number of output frames for `num_frames` input frames (ceil(ceil(T/2)/2))."""
        return _conv_output_size(_conv_output_size(num_frames))


def stack_frame_pairs(x: jax.Array, paddings: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Padded frames zeroed and pairs of frames concatenated; an odd T first gets one padded
    frame on the right.

    Args:
      x: [B, T, D]; paddings: [B, T] float, 1.0 at padded frames.

    Returns:
      ([B, ceil(T/2), 2D] in x's dtype, the [B, 2 ceil(T/2)] paddings of the padded input).
    """
    batch, time, dim = x.shape
    if time % 2:
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 0)))
        paddings = jnp.pad(paddings, ((0, 0), (0, 1)), constant_values=1.0)
    x = x * (1.0 - paddings)[..., None].astype(x.dtype)
    return x.reshape(batch, x.shape[1] // 2, 2 * dim), paddings


class FrameStacking(nn.Module):
    """Halves the frame rate: concatenates frames 2t and 2t+1, then projects back to D.

      y[t] = dense([x[2t] * m[2t]; x[2t+1] * m[2t+1]])     [B, ceil(T/2), 2D] -> [B, ceil(T/2), D]
    (an odd T is right-padded by one padded frame). Used mid-stack by XXL+.

    Attributes:
      model_dim: D.
      dtype: compute dtype; parameters are float32.
    """

    model_dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, paddings: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Stacks pairs of frames.

        Args:
          x: [B, T, D] activations.
          paddings: [B, T] float, 1.0 at padded frames.

        Returns:
          ([B, ceil(T/2), D] outputs with padded frames zeroed, [B, ceil(T/2)] paddings).
        """
        x, paddings = stack_frame_pairs(x, paddings)
        x = nn.with_logical_constraint(
            x, ("activation_batch", "activation_length", "activation_mlp")
        )
        x = nn.Dense(
            self.model_dim,
            dtype=self.dtype,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), ("mlp", "embed")
            ),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
            name="projection",
        )(x)
        paddings = subsample_paddings(paddings, 2)
        x = x * (1.0 - paddings)[..., None].astype(self.dtype)
        return x, paddings


class StackedProjection(nn.Module):
    """w2v-BERT 2.0's feature projection: stride-2 stacking of features, LayerNorm, projection.

      s[t] = [x[2t] * m[2t]; x[2t+1] * m[2t+1]]          [B, T, F] -> [B, ceil(T/2), 2F]
      y[t] = (LayerNorm(s[t]) W + b) * m'[t]              [B, ceil(T/2), D],  m'[t] = m[2t+1]
    (m = 1 - paddings). An odd T is right-padded by one padded frame. As in
    `SeamlessM4TFeatureExtractor` (which pads the frames to an even count and keeps the mask
    entries of odd frames), an output frame is valid when both its input frames are: an
    utterance with an odd number of frames loses its last one. The front end of the w2v-BERT
    2.0 encoder (`EncoderConfig.input_layer = 'stack'`): 20 ms per output frame of 10 ms
    features.

    Attributes:
      model_dim: D.
      epsilon: the LayerNorm epsilon.
      dtype: compute dtype; parameters are float32.
    """

    model_dim: int
    epsilon: float = 1e-5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array, paddings: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Stacks pairs of frames and projects them.

        Args:
          features: [B, T, F] features.
          paddings: [B, T] float, 1.0 at padded frames.

        Returns:
          ([B, ceil(T/2), D] outputs with padded frames zeroed, [B, ceil(T/2)] paddings).
        """
        x, paddings = stack_frame_pairs(features.astype(jnp.float32), paddings)
        x = nn.LayerNorm(
            epsilon=self.epsilon,
            dtype=self.dtype,
            scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("mel",)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("mel",)),
            name="norm",
        )(x)
        x = nn.Dense(
            self.model_dim,
            dtype=self.dtype,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), ("mel", "embed")
            ),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
            name="projection",
        )(x)
        paddings = paddings[:, 1::2]
        x = x * (1.0 - paddings)[..., None].astype(self.dtype)
        return x, paddings
