"""Meshes, sharding rules, and sharded train steps equal to the single-device step.

Runs on the 8 fake CPU devices of `conftest.py`. One train step of a smoke-sized
`ConformerEncoder` (forward with dropout, masked MSE to fixed random targets, grads, Adam)
under data-parallel, FSDP and FSDP x tensor meshes must give the single-device loss and
updated parameters within rtol=1e-5, atol=1e-6 (float32).

Golden sharding tables (`tests/golden/sharding_<layout>.json`: param path -> PartitionSpec
as a list) are compared exactly. After an intended change to the model or the rules,
regenerate them with:

    BIGSSL_REGEN_GOLDENS=1 python -m pytest -q tests/test_partitioning.py

and review the JSON diff.
"""

import json
import os
import pathlib
import types

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from bigssl_jax import configurables, gin_utils, partitioning, paths
from bigssl_jax.layers import frontend
from bigssl_jax.models import encoder as encoder_lib
from bigssl_jax.partitioning import MeshConfig
from bigssl_jax.train_state import TrainState

GOLDEN_DIR = pathlib.Path(__file__).parent / "golden"
REGEN_GOLDENS = os.environ.get("BIGSSL_REGEN_GOLDENS") == "1"
RTOL, ATOL = 1e-5, 1e-6

LAYOUTS = {
    "data": MeshConfig(data=8),
    "fsdp": MeshConfig(data=2, fsdp=4),
    "tensor": MeshConfig(data=1, fsdp=4, tensor=2),
}
BATCH, FRAMES, MELS = 8, 16, 16


# A smoke-sized Conformer whose sharded dims divide fsdp=4/8 (embed 16) and tensor=2 (4 heads,
# mlp 32). Dropout is on: its masks come from the step's rng and must not depend on the mesh.
ENCODER = encoder_lib.EncoderConfig(
    input_dim=MELS,
    model_dim=16,
    num_layers=2,
    num_heads=4,
    ff_mult=2,
    conv_kernel_size=3,
    subsampling_channels=4,
    dropout_rate=0.1,
    ff_dropout_rate=0.1,
    input_dropout_rate=0.1,
)


def _model():
    return encoder_lib.ConformerEncoder(ENCODER)


# ---------------------------------------------------------------------------------------
# Fixtures: data, init, the step.
# ---------------------------------------------------------------------------------------

# Adam with eps=1e-3 instead of 1e-8: the attention key bias has an exactly zero gradient
# (softmax is shift-invariant), and a tiny eps would turn its float32 round-off, which
# depends on each mesh's reduction order, into full-size updates.
TX = optax.adam(1e-3, eps=1e-3)


def _batch():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((BATCH, FRAMES, MELS)).astype(np.float32)
    lengths = rng.integers(FRAMES // 2, FRAMES + 1, size=BATCH)
    paddings = (np.arange(FRAMES)[None, :] >= lengths[:, None]).astype(np.float32)
    return {"features": features, "paddings": paddings}


def _targets(out_shape):
    return jax.random.normal(jax.random.key(7), out_shape, jnp.float32)


def _init_fn(rng):
    batch = _batch()
    variables = _model().init(
        rng, jnp.asarray(batch["features"]), jnp.asarray(batch["paddings"]), train=False
    )
    return TrainState.create(params=variables["params"], tx=TX)


def _train_step(state, batch, rng):
    """Masked MSE of the encoder output to fixed random targets, then one Adam update."""

    def loss_fn(params):
        out, out_paddings = _model().apply(
            {"params": params},
            batch["features"],
            batch["paddings"],
            train=True,
            rngs={"dropout": rng},
        )
        valid = 1.0 - out_paddings
        err = jnp.sum((out - _targets(out.shape)) ** 2, axis=-1)
        return jnp.sum(err * valid) / jnp.maximum(jnp.sum(valid), 1.0)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads), {"loss": loss}


def _abstract_state():
    return jax.eval_shape(_init_fn, jax.random.key(0))


def _run_step(mesh, host_state):
    """Places `host_state` on `mesh` by the rules and runs one jitted train step."""
    shardings = partitioning.state_shardings(
        _abstract_state(), mesh, partitioning.LOGICAL_AXIS_RULES
    )
    state = jax.device_put(host_state, shardings)
    step = partitioning.jit_train_step(
        _train_step, shardings, partitioning.batch_sharding(mesh), mesh
    )
    batch = partitioning.make_global_batch(_batch(), mesh)
    new_state, metrics = step(state, batch, jax.random.key(1))
    return new_state, shardings, float(metrics["loss"])


@pytest.fixture(scope="module")
def initial():
    """The state from `init_sharded_state` on the FSDP x tensor mesh, and its host copy."""
    mesh = partitioning.make_mesh(LAYOUTS["tensor"])
    state, shardings = partitioning.init_sharded_state(
        _init_fn, mesh, partitioning.LOGICAL_AXIS_RULES, jax.random.key(0)
    )
    return types.SimpleNamespace(state=state, shardings=shardings, host=jax.device_get(state))


@pytest.fixture(scope="module")
def reference(initial):
    """The single-device step from the same initial state."""
    mesh = partitioning.make_mesh(MeshConfig(data=1), jax.devices()[:1])
    new_state, _, loss = _run_step(mesh, initial.host)
    return types.SimpleNamespace(loss=loss, params=jax.device_get(new_state.params))


def _path_str(path):
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def _spec_to_json(spec):
    return [list(e) if isinstance(e, tuple) else e for e in spec]


def _sharding_table(tree):
    """{param path: PartitionSpec as a JSON list} of a tree of arrays or shardings."""
    return {
        _path_str(path): _spec_to_json(getattr(leaf, "sharding", leaf).spec)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def _golden(layout, table):
    """The golden table of `layout`; rewrites it from `table` if BIGSSL_REGEN_GOLDENS=1."""
    path = GOLDEN_DIR / f"sharding_{layout}.json"
    if REGEN_GOLDENS:
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------
# Tests.
# ---------------------------------------------------------------------------------------


def test_init_sharded_state_places_state_by_the_rules(initial):
    state, shardings = initial.state, initial.shardings
    placed = jax.tree.map(lambda leaf, sharding: leaf.sharding == sharding, state, shardings)
    assert all(jax.tree.leaves(placed))
    assert _sharding_table(state.params) == _golden("tensor", _sharding_table(state.params))
    # Each device holds 1/8 of a kernel sharded over both 'fsdp' (4) and 'tensor' (2).
    kernel = state.params["stages_0"]["layers"]["ffn_in"]["hidden"]["kernel"]
    assert kernel.addressable_shards[0].data.size * 8 == kernel.size


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_sharded_step_matches_single_device(layout, initial, reference):
    mesh = partitioning.make_mesh(LAYOUTS[layout])
    state, shardings, loss = _run_step(mesh, initial.host)

    # Same loss and updated params as on one device.
    np.testing.assert_allclose(loss, reference.loss, rtol=RTOL, atol=ATOL)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL),
        jax.device_get(state.params),
        reference.params,
    )
    assert int(state.step) == 1

    # Params are laid out as the golden table says, and the step kept their shardings.
    table = _sharding_table(state.params)
    assert table == _golden(layout, table)
    assert table == _sharding_table(shardings.params)

    # Adam's moments are sharded like the params; its count is replicated.
    adam_state = state.opt_state[0]
    for moments in (adam_state.mu, adam_state.nu):
        assert _sharding_table(moments) == table
    assert adam_state.count.sharding.spec == P()


def test_optimizer_state_shardings_follow_params():
    mesh = partitioning.make_mesh(LAYOUTS["tensor"])
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(optax.linear_schedule(0.0, 1e-3, 10), weight_decay=0.01),
        optax.ema(0.99),
    )
    abstract = jax.eval_shape(lambda: TrainState.create(params=_abstract_state().params, tx=tx))
    shardings = partitioning.state_shardings(abstract, mesh, partitioning.LOGICAL_AXIS_RULES)
    table = _sharding_table(shardings.params)
    assert table == _golden("tensor", table)
    adam, ema = shardings.opt_state[1][0], shardings.opt_state[2]
    for copy in (adam.mu, adam.nu, ema.ema):
        assert _sharding_table(copy) == table
    for leaf in (adam.count, ema.count, shardings.step):
        assert leaf.spec == P()


def test_adafactor_factored_moments_are_replicated_and_full_moments_sharded():
    mesh = partitioning.make_mesh(LAYOUTS["tensor"])
    tx = optax.adafactor(1e-3, min_dim_size_to_factor=32)
    abstract = jax.eval_shape(lambda: TrainState.create(params=_abstract_state().params, tx=tx))
    shardings = partitioning.state_shardings(abstract, mesh, partitioning.LOGICAL_AXIS_RULES)
    factored = shardings.opt_state[0]
    param_specs = dict(
        (jax.tree_util.keystr(path), leaf.spec)
        for path, leaf in jax.tree_util.tree_leaves_with_path(shardings.params)
    )
    checked = 0
    for path, v in jax.tree_util.tree_leaves_with_path(abstract.opt_state[0].v):
        key = jax.tree_util.keystr(path)
        spec = dict(
            (jax.tree_util.keystr(p), leaf.spec)
            for p, leaf in jax.tree_util.tree_leaves_with_path(factored.v)
        )[key]
        if v.shape == (1,):  # factored parameter: v is a placeholder, v_row / v_col hold it
            assert spec == P()
        else:
            assert spec == param_specs[key]
            checked += 1
    assert checked
    for leaf in jax.tree.leaves(factored.v_row) + jax.tree.leaves(factored.v_col):
        assert leaf.spec == P()
    partitioning.jit_train_step(_train_step, shardings, None, mesh)  # builds without error


def test_train_state_apply_gradients_is_one_optax_update():
    params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
    grads = {"w": jnp.array([0.5, 0.25]), "b": jnp.array(-1.0)}
    tx = optax.sgd(0.1, momentum=0.9)
    state = TrainState.create(params=params, tx=tx, model_state={"stats": jnp.zeros(2)})
    state = state.apply_gradients(grads, stats=jnp.ones(2))
    updates, opt_state = tx.update(grads, tx.init(params), params)
    jax.tree.map(np.testing.assert_array_equal, state.params, optax.apply_updates(params, updates))
    jax.tree.map(np.testing.assert_array_equal, state.opt_state, opt_state)
    assert int(state.step) == 1
    np.testing.assert_array_equal(state.model_state["stats"], np.ones(2))


def test_rules_shard_where_documented():
    rules = dict(partitioning.LOGICAL_AXIS_RULES)
    assert rules["activation_batch"] == ("data", "fsdp")
    assert rules["embed"] == "fsdp"
    assert {rules[n] for n in ("mlp", "heads", "vocab", "activation_mlp", "activation_heads")} == {
        "tensor"
    }
    replicated = ("kv", "conv_kernel", "conv_in", "conv_out", "mel", "layers")
    assert all(rules[n] is None for n in replicated)


def test_unknown_logical_axis_is_an_error():
    mesh = partitioning.make_mesh(MeshConfig(data=8))
    boxed = {"w": nn.LogicallyPartitioned(jnp.zeros((2, 2)), ("embed", "emebd"))}
    with pytest.raises(ValueError, match=r"\['emebd'\].*'w'"):
        partitioning.logical_to_mesh_shardings(boxed, mesh, partitioning.LOGICAL_AXIS_RULES)


def test_indivisible_dimension_is_an_error():
    mesh = partitioning.make_mesh(MeshConfig(data=2, tensor=4))
    boxed = {
        "w": nn.LogicallyPartitioned(jax.ShapeDtypeStruct((8, 6), jnp.float32), ("embed", "heads"))
    }
    with pytest.raises(ValueError, match=r"'w'.*shape \(8, 6\).*6 is not divisible by 4"):
        partitioning.logical_to_mesh_shardings(boxed, mesh, partitioning.LOGICAL_AXIS_RULES)


@pytest.mark.parametrize(
    "config, shape",
    [
        (MeshConfig(), (8, 1, 1)),
        (MeshConfig(data=1, fsdp=-1), (1, 8, 1)),
        (MeshConfig(data=2, fsdp=-1, tensor=2), (2, 2, 2)),
    ],
)
def test_make_mesh_resolves_minus_one(config, shape):
    mesh = partitioning.make_mesh(config)
    assert mesh.axis_names == partitioning.MESH_AXES
    assert tuple(mesh.shape.values()) == shape
    assert set(mesh.axis_types) == {jax.sharding.AxisType.Auto}


@pytest.mark.parametrize(
    "config, message",
    [
        (MeshConfig(data=-1, fsdp=-1), "at most one ICI size may be -1"),
        (MeshConfig(data=3, fsdp=-1), r"product 3\) do not divide the 8 devices per process"),
        (MeshConfig(data=2, fsdp=2), "use 4 of the 8 devices"),
        (MeshConfig(data=0), "positive or -1"),
        (MeshConfig(dcn_data=2), r"DCN .*do not divide the 1 process groups"),
    ],
)
def test_make_mesh_errors(config, message):
    with pytest.raises(ValueError, match=message):
        partitioning.make_mesh(config)


def test_multi_slice_device_array():
    fake = [
        types.SimpleNamespace(
            id=i, slice_index=i // 4, process_index=i // 4, platform="cpu", device_kind="cpu"
        )
        for i in range(8)
    ]
    array = partitioning.device_array(MeshConfig(data=2, fsdp=-1, dcn_data=-1), fake)
    assert array.shape == (4, 2, 1)
    slices = np.vectorize(lambda d: d.slice_index)(array)
    # Slices are the outer blocks of the `data` axis; each slice holds one 2 x 2 block.
    np.testing.assert_array_equal(slices[:, :, 0], [[0, 0], [0, 0], [1, 1], [1, 1]])


def test_per_device_random_equals_per_shard_calls():
    mesh = partitioning.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    batch = _batch()
    config = frontend.SpecAugmentConfig(
        num_time_masks=2, max_time_mask_ratio=0.3, max_freq_mask_bins=4
    )
    augment = jax.jit(
        partitioning.per_device_random(
            lambda rng, features, paddings: frontend.spec_augment(features, paddings, rng, config),
            mesh,
        )
    )
    rng = jax.random.key(3)
    got = np.asarray(
        augment(rng, *partitioning.make_global_batch((batch["features"], batch["paddings"]), mesh))
    )

    shards = 4  # data x fsdp; the tensor axis holds copies.
    rows = BATCH // shards
    for i in range(shards):
        part = slice(i * rows, (i + 1) * rows)
        want = frontend.spec_augment(
            batch["features"][part], batch["paddings"][part], jax.random.fold_in(rng, i), config
        )
        np.testing.assert_array_equal(got[part], np.asarray(want))
    assert not np.array_equal(got, batch["features"])


def test_per_device_random_draws_differ_across_shards():
    mesh = partitioning.make_mesh(MeshConfig(data=8))
    draw = partitioning.per_device_random(lambda rng, x: x + jax.random.uniform(rng, x.shape), mesh)
    out = np.asarray(draw(jax.random.key(0), jnp.zeros((8, 4))))
    assert len({tuple(row) for row in out}) == 8


@pytest.mark.parametrize(
    "name, shape",
    [("data", (8, 1, 1)), ("fsdp", (1, 8, 1)), ("tensor", (1, 4, 2)), ("single", (1, 1, 1))],
)
def test_mesh_gins(name, shape):
    gin.clear_config()
    try:
        gin_utils.parse([str(paths.GIN_DIR / "mesh" / f"{name}.gin")])
        config = configurables.MeshConfig()
    finally:
        gin.clear_config()
    devices = jax.devices()[: int(np.prod(shape))]
    mesh = partitioning.make_mesh(config, devices)
    assert tuple(mesh.shape.values()) == shape
