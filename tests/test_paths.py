"""Run directories as URIs (`gs://bucket/run`): every path stays a URI, on a fake bucket.

`fake_gcs` serves `gs://` from a local folder: epath's backends are replaced by one that
maps `gs://bucket/x` to `<root>/bucket/x` (`etils.epath.testing.mock_epath`), and Orbax's
GCS bucket-layout query (the Cloud Storage API) answers "flat namespace". Nothing touches
the network. Array data goes through TensorStore's own GCS driver, which no fake reaches,
so checkpoints are written locally and copied into the bucket, and only what epath reads
(steps, metadata, the JSON item) is read back from it.
"""

import dataclasses
import os
import pathlib
import shutil

import gin
import jax
import jax.numpy as jnp
import pytest
from etils import epath
from etils.epath import gpath
from etils.epath import testing as epath_testing
from orbax.checkpoint._src.path import gcs_utils

from bigssl_jax import checkpointing, gin_utils, inference, paths

UriToyConfig = gin.external_configurable(
    dataclasses.make_dataclass("UriToyConfig", [("width", int, 4)], frozen=True),
    name="UriToyConfig",
    module="test_paths",
)


@pytest.fixture
def bucket_root(tmp_path, monkeypatch):
    """A local folder that `gs://` paths read and write while the test runs."""
    root = tmp_path / "gcs"
    root.mkdir()

    def local(path):
        text = os.fspath(path)
        return str(root / text[len("gs://") :]) if text.startswith("gs://") else text

    def as_uri(path, like):
        if not os.fspath(like).startswith("gs://"):
            return path
        return "gs://" + os.path.relpath(path, root)

    def one(original, path, *args, **kwargs):
        return original(local(path), *args, **kwargs)

    def two(original, path, dst, *args, **kwargs):
        return original(local(path), local(dst), *args, **kwargs)

    def glob(original, pattern):
        return [as_uri(p, pattern) for p in original(local(pattern))]

    def walk(original, top, **kwargs):
        for folder, dirs, files in original(local(top), **kwargs):
            yield as_uri(folder, top), dirs, files

    names = ("exists", "isdir", "listdir", "makedirs", "mkdir", "open", "remove", "rmtree", "stat")
    mocks = {name: one for name in names}
    mocks.update(copy=two, rename=two, replace=two, glob=glob, walk=walk)
    # With TensorFlow installed epath serves gs:// by tf.io.gfile, which no mock reaches.
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
    with epath_testing.mock_epath(**mocks):
        yield root


@pytest.fixture(autouse=True)
def _clear_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_as_path_keeps_uris_and_makes_local_paths_absolute(tmp_path, monkeypatch):
    assert str(paths.as_path("gs://b/runs/x") / "eval" / "7") == "gs://b/runs/x/eval/7"
    assert str(paths.as_path(epath.Path("gs://b/runs/x"))) == "gs://b/runs/x"
    assert str(checkpointing.checkpoint_dir("gs://b/runs/x")) == "gs://b/runs/x/checkpoints"
    monkeypatch.chdir(tmp_path)
    assert str(paths.as_path("run")) == str(tmp_path / "run")
    assert str(paths.as_path(pathlib.Path("/abs/run"))) == "/abs/run"
    assert str(inference.run_dir_of(paths.as_path("gs://b/r/checkpoints/9"))) == "gs://b/r"


def test_configs_written_to_and_read_from_a_bucket(bucket_root):
    gin_utils.parse(gin_bindings=["UriToyConfig.width = 12"])
    assert UriToyConfig().width == 12
    written = gin_utils.write_config("gs://bucket/run")
    assert str(written) == "gs://bucket/run/config.gin"
    run = bucket_root / "bucket/run"
    assert "UriToyConfig.width = 12" in (run / "config.gin").read_text()
    gin_utils.write_operative_config("gs://bucket/run")
    assert "UriToyConfig.width = 12" in (run / "operative_config.gin").read_text()
    assert sorted(os.listdir(run)) == ["config.gin", "operative_config.gin"]

    gin.clear_config()
    assert str(gin_utils.resolve_gin_file("gs://bucket/run/config.gin")) == str(written)
    gin_utils.parse(["gs://bucket/run/config.gin"])
    assert UriToyConfig().width == 12
    with pytest.raises(gin_utils.GinConfigError, match="gs://bucket/none.gin"):
        gin_utils.parse(["gs://bucket/none.gin"])


def test_only_process_zero_writes_configs(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    path = gin_utils.write_config(tmp_path / "run")
    assert str(path) == str(tmp_path / "run" / "config.gin")
    assert not (tmp_path / "run").exists()


def test_checkpoints_found_and_read_in_a_bucket(tmp_path, bucket_root):
    local = tmp_path / "local_run"
    checkpointer = checkpointing.Checkpointer(local, async_save=False)
    checkpointer.save(4, {"params": {"w": jnp.ones(3)}}, {"step": 4, "rng": [1, 2]})
    checkpointer.close()
    shutil.copytree(local, bucket_root / "bucket/run")

    step_dir = "gs://bucket/run/checkpoints/4"
    for where in ("gs://bucket/run", "gs://bucket/run/checkpoints", step_dir):
        assert str(checkpointing.resolve_init_checkpoint(where)) == step_dir
    with pytest.raises(FileNotFoundError, match="gs://bucket/empty"):
        checkpointing.resolve_init_checkpoint("gs://bucket/empty")

    remote = checkpointing.Checkpointer("gs://bucket/run", async_save=False)
    assert str(remote.directory) == "gs://bucket/run/checkpoints"
    assert remote.all_steps() == [4]
    assert remote.restore_meta(4) == {"step": 4, "rng": [1, 2]}
    remote.close()


def test_vocabulary_copied_into_a_bucket_run(tmp_path, bucket_root):
    from bigssl_jax import experiment
    from bigssl_jax.models import asr
    from bigssl_tasks import vocab

    @dataclasses.dataclass(frozen=True)
    class _TextModel:
        vocab_size: int = 32
        vocabulary: str = ""

    source = vocab.vocab_path(tmp_path / "data", "tiny", 32)
    source.parent.mkdir(parents=True)
    source.write_bytes(b"sentencepiece bytes")
    model = experiment.with_vocabulary(_TextModel(), "tiny", tmp_path / "data", "gs://bucket/run")
    assert model.vocabulary == "gs://bucket/run/vocabulary.model"
    assert (bucket_root / "bucket/run/vocabulary.model").read_bytes() == b"sentencepiece bytes"
    assert os.listdir(bucket_root / "bucket/run") == ["vocabulary.model"]
    assert inference.with_run_vocabulary(_TextModel(), paths.as_path("gs://bucket/run")) == model
    with pytest.raises(FileNotFoundError, match="gs://bucket/none.model"):
        asr.load_vocabulary("gs://bucket/none.model")
