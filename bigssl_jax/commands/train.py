"""`bigssl train`: train a model described by an experiment gin (pre-training today).

    bigssl train --gin_file=experiments/pretrain_best_rq_smoke.gin --model_dir=/tmp/run \\
        --data_dir=/tmp/data

An experiment gin includes a model gin (`gin/models/`), a run gin (`gin/runs/`) and a mesh
gin (`gin/mesh/`). The command registers the seqio tasks of `ExperimentConfig.corpus`, builds
the mesh (`MeshConfig`), the model (`ExperimentConfig.model`), the optimizer
(`OptimizerConfig`) and the input pipelines (`train/InputConfig`, `eval/InputConfig`, gin
scopes over `InputConfig`), and runs `bigssl_jax.trainer.train` (`TrainerConfig`).
Re-running the same command resumes from the latest checkpoint in `--model_dir`.

Exit codes: 0 done; 1 a user error (one line on stderr) or training diverged; 143 / 130
stopped by SIGTERM / SIGINT after saving a checkpoint.
"""

import functools
import sys

from absl import logging

from bigssl_jax.commands import common_flags


def _input_config(scope: str, task: str, **overrides):
    import gin

    from bigssl_jax import configurables

    with gin.config_scope(scope):
        return configurables.InputConfig(task=task, **overrides)


def _register_tasks(experiment, data_dir) -> list[str]:
    from bigssl_tasks import corpus_tasks, vocab

    vocab_model = vocab.vocab_path(data_dir, experiment.corpus)
    return corpus_tasks.register_corpus_tasks(
        experiment.corpus,
        data_dir=data_dir,
        vocab_path=vocab_model if vocab_model.exists() else None,
    )


def run(model_dir: str, data_dir) -> int:
    """Builds everything from gin and trains; returns the exit code."""
    import jax
    import seqio

    from bigssl_jax import configurables, input_pipeline, partitioning, trainer
    from bigssl_jax.data import registry as registry_lib
    from bigssl_tasks import corpus_tasks

    experiment = configurables.ExperimentConfig()
    if not experiment.corpus or experiment.model is None:
        print("train: the gin must bind ExperimentConfig.corpus and .model", file=sys.stderr)
        return 1
    try:
        names = _register_tasks(experiment, data_dir)
    except (registry_lib.CorpusNotFoundError, ValueError, FileNotFoundError) as error:
        print(f"train: {error} (data dir {data_dir})", file=sys.stderr)
        return 1

    def task(split):
        name = corpus_tasks.task_name(experiment.corpus, split, experiment.task_kind)
        if name not in names:
            raise ValueError(f"no task '{name}' for corpus '{experiment.corpus}' ({names})")
        return name

    shard = seqio.ShardInfo(jax.process_index(), jax.process_count())
    try:
        train_config = _input_config("train", task(experiment.train_split))
        eval_iter_fn = None
        if experiment.eval_split:
            eval_config = _input_config(
                "eval", task(experiment.eval_split), shuffle=False, num_epochs=1
            )
            eval_iter_fn = functools.partial(
                input_pipeline.make_iterator, eval_config, shard_info=shard
            )
        mesh = partitioning.make_mesh(configurables.MeshConfig())
        optimizer = configurables.OptimizerConfig()
        trainer_config = configurables.TrainerConfig()
    except ValueError as error:
        print(f"train: {error}", file=sys.stderr)
        return 1
    try:
        result = trainer.train(
            model=experiment.model,
            optimizer=optimizer,
            config=trainer_config,
            mesh=mesh,
            train_iter=input_pipeline.make_iterator(train_config, shard_info=shard),
            model_dir=model_dir,
            eval_iter_fn=eval_iter_fn,
        )
    except (input_pipeline.InputDataError, FileNotFoundError, trainer.NonFiniteError) as error:
        print(f"train: {error}", file=sys.stderr)
        return 1
    if result.preempted:
        print(f"train: stopped at step {result.step} on a signal; checkpoint saved")
        return 143
    print(f"train: done at step {result.step}; eval {result.eval_metrics}")
    return 0


def main(argv) -> int:
    """Trains from the parsed gin into `--model_dir`."""
    if not common_flags.MODEL_DIR.value:
        print("train: --model_dir is required", file=sys.stderr)
        return 2
    logging.set_verbosity(logging.INFO)
    return run(common_flags.MODEL_DIR.value, common_flags.data_dir())
