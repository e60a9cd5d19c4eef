"""The language-model interface of shallow fusion, and a bigram model that implements it.

Decoders (CTC prefix beam search, RNN-T beam search) fuse a token-level language model
into their scores,

    score(y) = log P_am(y | x) + lm_weight * log P_lm(y),

through three pure, jittable functions over a state pytree whose leaves all lead with
the hypothesis axis N (beam searches flatten [B, beam] into N and reorder states with
`jax.tree.map(lambda s: s[index], state)`):

    state = lm.init_state(n)              # the empty history, N hypotheses
    log_probs = lm.next_log_probs(state)  # f32[N, V]: log P(next token | history)
    state = lm.update(state, tokens)      # i32[N]: append one token per hypothesis

Token ids are the sentencepiece ids of `bigssl_tasks.vocab` (0 = pad / blank, 1 = eos,
2 = unk). Decoders call `update` only with real tokens, never the blank.
"""

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

LMState = Any


@runtime_checkable
class FusionLanguageModel(Protocol):
    """A token-level language model for shallow fusion (see the module docstring)."""

    vocab_size: int

    def init_state(self, num_hypotheses: int) -> LMState:
        """The state of N empty histories."""
        ...

    def next_log_probs(self, state: LMState) -> jax.Array:
        """f32[N, V]: log-probabilities of the next token after each history."""
        ...

    def update(self, state: LMState, tokens: jax.Array) -> LMState:
        """The state after appending `tokens` i32[N] to the histories."""
        ...


@dataclasses.dataclass(frozen=True)
class BigramLanguageModel:
    """An add-alpha smoothed token bigram model, P(w_i | w_{i-1}); the history start is id 0.

    Attributes:
      log_probs: f32[V, V], row = previous token (0 at the start), column = next token.
    """

    log_probs: jax.Array

    @property
    def vocab_size(self) -> int:
        return self.log_probs.shape[0]

    @classmethod
    def estimate(
        cls, sequences: Iterable[Sequence[int]], vocab_size: int, *, alpha: float = 0.1
    ) -> "BigramLanguageModel":
        """Counts bigrams of token sequences (start -> w_1 -> ... -> w_n -> eos).

        Args:
          sequences: token-id sequences without padding or eos.
          vocab_size: V.
          alpha: additive smoothing count of every bigram.

        Returns:
          The model; the pad/blank column 0 gets no mass.
        """
        counts = np.full((vocab_size, vocab_size), alpha, np.float64)
        counts[:, 0] = 0.0
        for sequence in sequences:
            history = [0, *sequence]
            nexts = [*sequence, 1]
            np.add.at(counts, (np.asarray(history), np.asarray(nexts)), 1.0)
        with np.errstate(divide="ignore"):
            log_probs = np.log(counts / counts.sum(axis=1, keepdims=True))
        return cls(jnp.asarray(log_probs, jnp.float32))

    def init_state(self, num_hypotheses: int) -> jax.Array:
        return jnp.zeros((num_hypotheses,), jnp.int32)

    def next_log_probs(self, state: jax.Array) -> jax.Array:
        return self.log_probs[state]

    def update(self, state: jax.Array, tokens: jax.Array) -> jax.Array:
        del state
        return tokens.astype(jnp.int32)
