"""Tests of RNN-T greedy and beam search against hand-built models and brute force."""

import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bigssl_jax.decoding import lm_interface, rnnt_search
from bigssl_jax.layers import rnnt_decoder
from bigssl_jax.losses import rnnt

D = 4


def _random_decoder(vocab_size, seed=0, scale=3.0):
    """A random tiny decoder; `scale` sharpens its joint output."""
    config = rnnt_decoder.RnntDecoderConfig(
        vocab_size=vocab_size, embed_dim=4, lstm_layers=1, lstm_dim=5, joint_dim=6, dropout_rate=0
    )
    decoder = rnnt_decoder.RnntDecoder(config)
    encodings, labels = jnp.zeros((1, 1, D)), jnp.zeros((1, 1), jnp.int32)
    variables = nn.unbox(decoder.init(jax.random.key(seed), encodings, labels, train=False))
    output = variables["params"]["joint_network"]["output"]
    output["kernel"] = output["kernel"] * scale
    return decoder, variables


def _frame_only_decoder(vocab_size):
    """A decoder whose logits are 10 tanh(enc[:, :V]): the label history has no effect."""
    decoder, variables = _random_decoder(vocab_size)
    joint = variables["params"]["joint_network"]
    joint_dim = joint["encoder"]["kernel"].shape[1]
    joint["encoder"]["kernel"] = jnp.eye(D, joint_dim)
    joint["encoder"]["bias"] = jnp.zeros(joint_dim)
    joint["prediction"]["kernel"] = jnp.zeros_like(joint["prediction"]["kernel"])
    joint["output"]["kernel"] = 10.0 * jnp.eye(joint_dim, vocab_size)
    joint["output"]["bias"] = jnp.zeros(vocab_size)
    return decoder, variables


def _encodings(batch, frames, seed=1):
    return 2.0 * jax.random.normal(jax.random.key(seed), (batch, frames, D))


def _sequence_log_prob(decoder, variables, encodings, sequence, max_symbols):
    """log sum over alignments of one utterance's sequence, by a numpy lattice recursion.

    At every frame up to `max_symbols` tokens, then a blank, or no blank after the cap.
    Logits come from the decoder's full-sequence path (not the step path the search uses);
    the labels are padded to T * max_symbols, one shape for every sequence (the prediction
    network is causal, so the padding does not change the positions used).
    """
    frames = encodings.shape[0]
    num_labels = len(sequence)
    labels = np.zeros((1, frames * max_symbols), np.int32)
    labels[0, :num_labels] = sequence
    logits = _full_logits(decoder, variables, encodings[None], jnp.asarray(labels))[0]
    log_probs = np.asarray(jax.nn.log_softmax(logits, axis=-1), np.float64)[:, : num_labels + 1]
    alpha = np.full(num_labels + 1, -np.inf)
    alpha[0] = 0.0
    for t in range(frames):
        within = alpha  # log-probabilities after s tokens at frame t, s = 0, 1, ...
        ends = [within + log_probs[t, :, 0]]
        for s in range(1, max_symbols + 1):
            grown = np.full(num_labels + 1, -np.inf)
            grown[1:] = within[:-1] + log_probs[t, np.arange(num_labels), sequence]
            within = grown
            ends.append(within + log_probs[t, :, 0] if s < max_symbols else within)
        alpha = np.logaddexp.reduce(ends, axis=0)
    return alpha[num_labels]


@functools.partial(jax.jit, static_argnums=0)
def _full_logits(decoder, variables, encodings, labels):
    return decoder.apply(variables, encodings, labels, train=False)


def test_reference_lattice_without_cap_is_the_rnnt_loss():
    # With more symbols per frame than labels the cap never binds: the reference recursion
    # is then the RNN-T likelihood, and the logits' [B, T, U+1, V] layout is the loss's.
    decoder, variables = _random_decoder(vocab_size=5, seed=3, scale=2.0)
    encodings = _encodings(1, 4, seed=3)
    sequence = (2, 4, 1)
    labels = jnp.asarray([sequence])
    logits = decoder.apply(variables, encodings, labels, train=False)
    loss = rnnt.rnnt_loss(logits, jnp.zeros((1, 4)), labels, jnp.zeros((1, 3)))
    reference = _sequence_log_prob(decoder, variables, encodings[0], sequence, max_symbols=4)
    np.testing.assert_allclose(-loss[0], reference, rtol=1e-5)


def _lm_score(lm, sequence):
    log_probs = np.asarray(lm.log_probs, np.float64)
    history = [0, *sequence]
    return sum(log_probs[a, b] for a, b in zip(history[:-1], sequence, strict=True))


def _jit(search, decoder, **kwargs):
    return jax.jit(functools.partial(search, decoder, **kwargs))


def test_greedy_follows_the_frames_when_history_is_ignored():
    vocab_size, frames = 4, 4
    decoder, variables = _frame_only_decoder(vocab_size)
    best = np.array([2, 0, 3, 1])  # the argmax of each frame (0 = blank)
    encodings = np.full((1, frames, D), -0.5, np.float32)
    encodings[0, np.arange(frames), best] = 1.0
    tokens, token_paddings, scores = _jit(
        rnnt_search.greedy_search, decoder, max_len=12, max_symbols_per_frame=3
    )(variables, jnp.asarray(encodings), jnp.zeros((1, frames)))
    expected = [2, 2, 2, 3, 3, 3, 1, 1, 1]  # 3 copies per non-blank frame, then the cap
    np.testing.assert_array_equal(tokens[0], expected + [0] * 3)
    np.testing.assert_array_equal(token_paddings[0], [0.0] * 9 + [1.0] * 3)
    log_probs = jax.nn.log_softmax(10.0 * np.tanh(encodings[0]), axis=-1)
    expected_score = sum(log_probs[t, best[t]] * (3 if best[t] else 1) for t in range(frames))
    np.testing.assert_allclose(scores[0], expected_score, rtol=1e-5)


def test_beam_of_one_equals_greedy_with_one_symbol_per_frame():
    decoder, variables = _random_decoder(vocab_size=6, seed=3)
    encodings = _encodings(3, 7)
    paddings = jnp.zeros((3, 7)).at[1, 5:].set(1.0)
    greedy = _jit(rnnt_search.greedy_search, decoder, max_len=8, max_symbols_per_frame=1)(
        variables, encodings, paddings
    )
    beam = _jit(rnnt_search.beam_search, decoder, beam_size=1, max_len=8)(
        variables, encodings, paddings
    )
    assert np.asarray(greedy[1]).min(axis=1).max() == 0.0  # something was emitted
    for g, b in zip(greedy, beam, strict=True):
        np.testing.assert_allclose(g, b, rtol=1e-5)


def _brute_force(decoder, variables, encodings, max_symbols, lm=None, lm_weight=0.0):
    """The best token sequence of one utterance, over every sequence the frames allow."""
    frames = encodings.shape[0]
    vocab_size = decoder.config.vocab_size
    best = (-np.inf, ())
    for length in range(max_symbols * frames + 1):
        for sequence in itertools.product(range(1, vocab_size), repeat=length):
            score = _sequence_log_prob(decoder, variables, encodings, sequence, max_symbols)
            if lm is not None:
                score += lm_weight * _lm_score(lm, sequence)
            best = max(best, (score, sequence))
    return best


def _check_exhaustive_beam(frames, max_symbols, beam_size, lm=None, lm_weight=0.0, seed=5):
    decoder, variables = _random_decoder(vocab_size=3, seed=seed, scale=1.5)
    encodings = _encodings(1, frames, seed=seed)
    tokens, token_paddings, scores = _jit(
        rnnt_search.beam_search,
        decoder,
        beam_size=beam_size,
        max_len=frames * max_symbols,
        max_symbols_per_frame=max_symbols,
        lm=lm,
        lm_weight=lm_weight,
    )(variables, encodings, jnp.zeros((1, frames)))
    best_score, best_sequence = _brute_force(
        decoder, variables, encodings[0], max_symbols, lm, lm_weight
    )
    length = int((np.asarray(token_paddings[0]) == 0).sum())
    assert tuple(np.asarray(tokens[0, :length])) == best_sequence
    np.testing.assert_allclose(scores[0], best_score, rtol=1e-5)


def test_wide_beam_finds_the_best_sequence_one_symbol_per_frame():
    # 3 frames, 2 tokens: 15 sequences, all fit in the beam; greedy would say [2, 2, 1].
    _check_exhaustive_beam(frames=3, max_symbols=1, beam_size=16)


def test_wide_beam_finds_the_best_sequence_two_symbols_per_frame():
    # 2 frames, up to 2 tokens each: 31 sequences; greedy would say [1, 1] here.
    _check_exhaustive_beam(frames=2, max_symbols=2, beam_size=32, seed=11)


def test_wide_beam_with_lm_finds_the_best_fused_sequence():
    lm = lm_interface.BigramLanguageModel.estimate([[1, 2, 2], [2, 1]], vocab_size=3, alpha=0.5)
    _check_exhaustive_beam(frames=3, max_symbols=1, beam_size=16, lm=lm, lm_weight=0.7)


def test_beam_scores_at_least_greedy_and_at_most_all_alignments():
    batch, frames = 4, 6
    decoder, variables = _random_decoder(vocab_size=5, seed=7, scale=2.0)
    encodings = _encodings(batch, frames, seed=8)
    paddings = jnp.zeros((batch, frames))
    _, _, greedy_scores = _jit(
        rnnt_search.greedy_search, decoder, max_len=frames, max_symbols_per_frame=1
    )(variables, encodings, paddings)
    tokens, token_paddings, scores = _jit(
        rnnt_search.beam_search, decoder, beam_size=4, max_len=frames
    )(variables, encodings, paddings)
    assert np.all(np.asarray(scores) >= np.asarray(greedy_scores) - 1e-5)
    for b in range(batch):
        sequence = tuple(np.asarray(tokens[b])[np.asarray(token_paddings[b]) == 0])
        total = _sequence_log_prob(decoder, variables, encodings[b], sequence, max_symbols=1)
        assert scores[b] <= total + 1e-4


def test_padded_frames_and_rows_do_not_change_a_row():
    decoder, variables = _random_decoder(vocab_size=5, seed=9, scale=2.0)
    encodings = _encodings(2, 6, seed=10)
    # Row 0 has 3 frames; the second batch puts noise in its padding and shortens row 1.
    first = (encodings, jnp.zeros((2, 6)).at[0, 3:].set(1.0))
    noisy = encodings.at[0, 3:].set(_encodings(1, 3, seed=11)[0])
    second = (noisy, jnp.zeros((2, 6)).at[0, 3:].set(1.0).at[1, 2:].set(1.0))
    for search, kwargs in (
        (rnnt_search.greedy_search, dict(max_symbols_per_frame=2)),
        (rnnt_search.beam_search, dict(beam_size=3, max_symbols_per_frame=2)),
    ):
        run = _jit(search, decoder, max_len=12, **kwargs)
        first_outputs, second_outputs = run(variables, *first), run(variables, *second)
        for x, y in zip(first_outputs, second_outputs, strict=True):
            np.testing.assert_allclose(x[0], y[0], rtol=1e-5)
        assert not np.isclose(first_outputs[2][1], second_outputs[2][1])  # row 1 did change


def test_lm_fusion_prefers_the_lm_token():
    vocab_size = 4
    decoder, variables = _frame_only_decoder(vocab_size)
    # Frame 0: token 1 slightly above token 2, both well above the blank; frame 1: blank.
    encodings = np.full((1, 2, D), -1.0, np.float32)
    encodings[0, 0, 1], encodings[0, 0, 2] = 0.20, 0.15
    encodings[0, 1, 0] = 1.0
    lm_log_probs = np.full((vocab_size, vocab_size), np.log(0.02), np.float32)
    lm_log_probs[:, 0] = -np.inf
    lm_log_probs[0, 2] = np.log(0.94)  # after the start, the LM wants token 2
    lm = lm_interface.BigramLanguageModel(jnp.asarray(lm_log_probs))

    @jax.jit
    def search(lm_weight):  # a traced weight: one compilation for every value
        return rnnt_search.beam_search(
            decoder,
            variables,
            jnp.asarray(encodings),
            jnp.zeros((1, 2)),
            beam_size=2,
            max_len=2,
            lm=lm,
            lm_weight=lm_weight,
        )

    plain_tokens, _, plain_score = search(0.0)
    fused_tokens, _, fused_score = search(0.5)
    assert plain_tokens[0, 0] == 1
    assert fused_tokens[0, 0] == 2
    am = jax.nn.log_softmax(10.0 * np.tanh(encodings[0]), axis=-1)
    np.testing.assert_allclose(plain_score[0], am[0, 1] + am[1, 0], rtol=1e-5)
    expected = am[0, 2] + am[1, 0] + 0.5 * np.log(0.94)
    np.testing.assert_allclose(fused_score[0], expected, rtol=1e-5)
