"""`bigssl show-batches`: print a few batches of a corpus's seqio task.

    bigssl show-batches --corpus=embedded_tiny
    bigssl show-batches --corpus=embedded_tiny --task=embedded_tiny_unlabeled_unlabeled \\
        --num_batches=3 --batch_size=4 --gin_bindings='InputConfig.bucket_seconds = [2, 4, 8]'

Registers the corpus's tasks (labeled ones when `bigssl vocab` has written the
vocabulary), builds the input pipeline (`InputConfig`, gin-configurable) and prints, per
batch, the array shapes, bucket length and padding fractions, and for the first rows
their ids, durations and decoded transcripts. The default task is the labeled task of
the corpus's largest labeled split (else the unlabeled task of its largest split).
"""

import sys
import time

from absl import flags

from bigssl_jax import paths
from bigssl_jax.commands import common_flags
from bigssl_jax.data import registry as registry_lib
from bigssl_jax.data import schema

_CORPUS = flags.DEFINE_string("corpus", None, "Registered corpus name (see registry.json).")
_TASK = flags.DEFINE_string("task", None, "Task to show; default: see the module docstring.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 2, "Batches to print.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Batch size; default InputConfig's.")
_ROWS = flags.DEFINE_integer("rows", 2, "Rows of each batch to print.")
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 1024, "Which vocabulary (`bigssl vocab`).")


def _default_task(corpus: str, splits: dict, names: list[str]) -> str:
    from bigssl_tasks import corpus_tasks

    for labeled_only in (True, False):
        candidates = [
            (info.num_examples, split)
            for split, info in splits.items()
            if info.labeled or not labeled_only
        ]
        kind = "labeled" if labeled_only else "unlabeled"
        for _, split in sorted(candidates, reverse=True):
            name = corpus_tasks.task_name(corpus, split, kind)
            if name in names:
                return name
    raise ValueError(f"corpus '{corpus}' has no splits")


def _describe(batch: dict, vocabulary, rows: int) -> list[str]:
    """A header line for a batch and one line for each of its first `rows` rows."""
    size, width = batch["audio"].shape
    line = (
        f"audio [{size}, {width}] (bucket {width / schema.SAMPLE_RATE:g} s, "
        f"{batch['audio_paddings'].mean():.0%} padding)"
    )
    if "targets" in batch:
        line += (
            f"  targets [{size}, {batch['targets'].shape[1]}] "
            f"({batch['target_paddings'].mean():.0%} padding)  "
            f"confidence {batch['confidence'][batch['weights'] > 0].mean():.2f}"
        )
    if batch["weights"].min() < 1:
        line += f"  {int(batch['weights'].sum())} real rows"
    lines = [line]
    for row in range(min(rows, size)):
        seconds = (1.0 - batch["audio_paddings"][row]).sum() / schema.SAMPLE_RATE
        text = f"  {batch['id'][row].decode()}  {seconds:5.2f} s"
        if "targets" in batch:
            ids = batch["targets"][row][batch["target_paddings"][row] == 0.0].tolist()
            transcript = vocabulary.decode(ids)
            text += f'  "{transcript[:70]}{"..." if len(transcript) > 70 else ""}"'
        lines.append(text)
    return lines


def main(argv) -> int:
    """Prints `--num_batches` batches of the chosen task."""
    if not _CORPUS.value:
        print("show-batches: --corpus is required", file=sys.stderr)
        return 2
    return show_batches(
        _CORPUS.value,
        data_dir=common_flags.data_dir(),
        task=_TASK.value,
        num_batches=_NUM_BATCHES.value,
        batch_size=_BATCH_SIZE.value,
        rows=_ROWS.value,
        vocab_size=_VOCAB_SIZE.value,
    )


def show_batches(
    corpus: str,
    *,
    data_dir,
    task: str | None = None,
    num_batches: int = 2,
    batch_size: int | None = None,
    rows: int = 2,
    vocab_size: int = 1024,
) -> int:
    """Prints `num_batches` batches of `task` (default: see the module docstring).

    Returns:
      The exit code: 0, or 1 after printing a one-line error to stderr.
    """
    try:
        splits = registry_lib.CorpusRegistry(paths.registry_path(data_dir)).splits(corpus)
    except (registry_lib.CorpusNotFoundError, ValueError) as error:
        print(f"show-batches: {error}", file=sys.stderr)
        return 1

    from bigssl_jax import configurables, input_pipeline
    from bigssl_tasks import corpus_tasks, vocab

    model = vocab.vocab_path(data_dir, corpus, vocab_size)
    names = corpus_tasks.register_corpus_tasks(
        corpus, data_dir=data_dir, vocab_path=model if model.exists() else None
    )
    task = task or _default_task(corpus, splits, names)
    if task not in names:
        hint = "" if model.exists() else f" (labeled tasks need {model}: run `bigssl vocab`)"
        print(
            f"show-batches: no task '{task}' for corpus '{corpus}' (has: {', '.join(names)}){hint}",
            file=sys.stderr,
        )
        return 1
    overrides = {} if batch_size is None else {"batch_size": batch_size}
    config = configurables.InputConfig(task=task, keep_fields=("id",), **overrides)
    vocabulary = vocab.get_vocabulary(str(model)) if model.exists() else None
    print(
        f"show-batches: task {task}, batch_size {config.batch_size}, buckets "
        f"{', '.join(f'{s:g}' for s in config.bucket_seconds)} s"
        + (f", vocab {model.name} ({vocabulary.vocab_size} pieces)" if vocabulary else "")
    )
    start = time.perf_counter()
    iterator = input_pipeline.make_iterator(config)
    try:
        for index in range(num_batches):
            lines = _describe(next(iterator), vocabulary, rows)
            print(f"batch {index}: {lines[0]}", *lines[1:], sep="\n")
    except (input_pipeline.InputDataError, ValueError) as error:
        print(f"show-batches: {error}", file=sys.stderr)
        return 1
    except StopIteration:
        print("show-batches: the task has no examples within the length limits", file=sys.stderr)
        return 1
    count = num_batches
    print(
        f"show-batches: {count} batch{'es' * (count != 1)} in {time.perf_counter() - start:.1f} s"
    )
    return 0
