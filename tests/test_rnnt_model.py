"""RNN-T fine-tuning model: loss against the lattice loss on its own logits, padding, decoding."""

import flax.linen as nn
import jax
import numpy as np
from test_ctc_model import ENCODER, _batch

from bigssl_jax.decoding import rnnt_search
from bigssl_jax.layers import rnnt_decoder
from bigssl_jax.losses import ctc, rnnt
from bigssl_jax.models import asr, base, rnnt_model

DECODER = rnnt_decoder.RnntDecoderConfig(
    vocab_size=40, embed_dim=16, lstm_layers=1, lstm_dim=24, joint_dim=24, dropout_rate=0.0
)


def _model(**overrides):
    return rnnt_model.RnntTrainModel(encoder=ENCODER, decoder=DECODER, **overrides)


def test_loss_is_the_lattice_loss_per_target_token_and_skips_padded_rows():
    model = _model(spec_augment=None)
    batch = _batch()
    variables = nn.unbox(model.init_variables(jax.random.key(0), batch))
    assert set(variables["params"]) == {"encoder", "decoder"}
    loss, metrics = model.loss(variables, batch, jax.random.key(1), step=0, train=False)
    logits, paddings, ctc_logits = model.module.apply(
        variables, batch["audio"], batch["audio_paddings"], batch["targets"], train=False
    )
    assert ctc_logits is None and "ctc_loss" not in metrics
    assert logits.shape[2] == batch["targets"].shape[1] + 1 and logits.shape[3] == 40
    per_seq = rnnt.rnnt_loss(logits, paddings, batch["targets"], batch["target_paddings"])
    np.testing.assert_allclose(loss, np.sum(per_seq) / 12.0, rtol=1e-5)
    assert metrics[base.LOSS_WEIGHT] == 12.0
    padded = {k: np.concatenate([v, v[:1]]) for k, v in batch.items()}
    padded["weights"][-1] = 0.0
    padded_loss, _ = model.loss(variables, padded, jax.random.key(1), step=0, train=False)
    np.testing.assert_allclose(padded_loss, loss, rtol=1e-5)


def test_auxiliary_ctc_loss_adds_the_weighted_ctc_of_a_head_on_the_encoder():
    model = _model(spec_augment=None, ctc_weight=0.3)
    batch = _batch()
    variables = nn.unbox(model.init_variables(jax.random.key(0), batch))
    assert set(variables["params"]) == {"encoder", "decoder", "ctc_head"}
    loss, metrics = model.loss(variables, batch, jax.random.key(1), step=0, train=False)
    logits, paddings, ctc_logits = model.module.apply(
        variables, batch["audio"], batch["audio_paddings"], batch["targets"], train=False
    )
    assert ctc_logits.shape == logits.shape[:2] + (40,)
    targets = (batch["targets"], batch["target_paddings"])
    ctc_mean = np.sum(ctc.ctc_loss(ctc_logits, paddings, *targets)) / 12.0
    rnnt_mean = np.sum(rnnt.rnnt_loss(logits, paddings, *targets)) / 12.0
    np.testing.assert_allclose(metrics["ctc_loss"], ctc_mean, rtol=1e-5)
    np.testing.assert_allclose(metrics["rnnt_loss"], rnnt_mean, rtol=1e-5)
    np.testing.assert_allclose(loss, rnnt_mean + 0.3 * ctc_mean, rtol=1e-5)
    # Decoding is the transducer's alone: the head does not change it.
    plain = {"params": {k: v for k, v in variables["params"].items() if k != "ctc_head"}}
    got = jax.jit(model.decode)(variables, batch["audio"], batch["audio_paddings"])
    want = jax.jit(_model().decode)(plain, batch["audio"], batch["audio_paddings"])
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_decode_runs_the_configured_search_on_the_encoder_outputs():
    batch = _batch()
    greedy = _model()
    beam = _model(decoding=asr.DecodingConfig(beam_size=2, max_output_length=16))
    variables = nn.unbox(greedy.init_variables(jax.random.key(0), batch))
    encodings, paddings = greedy.encode(variables, batch["audio"], batch["audio_paddings"])
    decoder = rnnt_decoder.RnntDecoder(DECODER)
    decoder_variables = {"params": variables["params"]["decoder"]}
    expected = rnnt_search.greedy_search(
        decoder, decoder_variables, encodings, paddings, max_len=128, max_symbols_per_frame=3
    )
    got = jax.jit(greedy.decode)(variables, batch["audio"], batch["audio_paddings"])
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    expected = rnnt_search.beam_search(
        decoder, decoder_variables, encodings, paddings, beam_size=2, max_len=16,
        max_symbols_per_frame=3,
    )  # fmt: skip
    got = jax.jit(beam.decode)(variables, batch["audio"], batch["audio_paddings"])
    np.testing.assert_array_equal(got[0], expected[0])
    assert np.all(got[2] >= -1e9)
