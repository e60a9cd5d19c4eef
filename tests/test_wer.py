"""WER/CER scoring against hand-computed values and jiwer; result files; detokenize."""

import json

import jiwer
import numpy as np
import pytest

from bigssl_jax.evaluation import wer
from bigssl_tasks import vocab as vocab_lib

REFERENCES = ["The CAT, sat!", "hello world", "a b c d"]
HYPOTHESES = ["the cat sat on", "Hello", "a x c d"]


def test_hand_computed_counts_and_corpus_rates():
    result = wer.score(REFERENCES, HYPOTHESES, ids=["u1", "u2", "u3"])
    # u1: one insertion; u2: one deletion; u3: one substitution; 3 + 2 + 4 reference words.
    assert (result.substitutions, result.deletions, result.insertions) == (1, 1, 1)
    assert result.reference_words == 9
    assert result.wer == pytest.approx(3 / 9)
    # Characters: " on" inserted (3), " world" deleted (6), "b" -> "x" (1); 11 + 11 + 7.
    assert result.char_errors == 10 and result.reference_chars == 29
    assert result.cer == pytest.approx(10 / 29)
    u1, u2, u3 = result.utterances
    assert (u1.id, u1.reference, u1.hypothesis) == ("u1", "the cat sat", "the cat sat on")
    assert (u1.insertions, u2.deletions, u3.substitutions) == (1, 1, 1)
    assert [u.errors for u in result.utterances] == [1, 1, 1]
    assert [u.char_errors for u in result.utterances] == [3, 6, 1]
    # Corpus-level, not the mean of per-utterance rates (1/3 + 1/2 + 1/4) / 3.
    assert result.wer != pytest.approx((1 / 3 + 1 / 2 + 1 / 4) / 3)


def test_matches_jiwer_on_random_sentences():
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "eps"]
    refs = [" ".join(rng.choice(words, rng.integers(1, 8))) for _ in range(20)]
    hyps = [" ".join(rng.choice(words, rng.integers(0, 8))) for _ in range(20)]
    result = wer.score(refs, hyps)
    assert result.wer == pytest.approx(jiwer.wer(refs, hyps))
    assert result.cer == pytest.approx(jiwer.cer(refs, hyps))
    for ref, hyp, utterance in zip(refs, hyps, result.utterances, strict=True):
        single = jiwer.process_words(ref, hyp)
        expected = (single.substitutions, single.deletions, single.insertions)
        assert (utterance.substitutions, utterance.deletions, utterance.insertions) == expected
    assert sum(u.errors for u in result.utterances) == round(result.wer * result.reference_words)


def test_empty_reference_counts_insertions():
    result = wer.score(["", "a b"], ["x y", "a b"])
    assert result.utterances[0].errors == result.utterances[0].insertions == 2
    assert result.utterances[0].reference_words == 0
    assert result.wer == pytest.approx(2 / 2)
    with pytest.raises(ValueError, match="no reference words"):
        wer.score(["", " ,"], ["x", ""])
    with pytest.raises(ValueError, match="2 references, 1 hypotheses"):
        wer.score(["a", "b"], ["a"])


def test_normalize_off_keeps_case():
    assert wer.score(["A b"], ["a b"], normalize=False).wer == pytest.approx(0.5)
    assert wer.score(["A b"], ["a b"]).wer == 0.0


def test_worst_orders_by_errors_then_char_errors_then_input():
    refs = ["a b c", "a b c", "a b c", "abc", "abc"]
    hyps = ["a b c", "a bb cc", "xx yy c", "abd", "abd"]
    worst = wer.score(refs, hyps).worst(4)
    # "1" and "2" have two word errors each, "2" more character errors (4 vs 2);
    # "3" and "4" tie on both and keep their input order.
    assert [(u.id, u.errors, u.char_errors) for u in worst] == [
        ("2", 2, 4),
        ("1", 2, 2),
        ("3", 1, 1),
        ("4", 1, 1),
    ]


def _read_utterances(path) -> list[dict]:
    """A `write_utterances` file, one dict per utterance (`errors` an int)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in lines]
    fields = lines[0].split("\t")
    rows = [dict(zip(fields, line.split("\t"), strict=True)) for line in lines[1:]]
    return [{**row, "errors": int(row["errors"])} for row in rows]


@pytest.mark.parametrize("suffix", [".jsonl", ".tsv"])
def test_utterance_file_round_trip(tmp_path, suffix):
    result = wer.score(REFERENCES, HYPOTHESES, ids=["u1", "u2", "u3"])
    path = tmp_path / "out" / f"utterances{suffix}"
    wer.write_utterances(result.worst(2), path)
    rows = _read_utterances(path)
    assert [(r["id"], r["reference"], r["hypothesis"], r["errors"]) for r in rows] == [
        (u.id, u.reference, u.hypothesis, u.errors) for u in result.worst(2)
    ]
    with pytest.raises(ValueError, match=".jsonl or .tsv"):
        wer.write_utterances(result.utterances, tmp_path / "x.txt")


def test_result_json_round_trip():
    result = wer.score(REFERENCES, HYPOTHESES)
    assert wer.ScoringResult.from_json(result.to_json(with_utterances=True)) == result
    summary = wer.ScoringResult.from_json(result.to_json())
    assert summary.utterances == () and summary.wer == result.wer


def test_detokenize_with_trained_vocabulary(tmp_path):
    texts = ["the quick brown fox", "jumps over the lazy dog", "hello world again"]
    model = tmp_path / "tiny.model"
    vocab_lib.train_vocabulary(texts * 4, model, vocab_size=40)
    vocabulary = vocab_lib.get_vocabulary(str(model))
    encoded = [vocabulary.encode(t) for t in texts]
    length = max(len(e) for e in encoded) + 3
    ids = np.zeros((len(texts), length), np.int32)
    paddings = np.ones((len(texts), length), np.float32)
    for i, e in enumerate(encoded):
        ids[i, : len(e)] = e
        paddings[i, : len(e)] = 0.0
    # Row 1 ends with eos then junk, all marked valid; row 2 has junk in padded positions.
    n = len(encoded[1])
    ids[1, n : n + 2] = [vocab_lib.EOS_ID, encoded[0][0]]
    paddings[1, : n + 2] = 0.0
    ids[2, len(encoded[2]) :] = encoded[0][0]
    assert wer.detokenize(ids, paddings, vocabulary) == texts


def test_scoring_keeps_letters_of_any_script():
    result = wer.score(["Café naïve résumé!", "नमस्ते दुनिया।"], ["cafe naïve résumé", "नमस्ते  दुनिया"])
    assert [u.reference for u in result.utterances] == ["café naïve résumé", "नमस्ते दुनिया"]
    assert (result.reference_words, result.substitutions, result.wer) == (5, 1, 0.2)


def test_detokenize_collapses_the_spaces_of_lone_word_boundary_pieces(tmp_path):
    texts = ["the quick brown fox", "jumps over the lazy dog"]
    model = tmp_path / "tiny.model"
    vocab_lib.train_vocabulary(texts * 4, model, vocab_size=40)
    vocabulary = vocab_lib.get_vocabulary(str(model))
    boundary = vocabulary.tokenizer.piece_to_id("\u2581")
    the, quick = vocabulary.encode("the"), vocabulary.encode("quick")
    tokens = [boundary, *the, boundary, *quick, boundary]
    assert "  " in vocabulary.decode(tokens)  # what a decoder can emit
    ids = np.asarray([tokens], np.int32)
    assert wer.detokenize(ids, np.zeros(ids.shape, np.float32), vocabulary) == ["the quick"]
