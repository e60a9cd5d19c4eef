"""The Beam pseudo-labeling pipeline on the DirectRunner: the same labels, exactly once."""

import collections
import dataclasses
import json

import gin
import pytest
import tensorflow as tf
from test_pseudo_label_command import write_lm_run, write_teacher_run

from bigssl_jax import gin_utils
from bigssl_jax.commands import beam_pseudo_label
from bigssl_jax.jobs import pseudo_label, pseudo_label_job
from bigssl_tasks import corpus_tasks, toy_corpus, vocab

CORPUS = "beamtoy"
TASK = corpus_tasks.task_name(CORPUS, "unlabeled", "unlabeled")


def _ids(files) -> list[str]:
    return [
        tf.train.Example.FromString(r).features.feature["id"].bytes_list.value[0].decode()
        for r in tf.data.TFRecordDataset(files).as_numpy_iterator()
    ]


@pytest.fixture(autouse=True)
def _empty_gin():
    """The teacher's gin comes from its run directory; leave none behind for other tests."""
    gin.clear_config()
    yield
    gin.clear_config()


def test_direct_runner_labels_each_unit_once_skips_done_units_and_matches_the_library(
    tmp_path, capsys
):
    data_dir, output_dir = tmp_path / "data", tmp_path / "pl"
    ids = toy_corpus.write_toy_corpus(
        data_dir, CORPUS, splits={"unlabeled": (10, False)}, num_shards=4, max_seconds=1.0
    )["unlabeled"]
    vocabulary = str(tmp_path / "spm.model")
    vocab.train_vocabulary([" ".join(toy_corpus.WORDS)] * 4, vocabulary, vocab_size=40)
    write_teacher_run(tmp_path / "teacher", vocabulary)
    # Unit 2 was labeled by an earlier, interrupted run: the pipeline must not redo it.
    corpus_tasks.register_corpus_tasks(CORPUS, data_dir=data_dir)
    teacher_model = gin_utils.run_model(tmp_path / "teacher")
    teacher = pseudo_label_job.load_teacher(tmp_path / "teacher", teacher_model)
    config = pseudo_label.LabelConfig(
        task=TASK, output_dir=str(output_dir), num_units=4, teacher=teacher.name,
        decoding=teacher.model.decoding, batch_size=8,
    )  # fmt: skip
    pseudo_label.label_units(teacher, config, [2])
    marker = output_dir / "shards" / "labels-00002-of-00004.done.json"
    before = marker.stat().st_mtime_ns

    status = beam_pseudo_label.main(
        [
            f"--checkpoint={tmp_path / 'teacher'}",
            f"--data_dir={data_dir}",
            f"--corpus={CORPUS}",
            f"--output_dir={output_dir}",
            "--batch_size=8",
            "--keep_top_fraction=0.8",
            "--",
            "--runner=DirectRunner",
        ]  # fmt: skip
    )
    assert status == 0
    assert marker.stat().st_mtime_ns == before
    outputs = sorted(str(p) for p in (output_dir / "shards").glob("*.tfrecord"))
    assert len(outputs) == 4
    assert collections.Counter(_ids(outputs)) == collections.Counter(ids)
    report = json.loads((output_dir / "report.json").read_text())
    assert (report["num_labeled"], report["num_kept"], report["num_not_labeled"]) == (10, 8, 0)
    assert report["oracle"]["num_utterances"] == 10
    assert '"num_kept": 8' in capsys.readouterr().out
    # The same labels as the library gives with the same teacher.
    local = dataclasses.replace(config, output_dir=str(tmp_path / "local"))
    expected = {u[0]: u[4] for m in pseudo_label.label_units(teacher, local, range(4))
                for u in m["utterances"]}  # fmt: skip
    _, markers = pseudo_label.read_markers(str(output_dir))
    assert {u[0]: u[4] for m in markers for u in m["utterances"]} == expected


def test_direct_runner_fuses_the_lm_like_the_library(tmp_path, capsys):
    """--lm_checkpoint / --lm_weight: the workers' labels are those of the fused teacher the
    launcher checked (scores with the LM's terms), and job.json names the LM's step."""
    data_dir, output_dir = tmp_path / "data", tmp_path / "pl"
    toy_corpus.write_toy_corpus(
        data_dir, CORPUS, splits={"unlabeled": (6, False)}, num_shards=2, max_seconds=1.0
    )
    vocabulary = str(tmp_path / "spm.model")
    vocab.train_vocabulary([" ".join(toy_corpus.WORDS)] * 4, vocabulary, vocab_size=40)
    write_teacher_run(tmp_path / "teacher", vocabulary)
    write_lm_run(tmp_path / "lm")
    flags = [
        f"--checkpoint={tmp_path / 'teacher'}", f"--data_dir={data_dir}", f"--corpus={CORPUS}",
        f"--output_dir={output_dir}", "--batch_size=4", f"--lm_checkpoint={tmp_path / 'lm'}",
        "--lm_weight=0.5",
    ]  # fmt: skip
    assert beam_pseudo_label.main([*flags, "--", "--runner=DirectRunner"]) == 0
    lm_step = str(tmp_path / "lm" / "checkpoints" / "1")
    job = json.loads((output_dir / "job.json").read_text())
    assert job["lm"] == lm_step and job["decoding"]["lm_weight"] == 0.5

    corpus_tasks.register_corpus_tasks(CORPUS, data_dir=data_dir)
    teacher_model = gin_utils.run_model(tmp_path / "teacher")
    lm_model = gin_utils.run_model(lm_step, own_config=True)
    fused = pseudo_label_job.TeacherSpec(
        str(tmp_path / "teacher"), teacher_model, lm_checkpoint=lm_step, lm_model=lm_model,
        lm_weight=0.5,
    ).load()  # fmt: skip
    plain = pseudo_label_job.TeacherSpec(str(tmp_path / "teacher"), teacher_model).load()
    assert fused.model.lm is not None and plain.model.lm is None

    def labels(teacher, directory):
        config = pseudo_label.LabelConfig(
            task=TASK, output_dir=str(tmp_path / directory), num_units=2, teacher=teacher.name,
            decoding=teacher.model.decoding, batch_size=4,
        )  # fmt: skip
        markers = pseudo_label.label_units(teacher, config, range(2))
        return {u[0]: u[1:] for m in markers for u in m["utterances"]}

    _, markers = pseudo_label.read_markers(str(output_dir))
    written = {u[0]: u[1:] for m in markers for u in m["utterances"]}
    assert written == labels(fused, "fused") != labels(plain, "plain")
    # Fusion needs beam search: a greedy teacher with an LM is one line, before any worker.
    status = beam_pseudo_label.main(
        [*flags, "--beam_size=1", f"--output_dir={tmp_path / 'greedy'}", "--"]
    )
    assert status == 1
    assert "needs beam search" in capsys.readouterr().err


def test_a_missing_corpus_is_one_line_on_stderr(tmp_path, capsys):
    status = beam_pseudo_label.main(
        ["--checkpoint=x", f"--data_dir={tmp_path}", "--corpus=nope", "--output_dir=y"]
    )
    assert status == 1
    assert "nope" in capsys.readouterr().err
