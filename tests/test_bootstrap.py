"""The paired speaker-block bootstrap: against scipy's paired percentile bootstrap."""

import numpy as np
import pytest
import scipy.stats

from bigssl_jax.evaluation import bootstrap


def _write(path, rows):
    lines = ["id\treference\thypothesis\terrors"]
    lines += [f"{i}\t{' '.join(['w'] * words)}\thyp\t{errors}" for i, words, errors in rows]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture()
def paired(tmp_path):
    rng = np.random.default_rng(0)
    rows_a, rows_b, speakers = [], [], {}
    for speaker in range(24):
        # Speakers differ in error rate and in how much system b helps them: their
        # utterances are correlated.
        skill, gain = rng.uniform(0.2, 0.9), rng.uniform(0.1, 1.0)
        for k in range(6):
            words = int(rng.integers(4, 15))
            errors_a = int(rng.binomial(words, skill))
            errors_b = int(rng.binomial(words, gain * skill))
            utterance = f"u{speaker:02d}_{k}"
            rows_a.append((utterance, words, errors_a))
            rows_b.append((utterance, words, errors_b))
            speakers[utterance] = f"s{speaker:02d}"
    _write(tmp_path / "a.tsv", rows_a)
    _write(tmp_path / "b.tsv", rows_b[::-1])  # another order: paired by id
    return bootstrap.paired_errors(tmp_path / "a.tsv", tmp_path / "b.tsv"), speakers


def test_interval_matches_scipys_paired_percentile_bootstrap(paired):
    errors, speakers = paired
    ours = bootstrap.relative_reduction_ci(errors, speakers, num_samples=4000, seed=1)
    assert ours.estimate == pytest.approx(
        1 - errors.errors_b.sum() / errors.errors_a.sum(), rel=1e-12
    )
    names = sorted(set(speakers.values()))
    columns = [
        np.array([values[[speakers[i] == n for i in errors.ids]].sum() for n in names])
        for values in (errors.errors_a, errors.errors_b, errors.words)
    ]

    def statistic(a, b, words, axis=-1):
        return (a.sum(axis) - b.sum(axis)) / a.sum(axis)

    theirs = scipy.stats.bootstrap(
        columns, statistic, paired=True, n_resamples=4000, method="percentile",
        confidence_level=0.95, random_state=2,
    ).confidence_interval  # fmt: skip
    assert ours.low == pytest.approx(theirs.low, abs=0.02)
    assert ours.high == pytest.approx(theirs.high, abs=0.02)
    assert ours.low < ours.estimate < ours.high and ours.low > 0.1


def test_speakers_not_utterances_are_resampled(paired):
    """Resampling utterances as if independent gives a narrower, overconfident interval."""
    errors, speakers = paired
    blocks = bootstrap.relative_reduction_ci(errors, speakers, num_samples=2000)
    each_alone = {i: i for i in errors.ids}
    utterances = bootstrap.relative_reduction_ci(errors, each_alone, num_samples=2000)
    assert utterances.high - utterances.low < blocks.high - blocks.low


def test_mismatched_files_are_refused(tmp_path):
    _write(tmp_path / "a.tsv", [("x", 3, 1)])
    _write(tmp_path / "b.tsv", [("y", 3, 1)])
    with pytest.raises(ValueError, match="no utterance in common"):
        bootstrap.paired_errors(tmp_path / "a.tsv", tmp_path / "b.tsv")
    _write(tmp_path / "c.tsv", [("x", 4, 1)])
    with pytest.raises(ValueError, match="different references"):
        bootstrap.paired_errors(tmp_path / "a.tsv", tmp_path / "c.tsv")
