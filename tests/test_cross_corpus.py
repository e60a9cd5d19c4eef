"""A trained run applied to a corpus it was not trained on, through the commands (issue 27):
`evaluate --corpus`, `pseudo-label --corpus`, `embed --corpus --checkpoint`; the run's own
vocabulary is used (the other corpus has none), command-line gin goes on top of the run's
config, and the errors name their real cause."""

import json

import pytest
from test_finetune_commands import CORPUS, _bigssl

from bigssl_tasks import toy_corpus, vocab

OTHER = "other_tiny"  # transcribed test split, no vocabulary of its own
AUDIO_ONLY = "audio_only_tiny"  # no transcripts at all


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    toy_corpus.write_toy_corpus(
        data, CORPUS, splits={"labeled": (16, True), "dev": (8, True)}, num_shards=1,
        max_seconds=1.5,
    )  # fmt: skip
    texts = [" ".join(toy_corpus.WORDS)] * 4 + list(toy_corpus.WORDS)
    vocab.train_vocabulary(texts, vocab.vocab_path(data, CORPUS, 64), vocab_size=64)
    toy_corpus.write_toy_corpus(
        data, OTHER, splits={"test": (6, True), "unlabeled": (5, False)}, num_shards=1,
        max_seconds=1.5, seed=1,
    )  # fmt: skip
    toy_corpus.write_toy_corpus(
        data, AUDIO_ONLY, splits={"test": (4, False)}, num_shards=1, max_seconds=1.5, seed=2
    )
    assert not vocab.vocab_path(data, OTHER, 64).exists()
    return data


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("ctc")
    done = _bigssl(
        "train",
        "--gin_file=experiments/finetune_ctc_smoke.gin",
        "--gin_bindings=TrainerConfig.num_steps = 2",
        f"--model_dir={run}",
        f"--data_dir={data_dir}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return run


def test_evaluate_scores_another_corpus_with_the_runs_vocabulary(run, data_dir, tmp_path):
    flags = [f"--checkpoint={run}", f"--data_dir={data_dir}", f"--output_dir={tmp_path}"]
    done = _bigssl("evaluate", *flags, f"--corpus={OTHER}")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["results"]) == {"test"}  # the splits it has of dev, test, test_clean
    transcripts = (tmp_path / "test" / "transcripts.tsv").read_text().splitlines()
    assert len(transcripts) == 1 + 6  # header + every utterance of the other corpus
    assert all(line.startswith(f"{OTHER}-test-") for line in transcripts[1:])


def test_a_command_line_binding_goes_on_top_of_the_runs_config(run, data_dir, tmp_path):
    done = _bigssl(
        "evaluate",
        f"--checkpoint={run}",
        f"--data_dir={data_dir}",
        f"--output_dir={tmp_path}",
        f"--corpus={OTHER}",
        "--gin_bindings=DecodingConfig.beam_size = 3",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["decoding"]["beam_size"] == 3  # the run decodes greedily by default


def test_evaluate_names_the_real_cause(run, data_dir, tmp_path):
    flags = [f"--checkpoint={run}", f"--data_dir={data_dir}", f"--output_dir={tmp_path}"]
    untranscribed = _bigssl("evaluate", *flags, f"--corpus={AUDIO_ONLY}")
    assert untranscribed.returncode == 1
    (line,) = untranscribed.stderr.strip().splitlines()[-1:]
    assert line.startswith("evaluate: ") and "no transcripts in split(s) ['test']" in line
    missing = _bigssl("evaluate", *flags, f"--corpus={OTHER}", "--splits=dev")
    assert missing.returncode == 1
    assert "has none of the splits ['dev'] (it has ['test', 'unlabeled'])" in missing.stderr
    typo = _bigssl("evaluate", *flags, "--gin_bindings=DecodingConfig.beam_sise = 3")
    assert typo.returncode == 2  # a usage error, caught before the run is read
    assert "gin error" in typo.stderr and "beam_sise" in typo.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def labels(run, data_dir, tmp_path_factory):
    """OTHER's unlabeled split pseudo-labeled by `run` (fine-tuned on CORPUS)."""
    labels = tmp_path_factory.mktemp("labels")
    done = _bigssl(
        "pseudo-label",
        f"--checkpoint={run}",
        f"--data_dir={data_dir}",
        f"--corpus={OTHER}",
        "--split=unlabeled",
        f"--output_dir={labels}",
        "--batch_size=4",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return labels


def test_pseudo_label_and_embed_another_corpus(run, labels, data_dir, tmp_path):
    manifest = json.loads((labels / "manifest.json").read_text())
    assert manifest["num_labeled"] == 5 and manifest["num_examples"] <= 5
    embedded = tmp_path / "embedded"
    done = _bigssl(
        "embed",
        f"--checkpoint={run}",
        f"--data_dir={data_dir}",
        f"--corpus={OTHER}",
        "--splits=test",
        f"--output_dir={embedded}",
        "--batch_size=4",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "embed: test: 6 of 6 utterances" in done.stdout
    info = json.loads((embedded / "test" / "info.json").read_text())
    assert info["num_utterances"] == 6


def test_a_student_starts_from_another_corpus_pre_training_by_gin_alone(labels, data_dir, tmp_path):
    """Pre-training on OTHER's unlabeled audio, then a noisy student on CORPUS's labels plus
    OTHER's pseudo-labels (from a teacher fine-tuned on CORPUS) that starts from it (scoring
    a run on OTHER is the tests above)."""
    pretrained = tmp_path / "pretrained"
    done = _bigssl(
        "train",
        "--gin_file=experiments/pretrain_w2v_bert_smoke.gin",
        f"--gin_bindings=CORPUS = '{OTHER}'",
        "--gin_bindings=ExperimentConfig.eval_split = None",
        "--gin_bindings=TrainerConfig.num_steps = 1",
        "--gin_bindings=train/InputConfig.batch_size = 4",
        f"--model_dir={pretrained}",
        f"--data_dir={data_dir}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    student = tmp_path / "student"
    done = _bigssl(
        "train",
        "--gin_file=experiments/finetune_ctc_smoke.gin",
        f"--gin_bindings=TrainerConfig.init_checkpoint = '{pretrained}'",
        f"--gin_bindings=ExperimentConfig.pseudo_labels = ('{labels}',)",
        "--gin_bindings=ExperimentConfig.mix_ratios = (1.0, 1.0)",
        "--gin_bindings=TrainerConfig.num_steps = 1",
        f"--model_dir={student}",
        f"--data_dir={data_dir}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"init from {pretrained}" in done.stderr
    assert (student / "checkpoints" / "1").is_dir()
