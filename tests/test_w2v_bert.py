"""The w2v-BERT pre-training model, loss and train step on a smoke-sized encoder.

Every test uses the same model and batch shape, so the jitted functions below compile once for
the whole file.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigssl_jax import partitioning, train_step
from bigssl_jax.losses import ssl_losses
from bigssl_jax.models import base, w2v_bert, wav2vec2
from bigssl_jax.models import encoder as encoder_lib

# gin/models/smoke.gin: 2 blocks, here 1 contrastive + 1 MLM.
ENCODER = encoder_lib.EncoderConfig(
    model_dim=64,
    num_layers=2,
    num_heads=4,
    ff_mult=4,
    conv_kernel_size=5,
    use_relative_position=True,
    subsampling_channels=16,
)
CODES = 32
OBJECTIVE = w2v_bert.W2vBertConfig(
    num_contrastive_layers=1,
    contrastive=wav2vec2.Wav2Vec2Config(num_groups=1, num_codes=CODES, code_dim=16),
)
TRAIN_MODEL = w2v_bert.W2vBertTrainModel(encoder=ENCODER, objective=OBJECTIVE)
MODEL = TRAIN_MODEL.module
TX = optax.adam(3e-3)
SAMPLES = 16000  # 1 s: 25 encoder frames
# Encoder frames: 25, 17, 6 (shorter than a span), 1 (no distractor at all).
LENGTHS = (16000, 11000, 4000, 600)
TERMS = ("loss", "contrastive_loss", "mlm_loss")


def _batch():
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal((len(LENGTHS), SAMPLES))).astype(np.float32)
    paddings = (np.arange(SAMPLES)[None, :] >= np.array(LENGTHS)[:, None]).astype(np.float32)
    audio *= 1.0 - paddings
    return {"audio": audio, "audio_paddings": paddings}


@functools.cache
def _init():
    init = jax.jit(lambda rng: nn.unbox(train_step.init_state(TRAIN_MODEL, TX, rng, _batch())))
    return init(jax.random.key(0))


@jax.jit
def _term_grads(params, batch, rng, step):
    """(metrics, {term: gradient of that term}) of `loss_fn` in training mode, for TERMS."""

    def terms(p):
        _, metrics = TRAIN_MODEL.loss({"params": p}, batch, rng, step=step, train=True)
        return jnp.stack([metrics[name] for name in TERMS]), metrics

    jacobian, metrics = jax.jacrev(terms, has_aux=True)(params)
    return metrics, {
        name: jax.tree.map(lambda g, i=i: g[i], jacobian) for i, name in enumerate(TERMS)
    }


@jax.jit
def _outputs(params, batch, rng):
    """The model outputs under the rngs that `loss_fn` derives from `rng` (step 0)."""
    rngs, _ = wav2vec2.split_rngs(rng)
    return MODEL.apply(
        {"params": params}, batch["audio"], batch["audio_paddings"], step=0, train=True, rngs=rngs
    )


def _numpy_cross_entropy(logits, ids, mask):
    """Mean over masked frames and groups of -log softmax(logits)[id], in float64."""
    logits = np.asarray(logits, np.float64)[np.asarray(mask)]  # [M, G, V]
    ids = np.asarray(ids)[np.asarray(mask)]  # [M, G]
    log_z = np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
    label = np.take_along_axis(logits, ids[..., None], axis=-1)[..., 0]
    return np.mean(log_z - label)


def test_outputs_and_loss_are_the_weighted_sum_of_the_terms():
    params, batch, rng = _init().params, _batch(), jax.random.key(3)
    metrics, _ = _term_grads(params, batch, rng, 0)
    out = _outputs(params, batch, rng)
    assert out.context.shape == out.targets.vectors.shape == (4, 25, 16)
    assert out.mlm_logits.shape == (4, 25, 1, CODES)
    assert out.targets.ids.shape == (4, 25, 1) and out.mask.shape == (4, 25)
    valid = np.asarray(out.paddings) < 0.5
    assert valid.sum(axis=1).tolist() == [25, 17, 6, 1]
    np.testing.assert_array_equal(np.asarray(out.mask)[2:], valid[2:])  # short: masked whole

    _, negatives_rng = wav2vec2.split_rngs(rng)
    contrastive, _ = ssl_losses.contrastive_loss(
        out.context, out.targets.vectors, out.mask, negatives_rng, num_negatives=100
    )
    diversity, _ = ssl_losses.diversity_loss(out.targets.probs, out.mask)
    mlm = _numpy_cross_entropy(out.mlm_logits, out.targets.ids, out.mask)
    np.testing.assert_allclose(metrics["mlm_loss"], mlm, rtol=1e-5)
    np.testing.assert_allclose(metrics["contrastive_loss"], contrastive, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], contrastive + 0.1 * diversity + mlm, rtol=1e-5)
    assert np.log(CODES) - 1 < mlm < np.log(CODES) + 1  # near uniform at init
    assert 0 <= metrics["mlm_accuracy"] <= 1 and 1 <= metrics["code_perplexity"] <= CODES
    assert float(metrics["gumbel_temperature"]) == 2.0
    assert isinstance(TRAIN_MODEL, base.TrainModel)
    assert metrics[base.LOSS_WEIGHT] == metrics["num_masked_frames"] == np.sum(out.mask)


def test_mlm_module_reads_the_contrastive_module():
    _, grads = _term_grads(_init().params, _batch(), jax.random.key(4), 0)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))

    def norm(term, *path):
        tree = grads[term]
        for key in path:
            tree = tree[key]
        return float(optax.global_norm(tree))

    # The total reaches every part of the model.
    for path in (
        ("encoder", "subsampling"),
        ("encoder", "stages_0"),
        ("encoder", "stages_1"),
        ("quantizer",),
        ("mask_embedding",),
        ("final_projection",),
        ("mlm_head",),
    ):
        assert norm("loss", *path) > 0, path
    # L_mlm trains the contrastive module below the MLM module, but not the quantiser (ids).
    for path in (("encoder", "stages_0"), ("encoder", "subsampling"), ("mask_embedding",)):
        assert norm("mlm_loss", *path) > 0, path
    assert norm("mlm_loss", "quantizer") == 0 and norm("mlm_loss", "final_projection") == 0
    # L_contrastive never sees the MLM module.
    assert norm("contrastive_loss", "encoder", "stages_1") == 0
    assert norm("contrastive_loss", "mlm_head") == 0


def test_train_steps_lower_the_loss():
    state, batch, eval_rng = _init(), _batch(), jax.random.key(9)
    before, _ = _term_grads(state.params, batch, eval_rng, 0)
    step = jax.jit(train_step.make_train_step(TRAIN_MODEL))
    for _ in range(8):
        state, metrics = step(state, batch, jax.random.key(5))
    after, _ = _term_grads(state.params, batch, eval_rng, 0)
    # Measured: loss 8.75 -> 8.33, contrastive 4.96 -> 4.70; L_mlm moves less steadily (3.78 ->
    # 3.61), as its targets, the quantiser's codes, change while the quantiser trains.
    assert float(after["loss"]) < 0.97 * float(before["loss"])
    assert float(after["contrastive_loss"]) < 0.97 * float(before["contrastive_loss"])
    assert float(after["mlm_loss"]) < float(before["mlm_loss"])
    assert float(metrics["grad_norm"]) > 0 and np.isfinite(float(metrics["loss"]))
    np.testing.assert_allclose(metrics["gumbel_temperature"], 2.0 * 0.999995**7, rtol=1e-6)


def _param_shapes(num_layers, num_contrastive_layers, split_layers=()):
    encoder = dataclasses.replace(ENCODER, num_layers=num_layers, split_layers=split_layers)
    objective = dataclasses.replace(OBJECTIVE, num_contrastive_layers=num_contrastive_layers)
    model = w2v_bert.W2vBertTrainModel(encoder=encoder, objective=objective)
    state = jax.eval_shape(
        lambda: nn.unbox(train_step.init_state(model, TX, jax.random.key(0), _batch()))
    )
    return jax.tree.map(lambda x: x.shape, state.params)


def test_num_contrastive_layers_cuts_the_stack():
    for contrastive_layers in (1, 2):
        encoder = _param_shapes(3, contrastive_layers)["encoder"]
        assert sorted(encoder) == ["stages_0", "stages_1", "subsampling"]
        kernel = ("layers", "ffn_in", "hidden", "kernel")
        for stage, blocks in (
            ("stages_0", contrastive_layers),
            ("stages_1", 3 - contrastive_layers),
        ):
            shape = encoder[stage]
            for key in kernel:
                shape = shape[key]
            assert shape == (blocks, 64, 256)
    # Extra cuts are kept; the contrastive module ends at its own cut.
    assert sorted(_param_shapes(4, 2, split_layers=(1,))["encoder"]) == [
        "stages_0",
        "stages_1",
        "stages_2",
        "subsampling",
    ]
    split = w2v_bert.split_encoder(dataclasses.replace(ENCODER, num_layers=4, split_layers=(1,)), 2)
    assert split[0].split_layers == (1, 2) and split[1] == 1


def test_stacking_layer_in_the_contrastive_module_halves_both_outputs():
    encoder = dataclasses.replace(ENCODER, num_layers=3, stacking_layer=1)
    model = w2v_bert.W2vBertModel(encoder, dataclasses.replace(OBJECTIVE, num_contrastive_layers=2))
    batch = _batch()

    def outputs():
        variables = wav2vec2.init_variables(model, jax.random.key(0), batch)
        rngs = {"masking": jax.random.key(1)}
        return model.apply(
            variables, batch["audio"], batch["audio_paddings"], step=0, train=False, rngs=rngs
        )

    out = jax.eval_shape(outputs)
    assert out.context.shape == (4, 13, 16) and out.mlm_logits.shape == (4, 13, 1, CODES)
    assert out.targets.ids.shape == (4, 13, 1) and out.mask.shape == (4, 13)


def test_invalid_configs_are_rejected():
    with pytest.raises(ValueError, match="linear_targets"):
        w2v_bert.W2vBertConfig(contrastive=wav2vec2.Wav2Vec2Config(linear_targets=True))
    with pytest.raises(ValueError, match="num_contrastive_layers"):
        _param_shapes(2, 2)
    stacked = dataclasses.replace(ENCODER, num_layers=3, stacking_layer=2)
    with pytest.raises(ValueError, match="stacking_layer"):
        jax.eval_shape(
            lambda: train_step.init_state(
                w2v_bert.W2vBertTrainModel(encoder=stacked, objective=OBJECTIVE),
                TX,
                jax.random.key(0),
                _batch(),
            )
        )


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
    assert boxed["mlm_head"]["kernel"].names == ("embed", None, "vocab")
