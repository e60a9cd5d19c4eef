"""`bigssl train-lm`: train the shallow-fusion language model on a corpus's text.

    bigssl train-lm --gin_file=experiments/lm_small.gin --model_dir=/tmp/lm_run \\
        --data_dir=/tmp/demo

The gin binds `ExperimentConfig` (corpus, `model = @LmTrainModel()`, `task_kind = 'text'`,
`train_split` whose transcripts are read, `eval_split` whose transcripts measure perplexity),
the text pipelines (`train/TextInputConfig`, `eval/TextInputConfig`, gin scopes over
`bigssl_tasks.text_tasks.TextInputConfig`; `bigssl_jax.experiment.text_inputs`),
`MeshConfig`, `OptimizerConfig` and `TrainerConfig`; the loop is `bigssl_jax.trainer.train`,
so checkpoints, resumption and summaries are those of `bigssl train`. The training text is
the train split's transcripts plus the shipped sentence list, never a sentence of the dev /
test / test_clean splits; the evaluation text is the eval split's transcripts alone.

Exit codes: 0 done; 1 a data or runtime error (one line on stderr) or training diverged; 2 a
usage or gin error (one line); 143 stopped by a signal after saving a checkpoint.
"""

import math
import sys

from bigssl_jax.commands import common_flags


def _perplexity(experiment, result) -> str:
    if "loss" not in result.eval_metrics:
        return ""
    return f"; {experiment.eval_split} perplexity {math.exp(result.eval_metrics['loss']):.2f}"


def run(model_dir: str, data_dir) -> int:
    """Builds everything from gin and trains; returns the exit code."""
    from bigssl_jax import configurables, experiment
    from bigssl_jax.commands import training

    make_input = training.gin_scoped(configurables.TextInputConfig)

    def build(config):
        return experiment.text_inputs(config, make_input, data_dir=data_dir)

    return training.run(
        "train-lm",
        build,
        model_dir=model_dir,
        data_dir=data_dir,
        task_kind=experiment.TEXT_TASK_KIND,
        summary=_perplexity,
    )


def main(argv) -> int:
    """Trains the language model from the parsed gin into `--model_dir`."""
    del argv
    if not common_flags.MODEL_DIR.value:
        print("train-lm: --model_dir is required", file=sys.stderr)
        return 2
    return run(common_flags.MODEL_DIR.value, common_flags.data_dir())
