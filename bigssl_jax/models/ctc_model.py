"""CTC fine-tuning: the Conformer encoder with a projection to the vocabulary (+ blank).

  x, paddings = encode_audio(audio)                   [B, T', D]   (SpecAugment in training)
  logits = x W + b                                    [B, T', V]   (id 0 = pad = blank)
  L = sum_b w_b CTC(logits_b, targets_b) / sum_b w_b U_b           (per target token)

The sentencepiece vocabulary's pad id 0 never occurs in targets, so it serves as the blank
and the head has exactly V = vocabulary size outputs. The encoder sits under the top-level
params name 'encoder', like the pre-training models': `TrainerConfig.init_params_scopes =
('encoder',)` starts from a pre-trained encoder and drops its pre-training head.

Decoding (`decode`): greedy (best path) with `DecodingConfig.beam_size = 1`, else CTC
prefix beam search, optionally shallow-fused with `lm` (`decoding.lm_interface`).
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigssl_jax.decoding import ctc_search
from bigssl_jax.layers import frontend
from bigssl_jax.losses import ctc
from bigssl_jax.models import asr, base
from bigssl_jax.models import encoder as encoder_lib

RNG_STREAMS = asr.RNG_STREAMS


class CtcModel(nn.Module):
    """audio [B, S], paddings [B, S] -> (logits f32[B, T', V], paddings [B, T']).

    Attributes:
      encoder: Conformer hyperparameters.
      vocab_size: V, the sentencepiece vocabulary size (the pad id 0 is the blank).
      log_mel: log-mel settings.
      spec_augment: SpecAugment settings (training only); None disables it.
    """

    encoder: encoder_lib.EncoderConfig
    vocab_size: int
    log_mel: frontend.LogMelConfig = frontend.LogMelConfig()
    spec_augment: frontend.SpecAugmentConfig | None = frontend.SpecAugmentConfig()

    @nn.compact
    def __call__(
        self, audio: jax.Array, paddings: jax.Array, *, train: bool
    ) -> tuple[jax.Array, jax.Array]:
        x, paddings = encoder_lib.encode_audio(
            self.encoder, self.log_mel, self.spec_augment, audio, paddings, train=train
        )
        logits = ctc_head(self.vocab_size, self.encoder.compute_dtype)(x)
        return logits.astype(jnp.float32), paddings


def ctc_head(vocab_size: int, dtype: Any) -> nn.DenseGeneral:
    """The projection [B, T', D] -> CTC logits [B, T', V], named 'ctc_head' (blank = id 0)."""
    return nn.DenseGeneral(
        vocab_size,
        dtype=dtype,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), ("embed", "vocab")
        ),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)),
        name="ctc_head",
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class CtcTrainModel(asr.AsrTrainModel):
    """CTC fine-tuning as a `models.base.TrainModel`, `ScoredModel` (WER) and
    `models.asr.AsrModel`; the shared fields (encoder, front end, decoding, vocabulary, LM)
    are `asr.AsrTrainModel`'s.

    Attributes:
      vocab_size: V, the sentencepiece vocabulary size.
    """

    vocab_size: int = 1024

    @property
    def module(self) -> CtcModel:
        return CtcModel(
            encoder=self.encoder,
            vocab_size=self.vocab_size,
            log_mel=self.log_mel,
            spec_augment=self.spec_augment,
        )

    def init_variables(self, rng: jax.Array, batch: base.Batch) -> dict[str, Any]:
        """{'params': boxed params}; only the batch's audio shape matters."""
        audio = jnp.zeros(batch["audio"].shape, jnp.float32)
        return dict(self.module.init(rng, audio, jnp.zeros_like(audio), train=False))

    def loss(
        self, variables: Mapping[str, Any], batch: base.Batch, rng: jax.Array, *, step, train
    ) -> tuple[jax.Array, base.Metrics]:
        """CTC per target token; the loss weight is the (row-weighted) target token count."""
        del step
        logits, paddings = self.module.apply(
            variables,
            batch["audio"],
            batch["audio_paddings"],
            train=train,
            rngs=base.split_rngs(rng, self.rng_streams),
        )
        loss, num_tokens = ctc.ctc_loss_and_weight(
            logits, paddings, batch["targets"], batch["target_paddings"], batch["weights"]
        )
        return loss, {"ctc_loss": loss, "num_tokens": num_tokens, base.LOSS_WEIGHT: num_tokens}

    def decode(
        self, variables: Mapping[str, Any], audio: jax.Array, paddings: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Transcribes audio [B, S]: (tokens i32[B, L], token_paddings f32[B, L], scores f32[B]).

        Scores are the search's log-probabilities (best path for greedy, prefix probability
        with any LM terms for beam search).
        """
        logits, frame_paddings = self.module.apply(variables, audio, paddings, train=False)
        decoding = self.decoding
        if decoding.beam_size == 1:
            return ctc_search.greedy_search(logits, frame_paddings)
        return ctc_search.prefix_beam_search(
            logits,
            frame_paddings,
            beam_size=decoding.beam_size,
            max_length=decoding.max_output_length,
            lm=self.lm,
            lm_weight=decoding.lm_weight if self.lm is not None else 0.0,
        )
