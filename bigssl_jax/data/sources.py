"""Readers for the corpus layouts `bigssl prepare` accepts.

A `Source` is an ordered, indexable list of utterances of one split. `prepare` cuts
it into contiguous index ranges (one per shard) and calls `read(start, stop)`, which
yields an `Utterance` (16 kHz int16 audio loaded) or a `Skipped` record (with its
reason) for every index in the range: nothing is dropped silently.

Layouts:
  * LibriSpeech trees, `SPEAKER/CHAPTER/*.flac` + `SPEAKER-CHAPTER.trans.txt`
    (`librispeech_source`); a tree without any `.trans.txt` (Libri-Light) is unlabeled.
  * JSONL / TSV manifests with an `audio` column (`manifest_source`).
  * The embedded synthetic corpus, `<root>/<split>/manifest.jsonl` (`embedded_sources`).
  * A TFDS builder with its data already on disk, e.g. `librispeech` (`TfdsSource`).
"""

import abc
import dataclasses
import functools
import hashlib
import json
import os
import pathlib
from collections.abc import Iterator, Sequence

import numpy as np

from bigssl_jax.data import audio_io, schema

MANIFEST_NAME = "manifest.jsonl"
EMBEDDED_INFO_NAME = "corpus.json"
_MANIFEST_KEYS = ("audio", "id", "speaker", "text", "sample_rate")
_RESERVED = frozenset(schema.CORE_FIELDS) | {schema.TEXT_FIELD}
_TEXT_ONLY = frozenset({"missing_transcript", "transcript_not_utf8"})  # moot when unlabeled


class SourceError(Exception):
    """A source that cannot be listed at all (missing folder, unknown format, ...)."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One utterance as listed by a file source, before its audio is read.

    Attributes:
      id: utterance id, unique within the split.
      location: where it came from (audio path, or `manifest:line`), for reports.
      speaker: speaker id, "" when unknown.
      text: transcript, None when the source has none for it.
      extra: extra string fields kept as features.
      sample_rate: rate of a headerless raw file.
      size: bytes of the audio file (0 when missing).
      problem: (reason, detail) found while listing; the entry is then skipped.
    """

    id: str
    location: str
    speaker: str = ""
    text: str | None = None
    extra: dict = dataclasses.field(default_factory=dict)
    sample_rate: int | None = None
    size: int = 0
    problem: tuple[str, str] | None = None


@dataclasses.dataclass(frozen=True)
class Utterance:
    """One readable utterance: int16 audio [S] at 16 kHz plus its labels."""

    id: str
    location: str
    audio: np.ndarray
    speaker: str = ""
    text: str | None = None
    extra: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Skipped:
    """One utterance left out, and why (`reason` is a short code, `detail` prose)."""

    id: str
    location: str
    reason: str
    detail: str

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


class Source(abc.ABC):
    """An ordered list of the utterances of one split."""

    description: str  # recorded in the registry as where the corpus came from
    labeled: bool
    extra_fields: tuple[str, ...]

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of utterances (kept or not)."""

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """A digest that changes whenever the listing changes (guards resumed runs)."""

    @abc.abstractmethod
    def estimated_bytes(self) -> int:
        """Rough size of the audio, to choose a default number of shards."""

    @abc.abstractmethod
    def read(self, start: int, stop: int) -> Iterator[Utterance | Skipped]:
        """Yields one Utterance or Skipped per index in [start, stop), in order."""


@dataclasses.dataclass
class FileSource(Source):
    """A source whose utterances are audio files listed up front."""

    description: str
    entries: Sequence[Entry]
    labeled: bool
    extra_fields: tuple[str, ...] = ()

    def __post_init__(self):
        self.entries = _mark_duplicates(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def fingerprint(self) -> str:
        digest = hashlib.sha256(f"{self.labeled}|{self.extra_fields}".encode())
        for entry in self.entries:
            digest.update(json.dumps(dataclasses.asdict(entry), sort_keys=True).encode())
        return digest.hexdigest()

    def estimated_bytes(self) -> int:
        return sum(entry.size for entry in self.entries)

    def read(self, start: int, stop: int) -> Iterator[Utterance | Skipped]:
        for entry in self.entries[start:stop]:
            if entry.problem is not None:
                yield Skipped(entry.id, entry.location, *entry.problem)
                continue
            try:
                audio = audio_io.load_audio(entry.location, sample_rate=entry.sample_rate)
            except audio_io.AudioError as error:
                yield Skipped(entry.id, entry.location, error.reason, error.detail)
                continue
            yield Utterance(entry.id, entry.location, audio, entry.speaker, entry.text, entry.extra)


def _mark_duplicates(entries: Sequence[Entry]) -> list[Entry]:
    """Gives every repeat of a usable id the problem `duplicate_id` (the first one is kept)."""
    first: dict[str, str] = {}
    marked = []
    for entry in entries:
        if entry.problem is None and entry.id in first:
            detail = f"id '{entry.id}' is also {first[entry.id]}"
            entry = dataclasses.replace(entry, problem=("duplicate_id", detail))
        elif entry.problem is None:
            first[entry.id] = entry.location
        marked.append(entry)
    return marked


def _as_unlabeled(entries: list[Entry]) -> list[Entry]:
    """Moves transcripts to the `oracle_text` extra field (kept for analysis only)."""
    out = []
    for entry in entries:
        problem = entry.problem if entry.problem and entry.problem[0] not in _TEXT_ONLY else None
        extra = dict(entry.extra)
        if entry.text is not None:
            extra[schema.ORACLE_TEXT_FIELD] = entry.text
        out.append(dataclasses.replace(entry, text=None, extra=extra, problem=problem))
    return out


def split_labeled_pool(
    labeled: FileSource, unlabeled: FileSource, fraction: float, seed: int | Sequence[int]
) -> tuple[FileSource, FileSource]:
    """Keeps a seeded random share of a labeled pool labeled; the rest joins the unlabeled split.

    round(fraction * N) of the N utterances of `labeled` (at least one) are drawn without
    replacement with `numpy.random.default_rng(seed)` and stay labeled, in their original
    order; the others are appended to `unlabeled` with their transcripts hidden (moved to
    `oracle_text`, as `unlabeled=True` does for the readers). Used for data-efficiency
    experiments that vary the labeled share of one corpus.

    Args:
      labeled: the labeled pool.
      unlabeled: the corpus's unlabeled split.
      fraction: labeled share, in (0, 1].
      seed: seed of the draw, an int or a sequence of ints (the same seed draws the same
        subset).

    Returns:
      (the labeled subset, the unlabeled split plus the rest of the pool).

    Raises:
      ValueError: `fraction` is not in (0, 1] or `labeled` holds no transcripts.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the labeled fraction must be in (0, 1], got {fraction}")
    if not labeled.labeled:
        raise ValueError(f"{labeled.description} is not a labeled split")
    count = max(1, round(fraction * len(labeled)))
    chosen = np.zeros(len(labeled), bool)
    chosen[np.random.default_rng(seed).choice(len(labeled), count, replace=False)] = True
    kept = [entry for entry, keep in zip(labeled.entries, chosen, strict=True) if keep]
    rest = [entry for entry, keep in zip(labeled.entries, chosen, strict=True) if not keep]
    tag = f"{fraction:g} of {labeled.description} (seed {seed})"
    subset = FileSource(tag, kept, labeled=True, extra_fields=labeled.extra_fields)
    fields = {*unlabeled.extra_fields, *labeled.extra_fields}
    if rest:
        fields.add(schema.ORACLE_TEXT_FIELD)
    pool = FileSource(
        f"{unlabeled.description} + the rest of {tag}",
        [*unlabeled.entries, *_as_unlabeled(rest)],
        labeled=False,
        extra_fields=tuple(sorted(fields)),
    )
    return subset, pool


def _file_size(path: pathlib.Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


@dataclasses.dataclass(frozen=True)
class _Transcript:
    """One line of a `.trans.txt`: its text, or why it is unusable, and where it is."""

    text: str | None
    problem: tuple[str, str] | None
    location: str


def _read_transcripts(path: pathlib.Path) -> dict[str, _Transcript]:
    """Parses a `.trans.txt` file (`UTT-ID transcript` per line) -> id -> _Transcript."""
    transcripts = {}
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        uid, _, text = line.strip().partition(b" ")
        if not uid:
            continue
        location = f"{path}:{number}"
        try:
            transcripts[uid.decode("latin-1")] = _Transcript(
                text.decode("utf-8").strip(), None, location
            )
        except UnicodeDecodeError as error:
            problem = ("transcript_not_utf8", f"{location}: {error.reason}")
            transcripts[uid.decode("latin-1")] = _Transcript(None, problem, location)
    return transcripts


def _tree_entry(root: pathlib.Path, path: pathlib.Path, sample_rate: int | None) -> Entry:
    """An entry for `root/.../SPEAKER/CHAPTER/NAME.ext` (speaker/chapter from the folders)."""
    rel = path.relative_to(root)
    parents = rel.parts[:-1]
    speaker = parents[-2] if len(parents) >= 2 else (parents[0] if parents else "")
    extra = {"chapter": parents[-1]} if len(parents) >= 2 else {}
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    uid = stem if stem.startswith(f"{speaker}-") else rel.with_suffix("").as_posix()
    return Entry(
        id=uid,
        location=str(path),
        speaker=speaker,
        extra=extra,
        sample_rate=sample_rate if audio_io.is_raw(path) else None,
        size=_file_size(path),
    )


def librispeech_source(
    root: os.PathLike, *, unlabeled: bool = False, sample_rate: int | None = None
) -> FileSource:
    """Lists a LibriSpeech-layout tree (or a Libri-Light-style tree without transcripts).

    Every audio file under `root` is one utterance, in sorted path order; speaker and
    chapter come from its two parent folders. Transcripts come from `*.trans.txt`
    files anywhere in the tree. The split is labeled iff any transcript file exists
    (and `unlabeled` is False); then an audio file without a transcript line, and a
    transcript line without audio, are skipped as `missing_transcript` / `missing_audio`.

    Args:
      root: the split's folder, e.g. `LibriSpeech/dev-clean`.
      unlabeled: ignore transcripts for training (kept as `oracle_text`).
      sample_rate: rate of any headerless `.raw`/`.pcm` files in the tree.

    Returns:
      The split as a FileSource.
    """
    root = pathlib.Path(root).resolve()
    if not root.is_dir():
        raise SourceError(f"LibriSpeech source {root} is not a directory")
    extensions = set(audio_io.audio_extensions())
    audio_files, transcripts = [], {}
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = pathlib.Path(folder, name)
            if name.endswith(".trans.txt"):
                transcripts.update(_read_transcripts(path))
            elif path.suffix.lower() in extensions:
                audio_files.append(path)
    labeled = bool(transcripts)
    entries = []
    for path in audio_files:
        entry = _tree_entry(root, path, sample_rate)
        line = transcripts.pop(entry.id.rsplit("/", 1)[-1], None)
        if line is not None:
            entry = dataclasses.replace(entry, text=line.text, problem=line.problem)
        elif labeled:
            detail = f"no line for '{entry.id}' in any .trans.txt"
            entry = dataclasses.replace(entry, problem=("missing_transcript", detail))
        entries.append(entry)
    for uid, line in sorted(transcripts.items()):  # transcript lines without audio
        problem = ("missing_audio", f"'{uid}' has a transcript line but no audio file")
        entries.append(Entry(id=uid, location=line.location, problem=problem))
    extra_fields = ("chapter",) if any(e.extra for e in entries) else ()
    if unlabeled and labeled:
        entries, extra_fields = _as_unlabeled(entries), (*extra_fields, schema.ORACLE_TEXT_FIELD)
    return FileSource(
        str(root), entries, labeled=labeled and not unlabeled, extra_fields=extra_fields
    )


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
        raise SourceError(f"manifest {path}: unknown format '{kind}' (use .jsonl or .tsv)")
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
                raise SourceError(f"manifest {path}: the header has no 'audio' column")
            continue
        yield location, _tsv_row(line, header) if kind == ".tsv" else _json_row(line)


def _as_string(value) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def _manifest_entry(
    folder: pathlib.Path, location: str, row: dict, sample_rate: int | None
) -> Entry:
    """One manifest row -> Entry (audio relative to the manifest's folder)."""
    audio = folder / row["audio"]
    uid = _as_string(row.get("id")) or pathlib.Path(row["audio"]).with_suffix("").as_posix()
    extra = {
        key: _as_string(value)
        for key, value in row.items()
        if key not in _MANIFEST_KEYS and key not in _RESERVED
    }
    text = row.get("text")
    entry = Entry(
        id=uid,
        location=str(audio),
        speaker=_as_string(row.get("speaker")),
        text=None if text is None else _as_string(text),
        extra=extra,
        size=_file_size(audio),
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
) -> FileSource:
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
      The split as a FileSource, in manifest order.
    """
    path = pathlib.Path(path).resolve()
    if not path.is_file():
        raise SourceError(f"manifest {path} does not exist")
    entries = []
    for location, row in _manifest_rows(path):
        if isinstance(row, tuple):
            entries.append(Entry(id=location, location=location, problem=row))
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
        entries = _as_unlabeled(entries)
        extra_fields = sorted({*extra_fields, schema.ORACLE_TEXT_FIELD})
    return FileSource(
        str(path), entries, labeled=labeled and not unlabeled, extra_fields=tuple(extra_fields)
    )


def embedded_preset(root: os.PathLike) -> str:
    """The preset an embedded corpus was made with (`parameters.preset` of its `corpus.json`).

    Raises:
      SourceError: `root` holds no complete corpus (`corpus.json` is written last).
    """
    info_path = pathlib.Path(root) / EMBEDDED_INFO_NAME
    if not info_path.is_file():
        raise SourceError(
            f"no complete embedded corpus at {root} (no {EMBEDDED_INFO_NAME}); "
            "run `bigssl make-corpus` first"
        )
    try:
        return str(json.loads(info_path.read_text())["parameters"]["preset"])
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise SourceError(f"{info_path} is not a corpus description: {error}") from error


def embedded_sources(root: os.PathLike) -> dict[str, FileSource]:
    """Every split of an embedded synthetic corpus: `<root>/<split>/manifest.jsonl`.

    A split is labeled iff its lines have `text`; the unlabeled split's `oracle_text`
    is kept as an extra field like any other.

    Returns:
      split name -> FileSource, sorted by name.

    Raises:
      SourceError: the corpus is incomplete (see `embedded_preset`) or has no split.
    """
    embedded_preset(root)
    manifests = [
        path
        for path in sorted(pathlib.Path(root).glob(f"*/{MANIFEST_NAME}"))
        if not path.parent.name.startswith(".")
    ]
    if not manifests:
        raise SourceError(f"embedded corpus {root} has no */{MANIFEST_NAME}")
    return {manifest.parent.name: manifest_source(manifest) for manifest in manifests}


@functools.lru_cache(maxsize=8)
def _tfds_builder(name: str, data_dir: str | None):
    """The TFDS builder `name` reading from `data_dir` (built once per process)."""
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir)
    except Exception as error:  # tfds raises several types for an unknown/unbuilt dataset
        raise SourceError(
            f"TFDS dataset '{name}' is not available under {data_dir}: {error}"
        ) from error


@dataclasses.dataclass
class TfdsSource(Source):
    """One split of a TFDS speech builder whose data is already on disk (no downloads).

    Made for `librispeech` (features `speech`, `text`, `speaker_id`, `chapter_id`,
    `id`); any builder with one `Audio` feature works, labeled iff it has `text` and
    `unlabeled` is False (else the transcript is kept as `oracle_text`).
    Shards read contiguous slices (`split[a:b]`) when the builder knows its split
    sizes, else (hand-made data dirs, `tfds.testing.mock_data`) skip/take.
    """

    split: str
    data_dir: str | None = None
    name: str = "librispeech"
    unlabeled: bool = False
    _length: int | None = dataclasses.field(default=None, repr=False)

    def _builder(self):
        return _tfds_builder(self.name, self.data_dir)

    @property
    def description(self) -> str:
        return f"tfds:{self.name}/{self.split}@{self.data_dir}"

    @property
    def _features(self):
        return self._builder().info.features

    @property
    def labeled(self) -> bool:
        return "text" in self._features and not self.unlabeled

    @property
    def extra_fields(self) -> tuple[str, ...]:
        fields = ("chapter",) if "chapter_id" in self._features else ()
        oracle = self.unlabeled and "text" in self._features
        return (*fields, schema.ORACLE_TEXT_FIELD) if oracle else fields

    def _split_info(self):
        splits = self._builder().info.splits
        return splits[self.split] if self.split in splits else None

    def _dataset(self, start: int | None = None, stop: int | None = None):
        import tensorflow_datasets as tfds

        builder = self._builder()
        sliced = self._split_info() is not None and start is not None
        split = f"{self.split}[{start}:{stop}]" if sliced else self.split
        try:
            dataset = builder.as_dataset(split=split, shuffle_files=False)
        except Exception as error:  # not prepared / unknown split: one clear line
            raise SourceError(
                f"cannot read TFDS {self.name}/{self.split} under "
                f"{self.data_dir} (prepare it with TFDS first): {error}"
            ) from error
        if start is not None and not sliced:
            dataset = dataset.skip(start).take(stop - start)
        return tfds.as_numpy(dataset)

    def __len__(self) -> int:
        if self._length is None:
            info = self._split_info()
            self._length = (
                int(info.num_examples) if info is not None else sum(1 for _ in self._dataset())
            )
        return self._length

    def fingerprint(self) -> str:
        return f"{self.description}|{self.unlabeled}|{self._builder().info.version}|{len(self)}"

    def estimated_bytes(self) -> int:
        info = self._split_info()
        return int(info.num_bytes) if info is not None else 0

    def _audio_key(self) -> tuple[str, int]:
        import tensorflow_datasets as tfds

        for key, feature in self._features.items():
            if isinstance(feature, tfds.features.Audio):
                return key, int(feature.sample_rate or schema.SAMPLE_RATE)
        raise SourceError(f"TFDS dataset '{self.name}' has no Audio feature")

    def read(self, start: int, stop: int) -> Iterator[Utterance | Skipped]:
        audio_key, rate = self._audio_key()
        for index, example in enumerate(self._dataset(start, stop), start=start):
            uid = example["id"].decode("utf-8") if "id" in example else f"{self.split}-{index}"
            text = example["text"].decode("utf-8") if "text" in example else None
            extra = {"chapter": str(example["chapter_id"])} if "chapter_id" in example else {}
            if self.unlabeled and text is not None:
                extra[schema.ORACLE_TEXT_FIELD], text = text, None
            audio = audio_io.pcm16_from_array(example[audio_key], rate)
            yield Utterance(
                uid,
                f"{self.description}[{index}]",
                audio,
                str(example.get("speaker_id", "")),
                text,
                extra,
            )
