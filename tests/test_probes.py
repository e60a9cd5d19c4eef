"""Layer-wise probes: the logistic-regression fit, split parts, tables and plot."""

import json

import numpy as np
import pytest

from bigssl_jax.jobs import embeddings, probes
from bigssl_tasks import classification_tasks


def _two_layer_data(rng, n):
    """Layer 0: noise; layer 1: class mean +-3 on dimension 0 (linearly separable)."""
    y = rng.integers(0, 2, n)
    x = rng.standard_normal((n, 2, 4)).astype(np.float32)
    x[:, 1, 0] = np.where(y == 1, 3.0, -3.0)
    return x, y


def test_probe_spec_parses_and_rejects_bad_text():
    spec = probes.ProbeSpec.parse("speaker:unlabeled.fit:unlabeled.heldout")
    assert (spec.field, spec.train_split, spec.eval_split) == (
        "speaker",
        "unlabeled.fit",
        "unlabeled.heldout",
    )
    assert str(spec) == "speaker:unlabeled.fit:unlabeled.heldout"
    with pytest.raises(ValueError, match="field:train_split:eval_split"):
        probes.ProbeSpec.parse("speaker:labeled")


def test_separable_layer_is_learned_and_noise_layer_is_at_chance():
    rng = np.random.default_rng(0)
    train_x, train_y = _two_layer_data(rng, 200)
    eval_x, eval_y = _two_layer_data(rng, 400)
    train_acc, eval_acc, eval_correct = probes.fit_probes(train_x, train_y, eval_x, eval_y, 2)
    assert train_acc.shape == eval_acc.shape == (2,) and eval_correct.shape == (2, 400)
    np.testing.assert_allclose(eval_correct.mean(axis=1), eval_acc)
    assert eval_acc[1] == 1.0 and train_acc[1] == 1.0
    assert 0.4 < eval_acc[0] < 0.6  # noise: chance on fresh data
    majority = max(np.mean(eval_y == 0), np.mean(eval_y == 1))
    assert eval_acc[0] < majority + 0.1


def test_eval_labels_unseen_in_training_count_as_errors():
    x = np.zeros((4, 1, 2), np.float32)
    x[:, 0, 0] = [-1, -1, 1, 1]
    _, eval_acc, _ = probes.fit_probes(x, np.array([0, 0, 1, 1]), x, np.array([0, 2, 1, 2]), 2)
    assert eval_acc[0] == 0.5


def test_run_probe_uses_the_heldout_part_and_reports(tmp_path):
    rng = np.random.default_rng(1)
    ids = [f"u{i}" for i in range(120)]
    x, y = _two_layer_data(rng, len(ids))
    rows = [{"id": u, "speaker": f"s{label}"} for u, label in zip(ids, y, strict=True)]
    embeddings.write_shard(tmp_path / "train", x[:60], rows[:60], index=0, count=2)
    embeddings.write_shard(tmp_path / "train", x[60:], rows[60:], index=1, count=2)
    embeddings.write_info(tmp_path / "train", {"shards": 2})
    spec = probes.ProbeSpec.parse("speaker:train.fit:train.heldout")
    result = probes.run_probes(tmp_path, [spec], name="ours")
    probe = result["probes"][0]
    heldout = classification_tasks.heldout_mask(ids)
    assert (probe["num_train"], probe["num_eval"]) == (int((~heldout).sum()), int(heldout.sum()))
    assert probe["num_classes"] == 2
    assert [row["layer"] for row in probe["layers"]] == [0, 1]
    assert probe["layers"][1]["eval_accuracy"] == 1.0
    assert probe["eval_ids"] == [u for u, held in zip(ids, heldout, strict=True) if held]
    assert probe["layers"][1]["eval_correct"] == [1] * probe["num_eval"]

    baseline = json.loads(json.dumps(result))
    baseline["name"] = "random"
    baseline["probes"][0]["layers"][1]["eval_accuracy"] = 0.25
    wrong = [0] * probe["num_eval"]
    baseline["probes"][0]["layers"][1]["eval_correct"] = wrong
    written = probes.write_report(tmp_path / "report", result, [baseline])
    table = written["md"].read_text()
    assert "| layer | ours | random |" in table
    assert "| 1 (block 1) | 100.0% (100.0%) | 25.0% (100.0%) |" in table
    # Best layers: ours (1) all right; the baseline's best is now layer 0.
    only_ours = sum(1 - c for c in baseline["probes"][0]["layers"][0]["eval_correct"])
    assert f"right and random (layer 0) wrong on {only_ours}, the reverse on 0;" in table
    assert json.loads(written["json"].read_text()) == result
    assert written["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_paired_test_is_mcnemar_on_the_discordant_utterances():
    def run(correct_by_layer, ids=("a", "b", "c", "d", "e", "f", "g", "h")):
        layers = [
            {"layer": i, "eval_accuracy": float(np.mean(c)), "eval_correct": list(c)}
            for i, c in enumerate(correct_by_layer)
        ]
        return {"eval_ids": list(ids), "layers": layers}

    ours = run([[0] * 8, [1, 1, 1, 1, 1, 1, 1, 0]])
    theirs = run([[1, 0, 0, 0, 0, 0, 0, 1], [0] * 8])
    test = probes.paired_test(ours, theirs)
    assert (test["layer"], test["baseline_layer"]) == (1, 0)
    assert (test["only_ours"], test["only_baseline"], test["num_eval"]) == (6, 1, 8)
    # Two-sided exact binomial test of 6 of 7 discordant pairs, written out.
    assert test["p"] == pytest.approx(2 * (1 + 7) / 2**7)
    assert probes.paired_test(ours, run([[1] * 8], ids="abcdefgz")) is None  # other utterances
    assert probes.paired_test(ours, None) is None


def test_unknown_split_part_is_an_error():
    with pytest.raises(ValueError, match="not 'fit' or 'heldout'"):
        probes.select(np.zeros((1, 1, 1)), [{"id": "a"}], "dev")


def test_select_l2_picks_from_the_grid_per_layer():
    rng = np.random.default_rng(2)
    x, y = _two_layer_data(rng, 100)
    chosen = probes.select_l2(x, y, 2, grid=(1e-3, 1e-1))
    assert chosen.shape == (2,)
    assert set(chosen.tolist()) <= {1e-3, 1e-1}
    assert chosen[1] == 1e-1  # separable: every lambda is perfect, ties go to the larger one
