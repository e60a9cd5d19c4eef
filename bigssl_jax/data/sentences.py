"""The public-domain sentences that the synthetic corpus speaks.

`sentence_lists/` holds the 720 Harvard sentences (IEEE 1969) and ~16.8k sentences of 4-20
words from Jane Austen's six novels (provenance in `sentence_lists/README.md`). Each line is
written text with punctuation (it shapes the synthetic prosody); `normalize` turns it into the
transcript: lowercase letters (of any script: NFKC, case-folded), word-internal apostrophes
and single spaces. The lists are ASCII, where that is lowercase a-z.

The vocabulary knob controls difficulty: `load_sentences(vocab_size=N)` keeps only sentences
whose words are all among the N most frequent words of the whole list.
"""

import collections
import dataclasses
import functools
import pathlib
import re
import unicodedata

SENTENCE_DIR = pathlib.Path(__file__).resolve().parent / "sentence_lists"
SOURCES = ("harvard", "austen")

_QUOTE = re.compile(r"(?<![^\W\d_])'|'(?![^\W\d_])")  # an apostrophe not between letters


@dataclasses.dataclass(frozen=True)
class Sentence:
    """One sentence: what the synthesiser reads and what the transcript says.

    Attributes:
      spoken: the text handed to the synthesiser (cased, punctuated).
      text: the normalised transcript (`normalize(spoken)`).
      source: the list it came from (`harvard` or `austen`).
    """

    spoken: str
    text: str
    source: str


def _kept(char: str) -> bool:
    """Whether `char` stays in a transcript: a letter or mark of any script, `'` or a space."""
    return char in "' " or unicodedata.category(char)[0] in "LM"


def normalize(text: str) -> str:
    """Transcript form: lowercase letters, word-internal apostrophes, single spaces.

    Letters of any script are kept (NFKC, then case-folded); hyphens, digits and other
    punctuation become word breaks; quote marks are dropped. On ASCII text: lowercase a-z.
    """
    text = unicodedata.normalize("NFKC", text).casefold().replace("-", " ")
    text = _QUOTE.sub(" ", text)
    return " ".join("".join(c if _kept(c) else " " for c in text).split())


@functools.cache
def _all_sentences() -> tuple[Sentence, ...]:
    sentences, seen = [], set()
    for source in SOURCES:
        lines = (SENTENCE_DIR / f"{source}.txt").read_text(encoding="utf-8").splitlines()
        for line in lines:
            text = normalize(line)
            if text and text not in seen:
                seen.add(text)
                sentences.append(Sentence(spoken=line.strip(), text=text, source=source))
    return tuple(sentences)


def word_counts() -> collections.Counter:
    """How often each word occurs over all shipped sentences."""
    return collections.Counter(word for s in _all_sentences() for word in s.text.split())


def top_words(vocab_size: int) -> frozenset[str]:
    """The `vocab_size` most frequent words (ties broken alphabetically, so it is stable)."""
    ranked = sorted(word_counts().items(), key=lambda item: (-item[1], item[0]))
    return frozenset(word for word, _ in ranked[:vocab_size])


def load_sentences(vocab_size: int | None = None) -> tuple[Sentence, ...]:
    """All shipped sentences (unique transcripts, file order), optionally vocabulary-limited.

    Args:
      vocab_size: if set, keep only sentences whose words all lie in `top_words(vocab_size)`.

    Returns:
      The sentences, Harvard first, then Austen.
    """
    sentences = _all_sentences()
    if vocab_size is None:
        return sentences
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    vocab = top_words(vocab_size)
    return tuple(s for s in sentences if all(word in vocab for word in s.text.split()))
