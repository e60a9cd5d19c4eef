"""`bigssl train-lm`: train the shallow-fusion language model on a corpus's text.

    bigssl train-lm --gin_file=experiments/lm_small.gin --model_dir=/tmp/lm_run \\
        --data_dir=/tmp/demo

The gin binds `ExperimentConfig` (corpus, `model = @LmTrainModel()`, `task_kind = 'text'`,
`train_split` whose transcripts are read, `eval_split` whose transcripts measure perplexity),
the text pipelines (`train/TextInputConfig`, `eval/TextInputConfig`, gin scopes over
`bigssl_tasks.text_tasks.TextInputConfig`), `MeshConfig`, `OptimizerConfig` and
`TrainerConfig`; the loop is `bigssl_jax.trainer.train`, so checkpoints, resumption and
summaries are those of `bigssl train`. The training text is the train split's transcripts
plus the shipped sentence list, never a sentence of the dev / test / test_clean splits; the
evaluation text is the eval split's transcripts alone.

Exit codes: 0 done; 1 a data or runtime error (one line on stderr) or training diverged; 2 a
usage or gin error (one line); 143 stopped by a signal after saving a checkpoint.
"""

import math
import sys

from bigssl_jax.commands import common_flags

TASK_KIND = "text"


def _text_config(scope: str, **overrides):
    import gin

    from bigssl_jax import configurables

    with gin.config_scope(scope):
        return configurables.TextInputConfig(**overrides)


def _check_vocabulary(model, config, data_dir) -> None:
    """Raises ValueError if the (existing) corpus vocabulary has more pieces than the LM has
    outputs."""
    import sentencepiece as spm

    from bigssl_tasks import vocab

    path = vocab.vocab_path(data_dir, config.corpus, config.vocab_size)
    pieces = spm.SentencePieceProcessor(model_file=str(path)).get_piece_size()
    if pieces > model.config.vocab_size:
        raise ValueError(
            f"vocabulary {path} has {pieces} pieces, more than "
            f"TransformerLmConfig.vocab_size={model.config.vocab_size}"
        )


def text_iterators(experiment, data_dir):
    """The text pipelines of a `task_kind = 'text'` experiment on this host.

    Returns:
      (train iterator, a factory of fresh eval iterators or None without `eval_split`).
    """
    import jax

    from bigssl_tasks import text_tasks

    shard = {"shard_index": jax.process_index(), "num_shards": jax.process_count()}
    train_config = _text_config("train", corpus=experiment.corpus, splits=(experiment.train_split,))
    train_iter = text_tasks.make_text_iterator(train_config, data_dir=data_dir, **shard)
    _check_vocabulary(experiment.model, train_config, data_dir)
    if not experiment.eval_split:
        return train_iter, None
    eval_config = _text_config(
        "eval",
        corpus=experiment.corpus,
        splits=(experiment.eval_split,),
        sentence_list=False,
        exclude_splits=(),
        shuffle=False,
        num_epochs=1,
    )
    examples = text_tasks.load_examples(eval_config, data_dir)
    return train_iter, lambda: text_tasks.TextIterator(eval_config, examples, **shard)


def run(model_dir: str, data_dir) -> int:
    """Builds everything from gin and trains; returns the exit code."""
    from bigssl_jax import configurables, partitioning, trainer
    from bigssl_jax.data import registry as registry_lib

    experiment = configurables.ExperimentConfig()
    if not experiment.corpus or experiment.model is None:
        print("train-lm: the gin must bind ExperimentConfig.corpus and .model", file=sys.stderr)
        return 2
    if experiment.task_kind != TASK_KIND:
        print(
            f"train-lm: ExperimentConfig.task_kind is '{experiment.task_kind}', not "
            f"'{TASK_KIND}': this gin describes no language model run",
            file=sys.stderr,
        )
        return 2
    try:
        train_iter, eval_iter_fn = text_iterators(experiment, data_dir)
        mesh = partitioning.make_mesh(configurables.MeshConfig())
        optimizer = configurables.OptimizerConfig()
        trainer_config = configurables.TrainerConfig()
    except (registry_lib.CorpusNotFoundError, ValueError, FileNotFoundError) as error:
        print(f"train-lm: {error} (data dir {data_dir})", file=sys.stderr)
        return 1
    try:
        result = trainer.train(
            model=experiment.model,
            optimizer=optimizer,
            config=trainer_config,
            mesh=mesh,
            train_iter=train_iter,
            model_dir=model_dir,
            eval_iter_fn=eval_iter_fn,
        )
    except (ValueError, trainer.NonFiniteError) as error:  # bad data, a foreign input state
        print(f"train-lm: {error}", file=sys.stderr)
        return 1
    if result.preempted:
        print(f"train-lm: stopped at step {result.step} on a signal; checkpoint saved")
        return 143
    shown = ""
    if "loss" in result.eval_metrics:
        shown = f"; {experiment.eval_split} perplexity {math.exp(result.eval_metrics['loss']):.2f}"
    print(f"train-lm: done at step {result.step}{shown}; eval {result.eval_metrics}")
    return 0


def main(argv) -> int:
    """Trains the language model from the parsed gin into `--model_dir`."""
    del argv
    if not common_flags.MODEL_DIR.value:
        print("train-lm: --model_dir is required", file=sys.stderr)
        return 2
    return run(common_flags.MODEL_DIR.value, common_flags.data_dir())
