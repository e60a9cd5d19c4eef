"""The BEST-RQ pre-training model, loss and train step on a smoke-sized encoder."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bigssl_jax import train_step
from bigssl_jax.layers import frontend, quantizers
from bigssl_jax.models import best_rq
from bigssl_jax.models import encoder as encoder_lib

ENCODER = encoder_lib.EncoderConfig(
    model_dim=32, num_layers=2, num_heads=4, subsampling_channels=8, use_relative_position=True
)
OBJECTIVE = best_rq.BestRqConfig(codebook_size=64, mask_prob=0.5, span_length=2)
SAMPLES = 8000  # 0.5 s: 48 log-mel frames, 12 encoder frames


def _batch():
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal((2, SAMPLES))).astype(np.float32)
    paddings = np.zeros((2, SAMPLES), np.float32)
    paddings[1, 6000:] = 1.0
    audio[1, 6000:] = 0.0
    return {"audio": jnp.asarray(audio), "audio_paddings": jnp.asarray(paddings)}


def test_mask_features_replaces_exactly_the_masked_valid_frames():
    features = jnp.arange(2 * 10 * 3, dtype=jnp.float32).reshape(2, 10, 3) + 100.0
    paddings = jnp.zeros((2, 10)).at[1, 7:].set(1.0)
    frame_mask = jnp.array([[True, False, False], [False, True, True]])
    out = best_rq.mask_features(jax.random.key(0), features, paddings, frame_mask, 4, 0.1)
    expected = np.zeros((2, 10), bool)
    expected[0, 0:4] = True
    expected[1, 4:7] = True  # frames 8, 9 of the last span are padded: untouched
    changed = np.asarray(jnp.any(out != features, axis=-1))
    np.testing.assert_array_equal(changed, expected)
    assert float(jnp.max(jnp.abs(jnp.where(expected[..., None], out, 0.0)))) < 1.0  # noise


def test_targets_are_the_quantizer_codes_of_unmasked_features():
    model = best_rq.BestRqModel(encoder=ENCODER, objective=OBJECTIVE)
    batch = _batch()
    args = (batch["audio"], batch["audio_paddings"])
    variables = jax.jit(lambda rngs: model.init(rngs, *args, train=False))(
        {"params": jax.random.key(0), "masking": jax.random.key(1)}
    )
    apply = jax.jit(lambda key: model.apply(variables, *args, train=False, rngs={"masking": key}))
    outs = [apply(jax.random.key(seed)) for seed in (2, 3)]
    np.testing.assert_array_equal(outs[0].target_ids, outs[1].target_ids)
    assert not np.array_equal(outs[0].mask, outs[1].mask)
    assert outs[0].logits.shape == (2, 12, 1, 64)
    assert not np.any(np.asarray(outs[0].mask) & (np.asarray(outs[0].paddings) > 0.5))
    # The same codes from the quantiser alone, on stacked normalised log-mel frames.
    features, paddings = frontend.LogMelFrontend(frontend.LogMelConfig()).apply({}, *args)
    stacked, frame_paddings = quantizers.stack_frames(features, paddings, 4)
    ids = quantizers.RandomProjectionQuantizer(codebook_size=64, code_dim=16).apply(
        {"frozen": variables["frozen"]["quantizer"]}, stacked, frame_paddings
    )
    np.testing.assert_array_equal(ids, outs[0].target_ids)


def test_train_step_lowers_the_loss_and_keeps_the_quantizer_frozen():
    model = best_rq.BestRqTrainModel(encoder=ENCODER, objective=OBJECTIVE)
    batch = _batch()
    state = nn.unbox(train_step.init_state(model, optax.adam(3e-3), jax.random.key(0), batch))
    frozen = state.model_state
    step = jax.jit(train_step.make_train_step(model))
    losses = []
    for _ in range(8):
        state, metrics = step(state, batch, jax.random.key(5))
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 8
    assert losses[-1] < losses[0]
    assert metrics["num_masked_frames"] > 0 and metrics["grad_norm"] > 0
    assert 1.0 <= metrics["code_perplexity"] <= 64
    jax.tree.map(np.testing.assert_array_equal, state.model_state, frozen)
