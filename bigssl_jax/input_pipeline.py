"""The input pipeline: a seqio task or mixture -> an iterator of numpy batches.

    config = InputConfig(task="embedded_small_labeled_labeled", batch_size=16)
    iterator = make_iterator(config, shard_info=seqio.ShardInfo(jax.process_index(),
                                                                jax.process_count()))
    batch = next(iterator)          # dict of numpy arrays, see feature_converters
    state = iterator.get_state()    # JSON-able; save it with the model checkpoint
    iterator.set_state(state)       # continue exactly where `state` was taken

Per-host sharding: seqio gives each host a disjoint part (whole shard files when there
are at least as many files as hosts, else every num_shards-th example).

Order: for a fixed seed (and shard), the batches are the same on every run. The data is
read in epochs (one pass each, `num_epochs` of them or forever); epoch e is shuffled with
its own seed, derived from (seed, e), and tf.data runs deterministically. A mixture's
epoch ends when one of its tasks runs out.

Position: the state is (epoch, batches consumed in that epoch). Restoring rebuilds that
epoch's pipeline and skips those batches inside tf.data (no numpy conversion): no shuffle
buffer is stored in checkpoints, and a restore re-reads at most one epoch of data.
Every example appears once per epoch: each bucket's last, partial batch of an epoch is
filled with padding rows of weight 0 (or dropped with `drop_remainder=True`), so losses
must weight rows by `weights`. Small corpora thus batch fine at any batch size.

Multi-host note: each host buckets its own examples, so hosts may produce different
bucket lengths at one step; `feature_converters.pad_batch` pads to an agreed shape.
"""

import dataclasses
from collections.abc import Iterator

from bigssl_jax import feature_converters
from bigssl_jax.data import schema

STATE_VERSION = 2


@dataclasses.dataclass(frozen=True, kw_only=True)
class InputConfig:
    """What to read and how to batch it.

    Attributes:
      task: a registered seqio task or mixture name.
      split: the seqio split (`bigssl_tasks.corpus_tasks.SPLIT` for registry tasks).
      batch_size: examples per batch on this host.
      bucket_seconds: ascending audio bucket lengths in seconds.
      target_buckets: ascending target bucket lengths in tokens.
      min_seconds: shorter utterances are dropped.
      max_seconds: longer utterances are dropped; None means the last bucket.
      shuffle: shuffle files and examples (training).
      shuffle_buffer_size: example shuffle buffer; None uses the task's (1000; mixtures
        always use their tasks'). It holds decoded float32 audio: 1000 utterances of
        15 s take about 1 GB of host memory.
      seed: seed of every shuffle and of mixture sampling.
      num_epochs: passes over the data; None repeats forever (training).
      drop_remainder: drop each epoch's partial batches (at most one per bucket) instead
        of filling them with weight-0 rows.
      keep_fields: string features to pass through as [B] arrays (e.g. "id").
      speed_factors: Kaldi-style speed perturbation (training): every utterance plays at a
        factor drawn from these, e.g. (0.9, 1.0, 1.1); () leaves the audio as it is. The
        draws follow the epoch's seed, so batches stay reproducible and resumable. The
        length filter and buckets see the perturbed length.
    """

    task: str = ""
    split: str = "all"
    batch_size: int = 8
    bucket_seconds: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0)
    target_buckets: tuple[int, ...] = feature_converters.DEFAULT_TARGET_BUCKETS
    min_seconds: float = 0.0
    max_seconds: float | None = None
    shuffle: bool = True
    shuffle_buffer_size: int | None = None
    seed: int = 0
    num_epochs: int | None = None
    drop_remainder: bool = False
    keep_fields: tuple[str, ...] = ()
    speed_factors: tuple[float, ...] = ()

    def __post_init__(self):
        for name in ("bucket_seconds", "target_buckets", "keep_fields", "speed_factors"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.task:
            raise ValueError("InputConfig.task must name a seqio task or mixture")
        if self.max_seconds is not None and self.max_seconds > self.bucket_seconds[-1]:
            raise ValueError(
                f"max_seconds={self.max_seconds} exceeds the last bucket "
                f"({self.bucket_seconds[-1]} s)"
            )
        if any(factor <= 0.0 for factor in self.speed_factors):
            raise ValueError(f"speed_factors must be positive: {self.speed_factors}")

    @property
    def longest_seconds(self) -> float:
        """The longest utterance kept: `max_seconds`, else the last bucket."""
        return self.bucket_seconds[-1] if self.max_seconds is None else self.max_seconds

    def converter(self) -> feature_converters.AudioFeatureConverter:
        """The feature converter these settings describe."""
        return feature_converters.AudioFeatureConverter(
            batch_size=self.batch_size,
            audio_buckets=tuple(int(round(s * schema.SAMPLE_RATE)) for s in self.bucket_seconds),
            target_buckets=self.target_buckets,
            drop_remainder=self.drop_remainder,
            keep_fields=self.keep_fields,
        )


class InputDataError(ValueError):
    """A record the pipeline cannot use (e.g. audio not at 16 kHz); names the utterance."""


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of one epoch (a 31-bit function of seed and epoch)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0] >> 1)


def build_dataset(config: InputConfig, *, shard_info=None, epoch: int = 0, skip_batches: int = 0):
    """The `tf.data.Dataset` of one epoch of padded batches described by `config`.

    Args:
      config: the input settings.
      shard_info: a `seqio.ShardInfo` selecting this host's part, or None for all.
      epoch: which epoch (decides the shuffle seed).
      skip_batches: batches to skip at the start of the epoch (restoring a position).

    Returns:
      A dataset of dicts of tensors (see `feature_converters`).
    """
    import seqio
    import tensorflow as tf

    provider = seqio.get_mixture_or_task(config.task)
    seed = epoch_seed(config.seed, epoch)  # of the shuffle and the speed draws
    kwargs = {
        "sequence_length": None,
        "split": config.split,
        "shuffle": config.shuffle,
        "seed": seed,
        "shard_info": shard_info,
        "num_epochs": 1,
        "try_in_mem_cache": False,
    }
    if isinstance(provider, seqio.Mixture):
        kwargs["passthrough_features"] = list(config.keep_fields)
    else:
        kwargs["shuffle_buffer_size"] = config.shuffle_buffer_size
    dataset = provider.get_dataset(**kwargs)
    if config.speed_factors:
        dataset = speed_perturb(dataset, factors=config.speed_factors, seed=seed)
    dataset = filter_by_length(
        dataset,
        min_seconds=config.min_seconds,
        max_seconds=config.longest_seconds,
    )
    dataset = config.converter()(dataset)
    if skip_batches:
        dataset = dataset.skip(skip_batches)
    options = tf.data.Options()
    options.deterministic = True
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------------------------------
# Per-run transforms (after the task's preprocessors, before batching).
# ---------------------------------------------------------------------------------------


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

    return dataset.enumerate().map(perturb, num_parallel_calls=tf.data.AUTOTUNE)


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


class EpochIterator(Iterator):
    """Batches read in epochs, with a saveable position: (epoch, batches consumed in it).

    Subclasses keep `_epoch` and `_in_epoch` current and define `_identity` (the settings
    that fix the batch order; a state applies only to an equal identity) and `_restart`
    (drop the current epoch's reader, so the next batch rebuilds it at the position).

    Attributes:
      state_version: bumped when the state's meaning changes.
      state_name: what the mismatch error calls the state.
    """

    state_version: int = STATE_VERSION
    state_name: str = "input"
    _epoch: int = 0
    _in_epoch: int = 0

    def _identity(self) -> dict:
        raise NotImplementedError

    def _restart(self) -> None:
        raise NotImplementedError

    def get_state(self) -> dict:
        """The position as a JSON-able dict: (epoch, batches in it) and the pipeline identity."""
        return {
            "version": self.state_version,
            "epoch": self._epoch,
            "batches_in_epoch": self._in_epoch,
            **self._identity(),
        }

    def set_state(self, state: dict) -> None:
        """Continues from `state` (from `get_state` of an iterator with the same settings).

        Raises:
          ValueError: `state` was taken from a pipeline with other settings.
        """
        expected = {"version": self.state_version, **self._identity()}
        differ = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
        if differ:
            raise ValueError(f"{self.state_name} state does not match this pipeline: {differ}")
        self._epoch = int(state["epoch"])
        self._in_epoch = int(state["batches_in_epoch"])
        self._restart()


class InputIterator(EpochIterator):
    """Numpy batches of one host with a saveable position (see the module docstring)."""

    def __init__(self, config: InputConfig, shard_info=None):
        self.config = config
        self.shard_info = shard_info
        self._epoch = 0
        self._in_epoch = 0
        self._iterator = None

    def _identity(self) -> dict:
        """What fixes the batch order; a state only applies to an equal identity."""
        shard = self.shard_info
        return {
            "task": self.config.task,
            "split": self.config.split,
            "seed": self.config.seed,
            "shuffle": self.config.shuffle,
            "batch_size": self.config.batch_size,
            "bucket_seconds": list(self.config.bucket_seconds),
            "shard": [shard.index, shard.num_shards] if shard else [0, 1],
        }

    def _next_in_epoch(self) -> dict:
        """The next batch of the current epoch; StopIteration at its end."""
        import tensorflow as tf

        if self._iterator is None:
            dataset = build_dataset(
                self.config,
                shard_info=self.shard_info,
                epoch=self._epoch,
                skip_batches=self._in_epoch,
            )
            self._iterator = dataset.as_numpy_iterator()
        try:
            return next(self._iterator)
        except tf.errors.InvalidArgumentError as error:
            message = error.message.strip().splitlines()[0]
            raise InputDataError(f"task '{self.config.task}': {message}") from None

    def __next__(self) -> dict:
        while self.config.num_epochs is None or self._epoch < self.config.num_epochs:
            try:
                batch = self._next_in_epoch()
            except StopIteration:
                if self._in_epoch == 0:
                    raise InputDataError(
                        f"task '{self.config.task}' gives no batch in a whole epoch (no "
                        f"example of {self.config.min_seconds}-{self.config.longest_seconds} s, "
                        f"or, with drop_remainder, fewer than batch_size="
                        f"{self.config.batch_size} in every length bucket)"
                    ) from None
                self._epoch, self._in_epoch, self._iterator = self._epoch + 1, 0, None
                continue
            self._in_epoch += 1
            return batch
        raise StopIteration

    def _restart(self) -> None:
        self._iterator = None


def make_iterator(config: InputConfig, *, shard_info=None) -> InputIterator:
    """An iterator of numpy batches for this host (`shard_info`: a `seqio.ShardInfo`)."""
    return InputIterator(config, shard_info)
