"""Mixtures of registered tasks with sampling rates.

Rates are relative: `register_mixture("nst", [("c_train_labeled", 1), ("pl_gen1", 9)])`
samples one labeled example for every nine pseudo-labeled ones (the recipe's 1:9).
All tasks of a mixture must have the same output features: labeled with labeled or
pseudo-labeled (both carry `confidence`), unlabeled with unlabeled.
"""

from collections.abc import Sequence

from bigssl_tasks import registration


def register_mixture(name: str, tasks_and_rates: Sequence[tuple[str, float]]) -> str:
    """Registers (or replaces) mixture `name` of `(task_name, rate)` pairs; idempotent.

    Raises:
      ValueError: a rate is not positive, or the tasks' output features differ.
    """
    import seqio

    for task, rate in tasks_and_rates:
        if rate <= 0:
            raise ValueError(f"mixture '{name}': rate of task '{task}' must be > 0, got {rate}")
    features = {
        task: tuple(sorted(seqio.get_mixture_or_task(task).output_features))
        for task, _ in tasks_and_rates
    }
    if len(set(features.values())) > 1:
        listing = "; ".join(f"{task}: {', '.join(keys)}" for task, keys in features.items())
        raise ValueError(f"mixture '{name}': tasks have different output features ({listing})")
    return registration.add_mixture(name, tasks_and_rates)
