"""Pseudo-labeling: a teacher transcribes an unlabeled seqio task (noisy student training).

    teacher = pseudo_label_job.load_teacher("/runs/ctc", model)   # model: gin_utils.run_model
    config = pseudo_label.LabelConfig(task="c_unlabeled_unlabeled", output_dir="/pl/gen1",
                                      teacher=teacher.name, num_units=num_units("c_..."))
    pseudo_label.label_units(teacher, config, process_units(config.num_units))
    report = pseudo_label.finalize(config.output_dir, name="pl_gen1", filtering=FilterConfig())

A job's set-up (the corpus's task, the teacher with its decoding overrides and fusion LM,
the filtering) is `bigssl_jax.jobs.pseudo_label_job`'s, shared by `bigssl pseudo-label` and the
Beam runner.

Work units. Unit u of U is the u-th TFRecord file of the task (`seqio.ShardInfo(u, U)`
selects exactly that file), read in order, batched by length buckets and decoded with
the teacher's jitted `decode`, data-parallel over this process's devices. Process p of
P labels units u = p, p + P, ...: each process reads only its own files, and the union
of all processes' units is exactly the task. An Apache Beam pipeline
(`bigssl_jax.jobs.beam_pseudo_label`) hands the same units to its workers instead.

Exactly once, after `kill -9` at any point. Unit u is written to a private temporary
name, renamed atomically to `shards/labels-<u>-of-<U>.tfrecord`, and then marked done
by `shards/labels-<u>-of-<U>.done.json` (written to a temporary name and renamed too),
which lists the unit's utterances. A unit without a marker is relabeled from scratch
and its file replaced, so a re-run skips done units and redoes partial ones; each unit
has one file, each utterance one unit. `job.json` pins what the directory holds (task,
units, teacher, decoding): a re-run with other settings is refused.

Records (`bigssl_tasks.pseudo_labeled`): the audio, the utterance id, the transcript,
its tokens, the teacher's log-probability `score` of it and the length-normalised

    confidence = exp(score / (U_tokens + 1))      in (0, 1], 1 = certain,

the per-token geometric-mean probability (+1 for the end of the utterance), on the same
scale as the 1.0 of human labels.

Filtering (`finalize`, after all units are done): keep utterances with confidence >=
`min_confidence`, and of those the `keep_top_fraction` best by a length-normalised rank
score (`FilterConfig.normalization`). `finalize` writes `manifest.json` (files, kept
ids, vocabulary, teacher; `bigssl_tasks.pseudo_labeled.register_from_manifest`
registers the task from it) and `report.json`: how many were labeled and kept and,
when the source records carry the synthetic corpus's hidden `oracle_text`, the oracle
WER of all, kept and dropped labels (analysis only: no task ever reads that field).
"""

import dataclasses
import json
import math
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from bigssl_jax.data import schema
from bigssl_jax.data import vocabulary as vocab_lib
from bigssl_jax.evaluation import wer
from bigssl_jax.models import asr

JOB_FILE = "job.json"
MANIFEST_FILE = "manifest.json"
REPORT_FILE = "report.json"
KEPT_IDS_FILE = "kept_ids.txt"
VOCABULARY_FILE = "vocabulary.model"
SHARD_DIR = "shards"
NORMALIZATIONS = ("token", "regression", "none")


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A model that transcribes.

    Attributes:
      model: an ASR model wrapper with `decode`, `decoding`, `vocabulary` (and `lm`).
      variables: its variables, {'params': ...}.
      name: what identifies it in the records (e.g. its checkpoint step directory).
    """

    model: Any
    variables: Mapping[str, Any]
    name: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class LabelConfig:
    """What to label and where.

    Attributes:
      task: the unlabeled seqio task (its records must carry `id`).
      output_dir: where shards, markers, manifest and report go (any tf.io.gfile path).
      num_units: U, the task's TFRecord files (`num_units(task)`).
      teacher: the teacher's identity, written into every record and `job.json`.
      decoding: the teacher's search (beam size, max length, LM weight).
      lm: the identity of the fusion LM the teacher's model carries ("" for none).
      batch_size: utterances per decode call on this process (padded to a multiple of
        the local device count).
      bucket_seconds: audio length buckets; longer utterances are not labeled (the
        report counts them).
      split: the task's seqio split.
    """

    task: str
    output_dir: str
    num_units: int
    teacher: str
    decoding: asr.DecodingConfig = asr.DecodingConfig()
    lm: str = ""
    batch_size: int = 16
    bucket_seconds: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0, 32.0)
    split: str = "all"

    def job(self) -> dict:
        """What the output directory holds; a re-run must describe the same job."""
        return {
            "task": self.task,
            "split": self.split,
            "num_units": self.num_units,
            "teacher": self.teacher,
            "decoding": dataclasses.asdict(self.decoding),
            "lm": self.lm,
            "bucket_seconds": list(self.bucket_seconds),
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class FilterConfig:
    """Which pseudo-labels to keep.

    Attributes:
      min_confidence: drop utterances whose confidence is below this (None: none).
      keep_top_fraction: of the rest, keep this fraction with the best rank scores
        (rounded up; ties broken by utterance id).
      normalization: the rank score: 'token' (score / (tokens + 1), the confidence's
        order), 'regression' (score minus its least-squares fit a (tokens + 1) + b,
        divided by sigma sqrt(tokens + 1), as in Park et al. 2020), or 'none' (score).
    """

    min_confidence: float | None = None
    keep_top_fraction: float = 1.0
    normalization: str = "token"

    def __post_init__(self):
        if not 0.0 < self.keep_top_fraction <= 1.0:
            raise ValueError(f"keep_top_fraction must be in (0, 1], got {self.keep_top_fraction}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}")


class IncompleteJobError(RuntimeError):
    """`finalize` found units without a done marker."""


# ---------------------------------------------------------------------------------------
# Files.
# ---------------------------------------------------------------------------------------


def shard_path(output_dir: str, unit: int, num_units: int) -> str:
    """The labeled TFRecord file of `unit`."""
    return os.path.join(output_dir, SHARD_DIR, f"labels-{unit:05d}-of-{num_units:05d}.tfrecord")


def marker_path(output_dir: str, unit: int, num_units: int) -> str:
    """The done marker of `unit` (JSON: its utterances)."""
    return shard_path(output_dir, unit, num_units).removesuffix(".tfrecord") + ".done.json"


def _temporary(path: str) -> str:
    return f"{path}.tmp-{socket.gethostname()}-{os.getpid()}"


def _write_atomic(path: str, text: str) -> None:
    import tensorflow as tf

    tmp = _temporary(path)
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def _read_json(path: str) -> dict | None:
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.loads(f.read())


def num_units(task: str, split: str = "all") -> int:
    """U: the number of TFRecord files of a registered seqio task."""
    import seqio

    return len(seqio.get_mixture_or_task(task).source.list_shards(split))


def process_units(num_units: int, index: int | None = None, count: int | None = None) -> range:
    """The units of process `index` of `count` (default: this JAX process): index, +count..."""
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    return range(index, num_units, count)


def start_job(config: LabelConfig) -> None:
    """Writes `job.json`, or checks that the one there describes the same job.

    Raises:
      ValueError: the output directory holds another job's labels.
    """
    import tensorflow as tf

    path = os.path.join(config.output_dir, JOB_FILE)
    existing = _read_json(path)
    if existing is None:
        tf.io.gfile.makedirs(os.path.join(config.output_dir, SHARD_DIR))
        _write_atomic(path, json.dumps(config.job(), indent=2) + "\n")
    elif existing != config.job():
        differ = sorted(k for k in config.job() if existing.get(k) != config.job()[k])
        raise ValueError(
            f"{config.output_dir} holds pseudo-labels of another job (differs in {differ}): "
            "use a new output directory"
        )


# ---------------------------------------------------------------------------------------
# Decoding.
# ---------------------------------------------------------------------------------------


class Decoder:
    """The teacher's jitted decode, data-parallel over this process's devices.

    Rows are split over a 1-D mesh of the local devices and parameters are replicated,
    so no collective crosses processes: each host decodes its own batches.

    Args:
      teacher: the model and its variables.
      decoding: the search settings, replacing the teacher model's.
      devices: the devices to decode on; default this process's.
    """

    def __init__(self, teacher: Teacher, decoding: asr.DecodingConfig, devices=None):
        from jax.sharding import Mesh, NamedSharding
        from jax.sharding import PartitionSpec as P

        devices = list(jax.local_devices() if devices is None else devices)
        mesh = Mesh(np.asarray(devices), ("data",))
        self.num_devices = len(devices)
        self._rows = NamedSharding(mesh, P("data"))
        model = dataclasses.replace(teacher.model, decoding=decoding)
        self.vocabulary = asr.load_vocabulary(model.vocabulary)
        self.variables = jax.device_put(dict(teacher.variables), NamedSharding(mesh, P()))
        self._decode = asr.jitted_decode(model)

    def __call__(self, audio: np.ndarray, paddings: np.ndarray) -> tuple[np.ndarray, ...]:
        """audio, paddings f32[B, S] -> numpy (tokens [B, L], token_paddings [B, L], scores [B])."""
        rows = audio.shape[0]
        extra = -rows % self.num_devices
        if extra:
            audio = np.pad(audio, [(0, extra), (0, 0)])
            paddings = np.pad(paddings, [(0, extra), (0, 0)], constant_values=1.0)
        audio, paddings = jax.device_put((audio, paddings), self._rows)
        outputs = self._decode(self.variables, audio, paddings)
        return tuple(np.asarray(x)[:rows] for x in outputs)


def confidence(score: float, num_tokens: int) -> float:
    """exp(score / (num_tokens + 1)): the per-token geometric-mean probability."""
    return float(math.exp(score / (num_tokens + 1)))


def _label_batch(decoder: Decoder, batch: Mapping[str, np.ndarray], teacher: str):
    """Yields (serialised record, [id, score, num_tokens, confidence, text]) per real row."""
    from bigssl_tasks import pseudo_labeled

    tokens, token_paddings, scores = decoder(batch["audio"], batch["audio_paddings"])
    texts = wer.detokenize(tokens, token_paddings, decoder.vocabulary)
    for row in np.flatnonzero(batch["weights"] > 0):
        valid = tokens[row][token_paddings[row] < 0.5].tolist()
        valid = valid[: valid.index(vocab_lib.EOS_ID)] if vocab_lib.EOS_ID in valid else valid
        valid = [t for t in valid if t != vocab_lib.PAD_ID]  # as `detokenize` reads them
        utterance_id = batch["id"][row].decode("utf-8")
        num_samples = int(np.sum(batch["audio_paddings"][row] < 0.5))
        score = float(scores[row])
        conf = confidence(score, len(valid))
        record = pseudo_labeled.make_example(
            audio=batch["audio"][row, :num_samples],
            utterance_id=utterance_id,
            text=texts[row],
            confidence=conf,
            teacher=teacher,
            tokens=valid,
            score=score,
        )
        yield record, [utterance_id, score, len(valid), conf, texts[row]]


def _unit_batches(config: LabelConfig, unit: int):
    """The numpy batches of one unit (one file of the task), in file order."""
    import seqio

    from bigssl_jax import input_pipeline

    input_config = input_pipeline.InputConfig(
        task=config.task,
        split=config.split,
        batch_size=config.batch_size,
        bucket_seconds=config.bucket_seconds,
        shuffle=False,
        num_epochs=1,
        keep_fields=("id",),
    )
    shard = seqio.ShardInfo(index=unit, num_shards=config.num_units)
    return input_pipeline.build_dataset(input_config, shard_info=shard).as_numpy_iterator()


def label_unit(decoder: Decoder, config: LabelConfig, unit: int) -> dict:
    """Labels one unit unless it is done; returns its marker.

    The records go to a private temporary file, renamed onto the unit's file when
    complete; the marker is written last. A crash anywhere leaves either no marker (the
    unit is redone) or a complete file and marker.
    """
    import tensorflow as tf

    marker_file = marker_path(config.output_dir, unit, config.num_units)
    marker = _read_json(marker_file)
    if marker is not None:
        return marker
    path = shard_path(config.output_dir, unit, config.num_units)
    tmp = _temporary(path)
    utterances = []
    with tf.io.TFRecordWriter(tmp) as writer:
        for batch in _unit_batches(config, unit):
            for record, utterance in _label_batch(decoder, batch, config.teacher):
                writer.write(record)
                utterances.append(utterance)
    tf.io.gfile.rename(tmp, path, overwrite=True)
    marker = {"unit": unit, "file": os.path.basename(path), "utterances": utterances}
    _write_atomic(marker_file, json.dumps(marker) + "\n")
    return marker


def label_units(teacher: Teacher, config: LabelConfig, units: Iterable[int]) -> list[dict]:
    """Labels `units` with `teacher`; done units are skipped.

    Args:
      teacher: the model that transcribes.
      config: the job (checked against, or written to, `job.json`).
      units: unit indices, e.g. `process_units(config.num_units)`.

    Returns:
      The units' markers.
    """
    start_job(config)
    decoder = Decoder(teacher, config.decoding)
    return [label_unit(decoder, config, unit) for unit in units]


# ---------------------------------------------------------------------------------------
# Filtering, manifest and report.
# ---------------------------------------------------------------------------------------


def rank_scores(scores: np.ndarray, num_tokens: np.ndarray, normalization: str) -> np.ndarray:
    """Length-normalised rank scores f64[N] of log-probabilities `scores` [N] (see FilterConfig)."""
    scores = np.asarray(scores, np.float64)
    length = np.asarray(num_tokens, np.float64) + 1.0
    if normalization == "none":
        return scores
    if normalization == "token":
        return scores / length
    if normalization != "regression":
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    design = np.stack([length, np.ones_like(length)], axis=1)
    coefficients = np.linalg.lstsq(design, scores, rcond=None)[0]
    residuals = scores - design @ coefficients
    sigma = math.sqrt(max(float(np.mean(residuals**2 / length)), 1e-12))
    return residuals / (sigma * np.sqrt(length))


def select(utterances: Sequence[Sequence], filtering: FilterConfig) -> np.ndarray:
    """bool[N]: which of the marker utterances [id, score, tokens, confidence, text] to keep."""
    if not utterances:
        return np.zeros(0, bool)
    ids = [u[0] for u in utterances]
    scores = np.array([u[1] for u in utterances], np.float64)
    tokens = np.array([u[2] for u in utterances], np.int64)
    confidences = np.array([u[3] for u in utterances], np.float64)
    keep = np.ones(len(ids), bool)
    if filtering.min_confidence is not None:
        keep &= confidences >= filtering.min_confidence
    candidates = np.flatnonzero(keep)
    count = math.ceil(filtering.keep_top_fraction * len(candidates) - 1e-9)
    ranks = rank_scores(scores[candidates], tokens[candidates], filtering.normalization)
    order = sorted(range(len(candidates)), key=lambda i: (-ranks[i], ids[candidates[i]]))
    keep[:] = False
    keep[candidates[order[:count]]] = True
    return keep


def read_markers(output_dir: str) -> tuple[dict, list[dict]]:
    """(job, the markers of all its units).

    Raises:
      FileNotFoundError: no job in `output_dir`.
      IncompleteJobError: some units are not done.
    """
    job = _read_json(os.path.join(output_dir, JOB_FILE))
    if job is None:
        raise FileNotFoundError(f"no pseudo-labeling job in {output_dir} ({JOB_FILE} missing)")
    total = job["num_units"]
    markers = [_read_json(marker_path(output_dir, u, total)) for u in range(total)]
    missing = [u for u, marker in enumerate(markers) if marker is None]
    if missing:
        raise IncompleteJobError(
            f"{output_dir}: {len(missing)} of {total} units not labeled yet (e.g. {missing[:5]})"
        )
    return job, markers


def read_oracle_texts(files: Sequence[str]) -> dict[str, str]:
    """id -> hidden `oracle_text` of prepared records (synthetic corpora); analysis only."""
    import tensorflow as tf

    spec = {
        "id": tf.io.FixedLenFeature([], tf.string),
        schema.ORACLE_TEXT_FIELD: tf.io.FixedLenFeature([], tf.string, default_value=""),
    }
    texts = {}
    for record in tf.data.TFRecordDataset(list(files)).as_numpy_iterator():
        example = tf.io.parse_single_example(record, spec)
        text = example[schema.ORACLE_TEXT_FIELD].numpy().decode("utf-8")
        if text:
            texts[example["id"].numpy().decode("utf-8")] = text
    return texts


def _oracle_report(utterances, keep: np.ndarray, oracle: Mapping[str, str]) -> dict | None:
    """Oracle WER of all, kept and dropped labels against the hidden transcripts."""
    rows = [i for i, u in enumerate(utterances) if u[0] in oracle]
    if not rows:
        return None
    report = {"num_utterances": len(rows)}
    for part, chosen in (("all", rows), ("kept", [i for i in rows if keep[i]]),
                         ("dropped", [i for i in rows if not keep[i]])):  # fmt: skip
        refs = [oracle[utterances[i][0]] for i in chosen]
        hyps = [utterances[i][4] for i in chosen]
        try:
            report[f"wer_{part}"] = wer.score(refs, hyps).wer
        except ValueError:  # no utterances or no reference words
            report[f"wer_{part}"] = None
    return report


def finalize(
    output_dir: str,
    *,
    name: str,
    vocabulary: str,
    filtering: FilterConfig | None = None,
    oracle: Mapping[str, str] | None = None,
    num_input_examples: int | None = None,
) -> dict:
    """Filters the labels of a finished job and writes its manifest and report.

    Args:
      output_dir: the job's output directory (all units done).
      name: the pseudo-labeled seqio task name recorded in the manifest.
      vocabulary: the sentencepiece model the task tokenises `text` with (copied into
        `output_dir`).
      filtering: which labels to keep (default: all).
      oracle: id -> hidden transcript, for the oracle WER (analysis only), or None.
      num_input_examples: the source task's size, to report utterances not labeled
        (longer than the last bucket).

    Returns:
      The report (also written to `report.json`).

    Raises:
      IncompleteJobError: some units are not done.
      ValueError: an utterance id occurs twice.
    """
    import tensorflow as tf

    filtering = filtering or FilterConfig()
    job, markers = read_markers(output_dir)
    utterances = [u for marker in markers for u in marker["utterances"]]
    ids = [u[0] for u in utterances]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{output_dir}: {len(ids) - len(set(ids))} utterance ids occur twice")
    keep = select(utterances, filtering)
    kept_ids = sorted(i for i, k in zip(ids, keep, strict=True) if k)
    vocabulary_copy = os.path.join(output_dir, VOCABULARY_FILE)
    tf.io.gfile.copy(vocabulary, vocabulary_copy, overwrite=True)
    kept_file = None
    if len(kept_ids) < len(ids):
        kept_file = KEPT_IDS_FILE
        _write_atomic(os.path.join(output_dir, KEPT_IDS_FILE), "".join(i + "\n" for i in kept_ids))
    manifest = {
        "name": name,
        "source_task": job["task"],
        "teacher": job["teacher"],
        "decoding": job["decoding"],
        "lm": job["lm"],
        "files": [os.path.join(SHARD_DIR, marker["file"]) for marker in markers],
        "num_labeled": len(ids),
        "num_examples": len(kept_ids),
        "kept_ids": kept_file,
        "vocabulary": VOCABULARY_FILE,
        "filter": dataclasses.asdict(filtering),
    }
    _write_atomic(os.path.join(output_dir, MANIFEST_FILE), json.dumps(manifest, indent=2) + "\n")
    confidences = np.array([u[3] for u in utterances], np.float64)
    report = {
        "name": name,
        "num_input_examples": num_input_examples,
        "num_labeled": len(ids),
        "num_not_labeled": None if num_input_examples is None else num_input_examples - len(ids),
        "num_kept": len(kept_ids),
        "kept_fraction": len(kept_ids) / max(len(ids), 1),
        "mean_confidence_all": float(confidences.mean()) if len(ids) else None,
        "mean_confidence_kept": float(confidences[keep].mean()) if kept_ids else None,
        "filter": dataclasses.asdict(filtering),
        "oracle": _oracle_report(utterances, keep, oracle) if oracle else None,
    }
    _write_atomic(os.path.join(output_dir, REPORT_FILE), json.dumps(report, indent=2) + "\n")
    for leftover in tf.io.gfile.glob(os.path.join(output_dir, SHARD_DIR, "*.tmp-*")):
        tf.io.gfile.remove(leftover)
    return report
