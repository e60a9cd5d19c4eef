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
(see docs/self_training.md).

    python -m bigssl_jax.jobs.beam_pseudo_label --checkpoint=gs://b/runs/ctc \\
        --data_dir=gs://b/data --corpus=c --output_dir=gs://b/pl/gen1 -- \\
        --runner=DataflowRunner --project=P --region=R --temp_location=gs://b/tmp \\
        --setup_file=./setup.py

`--lm_checkpoint` / `--lm_weight` shallow-fuse a `bigssl train-lm` run into the teacher's
beam search, as `bigssl pseudo-label` does.
"""

import functools
import json
import sys
from collections.abc import Callable, Sequence

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


def _register_corpus(corpus: str, data_dir: str) -> None:
    from bigssl_tasks import corpus_tasks

    corpus_tasks.register_corpus_tasks(corpus, data_dir=data_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bigssl_jax.jobs.beam_pseudo_label [flags] -- [Beam pipeline options]`.

    An entry point, like a `bigssl` command: it builds the teacher's (and LM's) model from
    the runs' gin here (`gin_utils.run_model`), once, for every worker.
    """
    import argparse

    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from bigssl_jax import gin_utils
    from bigssl_jax.data import registry as registry_lib

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag in ("checkpoint", "data_dir", "corpus", "output_dir"):
        parser.add_argument(f"--{flag}", required=True)
    parser.add_argument("--split", default="unlabeled")
    parser.add_argument("--name", default=None)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--beam_size", type=int, default=None)
    parser.add_argument("--max_output_length", type=int, default=None)
    parser.add_argument("--lm_checkpoint", default=None, help="a train-lm run to fuse")
    parser.add_argument("--lm_weight", type=float, default=None)
    parser.add_argument("--min_confidence", type=float, default=None)
    parser.add_argument("--keep_top_fraction", type=float, default=1.0)
    parser.add_argument("--normalization", default="token", choices=pseudo_label.NORMALIZATIONS)
    args, beam_args = parser.parse_known_args(argv)
    spec = functools.partial(
        pseudo_label_job.teacher_spec,
        args.checkpoint,
        run_model=gin_utils.run_model,
        beam_size=args.beam_size,
        max_output_length=args.max_output_length,
        lm_checkpoint=args.lm_checkpoint,
        lm_weight=args.lm_weight,
    )
    try:  # the teacher is loaded here: checked once, its settings and name go into the job
        job = pseudo_label_job.set_up_job(
            data_dir=args.data_dir,
            corpus=args.corpus,
            split=args.split,
            output_dir=args.output_dir,
            teacher_spec=spec,
            name=args.name,
            batch_size=args.batch_size,
            filtering=pseudo_label.FilterConfig(
                min_confidence=args.min_confidence,
                keep_top_fraction=args.keep_top_fraction,
                normalization=args.normalization,
            ),
        )
    except (registry_lib.CorpusNotFoundError, KeyError, FileNotFoundError, ValueError) as error:
        print(f"beam_pseudo_label: {error}", file=sys.stderr)
        return 1
    with beam.Pipeline(options=PipelineOptions(beam_args)) as pipeline:
        reports = build(
            pipeline,
            teacher_fn=job.teacher_spec.load,
            config=job.config,
            finalize=job.finalize,
            register_tasks=functools.partial(_register_corpus, args.corpus, args.data_dir),
        )
        reports | "Print" >> beam.Map(lambda report: print(json.dumps(report, indent=2)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
