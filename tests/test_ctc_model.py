"""CTC fine-tuning model: loss against optax on the model's own logits, padding, decoding, WER."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigssl_jax.decoding import ctc_search
from bigssl_jax.evaluation import wer
from bigssl_jax.models import asr, base, ctc_model
from bigssl_jax.models import encoder as encoder_lib
from bigssl_tasks import vocab as vocab_lib

ENCODER = encoder_lib.EncoderConfig(
    input_dim=80, model_dim=32, num_layers=1, num_heads=2, conv_kernel_size=3,
    subsampling_channels=8,
)  # fmt: skip
TEXTS = ["the cat sat", "a dog ran far", "the dog sat", "a cat ran"]


def _batch(seed=0, rows=3, samples=4000, vocab_size=40):
    rng = np.random.default_rng(seed)
    lengths = np.array([samples, samples * 3 // 4, samples // 2])[:rows]
    audio = rng.standard_normal((rows, samples)).astype(np.float32) * 0.1
    audio_paddings = (np.arange(samples)[None] >= lengths[:, None]).astype(np.float32)
    audio *= 1.0 - audio_paddings
    target_lengths = np.array([5, 3, 4])[:rows]
    targets = rng.integers(3, vocab_size, (rows, 6)).astype(np.int32)
    target_paddings = (np.arange(6)[None] >= target_lengths[:, None]).astype(np.float32)
    targets *= (1 - target_paddings).astype(np.int32)
    return {
        "audio": audio,
        "audio_paddings": audio_paddings,
        "targets": targets,
        "target_paddings": target_paddings,
        "weights": np.ones(rows, np.float32),
    }


def _model(**overrides):
    return ctc_model.CtcTrainModel(encoder=ENCODER, vocab_size=40, **overrides)


def test_loss_is_optax_ctc_per_target_token_and_skips_padded_rows():
    model = _model(spec_augment=None)
    batch = _batch()
    variables = nn.unbox(model.init_variables(jax.random.key(0), batch))
    assert set(variables["params"]) == {"encoder", "ctc_head"}
    loss, metrics = model.loss(variables, batch, jax.random.key(1), step=0, train=False)
    logits, paddings = model.module.apply(
        variables, batch["audio"], batch["audio_paddings"], train=False
    )
    per_seq = optax.ctc_loss(logits, paddings, batch["targets"], batch["target_paddings"])
    np.testing.assert_allclose(loss, np.sum(per_seq) / 12.0, rtol=1e-5)
    assert metrics[base.LOSS_WEIGHT] == 12.0
    # A weight-0 row with garbage targets changes nothing.
    padded = {k: np.concatenate([v, v[:1]]) for k, v in batch.items()}
    padded["weights"][-1] = 0.0
    padded["targets"][-1] = 7
    padded_loss, _ = model.loss(variables, padded, jax.random.key(1), step=0, train=False)
    np.testing.assert_allclose(padded_loss, loss, rtol=1e-5)
    grads = jax.grad(lambda p: model.loss({"params": p}, batch, jax.random.key(2), step=0,
                                          train=True)[0])(variables["params"])  # fmt: skip
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def _vocabulary(tmp_path):
    path = tmp_path / "spm.model"
    vocab_lib.train_vocabulary(TEXTS * 8, path, vocab_size=40)
    return str(path)


def test_decode_runs_the_configured_search_and_score_writes_reports(tmp_path):
    vocabulary = _vocabulary(tmp_path)
    model = _model(vocabulary=vocabulary)
    beam = _model(vocabulary=vocabulary, decoding=asr.DecodingConfig(beam_size=3))
    batch = _batch(vocab_size=40)
    variables = nn.unbox(model.init_variables(jax.random.key(0), batch))
    logits, paddings = model.module.apply(
        variables, batch["audio"], batch["audio_paddings"], train=False
    )
    tokens, token_paddings, scores = jax.jit(model.decode)(
        variables, batch["audio"], batch["audio_paddings"]
    )
    expected = ctc_search.greedy_search(logits, paddings)
    np.testing.assert_array_equal(tokens, expected[0])
    np.testing.assert_allclose(scores, expected[2], rtol=1e-5)
    beam_tokens, _, _ = jax.jit(beam.decode)(variables, batch["audio"], batch["audio_paddings"])
    expected = ctc_search.prefix_beam_search(logits, paddings, beam_size=3, max_length=128)
    np.testing.assert_array_equal(beam_tokens, expected[0])
    assert tokens.dtype == jnp.int32 and tokens.shape[0] == 3
    vocab = asr.load_vocabulary(vocabulary)
    greedy_text = wer.detokenize(tokens, token_paddings, vocab)
    scored = {
        **batch,
        asr.ID_FIELD: np.array([b"u0", b"u1", b"u2"]),
        asr.REFERENCE_FIELD: np.array([t.encode() for t in TEXTS[:3]]),
    }
    report = model.score(variables, [scored])
    expected = wer.score(TEXTS[:3], greedy_text, ["u0", "u1", "u2"])
    assert report.metrics == {"wer": expected.wer, "cer": expected.cer}
    report.write(tmp_path / "eval")
    assert json.loads((tmp_path / "eval" / "wer.json").read_text())["num_utterances"] == 3
    assert (tmp_path / "eval" / "transcripts.tsv").read_text().count("\n") == 4
    assert len(json.loads((tmp_path / "eval" / "worst.json").read_text())) == 3


def test_missing_vocabulary_is_a_clear_error(tmp_path):
    model = _model(vocabulary=str(tmp_path / "nope.model"))
    batch = _batch()
    variables = nn.unbox(model.init_variables(jax.random.key(0), batch))
    with pytest.raises(FileNotFoundError, match="nope.model"):
        model.score(variables, [batch])
