"""`bigssl import-encoder` end to end: a tiny w2v-BERT 2.0 from `transformers`, imported,
fine-tuned a few steps with CTC by `bigssl train`, scored by `bigssl evaluate`."""

import json

import pytest
from test_finetune_commands import _bigssl
from test_hf_import import _save_tiny_model, _tiny_config

from bigssl_tasks import toy_corpus, vocab

CORPUS = "embedded_tiny"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    toy_corpus.write_toy_corpus(
        data,
        CORPUS,
        splits={"labeled": (8, True), "dev": (4, True)},
        num_shards=1,
        max_seconds=1.5,
    )
    texts = [" ".join(toy_corpus.WORDS)] * 4 + list(toy_corpus.WORDS)
    vocab.train_vocabulary(texts, vocab.vocab_path(data, CORPUS, 64), vocab_size=64)
    return data


def test_imported_encoder_fine_tunes_with_ctc_and_evaluates(data_dir, tmp_path):
    source = tmp_path / "hf"
    _save_tiny_model(source, _tiny_config(num_hidden_layers=2))
    run = tmp_path / "w2v_bert_tiny"
    done = _bigssl(
        "import-encoder", "--format=hf", f"--source={source}", f"--model_dir={run}", timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run / "encoder.gin").exists() and (run / "checkpoints" / "0").is_dir()

    ctc = tmp_path / "ctc"
    done = _bigssl(
        "train",
        "--gin_file=experiments/finetune_ctc_smoke.gin",
        f"--gin_file={run / 'encoder.gin'}",
        f"--gin_bindings=TrainerConfig.init_checkpoint = '{run}'",
        "--gin_bindings=TrainerConfig.num_steps = 2",
        "--gin_bindings=TrainerConfig.eval_every = 2",
        f"--model_dir={ctc}",
        f"--data_dir={data_dir}",
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ctc_loss" in done.stdout
    assert f"init from {run}" in (ctc / "bigssl.log").read_text()

    done = _bigssl(
        "evaluate",
        f"--checkpoint={ctc}",
        f"--data_dir={data_dir}",
        "--splits=dev",
        f"--output_dir={tmp_path / 'evaluate'}",
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "evaluate" / "results.json").read_text())
    assert results["step"] == 2 and results["results"]["dev"]["wer"] >= 0.0


def test_a_missing_model_directory_is_one_line_and_exit_1(tmp_path):
    done = _bigssl(
        "import-encoder", f"--source={tmp_path / 'nothing'}", f"--model_dir={tmp_path / 'run'}"
    )
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "is not a directory" in done.stderr
