"""What the CTC and RNN-T models share: the `AsrModel` contract, their common fields
(`AsrTrainModel`), decoding settings, transcription and WER scoring.

Inference, evaluation, transcription and pseudo-labeling drive any ASR model through
`AsrModel` alone. A fine-tuned model decodes host batches into token ids with a jitted
function

    decode(variables, audio f32[B, S], audio_paddings f32[B, S])
        -> (tokens i32[B, L], token_paddings f32[B, L], scores f32[B])

(scores: the search's log-probability of each transcript, e.g. a pseudo-label's confidence)

and `score_batches` turns them into text with the run's sentencepiece vocabulary and
scores them against the batch's references (`targets_pretokenized`, kept by the input
pipeline with `InputConfig.keep_fields`) with jiwer (`bigssl_jax.evaluation.wer`). Rows
of weight 0 (batch padding) are skipped.
"""

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from bigssl_jax import paths
from bigssl_jax.data import vocabulary as vocab_lib
from bigssl_jax.evaluation import wer
from bigssl_jax.layers import frontend
from bigssl_jax.models import base
from bigssl_jax.models import encoder as encoder_lib

REFERENCE_FIELD = "targets_pretokenized"
ID_FIELD = "id"
# Input fields a scored ASR eval pipeline must keep (InputConfig.keep_fields).
SCORING_FIELDS = (ID_FIELD, REFERENCE_FIELD)

Decode = Callable[[Any, Any, Any], tuple[Any, Any, Any]]
RNG_STREAMS = ("dropout", "specaug")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecodingConfig:
    """How a fine-tuned model decodes.

    Attributes:
      beam_size: 1 for greedy search, else beam search with this many hypotheses.
      max_output_length: the longest transcript in tokens (beam search).
      lm_weight: shallow-fusion weight of the language model, when the model has one.
      max_symbols_per_frame: RNN-T: tokens one frame may emit before the search moves on.
    """

    beam_size: int = 1
    max_output_length: int = 128
    lm_weight: float = 0.0
    max_symbols_per_frame: int = 3

    def __post_init__(self):
        if self.beam_size < 1:
            raise ValueError(f"DecodingConfig.beam_size must be >= 1, got {self.beam_size}")


@runtime_checkable
class AsrModel(Protocol):
    """What a model that transcribes offers: decoding, its vocabulary, WER scoring.

    Attributes:
      vocab_size: V, the sentencepiece vocabulary size of its outputs.
      vocabulary: the sentencepiece model its transcripts are detokenised with ("" until
        `bigssl train` sets the run's copy).
      decoding: how `decode` and `score` search (`DecodingConfig`).
      lm: a shallow-fusion language model for beam search (`decoding.lm_interface`), or None.
      score_fields: the string fields `score` reads from the batches (ids, references).
    """

    vocab_size: int
    vocabulary: str
    decoding: DecodingConfig
    lm: Any
    score_fields: tuple[str, ...]

    def decode(self, variables: base.Variables, audio: Any, paddings: Any) -> tuple[Any, ...]:
        """audio, paddings f32[B, S] -> (tokens i32[B, L], token_paddings f32[B, L],
        scores f32[B]); see the module docstring."""
        ...

    def score(self, variables: base.Variables, batches: Iterable[base.Batch]) -> Any:
        """Decodes `batches` and scores them against their references (a
        `TranscriptionReport`: WER, CER)."""
        ...


@runtime_checkable
class FusionLmModel(Protocol):
    """A trained language model that can be fused into an `AsrModel`'s beam search (the
    model of a `bigssl train-lm` run).

    Attributes:
      config: its hyperparameters, with `vocab_size` and `max_length`.
    """

    config: Any

    def fusion_lm(self, variables: base.Variables, *, max_length: int) -> Any:
        """The `decoding.lm_interface.FusionLanguageModel` of these variables."""
        ...


@dataclasses.dataclass(frozen=True, kw_only=True)
class AsrTrainModel(encoder_lib.RestagesEncoderParams):
    """The fields and scoring every ASR model wrapper shares (CTC, RNN-T); subclasses add
    their head, `vocab_size`, `init_variables`, `loss` and `decode`.

    Attributes:
      encoder: Conformer hyperparameters.
      log_mel: log-mel settings.
      spec_augment: SpecAugment settings (training only); None disables it.
      decoding: how `decode` and `score` search.
      vocabulary: the sentencepiece model `score` detokenises with (`bigssl train` sets it
        to the run's copy of the corpus vocabulary).
      lm: a shallow-fusion language model for beam search (set in code, e.g. by
        `inference.with_fusion_lm`), or None.
      rng_streams: the Flax rng streams `loss` draws from.
      score_fields: the string fields `score` reads.
    """

    encoder: encoder_lib.EncoderConfig
    log_mel: frontend.LogMelConfig = frontend.LogMelConfig()
    spec_augment: frontend.SpecAugmentConfig | None = frontend.SpecAugmentConfig()
    decoding: DecodingConfig = DecodingConfig()
    vocabulary: str = ""
    lm: Any = dataclasses.field(default=None, compare=False)
    rng_streams: tuple[str, ...] = RNG_STREAMS
    score_fields: tuple[str, ...] = SCORING_FIELDS

    def score(
        self, variables: Mapping[str, Any], batches: Iterable[base.Batch]
    ) -> "TranscriptionReport":
        """Decodes `batches` and scores them against their references (WER, CER)."""
        return score_batches(jitted_decode(self), variables, batches, self.vocabulary)


def jitted_decode(model: AsrModel) -> Decode:
    """`model.decode`, jitted: once per model for LM-free models (frozen, hashable configs),
    afresh for a model with a fusion LM (an LM's arrays are not hashable)."""
    import jax

    if model.lm is not None:
        return jax.jit(model.decode)
    return _cached_jitted_decode(model)


@functools.lru_cache(maxsize=8)
def _cached_jitted_decode(model: Any) -> Decode:
    import jax

    return jax.jit(model.decode)


def with_beam_size(model: Any, beam_size: int | None) -> Any:
    """`model` decoding with `beam_size` hypotheses (unchanged for None or a model that
    does not decode)."""
    if beam_size is None or not isinstance(model, AsrModel):
        return model
    return dataclasses.replace(
        model, decoding=dataclasses.replace(model.decoding, beam_size=beam_size)
    )


@functools.lru_cache(maxsize=8)
def load_vocabulary(path: str):
    """The sentencepiece vocabulary at `path` (cached; seqio's, as the tasks use)."""
    if not path:
        raise ValueError("the model has no vocabulary path (set the model's `vocabulary`)")
    if not paths.as_path(path).exists():
        raise FileNotFoundError(f"vocabulary {path} does not exist")
    return vocab_lib.get_vocabulary(path)


def _strings(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values).tolist()]


def transcribe_batches(
    decode: Decode, variables: Any, batches: Iterable[base.Batch], vocabulary_path: str
) -> tuple[list[str], list[str], list[str]]:
    """Decodes host batches into text.

    Args:
      decode: the model's jitted decode function (see the module docstring).
      variables: the model variables.
      batches: host batches with 'audio', 'audio_paddings', 'weights', and for references
        `REFERENCE_FIELD` and `ID_FIELD` (missing ones give empty strings).
      vocabulary_path: the sentencepiece model.

    Returns:
      (ids, references, hypotheses) of the rows with weight > 0, in batch order.
    """
    vocabulary = load_vocabulary(vocabulary_path)
    ids, references, hypotheses = [], [], []
    for batch in batches:
        tokens, token_paddings, _ = decode(variables, batch["audio"], batch["audio_paddings"])
        texts = wer.detokenize(np.asarray(tokens), np.asarray(token_paddings), vocabulary)
        rows = np.flatnonzero(np.asarray(batch["weights"]) > 0)
        size = len(texts)
        batch_ids = _strings(batch.get(ID_FIELD, [""] * size))
        batch_refs = _strings(batch.get(REFERENCE_FIELD, [""] * size))
        ids += [batch_ids[i] for i in rows]
        references += [batch_refs[i] for i in rows]
        hypotheses += [texts[i] for i in rows]
    return ids, references, hypotheses


@dataclasses.dataclass(frozen=True)
class TranscriptionReport:
    """WER / CER of a decoded set (a `models.base.ScoreReport`).

    Attributes:
      result: the jiwer-based scoring result with per-utterance alignments.
      worst: how many of the worst utterances `write` lists.
    """

    result: wer.ScoringResult
    worst: int = 20

    @property
    def metrics(self) -> dict[str, float]:
        return {"wer": self.result.wer, "cer": self.result.cer}

    def write(self, directory: os.PathLike) -> None:
        """Writes `wer.json` (corpus figures), `transcripts.tsv` (id, reference, hypothesis,
        errors per utterance) and `worst.json` (the utterances with most word errors)."""
        directory = paths.as_path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "wer.json").write_text(self.result.to_json() + "\n")
        wer.write_utterances(self.result.utterances, directory / "transcripts.tsv")
        worst = [dataclasses.asdict(u) for u in self.result.worst(self.worst)]
        (directory / "worst.json").write_text(json.dumps(worst, indent=2) + "\n")


def score_batches(
    decode: Decode, variables: Any, batches: Iterable[base.Batch], vocabulary_path: str
) -> TranscriptionReport:
    """Decodes `batches` and scores them against their references (see `transcribe_batches`).

    Raises:
      ValueError: no rows, or no reference words.
    """
    ids, references, hypotheses = transcribe_batches(decode, variables, batches, vocabulary_path)
    return TranscriptionReport(wer.score(references, hypotheses, ids))
