"""`bigssl compile`: compile an experiment's train step for a TPU topology ahead of time.

    bigssl compile --gin_file=experiments/librispeech/pretrain_wav2vec2_xl.gin
    bigssl compile --gin_file=models/XL.gin --gin_file=mesh/tpu/v4-64_xl.gin
    bigssl compile --gin_file=models/smoke.gin --gin_file=mesh/fsdp.gin --topology=v5e-4 \
        --batch_size=16 --audio_seconds=4

The model is the gin's `ExperimentConfig.model` (any audio `TrainModel`: BEST-RQ, wav2vec 2.0,
w2v-BERT, CTC, RNN-T...; labeled when `ExperimentConfig.task_kind` is not 'unlabeled'), or,
when the gin binds none (a model gin plus a mesh gin), BEST-RQ from `EncoderConfig` and
`BestRqConfig`. With `MeshConfig`, `CompileConfig` (the flags override it), `OptimizerConfig`
and `TrainerConfig.microbatches` from gin, the full train step (forward, backward, optimizer
update, sharded and donated) is compiled with libtpu's TPU compiler on this host, which
prints one JSON object: per-chip memory against the chip's HBM ('fits', headroom), XLA's FLOPs
and step-time estimate, the analytic model FLOPs and the parameter count. Exit code 0 if it
fits, 1 if not or if the compile failed (the JSON says why), 2 for a usage error. See
`bigssl_jax/jobs/aot.py`.
"""

import dataclasses
import json
import os
import sys
from typing import Any

from absl import flags

from bigssl_jax import configurables
from bigssl_jax.jobs import aot

_TOPOLOGY = flags.DEFINE_string(
    "topology", None, "TPU topology, e.g. v4-64, v5p-256, v5e-256 or v4:2x4x4 (overrides gin)."
)
_NUM_SLICES = flags.DEFINE_integer("num_slices", None, "Identical slices (overrides gin).")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", None, "Global batch size (default: CompileConfig.per_chip_batch_size x chips)."
)
_AUDIO_SECONDS = flags.DEFINE_float(
    "audio_seconds", None, "Utterance length in seconds (overrides gin)."
)


def _compile_config() -> aot.CompileConfig:
    config = configurables.CompileConfig()
    overrides = {
        "topology": _TOPOLOGY.value,
        "num_slices": _NUM_SLICES.value,
        "audio_seconds": _AUDIO_SECONDS.value,
    }
    return dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})


def _model() -> tuple[Any, bool]:
    """The experiment's model and whether it trains on labeled batches (else BEST-RQ)."""
    experiment = configurables.ExperimentConfig()
    if experiment.model is None:
        return aot.best_rq_model(configurables.EncoderConfig(), configurables.BestRqConfig()), False
    return experiment.model, experiment.task_kind != "unlabeled"


def main(argv) -> int:
    del argv
    if not aot.libtpu_available():
        print(f"bigssl compile: {aot.INSTALL_HINT}", file=sys.stderr)
        return 2
    # Compile-only: JAX itself must not try to drive a TPU through the installed libtpu.
    if "JAX_PLATFORMS" not in os.environ:
        import jax  # noqa: PLC0415

        jax.config.update("jax_platforms", "cpu")
    try:
        model, labeled = _model()
        report = aot.compile_report(
            model,
            configurables.MeshConfig(),
            _compile_config(),
            labeled=labeled,
            optimizer=configurables.OptimizerConfig(),
            microbatches=configurables.TrainerConfig().microbatches,
            global_batch_size=_BATCH_SIZE.value,
        )
    except ValueError as error:
        print(f"bigssl compile: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0 if report["memory_per_chip"]["fits"] else 1
