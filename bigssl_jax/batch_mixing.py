"""In-batch mixing of several inputs at a fixed ratio (the noisy student's 1 labeled : 9
pseudo-labeled).

seqio mixtures sample each example from a task with a given rate, so a batch's make-up
varies around the rates. The recipe fixes it instead: every batch of B rows holds exactly
n_i rows of input i,

    n_i = B * r_i / sum_j r_j   (rounded by largest remainders, every n_i >= 1),

drawn from each input's own iterator (batch size n_i, its own shuffling and epochs). The
parts are padded to their longest audio (and target) length and concatenated in input
order. The position is every input's position, so a resumed run continues each of them.
"""

from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from bigssl_jax import feature_converters


def split_batch_size(batch_size: int, ratios: Sequence[float]) -> list[int]:
    """Rows per input: proportional to `ratios`, summing to `batch_size`, each at least 1.

    Raises:
      ValueError: a ratio is not positive, or there are more inputs than rows.
    """
    if any(r <= 0 for r in ratios):
        raise ValueError(f"mixing ratios must be positive, got {tuple(ratios)}")
    if len(ratios) > batch_size:
        raise ValueError(f"{len(ratios)} inputs cannot share a batch of {batch_size} rows")
    exact = np.asarray(ratios, np.float64) * batch_size / np.sum(ratios)
    counts = np.maximum(np.floor(exact).astype(int), 1)
    while counts.sum() > batch_size:  # the minimum of 1 took rows from the largest inputs
        counts[np.argmax(counts - exact)] -= 1
    remainders = exact - counts
    for index in np.argsort(-remainders, kind="stable")[: batch_size - counts.sum()]:
        counts[index] += 1
    return counts.tolist()


def concatenate_batches(batches: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Rows of `batches` (the fields all of them have) in order, padded to common lengths."""
    audio_length = max(b["audio"].shape[1] for b in batches)
    labeled = all("targets" in b for b in batches)
    target_length = max(b["targets"].shape[1] for b in batches) if labeled else None
    padded = [
        feature_converters.pad_batch(
            dict(b), audio_length=audio_length, target_length=target_length
        )
        for b in batches
    ]
    fields = set.intersection(*(set(b) for b in padded))
    return {key: np.concatenate([b[key] for b in padded]) for key in sorted(fields)}


class InBatchMixer(Iterator):
    """Batches made of fixed numbers of rows from several iterators (module docstring).

    Args:
      iterators: name -> an iterator of batches of that input's row count, with
        `get_state` / `set_state` (`input_pipeline.InputIterator`).
    """

    def __init__(self, iterators: Mapping[str, Iterator]):
        self.iterators = dict(iterators)

    def __next__(self) -> dict[str, np.ndarray]:
        return concatenate_batches([next(iterator) for iterator in self.iterators.values()])

    def get_state(self) -> dict:
        return {name: iterator.get_state() for name, iterator in self.iterators.items()}

    def set_state(self, state: dict) -> None:
        if set(state) != set(self.iterators):
            raise ValueError(f"mixed input state has {sorted(state)}, not {sorted(self.iterators)}")
        for name, iterator in self.iterators.items():
            iterator.set_state(state[name])
