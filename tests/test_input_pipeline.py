"""Tests of the input pipeline: buckets, paddings, sharding, determinism, saved positions."""

import json
import subprocess
import sys

import numpy as np
import pytest
import seqio
import tensorflow as tf

from bigssl_jax import feature_converters, input_pipeline
from bigssl_jax.data import registry as registry_lib
from bigssl_jax.data import schema
from bigssl_tasks import corpus_tasks, toy_corpus, vocab

CORPUS = "pipetoy"
TASK = f"{CORPUS}_train_labeled"
BUCKETS = (0.5, 1.0, 2.0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """28 labeled utterances of 0.2-2.0 s in 3 shards, their records read independently."""
    data_dir = tmp_path_factory.mktemp("data")
    toy_corpus.write_toy_corpus(
        data_dir,
        CORPUS,
        splits={"train": (28, True)},
        num_shards=3,
        min_seconds=0.2,
        max_seconds=2.0,
        seed=5,
    )
    files = registry_lib.CorpusRegistry(data_dir / "registry.json").split(CORPUS, "train").files
    records = {}
    for raw in tf.data.TFRecordDataset(list(files)):
        feature = tf.train.Example.FromString(raw.numpy()).features.feature
        records[feature["id"].bytes_list.value[0]] = {
            "audio": schema.pcm16_to_audio(feature["audio"].bytes_list.value[0]),
            "text": vocab.normalize_text(feature["text"].bytes_list.value[0].decode()),
        }
    model = vocab.vocab_path(data_dir, CORPUS, 1024)
    vocab.train_vocabulary([r["text"] for r in records.values()], model)
    corpus_tasks.register_corpus_tasks(CORPUS, data_dir=data_dir, vocab_path=model)
    return {"records": records, "vocab": vocab.get_vocabulary(str(model)), "data_dir": data_dir}


def _config(**overrides) -> input_pipeline.InputConfig:
    settings = {
        "task": TASK,
        "batch_size": 4,
        "bucket_seconds": BUCKETS,
        "target_buckets": (8, 16, 64),
        "keep_fields": ("id",),
    }
    return input_pipeline.InputConfig(**{**settings, **overrides})


def _eval_config(**overrides) -> input_pipeline.InputConfig:
    return _config(**{"shuffle": False, "num_epochs": 1, **overrides})


def _ids(batches) -> list[bytes]:
    return [i for b in batches for i, w in zip(b["id"], b["weights"], strict=True) if w > 0]


def test_one_epoch_batches_match_records(corpus):
    batches = list(input_pipeline.make_iterator(_eval_config()))
    assert sorted(_ids(batches)) == sorted(corpus["records"])
    for batch in batches:
        for row in range(4):
            valid = batch["audio_paddings"][row] == 0.0
            if batch["weights"][row] == 0.0:
                assert batch["id"][row] == b"" and not valid.any()
                assert batch["target_paddings"][row].min() == 1.0
                continue
            record = corpus["records"][batch["id"][row]]
            # Valid samples are a prefix whose length is the utterance's true length.
            assert valid.sum() == len(record["audio"]) and valid[: valid.sum()].all()
            np.testing.assert_array_equal(batch["audio"][row][valid], record["audio"])
            assert not batch["audio"][row][~valid].any()
            tokens = batch["targets"][row][batch["target_paddings"][row] == 0.0]
            assert corpus["vocab"].decode(tokens.tolist()) == record["text"]
            assert batch["confidence"][row] == 1.0


def test_buckets_limit_distinct_shapes(corpus):
    iterator = input_pipeline.make_iterator(_config(batch_size=2, drop_remainder=True))
    batches = [next(iterator) for _ in range(12)]
    audio_widths = {b["audio"].shape[1] for b in batches}
    target_widths = {b["targets"].shape[1] for b in batches}
    assert audio_widths <= {8000, 16000, 32000} and target_widths <= {8, 16, 64}
    assert len(audio_widths) > 1
    for batch in batches:
        assert batch["audio"].shape[0] == 2 and batch["weights"].tolist() == [1.0, 1.0]
        # Each example sits in the smallest bucket that holds it.
        lengths = (1.0 - batch["audio_paddings"]).sum(axis=1)
        width = batch["audio"].shape[1]
        assert lengths.max() > {8000: 0, 16000: 8000, 32000: 16000}[width]


def test_length_filter(corpus):
    config = _eval_config(min_seconds=0.5, max_seconds=1.5)
    lengths = [
        (1.0 - b["audio_paddings"][r]).sum()
        for b in input_pipeline.make_iterator(config)
        for r in range(4)
        if b["weights"][r] > 0
    ]
    expected = [
        len(r["audio"]) for r in corpus["records"].values() if 8000 <= len(r["audio"]) <= 24000
    ]
    assert sorted(lengths) == sorted(expected)


def _valid_rows(batches):
    """(id, valid audio) of every real row."""
    for batch in batches:
        for row in range(batch["audio"].shape[0]):
            if batch["weights"][row] > 0:
                valid = batch["audio_paddings"][row] == 0.0
                yield batch["id"][row], batch["audio"][row][valid]


@pytest.mark.parametrize("factor", [0.9, 1.0, 1.1])
def test_speed_perturbation_resamples_by_linear_interpolation(corpus, factor):
    config = _eval_config(speed_factors=(factor,), bucket_seconds=(0.5, 1.0, 2.0, 4.0))
    seen = 0
    for utterance, audio in _valid_rows(input_pipeline.make_iterator(config)):
        original = corpus["records"][utterance]["audio"]
        new_length = int(np.floor((len(original) - 1) / factor)) + 1
        expected = np.interp(np.arange(new_length) * factor, np.arange(len(original)), original)
        np.testing.assert_allclose(audio, expected, atol=1e-6)
        seen += 1
    assert seen == len(corpus["records"])


def test_speed_factors_are_drawn_per_utterance_reproducibly(corpus):
    config = _config(speed_factors=(0.5, 1.0, 2.0), bucket_seconds=(0.5, 1.0, 2.0, 4.0), seed=3)

    def first_batches():
        iterator = input_pipeline.make_iterator(config)
        return [next(iterator) for _ in range(8)]

    batches = first_batches()
    _assert_same_batches(first_batches(), batches)
    ratios = {
        round(len(corpus["records"][utterance]["audio"]) / len(audio), 1)
        for utterance, audio in _valid_rows(batches)
    }
    assert ratios == {0.5, 1.0, 2.0}
    # A restored position continues with the same draws.
    iterator = input_pipeline.make_iterator(config)
    next(iterator)
    restored = input_pipeline.make_iterator(config)
    restored.set_state(iterator.get_state())
    _assert_same_batches([next(restored) for _ in range(7)], batches[1:])


@pytest.mark.parametrize("num_shards", [2, 4])  # 3 files: whole files, then examples.
def test_shards_are_disjoint_and_cover_everything(corpus, num_shards):
    parts = [
        set(
            _ids(
                input_pipeline.make_iterator(
                    _eval_config(), shard_info=seqio.ShardInfo(index=i, num_shards=num_shards)
                )
            )
        )
        for i in range(num_shards)
    ]
    assert all(parts)
    assert sum(len(p) for p in parts) == len(set().union(*parts)) == len(corpus["records"])


def test_same_seed_same_order(corpus):
    def first_ids(seed):
        iterator = input_pipeline.make_iterator(_config(seed=seed))
        return [tuple(next(iterator)["id"]) for _ in range(4)]

    order = first_ids(3)
    assert first_ids(3) == order
    assert first_ids(4) != order


def _assert_same_batches(got, want):
    for a, b in zip(got, want, strict=True):
        assert set(a) == set(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


# With this corpus and seed an epoch is 9 batches: restore at its very end, and mid-epoch 1.
@pytest.mark.parametrize("consumed,position", [(9, (0, 9)), (12, (1, 3))])
def test_restored_position_yields_the_same_batches(corpus, consumed, position):
    original = input_pipeline.make_iterator(_config(seed=7))
    for _ in range(consumed):
        next(original)
    state = json.loads(json.dumps(original.get_state()))
    assert (state["epoch"], state["batches_in_epoch"]) == position
    expected = [next(original) for _ in range(4)]
    restored = input_pipeline.make_iterator(_config(seed=7))
    restored.set_state(state)
    _assert_same_batches([next(restored) for _ in range(4)], expected)
    assert restored.get_state() == original.get_state()


def test_state_of_another_pipeline_is_refused(corpus):
    state = input_pipeline.make_iterator(_config(seed=7)).get_state()
    with pytest.raises(ValueError, match="seed"):
        input_pipeline.make_iterator(_config(seed=8)).set_state(state)


def test_epochs_are_reshuffled_and_complete(corpus):
    config = _eval_config(shuffle=True, num_epochs=2, seed=1)
    iterator = input_pipeline.make_iterator(config)
    batches = list(iterator)
    assert iterator.get_state()["epoch"] == 2
    ids = _ids(batches)
    half = len(ids) // 2
    assert sorted(ids[:half]) == sorted(ids[half:]) == sorted(corpus["records"])
    assert ids[:half] != ids[half:]


def test_too_few_examples_for_a_batch_is_an_error(corpus):
    with pytest.raises(input_pipeline.InputDataError, match="no batch in a whole epoch"):
        next(input_pipeline.make_iterator(_config(batch_size=64, drop_remainder=True)))


def test_unlabeled_batches_have_no_targets(corpus):
    config = input_pipeline.InputConfig(
        task=f"{CORPUS}_train_unlabeled", batch_size=3, bucket_seconds=BUCKETS
    )
    batch = next(input_pipeline.make_iterator(config))
    assert set(batch) == {"audio", "audio_paddings", "weights"}
    assert batch["audio"].dtype == np.float32 and batch["audio_paddings"].dtype == np.float32


def test_config_validation():
    with pytest.raises(ValueError, match="task"):
        input_pipeline.InputConfig()
    with pytest.raises(ValueError, match="last bucket"):
        input_pipeline.InputConfig(task="x", bucket_seconds=(1.0, 2.0), max_seconds=3.0)
    with pytest.raises(ValueError, match="speed_factors must be positive"):
        input_pipeline.InputConfig(task="x", speed_factors=(1.1, 0.0))
    with pytest.raises(ValueError, match="ascending"):
        feature_converters.AudioFeatureConverter(batch_size=2, audio_buckets=(200, 100))


def test_pad_batch():
    batch = {
        "audio": np.ones((2, 3), np.float32),
        "audio_paddings": np.zeros((2, 3), np.float32),
        "targets": np.ones((2, 2), np.int32),
        "target_paddings": np.zeros((2, 2), np.float32),
    }
    padded = feature_converters.pad_batch(batch, audio_length=5, target_length=4)
    assert padded["audio"].shape == (2, 5) and padded["targets"].shape == (2, 4)
    np.testing.assert_array_equal(padded["audio_paddings"][0], [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(padded["targets"][1], [1, 1, 0, 0])
    with pytest.raises(ValueError, match="cannot pad"):
        feature_converters.pad_batch(batch, audio_length=2)


def test_show_batches_command(corpus):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bigssl_jax.cli",
            "show-batches",
            f"--corpus={CORPUS}",
            f"--data_dir={corpus['data_dir']}",
            "--batch_size=3",
            "--num_batches=2",
            "--gin_bindings=InputConfig.bucket_seconds = [1, 2]",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"show-batches: task {TASK}, batch_size 3, buckets 1, 2 s")
    batch_lines = [line for line in lines if line.startswith("batch ")]
    assert len(batch_lines) == 2 and "targets [3, " in batch_lines[0]
    transcripts = [line.split('"')[1] for line in lines if line.startswith("  ")]
    known = {record["text"] for record in corpus["records"].values()}
    assert len(transcripts) == 4 and set(transcripts) <= known
