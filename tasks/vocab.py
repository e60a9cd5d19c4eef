"""Transcript normalisation and the sentencepiece vocabulary of a corpus.

Every transcript is normalised the same way before it is tokenised, counted into a
vocabulary or scored, for text in any script:

1. Unicode NFKC_Casefold: default-ignorable code points (soft hyphen, zero-width spaces and
   joiners, bidi marks, variation selectors) are removed, then NFKC, case folding
   (`str.casefold`: 'Straße' -> 'strasse', final sigma -> sigma), NFKC again;
2. the typographic apostrophes U+2019 and U+02BC become `'`;
3. every run of characters that are not letters, marks or numbers (Unicode categories L*, M*,
   N*) or `'` becomes one space (so vowel signs and viramas stay inside their words); ends
   are stripped.

So 'Café, naïve résumé!' -> 'café naïve résumé' and 'नमस्ते दुनिया।' keeps its words; on
ASCII text the rule is the earlier one (lower-case, every character outside `[a-z0-9']`
becomes a space). `normalize_text` (Python) and `normalize_text_tf` (TensorFlow, used inside
tasks: tensorflow-text's NFKC_Casefold and RE2 classes) implement the same rule.

Vocabularies are unigram sentencepiece models (the recipe's 1024 word pieces) with the
ids seqio expects: 0 = pad (also the CTC blank), 1 = eos, 2 = unk, no bos. They live at
`<data_dir>/vocab/<corpus>_<vocab_size>.model`, where `vocab_size` is the size asked for.
"""

import os
import pathlib
from collections.abc import Iterable

from bigssl_jax import paths
from bigssl_jax.data.vocabulary import (  # noqa: F401  (the core's, re-exported)
    EOS_ID,
    PAD_ID,
    UNK_ID,
    get_vocabulary,
    normalize_text,
    normalize_text_tf,
)

DEFAULT_VOCAB_SIZE = 1024


def vocab_path(data_dir: os.PathLike, corpus: str, vocab_size: int = DEFAULT_VOCAB_SIZE):
    """Where `bigssl vocab` writes the model of `corpus` with `vocab_size` pieces."""
    return paths.vocab_dir(data_dir) / f"{corpus}_{vocab_size}.model"


def train_vocabulary(
    texts: Iterable[str], model_path: os.PathLike, *, vocab_size: int = DEFAULT_VOCAB_SIZE
) -> int:
    """Trains a unigram sentencepiece model on normalised `texts`.

    `vocab_size` is a soft limit (`hard_vocab_limit=False`): a corpus too small to
    support that many pieces yields a smaller vocabulary instead of an error. The
    alphabet is fully covered (`character_coverage=1.0`) and the model's own NFKC
    normalisation leaves normalised text unchanged, so `decode(encode(normalize_text(t)))`
    is the identity.

    Args:
      texts: transcripts (normalised here).
      model_path: output `<prefix>.model`; `<prefix>.vocab` is written beside it.
      vocab_size: number of pieces asked for, special ids included.

    Returns:
      The number of pieces the model actually has.
    """
    import sentencepiece as spm

    sentences = [t for t in (normalize_text(t) for t in texts) if t]
    if not sentences:
        raise ValueError(f"no transcripts to train a vocabulary for {model_path}")
    model_path = pathlib.Path(model_path)
    if model_path.suffix != ".model":
        raise ValueError(f"vocabulary path must end in .model, got {model_path}")
    model_path.parent.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_prefix=str(model_path.with_suffix("")),
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        character_coverage=1.0,
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        bos_id=-1,
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
    )
    return spm.SentencePieceProcessor(model_file=str(model_path)).get_piece_size()


def read_transcripts(files) -> list[str]:
    """The `text` field of every record in TFRecord `files`."""
    import tensorflow as tf

    spec = {"text": tf.io.FixedLenFeature([], tf.string)}
    dataset = (
        tf.data.TFRecordDataset(list(files))
        .batch(1024)
        .map(lambda records: tf.io.parse_example(records, spec)["text"])
    )
    return [text.decode("utf-8") for batch in dataset.as_numpy_iterator() for text in batch]
