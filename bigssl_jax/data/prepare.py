"""Writing a `Source` as sharded TFRecords, with validation, a report and resume.

For one split, `prepare_split`:

1. plans: utterance i of N goes to shard floor(i * S / N) (contiguous ranges). The plan
   (source fingerprint, S, options) is hashed into a tag that every shard's name carries,
   `<split>-<tag>-0000i-of-000NN.tfrecord`, so a changed plan (another source, shard count
   or length limit) writes new shards beside the old ones instead of over them;
2. writes every shard of the plan whose final file is missing: records go to a temporary
   file, the shard's stats (`<shard>.stats.json`: kept count, samples, skipped utterances)
   are written next, and the temporary file is renamed last. A killed run therefore never
   leaves a shard that reads as complete, and a re-run keeps finished shards;
3. writes `<split>.report.json` (the plan, kept, hours, counts per skip reason, every skipped
   utterance with its reason);
4. switches the split's registry entry to the new shards (one atomic rename of the
   registry file), and only then deletes the split's other shards (an older plan's, a killed
   run's temporary files).

So a prepare that fails or is killed at any point leaves the registry naming the shards of
the last prepare that succeeded, all of them present.

An utterance is skipped (counted, reported) when its audio is missing, unreadable,
truncated, empty or all zero, longer than `max_seconds`, or when a labeled split has
no or an empty transcript for it. With `strict=True` the first one is a PrepareError
naming the file and the reason.
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import pathlib
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from bigssl_jax import paths
from bigssl_jax.data import manifests, registry, schema, sources

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


def shard_path(
    out_dir: pathlib.Path, split: str, tag: str, index: int, num_shards: int
) -> pathlib.Path:
    """`<out_dir>/<split>-<tag>-00000-of-000NN.tfrecord`, `tag` naming the plan."""
    return out_dir / f"{split}-{tag}-{index:05d}-of-{num_shards:05d}.tfrecord"


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


def _plan(source: sources.Source, options: PrepareOptions) -> dict:
    """What the split's shards hold: the source, its size, the shard count and the options."""
    num_shards = options.num_shards or math.ceil(source.estimated_bytes() / SHARD_SOURCE_BYTES)
    return {
        "version": PLAN_VERSION,
        "source": source.description,
        "fingerprint": source.fingerprint(),
        "num_utterances": len(source),
        "num_shards": max(1, min(num_shards, len(source))),
        "max_seconds": options.max_seconds,
    }


def plan_tag(plan: dict) -> str:
    """The 8 hex digits of the plan's hash that its shards' names carry."""
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:8]


def _split_files(out_dir: pathlib.Path, split: str) -> list[pathlib.Path]:
    """Every shard, shard-stats or temporary shard file of `split` (not of `split-x`), of
    any plan (shards named before plan tags, `<split>-0000i-of-000NN`, included)."""
    pattern = re.compile(
        re.escape(split)
        + r"-(?:[0-9a-f]{8}-)?\d{5}-of-\d{5}\.(?:tfrecord|stats\.json)(?:\.tmp-\d+)?"
    )
    return [path for path in out_dir.iterdir() if pattern.fullmatch(path.name)]


def _remove_split_files(
    out_dir: pathlib.Path,
    split: str,
    *,
    keep: Sequence[pathlib.Path] = (),
    temporary_only: bool = False,
) -> None:
    """Deletes the split's files (`_split_files`) except `keep`, or only its temporary ones."""
    keep = {path.name for path in keep}
    for path in _split_files(out_dir, split):
        if path.name not in keep and (".tmp-" in path.name or not temporary_only):
            path.unlink(missing_ok=True)


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
    plan: dict,
) -> tuple[dict, pathlib.Path]:
    """Sums the shard stats into `<split>.report.json` (with the plan and its tag); returns
    (report, its path)."""
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
        "plan": {**plan, "tag": plan_tag(plan)},
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
    _remove_split_files(out_dir, split, temporary_only=True)  # a killed run's
    plan = _plan(source, options)
    tag, num_shards = plan_tag(plan), plan["num_shards"]
    files, pending = [], []
    for index in range(num_shards):
        shard = shard_path(out_dir, split, tag, index, num_shards)
        files.append(shard)
        if not (shard.exists() and _stats_path(shard).exists()):
            start, stop = (len(source) * i // num_shards for i in (index, index + 1))
            pending.append((shard, start, stop))
    _run_shards(source, pending, options)
    report, report_path = _write_report(out_dir, corpus, split, source, files, plan)
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
    _remove_split_files(out_dir, split, keep=[*files, *map(_stats_path, files)])
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
    corpus = corpus or embedded_corpus_name(manifests.embedded_preset(root))
    return [
        prepare_split(source, data_dir=data_dir, corpus=corpus, split=split, options=options)
        for split, source in manifests.embedded_sources(root).items()
    ]
