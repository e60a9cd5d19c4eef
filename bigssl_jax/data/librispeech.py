"""LibriSpeech-layout trees: `SPEAKER/CHAPTER/*.flac` + `SPEAKER-CHAPTER.trans.txt`.

A tree without any `.trans.txt` (Libri-Light) is unlabeled. See `data.sources` for what a
source yields.
"""

import dataclasses
import os
import pathlib

from bigssl_jax.data import audio_io, schema, sources


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


def _tree_entry(root: pathlib.Path, path: pathlib.Path, sample_rate: int | None) -> sources.Entry:
    """An entry for `root/.../SPEAKER/CHAPTER/NAME.ext` (speaker/chapter from the folders)."""
    rel = path.relative_to(root)
    parents = rel.parts[:-1]
    speaker = parents[-2] if len(parents) >= 2 else (parents[0] if parents else "")
    extra = {"chapter": parents[-1]} if len(parents) >= 2 else {}
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    uid = stem if stem.startswith(f"{speaker}-") else rel.with_suffix("").as_posix()
    return sources.Entry(
        id=uid,
        location=str(path),
        speaker=speaker,
        extra=extra,
        sample_rate=sample_rate if audio_io.is_raw(path) else None,
        size=sources.file_size(path),
    )


def librispeech_source(
    root: os.PathLike, *, unlabeled: bool = False, sample_rate: int | None = None
) -> sources.FileSource:
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
      The split as a `sources.FileSource`.
    """
    root = pathlib.Path(root).resolve()
    if not root.is_dir():
        raise sources.SourceError(f"LibriSpeech source {root} is not a directory")
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
        entries.append(sources.Entry(id=uid, location=line.location, problem=problem))
    extra_fields = ("chapter",) if any(e.extra for e in entries) else ()
    if unlabeled and labeled:
        entries, extra_fields = (
            sources.as_unlabeled(entries),
            (*extra_fields, schema.ORACLE_TEXT_FIELD),
        )
    return sources.FileSource(
        str(root), entries, labeled=labeled and not unlabeled, extra_fields=extra_fields
    )
