"""Data efficiency: what pre-training and self-training buy at each share of labeled data.

    bigssl experiment data-efficiency --preset=demo --fractions=0.05,0.1,0.25,1.0 --seeds=0,1
    bigssl experiment data-efficiency --preset=smoke --fractions=0.5,1.0 --seeds=0

For each labeled fraction f of the embedded corpus's labeled pool (the rest of the pool
joins the unlabeled audio) and each training seed, three arms with the same model, the same
fine-tuning gin and the same step budget are compared:

  supervised:    fine-tuning from scratch on the f-labeled split;
  pretrained:    fine-tuning of the pre-trained encoder on it;
  self_trained:  the `pretrained` model transcribes the unlabeled split (one noisy student
                 generation), and a student starts again from the pre-trained encoder on
                 labeled + pseudo-labeled batches mixed like the pipeline's students.

Stages (each finds its finished output and skips; interrupted training resumes):

1. inputs:   the pipeline's stages 1-4 (corpus, prepare, vocab, batches) for the preset.
2. corpora:  per fraction f < 1, the derived corpus `<corpus>_f<pct>` (e.g.
             `embedded_small_f10`): its `labeled` split is a random subset of round(f * N) of
             the N labeled utterances, drawn with `--seed`; its `unlabeled` split is the
             corpus's unlabeled split plus the rest of the pool with transcripts hidden; dev /
             test / test_clean are the corpus's own shards (registered again, not copied). It
             gets its own vocabulary, trained on its labeled split. f = 1 is the corpus itself.
3. pretrain: one self-supervised pre-training on the corpus, shared by every fraction (the
             unlabeled audio it sees is unlabeled in every fraction); the pipeline's own
             pre-training of the preset (`bigssl pipeline`), the same run, when it is done.
4. arms:     per fraction and seed, the three arms with `CORPUS = '<corpus>_f<pct>'` and
             `TrainerConfig.seed = <seed>` bound. At f = 1 and the pipeline's seed (the
             trainer's default) the arms are the pipeline's baseline, teacher and student_1,
             the same runs: when the pipeline has trained all three, they are scored there
             instead of trained again.
5. evaluate: WER and CER of every model on dev, test and test_clean, then `results.json`
             (one row per fraction, seed and arm, and the mean over seeds), `results.md`
             (test, dev and test_clean tables, with the relative WER and CER reductions of
             self-training over supervised training) and `results.png` (test WER against
             labeled hours).

Everything runs under `<data_dir>/experiments/data_efficiency/<preset>/`: `pretrain/` and
`f<pct>_s<seed>/<stage>/` with the pipeline's `<stage>.log` and `DONE` markers.
"""

import dataclasses
import json
import math
import os
import pathlib
import time

import numpy as np

from bigssl_jax import paths, pipeline

ARMS = ("supervised", "pretrained", "self_trained")
TABLE_SPLITS = ("test", "dev", "test_clean")  # the first one is plotted


def work_dir(data_dir: os.PathLike, preset_name: str) -> pathlib.Path:
    """`<data_dir>/experiments/data_efficiency/<preset>`."""
    return pathlib.Path(data_dir) / "experiments" / "data_efficiency" / preset_name


def shared_pretraining(runner: pipeline.Runner, pipeline_dir: pathlib.Path) -> pathlib.Path:
    """The pre-training every arm starts from: the finished `pretrain` stage of the pipeline
    in `pipeline_dir` (same preset, corpus, gin and bindings), else `runner`'s own."""
    start = time.perf_counter()
    finished = pipeline_dir / pipeline.PRETRAIN
    if (finished / pipeline.DONE).exists():
        pipeline.print_stage(pipeline.PRETRAIN, f"found the pipeline's {finished}", start)
        return finished
    return runner.pretrain()


def pipeline_stages(preset: pipeline.PipelinePreset, fraction: float) -> dict[str, str] | None:
    """The pipeline's stage that is each arm at `fraction` (and the pipeline's seed), if it
    trains them: at f = 1 the classic stages, at the share of a data-efficiency preset
    (`labeled_fraction` < 1) its arms on that share."""
    if preset.labeled_fraction == 1.0 and fraction == 1.0:
        return {"supervised": "baseline", "pretrained": "teacher", "self_trained": "student_1"}
    if preset.labeled_fraction < 1.0 and fraction == preset.labeled_fraction:
        return dict(zip(ARMS, arm_names(fraction), strict=True))
    return None


def arm_names(fraction: float) -> tuple[str, str, str]:
    """The pipeline's stage names of the arms at `fraction`: supervised_10, ssl_10, nst_10."""
    tag = f"{100 * fraction:g}"
    return (f"supervised_{tag}", f"ssl_{tag}", f"nst_{tag}")


def pipeline_seed() -> int:
    """The training seed of the pipeline's runs: it binds none, so the trainer's default."""
    from bigssl_jax import trainer

    fields = {field.name: field for field in dataclasses.fields(trainer.TrainerConfig)}
    return fields["seed"].default


def pipeline_arms(
    pipeline_runner: pipeline.Runner, share: pipeline.LabeledShare, seed: int
) -> dict[str, dict[str, dict[str, float]]] | None:
    """Stages 4-5 done by the pipeline: at the pipeline's seed and a fraction whose arms it
    trains (`pipeline_stages`), when it has trained all three, their error rates per split
    (scored by its own `evaluate_*` stages, which run if missing); else None."""
    stages = pipeline_stages(pipeline_runner.preset, share.fraction)
    if stages is None or seed != pipeline_seed():
        return None
    runs = {arm: pipeline_runner.work_dir / stage for arm, stage in stages.items()}
    if not all((run_dir / pipeline.DONE).exists() for run_dir in runs.values()):
        return None
    start = time.perf_counter()
    pipeline.print_stage(
        f"{share.tag}_s{seed}",
        f"the pipeline's {', '.join(stages.values())} in {pipeline_runner.work_dir}",
        start,
    )
    return {arm: pipeline_runner.evaluate(stages[arm], run_dir) for arm, run_dir in runs.items()}


def run_arms(
    base: pipeline.Runner,
    share: pipeline.LabeledShare,
    seed: int,
    pretrained: pathlib.Path,
    ngram: pathlib.Path | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Stages 4-5 for one fraction and seed: {arm: {split: {'wer': ..., 'cer': ...}}}, the
    arms trained as the pipeline's (`pipeline.share_arms`, pseudo-labels fused with `ngram`)."""
    runner = dataclasses.replace(
        base,
        corpus=share.corpus,
        work_dir=base.work_dir / f"{share.tag}_s{seed}",
        bindings=(f"TrainerConfig.seed = {seed}",),
    )
    models = pipeline.share_arms(runner, ARMS, pretrained, ngram)
    return {arm: runner.evaluate(arm, run_dir) for arm, run_dir in models.items()}


def summarize(rows: list[dict]) -> list[dict]:
    """Mean (and population std) over seeds of every split's error rates, per (fraction, arm):
    `wer`, `wer_std`, `cer`, `cer_std`, each {split: value}."""
    groups: dict[tuple[float, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["fraction"], row["arm"]), []).append(row)
    means = []
    for (fraction, arm), group in groups.items():
        mean = {
            "fraction": fraction,
            "labeled_hours": group[0]["labeled_hours"],
            "labeled_utterances": group[0]["labeled_utterances"],
            "arm": arm,
            "seeds": [row["seed"] for row in group],
        }
        for rate in pipeline.ERROR_RATES:
            splits = [
                s for s in pipeline.EVAL_SPLITS if all(s in row.get(rate, {}) for row in group)
            ]
            values = {s: np.array([row[rate][s] for row in group]) for s in splits}
            mean[rate] = {s: float(v.mean()) for s, v in values.items()}
            mean[f"{rate}_std"] = {s: float(v.std()) for s, v in values.items()}
        means.append(mean)
    return means


def _cell(mean: dict | None, split: str) -> str:
    """'WER / CER' (%) of `split`, each '± std' over several seeds; '-' where missing."""
    if mean is None or not any(split in mean[rate] for rate in pipeline.ERROR_RATES):
        return "-"
    rates = {r: mean[r][split] for r in pipeline.ERROR_RATES if split in mean[r]}
    stds = {r: mean[f"{r}_std"][split] for r in rates} if len(mean["seeds"]) > 1 else None
    return pipeline.rates_cell(rates, stds)


def relative_reduction(supervised: float, self_trained: float) -> float:
    """Relative error-rate reduction of self-training over supervised training, in [-inf, 1]."""
    return (supervised - self_trained) / supervised if supervised > 0 else math.nan


def _reduction_cell(row: dict, rate: str, split: str) -> str:
    pair = [row[arm] for arm in ("supervised", "self_trained")]
    if not all(m is not None and split in m[rate] for m in pair):
        return "-"
    reduction = relative_reduction(pair[0][rate][split], pair[1][rate][split])
    return "-" if math.isnan(reduction) else f"{100 * reduction:+.1f}%"


def results_table(means: list[dict], split: str) -> str:
    """A Markdown table of `split`'s mean WER / CER (%): a row per fraction, a column per
    arm, then the relative WER and CER reductions of `self_trained` over `supervised`."""
    by_key = {(m["fraction"], m["arm"]): m for m in means}
    header = [
        "labeled",
        "hours",
        *ARMS,
        "WER reduction, self_trained vs supervised",
        "CER reduction",
    ]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for fraction in sorted({m["fraction"] for m in means}):
        row = {arm: by_key.get((fraction, arm)) for arm in ARMS}
        first = next(m for m in row.values() if m is not None)
        cells = [f"{100 * fraction:g}%", f"{first['labeled_hours']:.3f}"]
        cells += [_cell(row[arm], split) for arm in ARMS]
        cells += [_reduction_cell(row, rate, split) for rate in pipeline.ERROR_RATES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_markdown(means: list[dict], corpus: str) -> str:
    """One table per split (test first): mean WER / CER (%) over seeds (± std with several)."""
    parts = [f"# Data efficiency on {corpus}: WER / CER (%)"]
    for split in TABLE_SPLITS:
        if any(split in m["wer"] for m in means):
            parts += [f"## {split}", results_table(means, split)]
    return "\n\n".join(parts) + "\n"


def plot_results(means: list[dict], path: pathlib.Path) -> None:
    """WER on the first table split against labeled hours (log x), one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib import ticker

    split = next(s for s in TABLE_SPLITS if any(s in m["wer"] for m in means))
    figure, axis = plt.subplots(figsize=(6, 4))
    for arm in ARMS:
        points = sorted(
            (m["labeled_hours"], 100 * m["wer"][split], 100 * m["wer_std"][split])
            for m in means
            if m["arm"] == arm and split in m["wer"]
        )
        if points:
            hours, wers, stds = zip(*points, strict=True)
            axis.errorbar(hours, wers, yerr=stds, marker="o", capsize=3, label=arm)
    axis.set_xscale("log")
    hours = sorted({m["labeled_hours"] for m in means})
    axis.set_xticks(hours, [f"{h:.3g}" for h in hours])
    axis.xaxis.set_minor_formatter(ticker.NullFormatter())
    axis.set_xlabel("labeled hours")
    axis.set_ylabel(f"{split} WER (%)")
    axis.set_title("WER against labeled data")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_results(rows: list[dict], corpus: str, out_dir: pathlib.Path) -> str:
    """`results.json`, `results.md` and `results.png` under `out_dir`; returns the Markdown."""
    means = summarize(rows)
    markdown = results_markdown(means, corpus)
    results = {"corpus": corpus, "rows": rows, "means": means}
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "results.md").write_text(markdown)
    plot_results(means, out_dir / "results.png")
    return markdown


def run(
    preset_name: str,
    *,
    data_dir: os.PathLike,
    fractions,
    seeds,
    data_seed: int = 0,
    jobs: int = 1,
) -> int:
    """Runs every stage of the experiment; returns the exit code (0 = all done).

    Args:
      preset_name: a `pipeline.PRESETS` name (corpus, gins, step budgets).
      data_dir: the data directory.
      fractions: labeled shares of the labeled pool, each in (0, 1].
      seeds: training seeds (`TrainerConfig.seed`) of every arm.
      data_seed: seed of the corpus synthesis and of the labeled subsets.
      jobs: worker processes of corpus synthesis and preparation.

    Raises:
      ValueError: a fraction is not in (0, 1].
      pipeline.StageError: a stage failed (its log is named).
    """
    fractions, seeds = sorted(set(fractions)), list(dict.fromkeys(seeds))
    if not fractions or not all(0.0 < f <= 1.0 for f in fractions):
        raise ValueError(f"labeled fractions must be in (0, 1], got {fractions}")
    preset = pipeline.PRESETS[preset_name]
    corpus = pipeline.prepare_inputs(preset, data_dir=data_dir, seed=data_seed, jobs=jobs)
    root = paths.embedded_corpus_dir(data_dir, preset.corpus_preset)
    text_file = pipeline.text_only_file(root)
    shared = pipeline.ensure_vocabulary(data_dir, corpus, preset.vocab_size) if text_file else None
    shares = [
        pipeline.make_labeled_share(
            data_dir,
            corpus,
            f,
            root=root,
            seed=data_seed,
            vocab_size=preset.vocab_size,
            jobs=jobs,
            vocabulary=shared,
        )  # fmt: skip
        for f in fractions
    ]
    out_dir = work_dir(data_dir, preset_name)
    base = pipeline.Runner(preset, corpus, pathlib.Path(data_dir), out_dir)
    pipeline_runner = dataclasses.replace(base, work_dir=pipeline.work_dir(data_dir, preset_name))
    pretrained = shared_pretraining(base, pipeline_runner.work_dir)
    ngram = base.count_ngram(text_file) if preset.ngram_order and text_file else None
    rows = []
    for share in shares:
        for seed in seeds:
            arms = pipeline_arms(pipeline_runner, share, seed)
            if arms is None:
                arms = run_arms(base, share, seed, pretrained, ngram)
            for arm, scores in arms.items():
                rates = {
                    rate: {split: r[rate] for split, r in scores.items() if rate in r}
                    for rate in pipeline.ERROR_RATES
                }
                rows.append(
                    {
                        "fraction": share.fraction,
                        "labeled_hours": share.hours,
                        "labeled_utterances": share.utterances,
                        "arm": arm,
                        "seed": seed,
                        **rates,
                    }
                )
    markdown = write_results(rows, corpus, out_dir)
    print(f"\n{markdown}\n(plot: {out_dir / 'results.png'})", flush=True)
    return 0
