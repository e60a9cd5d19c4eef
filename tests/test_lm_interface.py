"""The bigram fusion LM against direct counting."""

import numpy as np

from bigssl_jax.decoding import lm_interface


def test_bigram_model_matches_smoothed_counts_and_the_protocol():
    sequences = [[3, 4, 5], [3, 5], [4]]
    model = lm_interface.BigramLanguageModel.estimate(sequences, vocab_size=6, alpha=0.5)
    assert isinstance(model, lm_interface.FusionLanguageModel)
    probs = np.exp(np.asarray(model.log_probs))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    assert np.all(probs[:, 0] == 0.0)  # no mass on the pad / blank id
    # After the start symbol: 3 seen twice, 4 once; 5 columns get alpha = 0.5 each.
    np.testing.assert_allclose(probs[0, 3], 2.5 / (3 + 5 * 0.5), rtol=1e-6)
    state = model.update(model.init_state(2), np.array([3, 4]))
    log_probs = np.asarray(model.next_log_probs(state))
    np.testing.assert_allclose(log_probs, np.asarray(model.log_probs)[[3, 4]])
    # 3 -> 4 once, 3 -> 5 once: equal probabilities; 4 -> 5 and 4 -> eos once each.
    assert log_probs[0, 4] == log_probs[0, 5] > log_probs[0, 2]
