"""In-batch mixing: exact row counts, padding, order, saveable position."""

import numpy as np
import pytest

from bigssl_jax import batch_mixing


@pytest.mark.parametrize(
    "batch_size, ratios, expected",
    [(10, (1, 9), [1, 9]), (16, (1, 9), [2, 14]), (8, (1, 1, 1), [3, 3, 2]), (4, (1, 99), [1, 3])],
)
def test_split_batch_size(batch_size, ratios, expected):
    counts = batch_mixing.split_batch_size(batch_size, ratios)
    assert counts == expected and sum(counts) == batch_size


def test_split_batch_size_rejects_bad_ratios():
    with pytest.raises(ValueError, match="positive"):
        batch_mixing.split_batch_size(8, (1, 0))
    with pytest.raises(ValueError, match="cannot share"):
        batch_mixing.split_batch_size(2, (1, 1, 1))


class _Counter:
    """Batches of `rows` rows, audio length `length`, targets of `targets` tokens; value = tag."""

    def __init__(self, rows, length, targets, tag):
        self.rows, self.length, self.targets, self.tag = rows, length, targets, tag
        self.position = 0

    def __next__(self):
        self.position += 1
        return {
            "audio": np.full((self.rows, self.length), self.tag, np.float32),
            "audio_paddings": np.zeros((self.rows, self.length), np.float32),
            "targets": np.full((self.rows, self.targets), self.tag, np.int32),
            "target_paddings": np.zeros((self.rows, self.targets), np.float32),
            "weights": np.ones(self.rows, np.float32),
            "confidence": np.full(self.rows, 1.0 / self.tag, np.float32),
        }

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = state["position"]


def test_mixer_concatenates_padded_parts_in_order_and_restores_positions():
    mixer = batch_mixing.InBatchMixer(
        {"labeled": _Counter(1, 5, 3, 1), "pseudo": _Counter(3, 8, 2, 2)}
    )
    batch = next(mixer)
    assert batch["audio"].shape == (4, 8) and batch["targets"].shape == (4, 3)
    np.testing.assert_array_equal(batch["audio_paddings"][0], [0] * 5 + [1] * 3)
    np.testing.assert_array_equal(batch["target_paddings"][1:, 2], [1, 1, 1])
    np.testing.assert_array_equal(batch["confidence"], [1.0, 0.5, 0.5, 0.5])
    next(mixer)
    assert mixer.get_state() == {"labeled": {"position": 2}, "pseudo": {"position": 2}}
    mixer.set_state({"labeled": {"position": 7}, "pseudo": {"position": 9}})
    assert mixer.iterators["pseudo"].position == 9
    with pytest.raises(ValueError, match="mixed input state"):
        mixer.set_state({"labeled": {"position": 1}})
