"""`bigssl train`: train a model described by an experiment gin (any stage).

    bigssl train --gin_file=experiments/pretrain_best_rq_smoke.gin --model_dir=/tmp/run \\
        --data_dir=/tmp/data

An experiment gin includes a model gin (`gin/models/`), a run gin (`gin/runs/`) and a mesh
gin (`gin/mesh/`). The command registers the seqio tasks of `ExperimentConfig.corpus`, builds
the mesh (`MeshConfig`), the model (`ExperimentConfig.model`), the optimizer
(`OptimizerConfig`) and the input pipelines (`train/InputConfig`, `eval/InputConfig`, gin
scopes over `InputConfig`; `bigssl_jax.experiment.asr_inputs`), and runs
`bigssl_jax.trainer.train` (`TrainerConfig`). Re-running the same command resumes from the
latest checkpoint in `--model_dir`.

Exit codes: 0 done; 1 a data or runtime error (one line on stderr) or training diverged; 2 a
usage or gin error (one line); 143 stopped by SIGTERM / SIGINT after saving a checkpoint.
"""

import functools
import sys

from bigssl_jax.commands import common_flags


def run(model_dir: str, data_dir) -> int:
    """Builds everything from gin and trains; returns the exit code."""
    from bigssl_jax import configurables, experiment
    from bigssl_jax.commands import training

    make_input = training.gin_scoped(configurables.InputConfig)
    build = functools.partial(
        experiment.asr_inputs, make_input=make_input, data_dir=data_dir, model_dir=model_dir
    )
    return training.run("train", build, model_dir=model_dir, data_dir=data_dir)


def main(argv) -> int:
    """Trains from the parsed gin into `--model_dir`."""
    if not common_flags.MODEL_DIR.value:
        print("train: --model_dir is required", file=sys.stderr)
        return 2
    return run(common_flags.MODEL_DIR.value, common_flags.data_dir())
