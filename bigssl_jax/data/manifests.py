"""JSONL / TSV manifests with an `audio` column, and the embedded synthetic corpus
(`<root>/<split>/manifest.jsonl` and `<root>/corpus.json`). See `data.sources` for what a
source yields.
"""

import dataclasses
import json
import os
import pathlib
from collections.abc import Iterator

from bigssl_jax.data import audio_io, schema, sources

MANIFEST_NAME = "manifest.jsonl"
EMBEDDED_INFO_NAME = "corpus.json"
_MANIFEST_KEYS = ("audio", "id", "speaker", "text", "sample_rate")
_RESERVED = frozenset(schema.CORE_FIELDS) | {schema.TEXT_FIELD}


def _tsv_row(line: str, header: list[str]) -> dict | tuple[str, str]:
    cells = line.split("\t")
    if len(cells) != len(header):
        return "bad_manifest_line", f"{len(cells)} columns, the header has {len(header)}"
    return dict(zip(header, cells, strict=True))


def _json_row(line: str) -> dict | tuple[str, str]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        return "bad_manifest_line", f"invalid JSON: {error.msg}"
    if not isinstance(row, dict) or not isinstance(row.get("audio"), str):
        return "bad_manifest_line", "not an object with a string 'audio' field"
    return row


def _manifest_rows(path: pathlib.Path) -> Iterator[tuple[str, dict | tuple[str, str]]]:
    """Yields (location, row) per data line of a JSONL or TSV manifest.

    A line that cannot be parsed comes as (location, (reason, detail)) instead.
    """
    kind = path.suffix.lower()
    if kind not in (".jsonl", ".json", ".ndjson", ".tsv"):
        raise sources.SourceError(f"manifest {path}: unknown format '{kind}' (use .jsonl or .tsv)")
    header = None
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        location = f"{path}:{number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            yield location, ("manifest_not_utf8", f"line is not UTF-8: {error.reason}")
            continue
        if not line.strip():
            continue
        if kind == ".tsv" and header is None:
            header = line.split("\t")
            if "audio" not in header:
                raise sources.SourceError(f"manifest {path}: the header has no 'audio' column")
            continue
        yield location, _tsv_row(line, header) if kind == ".tsv" else _json_row(line)


def _as_string(value) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def _manifest_entry(
    folder: pathlib.Path, location: str, row: dict, sample_rate: int | None
) -> sources.Entry:
    """One manifest row -> sources.Entry (audio relative to the manifest's folder)."""
    audio = folder / row["audio"]
    uid = _as_string(row.get("id")) or pathlib.Path(row["audio"]).with_suffix("").as_posix()
    extra = {
        key: _as_string(value)
        for key, value in row.items()
        if key not in _MANIFEST_KEYS and key not in _RESERVED
    }
    text = row.get("text")
    entry = sources.Entry(
        id=uid,
        location=str(audio),
        speaker=_as_string(row.get("speaker")),
        text=None if text is None else _as_string(text),
        extra=extra,
        size=sources.file_size(audio),
    )
    rate = row.get("sample_rate")
    if rate in (None, "") or not audio_io.is_raw(audio):
        return dataclasses.replace(entry, sample_rate=sample_rate)
    try:
        return dataclasses.replace(entry, sample_rate=int(float(rate)))
    except (TypeError, ValueError):
        return dataclasses.replace(
            entry,
            problem=("bad_manifest_line", f"{location}: sample_rate '{rate}' is not a number"),
        )


def manifest_source(
    path: os.PathLike, *, unlabeled: bool = False, sample_rate: int | None = None
) -> sources.FileSource:
    """Lists a JSONL or TSV manifest (one utterance per line, TSV with a header row).

    Fields: `audio` (path relative to the manifest's folder, or absolute; required),
    optional `text`, `speaker`, `id` (default: the audio path without extension) and
    `sample_rate` (for headerless raw audio). Every other field is kept as an extra
    string feature; `duration` and other core feature names are recomputed, not copied.
    The split is labeled iff any line has a `text` field; then a line without one is
    skipped as `missing_transcript`.

    Args:
      path: the manifest file (`.jsonl`/`.json`/`.ndjson` or `.tsv`).
      unlabeled: ignore transcripts for training (kept as `oracle_text`).
      sample_rate: default rate of raw audio files without a `sample_rate` field.

    Returns:
      The split as a `sources.FileSource`, in manifest order.
    """
    path = pathlib.Path(path).resolve()
    if not path.is_file():
        raise sources.SourceError(f"manifest {path} does not exist")
    entries = []
    for location, row in _manifest_rows(path):
        if isinstance(row, tuple):
            entries.append(sources.Entry(id=location, location=location, problem=row))
        else:
            entries.append(_manifest_entry(path.parent, location, row, sample_rate))
    labeled = any(entry.text is not None for entry in entries)
    if labeled and not unlabeled:
        entries = [
            entry
            if entry.text is not None or entry.problem
            else dataclasses.replace(
                entry, problem=("missing_transcript", "the line has no 'text' field")
            )
            for entry in entries
        ]
    extra_fields = sorted({key for entry in entries for key in entry.extra})
    if unlabeled and labeled:
        entries = sources.as_unlabeled(entries)
        extra_fields = sorted({*extra_fields, schema.ORACLE_TEXT_FIELD})
    return sources.FileSource(
        str(path), entries, labeled=labeled and not unlabeled, extra_fields=tuple(extra_fields)
    )


def embedded_preset(root: os.PathLike) -> str:
    """The preset an embedded corpus was made with (`parameters.preset` of its `corpus.json`).

    Raises:
      sources.SourceError: `root` holds no complete corpus (`corpus.json` is written last).
    """
    info_path = pathlib.Path(root) / EMBEDDED_INFO_NAME
    if not info_path.is_file():
        raise sources.SourceError(
            f"no complete embedded corpus at {root} (no {EMBEDDED_INFO_NAME}); "
            "run `bigssl make-corpus` first"
        )
    try:
        return str(json.loads(info_path.read_text())["parameters"]["preset"])
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise sources.SourceError(f"{info_path} is not a corpus description: {error}") from error


def embedded_sources(root: os.PathLike) -> dict[str, sources.FileSource]:
    """Every split of an embedded synthetic corpus: `<root>/<split>/manifest.jsonl`.

    A split is labeled iff its lines have `text`; the unlabeled split's `oracle_text`
    is kept as an extra field like any other.

    Returns:
      split name -> sources.FileSource, sorted by name.

    Raises:
      sources.SourceError: the corpus is incomplete (see `embedded_preset`) or has no split.
    """
    embedded_preset(root)
    manifests = [
        path
        for path in sorted(pathlib.Path(root).glob(f"*/{MANIFEST_NAME}"))
        if not path.parent.name.startswith(".")
    ]
    if not manifests:
        raise sources.SourceError(f"embedded corpus {root} has no */{MANIFEST_NAME}")
    return {manifest.parent.name: manifest_source(manifest) for manifest in manifests}
