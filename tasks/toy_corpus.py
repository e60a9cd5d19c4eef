"""A tiny synthetic prepared corpus (tones + noise, short random texts) for tests and benchmarks.

Writes shards in the layout of `bigssl_jax.data.schema` under `<data_dir>/prepared/<corpus>`
and registers every split in `<data_dir>/registry.json`, exactly as `bigssl prepare` does.
"""

import os

import numpy as np

from bigssl_jax import paths
from bigssl_jax.data import registry as registry_lib
from bigssl_jax.data import schema

WORDS = (
    "the",
    "birch",
    "canoe",
    "slid",
    "on",
    "smooth",
    "planks",
    "glue",
    "sheet",
    "to",
    "dark",
    "blue",
    "background",
    "it's",
    "easy",
    "tell",
    "depth",
    "of",
    "a",
    "well",
)


def toy_utterance(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A tone in noise: float32 [round(seconds * 16000)]."""
    t = np.arange(int(round(seconds * schema.SAMPLE_RATE))) / schema.SAMPLE_RATE
    tone = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 1000) * t)
    return (tone + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


def write_toy_corpus(
    data_dir: os.PathLike,
    corpus: str,
    *,
    splits: dict[str, tuple[int, bool]],
    num_shards: int = 2,
    min_seconds: float = 0.3,
    max_seconds: float = 2.0,
    seed: int = 0,
) -> dict[str, list[str]]:
    """Writes and registers a toy corpus.

    Args:
      data_dir: the data directory.
      corpus: corpus name.
      splits: split name -> (number of utterances, labeled).
      num_shards: shard files per split.
      min_seconds: shortest utterance.
      max_seconds: longest utterance.
      seed: seed of lengths, tones, noise and texts.

    Returns:
      Split name -> utterance ids, in file order.
    """
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    registry = registry_lib.CorpusRegistry(paths.registry_path(data_dir))
    out_dir = paths.prepared_dir(data_dir, corpus)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = {}
    for split, (count, labeled) in splits.items():
        files = [
            str(out_dir / f"{split}-{i:05d}-of-{num_shards:05d}.tfrecord")
            for i in range(num_shards)
        ]
        writers = [tf.io.TFRecordWriter(f) for f in files]
        ids[split], seconds = [], 0.0
        for index in range(count):
            audio = toy_utterance(rng, rng.uniform(min_seconds, max_seconds))
            text = " ".join(rng.choice(WORDS, size=rng.integers(1, 6)))
            utterance_id = f"{corpus}-{split}-{index:05d}"
            extra = {"accent": ("us", "gb")[index % 2]}
            if not labeled:
                extra[schema.ORACLE_TEXT_FIELD] = text
            writers[index % num_shards].write(
                schema.make_example(
                    audio=audio,
                    utterance_id=utterance_id,
                    speaker=f"spk{index % 3}",
                    text=text if labeled else None,
                    extra=extra,
                )
            )
            ids[split].append(utterance_id)
            seconds += len(audio) / schema.SAMPLE_RATE
        for writer in writers:
            writer.close()
        extra_fields = ("accent",) if labeled else ("accent", schema.ORACLE_TEXT_FIELD)
        registry.register_split(
            corpus,
            split,
            registry_lib.SplitInfo(
                files=tuple(files),
                num_examples=count,
                hours=seconds / 3600,
                labeled=labeled,
                extra_fields=extra_fields,
            ),
            source=f"toy_corpus(seed={seed})",
        )
    return ids
