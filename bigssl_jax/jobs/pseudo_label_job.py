"""One pseudo-labeling job set-up, shared by `bigssl pseudo-label` and the Beam runner.

    spec = functools.partial(pseudo_label_job.teacher_spec, "/runs/ctc",
                             run_model=gin_utils.run_model, beam_size=8)   # at the seam
    job = pseudo_label_job.set_up_job(data_dir=d, corpus="c", split="unlabeled",
                                      output_dir="/pl/gen1", teacher_spec=spec)
    pseudo_label.label_units(job.teacher, job.config, pseudo_label.process_units(...))
    report = job.finalize.run(job.config.output_dir)

`set_up_job` finds the split in the corpus registry, registers the corpus's tasks, loads the
teacher (a `TeacherSpec`: its run, decoding overrides and fusion LM) and describes the
labeling (`pseudo_label.LabelConfig`) and the last step (`FinalizeSpec`: filtering, the
manifest's name and vocabulary, the oracle WER's source files). The teacher's and the LM's
model wrappers are built at the seam from their runs' gin (`gin_utils.run_model`, passed in
as `run_model`) and travel inside the picklable `TeacherSpec`, so that Beam workers restore
the teacher the launcher checked without reading gin.
"""

import dataclasses
import os
from collections.abc import Callable
from typing import Any

from bigssl_jax.jobs import pseudo_label
from bigssl_jax.models import asr

# run_model(checkpoint, own_config=False) -> the run's model wrapper (gin_utils.run_model).
RunModel = Callable[..., Any]


def load_teacher(
    checkpoint: os.PathLike,
    model: Any,
    *,
    decoding: asr.DecodingConfig | None = None,
    lm: Any = None,
) -> pseudo_label.Teacher:
    """The teacher saved at `checkpoint` (a run, checkpoints or step directory).

    Args:
      checkpoint: where `bigssl train` saved it (see `bigssl_jax.inference`).
      model: the run's model wrapper, built at the seam (`gin_utils.run_model`).
      decoding: replaces the run's decoding settings.
      lm: a shallow-fusion language model (`decoding.lm_interface`), or None.

    Returns:
      The teacher, named by its step directory.
    """
    from bigssl_jax import checkpointing, inference

    loaded = inference.load_model(checkpoint, model)
    model = dataclasses.replace(loaded.model, decoding=decoding or loaded.model.decoding, lm=lm)
    step_dir = checkpointing.resolve_init_checkpoint(checkpoint)
    return pseudo_label.Teacher(model, loaded.variables, str(step_dir))


@dataclasses.dataclass(frozen=True)
class TeacherSpec:
    """How to load a teacher: its run and model, decoding overrides and fusion LM. Picklable
    (the model wrappers are frozen dataclasses, built once by the launcher from the runs'
    gin), so that every Beam worker restores the teacher the launcher checked (`load`)
    without reading gin.

    Attributes:
      checkpoint: the teacher's run, checkpoints or step directory.
      model: the teacher run's model wrapper (`gin_utils.run_model`).
      beam_size: replaces the run's beam size (None: the run's).
      max_output_length: replaces the run's longest transcript in tokens (None: the run's).
      lm_checkpoint: a `bigssl train-lm` run (resolve it to a step directory first, so that
        every worker fuses the same step), a `bigssl train-ngram` run, or None for no fusion.
      lm_model: the Transformer LM run's model wrapper (None for an n-gram run).
      lm_weight: the fusion weight (None: the run's `DecodingConfig.lm_weight`).
    """

    checkpoint: str
    model: Any
    beam_size: int | None = None
    max_output_length: int | None = None
    lm_checkpoint: str | None = None
    lm_model: Any = None
    lm_weight: float | None = None

    def load(self) -> pseudo_label.Teacher:
        """The teacher with the overrides applied and the LM fused.

        Raises:
          FileNotFoundError: no finalised checkpoint at the teacher or the LM.
          ValueError: a teacher without a vocabulary, or an LM that cannot be fused
            (`inference.with_fusion_lm`).
        """
        from bigssl_jax import inference

        teacher = load_teacher(self.checkpoint, self.model)
        if not teacher.model.vocabulary:
            raise ValueError(
                f"the teacher at {self.checkpoint} has no vocabulary (vocabulary.model)"
            )
        overrides = {"beam_size": self.beam_size, "max_output_length": self.max_output_length}
        decoding = dataclasses.replace(
            teacher.model.decoding, **{k: v for k, v in overrides.items() if v is not None}
        )
        model = dataclasses.replace(teacher.model, decoding=decoding)
        lm = None
        if self.lm_checkpoint and inference.is_ngram_run(self.lm_checkpoint):
            lm = inference.load_ngram_run(self.lm_checkpoint)
        elif self.lm_checkpoint:
            lm = inference.load_model(self.lm_checkpoint, self.lm_model)
        model = inference.with_fusion_lm(model, lm, self.lm_weight)
        return dataclasses.replace(teacher, model=model)


def teacher_spec(
    checkpoint: str,
    *,
    run_model: RunModel,
    beam_size: int | None = None,
    max_output_length: int | None = None,
    lm_checkpoint: str | None = None,
    lm_weight: float | None = None,
) -> TeacherSpec:
    """The `TeacherSpec` of a teacher run and an optional `bigssl train-lm` or
    `bigssl train-ngram` run.

    The LM's step is resolved here, once, so that the step fused (by every worker) is the
    step the manifest names; an n-gram run has no model to build.

    Args:
      checkpoint: the teacher's run, checkpoints or step directory.
      run_model: builds a run's model wrapper from its gin (`gin_utils.run_model`).
      beam_size, max_output_length, lm_weight: see `TeacherSpec`.
      lm_checkpoint: the LM's run, checkpoints or step directory, or None.

    Raises:
      FileNotFoundError: no finalised checkpoint or no gin config at either run.
    """
    from bigssl_jax import inference

    lm_step_dir = inference.resolve_lm_checkpoint(lm_checkpoint)
    transformer_lm = lm_step_dir and not inference.is_ngram_run(lm_step_dir)
    return TeacherSpec(
        checkpoint,
        run_model(checkpoint),
        beam_size=beam_size,
        max_output_length=max_output_length,
        lm_checkpoint=lm_step_dir,
        lm_model=run_model(lm_step_dir, own_config=True) if transformer_lm else None,
        lm_weight=lm_weight,
    )


@dataclasses.dataclass(frozen=True)
class FinalizeSpec:
    """What the last step needs (see `pseudo_label.finalize`).

    Attributes:
      name: the pseudo-labeled task's name, recorded in the manifest.
      vocabulary: the sentencepiece model the task tokenises with (the teacher's).
      filtering: which labels to keep.
      oracle_files: the source records holding hidden transcripts, for the oracle WER
        (empty: no oracle report).
      num_input_examples: the source split's size.
    """

    name: str
    vocabulary: str
    filtering: pseudo_label.FilterConfig = pseudo_label.FilterConfig()
    oracle_files: tuple[str, ...] = ()
    num_input_examples: int | None = None

    def run(self, output_dir: str) -> dict:
        """Filters the finished job's labels, writes its manifest and report; the report."""
        oracle = pseudo_label.read_oracle_texts(self.oracle_files) if self.oracle_files else None
        return pseudo_label.finalize(
            output_dir,
            name=self.name,
            vocabulary=self.vocabulary,
            filtering=self.filtering,
            oracle=oracle,
            num_input_examples=self.num_input_examples,
        )


@dataclasses.dataclass(frozen=True)
class Job:
    """A pseudo-labeling job, set up.

    Attributes:
      teacher_spec: how every worker loads the teacher.
      teacher: the teacher, loaded (and so checked) by the launcher.
      config: the labeling.
      finalize: the last step.
    """

    teacher_spec: TeacherSpec
    teacher: pseudo_label.Teacher
    config: pseudo_label.LabelConfig
    finalize: FinalizeSpec


def set_up_job(
    *,
    data_dir: os.PathLike,
    corpus: str,
    split: str,
    output_dir: str,
    teacher_spec: Callable[[], TeacherSpec],
    name: str | None = None,
    batch_size: int = 16,
    bucket_seconds: tuple[float, ...] | None = None,
    filtering: pseudo_label.FilterConfig | None = None,
) -> Job:
    """Sets up the job of labeling `split` of `corpus` into `output_dir`.

    Args:
      data_dir: the data directory (the corpus registry).
      corpus: a registered corpus; its tasks are registered here.
      split: the split labeled (its unlabeled task).
      output_dir: where shards, markers, manifest and report go.
      teacher_spec: makes the `TeacherSpec` (called once the split is found).
      name: the pseudo-labeled task's name; default `<corpus>_<split>_pseudo`.
      batch_size: utterances per decode call on a process.
      bucket_seconds: audio length buckets (None: `LabelConfig`'s).
      filtering: which labels to keep (default: all).

    Raises:
      registry.CorpusNotFoundError, KeyError: no such corpus or split.
      FileNotFoundError, ValueError: a missing or unusable teacher or LM.
    """
    from bigssl_jax import paths
    from bigssl_jax.data import registry as registry_lib
    from bigssl_jax.data import schema
    from bigssl_tasks import corpus_tasks

    info = registry_lib.CorpusRegistry(paths.registry_path(data_dir)).split(corpus, split)
    corpus_tasks.register_corpus_tasks(corpus, data_dir=data_dir)
    task = corpus_tasks.task_name(corpus, split, "unlabeled")
    spec = teacher_spec()
    teacher = spec.load()
    buckets = {} if bucket_seconds is None else {"bucket_seconds": tuple(bucket_seconds)}
    config = pseudo_label.LabelConfig(
        task=task,
        output_dir=output_dir,
        num_units=pseudo_label.num_units(task),
        teacher=teacher.name,
        decoding=teacher.model.decoding,
        lm=spec.lm_checkpoint or "",
        batch_size=batch_size,
        **buckets,
    )
    finalize = FinalizeSpec(
        name=name or f"{corpus}_{split}_pseudo",
        vocabulary=teacher.model.vocabulary,
        filtering=filtering or pseudo_label.FilterConfig(),
        oracle_files=tuple(info.files) if schema.ORACLE_TEXT_FIELD in info.extra_fields else (),
        num_input_examples=info.num_examples,
    )
    return Job(spec, teacher, config, finalize)
