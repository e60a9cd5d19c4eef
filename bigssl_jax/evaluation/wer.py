"""Word and character error rates of transcripts, scored with jiwer.

References and hypotheses are normalised with `bigssl_tasks.vocab.normalize_text`, the
rule applied to training transcripts (Unicode-aware: letters, marks and numbers of any
script are kept, case-folded), then aligned by Levenshtein distance (jiwer). Rates
are corpus-level,

    WER = (S + D + I) / N,

summed over utterances (S substitutions, D deletions, I insertions, N reference words),
not a mean of per-utterance rates. CER is the same over characters, spaces included
(jiwer's `process_characters`).

An empty reference is allowed per utterance: its hypothesis words count as insertions
and it adds nothing to N. A corpus whose references are all empty has no defined rate
and raises ValueError.

`detokenize` turns decoder output (token ids with paddings, e.g. from
`bigssl_jax.decoding.ctc_search`) into text with the corpus' sentencepiece vocabulary.
"""

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from bigssl_jax import paths
from bigssl_jax.data import vocabulary as vocab_lib


@dataclasses.dataclass(frozen=True)
class UtteranceResult:
    """The alignment counts of one utterance (texts normalised).

    Attributes:
      id: the utterance id.
      reference, hypothesis: the normalised texts.
      errors: word errors, substitutions + deletions + insertions.
      substitutions, deletions, insertions: word edit counts.
      reference_words: words in the reference.
      char_errors: character edits (spaces count as characters).
      reference_chars: characters in the reference.
    """

    id: str
    reference: str
    hypothesis: str
    errors: int
    substitutions: int
    deletions: int
    insertions: int
    reference_words: int
    char_errors: int
    reference_chars: int


@dataclasses.dataclass(frozen=True)
class ScoringResult:
    """Corpus-level error rates and per-utterance results.

    Attributes:
      wer: word errors / reference words.
      cer: character errors / reference characters.
      num_utterances: utterances scored.
      reference_words, substitutions, deletions, insertions: word counts over the corpus.
      reference_chars, char_errors: character counts over the corpus.
      utterances: per-utterance results, in input order.
    """

    wer: float
    cer: float
    num_utterances: int
    reference_words: int
    substitutions: int
    deletions: int
    insertions: int
    reference_chars: int
    char_errors: int
    utterances: tuple[UtteranceResult, ...] = ()

    def worst(self, n: int) -> list[UtteranceResult]:
        """The `n` utterances with most word errors (ties: more char errors, then input order)."""
        order = sorted(
            range(len(self.utterances)),
            key=lambda i: (-self.utterances[i].errors, -self.utterances[i].char_errors, i),
        )
        return [self.utterances[i] for i in order[:n]]

    def summary(self) -> dict:
        """The corpus-level fields (no per-utterance results), JSON-serialisable."""
        summary = dataclasses.asdict(self)
        del summary["utterances"]
        return summary

    def to_json(self, *, with_utterances: bool = False) -> str:
        """The summary as JSON, with the per-utterance results if asked for."""
        data = dataclasses.asdict(self) if with_utterances else self.summary()
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "ScoringResult":
        """Inverse of `to_json`."""
        data = json.loads(text)
        utterances = tuple(UtteranceResult(**u) for u in data.pop("utterances", ()))
        return cls(**data, utterances=utterances)


def score(
    references: Sequence[str],
    hypotheses: Sequence[str],
    ids: Sequence[str] | None = None,
    *,
    normalize: bool = True,
) -> ScoringResult:
    """Scores hypotheses against references (see the module docstring).

    Args:
      references: reference transcripts.
      hypotheses: hypothesis transcripts, one per reference.
      ids: utterance ids; default "0", "1", ...
      normalize: apply `normalize_text` to both sides (off: only whitespace is collapsed).

    Returns:
      The ScoringResult.

    Raises:
      ValueError: lengths differ, there are no utterances, or no reference words.
    """
    if ids is None:
        ids = [str(i) for i in range(len(references))]
    if not len(references) == len(hypotheses) == len(ids):
        raise ValueError(
            f"{len(references)} references, {len(hypotheses)} hypotheses, {len(ids)} ids"
        )
    clean = vocab_lib.normalize_text if normalize else (lambda t: " ".join(t.split()))
    references = [clean(t) for t in references]
    hypotheses = [clean(t) for t in hypotheses]
    reference_words = sum(len(t.split()) for t in references)
    if reference_words == 0:
        raise ValueError(f"no reference words in {len(references)} utterances: WER undefined")
    import jiwer  # here, not at the top: models import this module, and a bare GPU image has
    # JAX but not jiwer (docs/accelerators.md)

    words = jiwer.process_words(references, hypotheses)
    chars = jiwer.process_characters(references, hypotheses)
    utterances = []
    for i, (word_alignment, char_alignment) in enumerate(
        zip(words.alignments, chars.alignments, strict=True)
    ):
        subs, dels, ins = _edit_counts(word_alignment)
        utterances.append(
            UtteranceResult(
                id=str(ids[i]),
                reference=references[i],
                hypothesis=hypotheses[i],
                errors=subs + dels + ins,
                substitutions=subs,
                deletions=dels,
                insertions=ins,
                reference_words=len(references[i].split()),
                char_errors=sum(_edit_counts(char_alignment)),
                reference_chars=len(references[i]),
            )
        )
    reference_chars = sum(u.reference_chars for u in utterances)
    char_errors = chars.substitutions + chars.deletions + chars.insertions
    return ScoringResult(
        wer=(words.substitutions + words.deletions + words.insertions) / reference_words,
        cer=char_errors / reference_chars,
        num_utterances=len(utterances),
        reference_words=reference_words,
        substitutions=words.substitutions,
        deletions=words.deletions,
        insertions=words.insertions,
        reference_chars=reference_chars,
        char_errors=char_errors,
        utterances=tuple(utterances),
    )


def _edit_counts(alignment: Sequence[Any]) -> tuple[int, int, int]:
    """(substitutions, deletions, insertions) of one utterance's jiwer alignment (a sequence
    of `jiwer.AlignmentChunk`)."""
    subs = dels = ins = 0
    for chunk in alignment:
        ref_span = chunk.ref_end_idx - chunk.ref_start_idx
        if chunk.type == "substitute":
            subs += ref_span
        elif chunk.type == "delete":
            dels += ref_span
        elif chunk.type == "insert":
            ins += chunk.hyp_end_idx - chunk.hyp_start_idx
    return subs, dels, ins


_FIELDS = ("id", "reference", "hypothesis", "errors")


def write_utterances(utterances: Sequence[UtteranceResult], path: os.PathLike) -> None:
    """Writes per-utterance results: `.jsonl` (every field) or `.tsv` (id, ref, hyp, errors).

    Args:
      utterances: e.g. `result.utterances` or `result.worst(n)`.
      path: output file; its suffix picks the format.
    """
    path = paths.as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        lines = [json.dumps(dataclasses.asdict(u)) for u in utterances]
    elif path.suffix == ".tsv":
        for u in utterances:
            if any(c in u.id for c in "\t\n"):
                raise ValueError(f"utterance id {u.id!r} has a tab or newline: use .jsonl")
        rows = [[u.id, u.reference, u.hypothesis, str(u.errors)] for u in utterances]
        lines = ["\t".join(row) for row in [list(_FIELDS), *rows]]
    else:
        raise ValueError(f"utterance file must end in .jsonl or .tsv, got {path}")
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


class Decoder(Protocol):
    """A vocabulary: `seqio.SentencePieceVocabulary` or `sentencepiece.SentencePieceProcessor`."""

    def decode(self, ids: list[int]) -> str: ...


def detokenize(
    ids: np.ndarray, paddings: np.ndarray, vocab: Decoder, *, eos_id: int = vocab_lib.EOS_ID
) -> list[str]:
    """Token ids to text: valid positions up to the first eos, pad ids (0) dropped.

    Args:
      ids: i32[B, L] token ids (e.g. decoder output).
      paddings: f32[B, L], 1.0 = padded position.
      vocab: anything with `decode(list[int]) -> str`, e.g.
        `data.vocabulary.get_vocabulary(path)`.
      eos_id: ids from the first one onwards are ignored.

    Returns:
      B strings, each run of whitespace collapsed to one space and the ends stripped (a
      lone word-boundary piece decodes to a space of its own).
    """
    ids = np.asarray(ids)
    valid = np.asarray(paddings) < 0.5
    texts = []
    for row, row_valid in zip(ids, valid, strict=True):
        tokens = [int(t) for t in row[row_valid]]
        if eos_id in tokens:
            tokens = tokens[: tokens.index(eos_id)]
        text = vocab.decode([t for t in tokens if t != vocab_lib.PAD_ID])
        texts.append(" ".join(text.split()))
    return texts
