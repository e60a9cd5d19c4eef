"""The Conformer encoder and the audio encoder (waveform -> log-mel -> SpecAugment -> Conformer).

  features [B, T, F] --ConvSubsampling--> [B, T/4, D] --stage 0--> ... --stage n--> [B, T', D]

The block stack is cut into *stages*, each a run of Conformer blocks stacked with `nn.scan`
(or a Python loop). Stages end at every index in `split_layers` and at `stacking_layer`, where a
`FrameStacking` layer halves the frame rate (XXL+). `ConformerEncoder.encode` returns every
stage's output, which is how a model reads intermediate layers:
  * w2v-BERT: `split_layers=(12,)` gives the contrastive module's output (blocks 0-11) and the
    MLM module's output (blocks 12 and up);
  * layer-wise probes: `split_layers=(1, 2, ..., N - 1)` returns every block's output.
Cut points change the parameter tree (one subtree `stages_{i}` per stage), not the numbers:
`restage_params` regroups a checkpoint's blocks for other cut points (and for the other
`scan_layers` setting), which is how a w2v-BERT encoder initialises a CTC model's.

Variants (opt-in `EncoderConfig` fields; the defaults are BigSSL's Conformer): the w2v-BERT
2.0 encoder of `Wav2Vec2BertModel` (gin/models/w2v_bert_2.gin, `bigssl import-encoder`) is
  input_layer='stack'                   stride-2 stacking + LayerNorm + projection (T' = T/2)
  relative_position_kind='shaw_key'     clipped relative keys (max_left / max_right)
  causal_conv=True                      depthwise convolution over past frames only
  layer_norm_epsilon=1e-5
with formulas in `subsampling.StackedProjection`, `attention.MultiHeadSelfAttention` and
`conformer.ConvolutionModule`.

Speech convention (praxis): paddings are float32 with 1.0 = padded, 0.0 = valid.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bigssl_jax.layers import attention, conformer, dropout, frontend, subsampling

_ACTIVATION_AXES = ("activation_batch", "activation_length", "activation_embed")
REMAT_POLICIES = (
    "none",
    "full",
    "dots_saveable",
    "nothing_saveable",
    "dots_with_no_batch_dims_saveable",
)
INPUT_LAYERS = ("conv", "stack")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EncoderConfig:
    """Conformer encoder hyperparameters (the model zoo is in gin/models/*.gin).

    Attributes:
      input_dim: F, the log-mel feature width.
      model_dim: D, the width of the blocks.
      num_layers: N, the number of Conformer blocks.
      num_heads: H, attention heads (D must be divisible by H).
      ff_mult: the feed-forward hidden width is ff_mult * D.
      conv_kernel_size: K, the depthwise convolution width in frames (after subsampling).
      use_relative_position: adds a learned relative position term to attention (see
        `bigssl_jax.layers.attention`); without it the encoder has no position information
        besides what the convolutions provide, as in BigSSL's XL and larger.
      relative_position_kind: 't5' (a bucketed per-head bias) or 'shaw_key' (w2v-BERT 2.0's
        clipped relative keys).
      max_left_distance: 'shaw_key': keys further left share one embedding.
      max_right_distance: 'shaw_key': keys further right share one embedding.
      causal_conv: the depthwise convolution sees K - 1 past frames and no future ones
        (w2v-BERT 2.0) instead of being centred.
      layer_norm_epsilon: the epsilon of every LayerNorm of the encoder.
      input_layer: 'conv' (`subsampling.ConvSubsampling`, T/4, `subsampling_channels`) or
        'stack' (`subsampling.StackedProjection`, T/2: w2v-BERT 2.0's feature projection).
      dropout_rate: dropout on every residual branch.
      ff_dropout_rate: dropout on the feed-forward hidden activations.
      input_dropout_rate: dropout on the subsampling output.
      subsampling_channels: C, channels of the two subsampling convolutions.
      stacking_layer: if set, a FrameStacking layer (halves time) runs before this block.
      split_layers: block indices where the stack is cut into stages whose outputs
        `ConformerEncoder.encode` returns (see the module docstring).
      dtype: compute dtype, 'float32' or 'bfloat16'; parameters are always float32.
      attention_implementation: of `jax.nn.dot_product_attention`: None (XLA's, the default
        on CPU and TPU) or 'cudnn' (cuDNN's flash kernel, bfloat16 only: the GPU default,
        see `bigssl_jax.platform_defaults` and `layers.attention`).
      remat_policy: rematerialisation of each block in the backward pass: 'none' (store
        everything), 'full' (store only block inputs), or the name of a
        `jax.checkpoint_policies` policy ('dots_saveable', 'nothing_saveable', ...).
      scan_layers: stack the blocks of a stage with `nn.scan` (parameters get a leading
        'layers' axis, compile time does not grow with depth) instead of a Python loop.
    """

    input_dim: int = 80
    model_dim: int = 256
    num_layers: int = 4
    num_heads: int = 4
    ff_mult: int = 4
    conv_kernel_size: int = 5
    use_relative_position: bool = False
    dropout_rate: float = 0.1
    ff_dropout_rate: float = 0.1
    input_dropout_rate: float = 0.1
    subsampling_channels: int = 128
    relative_position_kind: str = "t5"
    max_left_distance: int = 64
    max_right_distance: int = 8
    causal_conv: bool = False
    layer_norm_epsilon: float = 1e-6
    input_layer: str = "conv"
    stacking_layer: int | None = None
    split_layers: tuple[int, ...] = ()
    dtype: str = "float32"
    attention_implementation: str | None = None
    remat_policy: str = "none"
    scan_layers: bool = True

    def __post_init__(self):
        if self.model_dim % self.num_heads:
            raise ValueError(
                f"model_dim {self.model_dim} is not divisible by num_heads {self.num_heads}"
            )
        for index in (*self.split_layers, self.stacking_layer):
            if index is not None and not 0 < index < self.num_layers:
                raise ValueError(f"split/stacking layer {index} is not in (0, {self.num_layers})")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy {self.remat_policy!r} is not one of {REMAT_POLICIES}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype {self.dtype!r} is not 'float32' or 'bfloat16'")
        if self.attention_implementation not in (None, "xla", "cudnn"):
            raise ValueError(
                f"attention_implementation {self.attention_implementation!r} is not None, "
                "'xla' or 'cudnn'"
            )
        if self.input_layer not in INPUT_LAYERS:
            raise ValueError(f"input_layer {self.input_layer!r} is not one of {INPUT_LAYERS}")
        kinds = attention.RELATIVE_POSITION_KINDS
        if self.relative_position_kind not in kinds:
            raise ValueError(
                f"relative_position_kind {self.relative_position_kind!r} is not one of {kinds}"
            )

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def stages(self) -> tuple[tuple[int, int], ...]:
        """[start, end) block ranges of the stages, in order."""
        cuts = set(self.split_layers)
        if self.stacking_layer is not None:
            cuts.add(self.stacking_layer)
        bounds = [0, *sorted(cuts), self.num_layers]
        return tuple(zip(bounds[:-1], bounds[1:], strict=True))


def block_kwargs(config: EncoderConfig) -> dict[str, Any]:
    """The `conformer.ConformerBlock` hyperparameters of `config`."""
    return dict(
        num_heads=config.num_heads,
        ff_dim=config.ff_mult * config.model_dim,
        conv_kernel_size=config.conv_kernel_size,
        relative_position=config.use_relative_position,
        relative_position_kind=config.relative_position_kind,
        max_left=config.max_left_distance,
        max_right=config.max_right_distance,
        causal_conv=config.causal_conv,
        dropout_rate=config.dropout_rate,
        ff_dropout_rate=config.ff_dropout_rate,
        epsilon=config.layer_norm_epsilon,
        dtype=config.compute_dtype,
        attention_implementation=config.attention_implementation,
    )


def _block_class(config: EncoderConfig) -> type[nn.Module]:
    """ConformerBlock, wrapped in `nn.remat` with the configured policy."""
    if config.remat_policy == "none":
        return conformer.ConformerBlock
    policy = None
    if config.remat_policy != "full":
        policy = getattr(jax.checkpoint_policies, config.remat_policy)
    # static_argnums counts `self` as 0: (x, paddings, train) are 1, 2, 3.
    return nn.remat(
        conformer.ConformerBlock,
        policy=policy,
        prevent_cse=not config.scan_layers,
        static_argnums=(3,),
    )


class ConformerStack(nn.Module):
    """`num_layers` Conformer blocks in sequence: [B, T, D] -> [B, T, D].

    Scanned, the parameters of all blocks are stacked under `layers` with a leading axis named
    'layers'; unscanned, block i's parameters are under `layers_{i}`.

    Attributes:
      config: the encoder config (block hyperparameters, dtype, remat, scan).
      num_layers: blocks in this stack.
    """

    config: EncoderConfig
    num_layers: int

    @nn.compact
    def __call__(self, x: jax.Array, paddings: jax.Array, *, train: bool) -> jax.Array:
        """Args: x [B, T, D]; paddings [B, T]; train enables dropout. Returns: [B, T, D]."""
        config = self.config
        block = _block_class(config)
        kwargs = block_kwargs(config)
        if config.scan_layers:
            scanned = nn.scan(
                block,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, nn.broadcast),
                length=self.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, _ = scanned(**kwargs, name="layers")(x, paddings, train)
        else:
            for i in range(self.num_layers):
                x, _ = block(**kwargs, name=f"layers_{i}")(x, paddings, train)
        return x


class ConformerEncoder(nn.Module):
    """Conformer encoder over log-mel features: [B, T, F] -> [B, T', D].

    T' = ceil(ceil(T / 2) / 2) (input_layer 'conv') or ceil(T / 2) ('stack'), halved again
    (rounding up) by the stacking layer if any.

    Attributes:
      config: the encoder hyperparameters.
    """

    config: EncoderConfig

    def setup(self):
        config = self.config
        dtype = config.compute_dtype
        if config.input_layer == "stack":
            self.subsampling = subsampling.StackedProjection(
                config.model_dim, config.layer_norm_epsilon, dtype
            )
        else:
            self.subsampling = subsampling.ConvSubsampling(
                config.subsampling_channels, config.model_dim, dtype
            )
        self.input_dropout = dropout.Dropout(config.input_dropout_rate)
        self.stages = [ConformerStack(config, end - start) for start, end in config.stages]
        if config.stacking_layer is not None:
            self.stacking = subsampling.FrameStacking(config.model_dim, dtype)

    def embed(
        self, features: jax.Array, paddings: jax.Array, *, train: bool
    ) -> tuple[jax.Array, jax.Array]:
        """The feature encoder: subsampling (or stacking), projection, dropout.

        Args:
          features: [B, T, F] log-mel features.
          paddings: [B, T] float, 1.0 at padded frames.
          train: enables dropout.

        Returns:
          ([B, T/4, D] embeddings in the compute dtype, [B, T/4] paddings); T/2 with the
          'stack' input layer.
        """
        x, paddings = self.subsampling(features, paddings)
        x = nn.with_logical_constraint(x, _ACTIVATION_AXES)
        return self.input_dropout(x, deterministic=not train), paddings

    def encode(
        self, x: jax.Array, paddings: jax.Array, *, train: bool
    ) -> list[tuple[jax.Array, jax.Array]]:
        """Runs the block stages on embeddings (from `embed`, possibly masked by the caller).

        Args:
          x: [B, T, D] embeddings.
          paddings: [B, T] float, 1.0 at padded frames.
          train: enables dropout.

        Returns:
          one (outputs [B, T_s, D] float32, zero at padded frames; paddings [B, T_s]) pair per
          stage; the last is the encoder output.
        """
        results = []
        for (start, _), stage in zip(self.config.stages, self.stages, strict=True):
            if start == self.config.stacking_layer:
                x, paddings = self.stacking(x, paddings)
            x = stage(x, paddings, train=train)
            valid = (1.0 - paddings)[..., None]
            results.append((x.astype(jnp.float32) * valid, paddings))
        return results

    def __call__(
        self, features: jax.Array, paddings: jax.Array, *, train: bool
    ) -> tuple[jax.Array, jax.Array]:
        """Encodes features.

        Args:
          features: [B, T, F] log-mel features.
          paddings: [B, T] float, 1.0 at padded frames.
          train: enables dropout.

        Returns:
          (outputs [B, T', D] float32, zero at padded frames; paddings [B, T']).
        """
        x, paddings = self.embed(features, paddings, train=train)
        return self.encode(x, paddings, train=train)[-1]


class AudioEncoder(nn.Module):
    """Waveform to encodings: LogMelFrontend -> SpecAugment (train only) -> ConformerEncoder.

      ([B, S] audio, [B, S] paddings) -> ([B, T', D] float32 outputs, [B, T'] paddings)
    SpecAugment draws from the 'specaug' rng stream, dropout from 'dropout'.

    Attributes:
      encoder: the Conformer hyperparameters.
      log_mel: log-mel settings.
      spec_augment: SpecAugment settings; None disables it (e.g. for self-supervised
        pre-training, whose objective does its own masking).
    """

    encoder: EncoderConfig
    log_mel: frontend.LogMelConfig = frontend.LogMelConfig()
    spec_augment: frontend.SpecAugmentConfig | None = frontend.SpecAugmentConfig()

    @nn.compact
    def __call__(
        self, audio: jax.Array, paddings: jax.Array, *, train: bool
    ) -> tuple[jax.Array, jax.Array]:
        """Args: audio [B, S] at 16 kHz; paddings [B, S]; train enables SpecAugment and dropout."""
        return encode_audio(
            self.encoder, self.log_mel, self.spec_augment, audio, paddings, train=train
        )


class RestagesEncoderParams:
    """Mixin of the model wrappers with an `encoder: EncoderConfig` field (pre-training, ASR,
    classifiers): their `regroup_params` hook (`models.base.RegroupsParams`) restages an
    'encoder' scope saved with other stage cuts, e.g. w2v-BERT's (`restage_params`)."""

    def regroup_params(self, scope: str, saved: Mapping[str, Any]) -> dict[str, Any] | None:
        return restage_params(saved, self.encoder) if scope == "encoder" else None


def restage_params(params: Mapping[str, Any], config: EncoderConfig) -> dict[str, Any]:
    """`ConformerEncoder` params saved with other stage cuts, regrouped for `config`.

    The config that saved a checkpoint decides how its N blocks are grouped: one subtree
    `stages_{i}` per stage (w2v-BERT cuts after its contrastive module, CTC fine-tuning does
    not), each holding its blocks stacked on a leading axis under 'layers' (`scan_layers`) or
    as 'layers_{j}'. The blocks are taken out in order and regrouped as `config.stages`;
    every other subtree ('subsampling', 'stacking') is kept as it is.

    Args:
      params: the saved encoder params (numpy arrays), e.g. {'subsampling': ...,
        'stages_0': {'layers': {...: [n_0, ...]}}, 'stages_1': ...}.
      config: the encoder to restore into.

    Returns:
      The params with one `stages_{i}` per stage of `config`.

    Raises:
      ValueError: the saved stages do not hold `config.num_layers` blocks.
    """
    saved_stages = sorted(
        (name for name in params if name.startswith("stages_")), key=lambda n: int(n[7:])
    )
    blocks = [block for name in saved_stages for block in _stage_blocks(params[name])]
    if len(blocks) != config.num_layers:
        raise ValueError(
            f"the saved encoder has {len(blocks)} Conformer blocks, this one {config.num_layers}"
        )
    restaged = {name: value for name, value in params.items() if name not in saved_stages}
    for i, (start, end) in enumerate(config.stages):
        stage_blocks = blocks[start:end]
        if config.scan_layers:
            stacked = jax.tree.map(lambda *arrays: np.stack(arrays), *stage_blocks)
            restaged[f"stages_{i}"] = {"layers": stacked}
        else:
            restaged[f"stages_{i}"] = {f"layers_{j}": b for j, b in enumerate(stage_blocks)}
    return restaged


def _stage_blocks(stage: Mapping[str, Any]) -> list[Any]:
    """The per-block param trees of one saved `ConformerStack`, in order."""
    if "layers" in stage:
        length = len(jax.tree.leaves(stage["layers"])[0])
        return [jax.tree.map(lambda x, i=i: x[i], stage["layers"]) for i in range(length)]
    return [stage[f"layers_{j}"] for j in range(len(stage))]


def encode_audio(
    encoder: EncoderConfig,
    log_mel: frontend.LogMelConfig,
    spec_augment: frontend.SpecAugmentConfig | None,
    audio: jax.Array,
    paddings: jax.Array,
    *,
    train: bool,
) -> tuple[jax.Array, jax.Array]:
    """`AudioEncoder`'s forward pass, run inside the calling module's `nn.compact` method.

    Its submodules ('log_mel', 'spec_augment', 'encoder') belong to the caller, so a model
    built on it (CTC, RNN-T, a classifier) keeps the Conformer under the top-level name
    'encoder', as the pre-training models do: a pre-trained encoder restores by that name.

    Args:
      encoder: the Conformer hyperparameters.
      log_mel: log-mel settings.
      spec_augment: SpecAugment settings (rng stream 'specaug'); None disables it.
      audio: [B, S] at 16 kHz.
      paddings: [B, S], 1.0 = padded.
      train: enables SpecAugment and dropout.

    Returns:
      ([B, T', D] float32 outputs, zero at padded frames; [B, T'] paddings).
    """
    features, paddings = frontend.LogMelFrontend(log_mel, name="log_mel")(audio, paddings)
    if spec_augment is not None:
        features = frontend.SpecAugment(spec_augment, name="spec_augment")(
            features, paddings, deterministic=not train
        )
    return ConformerEncoder(encoder, name="encoder")(features, paddings, train=train)
