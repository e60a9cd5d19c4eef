"""Utterance classification on the Conformer encoder: per-layer mean pooling and a linear head.

For a batch of waveforms with one class id each (accent, speaker, noise type, ...):

  features, f_pad = LogMel(audio)                                       [B, T, F], [B, T]
  h_0 = Subsampling(features); h_l = Block_l(h_{l-1}), l = 1..N         [B, T', D] each
  e_l[b] = sum_t (1 - pad[b, t]) h_l[b, t] / sum_t (1 - pad[b, t])      [B, N + 1, D]
  x_l = (e_l - mu_l) P_l       (fitted per-layer PCA whitening)          [B, N + 1, D]
  z = sum_l softmax(w)_l x_l   (layer='weighted', w learned [N + 1])     [B, D]
    | x_k                      (layer=k, an int; -1 = the last block)
  logits = z W + c                                                      [B, C]
  L = sum_b weights_b CE(logits_b, y_b) / sum_b weights_b

Layer 0 is the feature encoder's output (subsampling + projection), layer l >= 1 the output
of block l. Pooling before mixing equals mixing before pooling (both are linear).

Parameters: the encoder lives under the top-level name 'encoder' with exactly the tree of
`ConformerEncoder` (that of the pre-training models), so a pre-training checkpoint's encoder
is restored with `TrainerConfig(init_checkpoint=..., init_params_only=True,
init_params_scopes=('encoder',))`; the head lives under 'head'. The per-layer outputs are
computed by running the encoder's own submodules block by block (`layer_outputs`), so no
`split_layers` change (which would change the parameter tree) is needed.

Whitening (`statistics_batches` > 0): pooled encoder outputs put most of their variance in one
direction (84-96% for a BEST-RQ encoder's upper blocks), which leaves a linear head trained by
Adam far from its optimum. The model is a `base.StatisticsModel`: before the first step the
trainer pools every layer of the first `statistics_batches` training batches with the encoder
as restored, and `fit_statistics` fits mu_l and P_l = U_l (S_l + ridge mean(S_l))^(-1/2)
(U_l S_l U_l^T the covariance of layer l), kept in the non-trained 'feature_stats' collection
([N + 1, D] and [N + 1, D, D]) and checkpointed with the state. Logistic regression's optimum
is the same under any invertible linear map of its input; its conditioning is not. With a
fine-tuned encoder the statistics stay those of the initial encoder (a fixed input transform).

Frozen encoder (the linear probe, `freeze_encoder=True`): the pooled features pass through
`jax.lax.stop_gradient` and the encoder runs without dropout, so the encoder's gradient is
exactly zero; with Adam and `OptimizerConfig.weight_decay = 0` its updates are zero too
(weight decay would still shrink it: keep it 0 for probes, as `gin/runs/classify.gin` does).

Batches come from `bigssl_tasks.classification_tasks`: 'targets' [B, 1] holds the class id.
"""

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bigssl_jax import paths
from bigssl_jax.layers import conformer, frontend
from bigssl_jax.models import base
from bigssl_jax.models import encoder as encoder_lib

Params = Mapping[str, Any]
RNG_STREAMS = ("dropout",)
WEIGHTED = "weighted"
STATISTICS = "feature_stats"  # the fitted whitening's variable collection


def block_params(config: encoder_lib.EncoderConfig, encoder_params: Params) -> list[Params]:
    """Each Conformer block's params, in order, from a `ConformerEncoder` params tree.

    Args:
      config: the encoder config the params were made with.
      encoder_params: unboxed params of `ConformerEncoder` (scanned or not).

    Returns:
      N trees, block i's params (a slice of the scanned stack's leading 'layers' axis).
    """
    blocks = []
    for stage, (start, end) in enumerate(config.stages):
        tree = encoder_params[f"stages_{stage}"]
        for i in range(end - start):
            if config.scan_layers:
                blocks.append(jax.tree.map(lambda p, i=i: p[i], tree["layers"]))
            else:
                blocks.append(tree[f"layers_{i}"])
    return blocks


def _block(config: encoder_lib.EncoderConfig) -> conformer.ConformerBlock:
    """The block `encoder.ConformerStack` builds, with the same hyperparameters."""
    return conformer.ConformerBlock(**encoder_lib.block_kwargs(config))


def layer_outputs(
    config: encoder_lib.EncoderConfig,
    encoder_params: Params,
    features: jax.Array,
    paddings: jax.Array,
    *,
    train: bool = False,
    rng: jax.Array | None = None,
    num_layers: int | None = None,
) -> list[tuple[jax.Array, jax.Array]]:
    """Every layer's output of the encoder: layer 0 = feature encoder, layer l = block l.

    Args:
      config: the encoder config.
      encoder_params: unboxed `ConformerEncoder` params.
      features: [B, T, F] log-mel features.
      paddings: [B, T] float, 1.0 at padded frames.
      train: enables dropout (needs `rng`).
      rng: key of the 'dropout' stream (one key per layer is folded from it).
      num_layers: stop after this many blocks (None: all N).

    Returns:
      num_layers + 1 pairs (outputs [B, T_l, D] float32, zero at padded frames; paddings
      [B, T_l]); the last output equals `ConformerEncoder`'s.
    """
    encoder = encoder_lib.ConformerEncoder(config)
    variables = {"params": encoder_params}

    def rngs(index):
        return {} if rng is None else {"dropout": jax.random.fold_in(rng, index)}

    x, paddings = encoder.apply(
        variables, features, paddings, train=train, method="embed", rngs=rngs(0)
    )
    outputs = [(x.astype(jnp.float32) * (1.0 - paddings)[..., None], paddings)]
    block = _block(config)
    blocks = block_params(config, encoder_params)
    for index, params in enumerate(blocks[:num_layers], start=1):
        if index - 1 == config.stacking_layer:
            x, paddings = encoder.apply(variables, x, paddings, method=_stack)
        x, _ = block.apply({"params": params}, x, paddings, train, rngs=rngs(index))
        outputs.append((x.astype(jnp.float32) * (1.0 - paddings)[..., None], paddings))
    return outputs


def _stack(module: encoder_lib.ConformerEncoder, x: jax.Array, paddings: jax.Array):
    return module.stacking(x, paddings)


def mean_pool(x: jax.Array, paddings: jax.Array) -> jax.Array:
    """Mean over valid frames: [B, T, D], [B, T] -> [B, D] (zero for an all-padded row)."""
    valid = 1.0 - paddings
    return jnp.sum(x * valid[..., None], axis=1) / jnp.maximum(jnp.sum(valid, axis=1), 1.0)[:, None]


def pooled_layers(
    config: encoder_lib.EncoderConfig,
    encoder_params: Params,
    log_mel: frontend.LogMelConfig,
    audio: jax.Array,
    paddings: jax.Array,
    **kwargs,
) -> jax.Array:
    """Mean-pooled layer outputs of waveforms: [B, S], [B, S] -> [B, L, D].

    L = N + 1 (or `num_layers` + 1); kwargs go to `layer_outputs` (train, rng, num_layers).
    """
    features, feature_paddings = frontend.log_mel(audio, paddings, log_mel)
    outputs = layer_outputs(config, encoder_params, features, feature_paddings, **kwargs)
    return jnp.stack([mean_pool(x, pad) for x, pad in outputs], axis=1)


def pca_whitening(x: np.ndarray, ridge: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """PCA whitening fitted on x [N, D]: (mean [D], projection [D, D]), float64.

    (x - mean) @ projection has (nearly) identity covariance: projection = U (S + ridge *
    mean(S))^(-1/2), with U S U^T the covariance of x (computed in float64); the ridge keeps
    directions without variance (N < D, constant features) from blowing up.
    """
    mean = x.astype(np.float64).mean(axis=0)
    centered = x.astype(np.float64) - mean
    eigenvalues, vectors = np.linalg.eigh(centered.T @ centered / len(x))
    scale = 1.0 / np.sqrt(np.maximum(eigenvalues, 0.0) + ridge * eigenvalues.mean() + 1e-12)
    return mean, vectors * scale


def identity_statistics(num_layers: int, dim: int) -> dict[str, jax.Array]:
    """The whitening before it is fitted: mean [L, D] zeros, projection [L, D, D] identities."""
    return {
        "mean": jnp.zeros((num_layers, dim)),
        "projection": jnp.broadcast_to(jnp.eye(dim), (num_layers, dim, dim)),
    }


def whiten(pooled: jax.Array, statistics: Mapping[str, jax.Array]) -> jax.Array:
    """Layer l of pooled [B, L, D] -> (pooled_l - mean_l) @ projection_l (the first L layers)."""
    num_layers = pooled.shape[1]
    centered = pooled - statistics["mean"][:num_layers]
    return jnp.einsum("bld,lde->ble", centered, statistics["projection"][:num_layers])


class ClassifierHead(nn.Module):
    """Layer mix + linear classifier: [B, L, D] pooled layers -> [B, C] logits.

    z = sum_l softmax(w)_l e_l (learned w, initialised equal) for layer='weighted', else
    z = e_layer; logits = z W + c.

    Attributes:
      num_classes: C.
      layer: 'weighted' or the index of the layer used (negative counts from the end).
    """

    num_classes: int
    layer: int | str = WEIGHTED

    @nn.compact
    def __call__(self, pooled: jax.Array) -> jax.Array:
        if self.layer == WEIGHTED:
            logits = self.param("layer_logits", nn.initializers.zeros_init(), pooled.shape[1:2])
            z = jnp.einsum("l,bld->bd", jax.nn.softmax(logits), pooled)
        else:
            z = pooled[:, self.layer]
        return nn.Dense(self.num_classes, name="output")(z)


@dataclasses.dataclass(frozen=True)
class ClassificationReport:
    """Accuracy and confusion matrix of a classifier over a set of utterances.

    Attributes:
      metrics: {'accuracy', 'num_utterances'}.
      confusion: [C, C] int64 counts, rows = true class, columns = predicted class.
      ids: utterance ids, in scoring order.
      labels: true class ids [N].
      predictions: predicted class ids [N].
      label_names: class names by id, when known (written next to the numbers).
    """

    metrics: dict[str, float]
    confusion: np.ndarray
    ids: tuple[str, ...]
    labels: np.ndarray
    predictions: np.ndarray
    label_names: tuple[str, ...] = ()

    def confusion_table(self) -> str:
        """The confusion matrix as a Markdown table (rows = true class, columns = predicted)."""
        names = self.label_names or tuple(str(i) for i in range(len(self.confusion)))
        lines = [
            "| true \\ predicted | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for name, row in zip(names, self.confusion, strict=True):
            lines.append(f"| {name} | " + " | ".join(str(int(count)) for count in row) + " |")
        return "\n".join(lines) + "\n"

    def write(self, directory: os.PathLike) -> None:
        """Writes classification.json (metrics, confusion matrix), confusion.md, predictions.tsv."""
        directory = paths.as_path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        summary = {
            "metrics": self.metrics,
            "label_names": list(self.label_names),
            "confusion": self.confusion.tolist(),
        }
        (directory / "classification.json").write_text(json.dumps(summary) + "\n")
        (directory / "confusion.md").write_text(self.confusion_table())
        names = self.label_names or None
        lines = ["id\tlabel\tprediction"]
        for utt, label, pred in zip(self.ids, self.labels, self.predictions, strict=True):
            label, pred = (names[label], names[pred]) if names else (label, pred)
            lines.append(f"{utt}\t{label}\t{pred}")
        (directory / "predictions.tsv").write_text("\n".join(lines) + "\n")


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """[C, C] counts of (true, predicted) pairs."""
    counts = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(counts, (labels, predictions), 1)
    return counts


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClassifierTrainModel(encoder_lib.RestagesEncoderParams):
    """An utterance classifier as a `models.base.TrainModel` and `ScoredModel`.

    Attributes:
      encoder: Conformer hyperparameters (those of the pre-trained encoder).
      num_classes: C, at least the number of labels of the task.
      layer: 'weighted' (learned softmax mix of all layers) or a layer index (0 = feature
        encoder, l = block l, -1 = last block); with an index >= 0 only the blocks up to it run.
      freeze_encoder: linear probe (True) or fine-tuning of the whole encoder (False).
      log_mel: log-mel front end settings.
      statistics_batches: training batches the per-layer whitening is fitted on before the
        first step (0: the head reads the raw pooled outputs).
      label_names: class names by id, for the reports (`bigssl train` and `bigssl evaluate`
        fill them from the task's label list).
    """

    encoder: encoder_lib.EncoderConfig
    num_classes: int
    layer: int | str = WEIGHTED
    freeze_encoder: bool = True
    log_mel: frontend.LogMelConfig = frontend.LogMelConfig()
    statistics_batches: int = 32
    label_names: tuple[str, ...] = ()
    rng_streams: tuple[str, ...] = RNG_STREAMS

    def __post_init__(self):
        if self.layer != WEIGHTED and not isinstance(self.layer, int):
            raise ValueError(f"layer must be {WEIGHTED!r} or an int, got {self.layer!r}")
        if isinstance(self.layer, int) and not -self.num_layers <= self.layer < self.num_layers:
            raise ValueError(f"layer {self.layer} is not one of the {self.num_layers} layers")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {self.num_classes}")
        if self.statistics_batches < 0:
            raise ValueError(f"statistics_batches must be >= 0, got {self.statistics_batches}")

    @property
    def num_layers(self) -> int:
        """L = N + 1 pooled layers (feature encoder and every block)."""
        return self.encoder.num_layers + 1

    @property
    def head(self) -> ClassifierHead:
        return ClassifierHead(self.num_classes, self.layer)

    def init_variables(self, rng: jax.Array, batch: base.Batch) -> dict[str, Any]:
        """{'params': {'encoder': boxed encoder params, 'head': head params}}, plus the
        whitening collection (identity until fitted) when `statistics_batches` > 0."""
        encoder_rng, head_rng = jax.random.split(rng)
        audio = jnp.zeros(batch["audio"].shape, jnp.float32)
        features, paddings = frontend.log_mel(audio, jnp.zeros_like(audio), self.log_mel)
        encoder = encoder_lib.ConformerEncoder(self.encoder)
        encoder_params = encoder.init(encoder_rng, features, paddings, train=False)["params"]
        pooled = jnp.zeros((audio.shape[0], self.num_layers, self.encoder.model_dim))
        head_params = self.head.init(head_rng, pooled)["params"]
        variables = {"params": {"encoder": encoder_params, "head": head_params}}
        if self.statistics_batches:
            variables[STATISTICS] = identity_statistics(self.num_layers, self.encoder.model_dim)
        return variables

    def statistics_features(self, variables: Mapping[str, Any], batch: base.Batch) -> jax.Array:
        """Every layer's pooled output in eval mode, the whitening's input: [B, N + 1, D]."""
        encoder_params = variables["params"]["encoder"]
        audio, paddings = batch["audio"], batch["audio_paddings"]
        return pooled_layers(self.encoder, encoder_params, self.log_mel, audio, paddings)

    def fit_statistics(self, features: np.ndarray) -> dict[str, Any]:
        """{'feature_stats': per-layer whitening} from pooled outputs [N, N + 1, D]."""
        fitted = [pca_whitening(features[:, layer]) for layer in range(features.shape[1])]
        means, projections = zip(*fitted, strict=True)
        statistics = {"mean": np.stack(means), "projection": np.stack(projections)}
        return {STATISTICS: {k: v.astype(np.float32) for k, v in statistics.items()}}

    def logits(
        self,
        variables: Mapping[str, Any],
        batch: base.Batch,
        rng: jax.Array | None = None,
        *,
        train: bool = False,
    ) -> jax.Array:
        """Class logits [B, C] of a batch ('audio', 'audio_paddings')."""
        params = variables["params"]
        fine_tune = train and not self.freeze_encoder
        num_blocks = None if self.layer == WEIGHTED or self.layer < 0 else self.layer
        pooled = pooled_layers(
            self.encoder,
            params["encoder"],
            self.log_mel,
            batch["audio"],
            batch["audio_paddings"],
            train=fine_tune,
            rng=rng if fine_tune else None,
            num_layers=num_blocks,
        )
        if self.freeze_encoder:
            pooled = jax.lax.stop_gradient(pooled)
        if STATISTICS in variables:
            pooled = whiten(pooled, variables[STATISTICS])
        if num_blocks is not None:  # only layers 0..layer ran: the chosen one is the last.
            return ClassifierHead(self.num_classes, -1).apply({"params": params["head"]}, pooled)
        return self.head.apply({"params": params["head"]}, pooled)

    def loss(
        self, variables: Mapping[str, Any], batch: base.Batch, rng: jax.Array, *, step, train: bool
    ) -> tuple[jax.Array, base.Metrics]:
        """Weighted cross-entropy over the batch's real rows; metrics loss, accuracy, weight."""
        del step
        logits = self.logits(variables, batch, rng, train=train)
        labels = batch["targets"][:, 0]
        weights = batch["weights"]
        total = jnp.maximum(jnp.sum(weights), 1.0)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
        loss = jnp.sum(weights * ce) / total
        metrics = {
            "loss": loss,
            "accuracy": jnp.sum(weights * correct) / total,
            "loss_weight": jnp.sum(weights),
        }
        return loss, metrics

    def score(
        self, variables: Mapping[str, Any], batches: Iterable[base.Batch]
    ) -> ClassificationReport:
        """Accuracy and confusion matrix over host batches (rows of weight 0 are skipped)."""
        predict = jax.jit(lambda v, b: jnp.argmax(self.logits(v, b), axis=-1))
        ids, labels, predictions = [], [], []
        for batch in batches:
            inputs = {key: batch[key] for key in ("audio", "audio_paddings")}
            keep = np.asarray(batch["weights"]) > 0
            predictions.append(np.asarray(predict(variables, inputs))[keep])
            labels.append(np.asarray(batch["targets"])[keep, 0])
            if "id" in batch:
                ids += [
                    utt.decode() if isinstance(utt, bytes) else str(utt)
                    for utt in np.asarray(batch["id"])[keep]
                ]
        labels = np.concatenate(labels) if labels else np.zeros([0], np.int64)
        predictions = np.concatenate(predictions) if predictions else np.zeros([0], np.int64)
        if not ids:
            ids = [str(i) for i in range(len(labels))]
        accuracy = float(np.mean(labels == predictions)) if len(labels) else 0.0
        return ClassificationReport(
            metrics={"accuracy": accuracy, "num_utterances": float(len(labels))},
            confusion=confusion_matrix(labels, predictions, self.num_classes),
            ids=tuple(ids),
            labels=labels,
            predictions=predictions,
            label_names=self.label_names,
        )
