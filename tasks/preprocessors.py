"""seqio preprocessors for speech records (each maps a `tf.data.Dataset` of dicts).

Order inside a task: `check_sample_rate` -> `decode_audio` -> (labeled) `text_to_targets`
-> `tokenize_targets` -> `add_confidence`. Speed perturbation and the length filter are the
input pipeline's (`bigssl_jax.input_pipeline`: their settings are per run, not per
registered task).
"""

from bigssl_jax.data import schema
from bigssl_tasks import vocab

AUTOTUNE = -1  # tf.data.AUTOTUNE, without importing TensorFlow at module import.


def check_sample_rate(dataset, *, expected: int = schema.SAMPLE_RATE):
    """Fails iteration on a record whose `sample_rate` is not `expected`.

    The error (a `tf.errors.InvalidArgumentError`) names the utterance id and its rate.
    Records without a `sample_rate` feature pass through unchanged.
    """
    import tensorflow as tf

    def check(ex):
        if "sample_rate" not in ex:
            return ex
        message = tf.strings.format(
            "utterance '{}' has sample_rate {} Hz; expected {} Hz (re-run `bigssl prepare`)",
            (ex["id"], ex["sample_rate"], expected),
        )
        ok = tf.debugging.Assert(tf.equal(ex["sample_rate"], expected), [message])
        with tf.control_dependencies([ok]):
            return {**ex, "audio": tf.identity(ex["audio"])}

    return dataset.map(check, num_parallel_calls=AUTOTUNE)


def decode_audio(dataset):
    """`audio`: int16 little-endian PCM bytes -> float32 [S] in [-1, 1) (x / 32768)."""
    import tensorflow as tf

    def decode(ex):
        pcm = tf.io.decode_raw(ex["audio"], tf.int16, little_endian=True)
        return {**ex, "audio": tf.cast(pcm, tf.float32) / 32768.0}

    return dataset.map(decode, num_parallel_calls=AUTOTUNE)


def text_to_targets(dataset):
    """Moves the normalised transcript `text` to `targets` (tokenised next)."""

    def move(ex):
        ex = dict(ex)
        ex["targets"] = vocab.normalize_text_tf(ex.pop(schema.TEXT_FIELD))
        return ex

    return dataset.map(move, num_parallel_calls=AUTOTUNE)


def tokenize_targets(dataset, output_features):
    """`targets`: normalised text -> int32 [L] ids of the task's vocabulary (no EOS).

    The text stays available as `targets_pretokenized` (e.g. as the WER reference).
    """
    import tensorflow as tf

    vocabulary = output_features["targets"].vocabulary

    def tokenize(ex):
        ids = tf.cast(vocabulary.encode_tf(ex["targets"]), tf.int32)
        return {**ex, "targets": ids, "targets_pretokenized": ex["targets"]}

    return dataset.map(tokenize, num_parallel_calls=AUTOTUNE)


def add_confidence(dataset):
    """Adds `confidence` = 1.0 to records that have none (human transcripts).

    Labeled and pseudo-labeled tasks then share output features, which seqio
    mixtures require.
    """
    import tensorflow as tf

    def add(ex):
        if "confidence" in ex:
            return ex
        return {**ex, "confidence": tf.constant(1.0, tf.float32)}

    return dataset.map(add, num_parallel_calls=AUTOTUNE)
