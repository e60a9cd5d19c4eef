"""The embedded corpus: synthetic speech made offline with eSpeak NG (`bigssl make-corpus`).

Layout under the output directory:

    corpus.json                     preset, seed, parameters, per-split counts and hours
    <split>/manifest.jsonl          one JSON object per utterance (fields below)
    <split>/audio/<id>.flac         16 kHz mono PCM_16

    text_only.txt                   sentences spoken in no split (presets with `text_only`)

Splits: `labeled` and `unlabeled` share the training speakers; `dev` and `test` each have
their own held-out speakers; `test_clean` is `test` again (same speakers, same sentences, same
utterance order) with no speed, reverb, telephone or noise augmentation, so the two give a paired
clean-versus-noisy comparison. Apart from that pair, no sentence appears in two splits; a preset
with `unlabeled_sentences` repeats sentences inside the unlabeled split only (other speakers,
other draws). `text_only.txt` holds further sentences, one normalised transcript a line, spoken
in no split: text for tokenizers and language models that has never been heard.

Manifest fields: `id`, `audio` (path relative to the manifest's folder), `duration` (s),
`speaker`, `text` (labeled/dev/test/test_clean) or `oracle_text` (unlabeled: the transcript under
a name that training never reads), `source` (sentence list), `accent`, `voice` (espeak variant),
`rate`, `pitch`, `range`, `word_gap`, and the augmentation record (`speed`, `pad_start`,
`pad_end`, `reverb` (RT60 s or null), `telephone`, `noise`, `snr_db` (or null), `level_dbfs`).

Reproducibility: the plan (speakers, sentences, splits) is drawn from `seed` alone. Utterances
are synthesised in fixed blocks, each in a fresh process (espeak carries state between calls);
every random draw for utterance i comes from a generator seeded by (seed, i); babble noise is
made from the other clean utterances of the same block (hence of the same split). So the output
is byte-identical for a given seed and parameters, whatever the number of workers. Blocks finish
into `.partial/` (an interrupted run resumes there); manifests and then `corpus.json` are written
last, atomically, so a corpus with a `corpus.json` is complete.
"""

import dataclasses
import json
import multiprocessing
import os
import pathlib
import shutil
import sys

import numpy as np

from bigssl_jax.data import augment, espeak, sentences

SAMPLE_RATE = 16000
SPLITS = ("labeled", "unlabeled", "dev", "test", "test_clean")
TEXT_ONLY_FILE = "text_only.txt"
UNLABELED_SPLITS = ("unlabeled",)
CORPUS_FILE = "corpus.json"
FORMAT_VERSION = 1
_PARTIAL = ".partial"
_STREAM_SPEAKERS, _STREAM_PLAN, _STREAM_UTTERANCE, _STREAM_ESPEAK = 1, 2, 3, 4


class CorpusError(ValueError):
    """A request the corpus maker cannot satisfy (bad preset, too few sentences, clash)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preset:
    """Sizes of one corpus preset (`test_clean` has as many utterances as `test`).

    Attributes:
      labeled, unlabeled, dev, test: utterances per split.
      train_speakers: speakers shared by labeled and unlabeled.
      dev_speakers, test_speakers: held-out speakers of dev and of test/test_clean.
      block_size: utterances per synthesis process (fixed, so output never depends on workers).
      word_vocab_size: keep only sentences within this many most frequent words (None: all);
        `make_corpus(vocab_size=...)` overrides it.
      unlabeled_sentences: distinct sentences the unlabeled split speaks, each about
        `unlabeled / unlabeled_sentences` times (None: one per utterance).
      text_only: sentences of `text_only.txt` (spoken in no split).
      noise_prob, reverb_prob: chances of additive noise and of room reverb for the
        augmented splits (None: `AugmentConfig`'s 0.7 and 0.3).
    """

    labeled: int
    unlabeled: int
    dev: int
    test: int
    train_speakers: int
    dev_speakers: int
    test_speakers: int
    block_size: int = 64
    word_vocab_size: int | None = None
    unlabeled_sentences: int | None = None
    text_only: int = 0
    noise_prob: float | None = None
    reverb_prob: float | None = None

    def split_sizes(self) -> dict[str, int]:
        return {"labeled": self.labeled, "unlabeled": self.unlabeled, "dev": self.dev,
                "test": self.test, "test_clean": self.test}  # fmt: skip

    def split_sentences(self) -> dict[str, int]:
        """Distinct sentences each spoken split draws from the pool (test_clean reuses test's)."""
        sizes = self.split_sizes()
        del sizes["test_clean"]
        sizes["unlabeled"] = self.unlabeled_sentences or self.unlabeled
        return sizes

    def to_json(self) -> dict:
        """The sizes as `corpus.json` records them; the optional fields only when set, so
        corpora made before they existed keep their parameters."""
        optional = {"word_vocab_size": None, "unlabeled_sentences": None, "text_only": 0,
                    "noise_prob": None, "reverb_prob": None}  # fmt: skip
        return {
            key: value
            for key, value in dataclasses.asdict(self).items()
            if key not in optional or value != optional[key]
        }


PRESETS = {
    "tiny": Preset(labeled=12, unlabeled=20, dev=8, test=8, train_speakers=8, dev_speakers=4,
                   test_speakers=4, block_size=16, text_only=200),
    "small": Preset(labeled=500, unlabeled=1550, dev=150, test=150, train_speakers=96,
                    dev_speakers=16, test_speakers=16),
    "medium": Preset(labeled=1200, unlabeled=3800, dev=300, test=300, train_speakers=192,
                     dev_speakers=24, test_speakers=24),
    # Made for the data-efficiency claim: 1,000 words (so a letter model can spell the test
    # words from its labels), a 2,000-utterance labeled pool (10% = 200 utterances, ~12 min),
    # unlabeled audio 12x that, 300-utterance dev / test from 32 held-out speakers each, and
    # 1,292 text-only sentences (all the rest of the 5,092 the vocabulary allows) for the
    # tokenizer and the LM. Half the default chances of noise and reverb: with 70% / 30% the
    # supervised arms had not left the CTC blank plateau after 2,000 steps (docs/claim.md).
    "closed": Preset(labeled=2000, unlabeled=2400, dev=300, test=300, train_speakers=128,
                     dev_speakers=32, test_speakers=32, word_vocab_size=1000,
                     unlabeled_sentences=1200, text_only=1292, noise_prob=0.35,
                     reverb_prob=0.15),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Speaker:
    """A named synthetic speaker."""

    speaker_id: str
    voice: espeak.Voice


@dataclasses.dataclass(frozen=True)
class Utterance:
    """One planned utterance.

    Attributes:
      index: position in the corpus plan; seeds the utterance's augmentation draws.
      utterance_id: `<split>-<number>`.
      split: one of `SPLITS`.
      speaker: who says it.
      sentence: what is said.
      synth_seed: espeak's noise seed (a `test_clean` utterance shares its `test` twin's).
    """

    index: int
    utterance_id: str
    split: str
    speaker: Speaker
    sentence: sentences.Sentence
    synth_seed: int


def draw_voices(rng: np.random.Generator, count: int) -> list[espeak.Voice]:
    """`count` distinct voices; accents cycle through `espeak.ACCENTS` in a random order.

    Rate ~ U{140..210} wpm, pitch ~ U{25..75}, range ~ U{20..90}, word gap ~ U{0..3} (x10 ms),
    variant uniform over `espeak.VARIANTS`.
    """
    accents = [espeak.ACCENTS[i] for i in rng.permutation(len(espeak.ACCENTS))]
    voices: list[espeak.Voice] = []
    while len(voices) < count:
        voice = espeak.Voice(
            accent=accents[len(voices) % len(accents)],
            variant=espeak.VARIANTS[int(rng.integers(len(espeak.VARIANTS)))],
            rate=int(rng.integers(140, 211)),
            pitch=int(rng.integers(25, 76)),
            range=int(rng.integers(20, 91)),
            word_gap=int(rng.integers(0, 4)),
        )
        if voice not in voices:
            voices.append(voice)
    return voices


def plan_corpus(preset: Preset, seed: int, vocab_size: int | None) -> list[Utterance]:
    """Every utterance of the corpus, in split order (a pure function of its arguments)."""
    return _plan(preset, seed, vocab_size)[0]


def text_only_sentences(
    preset: Preset, seed: int, vocab_size: int | None
) -> list[sentences.Sentence]:
    """The preset's `text_only` sentences: drawn with the plan, spoken in no split."""
    return _plan(preset, seed, vocab_size)[1]


def _plan(preset: Preset, seed: int, vocab_size: int | None):
    """(utterances in split order, text-only sentences); see `plan_corpus`."""
    counts = {"tr": preset.train_speakers, "dv": preset.dev_speakers, "ts": preset.test_speakers}
    voices = iter(draw_voices(_rng(seed, _STREAM_SPEAKERS, 0), sum(counts.values())))
    groups = {
        prefix: [Speaker(f"{prefix}{i:03d}", next(voices)) for i in range(count)]
        for prefix, count in counts.items()
    }
    pool = sentences.load_sentences(vocab_size)
    sizes, distinct = preset.split_sizes(), preset.split_sentences()
    needed = sum(distinct.values()) + preset.text_only
    if len(pool) < needed:
        raise CorpusError(
            f"vocab_size={vocab_size} leaves {len(pool)} sentences; this preset needs {needed}"
        )
    rng = _rng(seed, _STREAM_PLAN, 0)
    order = rng.permutation(len(pool))
    start, plan = 0, []
    for split in SPLITS[:4]:
        group = groups[{"labeled": "tr", "unlabeled": "tr", "dev": "dv", "test": "ts"}[split]]
        turns = rng.permutation(sizes[split]) % len(group)
        for k in range(sizes[split]):
            plan.append((split, k, group[turns[k]], pool[order[start + k % distinct[split]]]))
        start += distinct[split]
    text_only = [pool[i] for i in order[start : start + preset.text_only]]
    synth_seeds = [int(_rng(seed, _STREAM_ESPEAK, i).integers(2**31)) for i in range(len(plan))]
    twins = [(i, k, spk, sent) for i, (split, k, spk, sent) in enumerate(plan) if split == "test"]
    plan += [("test_clean", k, spk, sent) for _, k, spk, sent in twins]
    synth_seeds += [synth_seeds[i] for i, *_ in twins]
    utterances = [
        Utterance(i, f"{split}-{k:05d}", split, spk, sent, synth_seeds[i])
        for i, (split, k, spk, sent) in enumerate(plan)
    ]
    return utterances, text_only


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index])


def _blocks(plan: list[Utterance], block_size: int) -> list[list[Utterance]]:
    """Consecutive utterances of one split, at most `block_size` per block."""
    blocks: list[list[Utterance]] = []
    for utt in plan:
        if not blocks or blocks[-1][-1].split != utt.split or len(blocks[-1]) == block_size:
            blocks.append([])
        blocks[-1].append(utt)
    return blocks


def _synthesize_block(task) -> tuple[int, list[dict]]:
    """Worker: synthesises, augments and writes one block; returns its manifest rows."""
    block_id, utterances, out_dir, seed, config = task
    out_dir = pathlib.Path(out_dir)
    clean = []
    for utt in utterances:
        raw = espeak.synthesize(utt.sentence.spoken, utt.speaker.voice, seed=utt.synth_seed)
        clean.append(augment.resample(raw / 32768.0, espeak.sample_rate(), SAMPLE_RATE))
    rows = []
    for i, utt in enumerate(utterances):
        split_config = config.clean() if utt.split == "test_clean" else config
        talkers = [audio for j, audio in enumerate(clean) if j != i]
        audio, record = augment.augment(
            clean[i], SAMPLE_RATE, _rng(seed, _STREAM_UTTERANCE, utt.index), split_config,
            babble_talkers=talkers,
        )  # fmt: skip
        pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)
        rel_path = f"audio/{utt.utterance_id}.flac"
        _write_flac(out_dir / utt.split / rel_path, pcm)
        rows.append(_manifest_row(utt, rel_path, len(pcm), record))
    return block_id, rows


def _write_flac(path: pathlib.Path, pcm: np.ndarray) -> None:
    import soundfile

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    soundfile.write(tmp, pcm, SAMPLE_RATE, subtype="PCM_16", format="FLAC")
    os.replace(tmp, path)


def _manifest_row(utt: Utterance, rel_path: str, num_samples: int, record: dict) -> dict:
    text_key = "oracle_text" if utt.split in UNLABELED_SPLITS else "text"
    voice = utt.speaker.voice
    return {
        "id": utt.utterance_id, "audio": rel_path, "duration": num_samples / SAMPLE_RATE,
        "speaker": utt.speaker.speaker_id, text_key: utt.sentence.text,
        "source": utt.sentence.source, "accent": voice.accent, "voice": voice.variant,
        "rate": voice.rate, "pitch": voice.pitch, "range": voice.range,
        "word_gap": voice.word_gap, **record,
    }  # fmt: skip


def _atomic_write(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _augment_config(sizes: Preset) -> augment.AugmentConfig:
    """`AugmentConfig` with the preset's noise and reverb chances where it sets them."""
    overrides = {"noise_prob": sizes.noise_prob, "reverb_prob": sizes.reverb_prob}
    return augment.AugmentConfig(**{k: v for k, v in overrides.items() if v is not None})


def _parameters(preset_name: str, seed: int, vocab_size, config: augment.AugmentConfig) -> dict:
    """Everything the output depends on, as it reads back from JSON."""
    params = {
        "format_version": FORMAT_VERSION, "preset": preset_name, "seed": seed,
        "vocab_size": vocab_size, "sample_rate": SAMPLE_RATE,
        "sizes": PRESETS[preset_name].to_json(),
        "augment": dataclasses.asdict(config), "accents": list(espeak.ACCENTS),
        "variants": list(espeak.VARIANTS),
    }  # fmt: skip
    return json.loads(json.dumps(params))


def _existing_corpus(out_dir: pathlib.Path, params: dict) -> dict | None:
    """The corpus.json of a complete corpus made with `params`, None if there is none."""
    info_path = out_dir / CORPUS_FILE
    if not info_path.exists():
        return None
    info = json.loads(info_path.read_text())
    if info.get("parameters") != params:
        raise CorpusError(
            f"{out_dir} already holds a corpus made with other parameters; "
            "delete it or choose another --output_dir"
        )
    return info


def _start_partial(out_dir: pathlib.Path, params: dict) -> None:
    """Keeps the finished blocks of an interrupted run with the same `params`; otherwise clears
    whatever an incomplete corpus left (split folders and `.partial/`)."""
    partial = out_dir / _PARTIAL
    plan_file = partial / "parameters.json"
    if not plan_file.exists() or json.loads(plan_file.read_text()) != params:
        for name in (*SPLITS, _PARTIAL):
            shutil.rmtree(out_dir / name, ignore_errors=True)
    partial.mkdir(parents=True, exist_ok=True)
    _atomic_write(plan_file, json.dumps(params))


def make_corpus(
    output_dir: os.PathLike,
    *,
    preset: str = "tiny",
    seed: int = 0,
    jobs: int = 1,
    vocab_size: int | None = None,
    snr_db_range: tuple[float, float] | None = None,
    progress: bool = True,
) -> tuple[dict, bool]:
    """Makes (or finds complete) the corpus of `preset` under `output_dir`.

    Args:
      output_dir: where the corpus goes (see the module docstring for the layout).
      preset: a key of `PRESETS`.
      seed: decides speakers, sentences, splits and every augmentation draw.
      jobs: worker processes (the output does not depend on it).
      vocab_size: keep only sentences within the N most frequent words (None: the preset's
        `word_vocab_size`).
      snr_db_range: (min, max) SNR of additive noise (default `AugmentConfig`'s 5-25 dB).
      progress: show a tqdm progress bar on stderr.

    Returns:
      (the corpus.json content, whether this call made it (False: it was already complete)).
    """
    if preset not in PRESETS:
        raise CorpusError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
    if vocab_size is None:
        vocab_size = PRESETS[preset].word_vocab_size
    config = _augment_config(PRESETS[preset])
    if snr_db_range is not None:
        config = dataclasses.replace(config, snr_db_range=tuple(map(float, snr_db_range)))
    out_dir = pathlib.Path(output_dir)
    params = _parameters(preset, seed, vocab_size, config)
    existing = _existing_corpus(out_dir, params)
    if existing is not None:
        return existing, False
    plan, text_only = _plan(PRESETS[preset], seed, vocab_size)
    _start_partial(out_dir, params)
    rows = _run_blocks(out_dir, _blocks(plan, PRESETS[preset].block_size), seed, config,
                       jobs=jobs, progress=progress)  # fmt: skip
    info = {"parameters": params, "splits": {}}
    for split in SPLITS:
        split_rows = rows[split]
        lines = "".join(json.dumps(row, sort_keys=True) + "\n" for row in split_rows)
        _atomic_write(out_dir / split / "manifest.jsonl", lines)
        info["splits"][split] = {
            "manifest": f"{split}/manifest.jsonl", "num_utterances": len(split_rows),
            "hours": round(sum(row["duration"] for row in split_rows) / 3600, 4),
            "num_speakers": len({row["speaker"] for row in split_rows}),
            "labeled": split not in UNLABELED_SPLITS,
        }  # fmt: skip
    if text_only:
        _atomic_write(out_dir / TEXT_ONLY_FILE, "".join(f"{s.text}\n" for s in text_only))
        info["text_only"] = {"file": TEXT_ONLY_FILE, "num_sentences": len(text_only)}
    _atomic_write(out_dir / CORPUS_FILE, json.dumps(info, indent=2) + "\n")
    shutil.rmtree(out_dir / _PARTIAL)
    return info, True


def _run_blocks(out_dir, blocks, seed, config, *, jobs: int, progress: bool) -> dict:
    """Runs the blocks not already in `.partial/`, each in a fresh process.

    Returns:
      split -> its manifest rows, in plan order.
    """
    from tqdm import tqdm

    done = {}
    for i in range(len(blocks)):
        path = out_dir / _PARTIAL / f"block-{i:05d}.json"
        if path.exists():
            done[i] = json.loads(path.read_text())
    todo = [(i, b, str(out_dir), seed, config) for i, b in enumerate(blocks) if i not in done]
    total = sum(len(b) for b in blocks)
    with tqdm(total=total, initial=total - sum(len(t[1]) for t in todo), unit="utt",
              file=sys.stderr, disable=not progress, desc="make-corpus") as bar:  # fmt: skip
        if todo:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([__name__])
            # maxtasksperchild=1: every block starts from a process that never ran espeak.
            with context.Pool(min(jobs, len(todo)), maxtasksperchild=1) as pool:
                for i, rows in pool.imap_unordered(_synthesize_block, todo, chunksize=1):
                    _atomic_write(out_dir / _PARTIAL / f"block-{i:05d}.json", json.dumps(rows))
                    done[i] = rows
                    bar.update(len(rows))
    rows = {split: [] for split in SPLITS}
    for i, block in enumerate(blocks):
        rows[block[0].split] += done[i]
    return rows
