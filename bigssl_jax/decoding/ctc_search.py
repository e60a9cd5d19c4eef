"""CTC decoding: greedy (best path) search and prefix beam search with shallow fusion.

A CTC model gives per-frame log-probabilities log p_t(k) over V tokens, one of which is
the blank. An alignment a_1..a_T maps to a labeling by collapsing repeats and then
dropping blanks, and

    P(y | x) = sum over alignments a that collapse to y of prod_t p_t(a_t).

Greedy search returns the collapse of the best alignment. Prefix beam search keeps, for
each of `beam_size` prefixes y, the mass of its alignments so far split by how they end,

    P_b(y)  = mass ending in a blank,       P_nb(y) = mass ending in y's last token,

and at each frame t, for every token c != blank,

    P_b'(y)    += (P_b(y) + P_nb(y)) p_t(blank)
    P_nb'(y)   += P_nb(y) p_t(y_last)                          (the last token repeats)
    P_nb'(y+c) += (P_b(y) [if c == y_last] else P_b(y) + P_nb(y)) p_t(c) F(c | y)

with F(c | y) = P_lm(c | y)^lm_weight e^insertion_bonus (shallow fusion; P_lm = 1 without
an LM). Identical prefixes reached both ways are merged, and the `beam_size` prefixes
with the largest P_b + P_nb survive. Everything is computed in log space with static
shapes: prefixes are int32[.., max_length] arrays with lengths, so the search jits and
runs one `lax.scan` over time for the whole batch.

Token ids follow `bigssl_tasks.vocab` (0 = pad and blank). Outputs are left-compacted
token arrays with praxis paddings (1.0 = padded), which `bigssl_jax.evaluation.wer`
turns into text.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp

from bigssl_jax.decoding.lm_interface import FusionLanguageModel

_NEG_INF = -jnp.inf


@functools.partial(jax.jit, static_argnames=("blank_id",))
def greedy_search(
    logits: jax.Array, paddings: jax.Array, *, blank_id: int = 0
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Best-path CTC decoding: per-frame argmax, repeats collapsed, blanks dropped.

    Padded frames are skipped as if absent (a token repeated across them collapses).

    Args:
      logits: f32[B, T, V] unnormalised frame scores.
      paddings: f32[B, T], 1.0 = padded frame.
      blank_id: the blank token.

    Returns:
      tokens: i32[B, T], the labeling left-compacted, 0 after its end.
      token_paddings: f32[B, T], 1.0 past each labeling's end.
      scores: f32[B], sum over valid frames of the best frame log-probability.
    """
    batch, frames, _ = logits.shape
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    best = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
    valid = paddings < 0.5
    scores = jnp.sum(jnp.where(valid, jnp.max(log_probs, axis=-1), 0.0), axis=-1)
    # The token of the last valid frame before each frame (blank when there is none).
    time = jnp.arange(frames)
    last_valid = jax.lax.cummax(jnp.where(valid, time, -1), axis=1)
    prev_index = jnp.pad(last_valid[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
    prev = jnp.take_along_axis(best, jnp.maximum(prev_index, 0), axis=1)
    prev = jnp.where(prev_index >= 0, prev, blank_id)
    emit = valid & (best != blank_id) & (best != prev)
    # Left-compact emitted tokens; non-emitted ones scatter out of bounds and are dropped.
    position = jnp.where(emit, jnp.cumsum(emit, axis=1) - 1, frames)
    rows = jnp.broadcast_to(jnp.arange(batch)[:, None], position.shape)
    tokens = jnp.zeros((batch, frames), jnp.int32).at[rows, position].set(best, mode="drop")
    lengths = jnp.sum(emit, axis=1)
    token_paddings = (time[None, :] >= lengths[:, None]).astype(jnp.float32)
    return tokens, token_paddings, scores


class _ByIdentity:
    """Wraps a static argument (an LM holding arrays) so jit hashes it by identity."""

    def __init__(self, value: Any):
        self.value = value

    def __hash__(self) -> int:
        return id(self.value)

    def __eq__(self, other) -> bool:
        return isinstance(other, _ByIdentity) and other.value is self.value


def prefix_beam_search(
    logits: jax.Array,
    paddings: jax.Array,
    *,
    beam_size: int,
    max_length: int,
    lm: FusionLanguageModel | None = None,
    lm_weight: float = 0.0,
    insertion_bonus: float = 0.0,
    lm_eos_id: int | None = None,
    blank_id: int = 0,
    token_candidates: int = 8,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """CTC prefix beam search (see the module docstring), batched and jitted.

    Per frame, prefixes are extended only by the `token_candidates` non-blank tokens of
    highest frame log-probability; with `token_candidates = V - 1` and a beam holding
    every reachable prefix the search is exact. A prefix already `max_length` long is
    not extended. Frames past a row's length leave its beams unchanged.

    The LM (if any) is a static argument compared by identity: its arrays are constants
    of the compiled search, compiled once per LM object; `lm_weight` and
    `insertion_bonus` are traced, so sweeping them does not recompile.

    Args:
      logits: f32[B, T, V] unnormalised frame scores.
      paddings: f32[B, T], 1.0 = padded frame.
      beam_size: K, prefixes kept per row.
      max_length: L, the longest labeling returned.
      lm: shallow-fusion LM with `lm.vocab_size == V`, or None.
      lm_weight: weight of log P_lm(c | y) added when a prefix y is extended by c.
      insertion_bonus: added to the score for every token emitted.
      lm_eos_id: if set (with an LM), the final beams are ranked with
        lm_weight * log P_lm(eos | y) added, and the score returned includes it.
      blank_id: the blank token.
      token_candidates: C, non-blank tokens tried per frame (at most V - 1).

    Returns:
      tokens: i32[B, L], the best prefix of each row, 0 after its end.
      token_paddings: f32[B, L], 1.0 past its end.
      scores: f32[B], its log(P_b + P_nb), LM terms included.
    """
    vocab_size = logits.shape[-1]
    if lm is not None and lm.vocab_size != vocab_size:
        raise ValueError(f"LM vocabulary {lm.vocab_size} != logits vocabulary {vocab_size}")
    token_candidates = min(token_candidates, vocab_size - 1)
    return _prefix_beam_search(
        logits,
        paddings,
        jnp.float32(lm_weight),
        jnp.float32(insertion_bonus),
        beam_size=beam_size,
        max_length=max_length,
        lm=None if lm is None else _ByIdentity(lm),
        lm_eos_id=None if lm is None else lm_eos_id,
        blank_id=blank_id,
        token_candidates=token_candidates,
    )


@functools.partial(
    jax.jit,
    static_argnames=(
        "beam_size",
        "max_length",
        "lm",
        "lm_eos_id",
        "blank_id",
        "token_candidates",
    ),
)
def _prefix_beam_search(
    logits,
    paddings,
    lm_weight,
    insertion_bonus,
    *,
    beam_size,
    max_length,
    lm,
    lm_eos_id,
    blank_id,
    token_candidates,
):
    """`prefix_beam_search` with the LM wrapped in `_ByIdentity`: a scan over frames."""
    lm = None if lm is None else lm.value
    batch = logits.shape[0]
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    beams = {
        "prefixes": jnp.zeros((batch, beam_size, max_length), jnp.int32),
        "lengths": jnp.zeros((batch, beam_size), jnp.int32),
        # Only beam 0 (the empty prefix) has mass at the start.
        "log_pb": jnp.full((batch, beam_size), _NEG_INF).at[:, 0].set(0.0),
        "log_pnb": jnp.full((batch, beam_size), _NEG_INF),
    }
    lm_state = None if lm is None else lm.init_state(batch * beam_size)
    extend = jax.vmap(
        functools.partial(
            _extend_row,
            blank_id=blank_id,
            token_candidates=token_candidates,
            lm_weight=lm_weight,
            insertion_bonus=insertion_bonus,
        )
    )

    def step(carry, frame):
        beams, lm_state = carry
        frame_log_probs, valid = frame
        lm_log_probs = None
        if lm is not None:
            lm_log_probs = lm.next_log_probs(lm_state).reshape(batch, beam_size, -1)
        new_beams, parent, token, extended = extend(
            beams["prefixes"],
            beams["lengths"],
            beams["log_pb"],
            beams["log_pnb"],
            frame_log_probs,
            lm_log_probs,
        )
        beams = jax.tree.map(functools.partial(_where_rows, valid), new_beams, beams)
        if lm is not None:
            new_state = _reorder_lm_state(lm, lm_state, parent, token, extended)
            keep = functools.partial(_where_rows, jnp.repeat(valid, beam_size))
            lm_state = jax.tree.map(keep, new_state, lm_state)
        return (beams, lm_state), None

    xs = (jnp.swapaxes(log_probs, 0, 1), jnp.swapaxes(paddings < 0.5, 0, 1))
    (beams, lm_state), _ = jax.lax.scan(step, (beams, lm_state), xs)
    totals = jnp.logaddexp(beams["log_pb"], beams["log_pnb"])
    if lm_eos_id is not None:
        eos_log_probs = lm.next_log_probs(lm_state)[:, lm_eos_id].reshape(batch, beam_size)
        totals = totals + lm_weight * eos_log_probs
    best = jnp.argmax(totals, axis=1)
    rows = jnp.arange(batch)
    lengths = beams["lengths"][rows, best]
    token_paddings = (jnp.arange(max_length)[None, :] >= lengths[:, None]).astype(jnp.float32)
    return beams["prefixes"][rows, best], token_paddings, totals[rows, best]


def _where_rows(mask: jax.Array, new: jax.Array, old: jax.Array) -> jax.Array:
    """`new` where `mask` (bool[N]) else `old`, for arrays leading with N."""
    return jnp.where(mask.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)


def _extend_row(
    prefixes,
    lengths,
    log_pb,
    log_pnb,
    frame_log_probs,
    lm_log_probs,
    *,
    blank_id,
    token_candidates,
    lm_weight,
    insertion_bonus,
):
    """One frame of prefix beam search for one row (vmapped over the batch).

    Candidates are the K beams' own prefixes and their K x C one-token extensions; an
    extension equal to a live beam's prefix is merged into it, then the best K survive.

    Args:
      prefixes: i32[K, L]; lengths: i32[K]; log_pb, log_pnb: f32[K] (-inf = empty slot).
      frame_log_probs: f32[V], this frame's log p_t.
      lm_log_probs: f32[K, V] log P_lm(. | prefix), or None without an LM.
      blank_id, token_candidates, lm_weight, insertion_bonus: see `prefix_beam_search`.

    Returns:
      The new beams (dict of prefixes, lengths, log_pb, log_pnb), and per new beam its
      parent beam i32[K], the token appended i32[K] and whether one was, bool[K].
    """
    beam_size, max_length = prefixes.shape
    has_last = lengths > 0
    last = jnp.where(has_last, prefixes[jnp.arange(beam_size), jnp.maximum(lengths - 1, 0)], -1)
    log_p = jnp.logaddexp(log_pb, log_pnb)
    # The prefixes themselves: a blank, or a repeat of the last token, is appended.
    same_pb = log_p + frame_log_probs[blank_id]
    same_pnb = jnp.where(has_last, log_pnb + frame_log_probs[jnp.maximum(last, 0)], _NEG_INF)
    # Extensions by the C most probable non-blank tokens; a repeat needs a blank between.
    cand_log_p, cand = jax.lax.top_k(frame_log_probs.at[blank_id].set(_NEG_INF), token_candidates)
    ext = jnp.where(cand[None, :] == last[:, None], log_pb[:, None], log_p[:, None])
    ext = ext + cand_log_p[None, :] + insertion_bonus
    if lm_log_probs is not None:
        # A token the LM rules out (log P = -inf) stays allowed at lm_weight 0 (no 0 * inf).
        ext = ext + jnp.where(lm_weight == 0, 0.0, lm_weight * lm_log_probs[:, cand])
    ext = jnp.where((lengths < max_length)[:, None], ext, _NEG_INF)
    # match[k, c, j]: live beam j is prefix k extended by token c.
    positions = jnp.arange(max_length)
    shares_prefix = jnp.all(
        (prefixes[:, None, :] == prefixes[None, :, :])
        | (positions[None, None, :] >= lengths[:, None, None]),
        axis=-1,
    )
    one_longer = (lengths[None, :] == lengths[:, None] + 1) & (log_p > _NEG_INF)[None, :]
    next_token = prefixes[:, jnp.minimum(lengths, max_length - 1)].T  # [k, j]: y_j[len_k]
    match = (shares_prefix & one_longer)[:, None, :] & (
        next_token[:, None, :] == cand[None, :, None]
    )
    merged = jax.nn.logsumexp(jnp.where(match, ext[:, :, None], _NEG_INF), axis=(0, 1))
    same_pnb = jnp.logaddexp(same_pnb, merged)
    ext = jnp.where(jnp.any(match, axis=-1), _NEG_INF, ext).reshape(-1)
    # Keep the K best candidates.
    _, index = jax.lax.top_k(jnp.concatenate([jnp.logaddexp(same_pb, same_pnb), ext]), beam_size)
    extended = index >= beam_size
    ext_index = jnp.maximum(index - beam_size, 0)
    parent = jnp.where(extended, ext_index // token_candidates, index)
    # Beams that were not extended carry a real (unused) token for the LM update.
    token = jnp.where(extended, cand[ext_index % token_candidates], cand[0])
    parent_lengths = lengths[parent]
    new_prefixes = jnp.where(
        extended[:, None] & (positions[None, :] == parent_lengths[:, None]),
        token[:, None],
        prefixes[parent],
    )
    new_beams = {
        "prefixes": new_prefixes,
        "lengths": parent_lengths + extended,
        "log_pb": jnp.where(extended, _NEG_INF, same_pb[parent]),
        "log_pnb": jnp.where(extended, ext[ext_index], same_pnb[parent]),
    }
    return new_beams, parent, token, extended


def _reorder_lm_state(lm, lm_state, parent, token, extended):
    """The LM states of the new beams: the parent's, advanced by the token if extended.

    Args:
      lm: the FusionLanguageModel.
      lm_state: its state for N = B * K beams.
      parent, token, extended: [B, K] from `_extend_row`.

    Returns:
      The state of the new beams, N = B * K.
    """
    batch, beam_size = parent.shape
    flat_parent = (jnp.arange(batch)[:, None] * beam_size + parent).reshape(-1)
    state = jax.tree.map(lambda s: s[flat_parent], lm_state)
    advanced = lm.update(state, token.reshape(-1))
    return jax.tree.map(functools.partial(_where_rows, extended.reshape(-1)), advanced, state)
