"""Writing a `Source` as sharded TFRecords, with validation, a report and resume.

For one split, `prepare_split`:

1. plans: utterance i of N goes to shard floor(i * S / N) (contiguous ranges), and the
   plan (source fingerprint, S, options) is saved as `<split>.plan.json`; a changed
   plan discards the split's old shards;
2. writes every shard whose final file is missing: records go to a temporary file,
   the shard's stats (`<shard>.stats.json`: kept count, samples, skipped utterances)
   are written next, and the temporary file is renamed last. A killed run therefore
   never leaves a shard that reads as complete, and a re-run keeps finished shards;
3. writes `<split>.report.json` (kept, hours, counts per skip reason, every skipped
   utterance with its reason) and, last, registers the split in the corpus registry.

An utterance is skipped (counted, reported) when its audio is missing, unreadable,
truncated, empty or all zero, longer than `max_seconds`, or when a labeled split has
no or an empty transcript for it. With `strict=True` the first one is a PrepareError
naming the file and the reason.
"""

import concurrent.futures
import dataclasses
import json
import math
import multiprocessing
import os
import pathlib
from collections import Counter

import numpy as np

from bigssl_jax import paths
from bigssl_jax.data import registry, schema, sources

PLAN_VERSION = 1
SHARD_SOURCE_BYTES = 200 * 2**20  # default shard size, in bytes of source audio


class PrepareError(Exception):
    """A user-facing failure: one line naming the file and the reason."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrepareOptions:
    """How to prepare a split.

    Attributes:
      strict: fail on the first bad utterance instead of skipping it.
      max_seconds: skip utterances longer than this (None: no limit).
      num_shards: number of shards (None: about one per 200 MiB of source audio).
      jobs: worker processes writing shards in parallel (1: in this process).
    """

    strict: bool = False
    max_seconds: float | None = None
    num_shards: int | None = None
    jobs: int = 1


@dataclasses.dataclass(frozen=True)
class SplitReport:
    """What `prepare_split` wrote for one split."""

    corpus: str
    split: str
    kept: int
    hours: float
    skipped: dict[str, int]
    files: tuple[str, ...]
    report_path: str

    def summary(self) -> str:
        """One line: kept, hours, skipped by reason, where."""
        total = sum(self.skipped.values())
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(self.skipped.items()))
        skipped = f"skipped {total} ({reasons})" if total else "skipped 0"
        return (
            f"{self.corpus}/{self.split}: kept {self.kept} utterances ({self.hours:.3f} h), "
            f"{skipped}, {len(self.files)} shards; report {self.report_path}"
        )


def shard_path(out_dir: pathlib.Path, split: str, index: int, num_shards: int) -> pathlib.Path:
    """`<out_dir>/<split>-00000-of-000NN.tfrecord`."""
    return out_dir / f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def _stats_path(shard: pathlib.Path) -> pathlib.Path:
    return shard.with_name(shard.name[: -len(".tfrecord")] + ".stats.json")


def _atomic_write_text(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def _problem(
    utterance: sources.Utterance, *, labeled: bool, max_seconds: float | None
) -> tuple[str, str] | None:
    """(reason, detail) when a decoded utterance must be skipped, else None."""
    num_samples = utterance.audio.shape[0]
    if num_samples == 0:
        return "empty_audio", "the audio has no samples"
    if not np.any(utterance.audio):
        return "silent_audio", f"all {num_samples} samples are zero"
    seconds = num_samples / schema.SAMPLE_RATE
    if max_seconds is not None and seconds > max_seconds:
        return "too_long", f"{seconds:.2f} s > --max_seconds={max_seconds:g}"
    if labeled and utterance.text is None:
        return "missing_transcript", "the labeled split has no transcript for it"
    if labeled and not utterance.text.strip():
        return "empty_transcript", "the transcript is empty"
    return None


def _write_shard(
    source: sources.Source, shard: pathlib.Path, start: int, stop: int, options: PrepareOptions
) -> dict:
    """Writes utterances [start, stop) of `source` to `shard` atomically; returns its stats."""
    import tensorflow as tf

    tmp = shard.with_name(f"{shard.name}.tmp-{os.getpid()}")
    stats = {"kept": 0, "num_samples": 0, "skipped": []}
    try:
        with tf.io.TFRecordWriter(str(tmp)) as writer:
            for item in source.read(start, stop):
                problem = isinstance(item, sources.Utterance) and _problem(
                    item, labeled=source.labeled, max_seconds=options.max_seconds
                )
                if problem:
                    item = sources.Skipped(item.id, item.location, *problem)
                if isinstance(item, sources.Skipped):
                    if options.strict:
                        raise PrepareError(f"{item.location}: {item.reason}: {item.detail}")
                    stats["skipped"].append(item.to_json())
                    continue
                writer.write(
                    schema.make_example(
                        audio=item.audio,
                        utterance_id=item.id,
                        speaker=item.speaker,
                        text=item.text if source.labeled else None,
                        extra=item.extra,
                    )
                )
                stats["kept"] += 1
                stats["num_samples"] += int(item.audio.shape[0])
        _atomic_write_text(_stats_path(shard), json.dumps(stats))
        tmp.replace(shard)
    finally:
        tmp.unlink(missing_ok=True)
    return stats


def _plan(
    source: sources.Source, out_dir: pathlib.Path, split: str, options: PrepareOptions
) -> int:
    """Chooses the number of shards and resets the split if its plan changed."""
    num_shards = options.num_shards or math.ceil(source.estimated_bytes() / SHARD_SOURCE_BYTES)
    num_shards = max(1, min(num_shards, len(source)))
    plan = {
        "version": PLAN_VERSION,
        "source": source.description,
        "fingerprint": source.fingerprint(),
        "num_utterances": len(source),
        "num_shards": num_shards,
        "max_seconds": options.max_seconds,
    }
    plan_path = out_dir / f"{split}.plan.json"
    old = json.loads(plan_path.read_text()) if plan_path.exists() else None
    for stale in out_dir.glob(f"{split}-*-of-*.*"):
        name, tmp, _ = stale.name.partition(".tmp-")
        if _is_shard_file(name, split) and (tmp or old != plan):
            stale.unlink()  # a killed run's temporary file, or a shard of an old plan
    if old != plan:
        _atomic_write_text(plan_path, json.dumps(plan, indent=2))
    return num_shards


def _is_shard_file(name: str, split: str) -> bool:
    """Whether file `name` is a shard or shard-stats file of `split` (and not of `split-x`)."""
    rest = name[len(split) + 1 :]
    return (
        rest[:5].isdigit() and rest[5:9] == "-of-" and rest.endswith((".tfrecord", ".stats.json"))
    )


_worker_source: sources.Source | None = None


def _init_worker(source: sources.Source) -> None:
    global _worker_source
    _worker_source = source


def _write_shard_in_worker(
    shard: pathlib.Path, start: int, stop: int, options: PrepareOptions
) -> dict:
    return _write_shard(_worker_source, shard, start, stop, options)


def _run_shards(
    source: sources.Source, jobs: list[tuple[pathlib.Path, int, int]], options: PrepareOptions
) -> None:
    """Writes the shards in `jobs` ((path, start, stop) each), in `options.jobs` processes.

    Each worker process receives the source once (not once per shard).
    """
    if options.jobs <= 1 or len(jobs) <= 1:
        for shard, start, stop in jobs:
            _write_shard(source, shard, start, stop, options)
        return
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        min(options.jobs, len(jobs)),
        mp_context=context,
        initializer=_init_worker,
        initargs=(source,),
    ) as pool:
        futures = [pool.submit(_write_shard_in_worker, *job, options) for job in jobs]
        try:
            for future in concurrent.futures.as_completed(futures):
                future.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


def _write_report(
    out_dir: pathlib.Path,
    corpus: str,
    split: str,
    source: sources.Source,
    files: list[pathlib.Path],
) -> tuple[dict, pathlib.Path]:
    """Sums the shard stats into `<split>.report.json`; returns (report, its path)."""
    shard_stats = [json.loads(_stats_path(shard).read_text()) for shard in files]
    skipped = [item for stats in shard_stats for item in stats["skipped"]]
    num_samples = sum(stats["num_samples"] for stats in shard_stats)
    report = {
        "corpus": corpus,
        "split": split,
        "source": source.description,
        "labeled": source.labeled,
        "utterances": len(source),
        "kept": sum(stats["kept"] for stats in shard_stats),
        "hours": num_samples / schema.SAMPLE_RATE / 3600.0,
        "skipped_by_reason": dict(sorted(Counter(item["reason"] for item in skipped).items())),
        "skipped": skipped,
        "files": [str(shard) for shard in files],
    }
    path = out_dir / f"{split}.report.json"
    _atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    return report, path


def prepare_split(
    source: sources.Source,
    *,
    data_dir: os.PathLike,
    corpus: str,
    split: str,
    options: PrepareOptions | None = None,
) -> SplitReport:
    """Writes one split as TFRecord shards and registers it (resuming a previous run).

    Args:
      source: the split's utterances.
      data_dir: the data directory (`bigssl_jax.paths`).
      corpus: corpus name in the registry; shards go to `paths.prepared_dir(data_dir, corpus)`.
      split: split name.
      options: strictness, length limit, shard count, parallelism (None: defaults).

    Returns:
      A SplitReport; the full report is at its `report_path`.

    Raises:
      PrepareError: the source is empty, every utterance was skipped, or (strict) the
        first bad utterance.
    """
    options = options or PrepareOptions()
    if len(source) == 0:
        raise PrepareError(f"{source.description}: no utterances found")
    out_dir = paths.prepared_dir(data_dir, corpus).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    num_shards = _plan(source, out_dir, split, options)
    files, pending = [], []
    for index in range(num_shards):
        shard = shard_path(out_dir, split, index, num_shards)
        files.append(shard)
        if not (shard.exists() and _stats_path(shard).exists()):
            start, stop = (len(source) * i // num_shards for i in (index, index + 1))
            pending.append((shard, start, stop))
    _run_shards(source, pending, options)
    report, report_path = _write_report(out_dir, corpus, split, source, files)
    if options.strict and report["skipped"]:  # left by an earlier, non-strict run
        first = report["skipped"][0]
        raise PrepareError(f"{first['location']}: {first['reason']}: {first['detail']}")
    if report["kept"] == 0:
        raise PrepareError(
            f"{source.description}: all {len(source)} utterances of split "
            f"'{split}' were skipped; see {report_path}"
        )
    info = registry.SplitInfo(
        files=tuple(str(shard) for shard in files),
        num_examples=report["kept"],
        hours=report["hours"],
        labeled=source.labeled,
        extra_fields=source.extra_fields,
    )
    registry.CorpusRegistry(paths.registry_path(data_dir)).register_split(
        corpus, split, info, source=source.description
    )
    return SplitReport(
        corpus,
        split,
        report["kept"],
        report["hours"],
        report["skipped_by_reason"],
        info.files,
        str(report_path),
    )


def embedded_corpus_name(preset: str) -> str:
    """Registry name of the embedded corpus made with `--preset=<preset>`."""
    return f"embedded_{preset}"


def prepare_embedded(
    root: os.PathLike,
    *,
    data_dir: os.PathLike,
    corpus: str | None = None,
    options: PrepareOptions | None = None,
) -> list[SplitReport]:
    """Prepares every split of the embedded synthetic corpus at `root`.

    Args:
      root: a complete corpus of `bigssl make-corpus` (`paths.embedded_corpus_dir`).
      data_dir: the data directory.
      corpus: registry name (None: `embedded_<preset>`, the preset read from the corpus).
      options: as for `prepare_split`.

    Returns:
      One SplitReport per split, in split-name order.
    """
    corpus = corpus or embedded_corpus_name(sources.embedded_preset(root))
    return [
        prepare_split(source, data_dir=data_dir, corpus=corpus, split=split, options=options)
        for split, source in sources.embedded_sources(root).items()
    ]
