"""CTC greedy and prefix beam search against plain numpy / Python implementations."""

import itertools

import numpy as np
import pytest

from bigssl_jax.decoding import ctc_search
from bigssl_jax.decoding.lm_interface import BigramLanguageModel


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _collapse(alignment, blank=0):
    out, prev = [], None
    for a in alignment:
        if a != blank and a != prev:
            out.append(int(a))
        prev = a
    return tuple(out)


def _valid_frames(log_probs, paddings):
    return log_probs[paddings < 0.5]


def _add(beams, prefix, pb=-np.inf, pnb=-np.inf):
    old_pb, old_pnb = beams.get(prefix, (-np.inf, -np.inf))
    beams[prefix] = (np.logaddexp(old_pb, pb), np.logaddexp(old_pnb, pnb))


def _reference_prefix_search(
    log_probs, beam_size, lm=None, lm_weight=0.0, bonus=0.0, candidates=None, eos=None, blank=0
):
    """The textbook prefix beam search over a dict of prefixes.

    Every non-blank token is tried (only the `candidates` most probable per frame if set).
    Returns the best prefix and its log(P_b + P_nb) (+ lm_weight log P_lm(eos | prefix)).
    """
    lm_table = None if lm is None else np.asarray(lm.log_probs, np.float64)
    beams = {(): (0.0, -np.inf)}  # prefix -> (log P_b, log P_nb)
    for frame in log_probs.astype(np.float64):
        tokens = [c for c in np.argsort(-frame) if c != blank][:candidates]
        nxt = {}
        for prefix, (pb, pnb) in beams.items():
            total = np.logaddexp(pb, pnb)
            _add(nxt, prefix, pb=total + frame[blank])
            if prefix:
                _add(nxt, prefix, pnb=pnb + frame[prefix[-1]])
            for c in tokens:
                fusion = bonus
                if lm_table is not None:
                    fusion += lm_weight * lm_table[prefix[-1] if prefix else 0, c]
                base = pb if prefix and prefix[-1] == c else total
                _add(nxt, prefix + (int(c),), pnb=base + frame[c] + fusion)
        ranked = sorted(nxt.items(), key=lambda kv: -np.logaddexp(*kv[1]))
        beams = dict(ranked[:beam_size])
    final = {prefix: np.logaddexp(pb, pnb) for prefix, (pb, pnb) in beams.items()}
    if eos is not None:
        for prefix in final:
            final[prefix] += lm_weight * lm_table[prefix[-1] if prefix else 0, eos]
    prefix = max(final, key=final.get)
    return prefix, final[prefix]


def _tokens(tokens, token_paddings, row):
    return tuple(int(t) for t, p in zip(tokens[row], token_paddings[row], strict=True) if p < 0.5)


def _random_case(seed, batch=3, frames=6, vocab=5, scale=2.0):
    rng = np.random.default_rng(seed)
    logits = (scale * rng.normal(size=(batch, frames, vocab))).astype(np.float32)
    lengths = rng.integers(1, frames + 1, size=batch)
    lengths[0] = frames
    paddings = (np.arange(frames)[None, :] >= lengths[:, None]).astype(np.float32)
    return logits, paddings


def test_greedy_matches_numpy():
    logits, paddings = _random_case(0, batch=4, frames=12, vocab=4)
    logits[1, 3:6, 2] = 9.0  # a run of one token, then a blank-separated repeat
    logits[1, 6, 0] = 9.0
    logits[1, 7, 2] = 9.0
    tokens, token_paddings, scores = ctc_search.greedy_search(logits, paddings)
    log_probs = _log_softmax(logits)
    for b in range(len(logits)):
        valid = _valid_frames(log_probs[b], paddings[b])
        assert _tokens(tokens, token_paddings, b) == _collapse(valid.argmax(-1))
        np.testing.assert_allclose(scores[b], valid.max(-1).sum(), rtol=1e-5)
        assert np.all(np.asarray(tokens)[b][np.asarray(token_paddings)[b] > 0.5] == 0)


def test_greedy_skips_padded_frames_between_repeats():
    logits = np.full((1, 3, 3), -5.0, np.float32)
    logits[0, :, 2] = 5.0
    paddings = np.array([[0.0, 1.0, 0.0]], np.float32)
    tokens, token_paddings, _ = ctc_search.greedy_search(logits, paddings)
    assert _tokens(tokens, token_paddings, 0) == (2,)


@pytest.mark.parametrize("beam_size,candidates", [(1, 4), (3, 4), (3, 2)])
def test_prefix_search_matches_reference(beam_size, candidates):
    for seed in range(4):
        logits, paddings = _random_case(seed)
        tokens, token_paddings, scores = ctc_search.prefix_beam_search(
            logits, paddings, beam_size=beam_size, max_length=6, token_candidates=candidates
        )
        log_probs = _log_softmax(logits)
        for b in range(len(logits)):
            valid = _valid_frames(log_probs[b], paddings[b])
            prefix, score = _reference_prefix_search(valid, beam_size, candidates=candidates)
            assert _tokens(tokens, token_paddings, b) == prefix
            np.testing.assert_allclose(scores[b], score, rtol=1e-4)


def test_large_beam_finds_most_probable_labeling():
    frames, vocab = 6, 3
    logits, paddings = _random_case(7, batch=2, frames=frames, vocab=vocab, scale=1.0)
    paddings[:] = 0.0
    log_probs = _log_softmax(logits).astype(np.float64)
    tokens, token_paddings, scores = ctc_search.prefix_beam_search(
        logits, paddings, beam_size=128, max_length=frames, token_candidates=vocab - 1
    )
    for b in range(len(logits)):
        mass = {}
        for alignment in itertools.product(range(vocab), repeat=frames):
            p = np.exp(log_probs[b, np.arange(frames), alignment].sum())
            label = _collapse(alignment)
            mass[label] = mass.get(label, 0.0) + p
        best = max(mass, key=mass.get)
        assert _tokens(tokens, token_paddings, b) == best
        np.testing.assert_allclose(np.exp(scores[b]), mass[best], rtol=1e-4)


def test_beam_of_one_on_peaked_frames_is_greedy():
    logits, paddings = _random_case(3, batch=3, frames=10, vocab=5, scale=10.0)
    greedy = ctc_search.greedy_search(logits, paddings)
    beam = ctc_search.prefix_beam_search(logits, paddings, beam_size=1, max_length=10)
    for b in range(len(logits)):
        assert _tokens(*beam[:2], b) == _tokens(*greedy[:2], b)


def test_padded_frames_and_rows_are_ignored():
    logits, _ = _random_case(5, batch=2, frames=6, vocab=5)
    paddings = np.zeros((2, 6), np.float32)
    paddings[1, 4:] = 1.0
    noisy = logits.copy()
    noisy[1, 4:] = 100.0 * np.random.default_rng(0).normal(size=(2, 5))
    kwargs = dict(beam_size=4, max_length=6, token_candidates=4)
    clean = ctc_search.prefix_beam_search(logits[:, :4], paddings[:, :4] * 0, **kwargs)
    padded = ctc_search.prefix_beam_search(noisy, paddings, **kwargs)
    assert _tokens(*padded[:2], 1) == _tokens(*clean[:2], 1)
    np.testing.assert_allclose(padded[2][1], clean[2][1], rtol=1e-5)
    empty = ctc_search.prefix_beam_search(logits, np.ones_like(paddings), **kwargs)
    np.testing.assert_array_equal(empty[1], 1.0)
    np.testing.assert_allclose(empty[2], 0.0)


def test_max_length_caps_the_labeling():
    logits = np.full((1, 6, 4), -5.0, np.float32)
    for t, token in enumerate([1, 2, 3, 1, 2, 3]):
        logits[0, t, token] = 5.0
    tokens, token_paddings, _ = ctc_search.prefix_beam_search(
        logits, np.zeros((1, 6), np.float32), beam_size=4, max_length=3
    )
    assert tokens.shape == (1, 3)
    assert len(_tokens(tokens, token_paddings, 0)) <= 3


def test_lm_fusion_matches_reference_and_changes_output():
    vocab = 5
    rng = np.random.default_rng(11)
    # Frames ambiguous between tokens 2 and 3; the LM has only seen token 3.
    logits = np.full((1, 6, vocab), -4.0, np.float32)
    logits[0, ::2, 2] = 1.0
    logits[0, ::2, 3] = 0.6
    logits[0, 1::2, 0] = 2.0
    logits += 0.1 * rng.normal(size=logits.shape).astype(np.float32)
    paddings = np.zeros((1, 6), np.float32)
    lm = BigramLanguageModel.estimate([[3, 3, 3]] * 20, vocab)
    kwargs = dict(beam_size=4, max_length=6, token_candidates=vocab - 1)
    plain = ctc_search.prefix_beam_search(logits, paddings, **kwargs)
    fused = ctc_search.prefix_beam_search(logits, paddings, lm=lm, lm_weight=1.0, **kwargs)
    assert set(_tokens(*plain[:2], 0)) == {2}
    assert set(_tokens(*fused[:2], 0)) == {3}
    unweighted = ctc_search.prefix_beam_search(logits, paddings, lm=lm, lm_weight=0.0, **kwargs)
    for got, want in zip(unweighted, plain, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    log_probs = _log_softmax(logits)[0]
    for lm_weight, bonus, eos in [(1.0, 0.0, None), (0.3, 0.5, None), (0.5, -0.2, 1)]:
        out = ctc_search.prefix_beam_search(
            logits,
            paddings,
            lm=lm,
            lm_weight=lm_weight,
            insertion_bonus=bonus,
            lm_eos_id=eos,
            **kwargs,
        )
        prefix, score = _reference_prefix_search(log_probs, 4, lm, lm_weight, bonus, eos=eos)
        assert _tokens(*out[:2], 0) == prefix
        np.testing.assert_allclose(out[2][0], score, rtol=1e-4)


def test_lm_vocabulary_mismatch_raises():
    lm = BigramLanguageModel.estimate([[1]], 7)
    with pytest.raises(ValueError, match="vocabulary"):
        ctc_search.prefix_beam_search(
            np.zeros((1, 2, 5), np.float32),
            np.zeros((1, 2), np.float32),
            beam_size=2,
            max_length=2,
            lm=lm,
            lm_weight=1.0,
        )
