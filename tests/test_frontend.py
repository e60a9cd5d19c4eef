"""Tests of the log-mel front end and SpecAugment (bigssl_jax/layers/frontend.py)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigssl_jax.layers import frontend, quantizers

CONFIG = frontend.LogMelConfig()
# log(max(mel, floor)) of tf.signal vs ours: float32 FFT rounding of different FFT codes.
TF_ATOL = 2e-4


def _speech_like(num_samples: int, seed: int) -> np.ndarray:
    """[S] float32: tones + noise with a silent stretch (exercises the log floor)."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / CONFIG.sample_rate
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 2300 * t)
    x += 0.02 * rng.standard_normal(num_samples)
    x[num_samples // 3 : num_samples // 3 + 1200] = 0.0
    return x.astype(np.float32)


def _tf_log_mel(audio: np.ndarray, config: frontend.LogMelConfig) -> np.ndarray:
    """Independent reference: numpy pre-emphasis + tf.signal STFT and mel matrix."""
    import tensorflow as tf

    previous = np.concatenate([np.zeros_like(audio[:, :1]), audio[:, :-1]], axis=1)
    emphasised = audio - config.preemphasis * previous
    stft = tf.signal.stft(
        emphasised, config.frame_length, config.frame_step, config.fft_size, pad_end=False
    )
    weights = tf.signal.linear_to_mel_weight_matrix(
        config.num_mel_bins,
        config.fft_size // 2 + 1,
        config.sample_rate,
        config.lower_edge_hz,
        config.upper_edge_hz,
    )
    mel = np.asarray(tf.abs(stft)) @ np.asarray(weights, np.float64)
    return np.log(np.maximum(mel, config.log_floor))


# ------------------------------------------------------------------------------------------------
# log_mel
# ------------------------------------------------------------------------------------------------


def test_mel_weight_matrix_matches_tf_signal():
    import tensorflow as tf

    ours = frontend.mel_weight_matrix(CONFIG)
    ref = tf.signal.linear_to_mel_weight_matrix(80, 257, 16000, 125.0, 7600.0).numpy()
    assert ours.shape == (257, 80) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_log_mel_matches_tf_signal_and_zeroes_padded_frames():
    audio = np.stack([_speech_like(8000, 0), _speech_like(8000, 1)])
    paddings = np.zeros_like(audio)
    paddings[1, 5000:] = 1.0
    features, feature_paddings = jax.jit(frontend.log_mel, static_argnums=2)(
        audio, paddings, CONFIG
    )

    num_frames = frontend.num_frames(8000, CONFIG)
    valid1 = frontend.num_frames(5000, CONFIG)
    assert features.shape == (2, num_frames, 80) and features.dtype == jnp.float32
    expected_paddings = np.zeros((2, num_frames), np.float32)
    expected_paddings[1, valid1:] = 1.0
    np.testing.assert_array_equal(feature_paddings, expected_paddings)

    ref = _tf_log_mel(audio, CONFIG)
    np.testing.assert_allclose(features[0], ref[0], atol=TF_ATOL)
    np.testing.assert_allclose(features[1, :valid1], ref[1, :valid1], atol=TF_ATOL)
    np.testing.assert_array_equal(features[1, valid1:], 0.0)
    assert float(jnp.min(features[0])) == pytest.approx(np.log(CONFIG.log_floor))


def test_log_mel_without_preemphasis_matches_tf_signal():
    config = dataclasses.replace(CONFIG, preemphasis=0.0, num_mel_bins=40, fft_size=400)
    audio = _speech_like(3000, 2)[None]
    features, _ = frontend.log_mel(audio, np.zeros_like(audio), config)
    np.testing.assert_allclose(features, _tf_log_mel(audio, config), atol=TF_ATOL)


@pytest.mark.parametrize(
    "num_samples, expected", [(399, 0), (400, 1), (559, 1), (560, 2), (16000, 98)]
)
def test_num_frames(num_samples, expected):
    assert frontend.num_frames(num_samples, CONFIG) == expected


def test_padding_invariance():
    """More padding after an utterance leaves its valid frames and their paddings unchanged."""
    valid = 4321
    rng = np.random.default_rng(3)
    speech = _speech_like(valid, 4)
    outputs = []
    for total in (valid, 6000, 9999):
        # Garbage in the padded region must not leak into valid frames.
        audio = np.concatenate([speech, rng.standard_normal(total - valid).astype(np.float32)])
        paddings = (np.arange(total) >= valid).astype(np.float32)
        outputs.append(frontend.log_mel(audio[None], paddings[None], CONFIG))

    num_valid = frontend.num_frames(valid, CONFIG)
    base_features, base_paddings = outputs[0]
    assert base_features.shape[1] == num_valid and not np.any(base_paddings)
    for features, paddings in outputs[1:]:
        np.testing.assert_allclose(features[:, :num_valid], base_features, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(paddings[:, :num_valid], 0.0)
        np.testing.assert_array_equal(paddings[:, num_valid:], 1.0)
        np.testing.assert_array_equal(features[:, num_valid:], 0.0)


@pytest.mark.parametrize("normalize", [False, True])
def test_frontend_module_has_no_params_and_equals_functions(normalize):
    audio = _speech_like(2000, 5)[None]
    paddings = np.zeros_like(audio)
    config = dataclasses.replace(CONFIG, normalize=normalize)
    module = frontend.LogMelFrontend(config)
    variables = module.init(jax.random.key(0), audio, paddings)
    assert not jax.tree_util.tree_leaves(variables)
    got = module.apply(variables, audio, paddings)
    features, feature_paddings = frontend.log_mel(audio, paddings, config)
    if normalize:
        features = quantizers.normalize_over_time(
            features, feature_paddings, eps=frontend.NORMALIZE_EPSILON
        )
    np.testing.assert_array_equal(got[0], features)
    np.testing.assert_array_equal(got[1], feature_paddings)


def test_frontend_normalization_matches_numpy_over_valid_frames():
    rng = np.random.default_rng(0)
    t = np.arange(4000) / CONFIG.sample_rate
    audio = np.stack(
        [
            a * np.sin(2 * np.pi * f * t) + 0.02 * rng.standard_normal(t.size)
            for a, f in ((0.3, 440.0), (0.1, 1300.0), (0.5, 3100.0))
        ]
    ).astype(np.float32)  # no silence: no bin sits at the log floor
    lengths = [4000, 2600, 500]
    paddings = (np.arange(4000)[None, :] >= np.array(lengths)[:, None]).astype(np.float32)
    module = frontend.LogMelFrontend(CONFIG)
    got, feature_paddings = (np.asarray(x) for x in module.apply({}, audio, paddings))
    raw, _ = frontend.log_mel(audio, paddings, dataclasses.replace(CONFIG, normalize=False))
    for row in range(3):
        valid = feature_paddings[row] == 0.0
        x = np.asarray(raw[row], np.float64)[valid]
        want = (x - x.mean(0)) / np.sqrt(x.var(0) + frontend.NORMALIZE_EPSILON)
        np.testing.assert_allclose(got[row][valid], want, atol=1e-4)
        np.testing.assert_array_equal(got[row][~valid], 0.0)
    # A level change (a gain on the audio: a constant added to the log-mel) drops out.
    louder, _ = module.apply({}, 4.0 * audio, paddings)
    np.testing.assert_allclose(np.asarray(louder), got, atol=1e-3)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"fft_size": 256}, "fft_size"),
        ({"upper_edge_hz": 9000.0}, "upper_edge_hz"),
        ({"lower_edge_hz": 8000.0, "upper_edge_hz": 7000.0}, "lower_edge_hz"),
    ],
)
def test_config_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        frontend.LogMelConfig(**changes)


def test_too_short_audio_raises():
    with pytest.raises(ValueError, match="fewer than one frame"):
        frontend.log_mel(np.zeros((1, 100), np.float32), np.zeros((1, 100), np.float32), CONFIG)


# ------------------------------------------------------------------------------------------------
# SpecAugment
# ------------------------------------------------------------------------------------------------

SPEC = frontend.SpecAugmentConfig()


def _masked(features, paddings, rng, config=SPEC):
    out = jax.jit(frontend.spec_augment, static_argnums=3)(features, paddings, rng, config)
    return np.asarray(out) == config.mask_value


def _ones_batch(batch, time, valid_lengths, freq=80):
    features = np.ones((batch, time, freq), np.float32)
    paddings = (np.arange(time)[None, :] >= np.asarray(valid_lengths)[:, None]).astype(np.float32)
    return features, paddings


def test_spec_augment_masks_only_valid_frames():
    features, paddings = _ones_batch(16, 60, np.arange(16) * 4)
    for seed in range(5):
        masked = _masked(features, paddings, jax.random.key(seed))
        assert not np.any(masked & (paddings[..., None] > 0))
        assert np.any(masked)


def test_spec_augment_deterministic_is_identity_and_module_uses_specaug_stream():
    features, paddings = _ones_batch(4, 50, [50, 40, 30, 20])
    module = frontend.SpecAugment(SPEC)
    out = module.apply({}, features, paddings, deterministic=True)
    np.testing.assert_array_equal(out, features)

    def run(seed):
        rngs = {"specaug": jax.random.key(seed)}
        return module.apply({}, features, paddings, deterministic=False, rngs=rngs)

    np.testing.assert_array_equal(run(0), run(0))
    assert np.any(run(0) != features) and np.any(run(0) != run(1))


def test_spec_augment_same_rng_same_masks_and_per_utterance_masks():
    features, paddings = _ones_batch(8, 100, [100] * 8)
    first = _masked(features, paddings, jax.random.key(7))
    np.testing.assert_array_equal(first, _masked(features, paddings, jax.random.key(7)))
    assert np.any(first != _masked(features, paddings, jax.random.key(8)))
    # Identical utterances in one batch get different masks.
    assert len({row.tobytes() for row in first}) == 8


def _numpy_union_fraction(rng, num_masks, max_width, extent, draws):
    """Independent Monte Carlo of the expected masked fraction of [0, extent)."""
    covered = np.zeros((draws, extent), bool)
    for _ in range(num_masks):
        width = rng.integers(0, max_width + 1, size=draws)
        start = rng.integers(0, extent - width + 1)
        pos = np.arange(extent)
        covered |= (pos >= start[:, None]) & (pos < (start + width)[:, None])
    return covered.mean()


def test_spec_augment_mask_statistics():
    """Mask sizes obey the limits; masked fractions match the sampling distribution."""
    batch, time, valid = 512, 220, 200
    features, paddings = _ones_batch(batch, time, [valid] * batch)
    freq_only = dataclasses.replace(SPEC, num_time_masks=0)
    time_only = dataclasses.replace(SPEC, num_freq_masks=0)
    freq_masked = _masked(features, paddings, jax.random.key(0), freq_only)[:, 0, :]  # [B, F]
    time_masked = _masked(features, paddings, jax.random.key(1), time_only)[:, :, 0]  # [B, T]

    max_time_width = int(SPEC.max_time_mask_ratio * valid)  # 10 frames
    assert freq_masked.sum(1).max() <= SPEC.num_freq_masks * SPEC.max_freq_mask_bins
    assert time_masked.sum(1).max() <= SPEC.num_time_masks * max_time_width

    rng = np.random.default_rng(0)
    want_freq = _numpy_union_fraction(rng, 2, SPEC.max_freq_mask_bins, 80, 5000)
    want_time = _numpy_union_fraction(rng, 10, max_time_width, valid, 5000)
    assert freq_masked.mean() == pytest.approx(want_freq, abs=0.02)
    assert time_masked[:, :valid].mean() == pytest.approx(want_time, abs=0.01)

    # One mask: a single run of width uniform in {0, ..., w_max}.
    single = dataclasses.replace(SPEC, num_freq_masks=0, num_time_masks=1)
    widths = _masked(features, paddings, jax.random.key(2), single)[:, :, 0].sum(1)
    assert widths.min() == 0 and widths.max() == max_time_width
    assert widths.mean() == pytest.approx(max_time_width / 2, abs=0.5)


def test_spec_augment_time_masks_scale_with_valid_length():
    lengths = np.array([40, 400] * 64)
    features, paddings = _ones_batch(len(lengths), 400, lengths, freq=4)
    single = dataclasses.replace(SPEC, num_freq_masks=0, num_time_masks=1)
    widths = _masked(features, paddings, jax.random.key(3), single)[:, :, 0].sum(1)
    assert widths[lengths == 40].max() <= 2
    assert widths[lengths == 400].max() <= 20 and widths[lengths == 400].mean() > 5
