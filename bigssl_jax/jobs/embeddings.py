"""Utterance embeddings of a prepared corpus from a (pre-trained) encoder, written as .npy shards.

For each utterance, every layer's output is mean-pooled over valid frames
(`models.classifier.pooled_layers`: layer 0 = feature encoder, layer l = block l):

  E[n, l] = mean_t h_l[n, t]                          [N, L, D], L = blocks + 1

and optionally reduced to one layer (`layer=k`) or to a classifier's learned mix
(`layer='weighted'`: sum_l softmax(w)_l X[n, l], w from a `ClassifierTrainModel` checkpoint
and X the head's input: E whitened by the checkpoint's fitted statistics when it has them,
else E), giving [N, 1, D].

Layout of one split under the output directory (`write_shard`, `load_split`):

    <split>/embeddings-<p>-of-<P>.npy   float32 [N_p, L, D], process p's utterances
    <split>/manifest-<p>-of-<P>.jsonl   one JSON object per row of the .npy, in order: id,
                                        speaker and the split's extra string fields
    <split>/info.json                   layers, dim, shards, checkpoint (process 0 writes it)

Process sharding: process p of P reads the part of the split `seqio.ShardInfo(p, P)` gives
it and writes shard p, so a multi-host job embeds a corpus in one pass; every process runs
the encoder on its own local device (no collectives).
"""

import dataclasses
import json
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bigssl_jax import checkpointing
from bigssl_jax.layers import frontend
from bigssl_jax.models import classifier
from bigssl_jax.models import encoder as encoder_lib

ALL_LAYERS = "all"


@dataclasses.dataclass(frozen=True, kw_only=True)
class EmbedConfig:
    """What to embed and how.

    Attributes:
      encoder: the encoder's hyperparameters (those of the checkpoint).
      log_mel: log-mel front end settings.
      layer: 'all' (every layer), 'weighted' (a classifier checkpoint's learned layer mix) or
        one layer index (negative counts from the end).
      batch_size: utterances per forward pass.
      bucket_seconds: audio length buckets; longer utterances are skipped (and counted).
    """

    encoder: encoder_lib.EncoderConfig
    log_mel: frontend.LogMelConfig = frontend.LogMelConfig()
    layer: int | str = ALL_LAYERS
    batch_size: int = 16
    bucket_seconds: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0, 32.0)

    @property
    def num_layers(self) -> int:
        """L of the written embeddings."""
        return self.encoder.num_layers + 1 if self.layer == ALL_LAYERS else 1


def load_params(
    config: EmbedConfig, checkpoint: os.PathLike | None, *, seed: int = 0
) -> dict[str, Any]:
    """The encoder params, and for layer='weighted' the head's layer weights and the
    classifier's whitening when it has one: {'encoder', ['head', ['feature_stats']]}.

    Args:
      config: the embedding settings (the encoder config must match the checkpoint's).
      checkpoint: a run, checkpoints or step directory (its latest finalised step);
        None draws a random initialisation (the baseline of a probe comparison).
      seed: seed of the random initialisation.

    Raises:
      FileNotFoundError: no checkpoint at `checkpoint`.
      ValueError: layer='weighted' without a checkpoint.
    """
    encoder = encoder_lib.ConformerEncoder(config.encoder)
    features = jnp.zeros((1, 64, config.log_mel.num_mel_bins), jnp.float32)

    def init(rng):
        return nn.unbox(encoder.init(rng, features, jnp.zeros(features.shape[:2]), train=False))

    if checkpoint is None:
        if config.layer == classifier.WEIGHTED:
            raise ValueError("layer='weighted' needs a classifier checkpoint")
        return {"encoder": jax.jit(init)(jax.random.key(seed))["params"]}
    step_dir = checkpointing.resolve_init_checkpoint(checkpoint)  # every read from one step
    abstract = {"encoder": jax.eval_shape(init, jax.random.key(seed))["params"]}
    num_layers = config.encoder.num_layers + 1
    if config.layer == classifier.WEIGHTED:
        abstract["head"] = {"layer_logits": jax.ShapeDtypeStruct((num_layers,), jnp.float32)}
    params = checkpointing.restore_params(step_dir, checkpointing.on_one_device(abstract))
    if config.layer == classifier.WEIGHTED and classifier.STATISTICS in (
        checkpointing.saved_model_state(step_dir)
    ):
        statistics = jax.eval_shape(
            lambda: classifier.identity_statistics(num_layers, config.encoder.model_dim)
        )
        saved = checkpointing.restore_part(
            step_dir,
            "model_state",
            checkpointing.on_one_device({classifier.STATISTICS: statistics}),
        )
        params[classifier.STATISTICS] = saved[classifier.STATISTICS]
    return params


def make_embed_fn(config: EmbedConfig):
    """A jitted fn(params, audio [B, S], paddings [B, S]) -> embeddings [B, L, D] float32."""

    def embed(params, audio, paddings):
        num_blocks = config.layer if isinstance(config.layer, int) and config.layer >= 0 else None
        pooled = classifier.pooled_layers(
            config.encoder,
            params["encoder"],
            config.log_mel,
            audio,
            paddings,
            num_layers=num_blocks,
        )
        if config.layer == ALL_LAYERS:
            return pooled
        if config.layer == classifier.WEIGHTED:
            if classifier.STATISTICS in params:  # the classifier's input: whitened layers
                pooled = classifier.whiten(pooled, params[classifier.STATISTICS])
            weights = jax.nn.softmax(params["head"]["layer_logits"])
            return jnp.einsum("l,bld->bd", weights, pooled)[:, None]
        return pooled[:, -1 if num_blocks is not None else config.layer][:, None]

    return jax.jit(embed)


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def embed_batches(
    embed_fn, params: Mapping[str, Any], batches: Iterable[Mapping[str, np.ndarray]], fields
) -> tuple[np.ndarray, list[dict[str, str]]]:
    """Embeds host batches; padding rows (weight 0) are dropped.

    Args:
      embed_fn: from `make_embed_fn`.
      params: from `load_params`.
      batches: numpy batches with 'audio', 'audio_paddings', 'weights' and the `fields`.
      fields: string fields copied into each row's manifest entry (e.g. 'id', 'speaker').

    Returns:
      (embeddings [N, L, D] float32, N manifest rows {field: value}).
    """
    chunks, rows = [], []
    for batch in batches:
        keep = np.asarray(batch["weights"]) > 0
        out = np.asarray(embed_fn(params, batch["audio"], batch["audio_paddings"]))
        chunks.append(out[keep])
        columns = {field: np.asarray(batch[field])[keep] for field in fields}
        rows += [
            {field: _text(columns[field][i]) for field in fields} for i in range(int(keep.sum()))
        ]
    if not chunks:
        return np.zeros((0, 0, 0), np.float32), rows
    return np.concatenate(chunks).astype(np.float32), rows


def shard_names(index: int, count: int) -> tuple[str, str]:
    """File names of shard `index` of `count`: (embeddings .npy, manifest .jsonl)."""
    suffix = f"{index:05d}-of-{count:05d}"
    return f"embeddings-{suffix}.npy", f"manifest-{suffix}.jsonl"


def write_shard(
    directory: os.PathLike,
    embeddings: np.ndarray,
    rows: Sequence[Mapping[str, str]],
    *,
    index: int = 0,
    count: int = 1,
) -> None:
    """Writes shard `index` of `count` of a split: the .npy and its manifest."""
    if len(rows) != len(embeddings):
        raise ValueError(f"{len(rows)} manifest rows for {len(embeddings)} embeddings")
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    npy, manifest = shard_names(index, count)
    np.save(directory / npy, embeddings)
    (directory / manifest).write_text("".join(json.dumps(dict(row)) + "\n" for row in rows))


def write_info(directory: os.PathLike, info: Mapping[str, Any]) -> None:
    """Writes the split's info.json (layers, dim, shards, checkpoint, ...)."""
    path = pathlib.Path(directory) / "info.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(info), indent=1) + "\n")


def load_split(directory: os.PathLike) -> tuple[np.ndarray, list[dict[str, str]]]:
    """All shards of a split, concatenated in shard order: ([N, L, D], N manifest rows).

    Raises:
      FileNotFoundError: the split has no info.json or a shard is missing.
    """
    directory = pathlib.Path(directory)
    info_path = directory / "info.json"
    if not info_path.exists():
        raise FileNotFoundError(f"no embeddings at {directory} (info.json missing)")
    count = json.loads(info_path.read_text())["shards"]
    chunks, rows = [], []
    for index in range(count):
        npy, manifest = (directory / name for name in shard_names(index, count))
        if not npy.exists() or not manifest.exists():
            raise FileNotFoundError(f"embedding shard {npy} or {manifest} is missing")
        chunks.append(np.load(npy))
        rows += [json.loads(line) for line in manifest.read_text().splitlines()]
    return np.concatenate(chunks), rows


def embed_split(
    config: EmbedConfig,
    params: Mapping[str, Any],
    *,
    corpus: str,
    split: str,
    data_dir: os.PathLike,
    output_dir: os.PathLike,
    checkpoint: str | None = None,
) -> dict[str, Any]:
    """Embeds this process's part of `<corpus>/<split>` into `<output_dir>/<split>/`.

    The corpus's seqio tasks must be registered (`corpus_tasks.register_corpus_tasks`).

    Returns:
      The split's info ({'split', 'layers', 'dim', 'shards', 'num_utterances' (this
      process's), 'num_in_registry', 'checkpoint', 'layer', 'fields'}).
    """
    import seqio

    from bigssl_jax import input_pipeline, paths
    from bigssl_jax.data import registry as registry_lib
    from bigssl_tasks import corpus_tasks

    info = registry_lib.CorpusRegistry(paths.registry_path(data_dir)).split(corpus, split)
    fields = ("id", "speaker") + tuple(
        f for f in info.extra_fields if f not in corpus_tasks.HIDDEN_FIELDS
    )
    input_config = input_pipeline.InputConfig(
        task=corpus_tasks.task_name(corpus, split, "unlabeled"),
        batch_size=config.batch_size,
        bucket_seconds=config.bucket_seconds,
        shuffle=False,
        num_epochs=1,
        keep_fields=fields,
    )
    index, count = jax.process_index(), jax.process_count()
    batches = input_pipeline.make_iterator(input_config, shard_info=seqio.ShardInfo(index, count))
    embeddings, rows = embed_batches(make_embed_fn(config), params, batches, fields)
    directory = pathlib.Path(output_dir) / split
    write_shard(directory, embeddings, rows, index=index, count=count)
    summary = {
        "corpus": corpus,
        "split": split,
        "layers": config.num_layers,
        "dim": config.encoder.model_dim,
        "shards": count,
        "num_utterances": len(rows),
        "num_in_registry": info.num_examples,
        "checkpoint": checkpoint,
        "layer": config.layer,
        "fields": list(fields),
    }
    if index == 0:
        write_info(directory, summary)
    return summary
