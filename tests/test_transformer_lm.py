"""The Transformer LM: its loss against numpy, causality, the incremental fusion path, training."""

import collections

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigssl_jax import partitioning, train_step
from bigssl_jax.decoding import ctc_search, lm_interface
from bigssl_jax.models import base, transformer_lm

CONFIG = transformer_lm.TransformerLmConfig(
    vocab_size=24,
    model_dim=32,
    num_layers=2,
    num_heads=4,
    mlp_dim=64,
    max_length=16,
    dropout_rate=0.0,
)


@pytest.fixture(scope="module")
def model_and_variables():
    model = transformer_lm.LmTrainModel(config=CONFIG)
    batch = {"targets": jnp.zeros((2, 8), jnp.int32)}
    variables = jax.jit(lambda rng: nn.unbox(model.init_variables(rng, batch)))(jax.random.key(0))
    return model, variables


@jax.jit
def _forward(variables, inputs):
    """Logits of the test model: variables, i32[B, T] -> f32[B, T, V]."""
    return transformer_lm.TransformerLm(CONFIG).apply(variables, inputs, train=False)


def _tokens(seed, shape):
    return np.random.default_rng(seed).integers(3, CONFIG.vocab_size, shape).astype(np.int32)


def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def test_next_token_loss_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 7)).astype(np.float32)
    targets = rng.integers(0, 7, (3, 5)).astype(np.int32)
    paddings = np.zeros((3, 5), np.float32)
    paddings[0, 3:] = paddings[1, 1:] = 1.0
    weights = np.array([1.0, 1.0, 0.0], np.float32)
    loss, count, accuracy = transformer_lm.next_token_loss(logits, targets, paddings, weights)

    valid = [(b, t) for b in range(3) for t in range(5) if weights[b] and not paddings[b, t]]
    log_probs = _log_softmax(logits.astype(np.float64))
    nll = [-log_probs[b, t, targets[b, t]] for b, t in valid]
    hits = [logits[b, t].argmax() == targets[b, t] for b, t in valid]
    assert float(count) == len(valid) == 4
    np.testing.assert_allclose(float(loss), np.mean(nll), rtol=1e-6)
    np.testing.assert_allclose(float(accuracy), np.mean(hits), rtol=1e-6)


def test_train_model_loss_is_next_token_cross_entropy(model_and_variables):
    model, variables = model_and_variables
    targets = _tokens(1, (2, 6))
    paddings = np.zeros((2, 6), np.float32)
    paddings[1, 4:] = 1.0
    batch = {"targets": targets, "target_paddings": paddings, "weights": np.ones(2, np.float32)}
    loss_fn = jax.jit(lambda v, b: model.loss(v, b, jax.random.key(1), step=0, train=False))
    loss, metrics = loss_fn(variables, batch)

    inputs = np.concatenate([np.zeros((2, 1), np.int32), targets[:, :-1]], axis=1)
    logits = np.asarray(_forward(variables, inputs), np.float64)
    log_probs = _log_softmax(logits)
    nll = [
        -log_probs[b, t, targets[b, t]] for b in range(2) for t in range(6) if not paddings[b, t]
    ]
    np.testing.assert_allclose(float(loss), np.mean(nll), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["perplexity"]), np.exp(np.mean(nll)), rtol=1e-5)
    assert float(metrics[base.LOSS_WEIGHT]) == len(nll) == 10
    assert np.all(log_probs[..., transformer_lm.PAD_ID] < -1e8)  # pad is never predicted


def test_outputs_do_not_depend_on_later_tokens(model_and_variables):
    model, variables = model_and_variables
    inputs = _tokens(2, (2, 10))
    changed = inputs.copy()
    changed[:, 6:] = _tokens(3, (2, 4))
    logits = _forward(variables, inputs)
    logits_changed = _forward(variables, changed)
    np.testing.assert_allclose(logits[:, :6], logits_changed[:, :6], atol=1e-5)
    assert not np.allclose(logits[:, 6:], logits_changed[:, 6:], atol=1e-3)


def test_incremental_fusion_equals_the_full_forward(model_and_variables):
    model, variables = model_and_variables
    lm = model.fusion_lm(variables)
    assert isinstance(lm, lm_interface.FusionLanguageModel) and hash(lm) == hash(lm)
    tokens = _tokens(4, (3, 9))
    full = jax.nn.log_softmax(_forward(variables, transformer_lm.shift_right(tokens)))
    update = jax.jit(lm.update)
    state = jax.jit(lm.init_state, static_argnums=0)(3)
    for t in range(tokens.shape[1]):
        assert jax.tree.leaves(state)[0].shape[0] == 3
        np.testing.assert_allclose(lm.next_log_probs(state), full[:, t], atol=2e-5)
        state = update(state, tokens[:, t])


def test_reordered_states_follow_their_histories(model_and_variables):
    model, variables = model_and_variables
    lm = model.fusion_lm(variables, max_length=8)  # a shorter cache, same params
    init_state, update = jax.jit(lm.init_state, static_argnums=0), jax.jit(lm.update)
    histories = _tokens(5, (3, 4))
    state = init_state(3)
    for t in range(4):
        state = update(state, histories[:, t])
    order = np.array([2, 0, 0])
    state = jax.tree.map(lambda s: s[order], state)
    state = update(state, np.array([5, 6, 7], np.int32))

    expected = np.concatenate([histories[order], [[5], [6], [7]]], axis=1)
    inputs = np.concatenate([np.zeros((3, 1), np.int32), expected], axis=1)
    reference = jax.nn.log_softmax(_forward(variables, inputs)[:, -1])
    np.testing.assert_allclose(lm.next_log_probs(state), reference, atol=2e-5)


def test_prefix_beam_search_accepts_the_fusion_lm(model_and_variables):
    model, variables = model_and_variables
    lm = model.fusion_lm(variables)
    logits = jax.random.normal(jax.random.key(2), (2, 6, CONFIG.vocab_size)) * 3.0
    paddings = jnp.zeros((2, 6))
    search = dict(beam_size=3, max_length=CONFIG.max_length - 2)
    plain = ctc_search.prefix_beam_search(logits, paddings, **search)
    weight_zero = ctc_search.prefix_beam_search(logits, paddings, lm=lm, lm_weight=0.0, **search)
    for got, want in zip(weight_zero, plain, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    fused = ctc_search.prefix_beam_search(logits, paddings, lm=lm, lm_weight=1.0, **search)
    assert np.all(np.isfinite(fused[2]))


def test_params_have_partitioning_rules():
    model = transformer_lm.LmTrainModel(config=CONFIG)
    batch = {"targets": jax.ShapeDtypeStruct((8, 8), jnp.int32)}
    with nn.logical_axis_rules(()):
        boxed = jax.eval_shape(model.init_variables, jax.random.key(0), batch)
    mesh = partitioning.make_mesh(partitioning.MeshConfig(data=2, fsdp=2, tensor=2))
    shardings = partitioning.logical_to_mesh_shardings(boxed, mesh, partitioning.LOGICAL_AXIS_RULES)
    spec = shardings["params"]["block_0"]["query"]["kernel"].spec
    assert tuple(spec) == ("fsdp", "tensor", None)


def test_training_drives_the_perplexity_down():
    sentences = [[3, 4, 5, 6, 1], [7, 8, 9, 1], [3, 4, 10, 11, 12, 1], [13, 14, 1]]
    targets = np.zeros((8, 8), np.int32)
    paddings = np.ones((8, 8), np.float32)
    for row in range(8):
        tokens = sentences[row % 4]
        targets[row, : len(tokens)] = tokens
        paddings[row, : len(tokens)] = 0.0
    batch = {"targets": targets, "target_paddings": paddings, "weights": np.ones(8, np.float32)}
    config = transformer_lm.TransformerLmConfig(
        vocab_size=16,
        model_dim=32,
        num_layers=1,
        num_heads=2,
        mlp_dim=64,
        max_length=8,
        dropout_rate=0.0,
    )
    model = transformer_lm.LmTrainModel(config=config)
    state = nn.unbox(train_step.init_state(model, optax.adam(3e-3), jax.random.key(0), batch))
    step = jax.jit(train_step.make_train_step(model))
    perplexities = []
    for _ in range(150):
        state, metrics = step(state, batch, jax.random.key(1))
        perplexities.append(float(metrics["perplexity"]))
    assert perplexities[0] > 8.0
    assert perplexities[-1] < 1.1 * _perplexity_floor(sentences)


def _perplexity_floor(sentences):
    """exp of the per-token entropy of the next token given its prefix, over `sentences`."""
    counts = collections.Counter()
    for tokens in sentences:
        for t in range(len(tokens)):
            counts[tuple(tokens[:t]), tokens[t]] += 1
    prefixes = collections.Counter()
    for (prefix, _), count in counts.items():
        prefixes[prefix] += count
    nll = -sum(c * np.log(c / prefixes[p]) for (p, _), c in counts.items())
    return float(np.exp(nll / sum(counts.values())))
