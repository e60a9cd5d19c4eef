"""wav2vec 2.0 self-supervised pre-training (BigSSL flavour): the model and its loss.

For a batch of waveforms, with the Conformer's convolutional subsampling as the feature encoder:

  features = LogMel(audio)                                  [B, T, F]
  x = ConformerEncoder.embed(features)                      [B, T', D]   (T' = T / 4)
  e, ids, p = GumbelVQ_tau(x); q = e W_q + b_q              [B, T', C], [B, T', G], [B, T', G, V]
        or q = x W (linear targets)                         [B, T', C]
  mask = span_mask(T'); x[t] = m (a learned vector) where mask[t]
  c = P ConformerEncoder.encode(x)                          [B, T', C]
  L = L_contrastive(c, q, mask) + w_d L_diversity(p, mask)

L_contrastive (`ssl_losses.contrastive_loss`) scores each masked frame's context against its
own target and K = 100 distractor targets drawn from the other masked frames of the same
utterance (cosine / 0.1). L_diversity (weight 0.1) pushes the average code distribution over
masked frames towards uniform; it is dropped with linear targets, which have no codebook.
The Gumbel temperature tau = `gumbel_temperature(step)` anneals 2.0 -> 0.1, so the model and
`loss_fn` take the step count (updates applied so far; the train step itself is the
trainer's, shared by every objective).

Targets keep their gradient, as in fairseq, whose quantiser reads the CNN features with
gradient: the subsampling stem is trained through both the masked context and the targets
(the diversity loss keeps the codes from collapsing; a stop-gradient at x would leave the
stem to the context path alone).

Masking (`layers.masking.compute_span_mask`, fairseq convention): mask_prob 0.65 and span 10
encoder frames, at least one span per utterance; an utterance shorter than a span is masked
whole, and one with fewer masked frames than distractors repeats distractors.

With a stacking layer (XXL+), the context has s = 2 embedding frames per frame: the targets
quantise pairs of embedding frames (`quantizers.stack_frames`, [B, T'/2, 2D]), spans are drawn
over context frames, and a masked context frame masks both of its embedding frames.

Randomness: rng streams 'masking' (span starts), 'dropout' and 'gumbel' (code noise), plus
one key of `loss_fn` for distractor sampling. All parameters are in 'params'.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from bigssl_jax.layers import frontend, masking, quantizers, subsampling
from bigssl_jax.losses import ssl_losses
from bigssl_jax.models import base
from bigssl_jax.models import encoder as encoder_lib

RNG_STREAMS = ("masking", "dropout", "gumbel")
DEFAULT_WEIGHTS = ssl_losses.SSLLossWeights()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Wav2Vec2Config:
    """wav2vec 2.0 objective settings (fairseq defaults).

    Attributes:
      linear_targets: targets q = x W (BigSSL's variant) instead of Gumbel-quantised codes;
        there is then no diversity loss and no code metrics.
      num_groups: G, codebooks of the product quantiser.
      num_codes: V, entries per codebook.
      code_dim: C, width of the targets and of the projected context vectors.
      temperature_start: Gumbel-softmax temperature at step 0.
      temperature_end: its floor.
      temperature_decay: per-step factor, tau = max(start * decay**step, end).
      num_negatives: K, distractors per masked frame.
      logit_temperature: kappa, cosine similarities are divided by it.
      mask_prob: fraction of encoder frames covered by span starts x span length (fairseq
        convention; 0.65 = a start probability of 0.065 with spans of 10).
      span_length: span length in encoder frames.
    """

    linear_targets: bool = False
    num_groups: int = 2
    num_codes: int = 320
    code_dim: int = 256
    temperature_start: float = 2.0
    temperature_end: float = 0.1
    temperature_decay: float = 0.999995
    num_negatives: int = 100
    logit_temperature: float = 0.1
    mask_prob: float = 0.65
    span_length: int = 10

    def temperature(self, step: jax.Array | int) -> jax.Array:
        """The Gumbel-softmax temperature at `step`."""
        return quantizers.gumbel_temperature(
            step,
            start=self.temperature_start,
            end=self.temperature_end,
            decay=self.temperature_decay,
        )


def context_stride(config: encoder_lib.EncoderConfig, num_layers: int) -> int:
    """Embedding frames per frame of the output of the first `num_layers` blocks (1 or 2).

    2 when a stacking layer runs before block `num_layers`, else 1.
    """
    stacking = config.stacking_layer
    return 2 if stacking is not None and stacking < num_layers else 1


def stacked_span_mask(
    rng: jax.Array, paddings: jax.Array, stride: int, config: Wav2Vec2Config
) -> tuple[jax.Array, jax.Array]:
    """Span mask over context frames and its expansion to the embedding frames.

    Args:
      rng: PRNG key of the span starts.
      paddings: [B, T] embedding-frame paddings.
      stride: s, embedding frames per context frame.
      config: mask_prob and span_length (in context frames).

    Returns:
      ([B, ceil(T / s)] mask of context frames, [B, T] mask of embedding frames: frame t is
      masked iff context frame t // s is and t is valid).
    """
    frame_paddings = subsampling.subsample_paddings(paddings, stride)
    mask = masking.compute_span_mask(
        rng, frame_paddings, mask_prob=config.mask_prob, span_length=config.span_length
    )
    input_mask = jnp.repeat(mask, stride, axis=1)[:, : paddings.shape[1]] & (paddings < 0.5)
    return mask, input_mask


def code_projection(
    code_dim: int, dtype: jnp.dtype, name: str, *, input_axis: str | None
) -> nn.Module:
    """An affine map to the target width: [B, T, D_in] -> [B, T, C].

    Context vectors come from the model dimension (`input_axis='embed'`); code vectors have
    no partitioned axis (None).
    """
    return nn.DenseGeneral(
        code_dim,
        dtype=dtype,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), (input_axis, "kv")
        ),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("kv",)),
        name=name,
    )


@flax.struct.dataclass
class Targets:
    """Contrastive targets of every frame.

    Attributes:
      vectors: [B, T, C] targets q.
      ids: [B, T, G] int32 chosen codes (None with linear targets).
      probs: [B, T, G, V] float32 noise-free code probabilities (None with linear targets).
    """

    vectors: jax.Array
    ids: jax.Array | None
    probs: jax.Array | None


class ContrastiveTargets(nn.Module):
    """Targets from the unmasked feature-encoder output: Gumbel VQ codes or a linear projection.

    The input is first normalised per utterance and channel over time
    (`quantizers.normalize_over_time`), the role of the GroupNorm in fairseq's feature
    encoder: the subsampled frames of an utterance share a large common component (mean
    pairwise cosine ~0.75 at init on the embedded corpus), and without it every frame picks
    the same few codes and the codebook collapses within tens of steps.

    The chosen code vectors e then pass through a learned affine map, q = e W_q + b_q
    (fairseq's `project_q`). The codebook starts uniform in [0, 1) (fairseq), so two
    different codes have cosine ~0.75; with the codes themselves as targets even a context
    equal to its target scores a distractor only (1 - 0.75) / kappa below the positive,
    and the contrastive loss cannot fall below ~1.7 at K = 50. The projection (and its bias)
    can take that common component out.

    Attributes:
      config: the objective settings (target kind, codebook shape).
      dtype: compute dtype.
    """

    config: Wav2Vec2Config
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, paddings: jax.Array, *, temperature: jax.Array, train: bool
    ) -> Targets:
        """Args: x [B, T, D]; paddings [B, T]; temperature tau; train adds Gumbel noise."""
        config = self.config
        x = quantizers.normalize_over_time(x.astype(jnp.float32), paddings).astype(self.dtype)
        if config.linear_targets:
            vectors = quantizers.LinearTargetProjection(
                config.code_dim, dtype=self.dtype, name="linear"
            )(x)
            return Targets(vectors, None, None)
        out = quantizers.GumbelVectorQuantizer(
            num_groups=config.num_groups,
            num_codes=config.num_codes,
            code_dim=config.code_dim,
            dtype=self.dtype,
            name="gumbel",
        )(x, temperature=temperature, deterministic=not train)
        vectors = code_projection(config.code_dim, self.dtype, "project", input_axis=None)(
            out.quantized
        )
        return Targets(vectors, out.ids, out.probs)


class MaskEmbedding(nn.Module):
    """Replaces masked frames with one learned vector: x'[b, t] = m if mask[b, t] else x[b, t].

    m ~ U[0, 1)^D at init (fairseq), logical axis 'embed'.
    """

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """Args: x [B, T, D]; mask [B, T] bool. Returns: [B, T, D] in x's dtype."""
        embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(nn.initializers.uniform(1.0), ("embed",)),
            (x.shape[-1],),
            jnp.float32,
        )
        return jnp.where(mask[..., None], embedding.astype(x.dtype), x)


@flax.struct.dataclass
class Wav2Vec2Output:
    """What `Wav2Vec2Model` returns.

    Attributes:
      context: [B, T', C] projected context vectors c (T' halved by a stacking layer).
      targets: the targets q of every context frame (codes, ids and probabilities).
      mask: [B, T'] bool, True at masked context frames.
      paddings: [B, T'] float32 context-frame paddings.
      temperature: the Gumbel-softmax temperature used, float32 scalar.
    """

    context: jax.Array
    targets: Targets
    mask: jax.Array
    paddings: jax.Array
    temperature: jax.Array


class Wav2Vec2Model(nn.Module):
    """Log-mel -> Conformer subsampling -> (targets, span-masked Conformer -> context).

    `__call__(audio [B, S], paddings [B, S], step=..., train=...)` returns a `Wav2Vec2Output`
    (the formula is in the module docstring). Needs rng stream 'masking', and in training
    'dropout' and 'gumbel'.

    Attributes:
      encoder: Conformer hyperparameters.
      objective: wav2vec 2.0 settings.
      log_mel: log-mel front end settings.
    """

    encoder: encoder_lib.EncoderConfig
    objective: Wav2Vec2Config = Wav2Vec2Config()
    log_mel: frontend.LogMelConfig = frontend.LogMelConfig()

    @nn.compact
    def __call__(
        self, audio: jax.Array, paddings: jax.Array, *, step: jax.Array | int, train: bool
    ) -> Wav2Vec2Output:
        """Args: audio [B, S] at 16 kHz; paddings [B, S]; step sets tau; train: dropout, noise."""
        out, _ = masked_contrastive_forward(
            self,
            self.encoder,
            self.objective,
            self.log_mel,
            audio,
            paddings,
            contrastive_stage=-1,
            step=step,
            train=train,
        )
        return out


def masked_contrastive_forward(
    module: nn.Module,
    encoder_config: encoder_lib.EncoderConfig,
    objective: Wav2Vec2Config,
    log_mel: frontend.LogMelConfig,
    audio: jax.Array,
    paddings: jax.Array,
    *,
    contrastive_stage: int,
    step: jax.Array | int,
    train: bool,
) -> tuple[Wav2Vec2Output, list[tuple[jax.Array, jax.Array]]]:
    """The forward pass wav2vec 2.0 and w2v-BERT share, run inside `module`'s `nn.compact` call.

    Log-mel -> subsampled embeddings x -> targets q = quantiser(stacked x); span mask ->
    x' = mask embedding at masked frames -> Conformer stages -> c = projection of the output
    of stage `contrastive_stage`. The submodules ('log_mel', 'encoder', 'quantizer',
    'mask_embedding', 'final_projection') are created here and belong to `module`.

    Args:
      module: the calling model (its 'masking' rng stream draws the spans).
      encoder_config: Conformer hyperparameters, cut into stages.
      objective: wav2vec 2.0 settings (codebook, masking, temperature schedule).
      log_mel: log-mel front end settings.
      audio: [B, S] at 16 kHz.
      paddings: [B, S], 1.0 = padded.
      contrastive_stage: index of the stage whose output is the context (-1: the last).
      step: updates applied so far (sets the Gumbel temperature).
      train: enables dropout and Gumbel noise.

    Returns:
      (the contrastive part as a `Wav2Vec2Output`, every stage's (outputs, paddings)).
    """
    dtype = encoder_config.compute_dtype
    # Blocks up to the end of the contrastive stage decide the context frame rate.
    stride = context_stride(encoder_config, encoder_config.stages[contrastive_stage][1])
    features, paddings = frontend.LogMelFrontend(log_mel, name="log_mel")(audio, paddings)
    encoder = encoder_lib.ConformerEncoder(encoder_config, name="encoder")
    x, paddings = encoder.embed(features, paddings, train=train)
    temperature = objective.temperature(step)
    stacked, stacked_paddings = quantizers.stack_frames(x, paddings, stride)
    targets = ContrastiveTargets(objective, dtype, name="quantizer")(
        stacked, stacked_paddings, temperature=temperature, train=train
    )
    mask, input_mask = stacked_span_mask(module.make_rng("masking"), paddings, stride, objective)
    x = MaskEmbedding(name="mask_embedding")(x, input_mask)
    stages = encoder.encode(x, paddings, train=train)
    context, paddings = stages[contrastive_stage]
    context = code_projection(objective.code_dim, dtype, "final_projection", input_axis="embed")(
        context
    )
    out = Wav2Vec2Output(
        context=context, targets=targets, mask=mask, paddings=paddings, temperature=temperature
    )
    return out, stages


def init_variables(model: nn.Module, rng: jax.Array, batch: base.Batch) -> dict[str, Any]:
    """{'params': boxed params} of `Wav2Vec2Model` or `w2v_bert.W2vBertModel`.

    Args:
      model: the model.
      rng: init key.
      batch: an example batch (arrays or `jax.ShapeDtypeStruct`s) with 'audio' [B, S];
        only shapes matter.

    Returns:
      The variables (these models have only 'params').
    """
    params_rng, masking_rng = jax.random.split(rng)
    audio = jnp.zeros(batch["audio"].shape, jnp.float32)
    rngs = {"params": params_rng, "masking": masking_rng}
    return dict(model.init(rngs, audio, jnp.zeros_like(audio), step=0, train=False))


def split_rngs(rng: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
    """One key per model rng stream (`RNG_STREAMS`) and one for distractor sampling."""
    keys = jax.random.split(rng, len(RNG_STREAMS) + 1)
    return dict(zip(RNG_STREAMS, keys[:-1], strict=True)), keys[-1]


def contrastive_terms(
    objective: Wav2Vec2Config,
    context: jax.Array,
    targets: Targets,
    mask: jax.Array,
    rng: jax.Array,
) -> tuple[dict[str, jax.Array], base.Metrics]:
    """The contrastive and (with a codebook) diversity losses, and their metrics.

    Args:
      objective: the settings (K, kappa, target kind, V).
      context: [B, T, C] projected context vectors.
      targets: the targets of every frame.
      mask: [B, T] bool, masked frames (the only ones scored or counted).
      rng: distractor sampling key.

    Returns:
      ({'contrastive': L_c[, 'diversity': L_d]}, metrics of `ssl_losses.contrastive_loss`,
      plus with a codebook those of `diversity_loss` and `codebook_metrics` over masked frames).
    """
    contrastive, metrics = ssl_losses.contrastive_loss(
        context,
        targets.vectors,
        mask,
        rng,
        num_negatives=objective.num_negatives,
        temperature=objective.logit_temperature,
    )
    losses = {"contrastive": contrastive}
    if not objective.linear_targets:
        losses["diversity"], diversity_metrics = ssl_losses.diversity_loss(targets.probs, mask)
        metrics.update(diversity_metrics)
        metrics.update(ssl_losses.codebook_metrics(targets.ids, mask, objective.num_codes))
    return losses, metrics


def loss_fn(
    model: Wav2Vec2Model,
    variables: Mapping[str, Any],
    batch: base.Batch,
    rng: jax.Array,
    *,
    step: jax.Array | int,
    train: bool = True,
    weights: ssl_losses.SSLLossWeights = DEFAULT_WEIGHTS,
) -> tuple[jax.Array, base.Metrics]:
    """wav2vec 2.0 loss of a batch: L = w_c L_contrastive + w_d L_diversity (float32).

    Args:
      model: the model.
      variables: {'params': ...} (unboxed).
      batch: 'audio' [B, S] and 'audio_paddings' [B, S] (1.0 = padded).
      rng: key of the 'masking', 'dropout' and 'gumbel' streams and of distractor sampling.
      step: updates applied so far (sets the Gumbel temperature).
      train: enables dropout and Gumbel noise.
      weights: term weights (contrastive 1, diversity 0.1; mlm is unused).

    Returns:
      (loss, metrics): {'loss', 'contrastive_loss', 'contrastive_accuracy',
      'num_masked_frames', 'gumbel_temperature'} and, with a codebook, {'diversity_loss',
      'prob_perplexity', 'code_perplexity', 'code_usage'}.
    """
    rngs, negatives_rng = split_rngs(rng)
    out = model.apply(
        variables, batch["audio"], batch["audio_paddings"], step=step, train=train, rngs=rngs
    )
    losses, metrics = contrastive_terms(
        model.objective, out.context, out.targets, out.mask, negatives_rng
    )
    loss, totals = ssl_losses.combine_losses(losses, weights)
    return loss, {**metrics, **totals, "gumbel_temperature": out.temperature}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Wav2Vec2TrainModel(encoder_lib.RestagesEncoderParams):
    """wav2vec 2.0 as a `models.base.TrainModel` (what `bigssl train` drives).

    The loss weight (`base.LOSS_WEIGHT`) is the masked-frame count. Microbatches then combine
    the contrastive term exactly; the diversity term, a function of the code distribution
    averaged over the batch, is combined as a weighted mean of the microbatches' values.

    Attributes:
      encoder: Conformer hyperparameters.
      objective: wav2vec 2.0 settings.
      log_mel: log-mel front end settings.
      loss_weights: term weights (contrastive 1, diversity 0.1).
    """

    encoder: encoder_lib.EncoderConfig
    objective: Wav2Vec2Config = Wav2Vec2Config()
    log_mel: frontend.LogMelConfig = frontend.LogMelConfig()
    loss_weights: ssl_losses.SSLLossWeights = ssl_losses.SSLLossWeights()
    rng_streams: tuple[str, ...] = RNG_STREAMS

    @property
    def module(self) -> Wav2Vec2Model:
        return Wav2Vec2Model(encoder=self.encoder, objective=self.objective, log_mel=self.log_mel)

    def init_variables(self, rng: jax.Array, batch: base.Batch) -> dict[str, Any]:
        """{'params': boxed params}; only batch shapes matter."""
        return init_variables(self.module, rng, batch)

    def loss(
        self, variables: Mapping[str, Any], batch: base.Batch, rng: jax.Array, *, step, train: bool
    ) -> tuple[jax.Array, base.Metrics]:
        """`loss_fn`, with the masked-frame count as the loss weight."""
        loss, metrics = loss_fn(
            self.module, variables, batch, rng, step=step, train=train, weights=self.loss_weights
        )
        return loss, {**metrics, base.LOSS_WEIGHT: metrics["num_masked_frames"]}
