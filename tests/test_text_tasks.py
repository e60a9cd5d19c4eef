"""The LM text pipeline: eval sentences excluded, batches, positions, shards."""

import numpy as np
import pytest
import sentencepiece as spm

from bigssl_jax import paths
from bigssl_jax.data import registry as registry_lib
from bigssl_jax.data import schema, sentences, synthetic_corpus
from bigssl_tasks import text_tasks, vocab

CORPUS = "embedded_tiny"
VOCAB_SIZE = 256


def _write_split(data_dir, split, texts, labeled):
    import tensorflow as tf

    path = paths.prepared_dir(data_dir, CORPUS) / f"{split}-00000-of-00001.tfrecord"
    path.parent.mkdir(parents=True, exist_ok=True)
    audio = np.zeros(160, np.float32)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for index, text in enumerate(texts):
            extra = {} if labeled else {schema.ORACLE_TEXT_FIELD: text}
            example = schema.make_example(
                audio=audio,
                utterance_id=f"{split}-{index:05d}",
                speaker="spk0",
                text=text if labeled else None,
                extra=extra,
            )
            writer.write(example)
    info = registry_lib.SplitInfo(
        files=(str(path),),
        num_examples=len(texts),
        hours=0.0,
        labeled=labeled,
        extra_fields=() if labeled else (schema.ORACLE_TEXT_FIELD,),
    )
    registry = registry_lib.CorpusRegistry(paths.registry_path(data_dir))
    registry.register_split(CORPUS, split, info, source="test")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A prepared corpus with the splits (and sentences) the synthetic corpus plans."""
    data_dir = tmp_path_factory.mktemp("data")
    plan = synthetic_corpus.plan_corpus(synthetic_corpus.PRESETS["tiny"], 0, None)
    by_split = {split: [] for split in synthetic_corpus.SPLITS}
    for utterance in plan:
        by_split[utterance.split].append(utterance.sentence.text)
    for split, texts in by_split.items():
        _write_split(data_dir, split, texts, split not in synthetic_corpus.UNLABELED_SPLITS)
    harvard = [s.text for s in sentences.load_sentences() if s.source == "harvard"]
    vocab.train_vocabulary(
        harvard, vocab.vocab_path(data_dir, CORPUS, VOCAB_SIZE), vocab_size=VOCAB_SIZE
    )
    return data_dir, by_split


def _config(**overrides):
    settings = dict(corpus=CORPUS, vocab_size=VOCAB_SIZE, batch_size=64, length_buckets=(64, 256))
    return text_tasks.TextInputConfig(**{**settings, **overrides})


def _decode_epoch(iterator, data_dir):
    processor = spm.SentencePieceProcessor(
        model_file=str(vocab.vocab_path(data_dir, CORPUS, VOCAB_SIZE))
    )
    texts = []
    for batch in iterator:
        for row, weight, paddings in zip(
            batch["targets"], batch["weights"], batch["target_paddings"], strict=True
        ):
            if weight:
                tokens = row[paddings == 0].tolist()
                assert tokens[-1] == vocab.EOS_ID and vocab.EOS_ID not in tokens[:-1]
                texts.append(processor.decode(tokens[:-1]))
    return texts


def test_eval_and_unlabeled_sentences_never_reach_training(corpus):
    """Neither the evaluation transcripts nor the unlabeled audio's hidden sentences: an LM
    that had read the latter would help the pseudo-labels of the very audio it transcribes."""
    data_dir, by_split = corpus
    held_out = set(
        by_split["dev"] + by_split["test"] + by_split["test_clean"] + by_split["unlabeled"]
    )
    listed = {vocab.normalize_text(s.text) for s in sentences.load_sentences()}
    assert held_out and held_out <= listed  # the synthetic corpus speaks listed sentences

    text = text_tasks.load_text_corpus(_config(), data_dir)
    assert text.excluded == held_out
    assert not held_out & set(text.texts)
    assert list(text.texts[: text.num_transcripts]) == by_split["labeled"]
    assert set(text.texts) == listed - held_out
    assert len(text.texts) == len(set(text.texts))

    iterator = text_tasks.make_text_iterator(_config(num_epochs=1), data_dir=data_dir)
    decoded = _decode_epoch(iterator, data_dir)
    assert sorted(decoded) == sorted(text.texts)  # every sentence once, none held out


def test_eval_text_is_the_dev_transcripts(corpus):
    data_dir, by_split = corpus
    config = _config(
        splits=("dev",), sentence_list=False, exclude_splits=(), shuffle=False, num_epochs=1
    )
    iterator = text_tasks.make_text_iterator(config, data_dir=data_dir)
    assert _decode_epoch(iterator, data_dir) == by_split["dev"]


def test_batches_are_padded_to_buckets():
    examples = [np.arange(1, n + 1, dtype=np.int32) for n in (3, 5, 9, 2, 4, 7, 1)]
    config = _config(batch_size=3, length_buckets=(4, 8, 16), shuffle=False, num_epochs=1)
    batches = list(text_tasks.TextIterator(config, examples))
    assert [b["targets"].shape for b in batches] == [(3, 4), (3, 4), (3, 8), (3, 16)]
    for batch in batches:
        lengths = (1 - batch["target_paddings"]).sum(axis=1)
        np.testing.assert_array_equal(batch["targets"] * batch["target_paddings"], 0)
        np.testing.assert_array_equal(batch["weights"], lengths > 0)
    rows = [
        tuple(row[: int(n)])
        for b in batches
        for row, n in zip(b["targets"], (1 - b["target_paddings"]).sum(1), strict=True)
        if n
    ]
    assert sorted(rows) == sorted(tuple(e) for e in examples)


def test_state_restores_the_position_across_epochs():
    examples = [np.arange(1, 2 + i % 11, dtype=np.int32) for i in range(40)]
    config = _config(batch_size=4, length_buckets=(4, 8, 16), seed=3)
    first = text_tasks.TextIterator(config, examples)
    for _ in range(13):  # more than one epoch (about 11 batches)
        next(first)
    state = first.get_state()
    expected = [next(first) for _ in range(15)]
    second = text_tasks.TextIterator(config, examples)
    second.set_state(state)
    for want, got in zip(expected, (next(second) for _ in range(15)), strict=True):
        for key in want:
            np.testing.assert_array_equal(want[key], got[key])
    with pytest.raises(ValueError, match="does not match"):
        text_tasks.TextIterator(_config(batch_size=4, seed=4), examples).set_state(state)


def test_epochs_are_shuffled_differently():
    examples = [np.arange(1, 2 + i % 5, dtype=np.int32) for i in range(30)]
    iterator = text_tasks.TextIterator(_config(batch_size=30, length_buckets=(8,)), examples)
    first, second = next(iterator), next(iterator)
    assert not np.array_equal(first["targets"], second["targets"])
    assert sorted(map(tuple, first["targets"])) == sorted(map(tuple, second["targets"]))


def test_shards_split_the_examples():
    examples = [np.full(3, i + 1, np.int32) for i in range(10)]
    seen = []
    for index in range(3):
        config = _config(batch_size=8, length_buckets=(4,), num_epochs=1)
        iterator = text_tasks.TextIterator(config, examples, shard_index=index, num_shards=3)
        seen += [
            int(row[0])
            for b in iterator
            for row, w in zip(b["targets"], b["weights"], strict=True)
            if w
        ]
    assert sorted(seen) == list(range(1, 11))


def test_bad_settings_are_refused(corpus, tmp_path):
    data_dir, _ = corpus
    with pytest.raises(ValueError, match="both read and excluded"):
        _config(splits=("labeled", "dev"))
    with pytest.raises(ValueError, match="ascending"):
        _config(length_buckets=(32, 16))
    with pytest.raises(FileNotFoundError, match="bigssl vocab"):
        text_tasks.make_text_iterator(_config(vocab_size=99), data_dir=data_dir)
    with pytest.raises(registry_lib.CorpusNotFoundError):
        text_tasks.load_text_corpus(_config(corpus="nope"), data_dir)
