"""RNN-T fine-tuning (the recipe's decoder): the Conformer encoder, an LSTM prediction network
and a joint network.

  x, paddings = encode_audio(audio)                           [B, T', D]  (SpecAugment in training)
  logits = joint(x, prediction([blank, y_1 .. y_U]))          [B, T', U + 1, V]
  L = sum_b w_b RNNT(logits_b, y_b) / sum_b w_b U_b           (per target token)
    + ctc_weight * (the same mean of CTC(x W_ctc, y_b))        (optional auxiliary CTC)

The blank is the sentencepiece pad id 0 (never a target), also the prediction network's
start symbol. Params: 'encoder' (restorable from pre-training with `init_params_scopes =
('encoder',)`) and 'decoder' (`layers.rnnt_decoder.RnntDecoder`); the recipe trains them
with separate schedules (`OptimizerConfig.encoder_peak_lr`). With `ctc_weight > 0` a CTC
projection 'ctc_head' on the encoder adds an auxiliary CTC loss (as ESPnet's transducer
recipes): on a few hours of labels the prediction network can memorise the transcripts
faster than the encoder learns to align, and the joint then learns to ignore the encoder
(docs/finetuning.md); the CTC term keeps the encoder's outputs aligned with the labels.
Decoding uses the transducer only.

Decoding (`decode`): greedy with `DecodingConfig.beam_size = 1`, else time-synchronous
beam search (`decoding.rnnt_search`), optionally shallow-fused with `lm`.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigssl_jax.decoding import rnnt_search
from bigssl_jax.layers import frontend, rnnt_decoder
from bigssl_jax.losses import ctc, rnnt
from bigssl_jax.models import asr, base, ctc_model
from bigssl_jax.models import encoder as encoder_lib

RNG_STREAMS = asr.RNG_STREAMS


class RnntModel(nn.Module):
    """(audio [B, S], paddings [B, S], labels i32[B, U]) -> RNN-T logits and CTC logits.

    Returns (logits [B, T', U+1, V], paddings [B, T'], ctc_logits f32[B, T', V] or None).

    Attributes:
      encoder: Conformer hyperparameters.
      decoder: prediction and joint network hyperparameters (vocab_size = V).
      log_mel: log-mel settings.
      spec_augment: SpecAugment settings (training only); None disables it.
      aux_ctc: adds the CTC projection 'ctc_head' on the encoder outputs.
    """

    encoder: encoder_lib.EncoderConfig
    decoder: rnnt_decoder.RnntDecoderConfig
    log_mel: frontend.LogMelConfig = frontend.LogMelConfig()
    spec_augment: frontend.SpecAugmentConfig | None = frontend.SpecAugmentConfig()
    aux_ctc: bool = False

    @nn.compact
    def __call__(
        self, audio: jax.Array, paddings: jax.Array, labels: jax.Array, *, train: bool
    ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
        x, paddings = encoder_lib.encode_audio(
            self.encoder, self.log_mel, self.spec_augment, audio, paddings, train=train
        )
        logits = rnnt_decoder.RnntDecoder(self.decoder, name="decoder")(x, labels, train=train)
        ctc_logits = None
        if self.aux_ctc:
            head = ctc_model.ctc_head(self.decoder.vocab_size, self.encoder.compute_dtype)
            ctc_logits = head(x).astype(jnp.float32)
        return logits, paddings, ctc_logits


@dataclasses.dataclass(frozen=True, kw_only=True)
class RnntTrainModel(asr.AsrTrainModel):
    """RNN-T fine-tuning as a `models.base.TrainModel`, `ScoredModel` (WER) and
    `models.asr.AsrModel`; the shared fields (encoder, front end, decoding, vocabulary, LM)
    are `asr.AsrTrainModel`'s.

    Attributes:
      decoder: prediction and joint network hyperparameters; its vocab_size is the
        sentencepiece vocabulary size.
      ctc_weight: weight of the auxiliary CTC loss on the encoder; 0 trains no CTC head.
    """

    decoder: rnnt_decoder.RnntDecoderConfig = rnnt_decoder.RnntDecoderConfig()
    ctc_weight: float = 0.0

    @property
    def module(self) -> RnntModel:
        return RnntModel(
            encoder=self.encoder,
            decoder=self.decoder,
            log_mel=self.log_mel,
            spec_augment=self.spec_augment,
            aux_ctc=self.ctc_weight > 0.0,
        )

    @property
    def vocab_size(self) -> int:
        return self.decoder.vocab_size

    def init_variables(self, rng: jax.Array, batch: base.Batch) -> dict[str, Any]:
        """{'params': boxed params}; only the batch's audio shape matters."""
        audio = jnp.zeros(batch["audio"].shape, jnp.float32)
        labels = jnp.zeros((audio.shape[0], 1), jnp.int32)
        return dict(self.module.init(rng, audio, jnp.zeros_like(audio), labels, train=False))

    def loss(
        self, variables: Mapping[str, Any], batch: base.Batch, rng: jax.Array, *, step, train
    ) -> tuple[jax.Array, base.Metrics]:
        """RNN-T (+ ctc_weight * CTC) per target token; the loss weight is the token count."""
        del step
        logits, paddings, ctc_logits = self.module.apply(
            variables,
            batch["audio"],
            batch["audio_paddings"],
            batch["targets"],
            train=train,
            rngs=base.split_rngs(rng, self.rng_streams),
        )
        labels = (batch["targets"], batch["target_paddings"], batch["weights"])
        rnnt_loss, num_tokens = rnnt.rnnt_loss_and_weight(logits, paddings, *labels)
        metrics = {"rnnt_loss": rnnt_loss, "num_tokens": num_tokens, base.LOSS_WEIGHT: num_tokens}
        loss = rnnt_loss
        if ctc_logits is not None:
            metrics["ctc_loss"], _ = ctc.ctc_loss_and_weight(ctc_logits, paddings, *labels)
            loss = rnnt_loss + self.ctc_weight * metrics["ctc_loss"]
        return loss, metrics

    def encode(
        self, variables: Mapping[str, Any], audio: jax.Array, paddings: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """Encoder outputs ([B, T', D], [B, T'] paddings) in evaluation mode."""
        audio_encoder = encoder_lib.AudioEncoder(self.encoder, self.log_mel, spec_augment=None)
        encoder_variables = {"params": {"encoder": variables["params"]["encoder"]}}
        return audio_encoder.apply(encoder_variables, audio, paddings, train=False)

    def decode(
        self, variables: Mapping[str, Any], audio: jax.Array, paddings: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Transcribes audio [B, S]: (tokens i32[B, L], token_paddings f32[B, L], scores f32[B]).

        Scores are log-probabilities of the chosen alignment (greedy) or of the hypothesis
        summed over merged alignments, LM terms included (beam search).
        """
        encodings, frame_paddings = self.encode(variables, audio, paddings)
        decoder = rnnt_decoder.RnntDecoder(self.decoder)
        decoder_variables = {"params": variables["params"]["decoder"]}
        decoding = self.decoding
        if decoding.beam_size == 1:
            return rnnt_search.greedy_search(
                decoder,
                decoder_variables,
                encodings,
                frame_paddings,
                max_len=decoding.max_output_length,
                max_symbols_per_frame=decoding.max_symbols_per_frame,
            )
        return rnnt_search.beam_search(
            decoder,
            decoder_variables,
            encodings,
            frame_paddings,
            beam_size=decoding.beam_size,
            max_len=decoding.max_output_length,
            max_symbols_per_frame=decoding.max_symbols_per_frame,
            lm=self.lm,
            lm_weight=decoding.lm_weight if self.lm is not None else 0.0,
        )
