"""A decoder-only Transformer language model over sentencepiece tokens, for shallow fusion.

  targets y [B, L] (ending in eos) --shift right, start = 0--> inputs [0, y_1, ..., y_{L-1}]
  x_0 = sqrt(D) Embed(inputs) + PosEnc                    [B, L, D]
  x_l = x_{l-1} + CausalAttn(LN(x_{l-1})),  x_l += MLP(LN(x_l))     (pre-norm, l = 1..N)
  logits = LN(x_N) Embed^T                                [B, L, V]   (tied embedding)
  L = -sum_{b,t} w_b (1 - pad_{b,t}) log P(y_{b,t} | y_{b,<t}) / sum_{b,t} w_b (1 - pad_{b,t})

The history start is the pad id 0 (the vocabulary has no bos; `BigramLanguageModel` uses the
same convention), and pad never is a target, so its logit is masked out of every softmax: the
model is a distribution over real tokens and eos. Positions are fixed sinusoids, so the model
reads at most `max_length` tokens.

Shallow fusion (`TransformerFusionLm`, a `decoding.lm_interface.FusionLanguageModel`) runs
the same network one token at a time over a key/value cache of `max_length` positions:

  state = {'key', 'value': f32[N, layers, S, H, Dh], 'length': i32[N], 'log_probs': f32[N, V]}

Every leaf leads with the hypothesis axis N, so beam searches reorder states with
`jax.tree.map(lambda s: s[index], state)`. `init_state` feeds the start symbol; `update`
feeds one token per hypothesis and stores the next-token log-probabilities, which
`next_log_probs` returns. A history longer than `max_length - 1` tokens keeps overwriting the
last cache slot (the model never saw such lengths in training): choose `max_length` above the
longest hypothesis a search can produce.

Parameters are float32 and carry logical axis names (`bigssl_jax.partitioning`).
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bigssl_jax.data import vocabulary as vocab_lib
from bigssl_jax.layers import attention, conformer, dropout
from bigssl_jax.models import base

START_ID = vocab_lib.PAD_ID  # a history starts with the pad id (the vocabulary has no bos)
PAD_ID = vocab_lib.PAD_ID
_MASKED_LOGIT = -1e9

# The fusion state (see the module docstring).
LmState = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerLmConfig:
    """Transformer LM hyperparameters.

    Attributes:
      vocab_size: V, the sentencepiece vocabulary size (0 = pad / start, 1 = eos).
      model_dim: D.
      num_layers: Transformer blocks.
      num_heads: H, attention heads (D = H * Dh).
      mlp_dim: F, the feed-forward hidden width.
      max_length: S, the longest token sequence (training length and fusion cache size).
      dropout_rate: dropout on the embeddings and on every residual branch (training).
      dtype: compute dtype of the matrix products, 'float32' or 'bfloat16'.
    """

    vocab_size: int = 1024
    model_dim: int = 256
    num_layers: int = 2
    num_heads: int = 4
    mlp_dim: int = 1024
    max_length: int = 128
    dropout_rate: float = 0.1
    dtype: str = "float32"

    def __post_init__(self):
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype {self.dtype!r} is not 'float32' or 'bfloat16'")
        if self.model_dim % self.num_heads:
            raise ValueError(f"model_dim {self.model_dim} is not divisible by {self.num_heads}")
        if self.model_dim % 2:
            raise ValueError(f"model_dim {self.model_dim} must be even (sinusoidal positions)")

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)


def sinusoidal_positions(length: int, dim: int) -> np.ndarray:
    """PE[p, 2i] = sin(p / 10000^(2i/D)), PE[p, 2i+1] = cos(p / 10000^(2i/D)): f32[S, D]."""
    rates = 1.0 / 10000.0 ** (np.arange(0, dim, 2) / dim)
    angles = np.arange(length)[:, None] * rates[None, :]
    table = np.zeros((length, dim), np.float32)
    table[:, 0::2], table[:, 1::2] = np.sin(angles), np.cos(angles)
    return table


class DecoderBlock(nn.Module):
    """One pre-norm block with causal self-attention:

      q, k, v = LN(x) W_{q,k,v} + b                   [B, T, H, Dh]
      a_i = sum_{j <= i} softmax_j(q_i . k_j / sqrt(Dh)) v_j
      x = x + dropout(a W_o + b_o)
      x = x + dropout(W_2 dropout(gelu(W_1 LN(x) + b_1)) + b_2)

    `__call__` runs whole sequences; `step` runs one position against a key/value cache.

    Attributes:
      config: the LM hyperparameters.
    """

    config: TransformerLmConfig

    def setup(self):
        c, dtype = self.config, self.config.compute_dtype

        def projection(equation, shape, axes, fan_in_axes, name):
            return attention.Projection(equation, shape, axes, fan_in_axes, dtype, name=name)

        qkv, qkv_axes = (c.model_dim, c.num_heads, c.head_dim), ("embed", "heads", "kv")
        self.query = projection("...d,dhk->...hk", qkv, qkv_axes, (0,), "query")
        self.key = projection("...d,dhk->...hk", qkv, qkv_axes, (0,), "key")
        self.value = projection("...d,dhk->...hk", qkv, qkv_axes, (0,), "value")
        self.output = projection(
            "...hk,hkd->...d",
            (c.num_heads, c.head_dim, c.model_dim),
            ("heads", "kv", "embed"),
            (0, 1),
            "output",
        )
        mlp_in, mlp_out = (c.model_dim, c.mlp_dim), (c.mlp_dim, c.model_dim)
        self.mlp_in = projection("...d,df->...f", mlp_in, ("embed", "mlp"), (0,), "mlp_in")
        self.mlp_out = projection("...f,fd->...d", mlp_out, ("mlp", "embed"), (0,), "mlp_out")
        self.attention_norm = conformer.layer_norm(dtype, "attention_norm")
        self.mlp_norm = conformer.layer_norm(dtype, "mlp_norm")
        self.dropout = dropout.Dropout(c.dropout_rate)

    def _mlp(self, x: jax.Array, deterministic: bool) -> jax.Array:
        hidden = self.dropout(nn.gelu(self.mlp_in(self.mlp_norm(x))), deterministic=deterministic)
        return x + self.dropout(self.mlp_out(hidden), deterministic=deterministic)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """[B, T, D] -> [B, T, D]; position t sees positions <= t only."""
        y = self.attention_norm(x)
        q, k, v = self.query(y), self.key(y), self.value(y)
        heads = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
        q, k, v = (nn.with_logical_constraint(a, heads) for a in (q, k, v))
        attended = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        x = x + self.dropout(self.output(attended), deterministic=not train)
        return self._mlp(x, deterministic=not train)

    def step(
        self, x: jax.Array, key_cache: jax.Array, value_cache: jax.Array, positions: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """One position per row against the cache (no dropout).

        Args:
          x: [N, D], the input at `positions`.
          key_cache, value_cache: [N, S, H, Dh], keys / values of the earlier positions.
          positions: i32[N], where x sits (its key and value are written there).

        Returns:
          (output [N, D], key_cache, value_cache) with this position written.
        """
        y = self.attention_norm(x)
        q, k, v = self.query(y), self.key(y), self.value(y)  # [N, H, Dh]
        slots = jnp.arange(key_cache.shape[1])[None, :]  # [1, S]
        here = (slots == positions[:, None])[:, :, None, None]
        key_cache = jnp.where(here, k[:, None].astype(key_cache.dtype), key_cache)
        value_cache = jnp.where(here, v[:, None].astype(value_cache.dtype), value_cache)
        mask = (slots <= positions[:, None])[:, None, None, :]  # [N, 1, 1, S]
        attended = jax.nn.dot_product_attention(
            q[:, None], key_cache.astype(q.dtype), value_cache.astype(q.dtype), mask=mask
        )[:, 0]
        x = x + self.output(attended)
        return self._mlp(x, deterministic=True), key_cache, value_cache


class TransformerLm(nn.Module):
    """Next-token logits of token sequences (see the module docstring).

    Attributes:
      config: the LM hyperparameters.
    """

    config: TransformerLmConfig

    def setup(self):
        c = self.config
        self.embedding = nn.Embed(
            c.vocab_size,
            c.model_dim,
            embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(stddev=c.model_dim**-0.5), ("vocab", "embed")
            ),
        )
        self.blocks = [DecoderBlock(c, name=f"block_{i}") for i in range(c.num_layers)]
        self.final_norm = conformer.layer_norm(c.compute_dtype, "final_norm")
        self.dropout = dropout.Dropout(c.dropout_rate)
        self.positions = jnp.asarray(sinusoidal_positions(c.max_length, c.model_dim))

    def _embed(self, tokens: jax.Array, positions: jax.Array) -> jax.Array:
        x = self.embedding(tokens) * jnp.sqrt(jnp.float32(self.config.model_dim))
        return (x + self.positions[positions]).astype(self.config.compute_dtype)

    def _logits(self, x: jax.Array) -> jax.Array:
        """Tied output layer, float32, the pad / start id masked out: [..., D] -> [..., V]."""
        logits = self.embedding.attend(self.final_norm(x)).astype(jnp.float32)
        return logits.at[..., PAD_ID].set(_MASKED_LOGIT)

    def __call__(self, inputs: jax.Array, *, train: bool) -> jax.Array:
        """Logits of the token after every prefix.

        Args:
          inputs: i32[B, T], T <= max_length; position t holds the t-th history token
            (position 0 the start symbol).
          train: enables dropout.

        Returns:
          f32[B, T, V]; [:, t] depends on inputs[:, :t+1] only.
        """
        length = inputs.shape[1]
        if length > self.config.max_length:
            raise ValueError(f"{length} tokens exceed max_length={self.config.max_length}")
        x = self._embed(inputs, jnp.arange(length))
        x = self.dropout(x, deterministic=not train)
        x = nn.with_logical_constraint(
            x, ("activation_batch", "activation_length", "activation_embed")
        )
        for block in self.blocks:
            x = block(x, train=train)
        return self._logits(x)

    def init_cache(self, num_hypotheses: int) -> dict[str, jax.Array]:
        """Empty key / value caches: {'key', 'value'} f32[N, layers, S, H, Dh]."""
        c = self.config
        shape = (num_hypotheses, c.num_layers, c.max_length, c.num_heads, c.head_dim)
        return {"key": jnp.zeros(shape, jnp.float32), "value": jnp.zeros(shape, jnp.float32)}

    def step(
        self, cache: dict[str, jax.Array], tokens: jax.Array, positions: jax.Array
    ) -> tuple[dict[str, jax.Array], jax.Array]:
        """Feeds tokens i32[N] at `positions` i32[N] (< S); returns (cache, logits f32[N, V])."""
        x = self._embed(tokens, positions)
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            x, k, v = block.step(x, cache["key"][:, i], cache["value"][:, i], positions)
            keys.append(k)
            values.append(v)
        cache = {"key": jnp.stack(keys, axis=1), "value": jnp.stack(values, axis=1)}
        return cache, self._logits(x)


def shift_right(targets: jax.Array) -> jax.Array:
    """The inputs of `targets` i32[B, L]: [START, y_1, ..., y_{L-1}]."""
    return jnp.pad(targets, ((0, 0), (1, 0)), constant_values=START_ID)[:, :-1]


def next_token_loss(
    logits: jax.Array, targets: jax.Array, target_paddings: jax.Array, weights: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mean cross-entropy per valid target token.

    Args:
      logits: f32[B, L, V], logits[:, t] predicts targets[:, t].
      targets: i32[B, L].
      target_paddings: f32[B, L], 1.0 = padded.
      weights: f32[B], row weights (0 = padding row).

    Returns:
      (loss, num_tokens, accuracy): the weighted mean negative log-likelihood in nats, the
      weighted count of valid tokens, and the weighted share of tokens predicted by argmax.
    """
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    target_log_probs = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    mask = (1.0 - target_paddings) * weights[:, None]
    num_tokens = jnp.sum(mask)
    denominator = jnp.maximum(num_tokens, 1e-9)
    loss = -jnp.sum(target_log_probs * mask) / denominator
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return loss, num_tokens, jnp.sum(correct * mask) / denominator


@dataclasses.dataclass(frozen=True, kw_only=True)
class LmTrainModel:
    """The LM as a `models.base.TrainModel` over text batches (`bigssl_tasks.text_tasks`).

    Batches: 'targets' i32[B, L] (each sentence's tokens then eos), 'target_paddings'
    f32[B, L], 'weights' f32[B]. Metrics: 'lm_loss' (nats per token), 'perplexity'
    (exp of the batch's loss; the loop averages it over batches, so for a whole set
    take exp of the mean 'loss'), 'accuracy', 'num_tokens' and the loss weight (tokens).

    Attributes:
      config: the LM hyperparameters.
    """

    config: TransformerLmConfig = TransformerLmConfig()
    rng_streams: tuple[str, ...] = ("dropout",)

    @property
    def module(self) -> TransformerLm:
        return TransformerLm(self.config)

    def init_variables(self, rng: jax.Array, batch: base.Batch) -> dict[str, Any]:
        """{'params': boxed params}; only the batch's target shape matters."""
        inputs = jnp.zeros(batch["targets"].shape, jnp.int32)
        return dict(self.module.init(rng, inputs, train=False))

    def loss(
        self, variables: Mapping[str, Any], batch: base.Batch, rng: jax.Array, *, step, train
    ) -> tuple[jax.Array, base.Metrics]:
        """Next-token cross-entropy per target token; the loss weight is the token count."""
        del step
        targets = batch["targets"].astype(jnp.int32)
        logits = self.module.apply(
            variables,
            shift_right(targets),
            train=train,
            rngs=base.split_rngs(rng, self.rng_streams),
        )
        loss, num_tokens, accuracy = next_token_loss(
            logits, targets, batch["target_paddings"], batch["weights"]
        )
        return loss, {
            "lm_loss": loss,
            "perplexity": jnp.exp(loss),
            "accuracy": accuracy,
            "num_tokens": num_tokens,
            base.LOSS_WEIGHT: num_tokens,
        }

    def fusion_lm(
        self, variables: Mapping[str, Any], *, max_length: int | None = None
    ) -> "TransformerFusionLm":
        """The shallow-fusion LM of trained `variables` ({'params': ...}, unboxed).

        Args:
          variables: the trained variables.
          max_length: the cache length S (the longest history + 1); None keeps the training
            `max_length`. Positions are sinusoids, so any S up to it reuses the same params;
            each `update` costs O(S), so size it to the search's longest hypothesis.
        """
        config = self.config
        if max_length is not None:
            if not 0 < max_length <= config.max_length:
                raise ValueError(f"max_length {max_length} not in [1, {config.max_length}]")
            config = dataclasses.replace(config, max_length=max_length)
        return TransformerFusionLm(config=config, variables=nn.unbox(dict(variables)))


@dataclasses.dataclass(frozen=True, eq=False)
class TransformerFusionLm:
    """`decoding.lm_interface.FusionLanguageModel` of a trained `TransformerLm`.

    It closes over its variables and compares / hashes by identity (`eq=False`), so decoders
    may take it as a static argument or close over it: jitted code embeds the params as
    constants, compiled once per object.

    Attributes:
      config: the LM hyperparameters.
      variables: {'params': ...} (unboxed).
    """

    config: TransformerLmConfig
    variables: Mapping[str, Any]

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def _advance(self, state: LmState, tokens: jax.Array) -> LmState:
        positions = jnp.minimum(state["length"], self.config.max_length - 1)
        cache, logits = TransformerLm(self.config).apply(
            self.variables,
            {"key": state["key"], "value": state["value"]},
            tokens.astype(jnp.int32),
            positions,
            method=TransformerLm.step,
        )
        return {**cache, "length": state["length"] + 1, "log_probs": jax.nn.log_softmax(logits)}

    def init_state(self, num_hypotheses: int) -> LmState:
        """N empty histories: the start symbol fed, its next-token log-probabilities stored."""
        cache = TransformerLm(self.config).apply(
            self.variables, num_hypotheses, method=TransformerLm.init_cache
        )
        state = {
            **cache,
            "length": jnp.zeros((num_hypotheses,), jnp.int32),
            "log_probs": jnp.zeros((num_hypotheses, self.config.vocab_size), jnp.float32),
        }
        return self._advance(state, jnp.full((num_hypotheses,), START_ID, jnp.int32))

    def next_log_probs(self, state: LmState) -> jax.Array:
        """f32[N, V]: log P(next token | history)."""
        return state["log_probs"]

    def update(self, state: LmState, tokens: jax.Array) -> LmState:
        """Appends tokens i32[N] to the histories."""
        return self._advance(state, tokens)
