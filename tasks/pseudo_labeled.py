"""Pseudo-labeled tasks: audio transcribed by a teacher model (noisy student training).

A pseudo-labeler writes TFRecords of `tf.train.Example`s with these features:

| feature       | type        | meaning                                                  |
|---------------|-------------|----------------------------------------------------------|
| `audio`       | bytes       | int16 little-endian PCM at 16 kHz (as in `data/schema`)  |
| `sample_rate` | int64       | 16000 (optional; checked when present)                   |
| `id`          | bytes       | utterance id of the source record                        |
| `text`        | bytes       | the teacher's transcript                                 |
| `confidence`  | float       | the teacher's score of that transcript                   |
| `teacher`     | bytes       | which model produced it (optional)                       |
| `tokens`      | int64 list  | the teacher's token ids (optional; not read: `text` is   |
|               |             | tokenised with the task's vocabulary instead)            |
| `score`       | float       | the teacher's log-probability of `text` (optional)       |

The task's examples have the labeled tasks' output features (`audio`, `targets`,
`confidence`), so labeled and pseudo-labeled tasks mix in one seqio Mixture.

`bigssl pseudo-label` (`bigssl_jax.jobs.pseudo_label`) writes such shards plus a
`manifest.json`; `register_from_manifest` registers its task, keeping only the
utterances its filter kept (`kept_ids`, one id a line, when the filter dropped any).
"""

import json
import os

import numpy as np

from bigssl_jax.data import schema
from bigssl_tasks import corpus_tasks, registration


def feature_description() -> dict:
    """The `tf.io.parse_single_example` spec of a pseudo-labeled record."""
    import tensorflow as tf

    return {
        "audio": tf.io.FixedLenFeature([], tf.string),
        "sample_rate": tf.io.FixedLenFeature([], tf.int64, default_value=schema.SAMPLE_RATE),
        "id": tf.io.FixedLenFeature([], tf.string),
        "text": tf.io.FixedLenFeature([], tf.string),
        "confidence": tf.io.FixedLenFeature([], tf.float32),
        "teacher": tf.io.FixedLenFeature([], tf.string, default_value=""),
    }


def make_example(
    *,
    audio: np.ndarray,
    utterance_id: str,
    text: str,
    confidence: float,
    teacher: str = "",
    tokens=None,
    score: float | None = None,
) -> bytes:
    """Serialises one pseudo-labeled utterance (16 kHz mono audio [S])."""
    import tensorflow as tf

    def _bytes(value: str | bytes) -> tf.train.Feature:
        value = value.encode("utf-8") if isinstance(value, str) else value
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    features = {
        "audio": _bytes(schema.audio_to_pcm16(audio)),
        "sample_rate": tf.train.Feature(int64_list=tf.train.Int64List(value=[schema.SAMPLE_RATE])),
        "id": _bytes(utterance_id),
        "text": _bytes(text),
        "confidence": tf.train.Feature(float_list=tf.train.FloatList(value=[confidence])),
        "teacher": _bytes(teacher),
    }
    if tokens is not None:
        features["tokens"] = tf.train.Feature(
            int64_list=tf.train.Int64List(value=[int(t) for t in tokens])
        )
    if score is not None:
        features["score"] = tf.train.Feature(float_list=tf.train.FloatList(value=[score]))
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def keep_ids(ids_file: os.PathLike):
    """A seqio preprocessor keeping the records whose `id` is listed in `ids_file`."""

    def keep(dataset):
        import tensorflow as tf

        with tf.io.gfile.GFile(os.fspath(ids_file)) as f:
            ids = [line for line in f.read().splitlines() if line]
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(ids, tf.string), tf.ones([len(ids)], tf.int32)
            ),
            default_value=0,
        )
        return dataset.filter(lambda ex: table.lookup(ex["id"]) > 0)

    return keep


def register_pseudo_labeled_task(
    name: str,
    file_pattern: str | list[str],
    *,
    vocab_path: os.PathLike,
    num_examples: int | None = None,
    kept_ids: os.PathLike | None = None,
) -> str:
    """Registers a pseudo-labeled task over `file_pattern` (a glob or a list of files).

    Args:
      name: task name.
      file_pattern: the pseudo-labeler's TFRecord shards.
      vocab_path: sentencepiece model that tokenises `text` into `targets`.
      num_examples: number of records (kept ones, with `kept_ids`), when known.
      kept_ids: a file of utterance ids, one a line: only those records are read.

    Returns:
      `name`.
    """
    files = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
    selection = [] if kept_ids is None else [keep_ids(kept_ids)]
    return registration.add_task(
        name,
        signature=("pseudo_labeled", tuple(files), str(vocab_path), str(kept_ids)),
        files=files,
        split=corpus_tasks.SPLIT,
        feature_description=feature_description(),
        preprocessors=[*selection, *corpus_tasks.labeled_preprocessors()],
        output_features=corpus_tasks.labeled_output_features(vocab_path),
        num_examples=num_examples,
    )


def register_from_manifest(manifest_path: os.PathLike, *, name: str | None = None) -> str:
    """Registers the task a `bigssl pseudo-label` manifest describes.

    Args:
      manifest_path: `<output_dir>/manifest.json`; its relative paths are relative to it.
      name: task name; default the manifest's.

    Returns:
      The task name.
    """
    import tensorflow as tf

    with tf.io.gfile.GFile(os.fspath(manifest_path)) as f:
        manifest = json.loads(f.read())
    root = os.path.dirname(os.fspath(manifest_path))
    kept = manifest.get("kept_ids")
    return register_pseudo_labeled_task(
        registration.sanitize_name(name or manifest["name"]),
        [os.path.join(root, path) for path in manifest["files"]],
        vocab_path=os.path.join(root, manifest["vocabulary"]),
        num_examples=manifest["num_examples"],
        kept_ids=os.path.join(root, kept) if kept else None,
    )
