"""What the data-efficiency design is judged by, read from a finished pipeline's evaluations.

summary = claims.claim_summary(work_dir, results, names, corpus_root)
summary["lm"]["test_wer_reduction"]    # {'estimate', 'low', 'high', 'level', ...}
"""

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
    (`evaluation.bootstrap`), the share of the supervised_<p> -> supervised_100 test-WER gap
    it closes, and whether each generation beats its teacher on dev and on test: from the
    test transcripts of the stages `evaluate_<name>` (greedy) and `evaluate_<name>_fused`
    under `work_dir`, the test speakers from the embedded corpus at `root`.
    """
    manifest = pathlib.Path(root) / "test" / manifests.MANIFEST_NAME
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    speakers = {row["id"]: row["speaker"] for row in rows}
    supervised, *chain, topline = names
    summary = {}
    for decoding, suffix, stage in (("greedy", "", ""), ("lm", "+lm", "_fused")):
        if f"{supervised}{suffix}" not in results:
            continue
        tsv = [
            work_dir / f"evaluate_{name}{stage}" / "test" / "transcripts.tsv"
            for name in (supervised, chain[-1])
        ]
        interval = bootstrap.relative_reduction_ci(bootstrap.paired_errors(*tsv), speakers)
        test_wer = {name: results[f"{name}{suffix}"]["test"]["wer"] for name in names}
        gap = test_wer[supervised] - test_wer[topline]
        summary[decoding] = {
            "test_wer_reduction": interval.to_json(),
            "gap_closed": (test_wer[supervised] - test_wer[chain[-1]]) / gap if gap > 0 else None,
            "beats_teacher": {
                student: {
                    split: results[f"{student}{suffix}"][split]["wer"]
                    < results[f"{teacher}{suffix}"][split]["wer"]
                    for split in ("dev", "test")
                }
                for teacher, student in zip(chain, chain[1:], strict=False)
            },
        }
    return summary
