"""The main job end to end on the smoke preset, its resumability, and every preset's configs."""

import json
import os
import subprocess
import sys

import gin
import pytest

from bigssl_jax import configurables, gin_utils
from bigssl_jax.jobs import pipeline


def _run_pipeline(data_dir, *flags):
    env = dict(os.environ, BIGSSL_DATA_DIR=str(data_dir))
    return subprocess.run(
        [sys.executable, "-m", "bigssl_jax.cli", "pipeline", "--preset=smoke", "--jobs=1", *flags],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )


def test_smoke_pipeline_runs_every_stage_then_skips_them(tmp_path):
    first = _run_pipeline(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "[corpus] made" in first.stdout
    assert first.stdout.count("[prepare] embedded_tiny/") == 5
    assert "[vocab] wrote" in first.stdout
    assert "task embedded_tiny_labeled_labeled" in first.stdout
    assert "task embedded_tiny_unlabeled_unlabeled" in first.stdout

    registry = json.loads((tmp_path / "registry.json").read_text())
    splits = registry["corpora"]["embedded_tiny"]["splits"]
    assert sorted(splits) == ["dev", "labeled", "test", "test_clean", "unlabeled"]
    assert splits["labeled"]["labeled"] and not splits["unlabeled"]["labeled"]
    assert (tmp_path / "vocab" / "embedded_tiny_64.model").is_file()
    assert "text-only sentences" in first.stdout  # the tokenizer never read a transcript
    work = tmp_path / "pipeline" / "smoke"
    arms = ("supervised_50", "ssl_50", "nst_50", "supervised_100")
    for stage in ("pretrain", "ngram", "pseudo_label_1", *arms):
        assert f"[{stage}] done" in first.stdout
        assert (work / stage / "DONE").exists()
    assert (tmp_path / "vocab" / "embedded_tiny_f50_64.model").read_bytes() == (
        tmp_path / "vocab" / "embedded_tiny_64.model"
    ).read_bytes()  # one unit inventory for every arm
    manifest = json.loads((work / "pseudo_label_1" / "manifest.json").read_text())
    assert manifest["num_examples"] > 0
    job = json.loads((work / "pseudo_label_1" / "job.json").read_text())
    assert job["lm"] == str(work / "ngram")  # the pseudo-labels are LM-fused
    results = json.loads((work / "results.json").read_text())
    assert list(results) == [name for arm in arms for name in (arm, f"{arm}+lm")]
    assert all(set(scores) == {"dev", "test", "test_clean"} for scores in results.values())
    assert all(set(rates) == {"wer", "cer"} for r in results.values() for rates in r.values())
    record = json.loads((work / pipeline.RECORD_FILE).read_text())
    assert record["arms"] == results and record["wall_seconds"] > 0
    assert record["command"] == "bigssl pipeline --preset=smoke"
    for decoding in ("greedy", "lm"):
        claim = record["claims"][decoding]
        interval = claim["test_wer_reduction"]
        assert interval["low"] <= interval["estimate"] <= interval["high"]
        assert set(claim["beats_teacher"]["nst_50"]) == {"dev", "test"}
        assert list(claim["test_wer_reductions"]) == [
            "supervised_50 -> ssl_50",
            "ssl_50 -> nst_50",
            "supervised_100 -> nst_50",
        ]
        assert claim["test_wer_reductions"]["ssl_50 -> nst_50"]["level"] == 0.95
    assert record["steps"] == {arm: 2 for arm in arms}  # each run's best-dev step
    assert record["source_commit"]  # the tests run in a git checkout
    curves = record["dev_curves"]
    assert list(curves) == list(arms) and all(c[-1]["step"] == 2 for c in curves.values())
    assert "| nst_50+lm |" in first.stdout and (work / "results.png").stat().st_size > 0
    assert any((tmp_path / pipeline.XLA_CACHE).iterdir())  # the stages' compilation cache

    second = _run_pipeline(tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "[corpus] found" in second.stdout
    assert "[vocab] found" in second.stdout
    assert "[nst_50] found" in second.stdout and "| ssl_50 |" in second.stdout
    assert "done:" not in second.stdout

    published = _run_pipeline(tmp_path, f"--publish={tmp_path / 'demo.json'}")
    assert published.returncode == 0, published.stderr[-3000:]
    assert "[" not in published.stdout  # runs no stage
    public = json.loads((tmp_path / "demo.json").read_text())
    assert public["arms"]["nst_50+lm"]["test"]["cer"] == 100 * results["nst_50+lm"]["test"]["cer"]
    assert public["claims"] == record["claims"] and public["command"] == record["command"]
    summary = (tmp_path / "demo.md").read_text()
    assert "| nst_50+lm |" in summary and "- lm, supervised_100 -> nst_50: test WER" in summary
    assert (tmp_path / "demo_dev_curves.png").stat().st_size > 0


def _train_configs(args):
    """(TrainerConfig, train/InputConfig) of one recorded `bigssl train` stage."""
    (gin_file,) = [a.removeprefix("--gin_file=") for a in args if a.startswith("--gin_file=")]
    bindings = [a.removeprefix("--gin_bindings=") for a in args if a.startswith("--gin_bindings=")]
    gin.clear_config()
    try:
        gin_utils.parse([gin_file], bindings)
        trainer_config = configurables.TrainerConfig()
        with gin.config_scope("train"):
            train_input = configurables.InputConfig(task="any")
    finally:
        gin.clear_config()
    return trainer_config, train_input


@pytest.mark.parametrize("name", sorted(pipeline.PRESETS))
def test_preset_stage_configs_parse(name, tmp_path, monkeypatch):
    """A typo in a preset's bindings fails here, not after its pre-training stage has run."""
    calls = {}

    def record(runner, stage, command, *args):  # instead of running the stage
        calls[stage] = args
        return runner.work_dir / stage

    monkeypatch.setattr(pipeline.Runner, "run", record)
    preset = pipeline.PRESETS[name]
    runner = pipeline.Runner(preset, "embedded_small", tmp_path, tmp_path / "work")
    pretrained = runner.pretrain()
    runner.finetune("teacher", pretrained)
    runner.student("student_1", pretrained, tmp_path / "labels")
    pretrain, _ = _train_configs(calls[pipeline.PRETRAIN])
    finetune, finetune_input = _train_configs(calls["teacher"])
    student, student_input = _train_configs(calls["student_1"])
    assert pretrain.num_steps > 0 and finetune.num_steps == student.num_steps
    assert student_input.speed_factors == finetune_input.speed_factors
    assert student_input.batch_size % sum(preset.mix_ratios) == 0


def test_side_by_side_stages_run_at_once_with_one_xla_thread_each(tmp_path, monkeypatch):
    """Two stages overlap in time, and each subprocess is told to use one XLA thread."""
    import threading

    both_started = threading.Barrier(2, timeout=30)
    seen = []

    def fake_run(argv, *, log, env, name):
        seen.append(env["XLA_FLAGS"])
        both_started.wait()  # deadlocks (and times out) unless the two run at once
        return 0

    monkeypatch.setattr(pipeline.stage_processes, "run", fake_run)
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    runner = pipeline.Runner(
        pipeline.PRESETS["smoke"], "c", tmp_path, tmp_path, single_threaded=True
    )
    done = pipeline.side_by_side(lambda: runner.run("a", "train"), lambda: runner.run("b", "train"))
    assert done == [tmp_path / "a", tmp_path / "b"]
    assert seen == [f"--xla_dump_to=/tmp/x {pipeline.ONE_THREAD_XLA_FLAGS}"] * 2
