"""An experiment: a corpus's seqio tasks, a model, and the inputs it trains and is scored on.

What `bigssl train`, `bigssl train-lm` and `bigssl evaluate` build before the trainer or the
scorer runs, and what the pipeline's first stages show:

    experiment = configurables.ExperimentConfig()            # the command reads gin
    inputs = experiment_lib.asr_inputs(experiment, make_input, data_dir=d, model_dir=run)
    trainer.train(model=inputs.model, train_iter=inputs.train_iter,
                  eval_iter_fn=inputs.eval_iter_fn, ...)

It registers the corpus's tasks (`bigssl_tasks`), copies the corpus vocabulary into the run
directory (so that the run alone can be evaluated or transcribed), gives a classifier its
class names, and builds this host's iterators: the train split's batches, mixed in-batch
with pseudo-labeled tasks for a noisy student (`batch_mixing`), fresh eval iterators that
keep the string fields `model.score` reads, or a language model's text pipelines.

This module is a seam above the training core: it registers tasks, which the core never
does, and it reads no gin. The commands build every config from gin and hand it in; input
settings come through a factory `make_input(scope, **fields) -> config`, where a command
applies the gin scope ('train' or 'eval') and a caller without gin ignores it (`no_scope`).
"""

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from bigssl_jax import inference, input_pipeline, paths
from bigssl_jax.data import registry as registry_lib
from bigssl_jax.data import schema
from bigssl_jax.models import asr, base

TEXT_TASK_KIND = "text"  # `ExperimentConfig.task_kind` of a language model
# make_input(scope, **fields) -> an input config (InputConfig, TextInputConfig).
InputFactory = Callable[..., Any]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    """What `bigssl train` trains on: a corpus's tasks and a model.

    Attributes:
      corpus: a registered corpus (its tasks are registered by the command).
      model: a `models.base.TrainModel` (e.g. gin's `@BestRqTrainModel()`).
      train_split: the corpus split trained on.
      eval_split: the split evaluated on; None for no evaluation.
      task_kind: 'unlabeled' (audio only) or 'labeled' (audio + targets).
      pseudo_labels: output directories of `bigssl pseudo-label` (their `manifest.json`):
        their tasks are mixed into every training batch (the noisy student).
      mix_ratios: with `pseudo_labels`, the in-batch shares of the train split and of each
        pseudo-labeled task, e.g. (1, 9) (`batch_mixing`); empty: equal shares.
    """

    corpus: str = ""
    model: Any = None
    train_split: str = "unlabeled"
    eval_split: str | None = "dev"
    task_kind: str = "unlabeled"
    pseudo_labels: tuple[str, ...] = ()
    mix_ratios: tuple[float, ...] = ()

    def __post_init__(self):
        if self.mix_ratios and len(self.mix_ratios) != 1 + len(self.pseudo_labels):
            raise ValueError(
                f"ExperimentConfig.mix_ratios {self.mix_ratios} needs one share for the train "
                f"split and one per pseudo-labeled task ({len(self.pseudo_labels)})"
            )


@dataclasses.dataclass(frozen=True)
class TrainInputs:
    """What the trainer needs besides its settings: the model as trained, its batches.

    Attributes:
      model: the experiment's model with its vocabulary (and class names) set.
      train_iter: this host's training batches, with `get_state` / `set_state`.
      eval_iter_fn: makes a fresh iterator over the eval data, or None.
    """

    model: Any
    train_iter: Any
    eval_iter_fn: Callable[[], Iterator[Any]] | None


def no_scope(factory: Callable[..., Any]) -> InputFactory:
    """`make_input` for callers without gin scopes: `factory(**fields)`."""
    return lambda scope, **fields: factory(**fields)


# ---------------------------------------------------------------------------------------
# Tasks, vocabulary and class names.
# ---------------------------------------------------------------------------------------


def vocab_size(model) -> int:
    """The vocabulary a model reads: `<corpus>_<model.vocab_size>.model` for an ASR model,
    the default size else."""
    from bigssl_tasks import vocab

    return model.vocab_size if isinstance(model, asr.AsrModel) else vocab.DEFAULT_VOCAB_SIZE


def register_tasks(experiment: ExperimentConfig, data_dir, vocab_model=None) -> list[str]:
    """Registers the seqio tasks of `experiment.corpus` (and its classification tasks); names.

    The labeled tasks tokenize with `vocab_model` (a trained run's own copy, whatever corpus
    it scores), else with the corpus's `<data_dir>/vocab/<corpus>_<size>.model` when it
    exists (else only the audio tasks are registered)."""
    from bigssl_tasks import classification_tasks, corpus_tasks, vocab

    if vocab_model is None:
        size = vocab_size(experiment.model)
        vocab_model = vocab.vocab_path(data_dir, experiment.corpus, size)
    vocab_model = paths.as_path(vocab_model)
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
            num_classes=(
                experiment.model.num_classes
                if isinstance(experiment.model, base.ClassifierModel)
                else None
            ),
        )
    return names


def task_name(experiment: ExperimentConfig, split: str) -> str:
    """The name of the task of `split` for `experiment.task_kind` (registered or not)."""
    from bigssl_tasks import corpus_tasks

    return corpus_tasks.task_name(experiment.corpus, split, experiment.task_kind)


def registered_task(experiment: ExperimentConfig, split: str, names: list[str]) -> str:
    """`task_name`, which must be one of the registered `names` (else ValueError)."""
    name = task_name(experiment, split)
    if name not in names:
        raise ValueError(f"no task '{name}' for corpus '{experiment.corpus}' ({names})")
    return name


def with_label_names(model, experiment: ExperimentConfig, data_dir):
    """A classifier (`models.base.ClassifierModel`) of a classification task gets the task's
    class names, for its reports."""
    from bigssl_tasks import classification_tasks

    field = classification_tasks.field_of_kind(experiment.task_kind)
    if field is None or not isinstance(model, base.ClassifierModel):
        return model
    names = classification_tasks.load_labels(data_dir, experiment.corpus, field)
    return dataclasses.replace(model, label_names=names)


def with_vocabulary(model, corpus: str, data_dir, model_dir: str):
    """A model that reads text (a dataclass with a `vocabulary` field, e.g. an
    `models.asr.AsrModel`) whose `vocabulary` is left empty gets the corpus vocabulary,
    copied into the run directory so that the run alone can be evaluated or transcribed."""
    import jax

    from bigssl_tasks import vocab

    if not inference.reads_text(model) or model.vocabulary:
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


def register_pseudo_labeled_tasks(experiment: ExperimentConfig) -> list[str]:
    """Registers the tasks of `experiment.pseudo_labels` (pseudo-label output dirs); names."""
    from bigssl_tasks import pseudo_labeled

    return [
        pseudo_labeled.register_from_manifest(os.path.join(directory, "manifest.json"))
        for directory in experiment.pseudo_labels
    ]


# ---------------------------------------------------------------------------------------
# Iterators.
# ---------------------------------------------------------------------------------------


def eval_input_config(make_input: InputFactory, task: str, model):
    """The 'eval' input config of `task`: one pass, in order, keeping the string fields
    `model.score` reads (an ASR model's `score_fields`, e.g. ids and reference texts)."""
    config = make_input("eval", task=task, shuffle=False, num_epochs=1)
    score_fields = model.score_fields if isinstance(model, asr.AsrModel) else ()
    fields = tuple(dict.fromkeys(config.keep_fields + score_fields))
    return dataclasses.replace(config, keep_fields=fields)


def host_iterator(config, shard):
    """This process's batches of `config`, agreeing with the other processes on shapes and
    checkpointed positions (`distributed.MultiHostIterator`)."""
    from bigssl_jax import distributed

    return distributed.MultiHostIterator(input_pipeline.make_iterator(config, shard_info=shard))


def train_iterator(config, pseudo_tasks: list[str], mix_ratios, shard):
    """The training batches: the train split's, or with pseudo-labeled tasks an in-batch
    mix of the split and those tasks (`batch_mixing`, shares `mix_ratios`)."""
    from bigssl_jax import batch_mixing, distributed

    if not pseudo_tasks:
        return host_iterator(config, shard)
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


def asr_inputs(
    experiment: ExperimentConfig, make_input: InputFactory, *, data_dir, model_dir: str
) -> TrainInputs:
    """The model and this host's iterators of an audio experiment (pre-training, ASR,
    classification), its tasks registered.

    Raises:
      registry.CorpusNotFoundError, FileNotFoundError, ValueError: a missing corpus, task,
        vocabulary or pseudo-label manifest.
    """
    import jax
    import seqio

    names = register_tasks(experiment, data_dir)
    shard = seqio.ShardInfo(jax.process_index(), jax.process_count())
    model = with_vocabulary(experiment.model, experiment.corpus, data_dir, model_dir)
    model = with_label_names(model, experiment, data_dir)
    train_config = make_input(
        "train", task=registered_task(experiment, experiment.train_split, names)
    )
    pseudo_tasks = register_pseudo_labeled_tasks(experiment)
    eval_iter_fn = None
    if experiment.eval_split:
        task = registered_task(experiment, experiment.eval_split, names)
        eval_iter_fn = functools.partial(
            host_iterator, eval_input_config(make_input, task, model), shard
        )
    train_iter = train_iterator(train_config, pseudo_tasks, experiment.mix_ratios, shard)
    return TrainInputs(model, train_iter, eval_iter_fn)


def check_vocabulary(model, config, data_dir) -> None:
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


def text_inputs(experiment: ExperimentConfig, make_input: InputFactory, *, data_dir) -> TrainInputs:
    """The model and this host's text pipelines of a `task_kind = 'text'` experiment (a
    language model): the train split's transcripts plus the sentence list; the eval split's
    transcripts alone, in one ordered pass.

    Raises:
      registry.CorpusNotFoundError, FileNotFoundError, ValueError: a missing corpus or
        vocabulary, or a vocabulary larger than the LM's.
    """
    import jax

    from bigssl_tasks import text_tasks

    shard = {"shard_index": jax.process_index(), "num_shards": jax.process_count()}
    train_config = make_input("train", corpus=experiment.corpus, splits=(experiment.train_split,))
    train_iter = text_tasks.make_text_iterator(train_config, data_dir=data_dir, **shard)
    check_vocabulary(experiment.model, train_config, data_dir)
    if not experiment.eval_split:
        return TrainInputs(experiment.model, train_iter, None)
    eval_config = make_input(
        "eval",
        corpus=experiment.corpus,
        splits=(experiment.eval_split,),
        sentence_list=False,
        exclude_splits=(),
        shuffle=False,
        num_epochs=1,
    )
    examples = text_tasks.load_examples(eval_config, data_dir)
    eval_iter_fn = lambda: text_tasks.TextIterator(eval_config, examples, **shard)
    return TrainInputs(experiment.model, train_iter, eval_iter_fn)


# ---------------------------------------------------------------------------------------
# First batches.
# ---------------------------------------------------------------------------------------


class BatchesError(ValueError):
    """No batch of the task could be shown; the message says why, in one line."""


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
    raise BatchesError(f"corpus '{corpus}' has no splits")


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


def _batches_task(corpus: str, data_dir, task: str | None, vocab_size: int):
    """(the task shown, registered; the vocabulary path, which may not exist)."""
    from bigssl_tasks import corpus_tasks, vocab

    try:
        splits = registry_lib.CorpusRegistry(paths.registry_path(data_dir)).splits(corpus)
    except (registry_lib.CorpusNotFoundError, ValueError) as error:
        raise BatchesError(str(error)) from error
    model = vocab.vocab_path(data_dir, corpus, vocab_size)
    names = corpus_tasks.register_corpus_tasks(
        corpus, data_dir=data_dir, vocab_path=model if model.exists() else None
    )
    task = task or _default_task(corpus, splits, names)
    if task not in names:
        hint = "" if model.exists() else f" (labeled tasks need {model}: run `bigssl vocab`)"
        raise BatchesError(
            f"no task '{task}' for corpus '{corpus}' (has: {', '.join(names)}){hint}"
        )
    return task, model


def show_batches(
    corpus: str,
    *,
    data_dir,
    task: str | None = None,
    num_batches: int = 2,
    batch_size: int | None = None,
    rows: int = 2,
    vocab_size: int = 1024,
    input_config: Callable[..., Any] = input_pipeline.InputConfig,
) -> None:
    """Prints `num_batches` batches of `task` of `corpus` (registering the corpus's tasks).

    The default task is the labeled task of the corpus's largest labeled split (else the
    unlabeled task of its largest split); labeled tasks need the `vocab_size` vocabulary.
    Per batch it prints the shapes, bucket length and padding fractions, and for the first
    `rows` rows their ids, durations and decoded transcripts.

    Args:
      input_config: makes the `InputConfig` (e.g. with a command's gin bindings).

    Raises:
      BatchesError: no such corpus or task, unreadable data, or no example.
    """
    from bigssl_tasks import vocab

    task, model = _batches_task(corpus, data_dir, task, vocab_size)
    overrides = {} if batch_size is None else {"batch_size": batch_size}
    config = input_config(task=task, keep_fields=("id",), **overrides)
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
        raise BatchesError(str(error)) from error
    except StopIteration:
        raise BatchesError("the task has no examples within the length limits") from None
    count = num_batches
    print(
        f"show-batches: {count} batch{'es' * (count != 1)} in {time.perf_counter() - start:.1f} s"
    )
