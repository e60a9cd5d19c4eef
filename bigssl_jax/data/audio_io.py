"""Reading audio files of any format and rate as 16 kHz mono int16 PCM.

`load_audio` decodes whatever libsndfile reads (WAV, FLAC, OGG/Vorbis, MP3, AIFF, ...),
plus headerless raw PCM when the sample rate is given, downmixes to mono, resamples
to `schema.SAMPLE_RATE` with libsoxr and quantises to int16. Every failure is an
`AudioError` whose `reason` is one of the short codes the prepare report counts. A file
cut short is `truncated`, whether its container's sizes (`audio_headers`) or its declared
frame count (FLAC STREAMINFO, MP3 Xing) promise more than it holds.

Quantisation uses the same scale as `schema.pcm16_to_audio` (x * 32768), so a
16 kHz 16-bit source goes through bit-exactly.
"""

import os
import pathlib

import numpy as np
import soundfile as sf
import soxr

from bigssl_jax.data import audio_headers, schema

RAW_EXTENSIONS = (".raw", ".pcm")
RAW_SUBTYPE = "PCM_16"


class AudioError(Exception):
    """A file that cannot be turned into usable audio.

    Attributes:
      reason: short code counted in reports, e.g. "unreadable", "truncated".
      detail: human-readable explanation.
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def audio_extensions() -> tuple[str, ...]:
    """Lower-case file extensions (with dot) that `load_audio` reads."""
    formats = {f".{name.lower()}" for name in sf.available_formats()} - {".raw"}
    return tuple(sorted(formats | {".ogg", ".opus", ".oga"} | set(RAW_EXTENSIONS)))


def is_raw(path: os.PathLike) -> bool:
    """Whether `path` names headerless PCM (by extension)."""
    return pathlib.Path(path).suffix.lower() in RAW_EXTENSIONS


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    """Float audio [S] in [-1, 1] -> int16 [S] = clip(round(x * 32768)) (see pcm16_to_audio)."""
    scaled = np.clip(np.round(np.asarray(audio, np.float64) * 32768.0), -32768, 32767)
    return scaled.astype(np.int16)


def resample(audio: np.ndarray, rate: int, target_rate: int = schema.SAMPLE_RATE) -> np.ndarray:
    """Resamples float audio [S] from `rate` to `target_rate` with libsoxr (high quality).

    Returns:
      float32 [round(S * target_rate / rate)] (libsoxr's length rule).
    """
    audio = np.asarray(audio, np.float32)
    if rate == target_rate or audio.shape[0] == 0:
        return audio
    return soxr.resample(audio, rate, target_rate, quality="HQ").astype(np.float32)


def _check_complete(path: pathlib.Path) -> None:
    """Raises AudioError('truncated') when the container declares more bytes than the file has
    (libsndfile shrinks a cut WAV / AIFF / AU ... to what is there; see `audio_headers`)."""
    end, size = audio_headers.declared_data_end(path), path.stat().st_size
    if end is not None and end > size:
        raise AudioError(
            "truncated", f"the container declares at least {end} bytes, the file holds {size}"
        )


def _decode(path: pathlib.Path, sample_rate: int | None) -> tuple[np.ndarray, int]:
    """Decodes `path` -> (float32 [S, C], rate), detecting truncated files."""
    raw = is_raw(path)
    if raw and not sample_rate:
        raise AudioError(
            "unknown_sample_rate",
            "headerless raw audio needs a sample rate (--sample_rate or manifest)",
        )
    kwargs = {}
    if raw:
        kwargs = dict(
            samplerate=sample_rate, channels=1, format="RAW", subtype=RAW_SUBTYPE, endian="LITTLE"
        )
    try:
        with sf.SoundFile(str(path), **kwargs) as handle:
            expected, rate = handle.frames, handle.samplerate
            audio = handle.read(dtype="float32", always_2d=True)
    except sf.LibsndfileError as error:
        reason = "truncated" if "lost sync" in str(error) else "unreadable"
        raise AudioError(reason, str(error).strip()) from error
    except (RuntimeError, ValueError, EOFError) as error:
        raise AudioError("unreadable", str(error).strip()) from error
    if audio.shape[0] < expected:
        raise AudioError(
            "truncated", f"header promises {expected} frames, file holds {audio.shape[0]}"
        )
    return audio, rate


def load_audio(path: os.PathLike, *, sample_rate: int | None = None) -> np.ndarray:
    """Reads one audio file as 16 kHz mono int16 PCM.

    Args:
      path: any file libsndfile reads, or `.raw`/`.pcm` 16-bit little-endian mono PCM.
      sample_rate: the rate of a raw file (ignored for files with a header).

    Returns:
      int16 [S] at `schema.SAMPLE_RATE`; stereo and multichannel audio is the
      channel mean, then resampled with libsoxr.

    Raises:
      AudioError: missing, empty, unreadable (incl. NaN samples) or truncated file, or
        no rate for raw audio.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise AudioError("missing_audio", f"no such file: {path}")
    if path.stat().st_size == 0:
        raise AudioError("empty_audio", "the file is empty (0 bytes)")
    if not is_raw(path):
        _check_complete(path)
    audio, rate = _decode(path, sample_rate)
    if not np.all(np.isfinite(audio)):
        raise AudioError("unreadable", "the file holds NaN or infinite samples")
    return to_pcm16(resample(audio.mean(axis=1), rate))


def pcm16_from_array(audio: np.ndarray, rate: int) -> np.ndarray:
    """Decoded audio [S] or [S, C] at `rate` -> int16 [S'] mono at 16 kHz.

    Integer audio is scaled by its full range (int16 by 1/32768), float audio is taken
    as [-1, 1]; 16 kHz mono int16 comes back unchanged.
    """
    audio = np.asarray(audio)
    if audio.ndim == 1 and audio.dtype == np.int16 and rate == schema.SAMPLE_RATE:
        return audio
    if np.issubdtype(audio.dtype, np.integer):
        audio = audio.astype(np.float64) / float(np.iinfo(audio.dtype).max + 1)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    return to_pcm16(resample(audio, rate))
