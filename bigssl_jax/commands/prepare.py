"""`bigssl prepare`: turn audio + transcripts into sharded TFRecords and register them.

    bigssl prepare --format=librispeech --source=LibriSpeech/dev-clean --name=librispeech
    bigssl prepare --format=librispeech --source=librilight/small --name=librilight \
        --split=unlabeled --max_seconds=35
    bigssl prepare --format=manifest --source=my_data/train.jsonl --name=mine --split=train
    bigssl prepare --format=tfds --tfds_data_dir=~/tensorflow_datasets --source=dev_clean
    bigssl prepare --embedded=tiny            # every split of `bigssl make-corpus --preset=tiny`

Shards go to `<data_dir>/prepared/<name>/<split>-<plan tag>-0000i-of-000NN.tfrecord`, a
report of skipped utterances to `<split>.report.json` beside them; re-running resumes, and a
re-run with another plan (source, --num_shards, --max_seconds) switches the registry to its
new shards only once they are all written (`bigssl_jax/data/prepare.py`). One line per split
is printed: kept, hours, skipped by reason.
"""

import pathlib
import sys

from absl import flags

from bigssl_jax import paths
from bigssl_jax.commands import common_flags
from bigssl_jax.data import librispeech, manifests, prepare, sources, tfds_source

FORMATS = ("librispeech", "manifest", "tfds", "embedded")

_FORMAT = flags.DEFINE_enum(
    "format", None, FORMATS, "Layout of --source (not needed with --embedded)."
)
_SOURCE = flags.DEFINE_string(
    "source",
    None,
    "LibriSpeech-layout folder, manifest file (.jsonl/.tsv), embedded corpus "
    "root, or (tfds) the TFDS split name such as dev_clean.",
)
_NAME = flags.DEFINE_string(
    "name", None, "Corpus name in the registry (default: embedded_<preset> / the TFDS name)."
)
_SPLIT = flags.DEFINE_string(
    "split",
    None,
    "Split name (default: the source folder's or manifest's name, or the TFDS "
    "split). Not used with --format=embedded, which prepares every split.",
)
_EMBEDDED = flags.DEFINE_string(
    "embedded",
    None,
    "Prepare the embedded corpus of this preset from "
    "<data_dir>/embedded/<preset> (or --source) as corpus embedded_<preset> (or --name).",
)
_STRICT = flags.DEFINE_bool(
    "strict", False, "Stop at the first bad utterance (exit code 1) instead of skipping it."
)
_MAX_SECONDS = flags.DEFINE_float(
    "max_seconds", None, "Skip utterances longer than this many seconds."
)
_NUM_SHARDS = flags.DEFINE_integer(
    "num_shards", None, "Shards per split (default: about one per 200 MiB of source audio)."
)
_SAMPLE_RATE = flags.DEFINE_integer(
    "sample_rate", None, "Sample rate of headerless .raw/.pcm audio (16-bit mono PCM)."
)
_UNLABELED = flags.DEFINE_bool(
    "unlabeled", False, "Prepare as an unlabeled split; transcripts are kept as oracle_text."
)
_TFDS_DATA_DIR = flags.DEFINE_string(
    "tfds_data_dir", None, "TFDS data directory holding the prepared builder (no downloads)."
)
_TFDS_NAME = flags.DEFINE_string("tfds_name", "librispeech", "TFDS builder name.")


class UsageError(Exception):
    """Flags that do not fit together."""


def _default_split(source: str) -> str:
    path = pathlib.Path(source)
    if path.is_file():
        return path.parent.name if path.stem == "manifest" else path.stem
    return path.name


def _single_source(fmt: str) -> tuple[str, str, sources.Source]:
    """(corpus, split, source) for the one-split formats."""
    if not _SOURCE.value:
        raise UsageError(f"--format={fmt} needs --source")
    if fmt == "tfds":
        source = tfds_source.TfdsSource(
            _SOURCE.value,
            data_dir=_TFDS_DATA_DIR.value,
            name=_TFDS_NAME.value,
            unlabeled=_UNLABELED.value,
        )
        return _NAME.value or _TFDS_NAME.value, _SPLIT.value or _SOURCE.value, source
    if not _NAME.value:
        raise UsageError(f"--format={fmt} needs --name (the corpus name)")
    reader = librispeech.librispeech_source if fmt == "librispeech" else manifests.manifest_source
    source = reader(_SOURCE.value, unlabeled=_UNLABELED.value, sample_rate=_SAMPLE_RATE.value)
    return _NAME.value, _SPLIT.value or _default_split(_SOURCE.value), source


def _run(data_dir: pathlib.Path, options: prepare.PrepareOptions) -> list[prepare.SplitReport]:
    fmt = "embedded" if _EMBEDDED.value else _FORMAT.value
    if fmt is None:
        raise UsageError("give --format (librispeech|manifest|tfds|embedded) or --embedded")
    if fmt == "embedded":
        if _SPLIT.value:
            raise UsageError("--split does not apply to the embedded corpus (every split is made)")
        preset = _EMBEDDED.value
        if not (_SOURCE.value or preset):
            raise UsageError("--format=embedded needs --source (the corpus root) or --embedded")
        root = _SOURCE.value or paths.embedded_corpus_dir(data_dir, preset)
        name = _NAME.value or (prepare.embedded_corpus_name(preset) if preset else None)
        return prepare.prepare_embedded(root, data_dir=data_dir, corpus=name, options=options)
    corpus, split, source = _single_source(fmt)
    return [
        prepare.prepare_split(
            source, data_dir=data_dir, corpus=corpus, split=split, options=options
        )
    ]


def main(argv) -> int:
    """Prepares the split(s) named by the flags; prints one summary line per split."""
    if common_flags.JOBS.value < 1 or (_NUM_SHARDS.value is not None and _NUM_SHARDS.value < 1):
        print("bigssl prepare: --jobs and --num_shards must be at least 1", file=sys.stderr)
        return 2
    data_dir = common_flags.data_dir()
    options = prepare.PrepareOptions(
        strict=_STRICT.value,
        max_seconds=_MAX_SECONDS.value,
        num_shards=_NUM_SHARDS.value,
        jobs=common_flags.JOBS.value,
    )
    try:
        reports = _run(data_dir, options)
    except UsageError as error:
        print(f"bigssl prepare: {error}", file=sys.stderr)
        return 2
    except (
        prepare.PrepareError,
        sources.SourceError,
        ValueError,
        OSError,
    ) as error:
        print(f"bigssl prepare: {' '.join(str(error).split())}", file=sys.stderr)  # one line
        return 1
    for report in reports:
        print(report.summary())
    return 0
