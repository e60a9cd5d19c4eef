"""Tables and plots of error rates per model and split (the pipeline's and experiments').

print(error_tables.results_table({"ssl_10": {"test": {"wer": 0.42, "cer": 0.2}}}))
| model | test |
|---|---|
| ssl_10 | 42.0 / 20.0 |
"""

import json
import pathlib

from bigssl_jax.jobs.corpora import EVAL_SPLITS

# The error rates reported per split. At laptop scale WER sits near 100% while CER still
# moves, so the tables show both.
ERROR_RATES = ("wer", "cer")


def rates_cell(rates: dict[str, float], stds: dict[str, float] | None = None) -> str:
    """'WER / CER' in %, e.g. '89.6 / 58.6' ('-' for a missing rate), each '± std' when
    `stds` (over seeds) is given."""

    def one(rate: str) -> str:
        if rate not in rates:
            return "-"
        return f"{100 * rates[rate]:.1f}" + (f" ± {100 * stds[rate]:.1f}" if stds else "")

    return " / ".join(one(rate) for rate in ERROR_RATES)


def results_table(results: dict[str, dict]) -> str:
    """A Markdown table: one row per model, WER / CER (%) per split."""
    splits = [s for s in EVAL_SPLITS if any(s in r for r in results.values())]
    lines = ["| model | " + " | ".join(splits) + " |", "|---" * (len(splits) + 1) + "|"]
    for name, scores in results.items():
        cells = [rates_cell(scores[s]) if s in scores else "-" for s in splits]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(results: dict[str, dict], work_dir: pathlib.Path) -> None:
    """`results.json`, `results.md` (WER / CER per model and split), `results.png` (WER)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    (work_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (work_dir / "results.md").write_text(results_table(results) + "\n")
    figure, axis = plt.subplots(figsize=(6, 3.5))
    names = list(results)
    for split in EVAL_SPLITS:
        values = [100 * results[name].get(split, {}).get("wer", float("nan")) for name in names]
        axis.plot(names, values, marker="o", label=split)
    axis.set_ylabel("WER (%)")
    axis.set_title("WER per pipeline stage")
    axis.legend()
    figure.tight_layout()
    figure.savefig(work_dir / "results.png", dpi=120)
    plt.close(figure)


def dev_curves(runs: dict[str, pathlib.Path]) -> dict[str, list[dict]]:
    """name -> [{'step', 'wer', 'cer'}, ...] by step: the dev evaluations each training run
    wrote as it went (`<run>/eval/<step>/wer.json`); a run without any gives []."""
    curves = {}
    for name, run_dir in runs.items():
        points = []
        for report in pathlib.Path(run_dir).glob("eval/*/wer.json"):
            scores = json.loads(report.read_text())
            points.append({"step": int(report.parent.name), **{r: scores[r] for r in ERROR_RATES}})
        curves[name] = sorted(points, key=lambda point: point["step"])
    return curves


def plot_dev_curves(curves: dict[str, list[dict]], path: pathlib.Path) -> None:
    """Dev WER and CER (%) against the training step, one line per run, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(1, len(ERROR_RATES), figsize=(10, 3.5))
    for axis, rate in zip(axes, ERROR_RATES, strict=True):
        for name, points in curves.items():
            if points:
                steps = [point["step"] for point in points]
                axis.plot(steps, [100 * p[rate] for p in points], marker="o", label=name)
        axis.set_xlabel("training step")
        axis.set_ylabel(f"dev {rate.upper()} (%)")
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
