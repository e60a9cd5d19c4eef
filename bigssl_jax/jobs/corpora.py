"""The corpora a pipeline trains on: vocabularies and labeled shares of an embedded corpus.

    vocabulary = corpora.ensure_vocabulary(data_dir, "embedded_closed", 64, text_file=...)
    share = corpora.make_labeled_share(data_dir, "embedded_closed", 0.1, root=root, seed=0,
                                       vocab_size=64, vocabulary=vocabulary)
    share.corpus   # 'embedded_closed_f10': 200 labeled utterances, the rest unlabeled

Every function finds its finished output and skips, printing `[stage] message (seconds)`.
"""

import dataclasses
import os
import pathlib
import shutil
import time

from bigssl_jax import paths
from bigssl_jax.data import manifests, prepare, sources, synthetic_corpus
from bigssl_jax.data import registry as registry_lib

EVAL_SPLITS = ("dev", "test", "test_clean")


def print_stage(name: str, message: str, start: float) -> None:
    """`[name] message (seconds since start)`, flushed."""
    print(f"[{name}] {message} ({time.perf_counter() - start:.1f} s)", flush=True)


@dataclasses.dataclass(frozen=True)
class LabeledShare:
    """One derived corpus: `fraction` of the labeled pool labeled.

    Attributes:
      fraction: labeled share of the pool, in (0, 1].
      corpus: its registry name, `<corpus>_f<pct>`.
      utterances: utterances of its labeled split.
      hours: hours of its labeled split.
      draw: which random subset of the pool (0: the one drawn with the data seed alone).
    """

    fraction: float
    corpus: str
    utterances: int
    hours: float
    draw: int = 0

    @property
    def tag(self) -> str:
        return fraction_tag(self.fraction) + (f"_d{self.draw}" if self.draw else "")


def fraction_tag(fraction: float) -> str:
    """`f<percent>`: 0.1 -> 'f10', 1.0 -> 'f100', 0.025 -> 'f2p5'."""
    return "f" + f"{100 * fraction:.6g}".replace(".", "p")


def make_labeled_share(
    data_dir: os.PathLike,
    corpus: str,
    fraction: float,
    *,
    root: os.PathLike,
    seed: int,
    vocab_size: int,
    jobs: int = 1,
    vocabulary: pathlib.Path | None = None,
    draw: int = 0,
) -> LabeledShare:
    """Prepares and registers `<corpus>_f<pct>` (`fraction` of the labeled pool labeled, the
    rest joined to the unlabeled split, dev / test / test_clean registered again) and its
    vocabulary: a copy of `vocabulary` (one unit inventory for every fraction), else one
    trained on its own labeled split.

    Fraction 1 is `corpus` itself: nothing is prepared.

    Args:
      data_dir: the data directory holding the prepared embedded `corpus`.
      corpus: registry name of the embedded corpus prepared from `root`.
      fraction: labeled share of its labeled pool, in (0, 1].
      root: the embedded corpus's folder (`paths.embedded_corpus_dir`).
      seed: seed of the labeled subset.
      vocab_size: pieces of the derived corpus's vocabulary.
      jobs: worker processes writing shards.
      vocabulary: the sentencepiece model every fraction shares, or None.
      draw: which subset: draw 0 is drawn with `seed`, draw d > 0 with (seed, d), as
        `<corpus>_f<pct>_d<d>`.

    Returns:
      The derived corpus (or `corpus`) and the size of its labeled split.
    """
    registry = registry_lib.CorpusRegistry(paths.registry_path(data_dir))
    if fraction == 1.0:
        info = registry.split(corpus, "labeled")
        return LabeledShare(fraction, corpus, info.num_examples, info.hours)
    base = registry.splits(corpus)
    name = f"{corpus}_{LabeledShare(fraction, corpus, 0, 0.0, draw).tag}"
    start = time.perf_counter()
    description = f"{fraction:g} of {corpus}/labeled labeled (seed {seed}, draw {draw})"
    pool = manifests.embedded_sources(root)
    labeled, unlabeled = sources.split_labeled_pool(
        pool["labeled"], pool["unlabeled"], fraction, [seed, draw] if draw else seed
    )
    options = prepare.PrepareOptions(jobs=jobs)
    for split, source in (("labeled", labeled), ("unlabeled", unlabeled)):
        report = prepare.prepare_split(
            source, data_dir=data_dir, corpus=name, split=split, options=options
        )
        print_stage("corpora", report.summary(), start)
    for split in EVAL_SPLITS:
        if split in base:
            registry.register_split(name, split, base[split], source=description)
    info = registry.split(name, "labeled")
    print_stage(
        "corpora", f"{name}: {info.num_examples} labeled utterances ({info.hours:.3f} h)", start
    )
    ensure_vocabulary(data_dir, name, vocab_size, shared=vocabulary)
    return LabeledShare(fraction, name, info.num_examples, info.hours, draw)


def ensure_vocabulary(
    data_dir: os.PathLike,
    corpus: str,
    vocab_size: int,
    *,
    shared: os.PathLike | None = None,
    text_file: os.PathLike | None = None,
) -> pathlib.Path:
    """The sentencepiece model of `corpus`, unless it exists: a copy of `shared`, else
    trained on `text_file`'s sentences (one a line), else on the corpus's labeled
    transcripts."""
    from bigssl_tasks import vocab

    start = time.perf_counter()
    model = vocab.vocab_path(data_dir, corpus, vocab_size)
    if model.exists():
        print_stage("vocab", f"found {model}", start)
        return model
    model.parent.mkdir(parents=True, exist_ok=True)
    if shared is not None:
        tmp = model.with_name(model.name + ".tmp")
        shutil.copyfile(shared, tmp)
        os.replace(tmp, model)
        print_stage("vocab", f"{model}: the shared vocabulary {shared}", start)
        return model
    if text_file is not None:
        texts = pathlib.Path(text_file).read_text(encoding="utf-8").splitlines()
        what = f"text-only sentences of {text_file}"
    else:
        registry = registry_lib.CorpusRegistry(paths.registry_path(data_dir))
        texts = vocab.read_transcripts(registry.split(corpus, "labeled").files)
        what = "labeled transcripts"
    size = vocab.train_vocabulary(texts, model, vocab_size=vocab_size)
    print_stage("vocab", f"wrote {model}: {size} pieces from {len(texts)} {what}", start)
    return model


def text_only_file(root: os.PathLike) -> pathlib.Path | None:
    """The embedded corpus's sentences spoken in no split (tokenizer and LM text), if any."""
    path = pathlib.Path(root) / synthetic_corpus.TEXT_ONLY_FILE
    return path if path.exists() else None
