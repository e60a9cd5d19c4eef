"""Tests of bigssl_tasks.classification_tasks: label lists, held-out split, batches."""

import hashlib

import numpy as np
import pytest
import seqio
import tensorflow as tf

from bigssl_jax import input_pipeline
from bigssl_tasks import classification_tasks, corpus_tasks, toy_corpus

CORPUS = "classtoy"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    ids = toy_corpus.write_toy_corpus(
        data_dir, CORPUS, splits={"train": (30, True), "raw": (6, False)}, max_seconds=0.6
    )
    return {"data_dir": data_dir, "ids": ids}


def _take(task: str) -> list[dict]:
    dataset = seqio.get_mixture_or_task(task).get_dataset(
        None, split=corpus_tasks.SPLIT, shuffle=False, try_in_mem_cache=False
    )
    return list(dataset.as_numpy_iterator())


def test_kind_and_field_round_trip():
    assert classification_tasks.field_of_kind(classification_tasks.task_kind("accent")) == "accent"
    assert classification_tasks.field_of_kind("labeled") is None


def test_heldout_is_the_sha256_rule_and_about_the_percentage():
    ids = [f"utt-{i}" for i in range(2000)]
    mask = classification_tasks.heldout_mask(ids)
    expected = [
        int.from_bytes(hashlib.sha256(u.encode()).digest()[:8], "big") % 100 < 20 for u in ids
    ]
    np.testing.assert_array_equal(mask, expected)
    assert 0.17 < mask.mean() < 0.23


def test_labels_are_sorted_distinct_values_and_stored(corpus):
    data_dir = corpus["data_dir"]
    labels = classification_tasks.load_labels(data_dir, CORPUS, "speaker")
    assert labels == ("spk0", "spk1", "spk2")
    path = classification_tasks.labels_path(data_dir, CORPUS, "speaker")
    assert path.read_text().splitlines() == list(labels)


def test_tasks_give_class_ids_and_split_fit_from_heldout(corpus):
    names = classification_tasks.register_classification_tasks(
        CORPUS, field="accent", data_dir=corpus["data_dir"], num_classes=2
    )
    assert len(names) == 6  # 2 splits x (all, fit, heldout)
    every = _take(f"{CORPUS}_train_classify_accent")
    assert sorted(ex["id"].decode() for ex in every) == sorted(corpus["ids"]["train"])
    for ex in every:
        assert ex["targets"].tolist() == [("gb", "us").index(ex["accent"].decode())]
        assert ex["confidence"] == 1.0
    fit = {ex["id"].decode() for ex in _take(f"{CORPUS}_train.fit_classify_accent")}
    heldout = {ex["id"].decode() for ex in _take(f"{CORPUS}_train.heldout_classify_accent")}
    expected = {u for u in corpus["ids"]["train"] if classification_tasks.is_heldout(u)}
    assert heldout == expected and fit == set(corpus["ids"]["train"]) - expected


def test_batches_carry_the_class_as_one_target(corpus):
    classification_tasks.register_classification_tasks(
        CORPUS, field="speaker", data_dir=corpus["data_dir"]
    )
    config = input_pipeline.InputConfig(
        task=f"{CORPUS}_raw_classify_speaker",
        batch_size=8,
        bucket_seconds=(1.0,),
        shuffle=False,
        num_epochs=1,
        keep_fields=("id", "speaker"),
    )
    batch = next(input_pipeline.make_iterator(config))
    real = batch["weights"] > 0
    speakers = [s.decode() for s in batch["speaker"][real]]
    assert batch["targets"][real, 0].tolist() == [int(s[-1]) for s in speakers]
    assert batch["target_paddings"][real, 0].tolist() == [0.0] * int(real.sum())


def test_too_many_labels_and_unknown_fields_are_errors(corpus):
    with pytest.raises(ValueError, match="3 labels but the model has num_classes=2"):
        classification_tasks.register_classification_tasks(
            CORPUS, field="speaker", data_dir=corpus["data_dir"], num_classes=2
        )
    with pytest.raises(ValueError, match="no split of corpus"):
        classification_tasks.register_classification_tasks(
            CORPUS, field="emotion", data_dir=corpus["data_dir"]
        )


def test_value_missing_from_the_label_list_names_the_utterance(corpus):
    dataset = tf.data.Dataset.from_tensors({"id": tf.constant("u1"), "accent": tf.constant("fr")})
    out = classification_tasks.field_to_class(dataset, field="accent", labels=("gb", "us"))
    with pytest.raises(tf.errors.InvalidArgumentError, match="u1"):
        list(out.as_numpy_iterator())
