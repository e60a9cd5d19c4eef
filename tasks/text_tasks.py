"""Text batches for language-model training: transcripts + the shipped sentence list.

    config = TextInputConfig(corpus="embedded_small", splits=("labeled",), batch_size=32)
    iterator = make_text_iterator(config, data_dir="/tmp/demo")
    batch = next(iterator)          # {'targets' i32[B, L], 'target_paddings' f32[B, L],
                                    #  'weights' f32[B]}
    state = iterator.get_state()    # JSON-able; the trainer saves it with each checkpoint
    iterator.set_state(state)

The text: the `text` field of every record of the corpus's `splits` (read from the prepared
TFRecords named by the corpus registry), then, with `sentence_list`, the shipped sentences
(`bigssl_jax.data.sentences`) that are not already among those transcripts. Every sentence
whose normalised form is a transcript of an `exclude_splits` split (by default dev, test,
test_clean and unlabeled; of an unlabeled split, its hidden `oracle_text`) is removed from
both sources: the synthetic corpus speaks sentences of the shipped list, so without this the
LM would have read the evaluation sentences, and pseudo-labels fused with it would have been
helped by the very sentences they transcribe.

Each sentence is normalised (`vocab.normalize_text`), tokenised with the corpus's
sentencepiece model, and ends in eos (id 1), so the LM learns where sentences stop; sentences
longer than the last length bucket are dropped. The examples are a few MB of int32, so the
pipeline is numpy in memory: no TensorFlow after the transcripts are read.

Order and position are those of `bigssl_jax.input_pipeline`: epoch e permutes the examples
with a seed derived from (seed, e), groups them by length bucket, cuts each bucket into
batches (the last one per bucket filled with weight-0 rows) and shuffles the batch order;
the position is (epoch, batches consumed in it). Hosts take every num_shards-th example.
"""

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from bigssl_jax import input_pipeline, paths
from bigssl_jax.data import registry as registry_lib
from bigssl_jax.data import schema
from bigssl_jax.data import sentences as sentences_lib
from bigssl_tasks import vocab

STATE_VERSION = 1
EVAL_SPLITS = ("dev", "test", "test_clean")
# Never read by an LM by default: the evaluation splits, and the unlabeled audio's sentences.
EXCLUDED_SPLITS = (*EVAL_SPLITS, "unlabeled")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TextInputConfig:
    """Which text to read and how to batch it.

    Attributes:
      corpus: a corpus of the registry (its transcripts and its vocabulary).
      splits: labeled splits whose transcripts are read.
      sentence_list: add the shipped sentence list.
      exclude_splits: splits whose sentences are never yielded (missing ones are skipped).
      vocab_size: the sentencepiece model `<data_dir>/vocab/<corpus>_<vocab_size>.model`.
      batch_size: sentences per batch on this host.
      length_buckets: ascending padded lengths in tokens (eos included); longer sentences
        are dropped.
      shuffle: shuffle examples and batches every epoch.
      seed: the shuffle seed.
      num_epochs: passes over the text; None repeats forever.
    """

    corpus: str = ""
    splits: tuple[str, ...] = ("labeled",)
    sentence_list: bool = True
    exclude_splits: tuple[str, ...] = EXCLUDED_SPLITS
    vocab_size: int = vocab.DEFAULT_VOCAB_SIZE
    batch_size: int = 32
    length_buckets: tuple[int, ...] = (16, 32, 64)
    shuffle: bool = True
    seed: int = 0
    num_epochs: int | None = None

    def __post_init__(self):
        for name in ("splits", "exclude_splits", "length_buckets"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.corpus:
            raise ValueError("TextInputConfig.corpus must name a registered corpus")
        both = sorted(set(self.splits) & set(self.exclude_splits))
        if both:
            raise ValueError(f"TextInputConfig: splits {both} are both read and excluded")
        if list(self.length_buckets) != sorted(set(self.length_buckets)):
            raise ValueError(f"length_buckets {self.length_buckets} must be strictly ascending")


@dataclasses.dataclass(frozen=True)
class TextCorpus:
    """The normalised sentences of a `TextInputConfig`, before tokenisation.

    Attributes:
      texts: the training sentences, transcripts first.
      num_transcripts: how many of `texts` are transcripts (the rest are listed sentences).
      excluded: the normalised sentences of the excluded splits.
    """

    texts: tuple[str, ...]
    num_transcripts: int
    excluded: frozenset[str]


def _split_transcripts(registry, corpus: str, split: str) -> list[str]:
    info = registry.split(corpus, split)
    if not info.labeled:
        raise ValueError(f"split '{split}' of corpus '{corpus}' has no transcripts")
    return [vocab.normalize_text(t) for t in vocab.read_transcripts(info.files)]


def _spoken_sentences(registry, corpus: str, split: str) -> list[str]:
    """The normalised sentences a split speaks: its transcripts, or its hidden `oracle_text`
    (none when an unlabeled split does not keep one)."""
    info = registry.split(corpus, split)
    if info.labeled:
        return _split_transcripts(registry, corpus, split)
    if schema.ORACLE_TEXT_FIELD not in info.extra_fields:
        return []
    from bigssl_tasks import classification_tasks

    texts = classification_tasks.read_field(info.files, schema.ORACLE_TEXT_FIELD)
    return [vocab.normalize_text(t) for t in texts]


def load_text_corpus(config: TextInputConfig, data_dir: os.PathLike) -> TextCorpus:
    """Reads the transcripts, adds the sentence list, removes the excluded sentences.

    Raises:
      registry.CorpusNotFoundError: the corpus or one of `splits` is not registered.
      ValueError: one of `splits` is unlabeled.
    """
    registry = registry_lib.CorpusRegistry(paths.registry_path(data_dir))
    available = registry.splits(config.corpus)
    excluded = frozenset(
        text
        for split in config.exclude_splits
        if split in available
        for text in _spoken_sentences(registry, config.corpus, split)
    )
    transcripts = [
        text
        for split in config.splits
        for text in _split_transcripts(registry, config.corpus, split)
        if text and text not in excluded
    ]
    listed = []
    if config.sentence_list:
        seen = excluded | set(transcripts)
        listed = [
            text
            for text in (vocab.normalize_text(s.text) for s in sentences_lib.load_sentences())
            if text and text not in seen
        ]
    return TextCorpus(tuple(transcripts + listed), len(transcripts), excluded)


def tokenize(texts: Sequence[str], model_path: os.PathLike, max_length: int) -> list[np.ndarray]:
    """Sentencepiece ids of each text followed by eos; texts over `max_length` ids are dropped."""
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=os.fspath(model_path))
    pieces = processor.encode(list(texts))
    return [np.asarray([*ids, vocab.EOS_ID], np.int32) for ids in pieces if len(ids) < max_length]


def batch_examples(
    examples: Sequence[np.ndarray], order: np.ndarray, batch_size: int, buckets: Sequence[int]
) -> list[np.ndarray]:
    """Groups `examples[order]` by length bucket into batches of example indices.

    Returns:
      Index arrays, each of at most `batch_size` examples of one bucket, bucket by bucket
      in ascending length, each bucket's examples in `order`.
    """
    lengths = np.asarray([len(examples[i]) for i in order])
    bucket_of = np.searchsorted(np.asarray(buckets), lengths)
    batches = []
    for bucket in range(len(buckets)):
        members = order[bucket_of == bucket]
        batches += [members[i : i + batch_size] for i in range(0, len(members), batch_size)]
    return batches


def pad_batch(
    examples: Sequence[np.ndarray], indices: np.ndarray, batch_size: int, buckets: Sequence[int]
) -> dict[str, np.ndarray]:
    """The padded batch of `examples[indices]` at its bucket length (weight-0 filler rows)."""
    longest = max(len(examples[i]) for i in indices)
    length = buckets[int(np.searchsorted(np.asarray(buckets), longest))]
    targets = np.zeros((batch_size, length), np.int32)
    paddings = np.ones((batch_size, length), np.float32)
    weights = np.zeros((batch_size,), np.float32)
    for row, index in enumerate(indices):
        tokens = examples[index]
        targets[row, : len(tokens)] = tokens
        paddings[row, : len(tokens)] = 0.0
        weights[row] = 1.0
    return {"targets": targets, "target_paddings": paddings, "weights": weights}


class TextIterator(input_pipeline.EpochIterator):
    """Numpy text batches of one host with a saveable position (see the module docstring)."""

    state_version = STATE_VERSION
    state_name = "text input"

    def __init__(
        self,
        config: TextInputConfig,
        examples: Sequence[np.ndarray],
        *,
        shard_index: int = 0,
        num_shards: int = 1,
    ):
        self.config = config
        self.shard = (shard_index, num_shards)
        self.examples = list(examples)[shard_index::num_shards]
        if not self.examples:
            raise input_pipeline.InputDataError(
                f"no sentence of corpus '{config.corpus}' fits in {config.length_buckets[-1]} "
                f"tokens on host {shard_index} of {num_shards}"
            )
        self._epoch = 0
        self._in_epoch = 0
        self._batches = None

    def _epoch_batches(self) -> list[np.ndarray]:
        config = self.config
        rng = np.random.default_rng(input_pipeline.epoch_seed(config.seed, self._epoch))
        count = len(self.examples)
        order = rng.permutation(count) if config.shuffle else np.arange(count)
        batches = batch_examples(self.examples, order, config.batch_size, config.length_buckets)
        if config.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __next__(self) -> dict[str, np.ndarray]:
        if self.config.num_epochs is not None and self._epoch >= self.config.num_epochs:
            raise StopIteration
        if self._batches is None:
            self._batches = self._epoch_batches()
        indices = self._batches[self._in_epoch]
        self._in_epoch += 1
        if self._in_epoch == len(self._batches):
            self._epoch, self._in_epoch, self._batches = self._epoch + 1, 0, None
        return pad_batch(self.examples, indices, self.config.batch_size, self.config.length_buckets)

    def _identity(self) -> dict:
        """What fixes the batch order; a state only applies to an equal identity."""
        config = self.config
        return {
            "corpus": config.corpus,
            "splits": list(config.splits),
            "sentence_list": config.sentence_list,
            "exclude_splits": list(config.exclude_splits),
            "vocab_size": config.vocab_size,
            "seed": config.seed,
            "shuffle": config.shuffle,
            "batch_size": config.batch_size,
            "length_buckets": list(config.length_buckets),
            "num_examples": len(self.examples),
            "shard": list(self.shard),
        }

    def _restart(self) -> None:
        self._batches = None


def load_examples(config: TextInputConfig, data_dir: os.PathLike) -> list[np.ndarray]:
    """Reads, filters and tokenises the text of `config`: i32 token arrays ending in eos.

    Raises:
      registry.CorpusNotFoundError: the corpus or a split is not registered.
      FileNotFoundError: the corpus has no vocabulary of `config.vocab_size`.
      ValueError: a split has no transcripts.
    """
    corpus = load_text_corpus(config, data_dir)
    model_path = vocab.vocab_path(data_dir, config.corpus, config.vocab_size)
    if not model_path.exists():
        raise FileNotFoundError(
            f"no vocabulary at {model_path}: run `bigssl vocab` for corpus '{config.corpus}'"
        )
    return tokenize(corpus.texts, model_path, config.length_buckets[-1])


def make_text_iterator(
    config: TextInputConfig, *, data_dir: os.PathLike, shard_index: int = 0, num_shards: int = 1
) -> TextIterator:
    """An iterator of this host's batches of `load_examples(config, data_dir)`."""
    examples = load_examples(config, data_dir)
    return TextIterator(config, examples, shard_index=shard_index, num_shards=num_shards)
