"""The sources `bigssl prepare` reads: what a source is, and what it yields.

A `Source` is an ordered, indexable list of utterances of one split. `prepare` cuts
it into contiguous index ranges (one per shard) and calls `read(start, stop)`, which
yields an `Utterance` (16 kHz int16 audio loaded) or a `Skipped` record (with its
reason) for every index in the range: nothing is dropped silently.

A `FileSource` lists its audio files up front as `Entry`s; `split_labeled_pool` draws a
labeled share of one for the data-efficiency experiments. The readers, one module per
corpus layout:
  * LibriSpeech trees, `SPEAKER/CHAPTER/*.flac` + `SPEAKER-CHAPTER.trans.txt`
    (`data.librispeech.librispeech_source`); a tree without any `.trans.txt` (Libri-Light)
    is unlabeled.
  * JSONL / TSV manifests with an `audio` column (`data.manifests.manifest_source`), and
    the embedded synthetic corpus, `<root>/<split>/manifest.jsonl`
    (`data.manifests.embedded_sources`).
  * A TFDS builder with its data already on disk, e.g. `librispeech`
    (`data.tfds_source.TfdsSource`).
"""

import abc
import dataclasses
import hashlib
import json
import pathlib
from collections.abc import Iterator, Sequence

import numpy as np

from bigssl_jax.data import audio_io, schema

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


def as_unlabeled(entries: list[Entry]) -> list[Entry]:
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
        [*unlabeled.entries, *as_unlabeled(rest)],
        labeled=False,
        extra_fields=tuple(sorted(fields)),
    )
    return subset, pool


def file_size(path: pathlib.Path) -> int:
    """Bytes of the file at `path`, 0 when it cannot be read (a missing file is reported
    when its audio is read)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0
