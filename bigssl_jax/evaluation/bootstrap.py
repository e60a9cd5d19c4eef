"""Paired speaker-block bootstrap confidence intervals for WER differences (Bisani & Ney 2004).

    errors = paired_errors(baseline_tsv, system_tsv)          # same utterances, same order
    interval = relative_reduction_ci(errors, speakers, num_samples=1000, seed=0)
    interval.estimate, interval.low, interval.high            # (WER_a - WER_b) / WER_a

Utterances of one speaker are not independent, so the resampling unit is the speaker: each
replicate draws as many speakers as the test set has, with replacement, keeps all of their
utterances, and recomputes both systems' WER over that same draw (a paired design: the two
systems always see the same utterances). The interval is the replicates' 2.5th and 97.5th
percentiles (for 95%).
"""

import dataclasses
import os

import numpy as np


@dataclasses.dataclass(frozen=True)
class PairedErrors:
    """Word errors of two systems on the same utterances.

    Attributes:
      ids: utterance ids [N].
      errors_a, errors_b: word errors (S + D + I) of system a (the baseline) and b [N].
      words: reference words [N].
    """

    ids: tuple[str, ...]
    errors_a: np.ndarray
    errors_b: np.ndarray
    words: np.ndarray


@dataclasses.dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap confidence interval."""

    estimate: float
    low: float
    high: float
    level: float
    num_samples: int

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def read_transcripts(path: os.PathLike) -> dict[str, tuple[int, int]]:
    """id -> (word errors, reference words) of an evaluation's `transcripts.tsv`."""
    rows = {}
    with open(path, encoding="utf-8") as file:
        lines = file.read().splitlines()[1:]
    for line in lines:
        utterance_id, reference, _, errors = line.split("\t")
        rows[utterance_id] = (int(errors), len(reference.split()))
    return rows


def paired_errors(path_a: os.PathLike, path_b: os.PathLike) -> PairedErrors:
    """The two systems' errors on the utterances both scored (ids sorted).

    Raises:
      ValueError: the two files share no utterance, or disagree on a reference's length.
    """
    a, b = read_transcripts(path_a), read_transcripts(path_b)
    ids = tuple(sorted(set(a) & set(b)))
    if not ids:
        raise ValueError(f"{path_a} and {path_b} score no utterance in common")
    if any(a[i][1] != b[i][1] for i in ids):
        raise ValueError(f"{path_a} and {path_b} have different references")
    return PairedErrors(
        ids,
        np.array([a[i][0] for i in ids], np.float64),
        np.array([b[i][0] for i in ids], np.float64),
        np.array([a[i][1] for i in ids], np.float64),
    )


def _per_speaker(errors: PairedErrors, speakers: dict[str, str]) -> np.ndarray:
    """f64[K, 3]: per speaker, the sums of errors_a, errors_b and words."""
    names = sorted({speakers[i] for i in errors.ids})
    index = np.array([names.index(speakers[i]) for i in errors.ids])
    sums = np.zeros((len(names), 3))
    for column, values in enumerate((errors.errors_a, errors.errors_b, errors.words)):
        np.add.at(sums[:, column], index, values)
    return sums


def relative_reduction(sums: np.ndarray) -> np.ndarray:
    """(WER_a - WER_b) / WER_a of per-speaker sums f64[..., K, 3], over the speaker axis."""
    totals = sums.sum(axis=-2)
    wer_a, wer_b = totals[..., 0] / totals[..., 2], totals[..., 1] / totals[..., 2]
    return (wer_a - wer_b) / wer_a


def relative_reduction_ci(
    errors: PairedErrors,
    speakers: dict[str, str],
    *,
    num_samples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """The relative WER reduction of b over a with its paired speaker-block bootstrap interval.

    Args:
      errors: the two systems' errors (`paired_errors`).
      speakers: utterance id -> speaker, for every id of `errors`.
      num_samples: bootstrap replicates.
      level: the interval's coverage.
      seed: the resampling seed.

    Raises:
      KeyError: an utterance without a speaker.
    """
    sums = _per_speaker(errors, speakers)
    draws = np.random.default_rng(seed).integers(0, len(sums), (num_samples, len(sums)))
    with np.errstate(divide="ignore", invalid="ignore"):
        replicates = relative_reduction(sums[draws])
    tail = 100 * (1 - level) / 2
    low, high = np.nanpercentile(replicates, [tail, 100 - tail])
    return Interval(float(relative_reduction(sums)), float(low), float(high), level, num_samples)
