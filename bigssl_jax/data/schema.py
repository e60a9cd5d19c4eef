"""The on-disk layout of a prepared corpus split: one `tf.train.Example` per utterance.

Every prepared split (`bigssl prepare`, any source) is a set of TFRecord shards
`<split>-<plan tag>-00000-of-000NN.tfrecord` whose records hold these features:

| feature       | type   | meaning                                                         |
|---------------|--------|-----------------------------------------------------------------|
| `audio`       | bytes  | mono PCM, int16 little-endian, at `SAMPLE_RATE` (16 kHz)        |
| `sample_rate` | int64  | always `SAMPLE_RATE`; kept so readers can check it              |
| `num_samples` | int64  | number of audio samples                                         |
| `duration`    | float  | seconds                                                         |
| `id`          | bytes  | utterance id, unique within the corpus                          |
| `speaker`     | bytes  | speaker id ("" when the source has none)                        |
| `text`        | bytes  | transcript; present only in labeled splits                      |
| any other     | bytes  | extra manifest fields (e.g. `accent`, `oracle_text`), as UTF-8   |

`oracle_text` holds the hidden transcript of an unlabeled split of the synthetic
corpus: for analysis only, no training task ever reads it.
"""

from collections.abc import Mapping

import numpy as np

SAMPLE_RATE = 16000
CORE_FIELDS = ("audio", "sample_rate", "num_samples", "duration", "id", "speaker")
TEXT_FIELD = "text"
ORACLE_TEXT_FIELD = "oracle_text"


def audio_to_pcm16(audio: np.ndarray) -> bytes:
    """Float audio in [-1, 1] (any shape [S]) -> int16 little-endian bytes (clipped)."""
    audio = np.asarray(audio)
    if audio.dtype == np.int16:
        return audio.astype("<i2").tobytes()
    scaled = np.clip(np.round(audio.astype(np.float64) * 32768.0), -32768, 32767)
    return scaled.astype("<i2").tobytes()


def pcm16_to_audio(data: bytes) -> np.ndarray:
    """int16 little-endian bytes -> float32 audio [S] in [-1, 1)."""
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def make_example(
    *,
    audio: np.ndarray,
    utterance_id: str,
    speaker: str = "",
    text: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> bytes:
    """Serialises one utterance (16 kHz mono audio [S]) as a `tf.train.Example`."""
    import tensorflow as tf

    def _bytes(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    num_samples = int(np.asarray(audio).shape[0])
    features = {
        "audio": _bytes(audio_to_pcm16(audio)),
        "sample_rate": tf.train.Feature(int64_list=tf.train.Int64List(value=[SAMPLE_RATE])),
        "num_samples": tf.train.Feature(int64_list=tf.train.Int64List(value=[num_samples])),
        "duration": tf.train.Feature(
            float_list=tf.train.FloatList(value=[num_samples / SAMPLE_RATE])
        ),
        "id": _bytes(utterance_id.encode("utf-8")),
        "speaker": _bytes(speaker.encode("utf-8")),
    }
    if text is not None:
        features[TEXT_FIELD] = _bytes(text.encode("utf-8"))
    for key, value in (extra or {}).items():
        if key in features:
            raise ValueError(f"extra field '{key}' collides with a core feature")
        features[key] = _bytes(str(value).encode("utf-8"))
    example = tf.train.Example(features=tf.train.Features(feature=features))
    return example.SerializeToString()


def feature_description(*, labeled: bool, extra_fields=()) -> dict:
    """The `tf.io.parse_single_example` spec of a split (see the table above)."""
    import tensorflow as tf

    spec = {
        "audio": tf.io.FixedLenFeature([], tf.string),
        "sample_rate": tf.io.FixedLenFeature([], tf.int64),
        "num_samples": tf.io.FixedLenFeature([], tf.int64),
        "duration": tf.io.FixedLenFeature([], tf.float32),
        "id": tf.io.FixedLenFeature([], tf.string),
        "speaker": tf.io.FixedLenFeature([], tf.string),
    }
    if labeled:
        spec[TEXT_FIELD] = tf.io.FixedLenFeature([], tf.string)
    for key in extra_fields:
        spec[key] = tf.io.FixedLenFeature([], tf.string, default_value="")
    return spec
