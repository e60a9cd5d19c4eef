"""Transcript normalisation, the token ids every vocabulary uses, and loading a vocabulary.

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

Vocabularies are unigram sentencepiece models (trained by `bigssl vocab`,
`bigssl_tasks.vocab.train_vocabulary`) with the ids seqio expects: 0 = pad (also the CTC
blank and a language model's start symbol), 1 = eos, 2 = unk, no bos. The core (models,
decoding, scoring, pseudo-labeling) reads them from here; `bigssl_tasks` builds its tasks
on the same ids.
"""

import functools
import re
import unicodedata

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2

# Default_Ignorable_Code_Point (Unicode DerivedCoreProperties), which NFKC_Casefold removes.
_DEFAULT_IGNORABLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)
_APOSTROPHES = "[\u2019\u02bc]"
_KEPT_CATEGORIES = frozenset("LMN")  # letters, marks, numbers (first letter of the category)
_OUTSIDE_ALPHABET_RE2 = r"[^\pL\pM\pN']+"


def _word_character(char: str) -> bool:
    """Whether `char` stays in a word: a letter, mark or number, or the apostrophe."""
    return char == "'" or unicodedata.category(char)[0] in _KEPT_CATEGORIES


def normalize_text(text: str) -> str:
    """Normalises one transcript (see the module docstring)."""
    text = unicodedata.normalize("NFKC", _DEFAULT_IGNORABLE.sub("", text))
    text = re.sub(_APOSTROPHES, "'", unicodedata.normalize("NFKC", text.casefold()))
    return " ".join("".join(c if _word_character(c) else " " for c in text).split())


def normalize_text_tf(text):
    """`normalize_text` on a tf.string tensor of any shape."""
    import tensorflow as tf
    import tensorflow_text as tf_text

    text = tf_text.case_fold_utf8(text)  # NFKC_Casefold
    text = tf.strings.regex_replace(text, _APOSTROPHES, "'")
    text = tf.strings.regex_replace(text, _OUTSIDE_ALPHABET_RE2, " ")
    return tf.strings.strip(text)


@functools.cache
def get_vocabulary(model_path: str):
    """The `seqio.SentencePieceVocabulary` of a trained model (one object per path)."""
    import seqio

    return seqio.SentencePieceVocabulary(str(model_path))
