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

from absl import flags

from bigssl_jax.commands import common_flags

_CORPUS = flags.DEFINE_string("corpus", None, "Registered corpus name (see registry.json).")
_TASK = flags.DEFINE_string("task", None, "Task to show; default: see the module docstring.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 2, "Batches to print.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Batch size; default InputConfig's.")
_ROWS = flags.DEFINE_integer("rows", 2, "Rows of each batch to print.")
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 1024, "Which vocabulary (`bigssl vocab`).")


def main(argv) -> int:
    """Prints `--num_batches` batches of the chosen task (`experiment.show_batches`)."""
    if not _CORPUS.value:
        print("show-batches: --corpus is required", file=sys.stderr)
        return 2
    from bigssl_jax import configurables, experiment

    try:
        experiment.show_batches(
            _CORPUS.value,
            data_dir=common_flags.data_dir(),
            task=_TASK.value,
            num_batches=_NUM_BATCHES.value,
            batch_size=_BATCH_SIZE.value,
            rows=_ROWS.value,
            vocab_size=_VOCAB_SIZE.value,
            input_config=configurables.InputConfig,
        )
    except experiment.BatchesError as error:
        print(f"show-batches: {error}", file=sys.stderr)
        return 1
    return 0
