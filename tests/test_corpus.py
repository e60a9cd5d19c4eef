"""Tests of the embedded synthetic corpus: sentences, augmentation, espeak, make-corpus."""

import dataclasses
import hashlib
import json
import pathlib
import re

import numpy as np
import pytest
import scipy.signal
import soundfile
from absl import flags

from bigssl_jax.commands import make_corpus as make_corpus_command
from bigssl_jax.data import augment, espeak, sentences, synthetic_corpus

SR = 16000


def _tree_hash(root: pathlib.Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _manifest(root: pathlib.Path, split: str) -> list[dict]:
    lines = (root / split / "manifest.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("tiny_jobs2")
    _, made = synthetic_corpus.make_corpus(root, preset="tiny", seed=0, jobs=2, progress=False)
    assert made
    return root


# --- sentences ---------------------------------------------------------------------------------


def test_normalize():
    assert sentences.normalize("'Tis Mister Darcy's to-morrow, sir!") == (
        "tis mister darcy's to morrow sir"
    )
    assert sentences.normalize("Café naïve RÉSUMÉ, l'été 'été'") == "café naïve résumé l'été été"


def _ascii_normalize(text: str) -> str:
    """`sentences.normalize` before it kept letters of every script (the ASCII rule)."""
    text = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", text.lower().replace("-", " "))
    return " ".join(re.sub(r"[^a-z' ]", " ", text).split())


def test_normalize_of_ascii_text_and_every_shipped_line_is_unchanged():
    lines = [
        line
        for source in sentences.SOURCES
        for line in (sentences.SENTENCE_DIR / f"{source}.txt").read_text().splitlines()
    ]
    rng = np.random.default_rng(0)
    printable = [chr(c) for c in range(32, 127)]
    lines += ["".join(rng.choice(printable, size=rng.integers(0, 40))) for _ in range(2000)]
    assert [sentences.normalize(line) for line in lines] == list(map(_ascii_normalize, lines))


def test_shipped_sentences_are_normalised_and_unique():
    pool = sentences.load_sentences()
    assert sum(s.source == "harvard" for s in pool) == 720
    assert len(pool) > 15000
    assert len({s.text for s in pool}) == len(pool)
    for s in pool:
        assert s.text == sentences.normalize(s.text)
        assert set(s.text) <= set("abcdefghijklmnopqrstuvwxyz' ")
        assert 4 <= len(s.text.split()) <= 20


def test_vocab_size_restricts_words():
    vocab = sentences.top_words(500)
    assert len(vocab) == 500
    counts = sentences.word_counts()
    assert min(counts[w] for w in vocab) >= max(counts[w] for w in counts if w not in vocab)
    limited = sentences.load_sentences(vocab_size=500)
    assert 100 < len(limited) < len(sentences.load_sentences()) / 4
    assert all(set(s.text.split()) <= vocab for s in limited)
    plan = synthetic_corpus.plan_corpus(synthetic_corpus.PRESETS["tiny"], 0, vocab_size=500)
    assert all(set(u.sentence.text.split()) <= vocab for u in plan)


def test_vocab_too_small_is_an_error():
    with pytest.raises(synthetic_corpus.CorpusError, match="vocab_size=20"):
        synthetic_corpus.plan_corpus(synthetic_corpus.PRESETS["tiny"], 0, vocab_size=20)


# --- augmentation ------------------------------------------------------------------------------


def _tone(freq: float, seconds: float = 1.0) -> np.ndarray:
    return np.sin(2 * np.pi * freq * np.arange(int(seconds * SR)) / SR)


@pytest.mark.parametrize("colour", ["white", "pink", "brown", "hum"])
@pytest.mark.parametrize("snr", [0.0, 5.0, 17.5])
def test_add_noise_hits_snr(colour, snr):
    rng = np.random.default_rng(0)
    clean = _tone(440.0) * 0.3
    noise = augment.colored_noise(rng, colour, len(clean), SR)
    assert np.sqrt(np.mean(noise**2)) == pytest.approx(1.0, rel=1e-6)
    noisy = augment.add_noise(clean, noise, snr)
    assert abs(augment.snr_db(clean, noisy) - snr) < 0.1


def test_noise_colours_have_their_spectral_slopes():
    """Power per decade: white rises 10 dB, pink is flat, brown falls 10 dB (1/f^a: 10(1-a))."""
    rng = np.random.default_rng(1)
    for colour, slope in (("white", 10.0), ("pink", 0.0), ("brown", -10.0)):
        noise = augment.colored_noise(rng, colour, 8 * SR, SR)
        freqs, psd = scipy.signal.welch(noise, SR, nperseg=4096)
        decade_power = [psd[(freqs >= lo) & (freqs < 10 * lo)].sum() for lo in (100.0, 1000.0)]
        assert 10 * np.log10(decade_power[1] / decade_power[0]) == pytest.approx(slope, abs=1.5)


def test_hum_is_at_mains_frequency():
    noise = augment.colored_noise(np.random.default_rng(2), "hum", 2 * SR, SR)
    freqs, psd = scipy.signal.welch(noise, SR, nperseg=8192)
    peak = freqs[np.argmax(psd)]
    assert min(abs(peak - 50.0), abs(peak - 60.0)) < 2.0


def test_telephone_band():
    def gain_db(freq):
        tone = _tone(freq)
        out = augment.telephone(tone, SR)
        return 10 * np.log10(np.mean(out[SR // 4 : -SR // 4] ** 2) / np.mean(tone**2))

    assert abs(gain_db(1000.0)) < 0.5
    assert gain_db(100.0) < -25.0
    assert gain_db(6000.0) < -25.0


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturb_changes_length_by_factor(factor):
    audio = _tone(300.0, 2.0)
    out = augment.speed_perturb(audio, factor)
    assert abs(len(out) - len(audio) / factor) <= 1
    # A faster playback raises the tone by the same factor.
    freqs, psd = scipy.signal.welch(out, SR, nperseg=8192)
    assert freqs[np.argmax(psd)] == pytest.approx(300.0 * factor, abs=3.0)


def test_room_impulse_response_decays_at_rt60():
    rt60 = 0.5
    rir = augment.room_impulse_response(np.random.default_rng(3), rt60, SR)
    assert len(rir) == rt60 * SR and rir[0] == 1.0
    # Schroeder backward integration of the tail: the energy decay in dB is linear in time.
    decay = np.cumsum(rir[1:][::-1] ** 2)[::-1]
    decay_db = 10 * np.log10(decay / decay[0])
    t = np.arange(1, len(rir)) / SR
    window = (decay_db < -5) & (decay_db > -25)
    slope = np.polyfit(t[window], decay_db[window], 1)[0]
    assert -60.0 / slope == pytest.approx(rt60, rel=0.15)


def test_reverberate_keeps_length_and_level():
    speech = _tone(500.0) * np.hanning(SR)
    wet = augment.reverberate(
        speech, augment.room_impulse_response(np.random.default_rng(4), 0.3, SR)
    )
    assert len(wet) == len(speech)
    assert np.sqrt(np.mean(wet**2)) == pytest.approx(np.sqrt(np.mean(speech**2)), rel=1e-9)
    assert not np.allclose(wet, speech)


def test_babble_and_level():
    rng = np.random.default_rng(5)
    talkers = [_tone(f, 0.7) for f in (200.0, 330.0, 510.0)]
    mix = augment.babble(rng, talkers, 3 * SR)
    assert np.sqrt(np.mean(mix**2)) == pytest.approx(1.0)
    out = augment.set_level(0.01 * mix, -20.0, max_peak=10.0)
    assert 20 * np.log10(np.sqrt(np.mean(out**2))) == pytest.approx(-20.0)
    assert np.max(np.abs(augment.set_level(mix, 0.0))) == pytest.approx(0.98)


def test_augment_record_and_clean_config():
    speech = _tone(400.0) * 0.5
    config = augment.AugmentConfig(
        speed_prob=1.0,
        reverb_prob=1.0,
        telephone_prob=1.0,
        noise_prob=1.0,
        noise_types=("pink",),
        snr_db_range=(10, 10),
    )
    _, record = augment.augment(speech, SR, np.random.default_rng(6), config)
    assert record["noise"] == "pink" and record["snr_db"] == 10.0 and record["telephone"]
    assert record["reverb"] is not None and 0.9 <= record["speed"] <= 1.1
    out, record = augment.augment(speech, SR, np.random.default_rng(6), config.clean())
    assert record["speed"] == 1.0 and record["noise"] == "none" and record["reverb"] is None
    pads = round(record["pad_start"] * SR), round(record["pad_end"] * SR)
    assert len(out) == len(speech) + sum(pads)
    middle = out[pads[0] : len(out) - pads[1]]
    gain = np.dot(middle, speech) / np.dot(speech, speech)
    np.testing.assert_allclose(middle, gain * speech, atol=1e-12)
    assert not out[: pads[0]].any() and not out[len(out) - pads[1] :].any()


# --- espeak ------------------------------------------------------------------------------------


def test_every_accent_speaks():
    for accent in espeak.ACCENTS:
        audio = espeak.synthesize(
            "The birch canoe slid.", espeak.Voice(accent=accent, variant="m3")
        )
        assert audio.dtype == np.int16 and len(audio) > 0.5 * espeak.sample_rate()
        assert np.abs(audio).max() > 1000


def test_bad_voice_is_an_error():
    with pytest.raises(espeak.EspeakError, match="no-such-accent"):
        espeak.synthesize("hello", espeak.Voice(accent="no-such-accent", variant="m1"))


# --- the corpus --------------------------------------------------------------------------------


def test_output_is_identical_for_any_number_of_jobs(corpus, tmp_path):
    synthetic_corpus.make_corpus(tmp_path, preset="tiny", seed=0, jobs=1, progress=False)
    assert _tree_hash(tmp_path) == _tree_hash(corpus)
    assert not (corpus / ".partial").exists()


def test_splits_are_disjoint_by_speaker_and_sentence(corpus):
    rows = {split: _manifest(corpus, split) for split in synthetic_corpus.SPLITS}
    speakers = {split: {r["speaker"] for r in split_rows} for split, split_rows in rows.items()}
    train = speakers["labeled"] | speakers["unlabeled"]
    for held_out in ("dev", "test", "test_clean"):
        assert not speakers[held_out] & train
    assert not speakers["dev"] & speakers["test"]
    texts = {split: [r.get("text", r.get("oracle_text")) for r in split_rows]
             for split, split_rows in rows.items()}  # fmt: skip
    distinct = ("labeled", "unlabeled", "dev", "test")
    for i, first in enumerate(distinct):
        assert len(set(texts[first])) == len(texts[first])
        for second in distinct[i + 1 :]:
            assert not set(texts[first]) & set(texts[second])
    # test_clean is test's paired clean twin: same speakers, same sentences, no augmentation.
    assert texts["test_clean"] == texts["test"]
    assert [r["speaker"] for r in rows["test_clean"]] == [r["speaker"] for r in rows["test"]]
    for row in rows["test_clean"]:
        assert (row["noise"], row["reverb"], row["telephone"], row["speed"]) == (
            "none", None, False, 1.0)  # fmt: skip
    assert any(row["noise"] != "none" for row in rows["labeled"] + rows["unlabeled"])


def test_manifest_fields(corpus):
    info = json.loads((corpus / "corpus.json").read_text())
    assert info["parameters"]["preset"] == "tiny" and info["parameters"]["seed"] == 0
    for split in synthetic_corpus.SPLITS:
        rows = _manifest(corpus, split)
        assert info["splits"][split]["num_utterances"] == len(rows)
        hours = sum(r["duration"] for r in rows) / 3600
        assert info["splits"][split]["hours"] == pytest.approx(hours, abs=1e-4)
        for row in rows:
            assert row["accent"] in espeak.ACCENTS and row["voice"] in espeak.VARIANTS
            assert {"rate", "pitch", "range", "word_gap", "snr_db", "level_dbfs"} <= set(row)
            if split == "unlabeled":
                assert "text" not in row and row["oracle_text"]
            else:
                assert "oracle_text" not in row and row["text"]


def test_audio_is_16k_mono_nonsilent_and_matches_durations(corpus):
    for split in synthetic_corpus.SPLITS:
        for row in _manifest(corpus, split):
            audio, rate = soundfile.read(corpus / split / row["audio"], dtype="float32")
            assert rate == SR and audio.ndim == 1
            assert len(audio) / SR == row["duration"]
            assert 20 * np.log10(np.sqrt(np.mean(audio**2))) == pytest.approx(
                row["level_dbfs"], abs=6.0
            )  # fmt: skip  (peak limiting may lower it)
            assert 0.01 < np.max(np.abs(audio)) <= 0.99


def test_second_run_is_a_no_op(corpus):
    mtimes = {p: p.stat().st_mtime_ns for p in corpus.rglob("*")}
    info, made = synthetic_corpus.make_corpus(corpus, preset="tiny", seed=0, jobs=2)
    assert not made and info == json.loads((corpus / "corpus.json").read_text())
    assert {p: p.stat().st_mtime_ns for p in corpus.rglob("*")} == mtimes


def test_other_parameters_into_a_complete_corpus_is_an_error(corpus):
    with pytest.raises(synthetic_corpus.CorpusError, match="other parameters"):
        synthetic_corpus.make_corpus(corpus, preset="tiny", seed=1)


def test_interrupted_run_resumes_to_the_same_output(corpus, tmp_path):
    """A run killed after some blocks leaves no corpus.json; the next run finishes the rest."""
    plan = synthetic_corpus.plan_corpus(synthetic_corpus.PRESETS["tiny"], 0, None)
    config = augment.AugmentConfig()
    params = synthetic_corpus._parameters("tiny", 0, None, config)
    stray = tmp_path / "labeled" / "audio" / "left-by-another-run.flac"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"")
    synthetic_corpus._start_partial(tmp_path, params)
    assert not stray.exists()
    blocks = synthetic_corpus._blocks(plan, synthetic_corpus.PRESETS["tiny"].block_size)
    synthetic_corpus._run_blocks(tmp_path, blocks[:2], 0, config, jobs=1, progress=False)
    assert sorted(p.name for p in (tmp_path / ".partial").glob("block-*")) == [
        "block-00000.json", "block-00001.json"]  # fmt: skip
    assert not (tmp_path / "corpus.json").exists()
    _, made = synthetic_corpus.make_corpus(tmp_path, preset="tiny", seed=0, progress=False)
    assert made and _tree_hash(tmp_path) == _tree_hash(corpus)


def test_command_prints_summary_and_reports_errors(corpus, capsys):
    argv = ["make-corpus", "--preset=tiny", f"--output_dir={corpus}"]
    try:
        flags.FLAGS(argv)
        assert make_corpus_command.main(argv[:1]) == 0
        assert "already complete" in capsys.readouterr().out
        flags.FLAGS(argv + ["--seed=3"])
        assert make_corpus_command.main(argv[:1]) == 1
        assert "other parameters" in capsys.readouterr().err
        flags.FLAGS(argv + ["--snr_db_range=9,x"])
        assert make_corpus_command.main(argv[:1]) == 2  # a usage error
        assert "--snr_db_range" in capsys.readouterr().err
    finally:
        flags.FLAGS.unparse_flags()


# --- the closed-vocabulary preset of the data-efficiency claim ----------------------------------


def test_closed_preset_plan_keeps_text_only_sentences_out_of_every_split():
    preset = synthetic_corpus.PRESETS["closed"]
    plan = synthetic_corpus.plan_corpus(preset, 0, preset.word_vocab_size)
    text_only = synthetic_corpus.text_only_sentences(preset, 0, preset.word_vocab_size)
    by_split = {split: [u for u in plan if u.split == split] for split in synthetic_corpus.SPLITS}
    assert {s: len(u) for s, u in by_split.items()} == preset.split_sizes()
    texts = {split: {u.sentence.text for u in utts} for split, utts in by_split.items()}
    assert len(texts["unlabeled"]) == preset.unlabeled_sentences < preset.unlabeled
    assert len(texts["labeled"]) == preset.labeled  # sentences repeat in unlabeled only
    only = {s.text for s in text_only}
    assert len(only) == len(text_only) == preset.text_only
    for split, spoken in texts.items():
        assert not spoken & only, split
        for other in synthetic_corpus.SPLITS:
            if other != split and {split, other} != {"test", "test_clean"}:
                assert not spoken & texts[other], (split, other)
    vocab = sentences.top_words(preset.word_vocab_size)
    assert all(set(text.split()) <= vocab for text in only | set().union(*texts.values()))
    held_out = {u.speaker.speaker_id for u in by_split["test"]}
    assert len(held_out) == preset.test_speakers == 32


def test_presets_without_the_new_fields_keep_their_recorded_sizes():
    """Corpora made before `text_only` existed match their corpus.json parameters."""
    assert set(synthetic_corpus.PRESETS["small"].to_json()) == {
        "labeled", "unlabeled", "dev", "test", "train_speakers", "dev_speakers",
        "test_speakers", "block_size",
    }  # fmt: skip
    assert synthetic_corpus.PRESETS["closed"].to_json()["text_only"] == 1292


def test_text_only_file_is_written_last_with_the_corpus(tmp_path, monkeypatch):
    tiny = synthetic_corpus.PRESETS["tiny"]
    with_text = dataclasses.replace(tiny, unlabeled_sentences=10, text_only=5)
    monkeypatch.setitem(synthetic_corpus.PRESETS, "tiny_text", with_text)
    info, made = synthetic_corpus.make_corpus(
        tmp_path, preset="tiny_text", seed=0, jobs=1, progress=False
    )
    assert made and info["text_only"] == {"file": "text_only.txt", "num_sentences": 5}
    lines = (tmp_path / synthetic_corpus.TEXT_ONLY_FILE).read_text().splitlines()
    expected = synthetic_corpus.text_only_sentences(with_text, 0, None)
    assert lines == [s.text for s in expected]
    oracle = [row["oracle_text"] for row in _manifest(tmp_path, "unlabeled")]
    assert len(oracle) == 20 and len(set(oracle)) == 10
