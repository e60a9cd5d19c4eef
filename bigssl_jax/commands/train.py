"""`bigssl train`: train a model described by an experiment gin (any stage).

    bigssl train --gin_file=experiments/pretrain_best_rq_smoke.gin --model_dir=/tmp/run \\
        --data_dir=/tmp/data

An experiment gin includes a model gin (`gin/models/`), a run gin (`gin/runs/`) and a mesh
gin (`gin/mesh/`). The command registers the seqio tasks of `ExperimentConfig.corpus`, builds
the mesh (`MeshConfig`), the model (`ExperimentConfig.model`), the optimizer
(`OptimizerConfig`) and the input pipelines (`train/InputConfig`, `eval/InputConfig`, gin
scopes over `InputConfig`), and runs `bigssl_jax.trainer.train` (`TrainerConfig`).
Re-running the same command resumes from the latest checkpoint in `--model_dir`.

Exit codes: 0 done; 1 a data or runtime error (one line on stderr) or training diverged; 2 a
usage or gin error (one line); 143 stopped by SIGTERM / SIGINT after saving a checkpoint.
"""

import dataclasses
import functools
import os
import sys

from bigssl_jax.commands import common_flags


def _input_config(scope: str, task: str, **overrides):
    import gin

    from bigssl_jax import configurables

    with gin.config_scope(scope):
        return configurables.InputConfig(task=task, **overrides)


def eval_input_config(task: str, model):
    """The gin's `eval/InputConfig` for `task`: one pass, in order, keeping the string fields
    `model.score` reads (`score_fields`, e.g. ids and reference texts)."""
    config = _input_config("eval", task, shuffle=False, num_epochs=1)
    fields = tuple(dict.fromkeys(config.keep_fields + getattr(model, "score_fields", ())))
    return dataclasses.replace(config, keep_fields=fields)


def register_tasks(experiment, data_dir) -> list[str]:
    """Registers the seqio tasks of `experiment.corpus` (and its classification tasks); names."""
    from bigssl_tasks import classification_tasks, corpus_tasks, vocab

    vocab_model = vocab.vocab_path(data_dir, experiment.corpus, _vocab_size(experiment.model))
    names = corpus_tasks.register_corpus_tasks(
        experiment.corpus,
        data_dir=data_dir,
        vocab_path=vocab_model if vocab_model.exists() else None,
    )
    field = classification_tasks.field_of_kind(experiment.task_kind)
    if field is not None:
        names += classification_tasks.register_classification_tasks(
            experiment.corpus,
            field=field,
            data_dir=data_dir,
            num_classes=getattr(experiment.model, "num_classes", None),
        )
    return names


def with_label_names(model, experiment, data_dir):
    """A classifier (a model with `label_names`) of a classification task gets the task's
    class names, for its reports."""
    from bigssl_tasks import classification_tasks

    field = classification_tasks.field_of_kind(experiment.task_kind)
    if field is None or not hasattr(model, "label_names"):
        return model
    names = classification_tasks.load_labels(data_dir, experiment.corpus, field)
    return dataclasses.replace(model, label_names=names)


def _host_iterator(config, shard):
    """This process's batches of `config`, agreeing with the other processes on shapes and
    checkpointed positions (`distributed.MultiHostIterator`)."""
    from bigssl_jax import distributed, input_pipeline

    return distributed.MultiHostIterator(input_pipeline.make_iterator(config, shard_info=shard))


def register_pseudo_labeled_tasks(experiment) -> list[str]:
    """Registers the tasks of `experiment.pseudo_labels` (pseudo-label output dirs); names."""
    from bigssl_tasks import pseudo_labeled

    return [
        pseudo_labeled.register_from_manifest(os.path.join(directory, "manifest.json"))
        for directory in experiment.pseudo_labels
    ]


def _train_iterator(config, pseudo_tasks: list[str], mix_ratios, shard):
    """The training batches: the train split's, or with pseudo-labeled tasks an in-batch
    mix of the split and those tasks (`batch_mixing`, shares `mix_ratios`)."""
    from bigssl_jax import batch_mixing, distributed, input_pipeline

    if not pseudo_tasks:
        return _host_iterator(config, shard)
    ratios = mix_ratios or (1.0,) * (1 + len(pseudo_tasks))
    counts = batch_mixing.split_batch_size(config.batch_size, ratios)
    tasks = [config.task, *pseudo_tasks]
    iterators = {
        task: input_pipeline.make_iterator(
            dataclasses.replace(config, task=task, batch_size=count), shard_info=shard
        )
        for task, count in zip(tasks, counts, strict=True)
    }
    return distributed.MultiHostIterator(batch_mixing.InBatchMixer(iterators))


def _vocab_size(model) -> int:
    """The vocabulary a model reads: `<corpus>_<model.vocab_size>.model` (default size else)."""
    from bigssl_tasks import vocab

    return getattr(model, "vocab_size", vocab.DEFAULT_VOCAB_SIZE)


def _with_vocabulary(model, corpus: str, data_dir, model_dir: str):
    """A model that reads text (a `vocabulary` field left empty) gets the corpus vocabulary,
    copied into the run directory so that the run alone can be evaluated or transcribed."""
    import jax

    from bigssl_jax import inference, paths
    from bigssl_tasks import vocab

    if not hasattr(model, "vocabulary") or model.vocabulary:
        return model
    source = vocab.vocab_path(data_dir, corpus, model.vocab_size)
    if not source.exists():
        raise ValueError(
            f"no vocabulary at {source}: run `bigssl vocab --corpus={corpus} "
            f"--vocab_size={model.vocab_size}`"
        )
    copy = paths.as_path(model_dir) / inference.VOCABULARY_FILE
    if jax.process_index() == 0:  # the run dir may be shared (gs://): one process writes
        copy.parent.mkdir(parents=True, exist_ok=True)
        tmp = copy.with_name(copy.name + ".tmp")
        paths.as_path(source).copy(tmp, overwrite=True)
        tmp.replace(copy)
    return dataclasses.replace(model, vocabulary=str(copy))


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
        return 2
    try:
        names = register_tasks(experiment, data_dir)
    except (registry_lib.CorpusNotFoundError, ValueError, FileNotFoundError) as error:
        print(f"train: {error} (data dir {data_dir})", file=sys.stderr)
        return 1

    def task(split):
        name = corpus_tasks.task_name(experiment.corpus, split, experiment.task_kind)
        if name not in names:
            raise ValueError(f"no task '{name}' for corpus '{experiment.corpus}' ({names})")
        return name

    shard = seqio.ShardInfo(jax.process_index(), jax.process_count())
    model = experiment.model
    try:
        model = _with_vocabulary(model, experiment.corpus, data_dir, model_dir)
        model = with_label_names(model, experiment, data_dir)
        train_config = _input_config("train", task(experiment.train_split))
        pseudo_tasks = register_pseudo_labeled_tasks(experiment)
        eval_iter_fn = None
        if experiment.eval_split:
            eval_config = eval_input_config(task(experiment.eval_split), model)
            eval_iter_fn = functools.partial(_host_iterator, eval_config, shard)
        mesh = partitioning.make_mesh(configurables.MeshConfig())
        optimizer = configurables.OptimizerConfig()
        trainer_config = configurables.TrainerConfig()
    except ValueError as error:
        print(f"train: {error}", file=sys.stderr)
        return 1
    try:
        result = trainer.train(
            model=model,
            optimizer=optimizer,
            config=trainer_config,
            mesh=mesh,
            train_iter=_train_iterator(train_config, pseudo_tasks, experiment.mix_ratios, shard),
            model_dir=model_dir,
            eval_iter_fn=eval_iter_fn,
        )
    except (
        input_pipeline.InputDataError,
        FileNotFoundError,
        ValueError,  # e.g. a checkpointed input position from other input settings
        trainer.NonFiniteError,
    ) as error:
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
    return run(common_flags.MODEL_DIR.value, common_flags.data_dir())
