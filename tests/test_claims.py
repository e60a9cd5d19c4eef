"""claims.claim_summary and claim_lines on a hand-made finished run: two test speakers, four
models whose test transcripts give known word errors."""

import json

import pytest

from bigssl_jax.jobs import claims

REFERENCE = "one two three four five"  # 5 words per utterance, 4 utterances: 20 words
# model -> word errors of the utterances of speaker a (2) and speaker b (2)
ERRORS = {
    "supervised_10": (5, 5, 5, 5),
    "ssl_10": (4, 4, 3, 3),
    "nst_10": (2, 2, 2, 2),
    "supervised_100": (3, 1, 2, 2),
}
IDS = ("u0", "u1", "u2", "u3")


def _finished_run(tmp_path, errors_of=ERRORS):
    root, work = tmp_path / "corpus", tmp_path / "work"
    (root / "test").mkdir(parents=True)
    speakers = ("a", "a", "b", "b")
    rows = [{"id": i, "speaker": s} for i, s in zip(IDS, speakers, strict=True)]
    (root / "test" / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = {}
    for name, errors in errors_of.items():
        for stage, suffix in (("", ""), ("_fused", "+lm")):
            tsv = work / f"evaluate_{name}{stage}" / "test" / "transcripts.tsv"
            tsv.parent.mkdir(parents=True)
            lines = [f"{i}\t{REFERENCE}\thyp\t{e}" for i, e in zip(IDS, errors, strict=True)]
            tsv.write_text("id\treference\thypothesis\terrors\n" + "\n".join(lines) + "\n")
            wer = sum(errors) / 20
            results[f"{name}{suffix}"] = {"dev": {"wer": wer}, "test": {"wer": wer}}
    return work, root, results


def test_claim_summary_compares_every_step_of_the_chain_and_the_topline(tmp_path):
    work, root, results = _finished_run(tmp_path)
    summary = claims.claim_summary(work, results, list(ERRORS), root)
    assert set(summary) == {"greedy", "lm"}
    judged = summary["greedy"]
    reductions = judged["test_wer_reductions"]
    assert list(reductions) == [
        "supervised_10 -> ssl_10",
        "ssl_10 -> nst_10",
        "supervised_100 -> nst_10",
    ]
    # (WER_a - WER_b) / WER_a over all 20 words
    assert reductions["supervised_10 -> ssl_10"]["estimate"] == pytest.approx((20 - 14) / 20)
    assert reductions["ssl_10 -> nst_10"]["estimate"] == pytest.approx((14 - 8) / 14)
    assert reductions["supervised_100 -> nst_10"]["estimate"] == pytest.approx(0.0)
    assert judged["test_wer_reduction"] == {
        **judged["test_wer_reduction"],
        "estimate": pytest.approx((20 - 8) / 20),
    }
    for interval in reductions.values():
        assert interval["low"] <= interval["estimate"] <= interval["high"]
    # the student closes (1.0 - 0.4) / (1.0 - 0.4) of the gap: all of it
    assert judged["gap_closed"] == pytest.approx(1.0)
    assert judged["beats_teacher"] == {"nst_10": {"dev": True, "test": True}}


def test_claim_lines_state_each_comparison_as_a_signed_change(tmp_path):
    work, root, results = _finished_run(tmp_path)
    lines = claims.claim_lines(claims.claim_summary(work, results, list(ERRORS), root))
    text = "\n".join(lines)
    assert "- greedy, supervised_10 -> ssl_10: test WER -30.0% relative (95% CI [" in text
    assert "- lm: the student closes 100% of the test-WER gap" in text
    assert "- lm: nst_10 beats its teacher (dev: yes, test: yes)" in lines
    # the interval of a change is (-high, -low) of the reduction's: its lower end first
    reduction = claims.claim_summary(work, results, list(ERRORS), root)["greedy"]
    interval = reduction["test_wer_reductions"]["supervised_10 -> ssl_10"]
    assert f"[{-100 * interval['high']:+.1f}, {-100 * interval['low']:+.1f}]" in lines[0]


def test_dev_curves_read_each_runs_evaluations_by_step(tmp_path):
    from bigssl_jax.jobs import error_tables

    for step, wer in ((1000, 0.5), (500, 0.9)):
        report = tmp_path / "ssl_10" / "eval" / str(step) / "wer.json"
        report.parent.mkdir(parents=True)
        report.write_text(json.dumps({"wer": wer, "cer": wer / 2, "num_utterances": 3}))
    curves = error_tables.dev_curves({"ssl_10": tmp_path / "ssl_10", "none": tmp_path / "x"})
    assert curves == {
        "ssl_10": [
            {"step": 500, "wer": 0.9, "cer": 0.45},
            {"step": 1000, "wer": 0.5, "cer": 0.25},
        ],
        "none": [],
    }
    error_tables.plot_dev_curves(curves, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_no_gap_to_close_when_the_topline_is_not_significantly_better(tmp_path):
    errors_of = {**ERRORS, "supervised_100": (5, 5, 4, 5)}  # one error fewer, one speaker
    work, root, results = _finished_run(tmp_path, errors_of)
    summary = claims.claim_summary(work, results, list(errors_of), root)
    assert summary["greedy"]["gap_closed"] is None
    assert summary["greedy"]["topline_gain"]["low"] <= 0
    assert "- greedy: no gap to close: supervised_100 is not better" in "\n".join(
        claims.claim_lines(summary)
    )
