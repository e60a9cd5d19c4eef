"""Target quantisers for self-supervised speech pre-training.

* `GumbelVectorQuantizer`: wav2vec 2.0 / w2v-BERT product quantiser, G groups x V codes,
  Gumbel-softmax with a straight-through hard one-hot; `gumbel_temperature` is its schedule.
* `LinearTargetProjection`: the BigSSL variant without a codebook (target = W x).
* `RandomProjectionQuantizer`: BEST-RQ's frozen random projection + random codebook over
  stacked input features; `stack_frames` stacks frames to the encoder's frame rate.

Speech convention (praxis): paddings are float32 with 1.0 = padded, 0.0 = valid. Logits and
probabilities are float32 whatever the compute dtype.
"""

import math

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

# Variable collection of the BEST-RQ projection and codebook: not 'params', so no optimiser
# ever sees them; they are checkpointed with the model like any other collection.
FROZEN_COLLECTION = "frozen"


def gumbel_temperature(
    step: jax.Array | int, *, start: float = 2.0, end: float = 0.1, decay: float = 0.999995
) -> jax.Array:
    """Gumbel-softmax temperature at `step`: tau = max(start * decay**step, end) (fairseq)."""
    # decay**step as exp(step log decay), log taken in float64: float32 rounds 0.999995 itself.
    step = jnp.asarray(step, jnp.float32)
    return jnp.maximum(start * jnp.exp(step * math.log(decay)), end)


@flax.struct.dataclass
class QuantizerOutput:
    """What `GumbelVectorQuantizer` returns.

    Attributes:
      quantized: [B, T, D'] code vectors (straight-through: gradients reach the logits).
      ids: [B, T, G] int32 chosen code per group.
      probs: [B, T, G, V] float32 noise-free softmax of the logits, for the diversity loss.
    """

    quantized: jax.Array
    ids: jax.Array
    probs: jax.Array


class GumbelVectorQuantizer(nn.Module):
    """Product quantiser with Gumbel-softmax code selection (wav2vec 2.0).

    logits_{g,v} = x W_{g,v} + b_{g,v};  y_g = softmax((logits_g + n_g) / tau),
    n ~ Gumbel(0, 1) in training (none when deterministic);  k_g = argmax_v y_g;
    forward q = concat_g e_{g,k_g}; backward d q / d logits = d (sum_v y_{g,v} e_{g,v}) / d logits
    (straight-through estimator). The codebook e has G x V entries of dim D'/G.

    W ~ N(0, 1) as in fairseq: on unit-variance inputs the logits start with a spread of
    ~sqrt(D), so each frame's code is decided by the frame, not by the Gumbel noise (with a
    1/sqrt(D) init the codes are noise, the targets unpredictable and the contrastive loss
    stays at chance, ln(K + 1)).

    Attributes:
      num_groups: G, codebooks concatenated into one target vector.
      num_codes: V, entries per codebook.
      code_dim: D', dimension of the quantised vector (divisible by G).
      dtype: compute dtype of the logits matmul (accumulated in float32) and the code lookup.
      param_dtype: parameter dtype.
    """

    num_groups: int = 2
    num_codes: int = 320
    code_dim: int = 256
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, *, temperature: jax.Array | float, deterministic: bool
    ) -> QuantizerOutput:
        """Quantises frames.

        Args:
          x: [B, T, D] input frames (e.g. the unmasked subsampled features).
          temperature: Gumbel-softmax temperature tau (see `gumbel_temperature`).
          deterministic: if True, no Gumbel noise (evaluation); else uses rng 'gumbel'.

        Returns:
          A `QuantizerOutput`.
        """
        groups, codes = self.num_groups, self.num_codes
        if self.code_dim % groups:
            raise ValueError(f"code_dim {self.code_dim} is not divisible by {groups} groups")
        kernel = self.param(
            "logits_kernel",
            nn.with_logical_partitioning(nn.initializers.normal(1.0), ("embed", None, "vocab")),
            (x.shape[-1], groups, codes),
            self.param_dtype,
        )
        bias = self.param(
            "logits_bias",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), (None, "vocab")),
            (groups, codes),
            self.param_dtype,
        )
        codebook = self.param(
            "codebook",
            nn.with_logical_partitioning(nn.initializers.uniform(1.0), (None, "vocab", "kv")),
            (groups, codes, self.code_dim // groups),
            self.param_dtype,
        )
        logits = jnp.einsum(
            "btd,dgv->btgv",
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            preferred_element_type=jnp.float32,
        ) + bias.astype(jnp.float32)
        noisy = logits
        if not deterministic:
            noisy = logits + jax.random.gumbel(self.make_rng("gumbel"), logits.shape, jnp.float32)
        soft = jax.nn.softmax(noisy / temperature, axis=-1)
        ids = jnp.argmax(noisy, axis=-1).astype(jnp.int32)  # [B, T, G]
        hard = jax.nn.one_hot(ids, codes, dtype=jnp.float32)
        one_hot = hard + soft - jax.lax.stop_gradient(soft)
        quantized = jnp.einsum(
            "btgv,gvc->btgc", one_hot.astype(self.dtype), codebook.astype(self.dtype)
        )
        quantized = quantized.reshape(*x.shape[:-1], self.code_dim)
        return QuantizerOutput(quantized, ids, jax.nn.softmax(logits, axis=-1))


class LinearTargetProjection(nn.Module):
    """Continuous targets without a codebook: q = x W (BigSSL's linear-target wav2vec 2.0).

    Attributes:
      target_dim: D', dimension of the targets.
      dtype: compute dtype.
      param_dtype: parameter dtype.
    """

    target_dim: int = 256
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps [B, T, D] frames to [B, T, D'] targets."""
        return nn.DenseGeneral(
            self.target_dim,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), ("embed", "kv")
            ),
            name="target_projection",
        )(x)


def stack_frames(
    features: jax.Array, paddings: jax.Array, stride: int
) -> tuple[jax.Array, jax.Array]:
    """Stacks `stride` consecutive frames into one, to match an encoder's time reduction.

    T is padded up to a multiple of `stride`; output frame i holds input frames
    [i s, (i + 1) s) concatenated, padded frames zeroed. Output frame i is padded iff input
    frame i s is (for right-padded rows: iff all its frames are), so the output has
    ceil(T / s) frames, as a stride-s SAME convolution stack.

    Args:
      features: [B, T, F].
      paddings: [B, T] float32, 1.0 at padded frames.
      stride: s, frames per output frame.

    Returns:
      ([B, ceil(T / s), s F] stacked features, [B, ceil(T / s)] paddings).
    """
    batch, length, dim = features.shape
    extra = -length % stride
    features = features * (1.0 - paddings)[..., None].astype(features.dtype)
    features = jnp.pad(features, ((0, 0), (0, extra), (0, 0)))
    paddings = jnp.pad(paddings, ((0, 0), (0, extra)), constant_values=1.0)
    stacked = features.reshape(batch, (length + extra) // stride, stride * dim)
    return stacked, paddings[:, ::stride]


def normalize_over_time(x: jax.Array, paddings: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Per-utterance, per-dimension mean/variance normalisation over valid frames.

    x' = (x - mean_t x) / sqrt(var_t x + eps) over the frames with paddings 0: [B, T, D].
    """
    weights = (1.0 - paddings)[..., None]
    count = jnp.maximum(jnp.sum(weights, axis=1, keepdims=True), 1.0)
    mean = jnp.sum(x * weights, axis=1, keepdims=True) / count
    var = jnp.sum(jnp.square(x - mean) * weights, axis=1, keepdims=True) / count
    return (x - mean) * jax.lax.rsqrt(var + eps)


class RandomProjectionQuantizer(nn.Module):
    """BEST-RQ's frozen random-projection quantiser (Chiu et al. 2022).

    x' = normalise(x) (per utterance and dimension, over valid frames);
    z_g = x' P_g, P Xavier-normal [D, G, d];  ids_g = argmax_v cos(z_g, c_{g,v}),
    c ~ N(0, I) [G, V, d] l2-normalised. P and c live in the `FROZEN_COLLECTION` ("frozen")
    variable collection, drawn from `seed` alone (the init rng is not used): not trained,
    identical for every init, and saved with the checkpoint. `apply` needs that collection.

    Attributes:
      codebook_size: V, entries per codebook (8192 in BEST-RQ).
      code_dim: d, projection dimension (16 in BEST-RQ).
      num_codebooks: G, independent projections/codebooks (1 in BEST-RQ; >1 gives [.., G] ids).
      seed: PRNG seed of P and c.
    """

    codebook_size: int = 8192
    code_dim: int = 16
    num_codebooks: int = 1
    seed: int = 0

    @nn.compact
    def __call__(self, features: jax.Array, paddings: jax.Array) -> jax.Array:
        """Maps [B, T, D] (stacked) features with [B, T] paddings to [B, T, G] int32 code ids.

        Ids at padded frames are meaningless; losses mask them.
        """
        groups, dim = self.num_codebooks, features.shape[-1]
        proj_key, code_key = jax.random.split(jax.random.key(self.seed))

        def init_projection():
            init = nn.initializers.xavier_normal(in_axis=0, out_axis=(1, 2))
            value = init(proj_key, (dim, groups, self.code_dim), jnp.float32)
            return nn.LogicallyPartitioned(value, names=("mel", None, None))

        def init_codebook():
            value = jax.random.normal(code_key, (groups, self.codebook_size, self.code_dim))
            value = value / jnp.linalg.norm(value, axis=-1, keepdims=True)
            return nn.LogicallyPartitioned(value, names=(None, "vocab", None))

        projection = self.variable(FROZEN_COLLECTION, "projection", init_projection).value
        codebook = self.variable(FROZEN_COLLECTION, "codebook", init_codebook).value
        x = normalize_over_time(features.astype(jnp.float32), paddings.astype(jnp.float32))
        hp = jax.lax.Precision.HIGHEST
        z = jnp.einsum("btd,dgc->btgc", x, projection, precision=hp)
        # argmax_v cos(z, c_v) = argmax_v <z, c_v>: the codebook is unit-norm, |z| is fixed in v.
        similarity = jnp.einsum("btgc,gvc->btgv", z, codebook, precision=hp)
        return jnp.argmax(similarity, axis=-1).astype(jnp.int32)
