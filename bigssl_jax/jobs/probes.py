"""Layer-wise linear probes on utterance embeddings: which layer knows what.

For a label field (accent, speaker, ...) and the embeddings of `bigssl_jax.jobs.embeddings`
([N, L, D], one pooled vector per layer), one multinomial logistic regression per layer l:

  x = (E[n, l] - mu_l) P_l                 (PCA whitening fitted on the train set, `whitening`)
  p(y | x) = softmax(x W_l + c_l)
  min over (W_l, c_l) of  mean_n -log p(y_n | x_n) + lambda |W_l|^2

fitted full-batch with Adam from zero (deterministic), all layers at once (vmapped), with
lambda chosen per layer from `L2_GRID` on a validation part of the train set (`select_l2`).
The result is train and eval accuracy per layer, and the majority-class accuracy as the floor.

A probe is written `field:train_split:eval_split`; a split `S.fit` / `S.heldout` is the
part of S that `bigssl_tasks.classification_tasks.is_heldout` keeps out / holds out, e.g.
`speaker:unlabeled.fit:unlabeled.heldout` (speaker ID on held-out utterances of the training
speakers) or `accent:labeled:dev` (accent ID on unseen speakers).

Reports: probes.json (numbers, and which eval utterances each layer got right), probes.md
(one table per probe: eval accuracy per layer, this run next to baseline runs, e.g. a
randomly initialised encoder, then a paired test of this run's best layer against each
baseline's: `paired_test`) and probes.png.
"""

import dataclasses
import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bigssl_jax.jobs import embeddings as embeddings_lib
from bigssl_jax.models import classifier

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)


@dataclasses.dataclass(frozen=True)
class ProbeSpec:
    """One probe: classify `field`, fit on `train_split`, score on `eval_split`."""

    field: str
    train_split: str
    eval_split: str

    @classmethod
    def parse(cls, text: str) -> "ProbeSpec":
        """From 'field:train_split:eval_split'."""
        parts = text.split(":")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"probe {text!r} is not 'field:train_split:eval_split'")
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.field}:{self.train_split}:{self.eval_split}"


def select(
    embeddings: np.ndarray, rows: Sequence[dict], part: str | None
) -> tuple[np.ndarray, list[dict]]:
    """The rows of a split part: None (all), 'fit' or 'heldout' (see the module docstring)."""
    from bigssl_tasks import classification_tasks

    if part is None:
        return embeddings, list(rows)
    if part not in (classification_tasks.FIT, classification_tasks.HELDOUT):
        raise ValueError(f"split part {part!r} is not 'fit' or 'heldout'")
    mask = classification_tasks.heldout_mask([row["id"] for row in rows])
    if part == classification_tasks.FIT:
        mask = ~mask
    return embeddings[mask], [row for row, keep in zip(rows, mask, strict=True) if keep]


def whitening(x: np.ndarray, ridge: float = 1e-4):
    """PCA whitening fitted on x [N, D] (`classifier.pca_whitening`): fn([M, D]) -> [M, D].

    Logistic regression's optimum does not depend on an invertible linear map of its input,
    but its conditioning does: pooled encoder outputs often put almost all variance in one
    direction.
    """
    mean, projection = classifier.pca_whitening(x, ridge)

    def apply(values: np.ndarray) -> np.ndarray:
        return ((values - mean) @ projection).astype(np.float32)

    return apply


def fit_probes(
    train_x: np.ndarray,
    train_y: np.ndarray,
    eval_x: np.ndarray,
    eval_y: np.ndarray,
    num_classes: int,
    *,
    steps: int = 400,
    learning_rate: float = 0.05,
    l2: float | np.ndarray = 1e-3,
) -> tuple[np.ndarray, np.ndarray]:
    """One logistic-regression probe per layer (formula in the module docstring).

    Args:
      train_x: [N, L, D] train embeddings.
      train_y: [N] int class ids.
      eval_x: [M, L, D] eval embeddings.
      eval_y: [M] int class ids (ids >= num_classes count as errors).
      num_classes: C.
      steps: full-batch Adam steps.
      learning_rate: Adam's learning rate.
      l2: lambda, the weight penalty: one for all layers or one per layer [L].

    Returns:
      (train accuracy [L], eval accuracy [L], eval correctness bool[L, M]).
    """
    whiten = [whitening(train_x[:, layer]) for layer in range(train_x.shape[1])]
    xs = jnp.asarray(np.stack([w(train_x[:, i]) for i, w in enumerate(whiten)]))  # [L, N, D]
    xe = jnp.asarray(np.stack([w(eval_x[:, i]) for i, w in enumerate(whiten)]))
    ys, ye = jnp.asarray(train_y), jnp.asarray(eval_y)
    l2s = jnp.broadcast_to(jnp.asarray(l2, jnp.float32), xs.shape[:1])
    tx = optax.adam(learning_rate)

    def loss(params, x, l2):
        logits = x @ params["w"] + params["b"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, ys).mean()
        return ce + l2 * jnp.sum(params["w"] ** 2)

    def fit_one(x, l2):
        params = {"w": jnp.zeros((x.shape[-1], num_classes)), "b": jnp.zeros((num_classes,))}

        def step(carry, _):
            params, state = carry
            grads = jax.grad(loss)(params, x, l2)
            updates, state = tx.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
        return params

    @jax.jit
    def fit_all(xs, xe, l2s):
        params = jax.vmap(fit_one)(xs, l2s)

        def correct(p, x, y):
            return jnp.argmax(x @ p["w"] + p["b"], axis=-1) == y

        train = jax.vmap(correct, in_axes=(0, 0, None))(params, xs, ys)
        held = jax.vmap(correct, in_axes=(0, 0, None))(params, xe, ye)
        return train.mean(axis=1), held.mean(axis=1), held

    train_acc, eval_acc, eval_correct = fit_all(xs, xe, l2s)
    return np.asarray(train_acc), np.asarray(eval_acc), np.asarray(eval_correct)


def select_l2(
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    grid: Sequence[float] = L2_GRID,
    *,
    validation_fraction: float = 0.2,
    seed: int = 0,
) -> np.ndarray:
    """Per layer, the lambda of `grid` with the best accuracy on a part of the train set.

    The train set [N, L, D] is split at random (fixed `seed`) into fit and validation parts;
    the eval set is never looked at. Ties go to the larger lambda.

    Returns:
      [L] chosen lambdas.
    """
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(round(len(x) * (1.0 - validation_fraction)))
    fit, val = order[:cut], order[cut:]
    grid = sorted(grid, reverse=True)
    scores = np.stack(
        [fit_probes(x[fit], y[fit], x[val], y[val], num_classes, l2=l2)[1] for l2 in grid]
    )
    return np.asarray(grid)[np.argmax(scores, axis=0)]


def _load(embedding_dir: pathlib.Path, split: str, cache: dict) -> tuple[np.ndarray, list]:
    base, _, part = split.partition(".")
    if base not in cache:
        cache[base] = embeddings_lib.load_split(embedding_dir / base)
    return select(*cache[base], part or None)


def run_probe(embedding_dir: os.PathLike, spec: ProbeSpec, cache: dict | None = None) -> dict:
    """Fits and scores one probe on every layer of the embeddings in `embedding_dir`.

    Returns:
      {'probe', 'num_classes', 'num_train', 'num_eval', 'majority', 'eval_ids', 'layers':
      [{'layer', 'train_accuracy', 'eval_accuracy', 'l2', 'eval_correct'}, ...]}, with
      'eval_correct' 0/1 per eval utterance in the order of 'eval_ids'.

    Raises:
      FileNotFoundError: a split was not embedded.
      KeyError: the manifests have no field `spec.field`.
    """
    cache = {} if cache is None else cache
    directory = pathlib.Path(embedding_dir)
    train_x, train_rows = _load(directory, spec.train_split, cache)
    eval_x, eval_rows = _load(directory, spec.eval_split, cache)
    if not train_rows or not eval_rows:
        raise ValueError(f"probe {spec}: no utterance in the train or eval split")
    classes = sorted({row[spec.field] for row in train_rows})
    index = {name: i for i, name in enumerate(classes)}
    train_y = np.array([index[row[spec.field]] for row in train_rows])
    eval_y = np.array([index.get(row[spec.field], len(classes)) for row in eval_rows])
    l2 = select_l2(train_x, train_y, len(classes))
    train_acc, eval_acc, eval_correct = fit_probes(
        train_x, train_y, eval_x, eval_y, len(classes), l2=l2
    )
    majority = float(np.mean(eval_y == np.bincount(train_y).argmax()))
    return {
        "probe": str(spec),
        "num_classes": len(classes),
        "num_train": len(train_rows),
        "num_eval": len(eval_rows),
        "majority": majority,
        "eval_ids": [row["id"] for row in eval_rows],
        "layers": [
            {
                "layer": i,
                "train_accuracy": float(a),
                "eval_accuracy": float(b),
                "l2": float(c),
                "eval_correct": right.astype(int).tolist(),
            }
            for i, (a, b, c, right) in enumerate(
                zip(train_acc, eval_acc, l2, eval_correct, strict=True)
            )
        ],
    }


def run_probes(embedding_dir: os.PathLike, specs: Sequence[ProbeSpec], *, name: str) -> dict:
    """Every probe of `specs` on one embedding directory: {'name', 'probes': [...]}."""
    cache = {}
    return {"name": name, "probes": [run_probe(embedding_dir, spec, cache) for spec in specs]}


def markdown(results: dict, baselines: Sequence[dict] = ()) -> str:
    """One table per probe: eval accuracy per layer of `results` and each baseline run."""
    runs = [results, *baselines]
    lines = []
    for probe in results["probes"]:
        others = [_find(run, probe["probe"]) for run in runs]
        lines += [
            f"### {probe['probe']}",
            "",
            f"{probe['num_classes']} classes, {probe['num_train']} train / {probe['num_eval']} "
            f"eval utterances, majority class {100 * probe['majority']:.1f}% (eval accuracy, "
            "train accuracy in brackets).",
            "",
            "| layer | " + " | ".join(run["name"] for run in runs) + " |",
            "|---|" + "---|" * len(runs),
        ]
        for layer in range(len(probe["layers"])):
            cells = [_cell(other, layer) for other in others]
            lines.append(f"| {_layer_name(layer)} | " + " | ".join(cells) + " |")
        lines.append("")
        for baseline, other in zip(baselines, others[1:], strict=True):
            test = paired_test(probe, other)
            if test is not None:
                lines += [
                    f"Best layers, paired on the {test['num_eval']} eval utterances: "
                    f"{results['name']} (layer {test['layer']}) right and {baseline['name']} "
                    f"(layer {test['baseline_layer']}) wrong on {test['only_ours']}, the "
                    f"reverse on {test['only_baseline']}; exact McNemar p = {test['p']:.3g}.",
                    "",
                ]
    return "\n".join(lines)


def paired_test(probe: dict, baseline: dict | None) -> dict | None:
    """Exact McNemar test of `probe`'s best layer against `baseline`'s on the same eval set.

    The discordant utterances (right in one, wrong in the other) are binomial(n, 1/2) under
    the null hypothesis of equal accuracy; p is the two-sided binomial test (scipy).

    Returns:
      {'layer', 'baseline_layer', 'num_eval', 'only_ours', 'only_baseline', 'p'}, or None
      when the baseline is missing or was scored on other utterances (or without them).
    """
    from scipy import stats

    if baseline is None or baseline.get("eval_ids") != probe.get("eval_ids"):
        return None
    if "eval_correct" not in baseline["layers"][0] or "eval_correct" not in probe["layers"][0]:
        return None

    def best(run):
        row = max(run["layers"], key=lambda r: r["eval_accuracy"])
        return row["layer"], np.asarray(row["eval_correct"], bool)

    (layer, ours), (baseline_layer, theirs) = best(probe), best(baseline)
    only_ours, only_baseline = int(np.sum(ours & ~theirs)), int(np.sum(~ours & theirs))
    discordant = only_ours + only_baseline
    p = stats.binomtest(only_ours, discordant, 0.5).pvalue if discordant else 1.0
    return {
        "layer": layer,
        "baseline_layer": baseline_layer,
        "num_eval": len(ours),
        "only_ours": only_ours,
        "only_baseline": only_baseline,
        "p": float(p),
    }


def _find(run: dict, probe: str) -> dict | None:
    return next((p for p in run["probes"] if p["probe"] == probe), None)


def _layer_name(layer: int) -> str:
    return "0 (feature encoder)" if layer == 0 else f"{layer} (block {layer})"


def _cell(probe: dict | None, layer: int) -> str:
    if probe is None or layer >= len(probe["layers"]):
        return "-"
    row = probe["layers"][layer]
    return f"{100 * row['eval_accuracy']:.1f}% ({100 * row['train_accuracy']:.1f}%)"


def plot(results: dict, path: os.PathLike, baselines: Sequence[dict] = ()) -> None:
    """Eval accuracy per layer, one panel per probe, one line per run, majority dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probes = results["probes"]
    fig, axes = plt.subplots(1, len(probes), figsize=(4.5 * len(probes), 3.5), squeeze=False)
    for ax, probe in zip(axes[0], probes, strict=True):
        for style, run in zip(("o-", "s--", "^:", "d-."), [results, *baselines], strict=False):
            other = _find(run, probe["probe"])
            if other is not None:
                accuracy = [100 * row["eval_accuracy"] for row in other["layers"]]
                ax.plot(range(len(accuracy)), accuracy, style, label=run["name"])
        ax.axhline(100 * probe["majority"], color="gray", linestyle=":", label="majority class")
        ax.set_title(probe["probe"], fontsize=9)
        ax.set_xlabel("layer (0 = feature encoder)")
        ax.set_ylabel("eval accuracy (%)")
        ax.set_xticks(range(len(probe["layers"])))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(
    output_dir: os.PathLike, results: dict, baselines: Sequence[dict] = ()
) -> dict[str, Any]:
    """Writes probes.json, probes.md and probes.png into `output_dir`; returns their paths."""
    directory = pathlib.Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    out = {kind: directory / f"probes.{kind}" for kind in ("json", "md", "png")}
    out["json"].write_text(json.dumps(results, indent=1) + "\n")
    out["md"].write_text(markdown(results, baselines))
    plot(results, out["png"], baselines)
    return out
