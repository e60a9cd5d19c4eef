"""`bigssl train` (fine-tuning gins), `bigssl evaluate` and `bigssl transcribe` end to end,
and shallow fusion of a `bigssl train-lm` run into them."""

import json
import os
import shutil
import subprocess
import sys

import gin
import jax
import numpy as np
import pytest
import soundfile as sf
from test_pseudo_label import ENCODER
from test_pseudo_label_command import write_lm_run

from bigssl_jax import checkpointing, gin_utils, inference
from bigssl_jax.models import ctc_model
from bigssl_tasks import toy_corpus, vocab

CORPUS = "embedded_tiny"


def _bigssl(*args, timeout=420):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    command = [os.path.join(os.path.dirname(sys.executable), "bigssl"), *map(str, args)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    toy_corpus.write_toy_corpus(
        data,
        CORPUS,
        splits={"labeled": (16, True), "dev": (8, True), "test": (8, True)},
        num_shards=1,
        max_seconds=1.5,
    )
    texts = [" ".join(toy_corpus.WORDS)] * 4 + list(toy_corpus.WORDS)
    vocab.train_vocabulary(texts, vocab.vocab_path(data, CORPUS, 64), vocab_size=64)
    return data


@pytest.fixture(scope="module")
def ctc_run(data_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("ctc")
    done = _bigssl(
        "train",
        "--gin_file=experiments/finetune_ctc_smoke.gin",
        "--gin_bindings=TrainerConfig.num_steps = 2",
        "--gin_bindings=OptimizerConfig.ema_decay = 0.5",  # it serves the EMA of its params
        f"--model_dir={run}",
        f"--data_dir={data_dir}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return run


def test_ctc_run_scores_dev_wer_and_keeps_its_vocabulary(ctc_run):
    scored = json.loads((ctc_run / "eval" / "2" / "wer.json").read_text())
    assert scored["num_utterances"] == 8 and 0.0 <= scored["wer"]
    assert (ctc_run / "vocabulary.model").exists()
    assert (ctc_run / "eval" / "2" / "transcripts.tsv").read_text().count("\n") == 9


def test_rnnt_smoke_experiment_trains_and_scores(data_dir, tmp_path):
    done = _bigssl(
        "train",
        "--gin_file=experiments/finetune_rnnt_smoke.gin",
        "--gin_bindings=TrainerConfig.num_steps = 2",
        f"--model_dir={tmp_path}",
        f"--data_dir={data_dir}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "'wer'" in done.stdout and "rnnt_loss" in done.stdout


def test_probe_trains_on_whitened_layers_and_evaluate_reproduces_its_score(data_dir, tmp_path):
    run = tmp_path / "probe"
    done = _bigssl(
        "train",
        "--gin_file=experiments/probe_accent_smoke.gin",
        "--gin_bindings=NUM_CLASSES = 2",
        "--gin_bindings=ClassifierTrainModel.statistics_batches = 2",
        f"--model_dir={run}",
        f"--data_dir={data_dir}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    trained = run / "eval" / "4"
    report = json.loads((trained / "classification.json").read_text())
    assert report["metrics"]["num_utterances"] == 8 and report["label_names"] == ["gb", "us"]

    scored = _bigssl(
        "evaluate",
        f"--checkpoint={run}",
        f"--data_dir={data_dir}",
        "--splits=dev",
        f"--output_dir={tmp_path / 'evaluate'}",
    )
    assert scored.returncode == 0, scored.stderr[-3000:]
    results = json.loads((tmp_path / "evaluate" / "results.json").read_text())
    assert results["step"] == 4
    assert results["results"]["dev"]["accuracy"] == report["metrics"]["accuracy"]
    predictions = (tmp_path / "evaluate" / "dev" / "predictions.tsv").read_text()
    assert predictions == (trained / "predictions.tsv").read_text()


def test_evaluate_writes_every_split_and_a_summary(ctc_run, data_dir, tmp_path):
    done = _bigssl(
        "evaluate",
        f"--checkpoint={ctc_run}",
        f"--data_dir={data_dir}",
        f"--output_dir={tmp_path}",
        "--beam_size=2",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["step"] == 2 and set(results["results"]) == {"dev", "test"}
    assert results["params"] == "ema"
    assert results["checkpoint"] == str(ctc_run / "checkpoints" / "2")  # the step scored
    assert "evaluate: test: wer" in done.stdout
    worst = json.loads((tmp_path / "test" / "worst.json").read_text())
    assert len(worst) == 8 and worst[0]["errors"] >= worst[-1]["errors"]


def test_evaluate_fuses_a_language_model_of_the_same_vocabulary(ctc_run, data_dir, tmp_path):
    write_lm_run(tmp_path / "lm", vocab_size=64)
    flags = [f"--checkpoint={ctc_run}", f"--data_dir={data_dir}", "--beam_size=2"]
    done = _bigssl(
        "evaluate", *flags, f"--lm_checkpoint={tmp_path / 'lm'}", "--lm_weight=0.5",
        f"--output_dir={tmp_path / 'fused'}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "fused" / "results.json").read_text())
    assert set(results["results"]) == {"dev", "test"}
    assert results["lm"] == str(tmp_path / "lm" / "checkpoints" / "1")  # the step fused
    assert results["decoding"]["lm_weight"] == 0.5 and results["decoding"]["beam_size"] == 2
    write_lm_run(tmp_path / "lm40", vocab_size=40)
    mismatched = _bigssl("evaluate", *flags, f"--lm_checkpoint={tmp_path / 'lm40'}")
    assert mismatched.returncode == 1
    assert "must share the vocabulary" in mismatched.stderr.strip().splitlines()[-1]


def test_evaluate_fuses_a_counted_ngram_lm_of_the_same_vocabulary(ctc_run, data_dir, tmp_path):
    """`bigssl train-ngram` counts text in the corpus vocabulary; evaluate fuses the run dir,
    and a run counted in another vocabulary is refused in one line."""
    text = tmp_path / "text.txt"
    text.write_text("\n".join([" ".join(toy_corpus.WORDS[:3])] * 3 + list(toy_corpus.WORDS)))
    counted = _bigssl(
        "train-ngram", f"--text_file={text}", f"--eval_text_file={text}", f"--corpus={CORPUS}",
        "--vocab_size=64", "--order=3", f"--model_dir={tmp_path / 'ngram'}",
        f"--data_dir={data_dir}",
    )  # fmt: skip
    assert counted.returncode == 0, counted.stderr[-3000:]
    info = json.loads((tmp_path / "ngram" / "ngram.json").read_text())
    assert info["order"] == 3 and info["sentences"] == 3 + len(toy_corpus.WORDS)
    assert 1.0 < info["eval_perplexity"] < 64
    again = _bigssl("train-ngram", f"--text_file={text}", f"--corpus={CORPUS}",
                    f"--model_dir={tmp_path / 'ngram'}", f"--data_dir={data_dir}")  # fmt: skip
    assert again.returncode == 0 and "nothing to do" in again.stdout
    flags = [f"--checkpoint={ctc_run}", f"--data_dir={data_dir}", "--beam_size=2"]
    done = _bigssl(
        "evaluate", *flags, f"--lm_checkpoint={tmp_path / 'ngram'}", "--lm_weight=0.5",
        f"--output_dir={tmp_path / 'fused'}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "fused" / "results.json").read_text())
    assert results["lm"] == str(tmp_path / "ngram")
    assert results["decoding"]["lm_weight"] == 0.5
    other = tmp_path / "other.model"
    vocab.train_vocabulary(["a b c d e f g h i j k l m n o p"] * 4, other, vocab_size=64)
    shutil.copyfile(other, tmp_path / "ngram" / "vocabulary.model")
    refused = _bigssl("evaluate", *flags, f"--lm_checkpoint={tmp_path / 'ngram'}")
    assert refused.returncode == 1
    assert "counted in another vocabulary" in refused.stderr.strip().splitlines()[-1]


def test_a_run_with_an_ema_serves_it_unless_asked_for_its_params(ctc_run):
    gin.clear_config()  # load_model parses the run's config.gin
    try:
        served = gin_utils.load_model(ctc_run)
        gin.clear_config()
        raw = gin_utils.load_model(ctc_run, ema=False)
    finally:
        gin.clear_config()
    assert (served.params_source, raw.params_source) == ("ema", "params")
    state = checkpointing.restore_from(ctc_run, None)  # the saved state as it is
    ema = state["opt_state"][-1]["ema"]
    jax.tree.map(np.testing.assert_array_equal, served.variables["params"], ema)
    jax.tree.map(np.testing.assert_array_equal, raw.variables["params"], state["params"])
    differs = jax.tree.map(lambda a, b: not np.array_equal(a, b), ema, state["params"])
    assert any(jax.tree.leaves(differs))  # two steps moved the params away from their EMA


def test_fusion_needs_beam_search_and_a_decoding_model():
    greedy = ctc_model.CtcTrainModel(encoder=ENCODER, vocab_size=40)
    with pytest.raises(ValueError, match="needs beam search"):
        inference.with_fusion_lm(greedy, "/runs/lm", 0.3)
    weighted = inference.with_fusion_lm(greedy, None, 0.3)
    assert weighted.decoding.lm_weight == 0.3 and weighted.lm is None
    with pytest.raises(ValueError, match="does not decode"):
        inference.with_fusion_lm(object(), "/runs/lm", 0.3)
    classifier = object()  # no LM flags: any model passes through unchanged
    assert inference.with_fusion_lm(classifier, None, None) is classifier


def test_transcribe_reads_any_rate_and_reports_bad_input_in_one_line(ctc_run, tmp_path):
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "a.wav", rng.standard_normal(8000) * 0.1, 8000)
    sf.write(tmp_path / "b.flac", rng.standard_normal(44100) * 0.1, 44100)
    done = _bigssl("transcribe", f"--checkpoint={ctc_run}", tmp_path / "a.wav", tmp_path / "b.flac")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [
        str(tmp_path / "a.wav"),
        str(tmp_path / "b.flac"),
    ]
    (tmp_path / "bad.wav").write_bytes(b"RIFF not really audio")
    bad = _bigssl("transcribe", f"--checkpoint={ctc_run}", tmp_path / "bad.wav")
    assert bad.returncode == 1 and "bad.wav" in bad.stderr.strip().splitlines()[-1]
    missing = _bigssl("transcribe", f"--checkpoint={tmp_path / 'none'}", tmp_path / "a.wav")
    assert missing.returncode == 1
    assert "no finalised checkpoint" in missing.stderr.strip().splitlines()[-1]
