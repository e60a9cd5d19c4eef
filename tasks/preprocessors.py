"""seqio preprocessors for speech records (each maps a `tf.data.Dataset` of dicts).

Order inside a task: `check_sample_rate` -> `decode_audio` -> (labeled) `text_to_targets`
-> `tokenize_targets` -> `add_confidence`. `speed_perturb` and `filter_by_length` are
applied by the input pipeline (their settings are per run, not per registered task).
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


def speed_perturb(dataset, *, factors: tuple[float, ...], seed: int):
    """Kaldi-style speed perturbation: each utterance plays at a factor drawn from `factors`.

    Example i (its position in `dataset`) draws k ~ Uniform{0, ..., len(factors) - 1} from a
    stateless generator seeded by (seed, i), so a dataset in a fixed order is perturbed the
    same way on every run. With f = factors[k], the decoded audio x [S] becomes
        y[n] = x(n * f),  n = 0, ..., floor((S - 1) / f),
    read between samples by linear interpolation: f > 1 is faster and higher (fewer samples),
    f < 1 slower and lower, so tempo, pitch and formants move together as in `sox speed`.
    Linear interpolation does not low-pass before decimating: for f > 1, content above
    8 kHz / f folds back (above 7.3 kHz for f = 1.1, the edge of the log-mel bands).
    Targets and every other feature are unchanged.

    Args:
      dataset: examples with float32 `audio` [S].
      factors: speed factors to draw from, e.g. (0.9, 1.0, 1.1); all > 0.
      seed: int seed of the draws.
    """
    import tensorflow as tf

    if not factors or min(factors) <= 0.0:
        raise ValueError(f"speed factors must be a non-empty tuple of positive numbers: {factors}")
    factor_table = tf.constant(factors, tf.float64)  # exact positions in long clips

    def perturb(index, ex):
        pick = tf.random.stateless_uniform(
            [],
            seed=tf.stack([tf.constant(seed, tf.int64), index]),
            maxval=len(factors),
            dtype=tf.int32,
        )
        factor = factor_table[pick]
        audio = ex["audio"]
        last = tf.shape(audio)[0] - 1
        new_length = tf.cast(tf.floor(tf.cast(last, tf.float64) / factor), tf.int32) + 1
        position = tf.cast(tf.range(new_length), tf.float64) * factor
        left = tf.minimum(tf.cast(tf.floor(position), tf.int32), last)
        right = tf.minimum(left + 1, last)
        frac = tf.cast(position - tf.cast(left, tf.float64), tf.float32)
        resampled = tf.gather(audio, left) * (1.0 - frac) + tf.gather(audio, right) * frac
        return {**ex, "audio": resampled}

    return dataset.enumerate().map(perturb, num_parallel_calls=AUTOTUNE)


def filter_by_length(
    dataset,
    *,
    min_seconds: float = 0.0,
    max_seconds: float | None = None,
    sample_rate: int = schema.SAMPLE_RATE,
):
    """Keeps examples whose decoded audio [S] has min_seconds <= S / rate <= max_seconds."""
    import tensorflow as tf

    min_samples = int(round(min_seconds * sample_rate))
    max_samples = None if max_seconds is None else int(round(max_seconds * sample_rate))

    def keep(ex):
        length = tf.shape(ex["audio"])[0]
        ok = length >= min_samples
        if max_samples is not None:
            ok = tf.logical_and(ok, length <= max_samples)
        return ok

    return dataset.filter(keep)
