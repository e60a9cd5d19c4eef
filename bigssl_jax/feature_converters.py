"""The audio feature converter: task examples -> fixed-size, length-bucketed batches.

seqio's feature converters pack token sequences; speech needs length buckets instead,
so a jitted step sees only a few distinct shapes. Each example goes to the smallest
audio bucket that holds it; a batch holds examples of one bucket, and its arrays are
padded to

    S = that bucket's length (samples),
    L = the smallest target bucket >= the longest `targets` in the batch,

so the number of distinct batch shapes is at most len(audio_buckets) * len(target_buckets)
(in practice about one target bucket per audio bucket). A batch is

    audio            f32[B, S]   samples, 0.0 where padded
    audio_paddings   f32[B, S]   1.0 = padded, 0.0 = valid
    weights          f32[B]      1.0 = real example, 0.0 = padding row
    targets          i32[B, L]   token ids, 0 (pad) where padded     (labeled tasks)
    target_paddings  f32[B, L]   1.0 = padded                        (labeled tasks)
    confidence       f32[B]      label confidence, 1.0 for human labels (labeled tasks)
    <keep_fields>    string[B]   pass-through string fields, "" in padding rows

Examples longer than the last audio bucket or with more tokens than the last target
bucket are dropped. The remainder of a finite dataset (a bucket's last, partial batch)
is dropped when `drop_remainder`, else filled with fully padded rows of weight 0.
"""

import dataclasses

import numpy as np

DEFAULT_TARGET_BUCKETS = (16, 32, 64, 128, 256, 512)


@dataclasses.dataclass(frozen=True)
class AudioFeatureConverter:
    """Batches task examples into length buckets (see the module docstring).

    Attributes:
      batch_size: examples per batch, B.
      audio_buckets: ascending bucket lengths in samples.
      target_buckets: ascending target lengths in tokens.
      drop_remainder: drop partial batches instead of filling them with weight-0 rows.
      keep_fields: string features passed through as [B] arrays (e.g. "id", "speaker").
    """

    batch_size: int
    audio_buckets: tuple[int, ...]
    target_buckets: tuple[int, ...] = DEFAULT_TARGET_BUCKETS
    drop_remainder: bool = False
    keep_fields: tuple[str, ...] = ()

    def __post_init__(self):
        for name in ("audio_buckets", "target_buckets"):
            buckets = getattr(self, name)
            if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] <= 0:
                raise ValueError(f"{name} must be ascending positive lengths, got {buckets}")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")

    def __call__(self, dataset):
        """Maps a dataset of task examples to a dataset of padded batches."""
        import tensorflow as tf

        labeled = "targets" in dataset.element_spec
        dataset = dataset.map(self._select, num_parallel_calls=tf.data.AUTOTUNE)
        dataset = dataset.filter(self._fits)
        buckets = tf.constant(self.audio_buckets, tf.int64)
        shapes = {key: spec.shape for key, spec in dataset.element_spec.items()}

        def batch_bucket(key, window):
            # Audio is padded straight to its bucket's length; targets to the batch's max.
            return window.padded_batch(
                self.batch_size,
                padded_shapes={**shapes, "audio": tf.reshape(buckets[key], [1])},
                drop_remainder=self.drop_remainder,
            )

        dataset = dataset.group_by_window(
            key_func=lambda ex: tf.searchsorted(
                buckets, tf.cast(ex["audio_length"], tf.int64)[None], out_type=tf.int64
            )[0],
            reduce_func=batch_bucket,
            window_size=self.batch_size,
        )
        return dataset.map(
            lambda batch: self._finish(batch, labeled), num_parallel_calls=tf.data.AUTOTUNE
        )

    def _select(self, ex):
        import tensorflow as tf

        missing = [key for key in self.keep_fields if key not in ex]
        if missing:
            raise ValueError(
                f"keep_fields {missing} are not features of the task (has: {', '.join(sorted(ex))})"
            )
        out = {"audio": ex["audio"], "audio_length": tf.shape(ex["audio"])[0]}
        if "targets" in ex:
            out["targets"] = tf.cast(ex["targets"], tf.int32)
            out["target_length"] = tf.shape(ex["targets"])[0]
            out["confidence"] = tf.cast(ex["confidence"], tf.float32)
        out.update({key: ex[key] for key in self.keep_fields})
        return out

    def _fits(self, ex):
        import tensorflow as tf

        ok = ex["audio_length"] <= self.audio_buckets[-1]
        if "targets" in ex:
            ok = tf.logical_and(ok, ex["target_length"] <= self.target_buckets[-1])
        return ok

    def _finish(self, batch, labeled: bool):
        """Pads a bucket's batch to [B, S] / [B, L] and adds paddings and weights."""
        import tensorflow as tf

        rows = self.batch_size - tf.shape(batch["audio"])[0]
        out = {"weights": tf.pad(tf.ones_like(batch["audio_length"], tf.float32), [[0, rows]])}
        out["audio"], out["audio_paddings"] = _pad_to_bucket(
            batch["audio"], batch["audio_length"], self.audio_buckets, rows
        )
        if labeled:
            out["targets"], out["target_paddings"] = _pad_to_bucket(
                batch["targets"], batch["target_length"], self.target_buckets, rows
            )
            out["confidence"] = tf.pad(batch["confidence"], [[0, rows]])
        for key in self.keep_fields:
            out[key] = tf.pad(batch[key], [[0, rows]], constant_values="")
        return out


def _pad_to_bucket(values, lengths, buckets, rows):
    """values [b, w] -> ([b + rows, bucket], paddings) with bucket the smallest >= w."""
    import tensorflow as tf

    width = tf.shape(values)[1]
    bucket = tf.constant(buckets, tf.int32)[
        tf.minimum(
            tf.searchsorted(tf.constant(buckets, tf.int32), width[None])[0], len(buckets) - 1
        )
    ]
    values = tf.pad(values, [[0, rows], [0, bucket - width]])
    lengths = tf.pad(lengths, [[0, rows]])
    paddings = 1.0 - tf.sequence_mask(lengths, bucket, dtype=tf.float32)
    return values, paddings


def pad_batch(batch: dict, *, audio_length: int, target_length: int | None = None) -> dict:
    """Pads a numpy batch to a longer `audio_length` (and `target_length`).

    Hosts of a multi-host job bucket independently; before assembling a global array
    they can agree on the largest shape (e.g. with `process_allgather`) and pad to it.

    Args:
      batch: a batch of `AudioFeatureConverter` as numpy arrays.
      audio_length: new S, >= the batch's.
      target_length: new L, >= the batch's (labeled batches only).

    Returns:
      The padded batch (padding: 0 values, 1.0 paddings).
    """
    out = dict(batch)
    pairs = [("audio", "audio_paddings", audio_length)]
    if target_length is not None:
        pairs.append(("targets", "target_paddings", target_length))
    for key, pad_key, length in pairs:
        extra = length - batch[key].shape[1]
        if extra < 0:
            raise ValueError(f"cannot pad {key} of length {batch[key].shape[1]} to {length}")
        out[key] = np.pad(batch[key], [(0, 0), (0, extra)])
        out[pad_key] = np.pad(batch[pad_key], [(0, 0), (0, extra)], constant_values=1.0)
    return out
