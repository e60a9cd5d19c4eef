"""The RNN-T decoder: an LSTM prediction network and an additive joint network.

  labels [B, U] --start symbol + Embed--> [B, U+1, E] --LSTM x L--> predictions [B, U+1, H]
  encodings [B, T, D], predictions [B, U+1, H] --joint--> logits [B, T, U+1, V]

Position u of the prediction network has seen the start symbol (the blank, id 0) followed by
labels[:u], so logits[:, t, u] scores the next output at frame t after u labels: the layout
`bigssl_jax.losses.rnnt.rnnt_loss` reads. Decoders (`bigssl_jax.decoding.rnnt_search`) run
the same network one token at a time through `RnntDecoder.initial_carry`,
`RnntDecoder.predict_step`, `RnntDecoder.project_encodings` and `RnntDecoder.joint_logits`.

Parameters are float32 and carry logical axis names (`bigssl_jax.partitioning`); matrix
products and logits are in the compute dtype, LSTM gates and cell states in float32.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigssl_jax.layers import dropout

# The LSTM carry: {'c': cell states, 'h': hidden states}, each f32[N, L, H].
Carry = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RnntDecoderConfig:
    """RNN-T prediction and joint network hyperparameters.

    Attributes:
      vocab_size: V, output tokens including the blank (id 0, also the start symbol).
      embed_dim: E, the token embedding width.
      lstm_layers: L, stacked LSTM layers of the prediction network.
      lstm_dim: H, the LSTM width (the recipe uses 2 x 640).
      joint_dim: J, the width of the joint network's hidden layer.
      dropout_rate: dropout on the embeddings and on every LSTM layer's output (training).
      dtype: compute dtype of the matrix products, 'float32' or 'bfloat16'.
    """

    vocab_size: int = 1024
    embed_dim: int = 128
    lstm_layers: int = 2
    lstm_dim: int = 640
    joint_dim: int = 640
    dropout_rate: float = 0.1
    dtype: str = "float32"

    def __post_init__(self):
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype {self.dtype!r} is not 'float32' or 'bfloat16'")
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size {self.vocab_size} leaves no token besides the blank")

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)


def _forget_bias_init(key, shape, dtype=jnp.float32):
    """LSTM bias [4, H]: zeros, except 1.0 on the forget gate (row 1)."""
    del key
    return jnp.zeros(shape, dtype).at[1].set(1.0)


def _lstm_cell(
    c: jax.Array, h: jax.Array, projected: jax.Array, recurrent_kernel: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """One LSTM step: (c, h [N, H], x W_x + b [N, 4, H], W_h [H, 4, H]) -> (c', h') float32."""
    z = projected + jnp.einsum(
        "nh,hgk->ngk", h.astype(recurrent_kernel.dtype), recurrent_kernel
    ).astype(jnp.float32)
    i, f, g, o = (z[:, k] for k in range(4))
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return c, jax.nn.sigmoid(o) * jnp.tanh(c)


class LstmLayer(nn.Module):
    """One LSTM layer with fused gates (i, f, g, o):

      z_t = x_t W_x + h_{t-1} W_h + b                     [N, 4, H]
      c_t = sigmoid(f_t) * c_{t-1} + sigmoid(i_t) * tanh(g_t)
      h_t = sigmoid(o_t) * tanh(c_t)

    Over a sequence, x W_x + b is one product for all steps and only h W_h runs in the
    recurrence.

    Attributes:
      input_dim: I, the width of x.
      hidden_dim: H.
      dtype: compute dtype of the products.
    """

    input_dim: int
    hidden_dim: int
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        init = nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
        self.input_kernel = self.param(
            "input_kernel",
            nn.with_logical_partitioning(init, ("embed", None, "mlp")),
            (self.input_dim, 4, self.hidden_dim),
        )
        self.recurrent_kernel = self.param(
            "recurrent_kernel",
            nn.with_logical_partitioning(init, ("embed", None, "mlp")),
            (self.hidden_dim, 4, self.hidden_dim),
        )
        self.bias = self.param(
            "bias",
            nn.with_logical_partitioning(_forget_bias_init, (None, "mlp")),
            (4, self.hidden_dim),
        )

    def _project_inputs(self, x: jax.Array) -> jax.Array:
        """x W_x + b: [..., I] -> [..., 4, H] float32."""
        kernel = self.input_kernel.astype(self.dtype)
        z = jnp.einsum("...i,igh->...gh", x.astype(self.dtype), kernel)
        return z.astype(jnp.float32) + self.bias

    def __call__(self, x: jax.Array) -> jax.Array:
        """The layer over whole sequences from a zero state: [B, S, I] -> [B, S, H] float32."""
        projected = jnp.swapaxes(self._project_inputs(x), 0, 1)  # [S, B, 4, H]
        recurrent_kernel = self.recurrent_kernel.astype(self.dtype)
        zeros = jnp.zeros((x.shape[0], self.hidden_dim), jnp.float32)

        def step(carry, z):
            c, h = _lstm_cell(*carry, z, recurrent_kernel)
            return (c, h), h

        _, hs = jax.lax.scan(step, (zeros, zeros), projected)
        return jnp.swapaxes(hs, 0, 1)

    def step(self, c: jax.Array, h: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One step: (c, h [N, H], x [N, I]) -> (c', h') float32."""
        projected = self._project_inputs(x)
        return _lstm_cell(c, h, projected, self.recurrent_kernel.astype(self.dtype))


class PredictionNetwork(nn.Module):
    """Token embedding and stacked LSTMs over the label history.

      p_0 = LSTM^L(Embed(0)),  p_u = LSTM^L(Embed(0), Embed(y_1), ..., Embed(y_u))

    Dropout (training only) follows the embedding and every LSTM layer.

    Attributes:
      config: the decoder hyperparameters.
    """

    config: RnntDecoderConfig

    def setup(self):
        config = self.config
        self.embedding = nn.Embed(
            config.vocab_size,
            config.embed_dim,
            embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(stddev=1.0), ("vocab", "embed")
            ),
        )
        input_dims = [config.embed_dim] + [config.lstm_dim] * (config.lstm_layers - 1)
        self.layers = [LstmLayer(dim, config.lstm_dim, config.compute_dtype) for dim in input_dims]
        self.dropout = dropout.Dropout(config.dropout_rate)

    def __call__(self, labels: jax.Array, *, train: bool) -> jax.Array:
        """Outputs after the start symbol and every label prefix.

        Args:
          labels: i32[B, U] label ids (padding positions may hold anything; outputs at and
            after them are unused).
          train: enables dropout.

        Returns:
          f32[B, U+1, H]; position u has seen the start symbol and labels[:, :u].
        """
        tokens = jnp.pad(labels, ((0, 0), (1, 0)))
        x = self.dropout(self.embedding(tokens), deterministic=not train)
        for layer in self.layers:
            x = self.dropout(layer(x), deterministic=not train)
        return x

    def initial_carry(self, num_hypotheses: int) -> Carry:
        """The zero LSTM state of N histories: {'c', 'h'} each f32[N, L, H]."""
        shape = (num_hypotheses, self.config.lstm_layers, self.config.lstm_dim)
        return {"c": jnp.zeros(shape, jnp.float32), "h": jnp.zeros(shape, jnp.float32)}

    def step(self, carry: Carry, tokens: jax.Array) -> tuple[Carry, jax.Array]:
        """Feeds one token per history (no dropout).

        Args:
          carry: the LSTM state, {'c', 'h'} each f32[N, L, H].
          tokens: i32[N], the next input token (0 = the start symbol).

        Returns:
          The new carry and the output f32[N, H] after `tokens`.
        """
        x = self.embedding(tokens)
        cs, hs = [], []
        for i, layer in enumerate(self.layers):
            c, x = layer.step(carry["c"][:, i], carry["h"][:, i], x)
            cs.append(c)
            hs.append(x)
        return {"c": jnp.stack(cs, axis=1), "h": jnp.stack(hs, axis=1)}, x


class JointNetwork(nn.Module):
    """The additive joint network.

      logits[b, t, u] = W_o tanh(W_e enc[b, t] + b_e + W_p pred[b, u]) + b_o

    Encoder and prediction outputs are projected once, then broadcast-added: the [B, T, U+1, J]
    sum is the only tensor of that size besides the logits.

    Attributes:
      config: the decoder hyperparameters.
    """

    config: RnntDecoderConfig

    def setup(self):
        config = self.config
        dtype = config.compute_dtype

        def dense(features, axes, use_bias, name):
            return nn.Dense(
                features,
                use_bias=use_bias,
                dtype=dtype,
                kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), axes[1:]),
                name=name,
            )

        self.encoder_projection = dense(config.joint_dim, ("embed", "mlp"), True, "encoder")
        self.prediction_projection = dense(config.joint_dim, ("embed", "mlp"), False, "prediction")
        self.output = dense(config.vocab_size, ("mlp", "vocab"), True, "output")

    def project_encodings(self, encodings: jax.Array) -> jax.Array:
        """W_e enc + b_e: [..., D] -> [..., J]."""
        return self.encoder_projection(encodings)

    def project_predictions(self, predictions: jax.Array) -> jax.Array:
        """W_p pred: [..., H] -> [..., J]."""
        return self.prediction_projection(predictions)

    def logits(self, projected_encodings: jax.Array, projected_predictions: jax.Array) -> jax.Array:
        """W_o tanh(e + p) + b_o over broadcast-compatible [..., J] inputs -> [..., V]."""
        return self.output(jnp.tanh(projected_encodings + projected_predictions))

    def __call__(self, encodings: jax.Array, predictions: jax.Array) -> jax.Array:
        """Args: encodings [B, T, D]; predictions [B, U+1, H]. Returns: [B, T, U+1, V]."""
        e = self.project_encodings(encodings)[:, :, None, :]
        p = self.project_predictions(predictions)[:, None, :, :]
        return self.logits(e, p)

    def step(self, encodings: jax.Array, predictions: jax.Array) -> jax.Array:
        """Args: encodings [N, D]; predictions [N, H]. Returns: [N, V]."""
        return self.logits(self.project_encodings(encodings), self.project_predictions(predictions))


class RnntDecoder(nn.Module):
    """The prediction and joint networks; every method works with `apply(..., method=)`.

    Training: `__call__(encodings, labels)` gives the loss's logits. Decoding:

      carry = initial_carry(N)
      carry, p = predict_step(carry, tokens)      # p: projected prediction [N, J]
      e = project_encodings(encodings)            # [B, T, J], once per utterance
      logits = joint_logits(e_t, p)               # [N, V]

    Attributes:
      config: the decoder hyperparameters.
    """

    config: RnntDecoderConfig

    def setup(self):
        self.prediction_network = PredictionNetwork(self.config)
        self.joint_network = JointNetwork(self.config)

    def __call__(self, encodings: jax.Array, labels: jax.Array, *, train: bool) -> jax.Array:
        """RNN-T logits of every (frame, label prefix) pair.

        Args:
          encodings: [B, T, D] encoder outputs.
          labels: i32[B, U] target labels.
          train: enables dropout.

        Returns:
          [B, T, U+1, V] in the compute dtype (the loss upcasts in its own fused pass, so
          bfloat16 halves the largest activation); [:, t, u] scores the output at frame t
          after labels[:, :u].
        """
        predictions = self.prediction_network(labels, train=train)
        logits = self.joint_network(encodings, predictions)
        return nn.with_logical_constraint(
            logits, ("activation_batch", "activation_length", None, None)
        )

    def initial_carry(self, num_hypotheses: int) -> Carry:
        """The prediction network's zero state for N histories."""
        return self.prediction_network.initial_carry(num_hypotheses)

    def predict_step(self, carry: Carry, tokens: jax.Array) -> tuple[Carry, jax.Array]:
        """Feeds i32[N] tokens; returns the new carry and the projected prediction f32[N, J]."""
        carry, predictions = self.prediction_network.step(carry, tokens)
        return carry, self.joint_network.project_predictions(predictions)

    def project_encodings(self, encodings: jax.Array) -> jax.Array:
        """W_e enc + b_e: [..., D] -> [..., J]."""
        return self.joint_network.project_encodings(encodings)

    def joint_logits(
        self, projected_encodings: jax.Array, projected_predictions: jax.Array
    ) -> jax.Array:
        """Logits [..., V] (compute dtype) of broadcast-compatible projected inputs [..., J]."""
        return self.joint_network.logits(projected_encodings, projected_predictions)
