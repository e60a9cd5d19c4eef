"""RNN-T fine-tuning model: loss against the lattice loss on its own logits, padding, decoding."""

import flax.linen as nn
import jax
import numpy as np
from test_ctc_model import ENCODER, _batch

from bigssl_jax.decoding import rnnt_search
from bigssl_jax.losses import rnnt
from bigssl_jax.models import asr, base, rnnt_decoder, rnnt_model

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
    logits, paddings = model.module.apply(
        variables, batch["audio"], batch["audio_paddings"], batch["targets"], train=False
    )
    assert logits.shape[2] == batch["targets"].shape[1] + 1 and logits.shape[3] == 40
    per_seq = rnnt.rnnt_loss(logits, paddings, batch["targets"], batch["target_paddings"])
    np.testing.assert_allclose(loss, np.sum(per_seq) / 12.0, rtol=1e-5)
    assert metrics[base.LOSS_WEIGHT] == 12.0
    padded = {k: np.concatenate([v, v[:1]]) for k, v in batch.items()}
    padded["weights"][-1] = 0.0
    padded_loss, _ = model.loss(variables, padded, jax.random.key(1), step=0, train=False)
    np.testing.assert_allclose(padded_loss, loss, rtol=1e-5)


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
