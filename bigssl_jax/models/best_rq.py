"""BEST-RQ self-supervised pre-training: the model and its loss (a `models.base.TrainModel`).

BEST-RQ (Chiu et al. 2022) in four steps, for a batch of waveforms:

  features, f_pad = LogMel(audio)                                  [B, T, F], [B, T]
  targets = RandomProjectionQuantizer(stack_s(features))           [B, T', G]   (frozen)
  mask = span_mask(T')  ->  features[t] = noise ~ N(0, sigma^2) where mask[t // s]
  logits = Head(ConformerEncoder(masked features))                 [B, T', G, V]
  L = mean over masked (b, t') and g of -log softmax(logits)[targets]

where s is the encoder's time reduction (4, or 8 with a stacking layer), so the quantiser sees
exactly the frames that become one encoder frame, and T' = ceil(T / s). Masking replaces the
*input* features of a masked encoder frame with Gaussian noise (BEST-RQ's choice, sigma = 0.1),
so the encoder never sees the features it must predict; padded frames are never masked.

Mask rate: BEST-RQ starts a 400 ms span at each 10 ms input frame with probability 0.01, i.e.
0.04 per 40 ms encoder frame, with spans of 10 encoder frames. In the fairseq convention of
`layers.masking.compute_span_mask` (`mask_prob` = start rate x span) that is mask_prob = 0.4,
span_length = 10.

Randomness: rng streams 'masking' (span starts and noise) and 'dropout'. The quantiser's
projection and codebook live in the 'frozen' variable collection (`TrainState.model_state`);
only 'params' are trained.

The wav2vec 2.0 and w2v-BERT objectives (`models.wav2vec2`, `models.w2v_bert`) have the same
shape: a Flax model whose `__call__` returns the outputs, a `loss_fn`, and a
`models.base.TrainModel` wrapper. The train step itself is shared by every objective
(`bigssl_jax.train_step`).
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from bigssl_jax.layers import frontend, masking, quantizers
from bigssl_jax.losses import ssl_losses
from bigssl_jax.models import base
from bigssl_jax.models import encoder as encoder_lib

RNG_STREAMS = ("masking", "dropout")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BestRqConfig:
    """BEST-RQ objective settings (paper defaults).

    Attributes:
      codebook_size: V, codes per codebook (8192).
      code_dim: d, the random projection's output width (16).
      num_codebooks: G, independent projection/codebook pairs, each with its own head.
      quantizer_seed: seed of the frozen projection and codebook.
      mask_prob: fraction of encoder frames covered by span starts x span length (fairseq
        convention; 0.4 = BEST-RQ's 1% start rate per 10 ms frame with 400 ms spans).
      span_length: span length in encoder frames (10 = 400 ms at 40 ms frames).
      mask_noise_std: sigma of the noise that replaces masked input features.
    """

    codebook_size: int = 8192
    code_dim: int = 16
    num_codebooks: int = 1
    quantizer_seed: int = 0
    mask_prob: float = 0.4
    span_length: int = 10
    mask_noise_std: float = 0.1


def encoder_stride(config: encoder_lib.EncoderConfig) -> int:
    """Input frames per encoder output frame: 4 (subsampling), x2 with a stacking layer."""
    return 4 * (2 if config.stacking_layer is not None else 1)


@flax.struct.dataclass
class BestRqOutput:
    """What `BestRqModel` returns.

    Attributes:
      logits: [B, T', G, V] float32 head predictions.
      target_ids: [B, T', G] int32 quantiser codes of the unmasked features.
      mask: [B, T'] bool, True at masked (predicted) encoder frames.
      paddings: [B, T'] float32 encoder-frame paddings.
    """

    logits: jax.Array
    target_ids: jax.Array
    mask: jax.Array
    paddings: jax.Array


def mask_features(
    rng: jax.Array,
    features: jax.Array,
    paddings: jax.Array,
    frame_mask: jax.Array,
    stride: int,
    noise_std: float,
) -> jax.Array:
    """Replaces the input frames of masked encoder frames with N(0, noise_std^2) noise.

    Args:
      rng: PRNG key of the noise.
      features: [B, T, F] input features.
      paddings: [B, T] input paddings (padded frames are left as they are).
      frame_mask: [B, T'] bool, masked encoder frames, T' = ceil(T / stride).
      stride: input frames per encoder frame.
      noise_std: standard deviation of the noise.

    Returns:
      [B, T, F] features, input frame t replaced where frame_mask[t // stride] and t is valid.
    """
    length = features.shape[1]
    masked = jnp.repeat(frame_mask, stride, axis=1)[:, :length] & (paddings < 0.5)
    noise = noise_std * jax.random.normal(rng, features.shape, features.dtype)
    return jnp.where(masked[..., None], noise, features)


class CodeHead(nn.Module):
    """Linear prediction of G codebooks' ids: logits[b, t, g, v] = x[b, t] . W[:, g, v] + c[g, v].

    [B, T, D] -> [B, T, G, V] float32. Written with an einsum, not `nn.DenseGeneral`, whose
    flattened kernel cannot carry three logical axis names under a mesh.

    Attributes:
      num_codebooks: G.
      codebook_size: V.
      dtype: compute dtype of the product (the logits are float32).
    """

    num_codebooks: int
    codebook_size: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (self.num_codebooks, self.codebook_size)
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(
                nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2)), ("embed", None, "vocab")
            ),
            (x.shape[-1], *shape),
            jnp.float32,
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), (None, "vocab")),
            shape,
            jnp.float32,
        )
        logits = jnp.einsum(
            "btd,dgv->btgv",
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            preferred_element_type=jnp.float32,
        )
        return logits + bias


class BestRqModel(nn.Module):
    """Log-mel -> frozen random-projection targets + span-masked Conformer -> code logits.

    `__call__(audio [B, S], paddings [B, S], train=...)` returns a `BestRqOutput` (the formula
    is in the module docstring). Needs rng streams 'masking' and, in training, 'dropout'.

    Attributes:
      encoder: Conformer hyperparameters.
      objective: BEST-RQ settings.
      log_mel: log-mel front end settings.
    """

    encoder: encoder_lib.EncoderConfig
    objective: BestRqConfig = BestRqConfig()
    log_mel: frontend.LogMelConfig = frontend.LogMelConfig()

    @nn.compact
    def __call__(self, audio: jax.Array, paddings: jax.Array, *, train: bool) -> BestRqOutput:
        """Args: audio [B, S] at 16 kHz; paddings [B, S]; train enables dropout."""
        objective = self.objective
        stride = encoder_stride(self.encoder)
        features, paddings = frontend.LogMelFrontend(self.log_mel, name="log_mel")(audio, paddings)
        stacked, frame_paddings = quantizers.stack_frames(features, paddings, stride)
        target_ids = quantizers.RandomProjectionQuantizer(
            codebook_size=objective.codebook_size,
            code_dim=objective.code_dim,
            num_codebooks=objective.num_codebooks,
            seed=objective.quantizer_seed,
            name="quantizer",
        )(stacked, frame_paddings)

        span_rng, noise_rng = jax.random.split(self.make_rng("masking"))
        mask = masking.compute_span_mask(
            span_rng,
            frame_paddings,
            mask_prob=objective.mask_prob,
            span_length=objective.span_length,
        )
        features = mask_features(
            noise_rng, features, paddings, mask, stride, objective.mask_noise_std
        )
        encoded, encoded_paddings = encoder_lib.ConformerEncoder(self.encoder, name="encoder")(
            features, paddings, train=train
        )
        logits = CodeHead(
            objective.num_codebooks,
            objective.codebook_size,
            self.encoder.compute_dtype,
            name="head",
        )(encoded)
        return BestRqOutput(
            logits=logits,
            target_ids=target_ids,
            mask=mask,
            paddings=encoded_paddings,
        )


def loss_fn(
    model: BestRqModel,
    variables: Mapping[str, Any],
    batch: base.Batch,
    rng: jax.Array,
    *,
    train: bool = True,
) -> tuple[jax.Array, base.Metrics]:
    """BEST-RQ loss of a batch.

    Args:
      model: the model.
      variables: {'params': ..., 'frozen': ...} (unboxed).
      batch: 'audio' [B, S] and 'audio_paddings' [B, S] (1.0 = padded).
      rng: key of the 'masking' and 'dropout' streams.
      train: enables dropout.

    Returns:
      (loss, metrics): the masked cross-entropy and {'loss', 'mlm_loss', 'mlm_accuracy',
      'num_masked_frames', 'code_perplexity', 'code_usage'}.
    """
    rngs = dict(zip(RNG_STREAMS, jax.random.split(rng, len(RNG_STREAMS)), strict=True))
    out = model.apply(variables, batch["audio"], batch["audio_paddings"], train=train, rngs=rngs)
    mlm, metrics = ssl_losses.masked_prediction_loss(out.logits, out.target_ids, out.mask)
    loss, totals = ssl_losses.combine_losses({"mlm": mlm}, ssl_losses.SSLLossWeights())
    codes = ssl_losses.codebook_metrics(
        out.target_ids, out.paddings < 0.5, model.objective.codebook_size
    )
    metrics = {
        **totals,
        **metrics,
        **codes,
        "num_masked_frames": jnp.sum(out.mask.astype(jnp.float32)),
    }
    return loss, metrics


@dataclasses.dataclass(frozen=True, kw_only=True)
class BestRqTrainModel(encoder_lib.RestagesEncoderParams):
    """BEST-RQ as a `models.base.TrainModel` (what `bigssl train` drives).

    Attributes:
      encoder: Conformer hyperparameters.
      objective: BEST-RQ settings.
      log_mel: log-mel front end settings.
    """

    encoder: encoder_lib.EncoderConfig
    objective: BestRqConfig = BestRqConfig()
    log_mel: frontend.LogMelConfig = frontend.LogMelConfig()
    rng_streams: tuple[str, ...] = RNG_STREAMS

    @property
    def module(self) -> BestRqModel:
        return BestRqModel(encoder=self.encoder, objective=self.objective, log_mel=self.log_mel)

    def init_variables(self, rng: jax.Array, batch: base.Batch) -> dict[str, Any]:
        """{'params': boxed params, 'frozen': the quantiser}; only batch shapes matter."""
        params_rng, masking_rng = jax.random.split(rng)
        audio = jnp.zeros(batch["audio"].shape, jnp.float32)
        rngs = {"params": params_rng, "masking": masking_rng}
        return dict(self.module.init(rngs, audio, jnp.zeros_like(audio), train=False))

    def loss(
        self, variables: Mapping[str, Any], batch: base.Batch, rng: jax.Array, *, step, train: bool
    ) -> tuple[jax.Array, base.Metrics]:
        """`loss_fn`, with the masked-frame count as the loss weight (`base.LOSS_WEIGHT`)."""
        del step
        loss, metrics = loss_fn(self.module, variables, batch, rng, train=train)
        return loss, {**metrics, "loss_weight": metrics["num_masked_frames"]}
