"""`bigssl pseudo-label`: a teacher transcribes a corpus split for noisy student training.

    bigssl pseudo-label --checkpoint=/runs/ctc_teacher --data_dir=/tmp/demo \\
        --corpus=embedded_small --split=unlabeled --output_dir=/tmp/pl_gen1 --name=pl_gen1 \\
        --beam_size=8 --keep_top_fraction=0.9

Each process labels its own files of the split's unlabeled task (`bigssl_jax.jobs.pseudo_label`,
set up by `bigssl_jax.jobs.pseudo_label_job` as the Beam runner's is) into
`<output_dir>/shards/`, data-parallel over its devices; process 0 then filters
(`--min_confidence`, `--keep_top_fraction`, `--normalization`) and writes `manifest.json`
and `report.json` (labeled / kept counts, and the oracle WER of the kept labels when the
split carries the synthetic corpus's hidden transcripts). Re-running the same command after
a crash (even `kill -9`) labels only the unfinished files; re-running it when all are done
only re-filters. Register the result in a gin experiment with
`bigssl_tasks.pseudo_labeled.register_from_manifest('<output_dir>/manifest.json')`.

`--lm_checkpoint` (a `bigssl train-lm` run over the same vocabulary) shallow-fuses its
Transformer LM into the teacher's beam search with weight `--lm_weight`.

Exit codes: 0 done; 1 a user error (one line on stderr); 2 bad flags.
"""

import json
import sys

from absl import flags

from bigssl_jax.commands import common_flags

_CORPUS = flags.DEFINE_string("corpus", None, "Registered corpus to label.")
_SPLIT = flags.DEFINE_string("split", "unlabeled", "The corpus split to label.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where shards, manifest and report go.")
_NAME = flags.DEFINE_string(
    "name", None, "Name of the pseudo-labeled task; default <corpus>_<split>_pseudo."
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Utterances per decode call per process.")
_BUCKET_SECONDS = flags.DEFINE_list(
    "bucket_seconds", ["2", "4", "8", "16", "32"], "Audio length buckets (longer: not labeled)."
)
_MAX_OUTPUT_LENGTH = flags.DEFINE_integer(
    "max_output_length", None, "Longest transcript in tokens; default the run's decoding."
)
_MIN_CONFIDENCE = flags.DEFINE_float(
    "min_confidence", None, "Drop labels with exp(log p / (tokens + 1)) below this."
)
_KEEP_TOP_FRACTION = flags.DEFINE_float(
    "keep_top_fraction", 1.0, "Keep this fraction of the labels with the best rank scores."
)
_NORMALIZATION = flags.DEFINE_enum(
    "normalization", "token", ["token", "regression", "none"], "Length normalisation of ranks."
)


def _run(data_dir) -> int:
    import functools

    import jax

    from bigssl_jax import gin_utils
    from bigssl_jax.data import registry as registry_lib
    from bigssl_jax.jobs import pseudo_label, pseudo_label_job

    spec = functools.partial(
        pseudo_label_job.teacher_spec,
        common_flags.CHECKPOINT.value,
        run_model=functools.partial(gin_utils.run_model, overrides=common_flags.gin_overrides()),
        beam_size=common_flags.BEAM_SIZE.value,
        max_output_length=_MAX_OUTPUT_LENGTH.value,
        lm_checkpoint=common_flags.LM_CHECKPOINT.value,
        lm_weight=common_flags.LM_WEIGHT.value,
    )
    try:
        job = pseudo_label_job.set_up_job(
            data_dir=data_dir,
            corpus=_CORPUS.value,
            split=_SPLIT.value,
            output_dir=_OUTPUT_DIR.value,
            teacher_spec=spec,
            name=_NAME.value,
            batch_size=_BATCH_SIZE.value,
            bucket_seconds=tuple(float(s) for s in _BUCKET_SECONDS.value),
            filtering=pseudo_label.FilterConfig(
                min_confidence=_MIN_CONFIDENCE.value,
                keep_top_fraction=_KEEP_TOP_FRACTION.value,
                normalization=_NORMALIZATION.value,
            ),
        )
        units = pseudo_label.process_units(job.config.num_units)
        markers = pseudo_label.label_units(job.teacher, job.config, units)
    except (registry_lib.CorpusNotFoundError, KeyError, ValueError, FileNotFoundError) as error:
        print(f"pseudo-label: {error} (data dir {data_dir})", file=sys.stderr)
        return 1
    labeled = sum(len(m["utterances"]) for m in markers)
    print(f"pseudo-label: process {jax.process_index()}: {len(markers)} files, {labeled} labels")
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("bigssl pseudo-label: all units labeled")
    if jax.process_index() != 0:
        return 0
    print(json.dumps(job.finalize.run(job.config.output_dir), indent=2))
    return 0


def main(argv) -> int:
    """Labels this process's files, then (process 0) filters and writes the manifest."""
    del argv
    missing = [
        f"--{f.name}" for f in (common_flags.CHECKPOINT, _CORPUS, _OUTPUT_DIR) if not f.value
    ]
    if missing:
        print(f"pseudo-label: {', '.join(missing)} required", file=sys.stderr)
        return 2
    return _run(common_flags.data_dir())
