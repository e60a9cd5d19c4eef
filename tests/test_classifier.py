"""The utterance classifier: per-layer outputs, head, loss, frozen encoder, scoring."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigssl_jax.layers import frontend
from bigssl_jax.models import base, best_rq, classifier
from bigssl_jax.models import encoder as encoder_lib

ENCODER = encoder_lib.EncoderConfig(
    model_dim=16, num_layers=2, num_heads=2, subsampling_channels=4, use_relative_position=True
)
SAMPLES = 4000  # 0.25 s


def _batch(num_classes: int = 3):
    rng = np.random.default_rng(0)
    t = np.arange(SAMPLES) / 16000
    labels = np.array([0, 1, 2, 0]) % num_classes
    audio = np.stack([0.3 * np.sin(2 * np.pi * (200 + 300 * y) * t) for y in labels])
    audio = (audio + 0.01 * rng.standard_normal(audio.shape)).astype(np.float32)
    paddings = np.zeros_like(audio)
    paddings[1, 3000:] = 1.0
    audio[1, 3000:] = 0.0
    return {
        "audio": audio,
        "audio_paddings": paddings,
        "weights": np.array([1.0, 1.0, 1.0, 0.0], np.float32),
        "targets": labels[:, None].astype(np.int32),
        "target_paddings": np.zeros((4, 1), np.float32),
        "id": np.array([b"a", b"b", b"c", b""]),
    }


@pytest.mark.parametrize("scan", [True, False])
def test_layer_outputs_end_with_the_encoder_output(scan):
    config = encoder_lib.EncoderConfig(
        model_dim=16, num_layers=3, num_heads=2, subsampling_channels=4, scan_layers=scan,
        stacking_layer=2,
    )  # fmt: skip
    features = jax.random.normal(jax.random.key(1), (2, 40, 80))
    paddings = jnp.zeros((2, 40)).at[1, 30:].set(1.0)
    encoder = encoder_lib.ConformerEncoder(config)
    variables = jax.jit(lambda key: nn.unbox(encoder.init(key, features, paddings, train=False)))(
        jax.random.key(0)
    )
    expected, expected_paddings = jax.jit(
        lambda v: encoder.apply(v, features, paddings, train=False)
    )(variables)
    outputs, truncated = jax.jit(
        lambda p: [
            classifier.layer_outputs(config, p, features, paddings, num_layers=n) for n in (None, 1)
        ]
    )(variables["params"])
    assert [x.shape for x, _ in outputs] == [(2, 10, 16)] * 3 + [(2, 5, 16)]
    np.testing.assert_allclose(outputs[-1][0], expected, atol=1e-5)
    np.testing.assert_array_equal(outputs[-1][1], expected_paddings)
    np.testing.assert_allclose(truncated[1][0], outputs[1][0], atol=1e-6)
    assert len(truncated) == 2


def test_mean_pool_averages_valid_frames_only():
    x = jnp.arange(12, dtype=jnp.float32).reshape(1, 4, 3)
    paddings = jnp.array([[0.0, 0.0, 1.0, 1.0]])
    np.testing.assert_allclose(classifier.mean_pool(x, paddings), [[1.5, 2.5, 3.5]])


def test_weighted_head_is_the_softmax_mix_then_a_dense_layer():
    head = classifier.ClassifierHead(num_classes=3)
    pooled = jax.random.normal(jax.random.key(0), (2, 4, 5))
    params = head.init(jax.random.key(1), pooled)["params"]
    params = {**params, "layer_logits": jnp.array([0.5, -1.0, 2.0, 0.0])}
    w = np.exp(params["layer_logits"]) / np.exp(params["layer_logits"]).sum()
    z = np.einsum("l,bld->bd", w, pooled)
    expected = z @ params["output"]["kernel"] + params["output"]["bias"]
    np.testing.assert_allclose(head.apply({"params": params}, pooled), expected, rtol=1e-5)


def test_encoder_params_have_the_pretraining_tree():
    batch = _batch()
    model = classifier.ClassifierTrainModel(encoder=ENCODER, num_classes=3)
    assert isinstance(model, base.TrainModel) and isinstance(model, base.ScoredModel)
    ours = jax.eval_shape(lambda k: nn.unbox(model.init_variables(k, batch)), jax.random.key(0))
    ours = ours["params"]
    pretrain = best_rq.BestRqTrainModel(
        encoder=ENCODER, objective=best_rq.BestRqConfig(codebook_size=16)
    )
    theirs = jax.eval_shape(
        lambda k: nn.unbox(pretrain.init_variables(k, batch)), jax.random.key(0)
    )["params"]
    shapes = jax.tree.map(lambda x: x.shape, ours["encoder"])
    assert shapes == jax.tree.map(lambda x: x.shape, theirs["encoder"])
    assert sorted(ours) == ["encoder", "head"]


@pytest.mark.parametrize("freeze", [True, False])
def test_loss_is_weighted_cross_entropy_and_freezing_zeroes_encoder_grads(freeze):
    batch = _batch()
    model = classifier.ClassifierTrainModel(encoder=ENCODER, num_classes=3, freeze_encoder=freeze)
    variables = jax.jit(lambda k: nn.unbox(model.init_variables(k, batch)))(jax.random.key(0))

    def loss(params):
        return model.loss(
            {**variables, "params": params}, batch, jax.random.key(2), step=0, train=True
        )

    (value, metrics), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    logits = np.asarray(jax.jit(lambda v: model.logits(v, batch))(variables))
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -log_probs[np.arange(4), batch["targets"][:, 0]]
    if freeze:  # a frozen encoder runs without dropout: train and eval logits agree.
        np.testing.assert_allclose(value, ce[:3].mean(), rtol=1e-5)
    assert float(metrics["loss_weight"]) == 3.0
    encoder_norm = optax.global_norm(grads["encoder"])
    assert (float(encoder_norm) == 0.0) == freeze
    assert float(optax.global_norm(grads["head"])) > 0.0


def test_probe_learns_separable_tones_and_score_reports_it(tmp_path):
    batch = _batch(num_classes=2)
    model = classifier.ClassifierTrainModel(
        encoder=ENCODER, num_classes=2, layer=-1, statistics_batches=0
    )
    params = jax.jit(lambda k: nn.unbox(model.init_variables(k, batch)))(jax.random.key(0))
    assert sorted(params) == ["params"]  # no whitening collection
    params = params["params"]
    tx = optax.adam(0.05)

    @jax.jit
    def step(params, state):
        grads = jax.grad(
            lambda p: model.loss({"params": p}, batch, jax.random.key(0), step=0, train=True)[0]
        )(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for _ in range(40):
        params, state = step(params, state)
    report = model.score({"params": params}, [batch])
    assert report.metrics == {"accuracy": 1.0, "num_utterances": 3.0}
    np.testing.assert_array_equal(report.confusion, [[2, 0], [0, 1]])
    assert report.ids == ("a", "b", "c")
    report = classifier.ClassificationReport(**{**vars(report), "label_names": ("lo", "hi")})
    report.write(tmp_path)
    written = json.loads((tmp_path / "classification.json").read_text())
    assert written["confusion"] == [[2, 0], [0, 1]] and written["label_names"] == ["lo", "hi"]
    assert (tmp_path / "confusion.md").read_text().splitlines()[2:] == [
        "| lo | 2 | 0 |",
        "| hi | 0 | 1 |",
    ]
    assert (tmp_path / "predictions.tsv").read_text().splitlines()[1:] == [
        "a\tlo\tlo",
        "b\thi\thi",
        "c\tlo\tlo",
    ]


def test_pca_whitening_gives_identity_covariance_on_one_direction_dominated_data():
    rng = np.random.default_rng(0)
    direction = rng.standard_normal(6)
    x = 30.0 * rng.standard_normal((400, 1)) * direction + rng.standard_normal((400, 6)) + 5.0
    mean, projection = classifier.pca_whitening(x, ridge=0.0)
    z = (x - mean) @ projection
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(np.cov(z.T, bias=True), np.eye(6), atol=1e-9)


def test_fitted_whitening_feeds_the_head_per_layer():
    batch = {k: v for k, v in _batch().items() if k != "id"}
    model = classifier.ClassifierTrainModel(encoder=ENCODER, num_classes=3)
    assert isinstance(model, base.StatisticsModel)
    variables = jax.jit(lambda k: nn.unbox(model.init_variables(k, batch)))(jax.random.key(0))
    stats = variables[classifier.STATISTICS]
    assert stats["mean"].shape == (3, 16) and stats["projection"].shape == (3, 16, 16)
    pooled = np.asarray(jax.jit(model.statistics_features)(variables, batch))
    assert pooled.shape == (4, 3, 16)
    raw_model = classifier.ClassifierTrainModel(
        encoder=ENCODER, num_classes=3, statistics_batches=0
    )
    raw = {"params": variables["params"]}
    # Before the fit the statistics are the identity map: the same logits as no whitening.
    np.testing.assert_allclose(
        jax.jit(model.logits)(variables, batch), jax.jit(raw_model.logits)(raw, batch), atol=1e-5
    )
    rng = np.random.default_rng(1)
    features = rng.standard_normal((50, 3, 16)).astype(np.float32) * np.arange(1, 17)
    fitted = model.fit_statistics(features)[classifier.STATISTICS]
    for layer in range(3):
        mean, projection = classifier.pca_whitening(features[:, layer])
        np.testing.assert_allclose(fitted["mean"][layer], mean, rtol=1e-6)
        np.testing.assert_allclose(fitted["projection"][layer], projection, rtol=1e-5)
    # The head reads (e_l - mean_l) @ projection_l, mixed by the softmax layer weights.
    variables = {**variables, classifier.STATISTICS: fitted}
    whitened = np.einsum("bld,lde->ble", pooled - fitted["mean"], fitted["projection"])
    head = variables["params"]["head"]
    mix = np.exp(head["layer_logits"]) / np.exp(head["layer_logits"]).sum()
    z = np.einsum("l,bld->bd", mix, whitened)
    expected = z @ head["output"]["kernel"] + head["output"]["bias"]
    np.testing.assert_allclose(
        jax.jit(model.logits)(variables, batch), expected, rtol=1e-4, atol=1e-4
    )


def test_restored_classifier_has_its_fitted_whitening(tmp_path):
    from bigssl_jax import checkpointing, inference

    model = classifier.ClassifierTrainModel(encoder=ENCODER, num_classes=3)
    batch = inference.example_batch()
    variables = jax.jit(lambda k: nn.unbox(model.init_variables(k, batch)))(jax.random.key(0))
    features = np.random.default_rng(2).standard_normal((40, 3, 16)).astype(np.float32)
    fitted = model.fit_statistics(features)
    state = {"params": variables["params"], "model_state": fitted}
    saver = checkpointing.Checkpointer(tmp_path, async_save=False)
    saver.save(3, state, {"step": 3})
    saver.close()
    restored = inference.restore_variables(model, checkpointing.checkpoint_dir(tmp_path) / "3")
    assert sorted(restored) == ["feature_stats", "params"]
    for name in ("mean", "projection"):
        np.testing.assert_array_equal(
            restored[classifier.STATISTICS][name], fitted[classifier.STATISTICS][name]
        )


def test_confusion_matrix_counts_pairs():
    counts = classifier.confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 2, 1, 2]), 3)
    np.testing.assert_array_equal(counts, [[1, 0, 0], [0, 1, 1], [0, 0, 1]])


def test_bad_layer_is_rejected():
    with pytest.raises(ValueError, match="not one of the 3 layers"):
        classifier.ClassifierTrainModel(encoder=ENCODER, num_classes=3, layer=3)
    with pytest.raises(ValueError, match="'weighted' or an int"):
        classifier.ClassifierTrainModel(encoder=ENCODER, num_classes=3, layer="mean")
    with pytest.raises(ValueError, match="statistics_batches must be >= 0"):
        classifier.ClassifierTrainModel(encoder=ENCODER, num_classes=3, statistics_batches=-1)


def test_log_mel_front_end_has_no_params():
    audio = jnp.zeros((1, SAMPLES))
    variables = frontend.LogMelFrontend(frontend.LogMelConfig()).init(
        jax.random.key(0), audio, audio
    )
    assert not variables  # so the classifier's 'params' are only 'encoder' and 'head'
