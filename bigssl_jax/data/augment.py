"""Seeded waveform augmentation for the synthetic corpus (numpy, scipy and soxr only).

Each function is deterministic given its inputs (randomness comes in as a
`numpy.random.Generator`). `augment` chains them in a fixed order and returns a record of what
it applied, which the corpus writes into its manifest:

    speed perturbation -> silence padding -> room reverb -> telephone band -> noise -> gain

All audio is float64 mono [S] in [-1, 1].
"""

import dataclasses
from collections.abc import Sequence

import numpy as np
import scipy.fft
import scipy.signal
import soxr

NOISE_TYPES = ("white", "pink", "brown", "hum", "babble")
_LN_1000 = np.log(1000.0)  # an RT60 decay is 60 dB = a factor of 1000 in amplitude


def resample(audio: np.ndarray, in_rate: float, out_rate: float) -> np.ndarray:
    """Band-limited resampling with soxr (deterministic, 'HQ' quality).

    Args:
      audio: [S] at `in_rate`.
      in_rate: input sample rate in Hz.
      out_rate: output sample rate in Hz.

    Returns:
      float64 [round(S * out_rate / in_rate)].
    """
    return soxr.resample(np.asarray(audio, np.float64), in_rate, out_rate, quality="HQ")


def speed_perturb(audio: np.ndarray, factor: float) -> np.ndarray:
    """Plays `audio` `factor` times faster (tempo and pitch), as Kaldi's speed perturbation.

    y = resample(x, from rate r * factor to rate r): the length becomes S / factor.
    """
    if factor == 1.0:
        return np.asarray(audio, np.float64)
    return resample(audio, 1000.0 * factor, 1000.0)


def pad_silence(audio: np.ndarray, start: int, end: int) -> np.ndarray:
    """Adds `start` zeros before and `end` zeros after `audio` [S]."""
    return np.pad(np.asarray(audio, np.float64), (start, end))


def room_impulse_response(
    rng: np.random.Generator, rt60: float, sample_rate: int, *, pre_delay: float = 0.005
) -> np.ndarray:
    """A synthetic room impulse response: a direct path then exponentially decaying noise.

    h[0] = 1;  h[n] = g * e[n] * exp(-ln(1000) * t_n / rt60) for t_n >= pre_delay, e ~ N(0, 1),
    with the tail gain g = sqrt(1 / sum_n exp(...)^2) so the reverberant energy matches the
    direct path's (direct-to-reverberant ratio about 0 dB).

    Args:
      rng: randomness for the tail.
      rt60: time for the tail to decay by 60 dB, in seconds.
      sample_rate: Hz.
      pre_delay: gap between direct path and tail, in seconds.

    Returns:
      float64 [round(rt60 * sample_rate)].
    """
    length = max(int(round(rt60 * sample_rate)), 2)
    t = np.arange(length) / sample_rate
    envelope = np.exp(-_LN_1000 * t / rt60) * (t >= pre_delay)
    tail = rng.standard_normal(length) * envelope
    tail *= np.sqrt(1.0 / max(np.sum(envelope**2), 1e-12))
    tail[0] = 1.0
    return tail


def reverberate(audio: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolves with `rir` [K], keeps the input's length [S] and RMS level."""
    wet = scipy.signal.fftconvolve(audio, rir)[: len(audio)]
    return wet * _rms(audio) / max(_rms(wet), 1e-12)


def telephone(
    audio: np.ndarray, sample_rate: int, *, low_hz: float = 300.0, high_hz: float = 3400.0
) -> np.ndarray:
    """Telephone channel: zero-phase Butterworth band-pass (order 4, run forward and back)."""
    sos = scipy.signal.butter(4, [low_hz, high_hz], btype="bandpass", fs=sample_rate, output="sos")
    return scipy.signal.sosfiltfilt(sos, audio)


def colored_noise(
    rng: np.random.Generator, colour: str, num_samples: int, sample_rate: int
) -> np.ndarray:
    """Stationary noise with unit RMS.

    white: flat spectrum; pink: power ~ 1/f; brown: power ~ 1/f^2 (both shaped in the FFT
    domain above 20 Hz); hum: mains (50 or 60 Hz) with 5 harmonics at amplitude 1/k plus white
    noise 30 dB down.

    Args:
      rng: randomness.
      colour: `white`, `pink`, `brown` or `hum`.
      num_samples: S.
      sample_rate: Hz.

    Returns:
      float64 [S].
    """
    if colour == "hum":
        t = np.arange(num_samples) / sample_rate
        mains = rng.choice([50.0, 60.0])
        phases = rng.uniform(0.0, 2 * np.pi, size=5)
        noise = sum(np.sin(2 * np.pi * k * mains * t + phases[k - 1]) / k for k in range(1, 6))
        noise = noise / _rms(noise) + 10 ** (-30 / 20) * rng.standard_normal(num_samples)
        return noise / _rms(noise)
    exponent = {"white": 0.0, "pink": 1.0, "brown": 2.0}.get(colour)
    if exponent is None:
        raise ValueError(f"unknown noise colour '{colour}'; expected one of {NOISE_TYPES[:4]}")
    if not exponent:
        noise = rng.standard_normal(num_samples)
        return noise / max(_rms(noise), 1e-12)
    length = scipy.fft.next_fast_len(num_samples, real=True)
    spectrum = np.fft.rfft(rng.standard_normal(length))
    freqs = np.fft.rfftfreq(length, 1.0 / sample_rate)
    spectrum *= np.maximum(freqs, 20.0) ** (-exponent / 2)
    spectrum[0] = 0.0
    noise = np.fft.irfft(spectrum, n=length)[:num_samples]
    return noise / max(_rms(noise), 1e-12)


def babble(rng: np.random.Generator, talkers: Sequence[np.ndarray], num_samples: int) -> np.ndarray:
    """Babble with unit RMS: the sum of talkers [S_k], each at unit RMS, looped, random offset."""
    mixture = np.zeros(num_samples)
    for talker in talkers:
        looped = np.resize(talker / max(_rms(talker), 1e-12), num_samples + len(talker))
        offset = int(rng.integers(len(talker)))
        mixture += looped[offset : offset + num_samples]
    return mixture / max(_rms(mixture), 1e-12)


def add_noise(
    audio: np.ndarray, noise: np.ndarray, snr_db: float, *, signal_power: float | None = None
) -> np.ndarray:
    """Mixes `noise` [S] into `audio` [S] at `snr_db`.

    y = x + n * sqrt(P_x / (P_n * 10^(snr_db / 10))),  P = mean square; P_x is `signal_power`
    when given (e.g. the power of the speech before silence padding), else mean(x^2).
    """
    power = np.mean(audio**2) if signal_power is None else signal_power
    scale = np.sqrt(power / (max(np.mean(noise**2), 1e-20) * 10 ** (snr_db / 10)))
    return audio + scale * noise


def set_level(audio: np.ndarray, level_dbfs: float, *, max_peak: float = 0.98) -> np.ndarray:
    """Scales to an RMS of `level_dbfs` (dB re full scale), then down if the peak exceeds
    `max_peak` (so int16 conversion never clips)."""
    scaled = audio * (10 ** (level_dbfs / 20) / max(_rms(audio), 1e-12))
    peak = np.max(np.abs(scaled)) if len(scaled) else 0.0
    return scaled * (max_peak / peak) if peak > max_peak else scaled


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    """10 log10(P_clean / P_(noisy - clean))."""
    return float(10 * np.log10(np.mean(clean**2) / np.mean((noisy - clean) ** 2)))


def _rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio)))) if len(audio) else 0.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """Which augmentations `augment` draws and with what ranges.

    Attributes:
      speed_prob: chance of speed perturbation, with a factor ~ U(speed_range).
      speed_range: (min, max) speed factor.
      pad_range: (min, max) seconds of silence added at each end.
      reverb_prob: chance of room reverb, with RT60 ~ U(rt60_range) seconds.
      rt60_range: (min, max) RT60 in seconds.
      telephone_prob: chance of the 300-3400 Hz telephone band.
      noise_prob: chance of additive noise of a type drawn uniformly from `noise_types`.
      noise_types: a subset of `NOISE_TYPES`.
      snr_db_range: (min, max) SNR in dB, against the power of the speech (padding excluded).
      level_range: (min, max) output RMS level in dBFS (the random gain).
    """

    speed_prob: float = 0.5
    speed_range: tuple[float, float] = (0.9, 1.1)
    pad_range: tuple[float, float] = (0.05, 0.4)
    reverb_prob: float = 0.3
    rt60_range: tuple[float, float] = (0.2, 0.8)
    telephone_prob: float = 0.1
    noise_prob: float = 0.7
    noise_types: tuple[str, ...] = NOISE_TYPES
    snr_db_range: tuple[float, float] = (5.0, 25.0)
    level_range: tuple[float, float] = (-32.0, -18.0)

    def clean(self) -> "AugmentConfig":
        """The same config with speed, reverb, telephone and noise switched off."""
        return dataclasses.replace(
            self, speed_prob=0.0, reverb_prob=0.0, telephone_prob=0.0, noise_prob=0.0
        )


def augment(
    audio: np.ndarray,
    sample_rate: int,
    rng: np.random.Generator,
    config: AugmentConfig,
    *,
    babble_talkers: Sequence[np.ndarray] = (),
) -> tuple[np.ndarray, dict]:
    """Applies the chain in the module docstring, each step with its configured chance.

    Args:
      audio: clean speech [S] at `sample_rate`.
      sample_rate: Hz.
      rng: the utterance's generator (every draw comes from it, in a fixed order).
      config: probabilities and ranges.
      babble_talkers: other clean utterances [S_k] to make babble from (babble is skipped in
        favour of pink noise when fewer than 2 are given).

    Returns:
      (audio [S'], record) where record holds `speed`, `pad_start`, `pad_end` (s), `reverb`
      (RT60 in s or None), `telephone` (bool), `noise` (a type or "none"), `snr_db` (or None),
      `level_dbfs`.
    """
    record = {}
    speed = rng.uniform(*config.speed_range) if rng.random() < config.speed_prob else 1.0
    audio = speed_perturb(audio, round(speed, 3))
    record["speed"] = round(speed, 3)
    pads = [int(round(rng.uniform(*config.pad_range) * sample_rate)) for _ in range(2)]
    audio = pad_silence(audio, *pads)
    record["pad_start"], record["pad_end"] = pads[0] / sample_rate, pads[1] / sample_rate
    record["reverb"] = None
    if rng.random() < config.reverb_prob:
        rt60 = round(rng.uniform(*config.rt60_range), 3)
        audio = reverberate(audio, room_impulse_response(rng, rt60, sample_rate))
        record["reverb"] = rt60
    record["telephone"] = bool(rng.random() < config.telephone_prob)
    if record["telephone"]:
        audio = telephone(audio, sample_rate)
    record["noise"], record["snr_db"] = "none", None
    if rng.random() < config.noise_prob:
        kind = config.noise_types[int(rng.integers(len(config.noise_types)))]
        if kind == "babble" and len(babble_talkers) < 2:
            kind = "pink"
        snr = round(rng.uniform(*config.snr_db_range), 2)
        if kind == "babble":
            picks = rng.choice(len(babble_talkers), size=min(4, len(babble_talkers)), replace=False)
            noise = babble(rng, [babble_talkers[i] for i in sorted(picks)], len(audio))
        else:
            noise = colored_noise(rng, kind, len(audio), sample_rate)
        speech = audio[pads[0] : len(audio) - pads[1]]
        audio = add_noise(audio, noise, snr, signal_power=float(np.mean(speech**2)))
        record["noise"], record["snr_db"] = kind, snr
    record["level_dbfs"] = round(rng.uniform(*config.level_range), 2)
    return set_level(audio, record["level_dbfs"]), record
