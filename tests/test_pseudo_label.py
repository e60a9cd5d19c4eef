"""`bigssl pseudo-label`: exact, resumable labeling of a toy corpus by a tiny CTC teacher."""

import dataclasses
import json
import math

import flax.linen as nn
import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf

from bigssl_jax.decoding import lm_interface
from bigssl_jax.evaluation import wer
from bigssl_jax.jobs import pseudo_label
from bigssl_jax.layers import rnnt_decoder
from bigssl_jax.models import asr, ctc_model, rnnt_model
from bigssl_jax.models import encoder as encoder_lib
from bigssl_tasks import corpus_tasks, pseudo_labeled, toy_corpus, vocab

CORPUS = "pltoy"
TASK = corpus_tasks.task_name(CORPUS, "unlabeled", "unlabeled")
ENCODER = encoder_lib.EncoderConfig(
    input_dim=80, model_dim=16, num_layers=1, num_heads=2, conv_kernel_size=3,
    subsampling_channels=4,
)  # fmt: skip
DECODING = asr.DecodingConfig(beam_size=2, max_output_length=16)


def make_teacher(vocabulary: str, seed: int = 0) -> pseudo_label.Teacher:
    """An untrained tiny CTC teacher (garbage transcripts; exactness does not care)."""
    model = ctc_model.CtcTrainModel(
        encoder=ENCODER, vocab_size=40, vocabulary=vocabulary, spec_augment=None
    )
    batch = {"audio": np.zeros((1, 1600), np.float32)}
    variables = nn.unbox(model.init_variables(jax.random.key(seed), batch))
    return pseudo_label.Teacher(model, variables, f"tiny-ctc-{seed}")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    ids = toy_corpus.write_toy_corpus(
        data_dir, CORPUS, splits={"unlabeled": (21, False)}, num_shards=3, max_seconds=1.0
    )
    vocabulary = str(data_dir / "spm.model")
    vocab.train_vocabulary([" ".join(toy_corpus.WORDS)] * 4, vocabulary, vocab_size=40)
    corpus_tasks.register_corpus_tasks(CORPUS, data_dir=data_dir)
    files = sorted(str(p) for p in (data_dir / "prepared" / CORPUS).glob("*.tfrecord"))
    return {"data_dir": data_dir, "ids": ids["unlabeled"], "vocab": vocabulary, "files": files}


def _config(output_dir, **overrides) -> pseudo_label.LabelConfig:
    settings = {
        "task": TASK,
        "output_dir": str(output_dir),
        "num_units": pseudo_label.num_units(TASK),
        "teacher": "tiny-ctc-0",
        "decoding": DECODING,
        "batch_size": 8,
        "bucket_seconds": (1.0,),
    }
    return pseudo_label.LabelConfig(**{**settings, **overrides})


def _read(files) -> list[tf.train.Example]:
    return [
        tf.train.Example.FromString(r) for r in tf.data.TFRecordDataset(files).as_numpy_iterator()
    ]


def test_two_processes_label_disjoint_units_whose_union_is_the_task(corpus, tmp_path):
    teacher = make_teacher(corpus["vocab"])
    config = _config(tmp_path)
    assert config.num_units == 3
    units = [list(pseudo_label.process_units(3, p, 2)) for p in range(2)]
    assert units == [[0, 2], [1]]
    markers = [pseudo_label.label_units(teacher, config, u) for u in units]
    by_process = [{u[0] for m in ms for u in m["utterances"]} for ms in markers]
    assert not by_process[0] & by_process[1]
    assert sorted(by_process[0] | by_process[1]) == sorted(corpus["ids"])
    # Each unit holds exactly the utterances of its input file.
    for unit, source in enumerate(corpus["files"]):
        output = _read(pseudo_label.shard_path(str(tmp_path), unit, 3))
        assert sorted(e.features.feature["id"].bytes_list.value[0] for e in output) == sorted(
            e.features.feature["id"].bytes_list.value[0] for e in _read(source)
        )
    # Records: the source audio, the teacher's transcript of its tokens, its confidence.
    source = {e.features.feature["id"].bytes_list.value[0]: e for e in _read(corpus["files"])}
    vocabulary = asr.load_vocabulary(corpus["vocab"])
    for example in _read(tf.io.gfile.glob(str(tmp_path / "shards" / "*.tfrecord"))):
        feature = example.features.feature
        original = source[feature["id"].bytes_list.value[0]].features.feature
        assert feature["audio"].bytes_list.value[0] == original["audio"].bytes_list.value[0]
        tokens = list(feature["tokens"].int64_list.value)
        # The label is the detokenised text: whitespace runs collapsed (`wer.detokenize`).
        assert feature["text"].bytes_list.value[0].decode() == " ".join(
            vocabulary.decode(tokens).split()
        )
        expected = math.exp(feature["score"].float_list.value[0] / (len(tokens) + 1))
        np.testing.assert_allclose(feature["confidence"].float_list.value[0], expected, rtol=1e-6)
        assert feature["teacher"].bytes_list.value[0] == b"tiny-ctc-0"


def test_the_decoder_splits_rows_over_devices_and_fuses_the_lm_like_one_device_decode(corpus):
    teacher = make_teacher(corpus["vocab"])
    lm = lm_interface.BigramLanguageModel.estimate([[3, 4, 5], [4, 5, 6], [7]], 40)
    fused = asr.DecodingConfig(beam_size=2, max_output_length=16, lm_weight=0.5)
    teacher = dataclasses.replace(teacher, model=dataclasses.replace(teacher.model, lm=lm))
    decoder = pseudo_label.Decoder(teacher, fused)
    assert decoder.num_devices == 8
    rng = np.random.default_rng(0)
    audio = rng.standard_normal((3, 8000)).astype(np.float32) * 0.1
    paddings = (np.arange(8000)[None] >= np.array([[8000], [6000], [3000]])).astype(np.float32)
    tokens, token_paddings, scores = decoder(audio, paddings)
    model = dataclasses.replace(teacher.model, decoding=fused)
    expected = jax.jit(model.decode)(teacher.variables, audio, paddings)
    np.testing.assert_array_equal(tokens, expected[0])
    np.testing.assert_array_equal(token_paddings, expected[1])
    np.testing.assert_allclose(scores, expected[2], rtol=1e-5, atol=1e-5)
    unfused = jax.jit(dataclasses.replace(model, lm=None).decode)(
        teacher.variables, audio, paddings
    )
    assert not np.allclose(scores, unfused[2])  # the LM term is in the scores


def test_an_rnnt_teacher_labels_through_the_same_interface(corpus, tmp_path):
    model = rnnt_model.RnntTrainModel(
        encoder=ENCODER,
        decoder=rnnt_decoder.RnntDecoderConfig(
            vocab_size=40, embed_dim=8, lstm_layers=1, lstm_dim=8, joint_dim=8
        ),
        vocabulary=corpus["vocab"],
        spec_augment=None,
    )
    batch = {"audio": np.zeros((1, 1600), np.float32), "targets": np.zeros((1, 4), np.int32)}
    variables = nn.unbox(model.init_variables(jax.random.key(0), batch))
    teacher = pseudo_label.Teacher(model, variables, "tiny-rnnt")
    config = _config(tmp_path, teacher="tiny-rnnt", decoding=asr.DecodingConfig(beam_size=1))
    (marker,) = pseudo_label.label_units(teacher, config, [1])
    source = _read(corpus["files"][1])
    assert sorted(u[0] for u in marker["utterances"]) == sorted(
        e.features.feature["id"].bytes_list.value[0].decode() for e in source
    )
    vocabulary = asr.load_vocabulary(corpus["vocab"])
    for example in _read(pseudo_label.shard_path(str(tmp_path), 1, 3)):
        feature = example.features.feature
        assert feature["text"].bytes_list.value[0].decode() == " ".join(
            vocabulary.decode(list(feature["tokens"].int64_list.value)).split()
        )


def test_select_keeps_the_top_fraction_of_confident_labels():
    utterances = [
        ["a", -1.0, 1, math.exp(-0.5), ""],
        ["b", -6.0, 2, math.exp(-2.0), ""],
        ["c", -2.0, 3, math.exp(-0.5), ""],
        ["d", -0.1, 0, math.exp(-0.1), ""],
    ]
    top = pseudo_label.FilterConfig(keep_top_fraction=0.5)
    assert pseudo_label.select(utterances, top).tolist() == [True, False, False, True]
    threshold = pseudo_label.FilterConfig(min_confidence=0.5)
    assert pseudo_label.select(utterances, threshold).tolist() == [True, False, True, True]
    both = pseudo_label.FilterConfig(min_confidence=0.5, keep_top_fraction=0.3)
    assert pseudo_label.select(utterances, both).tolist() == [False, False, False, True]
    raw = pseudo_label.FilterConfig(keep_top_fraction=0.5, normalization="none")
    assert pseudo_label.select(utterances, raw).tolist() == [True, False, False, True]


def test_regression_normalisation_is_standardised_residual_of_a_linear_fit():
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 30, 200)
    scores = -0.7 * (tokens + 1) - 2.0 + rng.standard_normal(200) * np.sqrt(tokens + 1)
    ranked = pseudo_label.rank_scores(scores, tokens, "regression")
    slope, intercept = np.polyfit(tokens + 1.0, scores, 1)
    residual = scores - (slope * (tokens + 1.0) + intercept)
    sigma = np.sqrt(np.mean(residual**2 / (tokens + 1.0)))
    np.testing.assert_allclose(ranked, residual / (sigma * np.sqrt(tokens + 1.0)), rtol=1e-6)
    np.testing.assert_allclose(np.mean(ranked**2), 1.0, rtol=1e-8)


def test_finalize_filters_writes_manifest_and_oracle_report_and_registers_task(corpus, tmp_path):
    teacher = make_teacher(corpus["vocab"])
    config = _config(tmp_path)
    pseudo_label.start_job(config)
    with pytest.raises(pseudo_label.IncompleteJobError, match="3 of 3 units"):
        pseudo_label.finalize(str(tmp_path), name="x", vocabulary=corpus["vocab"])
    markers = pseudo_label.label_units(teacher, config, range(3))
    oracle = pseudo_label.read_oracle_texts(corpus["files"])
    assert len(oracle) == 21
    filtering = pseudo_label.FilterConfig(keep_top_fraction=0.5)
    report = pseudo_label.finalize(
        str(tmp_path), name="pl_toy", vocabulary=corpus["vocab"], filtering=filtering,
        oracle=oracle, num_input_examples=21,
    )  # fmt: skip
    utterances = [u for m in markers for u in m["utterances"]]
    kept = sorted(utterances, key=lambda u: (-u[1] / (u[2] + 1), u[0]))[:11]
    assert (report["num_labeled"], report["num_kept"]) == (21, 11)
    expected = wer.score([oracle[u[0]] for u in kept], [u[4] for u in kept]).wer
    assert report["oracle"]["wer_kept"] == pytest.approx(expected)
    assert json.loads((tmp_path / "report.json").read_text()) == report
    name = pseudo_labeled.register_from_manifest(tmp_path / "manifest.json")
    examples = list(
        seqio.get_mixture_or_task(name)
        .get_dataset(None, split="all", shuffle=False, try_in_mem_cache=False)
        .as_numpy_iterator()
    )
    assert sorted(e["id"].decode() for e in examples) == sorted(u[0] for u in kept)
    assert seqio.get_mixture_or_task(name).num_input_examples("all") == 11
    assert {"audio", "targets", "confidence"} <= set(examples[0])


def test_a_rerun_with_another_teacher_is_refused(corpus, tmp_path):
    pseudo_label.start_job(_config(tmp_path))
    with pytest.raises(ValueError, match="another job.*teacher"):
        pseudo_label.start_job(_config(tmp_path, teacher="other"))
