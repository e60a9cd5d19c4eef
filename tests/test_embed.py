"""Utterance embeddings: padding-free pooled values, shards + manifests, checkpoints, the CLI."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from bigssl_jax import checkpointing
from bigssl_jax.data import registry as registry_lib
from bigssl_jax.data import schema
from bigssl_jax.jobs import embeddings
from bigssl_jax.models import classifier
from bigssl_jax.models import encoder as encoder_lib
from bigssl_tasks import corpus_tasks, toy_corpus

CORPUS = "embedtoy"
ENCODER = encoder_lib.EncoderConfig(
    model_dim=16, num_layers=2, num_heads=2, subsampling_channels=4, use_relative_position=True
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    toy_corpus.write_toy_corpus(
        data_dir, CORPUS, splits={"train": (9, True)}, min_seconds=0.3, max_seconds=0.9
    )
    return data_dir


def _audio_by_id(data_dir) -> dict[str, np.ndarray]:
    import tensorflow as tf

    files = registry_lib.CorpusRegistry(data_dir / "registry.json").split(CORPUS, "train").files
    out = {}
    for record in tf.data.TFRecordDataset(list(files)):
        example = tf.train.Example.FromString(record.numpy())
        features = example.features.feature
        utt = features["id"].bytes_list.value[0].decode()
        out[utt] = schema.pcm16_to_audio(features["audio"].bytes_list.value[0])
    return out


def test_embed_split_matches_unbatched_unpadded_utterances(data_dir, tmp_path):
    corpus_tasks.register_corpus_tasks(CORPUS, data_dir=data_dir)
    config = embeddings.EmbedConfig(encoder=ENCODER, batch_size=4, bucket_seconds=(0.5, 1.0))
    params = embeddings.load_params(config, None, seed=3)
    info = embeddings.embed_split(
        config, params, corpus=CORPUS, split="train", data_dir=data_dir, output_dir=tmp_path
    )
    assert (info["num_utterances"], info["layers"], info["dim"]) == (9, 3, 16)
    values, rows = embeddings.load_split(tmp_path / "train")
    assert values.shape == (9, 3, 16)
    assert set(rows[0]) == {"id", "speaker", "accent"}
    audio = _audio_by_id(data_dir)
    assert sorted(row["id"] for row in rows) == sorted(audio)
    embed = jax.jit(
        lambda a: classifier.pooled_layers(ENCODER, params["encoder"], config.log_mel, a, 0 * a)
    )
    for value, row in list(zip(values, rows, strict=True))[:3]:  # one compile per length
        alone = np.asarray(embed(audio[row["id"]][None]))[0]
        np.testing.assert_allclose(value, alone, atol=2e-4, rtol=2e-3)


def test_weighted_layer_reads_a_classifier_checkpoint(tmp_path):
    config = embeddings.EmbedConfig(encoder=ENCODER, layer="weighted")
    encoder_params = embeddings.load_params(embeddings.EmbedConfig(encoder=ENCODER), None, seed=0)[
        "encoder"
    ]
    logits = np.array([0.0, 1.0, -1.0], np.float32)
    state = {"params": {"encoder": encoder_params, "head": {"layer_logits": logits}}}
    saver = checkpointing.Checkpointer(tmp_path, async_save=False)
    saver.save(7, state, {"step": 7})
    saver.close()
    params = embeddings.load_params(config, tmp_path)
    np.testing.assert_array_equal(params["head"]["layer_logits"], logits)
    audio = np.random.default_rng(0).standard_normal((2, 8000)).astype(np.float32) * 0.1
    mixed = embeddings.make_embed_fn(config)(params, audio, np.zeros_like(audio))
    every = embeddings.make_embed_fn(embeddings.EmbedConfig(encoder=ENCODER))(
        params, audio, np.zeros_like(audio)
    )
    weights = np.exp(logits) / np.exp(logits).sum()
    assert mixed.shape == (2, 1, 16)
    np.testing.assert_allclose(mixed[:, 0], np.einsum("l,bld->bd", weights, every), atol=1e-5)
    with pytest.raises(ValueError, match="needs a classifier checkpoint"):
        embeddings.load_params(config, None)
    # A classifier with fitted whitening: the mix is over the whitened layers, as in its head.
    rng = np.random.default_rng(1)
    statistics = {
        "mean": rng.standard_normal((3, 16)).astype(np.float32),
        "projection": rng.standard_normal((3, 16, 16)).astype(np.float32),
    }
    saver = checkpointing.Checkpointer(tmp_path / "whitened", async_save=False)
    saver.save(7, {**state, "model_state": {classifier.STATISTICS: statistics}}, {"step": 7})
    saver.close()
    params = embeddings.load_params(config, tmp_path / "whitened")
    np.testing.assert_array_equal(
        params[classifier.STATISTICS]["projection"], statistics["projection"]
    )
    mixed = embeddings.make_embed_fn(config)(params, audio, np.zeros_like(audio))
    whitened = np.einsum("bld,lde->ble", every - statistics["mean"], statistics["projection"])
    expected = np.einsum("l,bld->bd", weights, whitened)
    np.testing.assert_allclose(mixed[:, 0], expected, rtol=1e-4, atol=1e-4)


def test_missing_shard_is_reported(tmp_path):
    embeddings.write_shard(tmp_path, np.zeros((1, 1, 2)), [{"id": "a"}], index=0, count=2)
    embeddings.write_info(tmp_path, {"shards": 2})
    with pytest.raises(FileNotFoundError, match="embeddings-00001-of-00002.npy"):
        embeddings.load_split(tmp_path)
    with pytest.raises(ValueError, match="2 manifest rows for 1 embeddings"):
        embeddings.write_shard(tmp_path, np.zeros((1, 1, 2)), [{"id": "a"}, {"id": "b"}])


def _bigssl(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bigssl_jax.cli", "embed", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_cli_embeds_and_probes_and_reports_user_errors(data_dir, tmp_path):
    out = tmp_path / "emb"
    result = _bigssl(
        "--gin_file=models/smoke.gin",
        "--gin_bindings=EncoderConfig.model_dim = 16",
        "--gin_bindings=EncoderConfig.num_heads = 2",
        "--gin_bindings=EncoderConfig.subsampling_channels = 4",
        f"--data_dir={data_dir}",
        f"--corpus={CORPUS}",
        f"--output_dir={out}",
        "--batch_size=4",
        "--probes=accent:train:train",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "embed: train: 9 of 9 utterances" in result.stdout
    assert "| layer | random init |" in result.stdout
    probe = json.loads((out / "probes.json").read_text())["probes"][0]
    assert probe["probe"] == "accent:train:train" and len(probe["layers"]) == 3
    assert (out / "probes.png").exists()

    missing = _bigssl(f"--data_dir={data_dir}", "--corpus=nope", f"--output_dir={out}")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1].startswith("embed: ")
    assert "nope" in missing.stderr
