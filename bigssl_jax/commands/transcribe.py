"""`bigssl transcribe`: print transcripts of audio files with a trained ASR model.

    bigssl transcribe --checkpoint=/runs/ctc a.wav b.flac c.mp3
    bigssl transcribe --checkpoint=/runs/rnnt --beam_size=8 --json clip.ogg
    bigssl transcribe --checkpoint=/runs/ctc --beam_size=8 --lm_checkpoint=/runs/lm clip.wav

Any format and sample rate libsndfile reads (plus raw PCM with `--sample_rate`); audio is
downmixed and resampled to 16 kHz (`bigssl_jax.data.audio_io`). Files are decoded in
batches of `--batch_size`, each padded to a multiple of one second so that few shapes are
compiled. Prints `path<TAB>transcript` per file (or one JSON object per line).
`--lm_checkpoint` / `--lm_weight` shallow-fuse a `bigssl train-lm` run into the beam search.

Exit codes: 0 done; 1 an unreadable audio file or a missing checkpoint (one line on stderr
naming it; nothing is transcribed).
"""

import json
import sys

import numpy as np
from absl import flags

from bigssl_jax.commands import common_flags
from bigssl_jax.data import audio_io, schema

TAKES_ARGUMENTS = True  # the audio files

_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Files decoded together.")
_SAMPLE_RATE = flags.DEFINE_integer("sample_rate", None, "Sample rate of raw PCM files.")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object per file.")


def read_all(paths, sample_rate: int | None) -> list[np.ndarray]:
    """Every file as 16 kHz int16 PCM.

    Raises:
      audio_io.AudioError: the first file that cannot be read, its path in the message.
    """
    waves = []
    for path in paths:
        try:
            waves.append(audio_io.load_audio(path, sample_rate=sample_rate))
        except audio_io.AudioError as error:
            raise audio_io.AudioError(error.reason, f"{path}: {error.detail}") from error
    return waves


def batch_audio(waves: list[np.ndarray]) -> dict[str, np.ndarray]:
    """int16 waves -> {'audio' f32[B, S], 'audio_paddings' f32[B, S]}, S a whole second."""
    second = schema.SAMPLE_RATE
    length = max(1, -(-max(len(w) for w in waves) // second)) * second
    audio = np.zeros((len(waves), length), np.float32)
    paddings = np.ones((len(waves), length), np.float32)
    for row, wave in enumerate(waves):
        audio[row, : len(wave)] = schema.pcm16_to_audio(wave)
        paddings[row, : len(wave)] = 0.0
    return {"audio": audio, "audio_paddings": paddings}


def transcribe(model, variables, waves, batch_size: int) -> list[str]:
    """Transcripts of int16 waves, in order."""
    import jax

    from bigssl_jax.evaluation import wer
    from bigssl_jax.models import asr

    decode = jax.jit(model.decode)
    vocabulary = asr.load_vocabulary(model.vocabulary)
    texts = []
    for start in range(0, len(waves), batch_size):
        batch = batch_audio(waves[start : start + batch_size])
        tokens, token_paddings, _ = decode(variables, batch["audio"], batch["audio_paddings"])
        texts += wer.detokenize(np.asarray(tokens), np.asarray(token_paddings), vocabulary)
    return texts


def main(argv) -> int:
    """Transcribes the audio files named on the command line."""
    paths = argv[1:]
    if not common_flags.CHECKPOINT.value or not paths:
        print("transcribe: usage: bigssl transcribe --checkpoint=RUN AUDIO...", file=sys.stderr)
        return 2
    try:
        waves = read_all(paths, _SAMPLE_RATE.value)
    except audio_io.AudioError as error:
        print(f"transcribe: cannot read {error.detail} ({error.reason})", file=sys.stderr)
        return 1
    from bigssl_jax import gin_utils, inference
    from bigssl_jax.models import asr

    try:
        loaded = gin_utils.load_model(
            common_flags.CHECKPOINT.value, overrides=common_flags.gin_overrides()
        )
        model = asr.with_beam_size(loaded.model, common_flags.BEAM_SIZE.value)
        if not isinstance(model, asr.AsrModel):
            raise ValueError(f"the model of {loaded.run_dir} does not transcribe (no decode)")
        lm_checkpoint = common_flags.LM_CHECKPOINT.value
        lm = gin_utils.load_fusion_lm(inference.resolve_lm_checkpoint(lm_checkpoint))
        model = inference.with_fusion_lm(model, lm, common_flags.LM_WEIGHT.value)
        texts = transcribe(model, loaded.variables, waves, _BATCH_SIZE.value)
    except (FileNotFoundError, ValueError) as error:
        print(f"transcribe: {error}", file=sys.stderr)
        return 1
    for path, text in zip(paths, texts, strict=True):
        print(json.dumps({"path": path, "text": text}) if _JSON.value else f"{path}\t{text}")
    return 0
