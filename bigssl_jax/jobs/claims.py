"""What the data-efficiency design is judged by, read from a finished pipeline's evaluations.

summary = claims.claim_summary(work_dir, results, names, corpus_root)
summary["lm"]["test_wer_reduction"]    # {'estimate', 'low', 'high', 'level', ...}
"""

import functools
import json
import os
import pathlib

from bigssl_jax.data import manifests
from bigssl_jax.evaluation import bootstrap


def claim_summary(
    work_dir: pathlib.Path, results: dict[str, dict], names: list[str], root: os.PathLike
) -> dict:
    """What the data-efficiency design is judged by, greedy and LM-fused (`+lm` rows).

    `names` are the models in training order: supervised_<p>, ssl_<p>, the students, then
    supervised_100. Per decoding: the relative test-WER reduction of the last student over
    supervised_<p> with its paired speaker-block bootstrap 95% interval
    (`evaluation.bootstrap`); the same interval for every step of the chain
    (`test_wer_reductions`: supervised_<p> -> ssl_<p>, ssl_<p> -> each student in turn, and
    supervised_100 -> the last student, whose interval holding 0 or more means the student
    matches or beats supervised training on all the labels); the share of the
    supervised_<p> -> supervised_100 test-WER gap it closes (None unless supervised_100 is
    better with 95% confidence: `topline_gain`, its interval), and whether each generation
    beats its teacher on dev and on test: from the test transcripts of the stages
    `evaluate_<name>` (greedy) and `evaluate_<name>_fused` under `work_dir`, the test
    speakers from the embedded corpus at `root`.
    """
    manifest = pathlib.Path(root) / "test" / manifests.MANIFEST_NAME
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    speakers = {row["id"]: row["speaker"] for row in rows}
    supervised, *chain, topline = names
    summary = {}
    for decoding, suffix, stage in (("greedy", "", ""), ("lm", "+lm", "_fused")):
        if f"{supervised}{suffix}" not in results:
            continue
        reduction = functools.partial(_test_wer_reduction, work_dir, stage, speakers)
        generations = list(zip(chain, chain[1:], strict=False))  # (teacher, student)
        pairs = [(supervised, chain[0]), *generations, (topline, chain[-1])]
        test_wer = {name: results[f"{name}{suffix}"]["test"]["wer"] for name in names}
        # A gap is only one to close when the topline is significantly better.
        topline_gain = reduction(supervised, topline)
        gap = test_wer[supervised] - test_wer[topline] if topline_gain["low"] > 0 else 0.0
        summary[decoding] = {
            "test_wer_reduction": reduction(supervised, chain[-1]),
            "test_wer_reductions": {
                f"{baseline} -> {system}": reduction(baseline, system) for baseline, system in pairs
            },
            "topline_gain": topline_gain,
            "gap_closed": (test_wer[supervised] - test_wer[chain[-1]]) / gap if gap > 0 else None,
            "beats_teacher": {
                student: {
                    split: results[f"{student}{suffix}"][split]["wer"]
                    < results[f"{teacher}{suffix}"][split]["wer"]
                    for split in ("dev", "test")
                }
                for teacher, student in generations
            },
        }
    return summary


def _test_wer_reduction(
    work_dir: pathlib.Path, stage: str, speakers: dict[str, str], baseline: str, system: str
) -> dict:
    """The relative test-WER reduction of `system` over `baseline` and its paired
    speaker-block bootstrap 95% interval, from their `evaluate_<name><stage>` transcripts."""
    tsv = [
        work_dir / f"evaluate_{name}{stage}" / "test" / "transcripts.tsv"
        for name in (baseline, system)
    ]
    return bootstrap.relative_reduction_ci(bootstrap.paired_errors(*tsv), speakers).to_json()


def claim_lines(summary: dict) -> list[str]:
    """Markdown bullets of `claim_summary`'s judgement, one per decoding and comparison, e.g.
    '- greedy, supervised_10 -> nst_10: test WER -12.3% relative (95% CI [-20.1, -4.0])'
    (a negative change is a reduction)."""
    lines = []
    for decoding, judged in summary.items():
        for pair, interval in judged["test_wer_reductions"].items():
            change = [-100 * interval[key] for key in ("estimate", "high", "low")]
            lines.append(
                f"- {decoding}, {pair}: test WER {change[0]:+.1f}% relative "
                f"({100 * interval['level']:g}% CI [{change[1]:+.1f}, {change[2]:+.1f}])"
            )
        if judged["gap_closed"] is not None:
            lines.append(
                f"- {decoding}: the student closes {100 * judged['gap_closed']:.0f}% of the "
                "test-WER gap between the share's supervised arm and supervised_100"
            )
        else:
            gain = judged["topline_gain"]
            lines.append(
                f"- {decoding}: no gap to close: supervised_100 is not better than the share's "
                f"supervised arm with 95% confidence (test WER {-100 * gain['estimate']:+.1f}% "
                f"relative, CI [{-100 * gain['high']:+.1f}, {-100 * gain['low']:+.1f}])"
            )
        for student, beats in judged["beats_teacher"].items():
            verdict = ", ".join(f"{split}: {'yes' if w else 'no'}" for split, w in beats.items())
            lines.append(f"- {decoding}: {student} beats its teacher ({verdict})")
    return lines
