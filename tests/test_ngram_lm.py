"""The token n-gram LM: against a direct Kneser-Ney recursion, normalised, jitted, fused."""

import collections
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigssl_jax.decoding import ctc_search, lm_interface
from bigssl_jax.decoding.ngram_lm import NgramLanguageModel

V = 9
SEQUENCES = [[2, 3, 4], [2, 3, 5, 6], [3, 4, 4, 7], [8, 2, 3], [5, 6, 7, 8, 2], [2, 3, 4, 5]]


def _reference(sequences, order, vocab):
    """P(w | h) by the interpolated Kneser-Ney recursion on plain dicts (no rows, no keys)."""
    grams = [collections.Counter() for _ in range(order)]
    for seq in sequences:
        padded = [0] * (order - 1) + seq + [1]
        for i in range(order - 1, len(padded)):
            grams[order - 1][tuple(padded[i - order + 1 : i + 1])] += 1
    for k in range(order - 2, -1, -1):
        for gram in grams[k + 1]:
            grams[k][gram[1:]] += 1

    def discount(k):
        values = list(grams[k].values())
        n1, n2 = values.count(1), values.count(2)
        return 0.5 if not n1 or not n2 else min(max(n1 / (n1 + 2 * n2), 0.1), 0.9)

    def prob(w, history):
        k = len(history)
        lower = (0.0 if w == 0 else 1 / (vocab - 1)) if k == 0 else prob(w, history[1:])
        counts = {g[-1]: c for g, c in grams[k].items() if g[:-1] == history}
        total = sum(counts.values())
        if total == 0:
            return prob(w, history[1:])
        d = discount(k)
        return max(counts.get(w, 0) - d, 0) / total + d * len(counts) / total * lower

    return prob


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_matches_the_kneser_ney_recursion(order):
    lm = NgramLanguageModel.estimate(SEQUENCES, V, order=order)
    prob = _reference(SEQUENCES, order, V)
    histories = [(2, 3, 4), (0, 0, 2), (8, 2, 3), (7, 7, 7), (6, 5, 4), (0, 0, 0)]
    for history in histories:
        history = history[len(history) - order + 1 :] if order > 1 else ()
        state = jnp.asarray(history, jnp.int32).reshape(1, order - 1)
        got = np.exp(np.asarray(lm.next_log_probs(state)[0]))
        want = [prob(w, history) for w in range(V)]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
        assert got.sum() == pytest.approx(1.0, abs=1e-5)
        assert got[0] == 0.0


def test_jitted_lookup_and_update_follow_a_sentence():
    lm = NgramLanguageModel.estimate(SEQUENCES, V, order=3)
    prob = _reference(SEQUENCES, 3, V)
    step = jax.jit(lambda s, t: (lm.next_log_probs(s), lm.update(s, t)))
    state = lm.init_state(2)
    total = np.zeros(2)
    sentences = [[2, 3, 4, 1], [5, 8, 8, 1]]
    for position in range(4):
        tokens = jnp.asarray([sentences[0][position], sentences[1][position]])
        log_probs, state = step(state, tokens)
        total += np.asarray(log_probs)[np.arange(2), np.asarray(tokens)]
    for i, sentence in enumerate(sentences):
        history, want = (0, 0), 0.0
        for token in sentence:
            want += math.log(prob(token, history))
            history = (history[1], token)
        assert total[i] == pytest.approx(want, rel=1e-5)
        assert lm.score([sentence[:-1]])[0] == pytest.approx(want, rel=1e-5)


def test_order_two_equals_a_bigram_model_in_shape_and_sums():
    lm = NgramLanguageModel.estimate(SEQUENCES, V, order=2)
    assert isinstance(lm, lm_interface.FusionLanguageModel)
    probs = np.exp(np.asarray(lm.next_log_probs(jnp.arange(V)[:, None])))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_save_and_load_round_trip(tmp_path):
    lm = NgramLanguageModel.estimate(SEQUENCES, V, order=3)
    lm.save(tmp_path / "lm.npz")
    loaded = NgramLanguageModel.load(tmp_path / "lm.npz")
    assert loaded.order == 3
    np.testing.assert_array_equal(loaded.keys, lm.keys)
    np.testing.assert_array_equal(loaded.log_probs, lm.log_probs)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz is not an n-gram LM file"):
        NgramLanguageModel.load(tmp_path / "bad.npz")


def test_keys_that_overflow_int32_are_refused():
    with pytest.raises(ValueError, match="overflow int32"):
        NgramLanguageModel.estimate(SEQUENCES, 1024, order=5)


def test_fused_beam_search_prefers_what_the_lm_has_seen():
    """Acoustics lean to '2 3 5' (0.55 against 0.45 for '2 3 4'); the LM, which has seen
    '2 3 4' three times and '2 3 5' once, tips the fused search to 4."""
    lm = NgramLanguageModel.estimate(SEQUENCES, V, order=3)
    frames = np.full((1, 6, V), -10.0, np.float32)
    for t, token in enumerate([2, 0, 3, 0]):
        frames[0, t, token] = 0.0
    frames[0, 4, 4], frames[0, 4, 5] = math.log(0.45), math.log(0.55)
    frames[0, 5, 0] = 0.0
    logits = jax.nn.log_softmax(jnp.asarray(frames))
    paddings = jnp.zeros((1, 6))
    search = dict(beam_size=4, blank_id=0, max_length=6)
    plain, _, _ = ctc_search.prefix_beam_search(logits, paddings, **search)
    fused, _, _ = ctc_search.prefix_beam_search(logits, paddings, lm=lm, lm_weight=1.0, **search)
    assert list(np.asarray(plain[0][:3])) == [2, 3, 5]
    assert list(np.asarray(fused[0][:3])) == [2, 3, 4]
