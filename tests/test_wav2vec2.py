"""The wav2vec 2.0 pre-training model, loss and train step on a smoke-sized encoder.

Every test uses the same model and batch shape, so the few jitted functions below compile once
for the whole file.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bigssl_jax import partitioning, train_step
from bigssl_jax.losses import ssl_losses
from bigssl_jax.models import base, wav2vec2
from bigssl_jax.models import encoder as encoder_lib

# gin/models/smoke.gin.
ENCODER = encoder_lib.EncoderConfig(
    model_dim=64,
    num_layers=2,
    num_heads=4,
    ff_mult=4,
    conv_kernel_size=5,
    use_relative_position=True,
    subsampling_channels=16,
)
# Default masking (0.65, span 10) and K = 100 distractors: every utterance has fewer masked
# frames than distractors.
TRAIN_MODEL = wav2vec2.Wav2Vec2TrainModel(
    encoder=ENCODER, objective=wav2vec2.Wav2Vec2Config(num_codes=16, code_dim=16)
)
LINEAR_TRAIN_MODEL = wav2vec2.Wav2Vec2TrainModel(
    encoder=ENCODER, objective=wav2vec2.Wav2Vec2Config(linear_targets=True, code_dim=16)
)
# XXL+'s layout in small: a stacking layer (half the frame rate) before the last block.
STACKED_TRAIN_MODEL = dataclasses.replace(
    TRAIN_MODEL, encoder=dataclasses.replace(ENCODER, stacking_layer=1)
)
MODEL, LINEAR_MODEL = TRAIN_MODEL.module, LINEAR_TRAIN_MODEL.module
# Adam's eps as in tests/test_partitioning.py: exactly-zero gradients (the attention key bias)
# must not turn float32 round-off into full-size updates in the sharded comparison.
TX = optax.adam(3e-3, eps=1e-3)
SAMPLES = 16000  # 1 s: 98 log-mel frames, 25 encoder frames
# Encoder frames: 25, 17, 6 (shorter than a span), 1 (no distractor at all), 25, 12, 20, 25.
LENGTHS = (16000, 11000, 4000, 600, 16000, 8000, 13000, 16000)


def _batch():
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal((len(LENGTHS), SAMPLES))).astype(np.float32)
    paddings = (np.arange(SAMPLES)[None, :] >= np.array(LENGTHS)[:, None]).astype(np.float32)
    audio *= 1.0 - paddings
    return {"audio": audio, "audio_paddings": paddings}


@functools.cache
def _init(train_model):
    """The step-0 train state of `train_model` (unboxed)."""
    init = jax.jit(lambda rng: nn.unbox(train_step.init_state(train_model, TX, rng, _batch())))
    return init(jax.random.key(0))


@functools.partial(jax.jit, static_argnames="train_model")
def _loss_and_grads(train_model, params, batch, rng, step):
    """((loss, metrics), grads) of the `TrainModel`'s loss (`loss_fn`) in training mode."""
    return jax.value_and_grad(
        lambda p: train_model.loss({"params": p}, batch, rng, step=step, train=True), has_aux=True
    )(params)


@functools.partial(jax.jit, static_argnames="model")
def _outputs(model, params, batch, rng):
    """The model outputs under the rngs that `loss_fn` derives from `rng` (step 0)."""
    rngs, _ = wav2vec2.split_rngs(rng)
    return model.apply(
        {"params": params}, batch["audio"], batch["audio_paddings"], step=0, train=True, rngs=rngs
    )


_train_step = jax.jit(train_step.make_train_step(TRAIN_MODEL))


def _numpy_diversity(probs, mask):
    """(G V - sum_g exp H(mean over masked frames of p_g)) / (G V), in float64."""
    probs = np.asarray(probs, np.float64)[np.asarray(mask)]  # [M, G, V]
    mean = probs.mean(axis=0)
    perplexity = np.exp(-np.sum(mean * np.log(mean), axis=-1)).sum()
    return (mean.size - perplexity) / mean.size


def test_outputs_shapes_masks_and_codes():
    params = _init(TRAIN_MODEL).params
    out = _outputs(MODEL, params, _batch(), jax.random.key(1))
    assert out.context.shape == out.targets.vectors.shape == (8, 25, 16)
    assert out.targets.ids.shape == (8, 25, 2)
    assert out.targets.probs.shape == (8, 25, 2, 16)
    assert out.paddings.shape == out.mask.shape == (8, 25)
    mask, valid = np.asarray(out.mask), np.asarray(out.paddings) < 0.5
    assert valid.sum(axis=1).tolist() == [25, 17, 6, 1, 25, 12, 20, 25]
    assert not np.any(mask & ~valid)
    # At least one span each; an utterance shorter than a span is masked whole.
    assert np.all(mask.sum(axis=1) >= np.minimum(valid.sum(axis=1), 10))
    np.testing.assert_array_equal(mask[2:4], valid[2:4])
    assert float(out.temperature) == 2.0
    # The targets are the chosen codebook entries (group g: codebook[g, ids[g]]), projected:
    # q = e W_q + b_q.
    codebook = np.asarray(params["quantizer"]["gumbel"]["codebook"])
    ids = np.asarray(out.targets.ids)
    entries = np.concatenate([codebook[g][ids[..., g]] for g in range(2)], axis=-1)
    project = params["quantizer"]["project"]
    expected = entries @ np.asarray(project["kernel"]) + np.asarray(project["bias"])
    np.testing.assert_allclose(out.targets.vectors, expected, rtol=1e-5, atol=1e-6)


def test_loss_is_the_weighted_sum_of_the_terms():
    params, batch, rng = _init(TRAIN_MODEL).params, _batch(), jax.random.key(3)
    (loss, metrics), _ = _loss_and_grads(TRAIN_MODEL, params, batch, rng, 0)
    out = _outputs(MODEL, params, batch, rng)
    _, negatives_rng = wav2vec2.split_rngs(rng)
    contrastive, _ = ssl_losses.contrastive_loss(
        out.context, out.targets.vectors, out.mask, negatives_rng, num_negatives=100
    )
    diversity = _numpy_diversity(out.targets.probs, out.mask)
    np.testing.assert_allclose(metrics["diversity_loss"], diversity, rtol=1e-4)
    np.testing.assert_allclose(metrics["contrastive_loss"], contrastive, rtol=1e-5)
    np.testing.assert_allclose(loss, contrastive + 0.1 * diversity, rtol=1e-5)
    assert float(contrastive) > 0 and 0 <= metrics["contrastive_accuracy"] <= 1
    assert 1.0 <= metrics["code_perplexity"] <= 16 and 0 < metrics["code_usage"] <= 1
    assert 2.0 <= metrics["prob_perplexity"] <= 32
    assert metrics["num_masked_frames"] == np.sum(out.mask)
    assert float(metrics["gumbel_temperature"]) == 2.0
    assert isinstance(TRAIN_MODEL, base.TrainModel)
    assert metrics[base.LOSS_WEIGHT] == metrics["num_masked_frames"]


def test_gradients_are_finite_and_reach_encoder_quantizer_and_mask_embedding():
    (loss, _), grads = _loss_and_grads(
        TRAIN_MODEL, _init(TRAIN_MODEL).params, _batch(), jax.random.key(4), 0
    )
    assert np.isfinite(float(loss))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    for part in (
        grads["encoder"]["subsampling"],
        grads["encoder"]["stages_0"],
        grads["quantizer"]["gumbel"]["logits_kernel"],
        grads["quantizer"]["gumbel"]["codebook"],
        grads["quantizer"]["project"],
        grads["mask_embedding"],
        grads["final_projection"],
    ):
        assert float(optax.global_norm(part)) > 0


def test_train_steps_lower_the_loss_and_anneal_the_temperature():
    state, batch, eval_rng = _init(TRAIN_MODEL), _batch(), jax.random.key(9)
    (before, _), _ = _loss_and_grads(TRAIN_MODEL, state.params, batch, eval_rng, 0)
    # Start where the temperature has visibly annealed: 2 * 0.999995**200_000 = 0.74.
    state = state.replace(step=jnp.asarray(200_000, jnp.int32))
    for _ in range(8):
        state, metrics = _train_step(state, batch, jax.random.key(5))
    (after, _), _ = _loss_and_grads(TRAIN_MODEL, state.params, batch, eval_rng, 0)
    assert float(after) < 0.95 * float(before)  # measured: 5.10 -> 4.67
    np.testing.assert_allclose(metrics["gumbel_temperature"], 2.0 * 0.999995**200_007, rtol=1e-4)
    assert float(metrics["grad_norm"]) > 0 and int(state.step) == 200_008
    (_, floor), _ = _loss_and_grads(TRAIN_MODEL, state.params, batch, eval_rng, 10_000_000)
    np.testing.assert_allclose(floor["gumbel_temperature"], 0.1, rtol=1e-6)


def test_linear_target_variant_has_no_codebook_terms():
    params = _init(LINEAR_TRAIN_MODEL).params
    assert jax.tree.map(np.shape, params["quantizer"]) == {
        "linear": {"target_projection": {"kernel": (64, 16)}}
    }
    (loss, metrics), grads = _loss_and_grads(
        LINEAR_TRAIN_MODEL, params, _batch(), jax.random.key(7), 0
    )
    assert "diversity_loss" not in metrics and "code_perplexity" not in metrics
    np.testing.assert_allclose(loss, metrics["contrastive_loss"], rtol=1e-6)
    assert float(loss) > 0
    assert float(optax.global_norm(grads["quantizer"])) > 0
    assert float(optax.global_norm(grads["encoder"]["subsampling"])) > 0


def test_stacked_span_mask_masks_both_frames_of_a_masked_context_frame():
    paddings = jnp.zeros((3, 25)).at[1, 17:].set(1.0).at[2, 1:].set(1.0)
    config = wav2vec2.Wav2Vec2Config(mask_prob=0.65, span_length=3)
    mask, input_mask = wav2vec2.stacked_span_mask(jax.random.key(0), paddings, 2, config)
    assert mask.shape == (3, 13) and input_mask.shape == (3, 25)
    expected = np.repeat(np.asarray(mask), 2, axis=1)[:, :25] & (np.asarray(paddings) < 0.5)
    np.testing.assert_array_equal(input_mask, expected)
    assert np.all(np.asarray(mask).sum(axis=1) >= 1)
    np.testing.assert_array_equal(input_mask[2], np.arange(25) == 0)  # one valid frame
    same, input_same = wav2vec2.stacked_span_mask(jax.random.key(0), paddings, 1, config)
    np.testing.assert_array_equal(same, input_same)


def test_stacking_layer_halves_the_target_and_context_rate():
    params = _init(STACKED_TRAIN_MODEL).params
    # Targets quantise pairs of embedding frames: [B, 13, 2 x 64] inputs.
    assert params["quantizer"]["gumbel"]["logits_kernel"].shape == (128, 2, 16)
    out = jax.eval_shape(_outputs, STACKED_TRAIN_MODEL.module, params, _batch(), jax.random.key(1))
    assert out.context.shape == out.targets.vectors.shape == (8, 13, 16)
    assert out.mask.shape == out.paddings.shape == (8, 13)
    (loss, metrics), grads = _loss_and_grads(
        STACKED_TRAIN_MODEL, params, _batch(), jax.random.key(2), 0
    )
    assert np.isfinite(float(loss)) and float(loss) > 0
    assert 0 < metrics["num_masked_frames"] <= 8 * 13
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert float(optax.global_norm(grads["encoder"]["stacking"])) > 0


def test_params_have_known_logical_axis_names():
    boxed = jax.eval_shape(
        lambda: train_step.init_state(TRAIN_MODEL, TX, jax.random.key(0), _batch())
    ).params
    known = {name for name, _ in partitioning.LOGICAL_AXIS_RULES}
    is_box = lambda x: isinstance(x, nn.Partitioned)  # noqa: E731
    for path, leaf in jax.tree_util.tree_leaves_with_path(boxed, is_leaf=is_box):
        assert is_box(leaf), jax.tree_util.keystr(path)
        assert len(leaf.names) == leaf.value.ndim, jax.tree_util.keystr(path)
        assert {n for n in leaf.names if n is not None} <= known
    assert boxed["mask_embedding"]["embedding"].names == ("embed",)


def test_data_parallel_step_matches_single_device():
    host_state, batch, rng = _init(TRAIN_MODEL), _batch(), jax.random.key(1)
    reference, reference_metrics = jax.device_get(_train_step(host_state, batch, rng))
    mesh = partitioning.make_mesh(partitioning.MeshConfig(data=8))
    abstract = jax.eval_shape(
        lambda: train_step.init_state(TRAIN_MODEL, TX, jax.random.key(0), batch)
    )
    shardings = partitioning.state_shardings(abstract, mesh, partitioning.LOGICAL_AXIS_RULES)
    step = partitioning.jit_train_step(
        train_step.make_train_step(TRAIN_MODEL), shardings, partitioning.batch_sharding(mesh), mesh
    )
    # From host copies: the step donates its state, which must not alias `_init`'s cache.
    state = jax.device_put(jax.device_get(host_state), shardings)
    state, metrics = step(state, partitioning.make_global_batch(batch, mesh), rng)
    for name in ("loss", "contrastive_loss", "diversity_loss", "num_masked_frames"):
        np.testing.assert_allclose(metrics[name], reference_metrics[name], rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        jax.device_get(state.params),
        reference.params,
    )


def test_bfloat16_compute_gives_float32_losses():
    train_model = dataclasses.replace(
        TRAIN_MODEL, encoder=dataclasses.replace(ENCODER, dtype="bfloat16")
    )
    batch = _batch()

    def loss():
        variables = nn.unbox(train_model.init_variables(jax.random.key(0), batch))
        return train_model.loss(variables, batch, jax.random.key(1), step=0, train=True)

    loss, metrics = jax.eval_shape(loss)
    assert loss.dtype == jnp.float32 and loss.shape == ()
    assert all(m.dtype == jnp.float32 and m.shape == () for m in metrics.values())
