"""w2v-BERT self-supervised pre-training: the model and its loss (the train step is the trainer's).

w2v-BERT (Chung et al. 2021) splits the Conformer stack in two: a contrastive module (the first
N blocks) trained with the wav2vec 2.0 loss, and a masked-prediction (MLM) module (the other
blocks) that reads the contrastive module's output and predicts the quantiser's code ids of the
masked frames:

  x = ConformerEncoder.embed(LogMel(audio))                      [B, T', D]
  q, ids, p = GumbelVQ_tau(x)                                    [B, T', C], [B, T', G], ..
  mask = span_mask(T'); x[t] = m (learned) where mask[t]
  h = blocks[:N](x);  c = P h;  y = blocks[N:](h)                [B, T', D], [B, T', C], [B, T', D]
  logits = Head(y)                                               [B, T', G, V]
  L = w_c L_contrastive(c, q, mask) + w_d L_diversity(p, mask) + w_m L_mlm(logits, ids, mask)

The MLM targets are integer ids, so no gradient flows from L_mlm into the quantiser; the
quantiser is trained by the contrastive and diversity terms (`wav2vec2` has the details).

With a stacking layer in the contrastive module, targets and masks are at its halved frame
rate as in `wav2vec2`.

Masking: the paper's "start probability p = 0.065, span 10" is mask_prob = 0.65 in the
convention of `layers.masking.compute_span_mask` (mask_prob = start probability x span).

Randomness: rng streams 'masking', 'dropout', 'gumbel', plus one key of `loss_fn` for
distractor sampling (as `wav2vec2`).
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax

from bigssl_jax.layers import frontend
from bigssl_jax.losses import ssl_losses
from bigssl_jax.models import base, best_rq, wav2vec2
from bigssl_jax.models import encoder as encoder_lib

RNG_STREAMS = wav2vec2.RNG_STREAMS


@dataclasses.dataclass(frozen=True, kw_only=True)
class W2vBertConfig:
    """w2v-BERT objective settings (paper defaults).

    Attributes:
      num_contrastive_layers: N, Conformer blocks of the contrastive module (12 in XL and
        XXL); the other blocks form the MLM module.
      contrastive: the contrastive objective, quantiser and masking (one codebook of 1024
        codes by default; linear targets are not allowed: the MLM needs code ids).
    """

    num_contrastive_layers: int = 12
    contrastive: wav2vec2.Wav2Vec2Config = wav2vec2.Wav2Vec2Config(
        num_groups=1, num_codes=1024, code_dim=1024
    )

    def __post_init__(self):
        if self.contrastive.linear_targets:
            raise ValueError("w2v-BERT predicts code ids: linear_targets must be False")


def split_encoder(
    encoder: encoder_lib.EncoderConfig, num_contrastive_layers: int
) -> tuple[encoder_lib.EncoderConfig, int]:
    """The encoder config cut after block N, and the index of the stage that ends there.

    Args:
      encoder: the Conformer hyperparameters (other `split_layers` are kept).
      num_contrastive_layers: N, in (0, num_layers); a stacking layer must come before block
        N, so that both modules' outputs have the targets' frame rate.

    Returns:
      (config with N in `split_layers`, index of the contrastive module's last stage).
    """
    if not 0 < num_contrastive_layers < encoder.num_layers:
        raise ValueError(
            f"num_contrastive_layers {num_contrastive_layers} is not in (0, {encoder.num_layers})"
        )
    if encoder.stacking_layer is not None and encoder.stacking_layer >= num_contrastive_layers:
        raise ValueError(
            f"EncoderConfig.stacking_layer={encoder.stacking_layer} is in the MLM module: its "
            "output would have half the frame rate of the contrastive module's; put it in the "
            f"first num_contrastive_layers={num_contrastive_layers} blocks or unset it"
        )
    splits = tuple(sorted({*encoder.split_layers, num_contrastive_layers}))
    encoder = dataclasses.replace(encoder, split_layers=splits)
    ends = [end for _, end in encoder.stages]
    return encoder, ends.index(num_contrastive_layers)


@flax.struct.dataclass
class W2vBertOutput:
    """What `W2vBertModel` returns.

    Attributes:
      context: [B, T', C] projected contrastive-module output c.
      targets: the quantised targets q of every frame (vectors, ids, probabilities).
      mlm_logits: [B, T', G, V] float32 MLM-module predictions of the code ids.
      mask: [B, T'] bool, True at masked frames.
      paddings: [B, T'] float32 encoder-frame paddings.
      temperature: the Gumbel-softmax temperature used, float32 scalar.
    """

    context: jax.Array
    targets: wav2vec2.Targets
    mlm_logits: jax.Array
    mask: jax.Array
    paddings: jax.Array
    temperature: jax.Array


class W2vBertModel(nn.Module):
    """Log-mel -> Conformer subsampling -> (quantiser, masked contrastive blocks -> MLM blocks).

    `__call__(audio [B, S], paddings [B, S], step=..., train=...)` returns a `W2vBertOutput`
    (the formula is in the module docstring). Needs rng stream 'masking', and in training
    'dropout' and 'gumbel'.

    Attributes:
      encoder: Conformer hyperparameters; the stack is cut after
        `objective.num_contrastive_layers` blocks (a stacking layer must be in the first part).
      objective: w2v-BERT settings.
      log_mel: log-mel front end settings.
    """

    encoder: encoder_lib.EncoderConfig
    objective: W2vBertConfig = W2vBertConfig()
    log_mel: frontend.LogMelConfig = frontend.LogMelConfig()

    @nn.compact
    def __call__(
        self, audio: jax.Array, paddings: jax.Array, *, step: jax.Array | int, train: bool
    ) -> W2vBertOutput:
        """Args: audio [B, S] at 16 kHz; paddings [B, S]; step sets tau; train: dropout, noise."""
        config, contrastive_stage = split_encoder(
            self.encoder, self.objective.num_contrastive_layers
        )
        objective = self.objective.contrastive
        out, stages = wav2vec2.masked_contrastive_forward(
            self,
            config,
            objective,
            self.log_mel,
            audio,
            paddings,
            contrastive_stage=contrastive_stage,
            step=step,
            train=train,
        )
        mlm_logits = best_rq.CodeHead(
            objective.num_groups, objective.num_codes, config.compute_dtype, name="mlm_head"
        )(stages[-1][0])
        return W2vBertOutput(
            context=out.context,
            targets=out.targets,
            mlm_logits=mlm_logits,
            mask=out.mask,
            paddings=out.paddings,
            temperature=out.temperature,
        )


def loss_fn(
    model: W2vBertModel,
    variables: Mapping[str, Any],
    batch: base.Batch,
    rng: jax.Array,
    *,
    step: jax.Array | int,
    train: bool = True,
    weights: ssl_losses.SSLLossWeights = wav2vec2.DEFAULT_WEIGHTS,
) -> tuple[jax.Array, base.Metrics]:
    """w2v-BERT loss: L = w_c L_contrastive + w_d L_diversity + w_m L_mlm (float32).

    Args:
      model: the model.
      variables: {'params': ...} (unboxed).
      batch: 'audio' [B, S] and 'audio_paddings' [B, S] (1.0 = padded).
      rng: key of the 'masking', 'dropout' and 'gumbel' streams and of distractor sampling.
      step: updates applied so far (sets the Gumbel temperature).
      train: enables dropout and Gumbel noise.
      weights: term weights (1, 0.1, 1 by default).

    Returns:
      (loss, metrics): `wav2vec2.loss_fn`'s metrics plus {'mlm_loss', 'mlm_accuracy'}.
    """
    rngs, negatives_rng = wav2vec2.split_rngs(rng)
    out = model.apply(
        variables, batch["audio"], batch["audio_paddings"], step=step, train=train, rngs=rngs
    )
    losses, metrics = wav2vec2.contrastive_terms(
        model.objective.contrastive, out.context, out.targets, out.mask, negatives_rng
    )
    losses["mlm"], mlm_metrics = ssl_losses.masked_prediction_loss(
        out.mlm_logits, out.targets.ids, out.mask
    )
    loss, totals = ssl_losses.combine_losses(losses, weights)
    return loss, {**metrics, **mlm_metrics, **totals, "gumbel_temperature": out.temperature}


@dataclasses.dataclass(frozen=True, kw_only=True)
class W2vBertTrainModel(encoder_lib.RestagesEncoderParams):
    """w2v-BERT as a `models.base.TrainModel` (what `bigssl train` drives).

    The loss weight (`base.LOSS_WEIGHT`) is the masked-frame count (see
    `wav2vec2.Wav2Vec2TrainModel` for how microbatches combine).

    Attributes:
      encoder: Conformer hyperparameters.
      objective: w2v-BERT settings.
      log_mel: log-mel front end settings.
      loss_weights: term weights (contrastive 1, diversity 0.1, mlm 1).
    """

    encoder: encoder_lib.EncoderConfig
    objective: W2vBertConfig = W2vBertConfig()
    log_mel: frontend.LogMelConfig = frontend.LogMelConfig()
    loss_weights: ssl_losses.SSLLossWeights = ssl_losses.SSLLossWeights()
    rng_streams: tuple[str, ...] = RNG_STREAMS

    @property
    def module(self) -> W2vBertModel:
        return W2vBertModel(encoder=self.encoder, objective=self.objective, log_mel=self.log_mel)

    def init_variables(self, rng: jax.Array, batch: base.Batch) -> dict[str, Any]:
        """{'params': boxed params}; only batch shapes matter."""
        return wav2vec2.init_variables(self.module, rng, batch)

    def loss(
        self, variables: Mapping[str, Any], batch: base.Batch, rng: jax.Array, *, step, train: bool
    ) -> tuple[jax.Array, base.Metrics]:
        """`loss_fn`, with the masked-frame count as the loss weight."""
        loss, metrics = loss_fn(
            self.module, variables, batch, rng, step=step, train=train, weights=self.loss_weights
        )
        return loss, {**metrics, base.LOSS_WEIGHT: metrics["num_masked_frames"]}
