"""Optimizers: schedules against their closed forms, Adam / Adafactor / EMA against numpy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigssl_jax import optimizers
from bigssl_jax.optimizers import OptimizerConfig


def test_transformer_schedule_matches_the_closed_form():
    peak, warmup = 2e-3, 25_000
    schedule = optimizers.transformer_schedule(peak, warmup)
    for s in (0, 1, 999, 24_998, 24_999, 25_000, 100_000, 399_999):
        expected = peak * min((s + 1) / warmup, math.sqrt(warmup / (s + 1)))
        assert float(schedule(s)) == pytest.approx(expected, rel=1e-6)
    assert float(schedule(warmup - 1)) == pytest.approx(peak, rel=1e-6)  # the maximum


def test_constant_and_cosine_decays():
    constant = optimizers.make_schedule(
        OptimizerConfig(peak_lr=1.0, warmup_steps=10, decay="constant")
    )
    assert [float(constant(s)) for s in (4, 9, 50)] == pytest.approx([0.5, 1.0, 1.0])
    cosine = optimizers.make_schedule(
        OptimizerConfig(peak_lr=1.0, warmup_steps=10, decay="cosine", decay_steps=110)
    )
    assert float(cosine(9)) == pytest.approx(1.0)
    assert float(cosine(59)) == pytest.approx(0.5 * (1 + math.cos(math.pi * 50 / 101)), rel=1e-5)
    assert float(cosine(200)) == pytest.approx(0.0, abs=1e-7)


def test_config_rejects_unknown_names():
    with pytest.raises(ValueError, match="name"):
        OptimizerConfig(name="lamb")
    with pytest.raises(ValueError, match="decay"):
        OptimizerConfig(decay="linear")


def _params():
    rng = np.random.default_rng(0)
    return {
        "w": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32),
        "b": jnp.asarray(rng.standard_normal(3), jnp.float32),
    }


def _grads(step):
    rng = np.random.default_rng(100 + step)
    return {
        "w": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32),
        "b": jnp.asarray(rng.standard_normal(3), jnp.float32),
    }


def _run(config, steps):
    tx = optimizers.make_optimizer(config)
    params = _params()
    state = tx.init(params)
    for step in range(steps):
        updates, state = tx.update(_grads(step), state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    return params, state


def test_adam_with_clipping_matches_numpy():
    config = OptimizerConfig(peak_lr=0.1, warmup_steps=2, clip_norm=1.0, b2=0.98, eps=1e-9)
    params, _ = _run(config, 3)
    expected = {k: np.asarray(v, np.float64) for k, v in _params().items()}
    m = {k: np.zeros_like(v) for k, v in expected.items()}
    v = {k: np.zeros_like(x) for k, x in expected.items()}
    for step in range(3):
        grads = {k: np.asarray(g, np.float64) for k, g in _grads(step).items()}
        norm = math.sqrt(sum(np.sum(g**2) for g in grads.values()))
        lr = 0.1 * min((step + 1) / 2, math.sqrt(2 / (step + 1)))
        for k, g in grads.items():
            g = g * min(1.0, 1.0 / norm)
            m[k] = 0.9 * m[k] + 0.1 * g
            v[k] = 0.98 * v[k] + 0.02 * g**2
            m_hat, v_hat = m[k] / (1 - 0.9 ** (step + 1)), v[k] / (1 - 0.98 ** (step + 1))
            expected[k] -= lr * m_hat / (np.sqrt(v_hat) + 1e-9)
    for k in expected:
        np.testing.assert_allclose(params[k], expected[k], rtol=1e-5, atol=1e-6)


def test_adafactor_matches_numpy():
    config = OptimizerConfig(
        name="adafactor",
        peak_lr=0.1,
        warmup_steps=1,
        clip_norm=None,
        b1=0.9,
        b2=0.98,
        eps=1e-30,
        decay="constant",
    )
    params, _ = _run(config, 2)
    expected = {k: np.asarray(v, np.float64) for k, v in _params().items()}
    row, col = np.zeros(4), np.zeros(3)
    full, m = np.zeros(3), {k: np.zeros_like(v) for k, v in expected.items()}
    for step in range(2):
        g = {k: np.asarray(x, np.float64) for k, x in _grads(step).items()}
        row = 0.98 * row + 0.02 * np.mean(g["w"] ** 2 + 1e-30, axis=1)
        col = 0.98 * col + 0.02 * np.mean(g["w"] ** 2 + 1e-30, axis=0)
        full = 0.98 * full + 0.02 * (g["b"] ** 2 + 1e-30)
        u = {
            "w": g["w"] / np.sqrt(np.outer(row, col) / row.mean()),
            "b": g["b"] / np.sqrt(full),
        }
        for k in u:
            u[k] /= max(1.0, np.sqrt(np.mean(u[k] ** 2)))
            m[k] = 0.9 * m[k] + 0.1 * u[k]
            expected[k] -= 0.1 * m[k]
    for k in expected:
        np.testing.assert_allclose(params[k], expected[k], rtol=1e-5, atol=1e-6)


def test_ema_tracks_the_params():
    decay = 0.5
    config = OptimizerConfig(peak_lr=0.1, warmup_steps=1, ema_decay=decay, decay="constant")
    tx = optimizers.make_optimizer(config)
    params = _params()
    state = tx.init(params)
    expected = jax.tree.map(np.asarray, params)
    for step in range(3):
        updates, state = tx.update(_grads(step), state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
        expected = jax.tree.map(
            lambda e, p: decay * e + (1 - decay) * np.asarray(p), expected, params
        )
    ema = optimizers.ema_params(state)
    for k in expected:
        np.testing.assert_allclose(ema[k], expected[k], rtol=1e-6)
    with pytest.raises(ValueError, match="no EMA"):
        optimizers.ema_params(optimizers.make_optimizer(OptimizerConfig()).init(params))


def test_encoder_has_its_own_schedule_and_can_be_frozen():
    config = OptimizerConfig(
        name="sgd",
        peak_lr=1e-3,
        warmup_steps=4,
        clip_norm=None,
        encoder_peak_lr=3e-4,
        encoder_warmup_steps=2,
        freeze_encoder_steps=1,
    )
    tx = optimizers.make_optimizer(config)
    params = {"encoder": {"w": jnp.ones((2, 3))}, "decoder": {"b": jnp.ones(3)}}
    grads = jax.tree.map(jnp.ones_like, params)
    state = tx.init(params)
    for step in range(3):
        updates, state = tx.update(grads, state, params)
        head_lr = 1e-3 * min((step + 1) / 4, np.sqrt(4 / (step + 1)))
        encoder_lr = 0.0 if step < 1 else 3e-4 * min((step + 1) / 2, np.sqrt(2 / (step + 1)))
        np.testing.assert_allclose(updates["decoder"]["b"], -head_lr, rtol=1e-6)
        np.testing.assert_allclose(updates["encoder"]["w"], -encoder_lr, rtol=1e-6)
