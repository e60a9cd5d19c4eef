"""Tests of bigssl_tasks: vocabulary, preprocessors, corpus / pseudo-labeled tasks."""

import re
import subprocess
import sys

import numpy as np
import pytest
import seqio
import tensorflow as tf

from bigssl_jax import input_pipeline
from bigssl_jax.data import registry as registry_lib
from bigssl_jax.data import schema, sentences
from bigssl_tasks import corpus_tasks, pseudo_labeled, toy_corpus, vocab

CORPUS = "tasktoy"


def _records(files) -> list[tf.train.Example]:
    return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(files)]


def _bytes_feature(example, key) -> bytes:
    return example.features.feature[key].bytes_list.value[0]


def _take(task: str, count: int | None = None, **kwargs) -> list[dict]:
    dataset = seqio.get_mixture_or_task(task).get_dataset(
        None, split=corpus_tasks.SPLIT, shuffle=False, try_in_mem_cache=False, **kwargs
    )
    if count is not None:
        dataset = dataset.take(count)
    return list(dataset.as_numpy_iterator())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    toy_corpus.write_toy_corpus(data_dir, CORPUS, splits={"train": (12, True), "raw": (8, False)})
    registry = registry_lib.CorpusRegistry(data_dir / "registry.json")
    texts = [
        _bytes_feature(e, "text").decode()
        for e in _records(list(registry.split(CORPUS, "train").files))
    ]
    model = vocab.vocab_path(data_dir, CORPUS, 1024)
    # Every toy word once, so pseudo-labels (drawn from the same words) have no unknowns.
    vocab.train_vocabulary(texts + [" ".join(toy_corpus.WORDS)], model, vocab_size=1024)
    names = corpus_tasks.register_corpus_tasks(CORPUS, data_dir=data_dir, vocab_path=model)
    return {
        "data_dir": data_dir,
        "registry": registry,
        "vocab_path": model,
        "names": names,
        "texts": texts,
    }


NORMALISED = {
    "café naïve résumé": "café naïve résumé",
    "  Hello, World!!  It's  ÉTÉ 42 ": "hello world it's été 42",
    "Straße ΟΔΟΣ.": "strasse οδοσ",
    "नमस्ते दुनिया।": "नमस्ते दुनिया",
    "中文，測試。日本語のテキスト": "中文 測試 日本語のテキスト",
    "مرحبا، بالعالم": "مرحبا بالعالم",
    "don’t STOP": "don't stop",
    "soft\u00adhy\u200bphen": "softhyphen",
    "Ｆｕｌｌ ｗｉｄｔｈ １２": "full width 12",
    "e\u0301cole ÉCOLE": "école école",
    "A-B\tc\nd": "a b c d",
    "": "",
    "...": "",
}


def _ascii_rule(text: str) -> str:
    """The rule before it became Unicode-aware: lower-case, outside [a-z0-9'] -> space."""
    return " ".join(re.sub(r"[^a-z0-9']+", " ", text.lower()).split())


def test_normalize_text_keeps_letters_of_any_script_in_python_and_tensorflow():
    assert {text: vocab.normalize_text(text) for text in NORMALISED} == NORMALISED
    got = vocab.normalize_text_tf(tf.constant(list(NORMALISED))).numpy()
    assert [g.decode() for g in got] == list(NORMALISED.values())


def test_normalize_text_of_ascii_is_unchanged():
    rng = np.random.default_rng(0)
    printable = [chr(c) for c in range(32, 127)] + ["\t", "\n"]
    texts = ["".join(rng.choice(printable, size=rng.integers(0, 40))) for _ in range(2000)]
    texts += [s.spoken for s in sentences.load_sentences()]
    want = [_ascii_rule(text) for text in texts]
    assert [vocab.normalize_text(text) for text in texts] == want
    got = vocab.normalize_text_tf(tf.constant(texts)).numpy()
    assert [g.decode() for g in got] == want


def test_vocabulary_round_trip_and_soft_size(corpus):
    vocabulary = vocab.get_vocabulary(str(corpus["vocab_path"]))
    # 1024 pieces asked of a tiny corpus: a smaller model instead of an error.
    assert 3 < vocabulary.vocab_size < 1024
    assert (vocabulary.pad_id, vocabulary.eos_id, vocabulary.unk_id) == (0, 1, 2)
    for text in corpus["texts"] + ["tell the well it's easy"]:
        normalised = vocab.normalize_text(text)
        ids = vocabulary.encode(normalised)
        assert vocab.UNK_ID not in ids and vocab.PAD_ID not in ids
        assert vocabulary.decode(ids) == normalised


def test_register_corpus_tasks_names_and_idempotence(corpus):
    assert corpus["names"] == [
        f"{CORPUS}_raw_unlabeled",
        f"{CORPUS}_train_labeled",
        f"{CORPUS}_train_unlabeled",
    ]
    task = seqio.get_mixture_or_task(f"{CORPUS}_train_labeled")
    again = corpus_tasks.register_corpus_tasks(
        CORPUS, data_dir=corpus["data_dir"], vocab_path=corpus["vocab_path"]
    )
    assert again == corpus["names"]
    assert seqio.get_mixture_or_task(f"{CORPUS}_train_labeled") is task
    assert corpus_tasks.register_corpus_tasks(CORPUS, data_dir=corpus["data_dir"]) == [
        f"{CORPUS}_raw_unlabeled",
        f"{CORPUS}_train_unlabeled",
    ]
    with pytest.raises(registry_lib.CorpusNotFoundError, match="nosuch"):
        corpus_tasks.register_corpus_tasks("nosuch", data_dir=corpus["data_dir"])


def test_task_name_is_seqio_valid():
    assert corpus_tasks.task_name("libri", "train-clean-100", "labeled") == (
        "libri_train_clean_100_labeled"
    )


@pytest.mark.parametrize("split", ["raw", "train"])
def test_unlabeled_task_never_exposes_text(corpus, split):
    task = seqio.get_mixture_or_task(f"{CORPUS}_{split}_unlabeled")
    for hidden in corpus_tasks.HIDDEN_FIELDS:
        assert hidden not in task.source.feature_description
    examples = _take(task.name)
    assert len(examples) == corpus["registry"].split(CORPUS, split).num_examples
    for ex in examples:
        assert not set(ex) & {"text", "oracle_text", "targets", "targets_pretokenized"}
        assert ex["audio"].dtype == np.float32 and ex["audio"].ndim == 1
        assert ex["accent"] in (b"us", b"gb")


def test_labeled_task_decodes_audio_and_tokenises_text(corpus):
    files = list(corpus["registry"].split(CORPUS, "train").files)
    records = {_bytes_feature(e, "id"): e for e in _records(files)}
    vocabulary = vocab.get_vocabulary(str(corpus["vocab_path"]))
    examples = _take(f"{CORPUS}_train_labeled")
    assert {ex["id"] for ex in examples} == set(records)
    for ex in examples:
        record = records[ex["id"]]
        pcm = np.frombuffer(_bytes_feature(record, "audio"), "<i2")
        np.testing.assert_array_equal(ex["audio"], pcm.astype(np.float32) / 32768.0)
        text = vocab.normalize_text(_bytes_feature(record, "text").decode())
        assert ex["targets"].dtype == np.int32
        assert vocabulary.decode(ex["targets"].tolist()) == text
        assert ex["targets_pretokenized"].decode() == text
        assert ex["confidence"] == 1.0


def _write_records(path, serialized) -> str:
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in serialized:
            writer.write(record)
    return str(path)


def test_sample_rate_check_names_the_utterance(tmp_path):
    example = tf.train.Example.FromString(
        schema.make_example(audio=np.zeros(800, np.float32), utterance_id="utt-8k")
    )
    example.features.feature["sample_rate"].int64_list.value[0] = 8000
    good = schema.make_example(audio=np.zeros(800, np.float32), utterance_id="utt-16k")
    path = _write_records(tmp_path / "bad.tfrecord", [good, example.SerializeToString()])
    corpus_tasks.register_unlabeled_task("tasktoy_bad_rate", files=[path])
    config = input_pipeline.InputConfig(
        task="tasktoy_bad_rate", batch_size=2, shuffle=False, num_epochs=1
    )
    with pytest.raises(input_pipeline.InputDataError, match="utt-8k.*8000 Hz"):
        list(input_pipeline.make_iterator(config))


def _write_pseudo_shard(path, count, seed):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        text = " ".join(rng.choice(toy_corpus.WORDS, size=3))
        rows.append({"id": f"pl-{seed}-{i}", "text": text, "confidence": float(rng.uniform())})
    _write_records(
        path,
        [
            pseudo_labeled.make_example(
                audio=toy_corpus.toy_utterance(rng, 0.5),
                utterance_id=row["id"],
                text=row["text"],
                confidence=row["confidence"],
                teacher="gen0",
                tokens=[5, 6],
            )
            for row in rows
        ],
    )
    return rows


def test_pseudo_labeled_task_shape(corpus, tmp_path):
    rows = _write_pseudo_shard(tmp_path / "pl-00000.tfrecord", 6, seed=1)
    rows += _write_pseudo_shard(tmp_path / "pl-00001.tfrecord", 4, seed=2)
    pseudo_labeled.register_pseudo_labeled_task(
        "tasktoy_pl", str(tmp_path / "pl-*.tfrecord"), vocab_path=corpus["vocab_path"]
    )
    vocabulary = vocab.get_vocabulary(str(corpus["vocab_path"]))
    examples = {ex["id"].decode(): ex for ex in _take("tasktoy_pl")}
    assert set(examples) == {row["id"] for row in rows}
    for row in rows:
        ex = examples[row["id"]]
        assert ex["confidence"] == pytest.approx(row["confidence"])
        assert vocabulary.decode(ex["targets"].tolist()) == row["text"]
        assert ex["audio"].shape == (8000,)
    config = input_pipeline.InputConfig(
        task="tasktoy_pl",
        batch_size=4,
        bucket_seconds=(1.0,),
        shuffle=False,
        num_epochs=1,
    )
    batch = next(input_pipeline.make_iterator(config))
    assert batch["confidence"].shape == (4,) and batch["confidence"].dtype == np.float32
    assert set(batch) == {
        "audio",
        "audio_paddings",
        "targets",
        "target_paddings",
        "confidence",
        "weights",
    }


def _bigssl(*argv) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bigssl_jax.cli", *argv], capture_output=True, text=True, timeout=120
    )


def test_vocab_command(tmp_path):
    toy_corpus.write_toy_corpus(
        tmp_path, "cmdtoy", splits={"labeled": (6, True), "unlabeled": (2, False)}
    )
    result = _bigssl("vocab", "--corpus=cmdtoy", f"--data_dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    model = vocab.vocab_path(tmp_path, "cmdtoy", 1024)
    assert model.exists() and str(model) in result.stdout
    assert "(asked 1024; the corpus supports fewer) from 6 transcripts" in result.stdout
    result = _bigssl("vocab", "--corpus=cmdtoy", "--split=unlabeled", f"--data_dir={tmp_path}")
    assert result.returncode == 1
    assert "has no transcripts" in result.stderr and "Traceback" not in result.stderr
