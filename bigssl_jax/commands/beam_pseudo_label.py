"""The Beam pseudo-labeling runner's entry point (`bigssl_jax.jobs.beam_pseudo_label`).

    python -m bigssl_jax.commands.beam_pseudo_label --checkpoint=gs://b/runs/ctc \\
        --data_dir=gs://b/data --corpus=c --output_dir=gs://b/pl/gen1 -- \\
        --runner=DataflowRunner --project=P --region=R --temp_location=gs://b/tmp \\
        --setup_file=./setup.py

Not a `bigssl` subcommand: Beam reads its own pipeline options after `--`, so the flags are
argparse's. Like a command it holds the flags, the exit code and the gin seam: the teacher's
(and LM's) model wrappers are built here from their runs' gin (`gin_utils.run_model`), once,
for every worker. `--lm_checkpoint` / `--lm_weight` shallow-fuse a `bigssl train-lm` run into
the teacher's beam search, as `bigssl pseudo-label` does. Exit codes: 0 done, 1 a missing
corpus, checkpoint or bad setting (one line on stderr).
"""

import functools
import json
import sys
from collections.abc import Sequence

from bigssl_jax.jobs import beam_pseudo_label, pseudo_label, pseudo_label_job


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bigssl_jax.commands.beam_pseudo_label [flags] -- [Beam pipeline options]`."""
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
        reports = beam_pseudo_label.build(
            pipeline,
            teacher_fn=job.teacher_spec.load,
            config=job.config,
            finalize=job.finalize,
            register_tasks=functools.partial(
                beam_pseudo_label.register_corpus, args.corpus, args.data_dir
            ),
        )
        reports | "Print" >> beam.Map(lambda report: print(json.dumps(report, indent=2)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
