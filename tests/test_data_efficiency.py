"""`bigssl experiment data-efficiency`: the labeled-pool split, the tables, and the smoke run."""

import json
import math
import os
import subprocess
import sys

import pytest

from bigssl_jax import paths
from bigssl_jax.data import prepare, schema, sources, synthetic_corpus
from bigssl_jax.data import registry as registry_lib
from bigssl_jax.jobs import corpora, data_efficiency, pipeline


def _source(prefix: str, count: int, *, labeled: bool) -> sources.FileSource:
    entries = [
        sources.Entry(
            id=f"{prefix}{i}",
            location=f"/audio/{prefix}{i}.flac",
            text=f"words {i}" if labeled else None,
            extra={"accent": "a"} if labeled else {"accent": "b", "oracle_text": f"u {i}"},
        )
        for i in range(count)
    ]
    fields = ("accent",) if labeled else ("accent", schema.ORACLE_TEXT_FIELD)
    return sources.FileSource(prefix, entries, labeled=labeled, extra_fields=fields)


def test_split_labeled_pool_sizes_disjoint_hidden_and_seeded():
    pool, unlabeled = _source("l", 20, labeled=True), _source("u", 7, labeled=False)
    subset, rest = sources.split_labeled_pool(pool, unlabeled, 0.25, seed=3)

    assert subset.labeled and not rest.labeled
    assert len(subset) == 5 and len(rest) == 7 + 15
    chosen = {e.id for e in subset.entries}
    moved = [e for e in rest.entries if e.id.startswith("l")]
    assert chosen.isdisjoint(e.id for e in moved)
    assert chosen | {e.id for e in moved} == {e.id for e in pool.entries}
    assert [e.id for e in rest.entries[:7]] == [f"u{i}" for i in range(7)]
    # Transcripts are hidden in the unlabeled part, kept for analysis only.
    texts = {e.id: e.text for e in pool.entries}
    assert all(e.text is None and e.extra["oracle_text"] == texts[e.id] for e in moved)
    assert all(e.text == texts[e.id] for e in subset.entries)
    assert rest.extra_fields == ("accent", schema.ORACLE_TEXT_FIELD)
    # The labeled subset keeps the pool's order.
    order = [e.id for e in pool.entries]
    assert [e.id for e in subset.entries] == sorted(chosen, key=order.index)

    again, _ = sources.split_labeled_pool(pool, unlabeled, 0.25, seed=3)
    other, _ = sources.split_labeled_pool(pool, unlabeled, 0.25, seed=4)
    assert [e.id for e in again.entries] == [e.id for e in subset.entries]
    assert [e.id for e in other.entries] != [e.id for e in subset.entries]

    everything, same = sources.split_labeled_pool(pool, unlabeled, 1.0, seed=3)
    assert [e.id for e in everything.entries] == order
    assert [e.id for e in same.entries] == [e.id for e in unlabeled.entries]
    tiny, _ = sources.split_labeled_pool(pool, unlabeled, 0.01, seed=0)
    assert len(tiny) == 1
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        sources.split_labeled_pool(pool, unlabeled, 0.0, seed=0)
    with pytest.raises(ValueError, match="not a labeled split"):
        sources.split_labeled_pool(unlabeled, unlabeled, 0.5, seed=0)


def test_fraction_tags():
    assert [corpora.fraction_tag(f) for f in (0.05, 0.1, 1.0, 0.025)] == [
        "f5",
        "f10",
        "f100",
        "f2p5",
    ]


def test_summary_and_table_mean_std_and_relative_reduction():
    rows = [
        {
            "fraction": 0.5,
            "labeled_hours": 0.1,
            "labeled_utterances": 6,
            "arm": arm,
            "seed": seed,
            "wer": {"test": wer, "dev": wer},
            "cer": {"test": wer / 2, "dev": wer / 2},
        }
        for arm, wers in (("supervised", (0.4, 0.6)), ("self_trained", (0.2, 0.3)))
        for seed, wer in enumerate(wers)
    ]
    means = {m["arm"]: m for m in data_efficiency.summarize(rows)}
    assert means["supervised"]["seeds"] == [0, 1]
    assert math.isclose(means["supervised"]["wer"]["test"], 0.5)
    assert math.isclose(means["supervised"]["wer_std"]["test"], 0.1)
    assert math.isclose(means["self_trained"]["cer"]["dev"], 0.125)
    table = data_efficiency.results_table(list(means.values()), "test")
    # WER 50.0 ± 10.0 supervised, 25.0 ± 5.0 self-trained: a 50% relative reduction; CER half.
    expected = "| 50% | 0.100 | 50.0 ± 10.0 / 25.0 ± 5.0 | - | 25.0 ± 5.0 / 12.5 ± 2.5 "
    assert expected + "| +50.0% | +50.0% |" in table
    assert math.isnan(data_efficiency.relative_reduction(0.0, 0.1))  # of a zero WER
    one_seed = data_efficiency.summarize([{**rows[0], "cer": {}}])  # a run scored without CER
    assert "| 40.0 / - |" in data_efficiency.results_table(one_seed, "test")


def test_labeled_shares_of_the_tiny_corpus(tmp_path):
    root = paths.embedded_corpus_dir(tmp_path, "tiny")
    synthetic_corpus.make_corpus(root, preset="tiny", seed=0, jobs=1, progress=False)
    prepare.prepare_embedded(root, data_dir=tmp_path)
    registry = registry_lib.CorpusRegistry(paths.registry_path(tmp_path))
    base = registry.splits("embedded_tiny")
    pool = base["labeled"].num_examples

    def share(fraction):
        return corpora.make_labeled_share(
            tmp_path, "embedded_tiny", fraction, root=root, seed=0, vocab_size=32
        )

    half = share(0.5)
    assert (half.corpus, half.utterances) == ("embedded_tiny_f50", pool // 2)
    splits = registry.splits("embedded_tiny_f50")
    assert splits["labeled"].labeled and not splits["unlabeled"].labeled
    unlabeled = base["unlabeled"].num_examples + pool - pool // 2
    assert splits["unlabeled"].num_examples == unlabeled
    assert math.isclose(half.hours, splits["labeled"].hours)
    assert schema.ORACLE_TEXT_FIELD in splits["unlabeled"].extra_fields
    assert all(splits[s] == base[s] for s in ("dev", "test", "test_clean"))  # not copied
    shards = {f: os.stat(f).st_mtime_ns for s in splits.values() for f in s.files}
    assert share(0.5) == half  # found: nothing is rewritten
    assert {f: os.stat(f).st_mtime_ns for f in shards} == shards

    full = share(1.0)  # the corpus itself: nothing registered or trained
    assert (full.corpus, full.utterances, full.hours) == (
        "embedded_tiny",
        pool,
        base["labeled"].hours,
    )
    assert "embedded_tiny_f100" not in registry.corpora()
    assert (tmp_path / "vocab" / "embedded_tiny_f50_32.model").is_file()
    assert not (tmp_path / "vocab" / "embedded_tiny_f100_32.model").exists()


def _run_experiment(data_dir, *args):
    env = dict(os.environ, BIGSSL_DATA_DIR=str(data_dir))
    argv = [sys.executable, "-m", "bigssl_jax.cli", "experiment", *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800)


def test_pretraining_is_the_pipelines_when_it_is_done(tmp_path, monkeypatch):

    runner = pipeline.Runner(pipeline.PRESETS["smoke"], "c", tmp_path, tmp_path / "experiment")
    trained = []
    monkeypatch.setattr(pipeline.Runner, "run", lambda self, name, *args: trained.append(name))
    pipeline_dir = pipeline.work_dir(tmp_path, "smoke")
    assert pipeline_dir == tmp_path / "pipeline" / "smoke"

    data_efficiency.shared_pretraining(runner, pipeline_dir)
    assert trained == ["pretrain"]  # no finished pipeline pre-training: its own
    (pipeline_dir / "pretrain").mkdir(parents=True)
    (pipeline_dir / "pretrain" / pipeline.DONE).write_text("{}\n")
    assert data_efficiency.shared_pretraining(runner, pipeline_dir) == pipeline_dir / "pretrain"
    assert trained == ["pretrain"]


def test_full_fraction_at_the_pipelines_seed_is_the_pipelines_runs(tmp_path, monkeypatch):

    pipeline_runner = pipeline.Runner(
        pipeline.PRESETS["small"], "c", tmp_path, pipeline.work_dir(tmp_path, "small")
    )
    ran = []

    def fake_run(self, name, command, *args):
        ran.append((self.work_dir.name, name))
        stage_dir = self.work_dir / name
        scores = {"results": {"test": {"wer": len(name) / 100, "cer": 0.1, "loss": 2.0}}}
        (stage_dir / "results.json").write_text(json.dumps(scores))
        return stage_dir

    monkeypatch.setattr(pipeline.Runner, "run", fake_run)
    full = corpora.LabeledShare(1.0, "c", 10, 0.01)
    half = corpora.LabeledShare(0.5, "c_f50", 5, 0.005)
    seed = data_efficiency.pipeline_seed()
    assert seed == 0
    assert data_efficiency.pipeline_arms(pipeline_runner, full, seed) is None  # not trained yet
    for stage in ("baseline", "teacher", "student_1"):
        (pipeline_runner.work_dir / stage).mkdir(parents=True)
        (pipeline_runner.work_dir / f"evaluate_{stage}").mkdir()
        (pipeline_runner.work_dir / stage / pipeline.DONE).write_text("{}\n")
    assert data_efficiency.pipeline_arms(pipeline_runner, half, seed) is None
    assert data_efficiency.pipeline_arms(pipeline_runner, full, seed + 1) is None
    assert ran == []

    arms = data_efficiency.pipeline_arms(pipeline_runner, full, seed)
    assert {arm: scored[1].name for arm, scored in arms.items()} == {
        "supervised": "evaluate_baseline",
        "pretrained": "evaluate_teacher",
        "self_trained": "evaluate_student_1",
    }
    assert {arm: scored[0] for arm, scored in arms.items()} == {
        "supervised": {"test": {"wer": len("evaluate_baseline") / 100, "cer": 0.1}},
        "pretrained": {"test": {"wer": len("evaluate_teacher") / 100, "cer": 0.1}},
        "self_trained": {"test": {"wer": len("evaluate_student_1") / 100, "cer": 0.1}},
    }
    stages = ["evaluate_baseline", "evaluate_teacher", "evaluate_student_1"]
    assert ran == [("small", stage) for stage in stages]  # scored in the pipeline's own dir
    claim = pipeline.PRESETS["smoke"]  # a data-efficiency preset: its arms are on its share
    assert data_efficiency.pipeline_stages(claim, 1.0) is None
    assert data_efficiency.pipeline_stages(claim, 0.5) == {
        "supervised": "supervised_50", "pretrained": "ssl_50", "self_trained": "nst_50",
    }  # fmt: skip


def test_bad_experiment_and_fractions_are_one_line_errors(tmp_path):
    unknown = _run_experiment(tmp_path, "data-inefficiency")
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == (
        "experiment: unknown experiment 'data-inefficiency' (known: data-efficiency)"
    )
    for fractions in ("0.5,1.5", "half"):
        bad = _run_experiment(tmp_path, "data-efficiency", f"--fractions={fractions}")
        assert bad.returncode == 2
        assert (
            bad.stderr.startswith("experiment: --fractions") and len(bad.stderr.splitlines()) == 1
        )


def test_smoke_data_efficiency_runs_every_arm_then_skips_them(tmp_path):
    # One fraction keeps this within the CI budget (each stage is a `bigssl` process);
    # fraction 1.0 is covered by test_labeled_shares_of_the_tiny_corpus.
    args = ("data-efficiency", "--preset=smoke", "--fractions=0.5", "--seeds=0", "--jobs=1")
    first = _run_experiment(tmp_path, *args)
    assert first.returncode == 0, first.stderr[-3000:]

    registry = json.loads((tmp_path / "registry.json").read_text())["corpora"]
    base, half = registry["embedded_tiny"]["splits"], registry["embedded_tiny_f50"]["splits"]
    pool = base["labeled"]["num_examples"]
    assert half["labeled"]["num_examples"] == pool // 2
    unlabeled = base["unlabeled"]["num_examples"] + pool - pool // 2
    assert half["unlabeled"]["num_examples"] == unlabeled
    assert (tmp_path / "vocab" / "embedded_tiny_f50_64.model").is_file()

    work = tmp_path / "experiments" / "data_efficiency" / "smoke"
    assert (work / "pretrain" / "DONE").exists()
    stages = ("supervised", "pretrained", "pseudo_label_1", "self_trained")
    for stage in (*stages, *(f"evaluate_{arm}" for arm in data_efficiency.ARMS)):
        assert (work / "f50_s0" / stage / "DONE").exists(), stage
    results = json.loads((work / "results.json").read_text())
    assert [row["arm"] for row in results["rows"]] == list(data_efficiency.ARMS)
    for row in results["rows"]:
        assert (row["fraction"], row["seed"], row["labeled_utterances"]) == (0.5, 0, pool // 2)
        assert set(row["wer"]) == set(row["cer"]) == {"dev", "test", "test_clean"}
    assert [m["arm"] for m in results["means"]] == list(data_efficiency.ARMS)
    interval = results["reductions"]["0.5"]  # self_trained vs supervised, speaker bootstrap
    assert interval["low"] <= interval["estimate"] <= interval["high"]
    assert "paired speaker-block bootstrap" in first.stdout
    assert (work / "results.png").stat().st_size > 0
    assert (work / "results.md").read_text().strip() in first.stdout
    assert "| 50% |" in first.stdout and "WER reduction, self_trained vs supervised" in first.stdout

    second = _run_experiment(tmp_path, *args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "[corpus] found" in second.stdout and "[pretrain] found" in second.stdout
    # The corpus, two vocabularies, the pre-training, the n-gram LM, and f50_s0's four runs
    # and three scores.
    assert "done:" not in second.stdout and second.stdout.count("] found") == 1 + 2 + 1 + 1 + 7
