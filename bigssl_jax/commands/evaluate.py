"""`bigssl evaluate`: score a trained model on its corpus's evaluation splits.

    bigssl evaluate --checkpoint=/runs/ctc --data_dir=/tmp/demo
    bigssl evaluate --checkpoint=/runs/ctc/checkpoints/3000 --splits=test --beam_size=8
    bigssl evaluate --checkpoint=/runs/ctc --beam_size=8 --lm_checkpoint=/runs/lm --lm_weight=0.3
    bigssl evaluate --checkpoint=/runs/ctc_ema --noema      # the raw params of an EMA run
    bigssl evaluate --checkpoint=/runs/ctc --corpus=other --splits=test   # another corpus

Rebuilds the model from the run's `config.gin` with the command's `--gin_file` /
`--gin_bindings` on top (`gin_utils.run_model`), restores the checkpoint
(`bigssl_jax.inference`), and for each split runs `model.score` over the whole split (eval input
settings from the gin's `eval/InputConfig`, one pass, no shuffling): WER and CER for ASR models,
accuracy and a confusion matrix for classifiers. Writes per split `<output_dir>/<split>/` (the
report's files: `wer.json`, `transcripts.tsv`, `worst.json` for ASR),
`<output_dir>/results.json` with every split's metrics, the step directories scored (model and
fused LM), which params ('ema' or 'params') and the decoding settings, and TensorBoard scalars
`<split>/<metric>` at the checkpoint's step; prints one line per split. `--lm_checkpoint` (a
`bigssl train-lm` run over the same vocabulary) shallow-fuses its LM into the beam search with
weight `--lm_weight` (`inference.with_fusion_lm`). A run trained with
`OptimizerConfig.ema_decay` is scored with the EMA of its params, as its own evaluations were;
`--noema` scores its raw params instead (default output `<run>/evaluate/<step>-noema`).
`--corpus` scores another registered corpus than the run's (a binding of
`ExperimentConfig.corpus` on top of its config); an ASR model always reads and writes text with
the run's own vocabulary, and a corpus whose asked splits carry no transcripts is refused.

Exit codes: 0 done; 1 a missing checkpoint, corpus, split, transcript or vocabulary (one
line on stderr).
"""

import json
import sys

from absl import flags

from bigssl_jax.commands import common_flags

_SPLITS = flags.DEFINE_list(
    "splits", ["dev", "test", "test_clean"], "Corpus splits to score (missing ones are skipped)."
)
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Where to write the reports (default <run>/evaluate/<step>)."
)
_MAX_BATCHES = flags.DEFINE_integer(
    "max_batches", None, "Score at most this many batches per split (default: all)."
)
_CORPUS = flags.DEFINE_string(
    "corpus", None, "Registered corpus to score (default: the one the run was trained on)."
)
_EMA = flags.DEFINE_bool(
    "ema", True, "Score the EMA of the params when the run kept one (--noema: the params)."
)


def evaluate(
    checkpoint: str,
    data_dir,
    splits,
    output_dir,
    beam_size,
    max_batches,
    lm_checkpoint=None,
    lm_weight=None,
    ema=True,
    overrides=((), ()),
) -> dict:
    """Scores the checkpoint on each split; returns {split: metrics}.

    Raises:
      FileNotFoundError: no checkpoint (or no config to rebuild its model).
      ValueError: none of `splits` exists in the corpus, or an ASR model is asked to score
        splits without transcripts.
      registry_lib.CorpusNotFoundError: the corpus is not registered.
    """
    import dataclasses
    import itertools

    import jax
    from clu import metric_writers

    from bigssl_jax import checkpointing, configurables, gin_utils, inference, input_pipeline, paths
    from bigssl_jax import experiment as experiment_lib
    from bigssl_jax.commands import training
    from bigssl_jax.models import asr

    loaded = gin_utils.load_model(checkpoint, ema=ema, overrides=overrides)
    model = asr.with_beam_size(loaded.model, beam_size)
    experiment = configurables.ExperimentConfig()
    reads_text = inference.reads_text(model)
    splits = _scorable_splits(experiment.corpus, splits, data_dir, reads_text)
    vocabulary = model.vocabulary if reads_text else None
    names = experiment_lib.register_tasks(experiment, data_dir, vocab_model=vocabulary or None)
    model = experiment_lib.with_label_names(model, experiment, data_dir)
    make_input = training.gin_scoped(configurables.InputConfig)
    tasks = {split: experiment_lib.task_name(experiment, split) for split in splits}
    inputs = {
        split: experiment_lib.eval_input_config(make_input, task, model)
        for split, task in tasks.items()
        if task in names
    }
    # The LM's step is resolved once, so the step fused is the step results.json names.
    lm_step_dir = inference.resolve_lm_checkpoint(lm_checkpoint)
    lm = gin_utils.load_fusion_lm(lm_step_dir)  # a Transformer LM's load clears gin
    model = inference.with_fusion_lm(model, lm, lm_weight)
    default_dir = loaded.run_dir / "evaluate" / f"{loaded.step}{'' if ema else '-noema'}"
    output_dir = paths.as_path(output_dir or default_dir)
    writer = metric_writers.create_default_writer(
        str(output_dir), just_logging=jax.process_index() > 0
    )
    results = {}
    for split, input_config in inputs.items():
        batches = input_pipeline.make_iterator(input_config)
        report = model.score(loaded.variables, itertools.islice(batches, max_batches))
        report.write(output_dir / split)
        results[split] = dict(report.metrics)
        writer.write_scalars(loaded.step, {f"{split}/{k}": v for k, v in report.metrics.items()})
        shown = " ".join(f"{k} {v:.4f}" for k, v in report.metrics.items())
        print(f"evaluate: {split}: {shown}", flush=True)
    writer.flush()
    output_dir.mkdir(parents=True, exist_ok=True)
    step_dir = checkpointing.checkpoint_dir(loaded.run_dir) / str(loaded.step)
    summary = {
        "checkpoint": str(step_dir),
        "step": loaded.step,
        "params": loaded.params_source,
        "results": results,
    }
    if isinstance(model, asr.AsrModel):
        summary["decoding"] = dataclasses.asdict(model.decoding)
        summary["lm"] = str(lm_step_dir or "")
    (output_dir / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    return results


def _scorable_splits(corpus: str, splits, data_dir, needs_text: bool) -> list[str]:
    """The asked `splits` that `corpus` has (in order); an ASR model (`needs_text`) needs
    their transcripts.

    Raises:
      ValueError: none of them exists, or one has no transcripts when `needs_text`.
    """
    from bigssl_jax import paths
    from bigssl_jax.data import registry as registry_lib

    available = registry_lib.CorpusRegistry(paths.registry_path(data_dir)).splits(corpus)
    present = [split for split in splits if split in available]
    if not present:
        raise ValueError(
            f"corpus '{corpus}' has none of the splits {list(splits)} (it has {sorted(available)})"
        )
    untranscribed = [split for split in present if not available[split].labeled]
    if needs_text and untranscribed:
        raise ValueError(
            f"corpus '{corpus}' has no transcripts in split(s) {untranscribed}: WER needs "
            "them (`bigssl pseudo-label` or `bigssl embed` read audio only)"
        )
    return present


def main(argv) -> int:
    """Evaluates `--checkpoint` on `--splits`."""
    del argv
    if not common_flags.CHECKPOINT.value:
        print("evaluate: --checkpoint is required", file=sys.stderr)
        return 2
    from bigssl_jax.data import registry as registry_lib

    try:
        results = evaluate(
            common_flags.CHECKPOINT.value,
            common_flags.data_dir(),
            _SPLITS.value,
            _OUTPUT_DIR.value,
            common_flags.BEAM_SIZE.value,
            _MAX_BATCHES.value,
            common_flags.LM_CHECKPOINT.value,
            common_flags.LM_WEIGHT.value,
            _EMA.value,
            common_flags.gin_overrides(
                *([f"ExperimentConfig.corpus = '{_CORPUS.value}'"] if _CORPUS.value else [])
            ),
        )
    except (FileNotFoundError, ValueError, registry_lib.CorpusNotFoundError) as error:
        print(f"evaluate: {error}", file=sys.stderr)
        return 1
    if not results:
        print(f"evaluate: none of the splits {_SPLITS.value} exist", file=sys.stderr)
        return 1
    return 0
