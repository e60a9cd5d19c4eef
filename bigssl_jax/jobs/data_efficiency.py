"""Data efficiency: what pre-training and self-training buy at each share of labeled data.

    bigssl experiment data-efficiency --preset=demo --fractions=0.05,0.1,0.25,1.0 \
        --seeds=0,1,2 --draws=0,1
    bigssl experiment data-efficiency --preset=smoke --fractions=0.5,1.0 --seeds=0

For each labeled fraction f of the embedded corpus's labeled pool (the rest of the pool
joins the unlabeled audio), each random draw of that subset and each training seed, three
arms with the same model, the same fine-tuning gin and the same step budget are compared
(trained as the pipeline's, `pipeline.share_arms`):

  supervised:    fine-tuning from scratch on the f-labeled split;
  pretrained:    fine-tuning of the pre-trained encoder on it (the teacher);
  self_trained:  the `pretrained` model transcribes the unlabeled split (beam search fused
                 with the preset's n-gram LM at the weight best on dev, if it has one), and a
                 noisy student starts again from the pre-trained encoder on labeled +
                 pseudo-labeled batches.

Stages (each finds its finished output and skips; interrupted training resumes):

1. inputs:   the pipeline's stages 1-4 (corpus, prepare, vocab, batches) for the preset.
2. corpora:  per fraction f < 1 and draw d, the derived corpus `<corpus>_f<pct>[_d<d>]`
             (`corpora.make_labeled_share`): its `labeled` split is a random subset of
             round(f * N) of the N labeled utterances (draw 0 drawn with `--seed`, draw d
             with (seed, d)); its `unlabeled` split is the corpus's unlabeled split plus the
             rest of the pool with transcripts hidden; dev / test / test_clean are the
             corpus's own shards. A corpus with text-only sentences gives every share one
             vocabulary (trained on them); otherwise each share trains its own on its labels.
             f = 1 is the corpus itself.
3. pretrain: one self-supervised pre-training on the corpus, shared by every fraction (the
             unlabeled audio it sees is unlabeled in every fraction); the pipeline's own
             pre-training of the preset (`bigssl pipeline`), the same run, when it is done;
             and the preset's n-gram LM of the text-only sentences.
4. arms:     per share and seed, the three arms with `TrainerConfig.seed = <seed>` bound.
             Where the pipeline trains the same arms (draw 0, its seed: f = 1 for the
             classic presets, its `labeled_fraction` for the data-efficiency ones), they are
             scored there instead of trained again.
5. evaluate: WER and CER of every model on dev, test and test_clean, then `results.json`
             (one row per fraction, draw, seed and arm; the mean and std over seeds and
             draws; per fraction the relative test-WER reduction of self_trained over
             supervised with its paired speaker-block bootstrap 95% interval, the runs
             pooled), `results.md` (test, dev and test_clean tables with the relative WER and
             CER reductions, then the intervals) and `results.png` (test WER against
             labeled minutes).

Everything runs under `<data_dir>/experiments/data_efficiency/<preset>/`: `pretrain/` and
`f<pct>[_d<d>]_s<seed>/<stage>/` with the pipeline's `<stage>.log` and `DONE` markers.
"""

import dataclasses
import json
import math
import os
import pathlib
import time

import numpy as np

from bigssl_jax import paths
from bigssl_jax.data import manifests
from bigssl_jax.jobs import corpora, error_tables, pipeline
from bigssl_tasks import vocab

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
    pipeline_runner: pipeline.Runner, share: corpora.LabeledShare, seed: int
) -> dict[str, tuple[dict, pathlib.Path]] | None:
    """Stages 4-5 done by the pipeline: at the pipeline's seed and a fraction whose arms it
    trains (`pipeline_stages`), when it has trained all three, {arm: (its error rates per
    split, its evaluation dir)} (scored by its own `evaluate_*` stages, which run if
    missing); else None."""
    stages = pipeline_stages(pipeline_runner.preset, share.fraction)
    if stages is None or seed != pipeline_seed() or share.draw:
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
    return {
        arm: (
            pipeline_runner.evaluate(stages[arm], run_dir),
            pipeline_runner.work_dir / f"evaluate_{stages[arm]}",
        )
        for arm, run_dir in runs.items()
    }


def run_arms(
    base: pipeline.Runner,
    share: corpora.LabeledShare,
    seed: int,
    pretrained: pathlib.Path,
    ngram: pathlib.Path | None = None,
) -> dict[str, tuple[dict, pathlib.Path]]:
    """Stages 4-5 for one fraction and seed: {arm: ({split: {'wer': ..., 'cer': ...}}, its
    evaluation dir)}, the arms trained as the pipeline's (`pipeline.share_arms`,
    pseudo-labels fused with `ngram`)."""
    runner = dataclasses.replace(
        base,
        corpus=share.corpus,
        work_dir=base.work_dir / f"{share.tag}_s{seed}",
        bindings=(f"TrainerConfig.seed = {seed}",),
    )
    models = pipeline.share_arms(runner, ARMS, pretrained, ngram)
    return {
        arm: (runner.evaluate(arm, run_dir), runner.work_dir / f"evaluate_{arm}")
        for arm, run_dir in models.items()
    }


def _row(
    share: corpora.LabeledShare, seed: int, arm: str, scores: dict, evaluated: pathlib.Path
) -> dict:
    """One results row: the share, the seed, the arm, its rates {rate: {split: value}} and
    its test transcripts."""
    rates = {
        rate: {split: r[rate] for split, r in scores.items() if rate in r}
        for rate in error_tables.ERROR_RATES
    }
    return {
        "fraction": share.fraction,
        "draw": share.draw,
        "labeled_hours": share.hours,
        "labeled_utterances": share.utterances,
        "arm": arm,
        "seed": seed,
        "run": f"{share.tag}_s{seed}",
        "test_transcripts": str(evaluated / "test" / "transcripts.tsv"),
        **rates,
    }


def reduction_intervals(rows: list[dict], root: os.PathLike) -> dict:
    """Per fraction: the relative test-WER reduction of `self_trained` over `supervised`,
    pooled over every seed and draw (each speaker's errors summed over the runs), with its
    paired speaker-block bootstrap 95% interval (`evaluation.bootstrap`).

    Returns:
      {fraction: Interval.to_json()}, for the fractions whose runs all left transcripts.
    """
    from bigssl_jax.evaluation import bootstrap

    manifest = pathlib.Path(root) / "test" / manifests.MANIFEST_NAME
    speakers = {
        row["id"]: row["speaker"]
        for row in (json.loads(line) for line in manifest.read_text().splitlines())
    }
    paths_of = {(r["run"], r["arm"]): pathlib.Path(r["test_transcripts"]) for r in rows}
    intervals = {}
    for fraction in sorted({row["fraction"] for row in rows}):
        runs = sorted({r["run"] for r in rows if r["fraction"] == fraction})
        pairs = [tuple(paths_of.get((run, arm)) for arm in ("supervised", "self_trained"))
                 for run in runs]  # fmt: skip
        if not all(path and path.exists() for pair in pairs for path in pair):
            continue
        errors = [bootstrap.paired_errors(*pair) for pair in pairs]
        pooled = bootstrap.PairedErrors(
            tuple(f"{run}/{i}" for run, e in zip(runs, errors, strict=True) for i in e.ids),
            np.concatenate([e.errors_a for e in errors]),
            np.concatenate([e.errors_b for e in errors]),
            np.concatenate([e.words for e in errors]),
        )
        by_id = {i: speakers[i.split("/", 1)[1]] for i in pooled.ids}
        intervals[fraction] = bootstrap.relative_reduction_ci(pooled, by_id).to_json()
    return intervals


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
            "draws": [row.get("draw", 0) for row in group],
        }
        for rate in error_tables.ERROR_RATES:
            splits = [
                s for s in corpora.EVAL_SPLITS if all(s in row.get(rate, {}) for row in group)
            ]
            values = {s: np.array([row[rate][s] for row in group]) for s in splits}
            mean[rate] = {s: float(v.mean()) for s, v in values.items()}
            mean[f"{rate}_std"] = {s: float(v.std()) for s, v in values.items()}
        means.append(mean)
    return means


def _cell(mean: dict | None, split: str) -> str:
    """'WER / CER' (%) of `split`, each '± std' over several seeds; '-' where missing."""
    if mean is None or not any(split in mean[rate] for rate in error_tables.ERROR_RATES):
        return "-"
    rates = {r: mean[r][split] for r in error_tables.ERROR_RATES if split in mean[r]}
    stds = {r: mean[f"{r}_std"][split] for r in rates} if len(mean["seeds"]) > 1 else None
    return error_tables.rates_cell(rates, stds)


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
        cells += [_reduction_cell(row, rate, split) for rate in error_tables.ERROR_RATES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_markdown(means: list[dict], corpus: str, intervals: dict | None = None) -> str:
    """One table per split (test first): mean WER / CER (%) over seeds and draws (± std with
    several), then the bootstrap intervals of the test-WER reductions."""
    parts = [f"# Data efficiency on {corpus}: WER / CER (%)"]
    for split in TABLE_SPLITS:
        if any(split in m["wer"] for m in means):
            parts += [f"## {split}", results_table(means, split)]
    if intervals:
        lines = [
            f"- {100 * fraction:g}% labeled: {100 * i['estimate']:+.1f}%, 95% CI "
            f"[{100 * i['low']:+.1f}%, {100 * i['high']:+.1f}%]"
            for fraction, i in sorted(intervals.items())
        ]
        parts += [
            "## Relative test-WER reduction of self_trained over supervised "
            "(paired speaker-block bootstrap, runs pooled)",
            "\n".join(lines),
        ]
    return "\n\n".join(parts) + "\n"


def plot_results(means: list[dict], path: pathlib.Path) -> None:
    """WER on the first table split against labeled minutes (log x), one line per arm, with
    the std over seeds and draws as bars."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib import ticker

    split = next(s for s in TABLE_SPLITS if any(s in m["wer"] for m in means))
    figure, axis = plt.subplots(figsize=(6, 4))
    for arm in ARMS:
        points = sorted(
            (60 * m["labeled_hours"], 100 * m["wer"][split], 100 * m["wer_std"][split])
            for m in means
            if m["arm"] == arm and split in m["wer"]
        )
        if points:
            minutes, wers, stds = zip(*points, strict=True)
            axis.errorbar(minutes, wers, yerr=stds, marker="o", capsize=3, label=arm)
    axis.set_xscale("log")
    minutes = sorted({60 * m["labeled_hours"] for m in means})
    axis.set_xticks(minutes, [f"{m:.3g}" for m in minutes])
    axis.xaxis.set_minor_formatter(ticker.NullFormatter())
    axis.set_xlabel("labeled minutes")
    axis.set_ylabel(f"{split} WER (%)")
    axis.set_title("WER against labeled data")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_results(
    rows: list[dict], corpus: str, out_dir: pathlib.Path, intervals: dict | None = None
) -> str:
    """`results.json` (rows, means over seeds and draws, and per fraction the bootstrap
    interval of the self_trained-over-supervised test-WER reduction), `results.md` and
    `results.png` under `out_dir`; returns the Markdown."""
    means = summarize(rows)
    markdown = results_markdown(means, corpus, intervals or {})
    results = {"corpus": corpus, "rows": rows, "means": means, "reductions": intervals or {}}
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
    draws=(0,),
    data_seed: int = 0,
    jobs: int = 1,
) -> int:
    """Runs every stage of the experiment; returns the exit code (0 = all done).

    Args:
      preset_name: a `pipeline.PRESETS` name (corpus, gins, step budgets).
      data_dir: the data directory.
      fractions: labeled shares of the labeled pool, each in (0, 1].
      seeds: training seeds (`TrainerConfig.seed`) of every arm.
      draws: which random subsets of the pool each fraction below 1 is run on
        (`corpora.make_labeled_share`).
      data_seed: seed of the corpus synthesis and of the labeled subsets.
      jobs: worker processes of corpus synthesis and preparation.

    Raises:
      ValueError: a fraction is not in (0, 1].
      pipeline.StageError: a stage failed (its log is named).
    """
    fractions, seeds = sorted(set(fractions)), list(dict.fromkeys(seeds))
    draws = list(dict.fromkeys(draws))
    if not fractions or not all(0.0 < f <= 1.0 for f in fractions):
        raise ValueError(f"labeled fractions must be in (0, 1], got {fractions}")
    preset = pipeline.PRESETS[preset_name]
    corpus = pipeline.prepare_inputs(preset, data_dir=data_dir, seed=data_seed, jobs=jobs)
    root = paths.embedded_corpus_dir(data_dir, preset.corpus_preset)
    text_file = corpora.text_only_file(root)
    # prepare_inputs trained the corpus's vocabulary: with text-only sentences, every share's.
    shared = vocab.vocab_path(data_dir, corpus, preset.vocab_size) if text_file else None
    shares = [
        corpora.make_labeled_share(
            data_dir,
            corpus,
            f,
            root=root,
            seed=data_seed,
            vocab_size=preset.vocab_size,
            jobs=jobs,
            vocabulary=shared,
            draw=draw,
        )  # fmt: skip
        for f in fractions
        for draw in (draws if f < 1.0 else draws[:1])  # the whole pool has one draw
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
            rows += [_row(share, seed, arm, *scored) for arm, scored in arms.items()]
    intervals = reduction_intervals(rows, root)
    markdown = write_results(rows, corpus, out_dir, intervals)
    print(f"\n{markdown}\n(plot: {out_dir / 'results.png'})", flush=True)
    return 0
