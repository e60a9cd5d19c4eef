"""Pseudo-labeling at scale: the same per-unit labeling as an Apache Beam pipeline.

    Create(units 0..U-1) -> Reshuffle -> ParDo(LabelUnits) -> Count -> finalize

Each worker loads the teacher once (`DoFn.setup`, from a `pseudo_label_job.TeacherSpec`:
the run, the decoding overrides and the fusion LM the launcher checked) and runs
`pseudo_label.label_unit` on the units it is handed: the same files, atomic renames and
done markers as `bigssl pseudo-label`, so a retried or speculatively duplicated bundle
rewrites a unit's one file and no utterance is labeled twice; re-running a failed pipeline
skips the units already done. After the last unit, one worker filters and writes the
manifest and report (`pseudo_label.finalize`). The job is set up as `bigssl pseudo-label`
sets up its own (`pseudo_label_job.set_up_job`). Needs the `beam` extra
(`pip install -e ".[beam]"`); runs on the DirectRunner, Dataflow, Flink or Spark
(see docs/self_training.md). The entry point, its flags and the gin seam are
`bigssl_jax.commands.beam_pseudo_label`:

    python -m bigssl_jax.commands.beam_pseudo_label --checkpoint=gs://b/runs/ctc \\
        --data_dir=gs://b/data --corpus=c --output_dir=gs://b/pl/gen1 -- \\
        --runner=DataflowRunner --project=P --region=R --temp_location=gs://b/tmp \\
        --setup_file=./setup.py
"""

from collections.abc import Callable

from bigssl_jax.jobs import pseudo_label, pseudo_label_job


def _finalize(_, output_dir: str, spec: pseudo_label_job.FinalizeSpec) -> dict:
    return spec.run(output_dir)


def build(
    pipeline,
    *,
    teacher_fn: Callable[[], pseudo_label.Teacher],
    config: pseudo_label.LabelConfig,
    finalize: pseudo_label_job.FinalizeSpec,
    register_tasks: Callable[[], object] | None = None,
):
    """Adds the labeling to `pipeline`; returns the PCollection of the one report.

    Args:
      pipeline: a `beam.Pipeline`.
      teacher_fn: builds the teacher on a worker (picklable, e.g. a
        `pseudo_label_job.TeacherSpec`'s `load`).
      config: the labeling job (`config.task` must be registered on the workers:
        `register_tasks` does it in each worker's setup).
      finalize: the filtering and manifest settings.
      register_tasks: registers the seqio task on a worker (picklable), or None when
        it is registered at import time.
    """
    import apache_beam as beam

    class LabelUnits(beam.DoFn):
        """Labels the units it is given with a teacher loaded once per worker."""

        def setup(self):
            if register_tasks is not None:
                register_tasks()
            self._decoder = pseudo_label.Decoder(teacher_fn(), config.decoding)

        def process(self, unit: int):
            marker = pseudo_label.label_unit(self._decoder, config, unit)
            yield unit, len(marker["utterances"])

    pseudo_label.start_job(config)
    return (
        pipeline
        | "Units" >> beam.Create(list(range(config.num_units)))
        | "Spread" >> beam.Reshuffle()
        | "Label" >> beam.ParDo(LabelUnits())
        | "AllDone" >> beam.combiners.Count.Globally()
        | "Finalize" >> beam.Map(_finalize, config.output_dir, finalize)
    )


def register_corpus(corpus: str, data_dir: str) -> None:
    """Registers the corpus's seqio tasks (on a worker, in `LabelUnits.setup`)."""
    from bigssl_tasks import corpus_tasks

    corpus_tasks.register_corpus_tasks(corpus, data_dir=data_dir)
