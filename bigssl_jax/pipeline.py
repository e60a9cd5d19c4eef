"""The main job: every stage of the BigSSL recipe on the embedded corpus, resumable.

    bigssl pipeline --preset=demo

Stages run in order; each one finds its own finished output and skips (a re-run after an
interruption picks up where it stopped):

1. corpus:  synthesise the embedded corpus (`bigssl make-corpus`).
2. prepare: TFRecord shards + registry entry for every split (`bigssl prepare --embedded`).
3. vocab:   sentencepiece model on the labeled transcripts (`bigssl vocab`).
4. batches: one batch of the labeled and of the unlabeled seqio task (`bigssl show-batches`).

Pre-training, fine-tuning, pseudo-labeling and student training join as their stages land.
"""

import dataclasses
import os
import time

from bigssl_jax import paths
from bigssl_jax.data import prepare, synthetic_corpus
from bigssl_jax.data import registry as registry_lib


@dataclasses.dataclass(frozen=True, kw_only=True)
class PipelinePreset:
    """What one pipeline preset runs on.

    Attributes:
      corpus_preset: the `bigssl make-corpus` preset of the embedded corpus.
      vocab_size: sentencepiece pieces asked for (a soft limit on small corpora).
      batch_size: batch size of the batches shown.
    """

    corpus_preset: str
    vocab_size: int = 1024
    batch_size: int = 8


PRESETS = {
    "smoke": PipelinePreset(corpus_preset="tiny", batch_size=4),
    "demo": PipelinePreset(corpus_preset="small"),
}


def _stage(name: str, message: str, start: float) -> None:
    print(f"[{name}] {message} ({time.perf_counter() - start:.1f} s)", flush=True)


def run(preset_name: str, *, data_dir: os.PathLike, seed: int = 0, jobs: int = 1) -> int:
    """Runs every stage of `preset_name`; returns the exit code (0 = all stages done)."""
    from bigssl_jax.commands import show_batches
    from bigssl_tasks import vocab

    preset = PRESETS[preset_name]
    root = paths.embedded_corpus_dir(data_dir, preset.corpus_preset)

    start = time.perf_counter()
    info, made = synthetic_corpus.make_corpus(
        root, preset=preset.corpus_preset, seed=seed, jobs=jobs
    )
    hours = sum(split["hours"] for split in info["splits"].values())
    _stage("corpus", f"{'made' if made else 'found'} {root} ({hours:.2f} h of audio)", start)

    start = time.perf_counter()
    reports = prepare.prepare_embedded(root, data_dir=data_dir)
    corpus = reports[0].corpus
    for report in reports:
        _stage("prepare", report.summary(), start)

    start = time.perf_counter()
    model = vocab.vocab_path(data_dir, corpus, preset.vocab_size)
    if model.exists():
        _stage("vocab", f"found {model}", start)
    else:
        registry = registry_lib.CorpusRegistry(paths.registry_path(data_dir))
        texts = vocab.read_transcripts(registry.split(corpus, "labeled").files)
        size = vocab.train_vocabulary(texts, model, vocab_size=preset.vocab_size)
        _stage("vocab", f"wrote {model}: {size} pieces from {len(texts)} transcripts", start)

    for kind in ("labeled", "unlabeled"):
        status = show_batches.show_batches(
            corpus,
            data_dir=data_dir,
            task=f"{corpus}_{kind}_{kind}",
            num_batches=1,
            batch_size=preset.batch_size,
            vocab_size=preset.vocab_size,
        )
        if status:
            return status
    return 0
