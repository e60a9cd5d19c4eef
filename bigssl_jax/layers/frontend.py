"""Audio front end: log-mel filterbank features and SpecAugment.

Both are pure functions of arrays (jit-able, batched, shapes static given the input shapes) with
thin parameter-free Flax wrappers:

* `log_mel(audio, paddings, config)`: 16 kHz waveform [B, S] -> log-mel features [B, T, F].
  Follows the `tf.signal` / lingvo conventions (frames without centring, periodic Hann window,
  zero-padded FFT, HTK mel scale with triangles linear in mel, DC bin excluded), so it matches
  `tf.signal.stft` + `tf.signal.linear_to_mel_weight_matrix` to float32 rounding.
* `kaldi_fbank(audio, paddings, config)`: the same shapes, Kaldi's `compute-fbank-feats`
  conventions instead (`LogMelConfig.style = 'kaldi'`): w2v-BERT 2.0's front end, matching
  `transformers`' `SeamlessM4TFeatureExtractor` (tested).
* `spec_augment(features, paddings, rng, config)`: frequency and time masking on valid frames,
  each utterance with its own masks.

Speech convention (praxis): paddings are float32 with 1.0 = padded, 0.0 = valid.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bigssl_jax.layers import quantizers

# ------------------------------------------------------------------------------------------------
# Log-mel features
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class LogMelConfig:
    """Log-mel filterbank settings.

    Attributes:
      style: 'tf' (`log_mel`: tf.signal / lingvo conventions, magnitude spectrum) or 'kaldi'
        (`kaldi_fbank`: Kaldi's fbank, power spectrum; w2v-BERT 2.0 binds lower_edge_hz = 20,
        upper_edge_hz = 8000, log_floor = 2^-23 with it).
      sample_rate: input sample rate in Hz (the prepared corpora are 16 kHz).
      num_mel_bins: F, the number of mel bands (80 in BigSSL / Conformer).
      frame_length_ms: analysis window length; 25 ms = 400 samples at 16 kHz.
      frame_step_ms: hop between frames; 10 ms = 160 samples (100 frames per second).
      fft_size: FFT length (>= the frame length); the frame is zero-padded at its end to it.
      lower_edge_hz: lower edge of the lowest mel band (125 Hz, the lingvo default; it skips
        the low-frequency rumble of far-field recordings).
      upper_edge_hz: upper edge of the highest mel band (7600 Hz, lingvo default; below the
        8 kHz Nyquist frequency where resampling filters roll off).
      preemphasis: coefficient a of the pre-emphasis filter y[n] = x[n] - a * x[n-1] (with
        x[-1] = 0); 0.0 disables it. 0.97 as in lingvo and Kaldi.
      log_floor: magnitudes are clamped to this floor before the log (log(1e-5) ~ -11.5 is the
        value of silence for audio scaled to [-1, 1]).
      normalize: `LogMelFrontend` standardises every utterance's features per mel band over
        its valid frames (see `LogMelFrontend`; the 'kaldi' style the way
        `SeamlessM4TFeatureExtractor` does), so recording level drops out and the
        SpecAugment / padding value 0.0 is the utterance mean rather than a loud bin; False
        feeds the raw log-mel (the `log_mel` function itself never normalises).
    """

    style: str = "tf"
    sample_rate: int = 16000
    num_mel_bins: int = 80
    frame_length_ms: float = 25.0
    frame_step_ms: float = 10.0
    fft_size: int = 512
    lower_edge_hz: float = 125.0
    upper_edge_hz: float = 7600.0
    preemphasis: float = 0.97
    log_floor: float = 1e-5
    normalize: bool = True

    def __post_init__(self):
        if self.style not in ("tf", "kaldi"):
            raise ValueError(f"style {self.style!r} is not 'tf' or 'kaldi'")
        if self.fft_size < self.frame_length:
            raise ValueError(
                f"fft_size {self.fft_size} is shorter than the frame ({self.frame_length} samples)"
            )
        if not 0.0 <= self.lower_edge_hz < self.upper_edge_hz <= self.sample_rate / 2:
            raise ValueError(
                f"need 0 <= lower_edge_hz ({self.lower_edge_hz}) < upper_edge_hz "
                f"({self.upper_edge_hz}) <= sample_rate / 2 ({self.sample_rate / 2})"
            )
        if self.frame_step < 1:
            raise ValueError(f"frame_step_ms {self.frame_step_ms} is under one sample")

    @property
    def frame_length(self) -> int:
        """L, the window length in samples."""
        return int(round(self.sample_rate * self.frame_length_ms / 1000.0))

    @property
    def frame_step(self) -> int:
        """H, the hop in samples."""
        return int(round(self.sample_rate * self.frame_step_ms / 1000.0))


def num_frames(num_samples: int, config: LogMelConfig) -> int:
    """T = 1 + floor((S - L) / H) frames for S samples (0 when S < L); no frame is centred."""
    if num_samples < config.frame_length:
        return 0
    return 1 + (num_samples - config.frame_length) // config.frame_step


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """HTK mel scale: m = 1127 ln(1 + f / 700) (= 2595 log10(1 + f / 700))."""
    return 1127.0 * np.log1p(hz / 700.0)


@functools.lru_cache(maxsize=16)
def mel_weight_matrix(config: LogMelConfig) -> np.ndarray:
    """The [K, F] matrix mapping K = fft_size // 2 + 1 linear bins to F mel bands.

    Band f is a triangle on the mel scale between mel edges e[f], e[f + 1], e[f + 2], with the
    F + 2 edges evenly spaced in mel from `lower_edge_hz` to `upper_edge_hz`:
      W[k, f] = max(0, min((m_k - e[f]) / (e[f+1] - e[f]), (e[f+2] - m_k) / (e[f+2] - e[f+1])))
    where m_k is the mel value of bin k's frequency k * sample_rate / fft_size. Bands have peak 1
    (no area normalisation) and the DC bin gets weight 0, as in
    `tf.signal.linear_to_mel_weight_matrix`.

    Args:
      config: the front-end settings (hashable; the result is cached per config).

    Returns:
      float32 numpy array [K, F].
    """
    num_bins = config.fft_size // 2 + 1
    bin_mel = _hz_to_mel(np.linspace(0.0, config.sample_rate / 2, num_bins))[1:]
    weights = _mel_triangles(bin_mel, config)
    return np.concatenate([np.zeros((1, config.num_mel_bins)), weights]).astype(np.float32)


def _mel_triangles(bin_mel: np.ndarray, config: LogMelConfig) -> np.ndarray:
    """[K', F] triangular weights of bins at mel values `bin_mel` [K'], the F + 2 edges evenly
    spaced in mel from `lower_edge_hz` to `upper_edge_hz` (shared by both filterbanks)."""
    edges = np.linspace(
        _hz_to_mel(np.float64(config.lower_edge_hz)),
        _hz_to_mel(np.float64(config.upper_edge_hz)),
        config.num_mel_bins + 2,
    )
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_mel[:, None] - lower) / (center - lower)
    falling = (upper - bin_mel[:, None]) / (upper - center)
    return np.maximum(0.0, np.minimum(rising, falling))


def _frame(x: jax.Array, length: int, step: int, count: int) -> jax.Array:
    """Overlapping frames x[..., t * step + i] -> [..., count, length], by reshapes and slices.

    The signal is cut into hops of `step` samples; frame t is the concatenation of the
    ceil(length / step) hops starting at hop t, truncated to `length`. This avoids a gather.
    """
    hops_per_frame = -(-length // step)
    needed = (count + hops_per_frame - 1) * step
    size = x.shape[-1]
    if needed > size:
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, needed - size)])
    hops = x[..., :needed].reshape(*x.shape[:-1], count + hops_per_frame - 1, step)
    frames = jnp.concatenate([hops[..., i : i + count, :] for i in range(hops_per_frame)], axis=-1)
    return frames[..., :length]


def log_mel(
    audio: jax.Array, paddings: jax.Array, config: LogMelConfig
) -> tuple[jax.Array, jax.Array]:
    """Log-mel filterbank features of a padded batch of waveforms.

    With L = frame_length, H = frame_step, w the periodic Hann window of length L and W the
    mel matrix of `mel_weight_matrix`:
      y[n]       = x[n] - preemphasis * x[n - 1]            (x[-1] = 0)
      X[t, k]    = sum_{i<L} w[i] y[t H + i] exp(-2 pi j i k / fft_size)
      out[t, f]  = log(max(sum_k |X[t, k]| W[k, f], log_floor))    (magnitude, not power)
    A frame is padded when any of its L samples is padded; padded frames' features are 0.
    Frame t only reads samples [t H, t H + L), so the features and paddings of the valid frames
    do not depend on how much padding follows (padding invariance). Matches `tf.signal.stft`
    (periodic Hann, fft_length = fft_size) followed by `tf.signal.linear_to_mel_weight_matrix`
    within 2e-4 absolute on the log features (float32 rounding; tested).

    Args:
      audio: [B, S] float32 waveform, nominally in [-1, 1].
      paddings: [B, S] float32, 1.0 at padded samples.
      config: the front-end settings.

    Returns:
      features: [B, T, F] float32 with T = `num_frames(S, config)`, F = num_mel_bins.
      feature_paddings: [B, T] float32, 1.0 at padded frames.
    """
    length, step = config.frame_length, config.frame_step
    count = num_frames(audio.shape[-1], config)
    if count == 0:
        raise ValueError(f"{audio.shape[-1]} samples are fewer than one frame ({length})")
    audio = audio.astype(jnp.float32)
    if config.preemphasis:
        previous = jnp.pad(audio[:, :-1], ((0, 0), (1, 0)))
        audio = audio - config.preemphasis * previous

    frames = _frame(audio, length, step, count)  # [B, T, L]
    window = 0.5 - 0.5 * jnp.cos(2.0 * jnp.pi * jnp.arange(length, dtype=jnp.float32) / length)
    spectrum = jnp.abs(jnp.fft.rfft(frames * window, n=config.fft_size))  # [B, T, K]
    mel = jnp.einsum(
        "btk,kf->btf",
        spectrum,
        jnp.asarray(mel_weight_matrix(config)),
        precision=jax.lax.Precision.HIGHEST,
    )
    features = jnp.log(jnp.maximum(mel, config.log_floor))

    feature_paddings = jnp.max(_frame(paddings.astype(jnp.float32), length, step, count), axis=-1)
    features = features * (1.0 - feature_paddings)[..., None]
    return features, feature_paddings


# ------------------------------------------------------------------------------------------------
# Kaldi-compatible fbank (w2v-BERT 2.0)
# ------------------------------------------------------------------------------------------------

# Kaldi reads 16-bit samples: a waveform in [-1, 1] is scaled to their range first.
KALDI_SCALE = 2.0**15
# SeamlessM4TFeatureExtractor's normalisation: (x - mean) / sqrt(unbiased variance + this).
KALDI_NORMALIZE_EPSILON = 1e-7


@functools.lru_cache(maxsize=16)
def kaldi_mel_matrix(config: LogMelConfig) -> np.ndarray:
    """Kaldi's [K, F] mel filterbank for K = fft_size // 2 + 1 bins (`MelBanks`).

    With the F + 2 edges e evenly spaced in mel (1127 ln(1 + f / 700)) from `lower_edge_hz`
    to `upper_edge_hz` and m_k the mel value of bin k's frequency k * sample_rate / fft_size:
      W[k, f] = max(0, min((m_k - e[f]) / (e[f+1] - e[f]), (e[f+2] - m_k) / (e[f+2] - e[f+1])))
    for k < fft_size / 2; the Nyquist bin gets weight 0 (Kaldi's banks stop before it).
    """
    num_bins = config.fft_size // 2
    bin_mel = _hz_to_mel(np.arange(num_bins) * config.sample_rate / config.fft_size)
    weights = _mel_triangles(bin_mel, config)
    return np.concatenate([weights, np.zeros((1, config.num_mel_bins))]).astype(np.float32)


def kaldi_fbank(
    audio: jax.Array, paddings: jax.Array, config: LogMelConfig
) -> tuple[jax.Array, jax.Array]:
    """Kaldi-compatible log-mel filterbank features of a padded batch of waveforms.

    Kaldi's `compute-fbank-feats` defaults (no dither, snip_edges) per frame of L samples of
    y = 2^15 x, with a = preemphasis, w the Povey window and W `kaldi_mel_matrix`:
      u[i]      = y[t H + i] - mean_{i'<L} y[t H + i']               (DC offset removed)
      p[i]      = u[i] - a u[max(i - 1, 0)]                            (per-frame pre-emphasis)
      w[i]      = (1/2 - 1/2 cos(2 pi i / (L - 1)))^0.85                (Povey window)
      E[t, k]   = |sum_{i<L} w[i] p[i] exp(-2 pi j i k / fft_size)|^2   (power, not magnitude)
      out[t, f] = log(max(sum_k E[t, k] W[k, f], log_floor))
    Frames, their paddings (a frame is padded when any of its samples is) and the padding
    invariance are `log_mel`'s.

    Args:
      audio: [B, S] float32 waveform, nominally in [-1, 1].
      paddings: [B, S] float32, 1.0 at padded samples.
      config: the front-end settings (style 'kaldi').

    Returns:
      features: [B, T, F] float32, 0 at padded frames; feature_paddings: [B, T] float32.
    """
    length, step = config.frame_length, config.frame_step
    count = num_frames(audio.shape[-1], config)
    if count == 0:
        raise ValueError(f"{audio.shape[-1]} samples are fewer than one frame ({length})")
    frames = _frame(audio.astype(jnp.float32) * KALDI_SCALE, length, step, count)  # [B, T, L]
    frames = frames - jnp.mean(frames, axis=-1, keepdims=True)
    previous = jnp.concatenate([frames[..., :1], frames[..., :-1]], axis=-1)
    frames = frames - config.preemphasis * previous
    ramp = jnp.arange(length, dtype=jnp.float32) / (length - 1)
    window = jnp.power(0.5 - 0.5 * jnp.cos(2.0 * jnp.pi * ramp), 0.85)
    power = jnp.square(jnp.abs(jnp.fft.rfft(frames * window, n=config.fft_size)))
    mel = jnp.einsum(
        "btk,kf->btf",
        power,
        jnp.asarray(kaldi_mel_matrix(config)),
        precision=jax.lax.Precision.HIGHEST,
    )
    features = jnp.log(jnp.maximum(mel, config.log_floor))
    feature_paddings = jnp.max(_frame(paddings.astype(jnp.float32), length, step, count), axis=-1)
    return features * (1.0 - feature_paddings)[..., None], feature_paddings


def kaldi_normalize(features: jax.Array, paddings: jax.Array) -> jax.Array:
    """`SeamlessM4TFeatureExtractor`'s per-utterance normalisation over the V valid frames:

      out[t, f] = (x[t, f] - mean_t x[:, f]) / sqrt(sum_t (x[t, f] - mean)^2 / (V - 1) + 1e-7)
    per mel band f (unbiased variance), 0 at padded frames. [B, T, F] -> [B, T, F].
    """
    valid = (1.0 - paddings)[..., None]
    count = jnp.sum(valid, axis=1, keepdims=True)
    mean = jnp.sum(features * valid, axis=1, keepdims=True) / jnp.maximum(count, 1.0)
    centred = (features - mean) * valid
    var = jnp.sum(jnp.square(centred), axis=1, keepdims=True) / jnp.maximum(count - 1.0, 1.0)
    return centred * jax.lax.rsqrt(var + KALDI_NORMALIZE_EPSILON)


# Added to each band's variance by the front end's normalisation: a band that barely varies
# (std well under 0.1 nats, e.g. digital silence at the log floor) stays near 0 instead of
# having its rounding noise blown up to unit variance.
NORMALIZE_EPSILON = 1e-2


class LogMelFrontend(nn.Module):
    """Parameter-free front end: `log_mel` (or `kaldi_fbank` for style 'kaldi'), then
    (config.normalize) per-utterance normalisation.

    ([B, S] audio, [B, S] paddings) -> ([B, T, F] features, [B, T] paddings). Normalisation
    is `quantizers.normalize_over_time` (each band standardised over the utterance's valid
    frames, epsilon `NORMALIZE_EPSILON`), or `kaldi_normalize` for style 'kaldi', with padded
    frames kept at 0 as `log_mel` leaves them.
    """

    config: LogMelConfig

    @nn.compact
    def __call__(self, audio: jax.Array, paddings: jax.Array) -> tuple[jax.Array, jax.Array]:
        if self.config.style == "kaldi":
            features, feature_paddings = kaldi_fbank(audio, paddings, self.config)
            if self.config.normalize:
                features = kaldi_normalize(features, feature_paddings)
            return features, feature_paddings
        features, feature_paddings = log_mel(audio, paddings, self.config)
        if self.config.normalize:
            valid = (1.0 - feature_paddings)[..., None]
            features = valid * quantizers.normalize_over_time(
                features, feature_paddings, eps=NORMALIZE_EPSILON
            )
        return features, feature_paddings


# ------------------------------------------------------------------------------------------------
# SpecAugment
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class SpecAugmentConfig:
    """SpecAugment masking settings (praxis / Conformer recipe defaults).

    Every utterance draws its own masks. A mask of width w ~ Uniform{0, ..., w_max} starts at
    s ~ Uniform{0, ..., N - w} and covers [s, s + w), so widths may be 0 and masks may overlap.

    Attributes:
      num_freq_masks: frequency masks per utterance (N = F bins, w_max = max_freq_mask_bins,
        capped at F).
      max_freq_mask_bins: largest frequency-mask width in bins (27 for 80 mel bins).
      num_time_masks: time masks per utterance (N = the utterance's valid length V,
        w_max = floor(max_time_mask_ratio * V); so each covers at most 5% of the utterance and
        ten of them at most half of it, adaptive SpecAugment's size rule).
      max_time_mask_ratio: largest time-mask width as a fraction of the valid length.
      mask_value: value written into masked bins (0.0; log-mel features of padded frames are 0
        too).
    """

    num_freq_masks: int = 2
    max_freq_mask_bins: int = 27
    num_time_masks: int = 10
    max_time_mask_ratio: float = 0.05
    mask_value: float = 0.0


def _span_masks(
    rng: jax.Array, num_masks: int, max_width: jax.Array, extent: jax.Array, size: int
) -> jax.Array:
    """Union of `num_masks` random spans per row: [B, size] bool, True = masked.

    Args:
      rng: PRNG key.
      num_masks: spans per row.
      max_width: [B] int32, the largest width of a row's spans.
      extent: [B] int32, spans of a row lie within [0, extent).
      size: the length of the mask axis.
    """
    width_key, start_key = jax.random.split(rng)
    batch = extent.shape[0]
    u_width = jax.random.uniform(width_key, (batch, num_masks))
    u_start = jax.random.uniform(start_key, (batch, num_masks))
    width = jnp.floor(u_width * (max_width[:, None] + 1)).astype(jnp.int32)
    start = jnp.floor(u_start * (extent[:, None] - width + 1)).astype(jnp.int32)
    positions = jnp.arange(size, dtype=jnp.int32)
    inside = (positions >= start[..., None]) & (positions < (start + width)[..., None])
    return jnp.any(inside, axis=1)


def spec_augment(
    features: jax.Array, paddings: jax.Array, rng: jax.Array, config: SpecAugmentConfig
) -> jax.Array:
    """Frequency and time masking of a padded batch (Park et al., 2019).

    With V_b the number of valid frames of utterance b (frames are valid from the start, as the
    batches are right-padded):
      freq_mask[b, f] = union of num_freq_masks spans in [0, F), widths <= max_freq_mask_bins
      time_mask[b, t] = union of num_time_masks spans in [0, V_b), widths <= ratio * V_b
      out[b, t, f] = mask_value if valid[b, t] and (freq_mask[b, f] or time_mask[b, t])
                     else features[b, t, f]
    Padded frames are returned unchanged.

    Args:
      features: [B, T, F] features.
      paddings: [B, T] float, 1.0 at padded frames.
      rng: a JAX PRNG key; the same key gives the same masks.
      config: masking settings.

    Returns:
      [B, T, F] masked features, same dtype as `features`.
    """
    _, time_size, freq_size = features.shape
    valid = paddings < 0.5
    valid_len = jnp.sum(valid, axis=1).astype(jnp.int32)
    batch = features.shape[0]
    freq_key, time_key = jax.random.split(rng)

    freq_width = jnp.full((batch,), min(config.max_freq_mask_bins, freq_size), jnp.int32)
    freq_mask = _span_masks(
        freq_key, config.num_freq_masks, freq_width, jnp.full((batch,), freq_size), freq_size
    )
    time_width = jnp.floor(config.max_time_mask_ratio * valid_len).astype(jnp.int32)
    time_mask = _span_masks(time_key, config.num_time_masks, time_width, valid_len, time_size)

    mask = (freq_mask[:, None, :] | time_mask[:, :, None]) & valid[:, :, None]
    return jnp.where(mask, jnp.asarray(config.mask_value, features.dtype), features)


class SpecAugment(nn.Module):
    """Flax wrapper of `spec_augment`; draws from the 'specaug' rng stream.

    [B, T, F] features and [B, T] paddings -> [B, T, F]; the identity when deterministic.
    """

    config: SpecAugmentConfig

    @nn.compact
    def __call__(
        self, features: jax.Array, paddings: jax.Array, *, deterministic: bool
    ) -> jax.Array:
        if deterministic:
            return features
        return spec_augment(features, paddings, self.make_rng("specaug"), self.config)
