"""Tests of the Gumbel, linear-target and random-projection quantisers against numpy."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bigssl_jax.layers import quantizers

GROUPS, CODES, CODE_DIM, IN_DIM = 2, 8, 6, 4


def _gumbel_setup(batch=2, length=5):
    module = quantizers.GumbelVectorQuantizer(num_groups=GROUPS, num_codes=CODES, code_dim=CODE_DIM)
    x = jax.random.normal(jax.random.key(1), (batch, length, IN_DIM))
    variables = jax.jit(module.init, static_argnames="deterministic")(
        jax.random.key(0), x, temperature=2.0, deterministic=True
    )
    params = nn.unbox(variables)["params"]
    # A non-zero bias so the test sees it added.
    params["logits_bias"] = jax.random.normal(jax.random.key(2), (GROUPS, CODES))
    return module, x, params


def _numpy_logits(x, params):
    x, w, b = (
        np.asarray(a, np.float64) for a in (x, params["logits_kernel"], params["logits_bias"])
    )
    return np.einsum("btd,dgv->btgv", x, w) + b


def test_gumbel_temperature_schedule():
    assert float(quantizers.gumbel_temperature(0)) == 2.0
    np.testing.assert_allclose(
        quantizers.gumbel_temperature(100_000), 2.0 * 0.999995**100_000, rtol=1e-5
    )
    assert float(quantizers.gumbel_temperature(10_000_000)) == np.float32(0.1)
    steps = jnp.array([0, 1000, 600_000])
    np.testing.assert_allclose(
        jax.jit(quantizers.gumbel_temperature)(steps),
        np.maximum(2.0 * 0.999995 ** np.array([0, 1000, 600_000]), 0.1),
        rtol=1e-5,
    )


def test_gumbel_forward_is_hard_code_lookup():
    module, x, params = _gumbel_setup()
    out = jax.jit(module.apply, static_argnames="deterministic")(
        {"params": params}, x, temperature=0.7, deterministic=True
    )
    logits = _numpy_logits(x, params)
    ids = np.asarray(out.ids)
    assert ids.shape == (2, 5, GROUPS) and ids.dtype == np.int32
    np.testing.assert_array_equal(ids, logits.argmax(-1))
    softmax = np.exp(logits - logits.max(-1, keepdims=True))
    softmax /= softmax.sum(-1, keepdims=True)
    np.testing.assert_allclose(out.probs, softmax, rtol=1e-5, atol=1e-6)
    codebook = np.asarray(params["codebook"])
    expected = np.stack(
        [
            np.concatenate([codebook[g, ids[b, t, g]] for g in range(GROUPS)])
            for b in range(2)
            for t in range(5)
        ]
    ).reshape(2, 5, CODE_DIM)
    np.testing.assert_allclose(out.quantized, expected, rtol=1e-6, atol=1e-6)


def test_gumbel_noise_samples_the_softmax():
    # Gumbel-max: argmax(logits + g) ~ softmax(logits), whatever the temperature.
    module, x, params = _gumbel_setup()
    frames = jnp.broadcast_to(x[:1, :1], (1, 4000, IN_DIM))
    out = jax.jit(module.apply, static_argnames="deterministic")(
        {"params": params},
        frames,
        temperature=2.0,
        deterministic=False,
        rngs={"gumbel": jax.random.key(5)},
    )
    frequency = np.stack(
        [np.bincount(np.asarray(out.ids)[0, :, g], minlength=CODES) / 4000 for g in range(GROUPS)]
    )
    np.testing.assert_allclose(frequency, np.asarray(out.probs)[0, 0], atol=0.03)
    codebook = np.asarray(params["codebook"])
    one_lookup = np.concatenate([codebook[g, out.ids[0, 7, g]] for g in range(GROUPS)])
    np.testing.assert_allclose(out.quantized[0, 7], one_lookup, rtol=1e-6)


def test_gumbel_straight_through_gradient_equals_soft_gradient():
    module, x, params = _gumbel_setup()
    weights = jax.random.normal(jax.random.key(3), (2, 5, CODE_DIM))
    temperature = 0.5

    def straight_through(p):
        out = module.apply({"params": p}, x, temperature=temperature, deterministic=True)
        return jnp.sum(out.quantized * weights)

    def soft(p):  # d/dp of sum_v softmax(logits / tau)_v e_v, written independently.
        logits = jnp.einsum("btd,dgv->btgv", x, p["logits_kernel"]) + p["logits_bias"]
        probs = jax.nn.softmax(logits / temperature, axis=-1)
        vectors = jnp.einsum("btgv,gvc->btgc", probs, p["codebook"]).reshape(2, 5, CODE_DIM)
        return jnp.sum(vectors * weights)

    got, want = jax.jit(jax.grad(straight_through))(params), jax.jit(jax.grad(soft))(params)
    for name in ("logits_kernel", "logits_bias"):
        assert np.abs(np.asarray(got[name])).max() > 1e-4
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-6)


def test_gumbel_logical_axes():
    module, x, _ = _gumbel_setup()
    variables = jax.eval_shape(
        lambda: module.init(jax.random.key(0), x, temperature=1.0, deterministic=True)
    )
    names = {k: v.names for k, v in variables["params"].items()}
    assert names == {
        "logits_kernel": ("embed", None, "vocab"),
        "logits_bias": (None, "vocab"),
        "codebook": (None, "vocab", "kv"),
    }


def test_linear_target_projection():
    module = quantizers.LinearTargetProjection(target_dim=3)
    x = jax.random.normal(jax.random.key(0), (2, 5, IN_DIM))
    variables = module.init(jax.random.key(1), x)
    kernel = variables["params"]["target_projection"]["kernel"]
    assert kernel.names == ("embed", "kv")
    np.testing.assert_allclose(
        module.apply(variables, x), np.asarray(x) @ np.asarray(kernel.value), rtol=1e-5, atol=1e-6
    )


def test_stack_frames_matches_numpy():
    features = np.arange(2 * 10 * 3, dtype=np.float32).reshape(2, 10, 3)
    paddings = np.zeros((2, 10), np.float32)
    paddings[1, 5:] = 1.0
    stacked, out_paddings = quantizers.stack_frames(jnp.asarray(features), jnp.asarray(paddings), 4)
    expected = np.zeros((2, 3, 12), np.float32)
    expected_paddings = np.ones((2, 3), np.float32)
    for b in range(2):
        for i in range(3):
            for j in range(4):
                t = 4 * i + j
                if t < 10 and paddings[b, t] == 0:
                    expected[b, i, 3 * j : 3 * j + 3] = features[b, t]
                    expected_paddings[b, i] = 0.0
    np.testing.assert_array_equal(stacked, expected)
    np.testing.assert_array_equal(out_paddings, expected_paddings)


def _numpy_random_projection_ids(features, paddings, projection, codebook):
    ids = np.zeros(features.shape[:2] + (projection.shape[1],), np.int64)
    for b in range(features.shape[0]):
        valid = features[b][paddings[b] == 0].astype(np.float64)
        mean, std = valid.mean(0), np.sqrt(valid.var(0) + 1e-5)
        for t in range(features.shape[1]):
            x = (features[b, t] - mean) / std
            for g in range(projection.shape[1]):
                z = x @ projection[:, g]
                cosine = (
                    codebook[g] @ z / (np.linalg.norm(codebook[g], axis=-1) * np.linalg.norm(z))
                )
                ids[b, t, g] = cosine.argmax()
    return ids


def test_random_projection_quantizer_frozen_deterministic_and_nearest():
    module = quantizers.RandomProjectionQuantizer(codebook_size=64, code_dim=4, num_codebooks=2)
    features = jax.random.normal(jax.random.key(0), (2, 12, 6))
    paddings = jnp.zeros((2, 12)).at[1, 9:].set(1.0)
    init = jax.jit(module.init)
    variables = init(jax.random.key(1), features, paddings)
    assert set(variables) == {quantizers.FROZEN_COLLECTION}  # nothing for an optimiser
    again = init(jax.random.key(2), features, paddings)  # the init rng is ignored
    jax.tree.map(np.testing.assert_array_equal, variables, again)
    other = quantizers.RandomProjectionQuantizer(
        codebook_size=64, code_dim=4, num_codebooks=2, seed=1
    )
    other = jax.jit(other.init)(jax.random.key(1), features, paddings)
    assert not np.allclose(
        nn.unbox(other)["frozen"]["projection"], nn.unbox(variables)["frozen"]["projection"]
    )

    ids = np.asarray(jax.jit(module.apply)(variables, features, paddings))
    assert ids.shape == (2, 12, 2) and ids.min() >= 0 and ids.max() < 64
    frozen = nn.unbox(variables)["frozen"]
    np.testing.assert_allclose(np.linalg.norm(frozen["codebook"], axis=-1), 1.0, rtol=1e-5)
    expected = _numpy_random_projection_ids(
        np.asarray(features),
        np.asarray(paddings),
        np.asarray(frozen["projection"]),
        np.asarray(frozen["codebook"]),
    )
    valid = np.asarray(paddings) == 0
    np.testing.assert_array_equal(ids[valid], expected[valid])
