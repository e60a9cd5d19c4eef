"""Tests for `bigssl prepare`: audio decoding, source layouts, shards, reports, resume.

Run as a script, this file re-prepares a tree and stalls after its first shard (the
subprocess of the `kill -9` test):

    python tests/test_prepare.py TREE DATA_DIR NUM_SHARDS MARKER
"""

import dataclasses
import json
import pathlib
import shutil
import signal as posix_signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
from scipy import signal

from bigssl_jax import paths
from bigssl_jax.data import (
    audio_io,
    librispeech,
    manifests,
    prepare,
    registry,
    schema,
    sources,
    tfds_source,
)

REAL = pathlib.Path(__file__).parent / "testdata" / "real"
REAL_FLAC = REAL / "sense_and_sensibility_01_austen_64kb-0880.flac"
REAL_WAV = REAL / "sense_and_sensibility_01_austen_64kb-0930.wav"
REAL_RAW = REAL / "goforward.raw"


def _tone(rate: int, seconds: float, freq: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    """A sine [S] at `rate`."""
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _chirp(rate: int, seconds: float) -> np.ndarray:
    """A 200 Hz -> 3 kHz chirp [S] at `rate` (inside the 8 kHz Nyquist band)."""
    t = np.arange(int(rate * seconds)) / rate
    return (0.4 * signal.chirp(t, 200.0, seconds, 3000.0)).astype(np.float32)


def _noise(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """White noise low-passed at 5 kHz [S] (band-limited so resamplers agree)."""
    noise = np.random.default_rng(seed).standard_normal(int(rate * seconds))
    lowpass = signal.butter(8, 5000.0, fs=rate, output="sos")
    return (0.1 * signal.sosfiltfilt(lowpass, noise)).astype(np.float32)


def _reference_16k(audio: np.ndarray, rate: int) -> np.ndarray:
    """Independent resample (scipy polyphase) of float audio [S] to 16 kHz, as int16."""
    g = np.gcd(rate, 16000)
    return (
        np.round(signal.resample_poly(audio.astype(np.float64), 16000 // g, rate // g) * 32768)
        .clip(-32768, 32767)
        .astype(np.int16)
    )


def _assert_close_audio(got: np.ndarray, want: np.ndarray, tol: float = 0.01) -> None:
    """Lengths within 1 sample; waveforms agree away from the edges (rms error / rms)."""
    assert abs(len(got) - len(want)) <= 1
    n = min(len(got), len(want))
    edge = 64
    a, b = got[edge : n - edge].astype(np.float64), want[edge : n - edge].astype(np.float64)
    assert np.sqrt(np.mean((a - b) ** 2)) <= tol * np.sqrt(np.mean(b**2))


def _read_split(info: registry.SplitInfo) -> dict[str, dict]:
    """Every record of a registered split, parsed with TensorFlow, keyed by id."""
    import tensorflow as tf

    spec = schema.feature_description(labeled=info.labeled, extra_fields=info.extra_fields)
    records = {}
    for raw in tf.data.TFRecordDataset(list(info.files)):
        example = {k: v.numpy() for k, v in tf.io.parse_single_example(raw, spec).items()}
        uid = example["id"].decode()
        assert uid not in records, f"{uid} written twice"
        example["pcm"] = np.frombuffer(example["audio"], "<i2")
        assert example["num_samples"] == len(example["pcm"])
        assert example["sample_rate"] == schema.SAMPLE_RATE
        np.testing.assert_allclose(example["duration"], len(example["pcm"]) / 16000, rtol=1e-6)
        records[uid] = example
    return records


def _registered(data_dir, corpus, split) -> registry.SplitInfo:
    return registry.CorpusRegistry(paths.registry_path(data_dir)).split(corpus, split)


def _report(data_dir, corpus, split) -> dict:
    return json.loads((paths.prepared_dir(data_dir, corpus) / f"{split}.report.json").read_text())


# ---------------------------------------------------------------- audio_io


def test_load_audio_resamples_downmixes_and_reads_every_format(tmp_path):
    left, right = _tone(44100, 0.5, 440.0, 0.6), _tone(44100, 0.5, 440.0, 0.2)
    sf.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 44100)
    got = audio_io.load_audio(tmp_path / "stereo.wav")
    assert len(got) == round(len(left) * 16000 / 44100)
    _assert_close_audio(got, _reference_16k((left + right) / 2, 44100))

    chirp = _chirp(8000, 0.4)
    sf.write(tmp_path / "c.flac", chirp, 8000)
    _assert_close_audio(audio_io.load_audio(tmp_path / "c.flac"), _reference_16k(chirp, 8000))

    (tmp_path / "c.raw").write_bytes(audio_io.to_pcm16(chirp).astype("<i2").tobytes())
    _assert_close_audio(
        audio_io.load_audio(tmp_path / "c.raw", sample_rate=8000), _reference_16k(chirp, 8000)
    )
    with pytest.raises(audio_io.AudioError, match="unknown_sample_rate"):
        audio_io.load_audio(tmp_path / "c.raw")

    tone = _tone(22050, 0.5, 600.0)
    sf.write(tmp_path / "t.ogg", tone, 22050)  # lossy: compare loosely
    _assert_close_audio(
        audio_io.load_audio(tmp_path / "t.ogg"), _reference_16k(tone, 22050), tol=0.1
    )


def test_load_audio_is_bit_exact_for_16k_pcm_and_reads_real_speech():
    want, rate = sf.read(REAL_FLAC, dtype="int16")
    assert rate == 16000
    np.testing.assert_array_equal(audio_io.load_audio(REAL_FLAC), want)
    raw = np.fromfile(REAL_RAW, dtype="<i2")
    np.testing.assert_array_equal(audio_io.load_audio(REAL_RAW, sample_rate=16000), raw)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_bytes(b""), "empty_audio"),
        (lambda p: p.write_bytes(b"not audio at all" * 50), "unreadable"),
        (lambda p: p.write_bytes(REAL_FLAC.read_bytes()[:20000]), "truncated"),
    ],
)
def test_load_audio_errors_have_reasons(tmp_path, make, reason):
    path = tmp_path / "bad.flac"
    make(path)
    with pytest.raises(audio_io.AudioError) as error:
        audio_io.load_audio(path)
    assert error.value.reason == reason
    with pytest.raises(audio_io.AudioError, match="missing_audio"):
        audio_io.load_audio(tmp_path / "nope.flac")


def _write_cut_in_half(path: pathlib.Path, container: str, subtype: str) -> None:
    """A 2 s 16 kHz sine written with soundfile, then cut to the first half of its bytes."""
    sf.write(path, _tone(16000, 2.0), 16000, format=container, subtype=subtype)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "suffix, container, subtype",
    [
        ("wav", "WAV", "PCM_16"),
        ("wav", "WAV", "IMA_ADPCM"),
        ("wav", "WAVEX", "FLOAT"),
        ("rf64", "RF64", "PCM_16"),
        ("w64", "W64", "PCM_16"),
        ("aiff", "AIFF", "PCM_16"),
        ("aifc", "AIFF", "ULAW"),
        ("au", "AU", "PCM_16"),
        ("caf", "CAF", "PCM_16"),
        ("nist", "NIST", "PCM_16"),
        ("svx", "SVX", "PCM_16"),
        ("opus", "OGG", "OPUS"),
        ("ogg", "OGG", "VORBIS"),
        ("flac", "FLAC", "PCM_16"),
        ("mp3", "MP3", "MPEG_LAYER_III"),
    ],
)
def test_a_file_cut_short_is_truncated_in_every_container(tmp_path, suffix, container, subtype):
    whole = tmp_path / f"whole.{suffix}"
    sf.write(whole, _tone(16000, 2.0), 16000, format=container, subtype=subtype)
    assert abs(len(audio_io.load_audio(whole)) - 32000) <= 544  # ADPCM pads its last block
    cut = tmp_path / f"cut.{suffix}"
    _write_cut_in_half(cut, container, subtype)
    with pytest.raises(audio_io.AudioError) as error:
        audio_io.load_audio(cut)
    assert error.value.reason == "truncated"


def test_sizes_left_unknown_by_a_streaming_writer_or_trailing_chunks_are_not_truncation(tmp_path):
    sf.write(tmp_path / "a.wav", _tone(16000, 0.5), 16000)
    data = bytearray((tmp_path / "a.wav").read_bytes())
    data[40:44] = (0xFFFFFFFF).to_bytes(4, "little")  # the data chunk's size: unknown
    (tmp_path / "streamed.wav").write_bytes(bytes(data))
    assert len(audio_io.load_audio(tmp_path / "streamed.wav")) == 8000
    trailing = (tmp_path / "a.wav").read_bytes() + b"LIST" + (4).to_bytes(4, "little") + b"INFO"
    (tmp_path / "trailing.wav").write_bytes(trailing)
    assert len(audio_io.load_audio(tmp_path / "trailing.wav")) == 8000


# ---------------------------------------------------------------- layouts


def _librispeech_tree(root: pathlib.Path) -> dict[str, tuple[np.ndarray, str, str]]:
    """A LibriSpeech-layout tree of synthetic + real audio; returns id -> (want16k, spk, text)."""
    clips = {
        "19-198-0000": (_chirp(16000, 0.3), 16000, "flac", "a chirp at sixteen k"),
        "19-198-0001": (_tone(8000, 0.25, 300.0), 8000, "wav", "a tone at eight k"),
        "19-227-0000": (_noise(22050, 0.5), 22050, "flac", "noise at twenty two k"),
        "26-495-0000": (_tone(48000, 0.2, 1000.0), 48000, "wav", "a tone at forty eight k"),
    }
    want = {}
    for uid, (audio, rate, ext, text) in clips.items():
        speaker, chapter, _ = uid.split("-")
        folder = root / speaker / chapter
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"{uid}.{ext}", audio, rate)
        with open(folder / f"{speaker}-{chapter}.trans.txt", "a") as f:
            f.write(f"{uid} {text.upper()}\n")
        want[uid] = (_reference_16k(audio, rate), speaker, text.upper())
    folder = root / "3000" / "15664"
    folder.mkdir(parents=True)
    shutil.copy(REAL_FLAC, folder / "3000-15664-0000.flac")
    (folder / "3000-15664.trans.txt").write_text(
        "3000-15664-0000 HE WAS NOT AN ILL DISPOSED YOUNG MAN\n"
    )
    want["3000-15664-0000"] = (
        sf.read(REAL_FLAC, dtype="int16")[0],
        "3000",
        "HE WAS NOT AN ILL DISPOSED YOUNG MAN",
    )
    return want


def test_librispeech_tree_prepares_and_registers(tmp_path):
    want = _librispeech_tree(tmp_path / "dev-clean")
    source = librispeech.librispeech_source(tmp_path / "dev-clean")
    assert source.labeled and source.extra_fields == ("chapter",)
    report = prepare.prepare_split(
        source,
        data_dir=tmp_path / "data",
        corpus="ls",
        split="dev-clean",
        options=prepare.PrepareOptions(num_shards=2),
    )
    assert (report.kept, report.skipped) == (5, {})
    info = _registered(tmp_path / "data", "ls", "dev-clean")
    assert info.labeled and info.num_examples == 5 and info.extra_fields == ("chapter",)
    tag = _report(tmp_path / "data", "ls", "dev-clean")["plan"]["tag"]
    assert [pathlib.Path(f).name for f in info.files] == [
        f"dev-clean-{tag}-00000-of-00002.tfrecord",
        f"dev-clean-{tag}-00001-of-00002.tfrecord",
    ]
    records = _read_split(info)
    assert sorted(records) == sorted(want)
    for uid, (audio, speaker, text) in want.items():
        record = records[uid]
        assert (record["speaker"].decode(), record["text"].decode()) == (speaker, text)
        assert record["chapter"].decode() == uid.split("-")[1]
        _assert_close_audio(record["pcm"], audio)
    np.testing.assert_array_equal(records["3000-15664-0000"]["pcm"], want["3000-15664-0000"][0])
    hours = sum(len(r["pcm"]) for r in records.values()) / 16000 / 3600
    assert info.hours == pytest.approx(hours)

    # The same audio as an unlabeled split: transcripts survive only as `oracle_text`.
    unlabeled = librispeech.librispeech_source(tmp_path / "dev-clean", unlabeled=True)
    assert not unlabeled.labeled and unlabeled.extra_fields == ("chapter", "oracle_text")
    prepare.prepare_split(unlabeled, data_dir=tmp_path / "data", corpus="ls", split="unlab")
    records = _read_split(_registered(tmp_path / "data", "ls", "unlab"))
    assert "text" not in records["19-198-0001"]
    assert records["19-198-0001"]["oracle_text"].decode() == want["19-198-0001"][2]


def test_tree_without_transcripts_is_unlabeled(tmp_path):
    folder = tmp_path / "librilight" / "100" / "sea_fairies"
    folder.mkdir(parents=True)
    sf.write(folder / "01_baum.flac", _chirp(16000, 0.2), 16000)
    sf.write(folder / "02_baum.wav", _tone(24000, 0.2), 24000)
    source = librispeech.librispeech_source(tmp_path / "librilight")
    assert not source.labeled
    prepare.prepare_split(source, data_dir=tmp_path, corpus="ll", split="unlab")
    info = _registered(tmp_path, "ll", "unlab")
    records = _read_split(info)
    assert not info.labeled and "text" not in next(iter(records.values()))
    assert sorted(records) == ["100/sea_fairies/01_baum", "100/sea_fairies/02_baum"]
    assert {r["speaker"].decode() for r in records.values()} == {"100"}


def test_jsonl_and_tsv_manifests(tmp_path):
    audio_dir = tmp_path / "clips"
    audio_dir.mkdir()
    stereo = np.stack([_tone(44100, 0.3), _chirp(44100, 0.3)], axis=1)
    sf.write(audio_dir / "stereo.wav", stereo, 44100)
    tone = _tone(11025, 0.3, 500.0)
    (audio_dir / "tone.pcm").write_bytes(audio_io.to_pcm16(tone).astype("<i2").tobytes())
    lines = [
        {
            "audio": "clips/stereo.wav",
            "id": "s1",
            "speaker": "spk1",
            "text": "stereo one",
            "accent": "en-us",
            "snr_db": 12.5,
            "duration": 99.0,
        },
        {"audio": "clips/tone.pcm", "sample_rate": 11025, "speaker": "spk2", "text": "raw tone"},
        {
            "audio": str(REAL_WAV),
            "id": "real",
            "text": "he might even have been made amiable himself",
            "accent": "librivox",
        },
    ]
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    source = manifests.manifest_source(manifest)
    assert source.extra_fields == ("accent", "snr_db")  # `duration` is recomputed, not copied
    prepare.prepare_split(source, data_dir=tmp_path, corpus="mf", split="train")
    records = _read_split(_registered(tmp_path, "mf", "train"))
    assert sorted(records) == ["clips/tone", "real", "s1"]
    _assert_close_audio(records["s1"]["pcm"], _reference_16k(stereo.mean(axis=1), 44100))
    _assert_close_audio(records["clips/tone"]["pcm"], _reference_16k(tone, 11025))
    np.testing.assert_array_equal(records["real"]["pcm"], sf.read(REAL_WAV, dtype="int16")[0])
    assert records["s1"]["snr_db"] == b"12.5" and records["s1"]["accent"] == b"en-us"
    assert records["clips/tone"]["accent"] == b"" and records["s1"]["duration"] < 1.0
    assert records["clips/tone"]["speaker"] == b"spk2"

    prepare.prepare_split(
        manifests.manifest_source(REAL / "transcripts.tsv"),
        data_dir=tmp_path,
        corpus="real",
        split="test",
    )
    real = _read_split(_registered(tmp_path, "real", "test"))
    assert real["goforward"]["text"] == b"go forward ten meters"
    np.testing.assert_array_equal(real["goforward"]["pcm"], np.fromfile(REAL_RAW, "<i2"))
    np.testing.assert_array_equal(real[REAL_FLAC.stem]["pcm"], sf.read(REAL_FLAC, dtype="int16")[0])
    assert real[REAL_FLAC.stem]["speaker"] == b"librivox_austen"


def test_embedded_layout_prepares_every_split(tmp_path):
    root = tmp_path / "embedded" / "tiny"
    for split, key in (("train", "text"), ("unlabeled", "oracle_text")):
        (root / split).mkdir(parents=True)
        rows = []
        for i in range(3):
            sf.write(root / split / f"{i}.flac", _tone(22050, 0.2, 300.0 + 100 * i), 22050)
            rows.append(
                {
                    "id": f"{split}-{i}",
                    "audio": f"{i}.flac",
                    "duration": 0.2,
                    "speaker": f"v{i}",
                    key: f"word {i}",
                    "accent": "en",
                    "rate": 170,
                }
            )
        (root / split / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(sources.SourceError, match="no complete embedded corpus"):
        prepare.prepare_embedded(root, data_dir=tmp_path)
    (root / "corpus.json").write_text(json.dumps({"parameters": {"preset": "tiny"}}))
    reports = prepare.prepare_embedded(root, data_dir=tmp_path)
    assert [(r.split, r.kept) for r in reports] == [("train", 3), ("unlabeled", 3)]
    splits = registry.CorpusRegistry(paths.registry_path(tmp_path)).splits("embedded_tiny")
    assert splits["train"].labeled and not splits["unlabeled"].labeled
    assert splits["unlabeled"].extra_fields == ("accent", "oracle_text", "rate")
    unlabeled = _read_split(splits["unlabeled"])
    assert unlabeled["unlabeled-2"]["oracle_text"] == b"word 2"
    assert "text" not in unlabeled["unlabeled-2"]
    assert _read_split(splits["train"])["train-1"]["text"] == b"word 1"


# ---------------------------------------------------------------- bad input, strict, resume


def _bad_tree(root: pathlib.Path) -> dict[str, str]:
    """A LibriSpeech tree with one good and many bad utterances; returns id -> expected reason."""
    folder = root / "7" / "1"
    folder.mkdir(parents=True)
    good = _tone(16000, 0.3)
    sf.write(folder / "7-1-0000.flac", good, 16000)
    (folder / "7-1-0001.flac").write_bytes(b"\x00\x01garbage" * 100)
    (folder / "7-1-0002.flac").write_bytes(REAL_FLAC.read_bytes()[:20000])
    (folder / "7-1-0003.wav").write_bytes(b"")
    sf.write(folder / "7-1-0004.wav", np.zeros(4000, np.float32), 16000)
    sf.write(folder / "7-1-0005.flac", good, 16000)  # transcript not UTF-8
    sf.write(folder / "7-1-0006.flac", good, 16000)  # no transcript line
    sf.write(folder / "7-1-0007.flac", _tone(16000, 1.5), 16000)  # too long
    sf.write(folder / "7-1-0008.flac", good, 16000)  # empty transcript
    sf.write(folder / "7-1-0010.wav", np.zeros((0, 1), np.float32), 16000)  # header, no samples
    _write_cut_in_half(folder / "7-1-0011.wav", "WAV", "PCM_16")
    lines = [
        b"7-1-0000 GOOD",
        b"7-1-0001 CORRUPT",
        b"7-1-0002 TRUNCATED",
        b"7-1-0003 EMPTY",
        b"7-1-0004 SILENT",
        b"7-1-0005 CAF\xe9 LATIN ONE",
        b"7-1-0007 LONG",
        b"7-1-0008 ",
        b"7-1-0009 NO AUDIO",
        b"7-1-0010 NO SAMPLES",
        b"7-1-0011 CUT SHORT",
    ]
    (folder / "7-1.trans.txt").write_bytes(b"\n".join(lines) + b"\n")
    return {
        "7-1-0001": "unreadable",
        "7-1-0002": "truncated",
        "7-1-0003": "empty_audio",
        "7-1-0004": "silent_audio",
        "7-1-0005": "transcript_not_utf8",
        "7-1-0006": "missing_transcript",
        "7-1-0007": "too_long",
        "7-1-0008": "empty_transcript",
        "7-1-0009": "missing_audio",
        "7-1-0010": "empty_audio",
        "7-1-0011": "truncated",
    }


def test_bad_inputs_are_skipped_and_reported(tmp_path):
    expected = _bad_tree(tmp_path / "bad")
    options = prepare.PrepareOptions(max_seconds=1.0, num_shards=3)
    report = prepare.prepare_split(
        librispeech.librispeech_source(tmp_path / "bad"),
        data_dir=tmp_path,
        corpus="bad",
        split="s",
        options=options,
    )
    assert report.kept == 1
    assert sum(report.skipped.values()) == len(expected)
    full = _report(tmp_path, "bad", "s")
    assert {item["id"]: item["reason"] for item in full["skipped"]} == expected
    assert full["skipped_by_reason"]["empty_audio"] == 2
    assert all(item["detail"] and item["location"] for item in full["skipped"])
    assert list(_read_split(_registered(tmp_path, "bad", "s"))) == ["7-1-0000"]


def test_bad_manifest_lines_are_skipped_and_reported(tmp_path):
    sf.write(tmp_path / "a.wav", _tone(16000, 0.2), 16000)
    lines = [
        json.dumps({"audio": "a.wav", "id": "a", "text": "fine"}).encode(),
        json.dumps({"audio": "a.wav", "id": "a", "text": "again"}).encode(),
        json.dumps({"audio": "a.wav", "id": "b"}).encode(),
        json.dumps({"audio": "missing.wav", "id": "c", "text": "x"}).encode(),
        b'{"audio": "a.wav", "id": "d", "text": "caf\xe9"}',
        b"{not json",
        b"[1, 2]",
    ]
    (tmp_path / "m.jsonl").write_bytes(b"\n".join(lines))
    prepare.prepare_split(
        manifests.manifest_source(tmp_path / "m.jsonl"), data_dir=tmp_path, corpus="m", split="m"
    )
    reasons = sorted(item["reason"] for item in _report(tmp_path, "m", "m")["skipped"])
    assert reasons == [
        "bad_manifest_line",
        "bad_manifest_line",
        "duplicate_id",
        "manifest_not_utf8",
        "missing_audio",
        "missing_transcript",
    ]
    shutil.copy(tmp_path / "a.wav", tmp_path / "c.wav")
    (tmp_path / "m.tsv").write_text("audio\ttext\na.wav\thello\nb.wav\n\nc.wav\t\n")
    prepare.prepare_split(
        manifests.manifest_source(tmp_path / "m.tsv"), data_dir=tmp_path, corpus="t", split="t"
    )
    assert _report(tmp_path, "t", "t")["skipped_by_reason"] == {
        "bad_manifest_line": 1,
        "empty_transcript": 1,
    }


def test_strict_fails_on_the_first_bad_utterance(tmp_path):
    _bad_tree(tmp_path / "bad")
    with pytest.raises(prepare.PrepareError, match=r"7-1-0001\.flac: unreadable: ") as error:
        prepare.prepare_split(
            librispeech.librispeech_source(tmp_path / "bad"),
            data_dir=tmp_path,
            corpus="bad",
            split="s",
            options=prepare.PrepareOptions(strict=True, num_shards=1),
        )
    assert "\n" not in str(error.value)
    assert not paths.registry_path(tmp_path).exists()
    assert not list(paths.prepared_dir(tmp_path, "bad").glob("*.tfrecord*"))


class _KilledAfter(sources.FileSource):
    """A source whose reads die (like a killed process) once `limit` utterances were read."""

    limit = 0

    def read(self, start, stop):
        for item in super().read(start, stop):
            if start >= self.limit:
                raise KeyboardInterrupt
            yield item


def test_interrupted_run_resumes_and_writes_every_utterance_once(tmp_path):
    want = _librispeech_tree(tmp_path / "tree")
    listing = librispeech.librispeech_source(tmp_path / "tree")
    killed = _KilledAfter(
        listing.description, listing.entries, listing.labeled, listing.extra_fields
    )
    killed.limit = 2  # shards 0 ([0, 1)) and 1 ([1, 2)) finish, shard 2 dies
    options = prepare.PrepareOptions(num_shards=5)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare_split(killed, data_dir=tmp_path, corpus="r", split="s", options=options)
    out = paths.prepared_dir(tmp_path, "r")
    tag = prepare.plan_tag(prepare._plan(listing, options))
    done = sorted(p.name for p in out.glob("*.tfrecord"))
    assert done == [f"s-{tag}-00000-of-00005.tfrecord", f"s-{tag}-00001-of-00005.tfrecord"]
    assert not paths.registry_path(tmp_path).exists()
    # What a SIGKILL mid-shard leaves: a temporary file, which must never count as a shard.
    (out / f"s-{tag}-00002-of-00005.tfrecord.tmp-4242").write_bytes(b"half a shard")
    first = (out / done[0]).stat()

    report = prepare.prepare_split(
        listing, data_dir=tmp_path, corpus="r", split="s", options=options
    )
    assert report.kept == len(want)
    assert (out / done[0]).stat().st_mtime_ns == first.st_mtime_ns  # kept, not rewritten
    assert not list(out.glob("*.tmp-*"))
    assert sorted(_read_split(_registered(tmp_path, "r", "s"))) == sorted(want)

    # A different plan (here: shard count) replaces the old shards instead of mixing them.
    prepare.prepare_split(
        listing,
        data_dir=tmp_path,
        corpus="r",
        split="s",
        options=prepare.PrepareOptions(num_shards=2),
    )
    assert len(list(out.glob("s-*.tfrecord"))) == len(list(out.glob("s-*.stats.json"))) == 2
    assert sorted(_read_split(_registered(tmp_path, "r", "s"))) == sorted(want)


def _registered_files_exist(data_dir) -> bool:
    """Whether every shard file the raw registry JSON names exists (read without checks)."""
    data = json.loads(paths.registry_path(data_dir).read_text())
    files = [f for c in data["corpora"].values() for s in c["splits"].values() for f in s["files"]]
    return bool(files) and all(pathlib.Path(f).exists() for f in files)


def test_a_failed_re_prepare_leaves_the_registry_on_the_last_good_shards(tmp_path):
    want = _librispeech_tree(tmp_path / "tree")
    options = prepare.PrepareOptions(num_shards=2)
    prepare.prepare_split(
        librispeech.librispeech_source(tmp_path / "tree"),
        data_dir=tmp_path,
        corpus="r",
        split="s",
        options=options,
    )
    before = _registered(tmp_path, "r", "s")
    # The source changes (a new, corrupt file), so the plan does; --strict then fails on it.
    folder = tmp_path / "tree" / "19" / "198"
    (folder / "19-198-0002.flac").write_bytes(b"not audio" * 40)
    with open(folder / "19-198.trans.txt", "a") as f:
        f.write("19-198-0002 CORRUPT\n")
    with pytest.raises(prepare.PrepareError, match="unreadable"):
        prepare.prepare_split(
            librispeech.librispeech_source(tmp_path / "tree"),
            data_dir=tmp_path,
            corpus="r",
            split="s",
            options=dataclasses.replace(options, strict=True),
        )
    assert _registered(tmp_path, "r", "s") == before and _registered_files_exist(tmp_path)
    assert sorted(_read_split(before)) == sorted(want)


def test_registry_entry_with_missing_shards_is_one_line_error(tmp_path):
    _librispeech_tree(tmp_path / "tree")
    prepare.prepare_split(
        librispeech.librispeech_source(tmp_path / "tree"), data_dir=tmp_path, corpus="r", split="s"
    )
    shard = pathlib.Path(_registered(tmp_path, "r", "s").files[0])
    shard.unlink()
    with pytest.raises(registry.MissingShardsError) as error:
        _registered(tmp_path, "r", "s")
    assert isinstance(error.value, registry.CorpusNotFoundError)  # what every command catches
    assert str(shard) in str(error.value) and "\n" not in str(error.value)


def _prepare_until_killed(tree: str, data_dir: str, num_shards: str, marker: str) -> None:
    """Re-prepares `tree` as corpus r / split s with `num_shards`, then, once its first new
    shard is written, touches `marker` and waits to be killed (the subprocess of the
    `kill -9` test)."""

    class _Stalled(sources.FileSource):
        def read(self, start, stop):
            if start > 0:
                pathlib.Path(marker).touch()
                time.sleep(600)
            yield from super().read(start, stop)

    listing = librispeech.librispeech_source(tree)
    stalled = _Stalled(listing.description, listing.entries, listing.labeled, listing.extra_fields)
    options = prepare.PrepareOptions(num_shards=int(num_shards))
    prepare.prepare_split(stalled, data_dir=data_dir, corpus="r", split="s", options=options)


def test_kill_9_during_a_re_prepare_leaves_the_registry_on_files_that_exist(tmp_path):
    want = _librispeech_tree(tmp_path / "tree")
    listing = librispeech.librispeech_source(tmp_path / "tree")
    prepare.prepare_split(
        listing,
        data_dir=tmp_path,
        corpus="r",
        split="s",
        options=prepare.PrepareOptions(num_shards=2),
    )
    marker = tmp_path / "first-shard-written"
    command = [sys.executable, __file__, str(tmp_path / "tree"), str(tmp_path), "5", str(marker)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), process.stderr.read().decode()[-2000:]
    finally:
        process.kill()  # SIGKILL
        process.wait()
    assert process.returncode == -posix_signal.SIGKILL
    assert len(list(paths.prepared_dir(tmp_path, "r").glob("s-*-of-00005.tfrecord"))) == 1
    assert _registered_files_exist(tmp_path)
    assert sorted(_read_split(_registered(tmp_path, "r", "s"))) == sorted(want)

    prepare.prepare_split(
        listing,
        data_dir=tmp_path,
        corpus="r",
        split="s",
        options=prepare.PrepareOptions(num_shards=5),
    )
    info = _registered(tmp_path, "r", "s")
    assert len(info.files) == 5 and sorted(_read_split(info)) == sorted(want)
    out = paths.prepared_dir(tmp_path, "r")
    assert sorted(out.glob("s-*.tfrecord")) == sorted(pathlib.Path(f) for f in info.files)


# ---------------------------------------------------------------- TFDS, CLI


def test_tfds_librispeech_mock_prepares(tmp_path):
    import tensorflow_datasets as tfds

    with pytest.raises(sources.SourceError, match="prepare it with TFDS first"):
        len(tfds_source.TfdsSource("dev_clean", data_dir=str(tmp_path / "empty")))

    with tfds.testing.mock_data(num_examples=5):
        expected = list(
            tfds.as_numpy(
                tfds.builder("librispeech", data_dir=tmp_path).as_dataset(
                    split="dev_clean", shuffle_files=False
                )
            )
        )
        source = tfds_source.TfdsSource("dev_clean", data_dir=str(tmp_path))
        report = prepare.prepare_split(
            source,
            data_dir=tmp_path,
            corpus="librispeech",
            split="dev_clean",
            options=prepare.PrepareOptions(num_shards=2),
        )
        unlabeled = tfds_source.TfdsSource("dev_clean", data_dir=str(tmp_path), unlabeled=True)
        prepare.prepare_split(unlabeled, data_dir=tmp_path, corpus="librispeech", split="unlab")
    assert report.kept == 5
    unlab = _registered(tmp_path, "librispeech", "unlab")
    assert not unlab.labeled and unlab.extra_fields == ("chapter", "oracle_text")
    oracle = {r["oracle_text"] for r in _read_split(unlab).values()}
    assert oracle == {example["text"] for example in expected}
    info = _registered(tmp_path, "librispeech", "dev_clean")
    assert info.labeled and info.extra_fields == ("chapter",) and len(info.files) == 2
    records = _read_split(info)
    assert len(records) == 5
    for example in expected:
        record = records[example["id"].decode()]
        np.testing.assert_array_equal(record["pcm"], example["speech"])
        assert record["text"] == example["text"]
        assert record["speaker"].decode() == str(example["speaker_id"])
        assert record["chapter"].decode() == str(example["chapter_id"])


def _run_cli(argv: list[str]) -> int:
    """Runs `bigssl prepare` in this process with `argv` as its flags."""
    from absl import flags

    from bigssl_jax.commands import prepare as command

    flags.FLAGS.unparse_flags()
    remaining = flags.FLAGS(["bigssl prepare", *argv])
    try:
        return command.main(remaining)
    finally:
        flags.FLAGS.unparse_flags()


def test_cli_prepares_embedded_and_reports_errors_in_one_line(tmp_path, capsys):
    root = paths.embedded_corpus_dir(tmp_path, "mini") / "dev"
    root.mkdir(parents=True)
    sf.write(root / "0.wav", _tone(16000, 0.2), 16000)
    sf.write(root / "1.wav", np.zeros(3200, np.float32), 16000)
    rows = [{"id": "0", "audio": "0.wav", "text": "hi"}, {"id": "1", "audio": "1.wav", "text": "x"}]
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root.parent / "corpus.json").write_text(json.dumps({"parameters": {"preset": "mini"}}))

    assert _run_cli([f"--data_dir={tmp_path}", "--embedded=mini"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("embedded_mini/dev: kept 1 utterances")
    assert "skipped 1 (silent_audio 1)" in out[0]

    assert _run_cli([f"--data_dir={tmp_path}", "--embedded=mini", "--strict"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1.wav: silent_audio" in err[0]

    assert (
        _run_cli(
            [
                f"--data_dir={tmp_path}",
                "--format=manifest",
                f"--source={tmp_path}/nope.jsonl",
                "--name=x",
            ]
        )
        == 1
    )
    assert "nope.jsonl does not exist" in capsys.readouterr().err


def test_prepares_the_corpus_of_make_corpus(tmp_path):
    from bigssl_jax.data import synthetic_corpus

    root = paths.embedded_corpus_dir(tmp_path, "tiny")
    info, _ = synthetic_corpus.make_corpus(root, preset="tiny", progress=False)
    reports = {r.split: r for r in prepare.prepare_embedded(root, data_dir=tmp_path)}
    splits = registry.CorpusRegistry(paths.registry_path(tmp_path)).splits("embedded_tiny")
    assert set(splits) == set(info["splits"]) == set(reports)
    for name, split in info["splits"].items():
        assert reports[name].kept == split["num_utterances"] == splits[name].num_examples
        assert splits[name].labeled == (name not in synthetic_corpus.UNLABELED_SPLITS)
    assert "oracle_text" in splits["unlabeled"].extra_fields
    lines = [json.loads(line) for line in (root / "labeled" / "manifest.jsonl").open()]
    records = _read_split(splits["labeled"])
    for line in lines:
        record = records[line["id"]]
        assert record["text"].decode() == line["text"]
        assert record["speaker"].decode() == line["speaker"]
        assert record["accent"].decode() == line["accent"]
        want, rate = sf.read(root / "labeled" / line["audio"], dtype="int16")
        assert rate == 16000
        np.testing.assert_array_equal(record["pcm"], want)


if __name__ == "__main__":
    _prepare_until_killed(*sys.argv[1:])
