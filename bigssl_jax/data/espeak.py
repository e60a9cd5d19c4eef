"""Speech synthesis with eSpeak NG, loaded from the `espeakng-loader` wheel through ctypes.

The wheel ships `libespeak-ng.so` (1.52) and its voice data, so synthesis needs no system
package. A voice is an accent plus a variant (`"en-us+m3"`); rate, pitch, pitch range and word
gap are set per utterance, which together make a "speaker".

Two properties of the library decide how it must be driven for reproducible audio:

* its breath-noise generator (used by the `f*` variants) is seeded unpredictably, so
  `synthesize` calls `espeak_ng_SetRandSeed` before every utterance;
* a pitch-flutter phase carries over from one call to the next, so audio depends on what the
  process said before. Callers that need byte-identical output synthesise a fixed list of
  utterances in a fresh process (see `synthetic_corpus`).

The library is loaded once per process, on first use.
"""

import ctypes
import dataclasses

import numpy as np

# Accents that espeak-ng 1.52 accepts for English (`en` is British English; `en-gb` is rejected).
ACCENTS = (
    "en-us",
    "en",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-029",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-us-nyc",
)
# Voice variants that stay intelligible at every accent (whisper, croak and robot voices left out).
VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8",
    "f1", "f2", "f3", "f4", "f5",
    "Andy", "Annie", "Denis", "Gene", "Jacky", "Lee", "Michael", "Mr serious",
    "aunty", "boris", "david", "edward", "iven", "john", "max", "michel",
    "norbert", "paul", "robert", "steph", "travis", "zac",
    "klatt", "klatt2", "klatt3",
)  # fmt: skip

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE, _PARAM_WORDGAP = 1, 2, 3, 4, 7
_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class EspeakError(RuntimeError):
    """The library could not be loaded or refused a voice, parameter or text."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Voice:
    """How one synthetic speaker talks.

    Attributes:
      accent: one of `ACCENTS`.
      variant: one of `VARIANTS` (timbre: formants, breathiness, pitch contour).
      rate: speaking rate in words per minute (espeak's default is 175).
      pitch: base pitch, 0-100 (default 50).
      range: pitch range, 0-100 (0 is monotone, default 50).
      word_gap: extra pause between words, in units of 10 ms.
    """

    accent: str
    variant: str
    rate: int = 175
    pitch: int = 50
    range: int = 50
    word_gap: int = 0

    @property
    def name(self) -> str:
        """The espeak voice name, e.g. `en-us+m3`."""
        return f"{self.accent}+{self.variant}"


class _Engine:
    """The loaded library and its output buffer (one per process)."""

    def __init__(self):
        import espeakng_loader

        try:
            self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        except OSError as error:
            raise EspeakError(f"cannot load libespeak-ng: {error}") from error
        data_path = espeakng_loader.get_data_path().encode()
        self.sample_rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, 0)
        if self.sample_rate <= 0:
            raise EspeakError(f"espeak_Initialize failed with data at {data_path.decode()}")
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        self.chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # kept alive as long as the engine
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, num_samples, _events) -> int:
        if wav and num_samples > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0


_ENGINE: _Engine | None = None


def _engine() -> _Engine:
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Engine()
    return _ENGINE


def sample_rate() -> int:
    """The rate of the audio that `synthesize` returns (22050 Hz for espeak-ng 1.52)."""
    return _engine().sample_rate


def synthesize(text: str, voice: Voice, *, seed: int = 0) -> np.ndarray:
    """Speaks `text` with `voice`.

    Args:
      text: what to say (punctuation shapes the prosody and is not spoken).
      voice: accent, variant and prosody parameters.
      seed: seeds the breath-noise generator (set before this utterance).

    Returns:
      int16 audio [S] at `sample_rate()`.
    """
    engine = _engine()
    lib = engine.lib
    if lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
        raise EspeakError(f"espeak rejected voice '{voice.name}'")
    for param, value in (
        (_PARAM_RATE, voice.rate),
        (_PARAM_VOLUME, 100),
        (_PARAM_PITCH, voice.pitch),
        (_PARAM_RANGE, voice.range),
        (_PARAM_WORDGAP, voice.word_gap),
    ):
        if lib.espeak_SetParameter(param, int(value), 0) != 0:
            raise EspeakError(f"espeak rejected parameter {param}={value}")
    lib.espeak_ng_SetRandSeed(int(seed))
    engine.chunks = []
    data = text.encode("utf-8") + b"\0"
    if lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None) != 0:
        raise EspeakError(f"espeak failed to speak {text!r}")
    lib.espeak_Synchronize()
    if not engine.chunks:
        return np.zeros((0,), np.int16)
    return np.concatenate(engine.chunks).astype(np.int16)
