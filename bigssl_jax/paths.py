"""Where the project keeps its data on disk.

Everything the data commands write lives under one data directory:

        <data_dir>/embedded/<preset>/       the synthetic corpus (FLAC + manifest.jsonl per split)
        <data_dir>/prepared/<corpus>/       sharded TFRecords per split (`bigssl prepare`)
        <data_dir>/registry.json            corpus registry: name -> splits, shards, sizes
        <data_dir>/vocab/                   sentencepiece models (`bigssl vocab`)

The data directory is `--data_dir`, else `$BIGSSL_DATA_DIR`, else `./bigssl_data`.

Run directories (`--model_dir`) and checkpoints may be URIs (`gs://bucket/runs/x` on Cloud
TPU). `pathlib` folds `gs://b/r` into `gs:/b/r`, so code that touches a run directory goes
through `as_path`, an `etils.epath.Path`: URIs stay URIs (TensorFlow's gfile serves them,
`gs://` included) and local paths are made absolute.
"""

import os
import pathlib

from etils import epath

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
GIN_DIR = REPO_ROOT / "gin"


def as_path(path: os.PathLike | str) -> epath.Path:
    """`path` as an `epath.Path`: a URI (`gs://b/r`) as it is, a local path made absolute."""
    text = os.fspath(path)
    return epath.Path(text) if "://" in text else epath.Path(text).absolute()


def default_data_dir() -> pathlib.Path:
    """The data directory used when `--data_dir` is not given."""
    return pathlib.Path(os.environ.get("BIGSSL_DATA_DIR", "bigssl_data"))


def embedded_corpus_dir(data_dir: os.PathLike, preset: str) -> pathlib.Path:
    """Root of the synthetic corpus made by `bigssl make-corpus --preset=...`."""
    return pathlib.Path(data_dir) / "embedded" / preset


def prepared_dir(data_dir: os.PathLike, corpus: str) -> pathlib.Path:
    """Directory of a prepared corpus's TFRecord shards."""
    return pathlib.Path(data_dir) / "prepared" / corpus


def registry_path(data_dir: os.PathLike) -> pathlib.Path:
    """The corpus registry file."""
    return pathlib.Path(data_dir) / "registry.json"


def vocab_dir(data_dir: os.PathLike) -> pathlib.Path:
    """Directory of trained sentencepiece models."""
    return pathlib.Path(data_dir) / "vocab"
