"""Tests of the Conformer encoder: shapes, padding invariance, scan/remat/bf16 equivalences,
attention against numpy, dropout, logical axis names, and the audio encoder."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigssl_jax import partitioning
from bigssl_jax.layers import attention, conformer, subsampling
from bigssl_jax.models import encoder

TINY = encoder.EncoderConfig(
    input_dim=16,
    model_dim=16,
    num_layers=2,
    num_heads=2,
    conv_kernel_size=3,
    subsampling_channels=4,
    dropout_rate=0.1,
    ff_dropout_rate=0.1,
    input_dropout_rate=0.1,
)
# Every optional path at once: relative position bias, mid-stack frame stacking.
FULL = dataclasses.replace(TINY, num_layers=3, use_relative_position=True, stacking_layer=2)


def _batch(lengths, num_frames, input_dim=16, seed=0):
    """Features with utterance b valid on its first lengths[b] frames; padded frames hold noise."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(len(lengths), num_frames, input_dim)).astype(np.float32)
    paddings = (np.arange(num_frames)[None, :] >= np.array(lengths)[:, None]).astype(np.float32)
    return jnp.asarray(features), jnp.asarray(paddings)


def _random_like(shapes, seed=3):
    """Random values for a tree of parameter shapes (no init to compile; also, zero biases
    and unit LayerNorm scales would hide bugs): kernels ~ N(0, 1 / fan_in), where fan_in is
    the product of all but the last axis; scales ~ 1 + N(0, 0.3^2); other vectors ~ N(0, 0.3^2).
    """
    rng = np.random.default_rng(seed)

    def draw(path, shape):
        values = rng.normal(size=shape.shape).astype(np.float32)
        if "scale" in jax.tree_util.keystr(path):
            return 1.0 + 0.3 * values
        if len(shape.shape) >= 2:
            return values / np.sqrt(np.prod(shape.shape[:-1]))
        return 0.3 * values

    return jax.tree_util.tree_map_with_path(draw, shapes)


@functools.cache
def _variables(config: encoder.EncoderConfig) -> dict:
    """Random parameters of `config` (cached)."""
    model = encoder.ConformerEncoder(config)
    features, paddings = _batch([8], 8, config.input_dim)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), features, paddings, train=False))
    return _random_like(nn.unbox(shapes))


@functools.cache
def _apply_fn(config: encoder.EncoderConfig, train: bool):
    """A jitted (variables, features, paddings, rng) -> (outputs, paddings), one per config."""
    model = encoder.ConformerEncoder(config)
    return jax.jit(lambda v, f, p, r: model.apply(v, f, p, train=train, rngs={"dropout": r}))


def _apply(config, variables, features, paddings, train=False, seed=1):
    return _apply_fn(config, train)(variables, features, paddings, jax.random.key(seed))


def test_shapes_and_paddings():
    features, paddings = _batch([37, 20], 37)
    outputs, out_paddings = _apply(FULL, _variables(FULL), features, paddings)
    # 37 -> 19 -> 10 frames (subsampling), -> 5 (stacking).
    assert outputs.shape == (2, 5, 16) and outputs.dtype == jnp.float32
    np.testing.assert_array_equal(out_paddings, np.asarray(paddings)[:, ::8])
    assert np.isfinite(np.asarray(outputs)).all()


@pytest.mark.parametrize("config", [TINY, FULL], ids=["plain", "relpos_stacking"])
def test_padding_invariance(config):
    """Valid output frames do not change when the batch carries more (noisy) padding."""
    lengths = [27, 13]
    short, short_paddings = _batch(lengths, 28, seed=0)
    long, long_paddings = _batch(lengths, 61, seed=1)
    long = long.at[:, :28].set(jnp.where(short_paddings[..., None] > 0, long[:, :28], short))
    variables = _variables(config)
    out_short, pad_short = _apply(config, variables, short, short_paddings)
    out_long, pad_long = _apply(config, variables, long, long_paddings)
    frames = out_short.shape[1]
    np.testing.assert_array_equal(pad_long[:, :frames], pad_short)
    valid = np.asarray(pad_short) == 0
    np.testing.assert_allclose(
        np.asarray(out_long[:, :frames])[valid], np.asarray(out_short)[valid], atol=1e-5
    )


def _unscan(params):
    """Scanned layout (stage/layers/... with a leading layer axis) -> stage/layers_{i}/..."""
    out = {}
    for name, subtree in params.items():
        if name.startswith("stages_"):
            layers = subtree["layers"]
            count = jax.tree_util.tree_leaves(layers)[0].shape[0]
            subtree = {
                f"layers_{i}": jax.tree_util.tree_map(lambda x, i=i: x[i], layers)
                for i in range(count)
            }
        out[name] = subtree
    return out


def test_scan_equals_loop():
    features, paddings = _batch([24, 17], 24)
    variables = _variables(FULL)
    loop = dataclasses.replace(FULL, scan_layers=False)
    expected, _ = _apply(FULL, variables, features, paddings)
    actual, _ = _apply(loop, {"params": _unscan(variables["params"])}, features, paddings)
    np.testing.assert_allclose(actual, expected, atol=1e-5)


def test_split_layers_expose_stages_without_changing_outputs():
    features, paddings = _batch([24, 17], 24)
    variables = _variables(TINY)
    split = encoder.ConformerEncoder(dataclasses.replace(TINY, split_layers=(1,)))
    layers = variables["params"]["stages_0"]["layers"]
    split_params = {"subsampling": variables["params"]["subsampling"]}
    for stage, index in (("stages_0", slice(0, 1)), ("stages_1", slice(1, 2))):
        split_params[stage] = {"layers": jax.tree_util.tree_map(lambda x, s=index: x[s], layers)}
    expected, _ = _apply(TINY, variables, features, paddings)

    def stages(v, f, p):
        x, q = split.apply(v, f, p, train=False, method="embed")
        return split.apply(v, x, q, train=False, method="encode")

    results = jax.jit(stages)({"params": split_params}, features, paddings)
    assert len(results) == 2 and results[0][0].shape == expected.shape
    np.testing.assert_allclose(results[-1][0], expected, atol=1e-5)


# Four blocks with frame stacking before block 2, cut after blocks 1 and 3 (scanned stages).
CUT = dataclasses.replace(
    TINY, num_layers=4, use_relative_position=True, stacking_layer=2, split_layers=(1, 3)
)


@pytest.mark.parametrize(
    "target",
    [
        dataclasses.replace(CUT, split_layers=()),
        dataclasses.replace(CUT, split_layers=(), scan_layers=False),
        dataclasses.replace(CUT, split_layers=(3,), scan_layers=False),
    ],
    ids=["no-cuts", "no-cuts-loop", "other-cut-loop"],
)
def test_restage_params_regroups_blocks_for_other_cuts(target):
    features, paddings = _batch([24, 17], 24)
    saved = jax.tree_util.tree_map(np.asarray, _variables(CUT)["params"])
    restaged = encoder.restage_params(saved, target)
    stages = [f"stages_{i}" for i in range(len(target.stages))]
    assert sorted(restaged) == sorted(["stacking", "subsampling", *stages])
    expected, _ = _apply(CUT, {"params": saved}, features, paddings)
    actual, _ = _apply(target, {"params": restaged}, features, paddings)
    np.testing.assert_allclose(actual, expected, atol=1e-5)
    back = encoder.restage_params(restaged, CUT)
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, saved)


def test_restage_params_rejects_another_depth():
    saved = jax.tree_util.tree_map(np.asarray, _variables(CUT)["params"])
    with pytest.raises(ValueError, match="saved encoder has 4 Conformer blocks, this one 6"):
        encoder.restage_params(saved, dataclasses.replace(CUT, num_layers=6))


def test_remat_policies_same_outputs_and_gradients():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 6, TINY.model_dim)).astype(np.float32))
    paddings = jnp.zeros((2, 6)).at[1, 4:].set(1.0)
    # One scanned block keeps the three compilations cheap.
    stage = _variables(TINY)["params"]["stages_0"]
    variables = {"params": jax.tree_util.tree_map(lambda v: v[:1], stage)}

    def grads(policy):
        stack = encoder.ConformerStack(dataclasses.replace(TINY, remat_policy=policy), 1)

        def loss(v, x):
            out = stack.apply(v, x, paddings, train=True, rngs={"dropout": jax.random.key(4)})
            return jnp.sum(out**2), out

        return jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(variables, x)

    base_grads, base_out = grads("none")
    for policy in ("full", "dots_saveable"):
        policy_grads, out = grads(policy)
        np.testing.assert_allclose(out, base_out, atol=1e-5)
        for a, b in zip(
            jax.tree_util.tree_leaves(policy_grads),
            jax.tree_util.tree_leaves(base_grads),
            strict=True,
        ):
            np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_bfloat16_compute_close_to_float32():
    features, paddings = _batch([24, 17], 24)
    bf16 = dataclasses.replace(TINY, dtype="bfloat16")
    shapes = jax.eval_shape(
        lambda: encoder.ConformerEncoder(bf16).init(
            jax.random.key(0), features, paddings, train=False
        )
    )
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(nn.unbox(shapes)))
    variables = _variables(TINY)
    expected, _ = _apply(TINY, variables, features, paddings)
    actual, _ = _apply(bf16, variables, features, paddings)
    assert actual.dtype == jnp.float32
    valid = np.asarray(paddings[:, ::4]) == 0
    error = np.abs(np.asarray(actual) - np.asarray(expected))[valid]
    assert error.max() < 0.1 and error.mean() < 0.02


def _numpy_attention(params, x, paddings, num_heads, bias=None):
    def project(p):
        return np.einsum("btd,dhk->bthk", x, p["kernel"]) + p["bias"]

    q, k, v = (project(params[n]) for n in ("query", "key", "value"))
    logits = np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias
    logits = np.where(paddings[:, None, None, :] > 0, -np.inf, logits)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    a = np.einsum("bhts,bshk->bthk", weights, v)
    return np.einsum("bthk,hkd->btd", a, params["output"]["kernel"]) + params["output"]["bias"]


@pytest.mark.parametrize("relative_position", [False, True])
def test_attention_matches_numpy(relative_position):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 8)).astype(np.float32)
    paddings = np.zeros((2, 7), np.float32)
    paddings[1, 4:] = 1.0
    layer = attention.MultiHeadSelfAttention(
        num_heads=2, head_dim=4, relative_position=relative_position, num_buckets=8, max_distance=4
    )
    shapes = jax.eval_shape(lambda: layer.init(jax.random.key(0), x, paddings))
    variables = _random_like(nn.unbox(shapes))
    params = variables["params"]
    bias = None
    if relative_position:
        buckets = attention.relative_position_buckets(7, 8, 4)
        bias = np.transpose(params["relative_bias"][buckets], (2, 0, 1))[None]
    expected = _numpy_attention(params, x, paddings, 2, bias)
    actual = jax.jit(layer.apply)(variables, x, paddings)
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=1e-5)


def _numpy_layer_norm(x, params, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * params["scale"] + params["bias"]


def _numpy_dense(x, params):
    return x @ params["kernel"] + params["bias"]


def test_convolution_module_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 9, 6)).astype(np.float32)
    paddings = np.zeros((2, 9), np.float32)
    paddings[1, 5:] = 1.0
    layer = conformer.ConvolutionModule(kernel_size=4)
    shapes = jax.eval_shape(lambda: layer.init(jax.random.key(0), x, paddings, train=False))
    variables = _random_like(nn.unbox(shapes))
    p = jax.tree_util.tree_map(np.asarray, variables["params"])

    n = _numpy_layer_norm(x, p["norm"])
    h = _numpy_dense(n, p["glu_value"]) / (1 + np.exp(-_numpy_dense(n, p["glu_gate"])))
    h = h * (1 - paddings)[..., None]
    # Depthwise, centred: kernel tap i reads frame t + i - (K - 1) // 2 (K = 4: t-1 .. t+2).
    padded = np.pad(h, ((0, 0), (1, 2), (0, 0)))
    kernel = p["depthwise_kernel"]
    h = sum(padded[:, i : i + 9] * kernel[i] for i in range(4)) + p["depthwise_bias"]
    h = _numpy_layer_norm(h, p["depthwise_norm"])
    h = h / (1 + np.exp(-h))
    expected = _numpy_dense(h, p["pointwise_out"])
    actual = layer.apply(variables, x, paddings, train=False)
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=1e-4)


def test_subsampling_and_stacking_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 11, 8)).astype(np.float32)
    paddings = np.zeros((2, 11), np.float32)
    paddings[1, 6:] = 1.0
    layer = subsampling.ConvSubsampling(channels=3, model_dim=5)
    shapes = jax.eval_shape(lambda: layer.init(jax.random.key(0), x, paddings))
    variables = _random_like(nn.unbox(shapes))
    p = jax.tree_util.tree_map(np.asarray, variables["params"])

    def conv(h, kernel, bias):  # 3x3, stride 2, one frame / bin of zero padding each side
        h = np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
        t, f = (h.shape[1] - 1) // 2, (h.shape[2] - 1) // 2
        out = sum(
            np.einsum("btfc,cd->btfd", h[:, i : i + 2 * t : 2, j : j + 2 * f : 2], kernel[i, j])
            for i in range(3)
            for j in range(3)
        )
        return np.maximum(out + bias, 0.0)

    k1 = p["conv1_kernel"].reshape(3, 3, 1, 3)
    k2 = p["conv2_kernel"].reshape(3, 3, 3, 3)
    h = conv((x * (1 - paddings)[..., None])[..., None], k1, p["conv1_bias"])
    h = h * (1 - paddings[:, ::2])[:, :, None, None]
    h = conv(h, k2, p["conv2_bias"])
    expected_paddings = paddings[:, ::4]
    expected = _numpy_dense(h.reshape(2, h.shape[1], -1), p["projection"])
    expected *= (1 - expected_paddings)[..., None]
    actual, actual_paddings = layer.apply(variables, x, paddings)
    assert actual.shape == (2, 3, 5)  # 11 -> 6 -> 3 frames
    np.testing.assert_array_equal(actual_paddings, expected_paddings)
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=1e-4)

    stacking = subsampling.FrameStacking(model_dim=5)
    shapes = jax.eval_shape(lambda: stacking.init(jax.random.key(0), expected, expected_paddings))
    variables = _random_like(nn.unbox(shapes))
    stacked, stacked_paddings = stacking.apply(variables, expected, expected_paddings)
    pairs = np.concatenate([expected, np.zeros((2, 1, 5), np.float32)], axis=1).reshape(2, 2, 10)
    p = jax.tree_util.tree_map(np.asarray, variables["params"])
    np.testing.assert_array_equal(stacked_paddings, expected_paddings[:, ::2])
    expected_stacked = _numpy_dense(pairs, p["projection"]) * (1 - stacked_paddings)[..., None]
    np.testing.assert_allclose(stacked, expected_stacked, atol=1e-5, rtol=1e-5)


def test_relative_position_buckets():
    buckets = attention.relative_position_buckets(300, num_buckets=32, max_distance=128)
    offsets = {0: 0, -1: 1, -7: 7, 1: 17, 7: 23, -299: 15, 299: 31}
    for offset, bucket in offsets.items():
        query = 0 if offset >= 0 else 299
        assert buckets[query, query + offset] == bucket, offset
    # Buckets depend only on the offset and grow with its magnitude.
    np.testing.assert_array_equal(buckets[1:, 1:], buckets[:-1, :-1])
    assert (np.diff(buckets[0, :]) >= 0).all() and (np.diff(buckets[299, ::-1]) >= 0).all()


def test_relative_position_changes_outputs():
    features, paddings = _batch([24, 17], 24)
    relpos = dataclasses.replace(TINY, use_relative_position=True)
    variables = _variables(relpos)
    plain_params = jax.tree_util.tree_map(lambda x: x, variables["params"])
    del plain_params["stages_0"]["layers"]["attention"]["relative_bias"]
    with_bias, _ = _apply(relpos, variables, features, paddings)
    without, _ = _apply(TINY, {"params": plain_params}, features, paddings)
    assert np.abs(np.asarray(with_bias) - np.asarray(without)).max() > 1e-3


def test_dropout_only_when_training():
    features, paddings = _batch([24, 17], 24)
    variables = _variables(TINY)
    eval_a, _ = _apply(TINY, variables, features, paddings, train=False, seed=1)
    eval_b, _ = _apply(TINY, variables, features, paddings, train=False, seed=2)
    train_a, _ = _apply(TINY, variables, features, paddings, train=True, seed=1)
    train_b, _ = _apply(TINY, variables, features, paddings, train=True, seed=2)
    np.testing.assert_array_equal(eval_a, eval_b)
    assert np.abs(np.asarray(train_a) - np.asarray(train_b)).max() > 1e-3
    assert np.abs(np.asarray(train_a) - np.asarray(eval_a)).max() > 1e-3


@pytest.mark.parametrize("scan_layers", [True, False])
def test_every_parameter_has_logical_axis_names(scan_layers):
    config = dataclasses.replace(FULL, scan_layers=scan_layers)
    model = encoder.ConformerEncoder(config)
    features, paddings = _batch([24], 24)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), features, paddings, train=False))
    known = {name for name, _ in partitioning.LOGICAL_AXIS_RULES}
    leaves = jax.tree_util.tree_leaves_with_path(
        boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned)
    )
    assert leaves
    for path, leaf in leaves:
        where = jax.tree_util.keystr(path)
        assert isinstance(leaf, nn.Partitioned), f"{where} has no logical axis names"
        assert len(leaf.names) == leaf.value.ndim and None not in leaf.names, where
        assert set(leaf.names) <= known, f"{where}: {leaf.names} not in LOGICAL_AXIS_RULES"
        assert (leaf.names[0] == "layers") == ("stages_" in where and scan_layers), where


def test_sharded_forward_matches_unsharded():
    """Under a (data, fsdp, tensor) = (2, 2, 2) mesh with the project's rules, parameters shard
    by their logical names and the forward pass equals the unsharded one."""
    mesh = partitioning.make_mesh(partitioning.MeshConfig(data=2, fsdp=2, tensor=2))
    rules = partitioning.LOGICAL_AXIS_RULES
    model = encoder.ConformerEncoder(FULL)
    features, paddings = _batch([24, 17, 9, 20], 24)

    def init(f, p):
        return model.init(jax.random.key(0), f, p, train=False)

    with partitioning.mesh_context(mesh, rules):  # init traces under the mesh and rules
        boxed = jax.eval_shape(init, features, paddings)
    shardings = partitioning.logical_to_mesh_shardings(boxed, mesh, rules)
    kernel = shardings["params"]["stages_0"]["layers"]["ffn_in"]["hidden"]["kernel"]
    assert kernel.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    variables = jax.device_put(_random_like(nn.unbox(boxed)), shardings)
    with partitioning.mesh_context(mesh, rules):
        sharded, _ = jax.jit(lambda v, f, p: model.apply(v, f, p, train=False))(
            variables, features, paddings
        )
    expected, _ = _apply(FULL, _random_like(nn.unbox(boxed)), features, paddings)
    np.testing.assert_allclose(sharded, expected, atol=1e-5)


def test_audio_encoder():
    from bigssl_jax.layers import frontend

    config = dataclasses.replace(TINY, input_dim=80)
    model = encoder.AudioEncoder(config, spec_augment=frontend.SpecAugmentConfig())
    rng = np.random.default_rng(0)
    audio = jnp.asarray(rng.normal(size=(2, 4000)).astype(np.float32) * 0.1)
    paddings = jnp.zeros((2, 4000)).at[1, 2400:].set(1.0)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), audio, paddings, train=False))
    assert set(shapes["params"]) == {"encoder"}
    rngs = {"dropout": jax.random.key(1), "specaug": jax.random.key(2)}
    outputs, out_paddings = jax.jit(lambda v, a, p: model.apply(v, a, p, train=True, rngs=rngs))(
        _random_like(nn.unbox(shapes)), audio, paddings
    )
    # 4000 samples -> 23 frames of 10 ms -> 6 after 4x subsampling.
    assert outputs.shape == (2, 6, 16) and out_paddings.shape == (2, 6)
    assert out_paddings[0].sum() == 0 and out_paddings[1].sum() > 0
    assert np.isfinite(np.asarray(outputs)).all()
