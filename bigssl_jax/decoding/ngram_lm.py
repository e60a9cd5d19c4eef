"""A count-based token n-gram language model for shallow fusion, looked up inside jit.

    lm = NgramLanguageModel.estimate(token_sequences, vocab_size=64, order=5)
    lm.save("/runs/ngram/ngram_lm.npz")
    lm = NgramLanguageModel.load("/runs/ngram/ngram_lm.npz")
    tokens, _, scores = ctc_search.prefix_beam_search(logits, pads, lm=lm, lm_weight=0.5, ...)

Interpolated Kneser-Ney (Chen & Goodman 1999) with one absolute discount D_k per history
length k:

    P(w | h) = max(c_k(h w) - D_k, 0) / c_k(h) + D_k N1+(h .) / c_k(h) * P(w | h')

where h' drops the oldest token of h; c_k are raw counts at the highest order and
continuation counts N1+(. h w) (distinct tokens seen before h w) below it; D_k =
n1 / (n1 + 2 n2) from the counts of counts; the empty history interpolates with the uniform
distribution over the V - 1 tokens other than the pad / blank id 0.

Every history seen in training (each length 0..order-1) keeps its whole interpolated
distribution, a row f32[V] of log-probabilities. A history never seen has the distribution of
its longest seen suffix (c(h) = 0 makes the formula above P(w | h')), so a lookup finds that
suffix: a history of length k is the int32 key offset_k + sum_i c_i V^(k-1-i) with offset_k =
sum_{j<k} V^j, the sorted keys are searched with `jnp.searchsorted`, and the longest found
suffix wins. No Python runs per step: the search jits whole.

Sentences are read as order-1 start symbols (id 0), the tokens, and eos (id 1), as in
`lm_interface.BigramLanguageModel`; the state of a hypothesis is its last order-1 tokens.
"""

import collections
import dataclasses
import os
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

START_ID, EOS_ID = 0, 1
_MAX_KEY = 2**31 - 1


def _offsets(vocab_size: int, order: int) -> np.ndarray:
    """offset_k = sum_{j<k} V^j for k = 0..order-1 (int64)."""
    return np.cumsum([0] + [vocab_size**j for j in range(order - 1)]).astype(np.int64)


def _history_keys(histories: np.ndarray, vocab_size: int, offset: int) -> np.ndarray:
    """int64[H] keys of histories i[H, k] (oldest token first)."""
    keys = np.zeros(len(histories), np.int64)
    for column in range(histories.shape[1]):
        keys = keys * vocab_size + histories[:, column]
    return keys + offset


def _discount(counts: np.ndarray) -> float:
    """Ney's absolute discount n1 / (n1 + 2 n2), kept in [0.1, 0.9]."""
    n1, n2 = np.sum(counts == 1), np.sum(counts == 2)
    if n1 == 0 or n2 == 0:
        return 0.5
    return float(np.clip(n1 / (n1 + 2 * n2), 0.1, 0.9))


def _level_counts(sequences: Iterable[Sequence[int]], order: int) -> list[collections.Counter]:
    """counts[k][history + (w,)] for history length k: raw at k = order-1, continuation
    counts N1+(. h w) below."""
    top = collections.Counter()
    for sequence in sequences:
        padded = [START_ID] * (order - 1) + [int(t) for t in sequence] + [EOS_ID]
        for i in range(order - 1, len(padded)):
            top[tuple(padded[i - order + 1 : i + 1])] += 1
    counts = [collections.Counter() for _ in range(order)]
    counts[order - 1] = top
    for k in range(order - 2, -1, -1):
        for gram in counts[k + 1]:
            counts[k][gram[1:]] += 1
    return counts


@dataclasses.dataclass(frozen=True)
class NgramLanguageModel:
    """A token n-gram LM (see the module docstring); implements `FusionLanguageModel`.

    Attributes:
      keys: i32[H] sorted keys of every history seen in training (all lengths).
      log_probs: f32[H, V] log P(next token | that history); column 0 (pad / blank) is -inf.
      order: n (a history holds order - 1 tokens).
    """

    keys: jax.Array
    log_probs: jax.Array
    order: int

    @property
    def vocab_size(self) -> int:
        return self.log_probs.shape[1]

    @classmethod
    def estimate(
        cls, sequences: Iterable[Sequence[int]], vocab_size: int, *, order: int = 5
    ) -> "NgramLanguageModel":
        """Counts token sequences (ids in 2..V-1 or 1; no pad, no eos) into an order-n model.

        Raises:
          ValueError: order < 1, or V^(order-1) keys do not fit int32.
        """
        offsets = _offsets(vocab_size, order)
        if order < 1 or offsets[-1] + vocab_size ** (order - 1) > _MAX_KEY:
            raise ValueError(f"order {order} with {vocab_size} tokens: keys overflow int32")
        counts = _level_counts(sequences, order)
        uniform = np.full(vocab_size, 1.0 / (vocab_size - 1))
        uniform[START_ID] = 0.0
        parent_rows, parent_index = uniform[None, :], {(): 0}
        all_keys, all_rows = [], []
        for k in range(order):
            grams = np.array(list(counts[k]), np.int64).reshape(len(counts[k]), k + 1)
            values = np.array(list(counts[k].values()), np.float64)
            histories, inverse = np.unique(grams[:, :k], axis=0, return_inverse=True)
            inverse = inverse.reshape(-1)
            discount = _discount(values)
            total = np.bincount(inverse, weights=values, minlength=len(histories))
            types = np.bincount(inverse, minlength=len(histories))
            rows = np.zeros((len(histories), vocab_size))
            np.add.at(rows, (inverse, grams[:, k]), np.maximum(values - discount, 0.0))
            parents = [parent_index[tuple(h[1:])] if k else 0 for h in histories.tolist()]
            rows += (discount * types)[:, None] * parent_rows[parents]
            rows /= total[:, None]
            all_keys.append(_history_keys(histories, vocab_size, offsets[k]))
            all_rows.append(rows)
            parent_rows = rows
            parent_index = {tuple(h): i for i, h in enumerate(histories.tolist())}
        keys = np.concatenate(all_keys)
        rank = np.argsort(keys)
        with np.errstate(divide="ignore"):
            log_probs = np.log(np.concatenate(all_rows)[rank])
        return cls(jnp.asarray(keys[rank], jnp.int32), jnp.asarray(log_probs, jnp.float32), order)

    def save(self, path: os.PathLike) -> None:
        """Writes `path` (.npz) atomically."""
        path = os.fspath(path)
        tmp = path + ".tmp.npz"
        np.savez(tmp, keys=np.asarray(self.keys), log_probs=np.asarray(self.log_probs),
                 order=np.int32(self.order))  # fmt: skip
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: os.PathLike) -> "NgramLanguageModel":
        """Reads a model `save` wrote.

        Raises:
          ValueError: `path` is not an n-gram model file (names the file and the cause).
        """
        try:
            with np.load(os.fspath(path)) as data:
                keys, log_probs, order = data["keys"], data["log_probs"], int(data["order"])
        except (OSError, KeyError, ValueError) as error:
            raise ValueError(f"{path} is not an n-gram LM file: {error}") from error
        return cls(jnp.asarray(keys, jnp.int32), jnp.asarray(log_probs, jnp.float32), order)

    def init_state(self, num_hypotheses: int) -> jax.Array:
        """i32[N, order-1]: the start symbols."""
        return jnp.full((num_hypotheses, self.order - 1), START_ID, jnp.int32)

    def next_log_probs(self, state: jax.Array) -> jax.Array:
        """f32[N, V]: the row of each history's longest seen suffix."""
        return self.log_probs[_suffix_rows(jnp, self.keys, state, self.vocab_size)]

    def update(self, state: jax.Array, tokens: jax.Array) -> jax.Array:
        """Drops the oldest token of each history and appends `tokens` i32[N]."""
        if self.order == 1:
            return state
        return jnp.concatenate([state[:, 1:], tokens.astype(jnp.int32)[:, None]], axis=1)

    def score(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        """f64[S]: log P(sequence eos) (natural log) of each sequence, in numpy (reports, tests)."""
        keys, log_probs = np.asarray(self.keys), np.asarray(self.log_probs)
        scores = np.zeros(len(sequences))
        for i, sequence in enumerate(sequences):
            padded = np.asarray([START_ID] * (self.order - 1) + [*sequence, EOS_ID], np.int64)
            windows = np.lib.stride_tricks.sliding_window_view(padded, self.order)
            rows = _suffix_rows(np, keys, windows[:, :-1], self.vocab_size)
            scores[i] = log_probs[rows, windows[:, -1]].sum()
        return scores


def _suffix_rows(xp, keys, histories, vocab_size: int):
    """i32[N]: the row of the longest suffix of each history i[N, order-1] among `keys`.

    `xp` is `jnp` (inside jit) or `np`; both search the same sorted int32 keys.
    """
    row = xp.zeros(histories.shape[0], xp.int32)  # the empty history: key 0, row 0
    key = xp.zeros(histories.shape[0], xp.int32)
    offset, power = 0, 1
    for k in range(1, histories.shape[1] + 1):
        offset += power  # offset_k = offset_{k-1} + V^(k-1)
        key = key + histories[:, -k].astype(xp.int32) * power  # the k-th newest token
        power *= vocab_size
        found = xp.minimum(xp.searchsorted(keys, key + offset), keys.shape[0] - 1)
        row = xp.where(keys[found] == key + offset, found, row)
    return row
