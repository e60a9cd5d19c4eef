"""Tests of the RNN-T prediction and joint networks against numpy and against each other."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigssl_jax import partitioning
from bigssl_jax.layers import rnnt_decoder

CONFIG = rnnt_decoder.RnntDecoderConfig(
    vocab_size=7, embed_dim=5, lstm_layers=2, lstm_dim=6, joint_dim=8, dropout_rate=0.5
)
B, T, U, D = 2, 3, 4, 4


def _init(config=CONFIG):
    decoder = rnnt_decoder.RnntDecoder(config)
    encodings = jax.random.normal(jax.random.key(1), (B, T, D))
    labels = jax.random.randint(jax.random.key(2), (B, U), 1, config.vocab_size)
    variables = decoder.init(jax.random.key(0), encodings, labels, train=False)
    return decoder, nn.unbox(variables), encodings, labels


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _numpy_logits(params, encodings, labels):
    """The decoder's formulas written out in numpy, one step at a time."""
    params = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    pred_params, joint = params["prediction_network"], params["joint_network"]
    tokens = np.concatenate([np.zeros((B, 1), np.int64), np.asarray(labels)], axis=1)
    x = pred_params["embedding"]["embedding"][tokens]  # [B, U+1, E]
    for i in range(CONFIG.lstm_layers):
        layer = pred_params[f"layers_{i}"]
        c = h = np.zeros((B, CONFIG.lstm_dim))
        outputs = []
        for u in range(U + 1):
            z = (
                np.einsum("bi,igh->bgh", x[:, u], layer["input_kernel"])
                + np.einsum("bi,igh->bgh", h, layer["recurrent_kernel"])
                + layer["bias"]
            )
            c = _sigmoid(z[:, 1]) * c + _sigmoid(z[:, 0]) * np.tanh(z[:, 2])
            h = _sigmoid(z[:, 3]) * np.tanh(c)
            outputs.append(h)
        x = np.stack(outputs, axis=1)
    e = np.asarray(encodings) @ joint["encoder"]["kernel"] + joint["encoder"]["bias"]
    p = x @ joint["prediction"]["kernel"]
    hidden = np.tanh(e[:, :, None, :] + p[:, None, :, :])
    return hidden @ joint["output"]["kernel"] + joint["output"]["bias"]


def test_logits_match_numpy():
    decoder, variables, encodings, labels = _init()
    logits = decoder.apply(variables, encodings, labels, train=False)
    assert logits.shape == (B, T, U + 1, CONFIG.vocab_size)
    assert logits.dtype == jnp.float32
    expected = _numpy_logits(variables["params"], encodings, labels)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_step_by_step_decoding_matches_full_sequence():
    decoder, variables, encodings, labels = _init()
    full = decoder.apply(variables, encodings, labels, train=False)  # [B, T, U+1, V]
    Decoder = rnnt_decoder.RnntDecoder
    carry = decoder.apply(variables, B, method=Decoder.initial_carry)
    projected = decoder.apply(variables, encodings, method=Decoder.project_encodings)
    tokens = jnp.concatenate([jnp.zeros((B, 1), jnp.int32), labels], axis=1)
    for u in range(U + 1):
        carry, prediction = decoder.apply(
            variables, carry, tokens[:, u], method=Decoder.predict_step
        )
        for t in range(T):
            logits = decoder.apply(
                variables, projected[:, t], prediction, method=Decoder.joint_logits
            )
            np.testing.assert_allclose(logits, full[:, t, u], rtol=1e-5, atol=1e-5)


def test_joint_step_matches_broadcast_joint():
    decoder, variables, encodings, _ = _init()
    predictions = jax.random.normal(jax.random.key(3), (B, U + 1, CONFIG.lstm_dim))
    joint = rnnt_decoder.JointNetwork(CONFIG)
    joint_vars = {"params": variables["params"]["joint_network"]}
    full = joint.apply(joint_vars, encodings, predictions)
    step = joint.apply(
        joint_vars, encodings[:, 1], predictions[:, 2], method=rnnt_decoder.JointNetwork.step
    )
    np.testing.assert_allclose(step, full[:, 1, 2], rtol=1e-6, atol=1e-6)


def test_params_have_known_logical_axes():
    decoder = rnnt_decoder.RnntDecoder(CONFIG)
    boxed = jax.eval_shape(
        lambda: decoder.init(
            jax.random.key(0), jnp.zeros((B, T, D)), jnp.zeros((B, U), jnp.int32), train=False
        )
    )
    known = {name for name, _ in partitioning.LOGICAL_AXIS_RULES}
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert len(leaves) == 3 * CONFIG.lstm_layers + 1 + 5
    for leaf in leaves:
        assert isinstance(leaf, nn.Partitioned)
        assert len(leaf.names) == leaf.value.ndim
        assert {name for name in leaf.names if name is not None} <= known


def test_dropout_only_in_training():
    decoder, variables, encodings, labels = _init()
    rngs = {"dropout": jax.random.key(4)}
    train = decoder.apply(variables, encodings, labels, train=True, rngs=rngs)
    evaluation = decoder.apply(variables, encodings, labels, train=False, rngs=rngs)
    assert not np.allclose(train, evaluation)
    np.testing.assert_allclose(evaluation, decoder.apply(variables, encodings, labels, train=False))


def test_bfloat16_compute_is_close_to_float32():
    config = rnnt_decoder.RnntDecoderConfig(
        vocab_size=7, embed_dim=5, lstm_dim=6, joint_dim=8, dropout_rate=0.0, dtype="bfloat16"
    )
    decoder, variables, encodings, labels = _init(config)
    logits = decoder.apply(variables, encodings, labels, train=False)
    assert logits.dtype == jnp.bfloat16
    expected = _numpy_logits(variables["params"], encodings, labels)
    np.testing.assert_allclose(logits.astype(jnp.float32), expected, rtol=0.05, atol=0.05)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="dtype"):
        rnnt_decoder.RnntDecoderConfig(dtype="float16")
    with pytest.raises(ValueError, match="vocab_size"):
        rnnt_decoder.RnntDecoderConfig(vocab_size=1)
