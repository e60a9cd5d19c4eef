"""Transcript normalisation, the token ids every vocabulary uses, and loading a vocabulary.

Every transcript is normalised the same way before it is tokenised, counted into a
vocabulary or scored: lower-case, every character outside `[a-z0-9']` becomes a space,
runs of spaces collapse to one, ends are stripped. `normalize_text` (Python) and
`normalize_text_tf` (TensorFlow, used inside tasks) implement the same rule.

Vocabularies are unigram sentencepiece models (trained by `bigssl vocab`,
`bigssl_tasks.vocab.train_vocabulary`) with the ids seqio expects: 0 = pad (also the CTC
blank and a language model's start symbol), 1 = eos, 2 = unk, no bos. The core (models,
decoding, scoring, pseudo-labeling) reads them from here; `bigssl_tasks` builds its tasks
on the same ids.
"""

import functools
import re

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2

_OUTSIDE_ALPHABET = r"[^a-z0-9']+"


def normalize_text(text: str) -> str:
    """Normalises one transcript (see the module docstring)."""
    return " ".join(re.sub(_OUTSIDE_ALPHABET, " ", text.lower()).split())


def normalize_text_tf(text):
    """`normalize_text` on a tf.string tensor of any shape."""
    import tensorflow as tf

    text = tf.strings.lower(text, encoding="utf-8")
    text = tf.strings.regex_replace(text, _OUTSIDE_ALPHABET, " ")
    text = tf.strings.regex_replace(text, " +", " ")
    return tf.strings.strip(text)


@functools.cache
def get_vocabulary(model_path: str):
    """The `seqio.SentencePieceVocabulary` of a trained model (one object per path)."""
    import seqio

    return seqio.SentencePieceVocabulary(str(model_path))
