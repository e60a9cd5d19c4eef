"""RNN-T greedy and beam search over encoder outputs, batched and jittable.

Both searches walk the frames with `lax.scan` and emit up to `max_symbols_per_frame` tokens
per frame; a frame ends with a blank, or is left without one once that many tokens came out
(the usual cap, as in k2/icefall, so a hypothesis' score is the sum of the log-probabilities
it chose, with no blank after a capped frame). Frames where `paddings` is 1 are skipped, so
a row's result does not depend on how far the batch is padded.

`beam_search` is time-synchronous: at every frame each of the `beam_size` hypotheses may end
the frame with a blank or grow by one token, up to `max_symbols_per_frame` times, and
hypotheses with the same tokens are merged (their probabilities added: the score of a token
sequence sums over its alignments). With `max_symbols_per_frame=1` it is k2's
`modified_beam_search`. A `FusionLanguageModel` adds `lm_weight * log P_lm(token)` to every
token (shallow fusion; blanks get no LM score).

The functions are pure and traceable; jit them in the caller (an LM's arrays are usually
closed over), e.g. `jax.jit(functools.partial(beam_search, decoder, beam_size=4, ...))`.
All outputs have static shapes: tokens i32[B, max_len] (0 after the end), token paddings
f32[B, max_len] (1.0 = padded), scores f32[B]. Tokens beyond `max_len` are dropped; set it
to at least `max_symbols_per_frame * T` for exact results.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from bigssl_jax.decoding import lm_interface
from bigssl_jax.layers import rnnt_decoder

Variables = Any
Decoded = tuple[jax.Array, jax.Array, jax.Array]


def _start(
    decoder: rnnt_decoder.RnntDecoder, variables: Variables, n: int, blank_id: int
) -> tuple[rnnt_decoder.Carry, jax.Array]:
    """The prediction network's carry and projected output f32[N, J] after the start symbol."""
    carry = decoder.apply(variables, n, method=rnnt_decoder.RnntDecoder.initial_carry)
    tokens = jnp.full((n,), blank_id, jnp.int32)
    return decoder.apply(variables, carry, tokens, method=rnnt_decoder.RnntDecoder.predict_step)


def _frames(
    decoder: rnnt_decoder.RnntDecoder,
    variables: Variables,
    encodings: jax.Array,
    paddings: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Time-major scan inputs: projected encodings f32[T, B, J] and validity bool[T, B]."""
    projected = decoder.apply(
        variables, encodings, method=rnnt_decoder.RnntDecoder.project_encodings
    )
    return jnp.swapaxes(projected, 0, 1), jnp.swapaxes(paddings < 0.5, 0, 1)


def _select(condition: jax.Array, new: Any, old: Any) -> Any:
    """Per leading-axis row: leaves of `new` where `condition` [R] holds, else of `old`."""

    def select(a, b):
        return jnp.where(condition.reshape(condition.shape + (1,) * (a.ndim - 1)), a, b)

    return jax.tree.map(select, new, old)


def _log_probs(decoder, variables, projected_encodings, projected_predictions) -> jax.Array:
    logits = decoder.apply(
        variables,
        projected_encodings,
        projected_predictions,
        method=rnnt_decoder.RnntDecoder.joint_logits,
    )
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def _outputs(tokens: jax.Array, lengths: jax.Array, scores: jax.Array) -> Decoded:
    positions = jnp.arange(tokens.shape[-1])
    token_paddings = (positions >= lengths[..., None]).astype(jnp.float32)
    return tokens, token_paddings, scores


def greedy_search(
    decoder: rnnt_decoder.RnntDecoder,
    variables: Variables,
    encodings: jax.Array,
    paddings: jax.Array,
    *,
    max_len: int,
    max_symbols_per_frame: int = 3,
    blank_id: int = 0,
) -> Decoded:
    """Emits the most likely symbol until a blank (or the cap) at every frame.

    A frame's loop stops as soon as every row has emitted its blank.

    Args:
      decoder: the RNN-T decoder module.
      variables: its variables ({'params': ...}).
      encodings: [B, T, D] encoder outputs.
      paddings: [B, T] float, 1.0 at padded frames.
      max_len: L, the length of the output buffers.
      max_symbols_per_frame: the most tokens emitted at one frame.
      blank_id: the blank token.

    Returns:
      tokens i32[B, L], token paddings f32[B, L], scores f32[B] (the log-probability of the
      chosen symbols, blanks included).
    """
    batch = encodings.shape[0]
    rows = jnp.arange(batch)
    carry, prediction = _start(decoder, variables, batch, blank_id)
    init = (
        carry,
        prediction,
        jnp.zeros((batch, max_len), jnp.int32),
        jnp.zeros((batch,), jnp.int32),
        jnp.zeros((batch,), jnp.float32),
    )

    def symbol(state):
        count, carry, prediction, tokens, lengths, scores, encoding, active = state
        log_probs = _log_probs(decoder, variables, encoding, prediction)
        best = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
        scores = scores + jnp.where(active, log_probs[rows, best], 0.0)
        emit = active & (best != blank_id)
        tokens = tokens.at[rows, jnp.where(emit, lengths, max_len)].set(best, mode="drop")
        new_carry, new_prediction = decoder.apply(
            variables, carry, best, method=rnnt_decoder.RnntDecoder.predict_step
        )
        carry, prediction = _select(emit, (new_carry, new_prediction), (carry, prediction))
        return count + 1, carry, prediction, tokens, lengths + emit, scores, encoding, emit

    def any_active(state):
        return (state[0] < max_symbols_per_frame) & jnp.any(state[-1])

    def frame(state, inputs):
        encoding, valid = inputs
        state = jax.lax.while_loop(any_active, symbol, (0, *state, encoding, valid))
        return state[1:6], None

    (_, _, tokens, lengths, scores), _ = jax.lax.scan(
        frame, init, _frames(decoder, variables, encodings, paddings)
    )
    return _outputs(tokens, jnp.minimum(lengths, max_len), scores)


class _Beam(NamedTuple):
    """Hypotheses [B, K, ...] (K may be a pool of several beams).

    Attributes:
      tokens: i32[B, K, L], 0 after the end.
      lengths: i32[B, K], tokens emitted (may exceed L when the buffer overflowed).
      scores: f32[B, K], -inf for dead slots.
      carry: the prediction network's carry, leaves [B, K, ...].
      prediction: f32[B, K, J], the projected prediction after the tokens.
      lm_state: the LM state, leaves [B, K, ...] (None without an LM).
      lm_log_probs: f32[B, K, V], log P_lm of the next token (None without an LM).
    """

    tokens: jax.Array
    lengths: jax.Array
    scores: jax.Array
    carry: Any
    prediction: jax.Array
    lm_state: Any
    lm_log_probs: jax.Array | None


def _gather(beam: _Beam, index: jax.Array) -> _Beam:
    """Hypotheses `index` i32[B, K'] of each row."""

    def take(x):
        return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)

    return jax.tree.map(take, beam)


def _flat(tree: Any) -> Any:
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), tree)


def _unflat(tree: Any, batch: int) -> Any:
    return jax.tree.map(lambda x: x.reshape((batch, -1) + x.shape[1:]), tree)


def _merge_top_k(pool: _Beam, k: int) -> _Beam:
    """Merges hypotheses with equal tokens (log-adding scores) and keeps the best k.

    A merged group lives on in its first member; the others become dead.
    """
    same = (pool.lengths[:, :, None] == pool.lengths[:, None, :]) & jnp.all(
        pool.tokens[:, :, None, :] == pool.tokens[:, None, :, :], axis=-1
    )  # [B, M, M]
    merged = jax.nn.logsumexp(jnp.where(same, pool.scores[:, None, :], -jnp.inf), axis=-1)
    first = jnp.argmax(same, axis=-1) == jnp.arange(same.shape[-1])
    scores = jnp.where(first, merged, -jnp.inf)
    scores, index = jax.lax.top_k(scores, k)
    return _gather(pool, index)._replace(scores=scores)


def _concat(a: _Beam, b: _Beam) -> _Beam:
    return jax.tree.map(lambda x, y: jnp.concatenate([x, y], axis=1), a, b)


def _initial_beam(decoder, variables, lm, batch: int, beam_size: int, max_len: int, blank_id):
    """One live empty hypothesis per row (score 0) and beam_size - 1 dead copies."""
    n = batch * beam_size
    carry, prediction = _start(decoder, variables, n, blank_id)
    lm_state = lm_log_probs = None
    if lm is not None:
        lm_state = lm.init_state(n)
        lm_log_probs = lm.next_log_probs(lm_state)
    scores = jnp.where(jnp.arange(beam_size) == 0, 0.0, -jnp.inf)
    return _Beam(
        tokens=jnp.zeros((batch, beam_size, max_len), jnp.int32),
        lengths=jnp.zeros((batch, beam_size), jnp.int32),
        scores=jnp.broadcast_to(scores, (batch, beam_size)).astype(jnp.float32),
        carry=_unflat(carry, batch),
        prediction=_unflat(prediction, batch),
        lm_state=_unflat(lm_state, batch),
        lm_log_probs=_unflat(lm_log_probs, batch),
    )


def _extend(decoder, variables, lm, lm_weight, active: _Beam, log_probs, blank_id):
    """The best K one-token extensions of K hypotheses, with their prediction and LM states.

    Args:
      decoder, variables: the RNN-T decoder and its variables.
      lm, lm_weight: the fusion LM (or None) and its weight.
      active: K hypotheses per row.
      log_probs: f32[B, K, V], the joint network's log-probabilities of each.
      blank_id: the blank, never an extension.

    Returns:
      K hypotheses per row, scored active.score + log P(token) + lm_weight log P_lm(token).
    """
    batch, beam_size, vocab_size = log_probs.shape
    scores = active.scores[..., None] + log_probs
    if lm is not None:
        # A finite floor keeps lm_weight = 0 from turning -inf LM scores into NaN.
        scores = scores + lm_weight * jnp.maximum(active.lm_log_probs, -1e30)
    scores = scores.at[..., blank_id].set(-jnp.inf)
    scores, flat_index = jax.lax.top_k(scores.reshape(batch, -1), beam_size)
    new = _gather(active, flat_index // vocab_size)
    token = (flat_index % vocab_size).astype(jnp.int32)
    positions = jnp.arange(new.tokens.shape[-1])
    tokens = jnp.where(positions == new.lengths[..., None], token[..., None], new.tokens)
    carry, prediction = decoder.apply(
        variables, _flat(new.carry), token.reshape(-1), method=rnnt_decoder.RnntDecoder.predict_step
    )
    lm_state, lm_log_probs = None, None
    if lm is not None:
        lm_state = lm.update(_flat(new.lm_state), token.reshape(-1))
        lm_log_probs = lm.next_log_probs(lm_state)
    return _Beam(
        tokens=tokens,
        lengths=new.lengths + 1,
        scores=scores,
        carry=_unflat(carry, batch),
        prediction=_unflat(prediction, batch),
        lm_state=_unflat(lm_state, batch),
        lm_log_probs=_unflat(lm_log_probs, batch),
    )


def beam_search(
    decoder: rnnt_decoder.RnntDecoder,
    variables: Variables,
    encodings: jax.Array,
    paddings: jax.Array,
    *,
    beam_size: int,
    max_len: int,
    max_symbols_per_frame: int = 1,
    lm: lm_interface.FusionLanguageModel | None = None,
    lm_weight: float | jax.Array = 0.0,
    blank_id: int = 0,
) -> Decoded:
    """Time-synchronous beam search with hypothesis merging and optional shallow fusion.

    At each valid frame, for s = 1..max_symbols_per_frame, every active hypothesis y either
    ends the frame with a blank (score + log P(blank | y)) into the frame's ended pool,
    where equal token sequences are merged, or grows by a token k (score + log P(k | y) +
    lm_weight log P_lm(k | y)); the best beam_size growths stay active. The next frame starts
    from the best beam_size of ended and (capped) active hypotheses, merged again.

    Args:
      decoder: the RNN-T decoder module.
      variables: its variables ({'params': ...}).
      encodings: [B, T, D] encoder outputs.
      paddings: [B, T] float, 1.0 at padded frames.
      beam_size: K, hypotheses kept per row.
      max_len: L, the length of the output buffers.
      max_symbols_per_frame: the most tokens a hypothesis emits at one frame.
      lm: a fusion language model over the same vocabulary, or None.
      lm_weight: the weight of log P_lm (a Python float or a traced scalar, so one
        compilation can serve a sweep).
      blank_id: the blank token.

    Returns:
      The best hypothesis of each row: tokens i32[B, L], token paddings f32[B, L], and its
      score f32[B] (log P_am summed over the merged alignments, plus the weighted LM score).
    """
    batch = encodings.shape[0]
    beam = _initial_beam(decoder, variables, lm, batch, beam_size, max_len, blank_id)

    def frame(beam, inputs):
        encoding, valid = inputs  # [B, J], [B]

        def symbol(_, pools):
            ended, active = pools
            log_probs = _log_probs(decoder, variables, encoding[:, None], active.prediction)
            blanks = active._replace(scores=active.scores + log_probs[..., blank_id])
            ended = _merge_top_k(_concat(ended, blanks), beam_size)
            active = _extend(decoder, variables, lm, lm_weight, active, log_probs, blank_id)
            return ended, active

        ended = beam._replace(scores=jnp.full_like(beam.scores, -jnp.inf))
        ended, active = jax.lax.fori_loop(0, max_symbols_per_frame, symbol, (ended, beam))
        return _select(valid, _merge_top_k(_concat(ended, active), beam_size), beam), None

    beam, _ = jax.lax.scan(frame, beam, _frames(decoder, variables, encodings, paddings))
    best = jnp.argmax(beam.scores, axis=-1)[:, None]
    best_beam = _gather(beam, best)
    lengths = jnp.minimum(best_beam.lengths[:, 0], max_len)
    return _outputs(best_beam.tokens[:, 0], lengths, best_beam.scores[:, 0])
