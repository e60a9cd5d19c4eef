"""The model protocol the trainer drives: every stage's model wrapper satisfies it.

A model wrapper owns a pure Flax network, its variable initialisation and its loss; the
train step (`bigssl_jax.train_step`) owns `value_and_grad`, microbatch accumulation, the
optimizer update and the non-finite guard, the trainer (`bigssl_jax.trainer`) shardings and
all I/O. Pre-training (BEST-RQ, wav2vec 2.0,
w2v-BERT), fine-tuning and classification are each a `TrainModel` plus data plus a
`TrainerConfig`, not a fork of the loop.

Variables: `init_variables` returns `{'params': ..., <other collections>}`. 'params' are
trained (they may be boxed with logical axis names for sharded init); every other collection
(e.g. BEST-RQ's 'frozen' quantiser, a classifier's fitted feature whitening: see
`StatisticsModel`) is kept in `TrainState.model_state` and passed back unchanged: the
trainer supports no mutable collections (the encoder has none; its convolution module uses
LayerNorm, not BatchNorm).

Loss: `loss` returns the batch's mean loss and a dict of scalar metrics. The mean is over
`metrics[LOSS_WEIGHT]` units (masked frames, target tokens, utterances...); when the
trainer splits a batch into microbatches it combines them weighted by it,

    L = sum_i w_i L_i / sum_i w_i,   grad L = sum_i w_i grad L_i / sum_i w_i,

which equals the loss (and gradient) of the whole batch. Without `LOSS_WEIGHT` every
microbatch weighs 1. Padded rows (`batch['weights'] == 0`) must contribute nothing to the
loss or its weight.
"""

import os
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

import jax
import numpy as np

# The one definition of these aliases; every model and the trainer use them.
Batch = Mapping[str, Any]  # field name -> array [B, ...] (or a string field kept for scoring)
Metrics = dict[str, jax.Array]  # name -> float32 scalar
Variables = Mapping[str, Any]  # {'params': ..., other collections}

LOSS_WEIGHT = "loss_weight"


@runtime_checkable
class TrainModel(Protocol):
    """What the trainer needs from a model.

    Attributes:
      rng_streams: names of the Flax rng streams `loss` draws from ('dropout', 'masking',
        ...); `split_rngs` makes one key per stream.
    """

    rng_streams: tuple[str, ...]

    def init_variables(self, rng: jax.Array, batch: Batch) -> dict[str, Any]:
        """Initial variables.

        Args:
          rng: the init key.
          batch: an example batch (arrays or `jax.ShapeDtypeStruct`s); only shapes matter.

        Returns:
          {'params': (possibly boxed) params, other collections...}.
        """
        ...

    def loss(
        self, variables: Variables, batch: Batch, rng: jax.Array, *, step: jax.Array, train: bool
    ) -> tuple[jax.Array, Metrics]:
        """The batch's mean loss and scalar metrics (see the module docstring).

        Args:
          variables: {'params': ..., other collections} (unboxed).
          batch: a batch of the model's input pipeline.
          rng: a key for this batch (split it with `split_rngs`).
          step: int32 scalar, updates applied so far (for annealed quantities).
          train: training mode (dropout, ...) or evaluation.

        Returns:
          (loss, metrics): a float32 scalar, and float32 scalars by name, optionally with
          `LOSS_WEIGHT`.
        """
        ...


class ScoreReport(Protocol):
    """What `ScoredModel.score` returns.

    Attributes:
      metrics: scalars by name (e.g. {'wer': 0.12, 'cer': 0.05} or {'accuracy': 0.9}); the
        trainer logs them under `eval/` and may rank checkpoints by one of them.
    """

    metrics: dict[str, float]

    def write(self, directory: os.PathLike) -> None:
        """Writes the report's files (JSON, per-utterance results, ...) into `directory`."""
        ...


@runtime_checkable
class ScoredModel(Protocol):
    """A model judged by more than its loss: ASR by word error rate, classifiers by accuracy.

    The trainer calls `score` at each evaluation (besides the eval loss) and `bigssl
    evaluate` calls it on a restored checkpoint. An ASR model's `score` reads string fields
    (utterance ids, reference texts): it lists them in `score_fields`
    (`models.asr.AsrModel`), and `bigssl train` and `bigssl evaluate` keep them in the eval
    batches.
    """

    def score(self, variables: Variables, batches: Iterable[Batch]) -> ScoreReport:
        """Runs inference (decoding, classification) over host batches and scores it.

        Args:
          variables: {'params': ..., other collections} (unboxed).
          batches: host numpy batches of the model's input pipeline, with the 'id' field.

        Returns:
          The report.
        """
        ...


@runtime_checkable
class StatisticsModel(Protocol):
    """A model with statistics of its training data that are fitted once, not trained.

    Like ESPnet's collect-stats global normalisation: on a fresh start (scratch or
    `init_checkpoint` params, never on resume, since the statistics are checkpointed with the
    state), the trainer reads the first `statistics_batches` training batches (then puts the
    data position back), computes `statistics_features` of each on the mesh, and stores the
    collections `fit_statistics` returns from the real rows' features in
    `TrainState.model_state`, which later steps pass back unchanged.

    Attributes:
      statistics_batches: training batches read for the fit (0: no statistics).
    """

    statistics_batches: int

    def statistics_features(self, variables: Variables, batch: Batch) -> jax.Array:
        """Per-row features whose statistics are fitted: [B, ...] float32 (jitted).

        Args:
          variables: {'params': ..., other collections} (unboxed), after any restore.
          batch: a training batch.
        """
        ...

    def fit_statistics(self, features: np.ndarray) -> dict[str, Any]:
        """The fitted non-param collections from the features of real rows: [N, ...]."""
        ...


@runtime_checkable
class RegroupsParams(Protocol):
    """A model that can take some of its params from a checkpoint that grouped them otherwise.

    When `TrainerConfig.init_params_scopes` takes a top-level scope from a checkpoint that
    holds it with other shapes than the model's, the trainer reads the saved scope to host
    and asks `regroup_params` for it in the model's layout
    (`checkpointing.restore_init_params`); e.g. the encoder models
    (`models.encoder.RestagesEncoderParams`) restage an encoder saved with other stage cuts.
    """

    def regroup_params(self, scope: str, saved: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The saved params of top-level `scope` (numpy arrays) in this model's layout, or
        None when the model knows no other layout of `scope`."""
        ...


@runtime_checkable
class EncoderModel(Protocol):
    """A model on the Conformer audio encoder (pre-training, ASR, classifiers): its params
    hold the encoder under the top-level name 'encoder'.

    Attributes:
      encoder: the encoder's `models.encoder.EncoderConfig`.
      log_mel: the front end's `layers.frontend.LogMelConfig`.
    """

    encoder: Any
    log_mel: Any


@runtime_checkable
class ClassifierModel(Protocol):
    """A model that predicts one class per utterance from a classification task.

    Attributes:
      num_classes: C, the classes it predicts (at least the task's labels).
      label_names: class names by id, for its reports (filled from the task's labels).
    """

    num_classes: int
    label_names: tuple[str, ...]


def split_rngs(rng: jax.Array, streams: tuple[str, ...]) -> dict[str, jax.Array]:
    """One independent key per named rng stream: {name: key}."""
    return dict(zip(streams, jax.random.split(rng, len(streams)), strict=True))
