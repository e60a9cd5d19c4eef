"""What `bigssl train` and `bigssl train-lm` share: gin -> experiment -> trainer -> exit code.

Not a command itself: the commands call `run` with the experiment's input builder
(`bigssl_jax.experiment.asr_inputs` or `text_inputs`) and `gin_scoped` input configs.

Exit codes: 0 done; 1 a data or runtime error (one line on stderr) or training diverged; 2 a
usage or gin error (one line); 143 stopped by a signal after saving a checkpoint.
"""

import sys
from collections.abc import Callable
from typing import Any

PREEMPTED = 143


def gin_scoped(factory: Callable[..., Any]) -> Callable[..., Any]:
    """`make_input(scope, **fields)`: `factory(**fields)` inside gin scope `scope` (so that
    `train/InputConfig.batch_size = 16` binds the training input only)."""
    import gin

    def make_input(scope: str, **fields):
        with gin.config_scope(scope):
            return factory(**fields)

    return make_input


def platform_model(model: Any) -> Any:
    """`model` with the defaults of the platform JAX runs on (`bigssl_jax.platform_defaults`:
    bf16, cuDNN attention and remat on a GPU; nothing on CPU and TPU) for each of those
    encoder fields the gin leaves unbound; logs what it changes."""
    import jax
    from absl import logging

    from bigssl_jax import gin_utils, platform_defaults

    defaults = platform_defaults.for_platform(jax.default_backend())
    explicit = gin_utils.bound_fields("EncoderConfig", platform_defaults.ENCODER_FIELDS)
    platform_model = platform_defaults.apply_to_model(model, defaults, explicit)
    if platform_model is not model:
        logging.info("%s defaults: encoder %s", jax.default_backend(), platform_model.encoder)
    return platform_model


def run(
    prog: str,
    build_inputs: Callable[[Any], Any],
    *,
    model_dir: str,
    data_dir,
    task_kind: str | None = None,
    summary: Callable[[Any, Any], str] = lambda experiment, result: "",
) -> int:
    """Builds the experiment, its inputs, mesh, optimizer and trainer settings from gin and
    trains; returns the exit code.

    Args:
      prog: the command's name, the prefix of its messages.
      build_inputs: `build_inputs(experiment) -> experiment.TrainInputs`.
      model_dir: the run directory.
      data_dir: the data directory (named in error messages).
      task_kind: the only `ExperimentConfig.task_kind` the command trains (None: any).
      summary: `summary(experiment, result)`, appended to the final line (e.g. perplexity).
    """
    from bigssl_jax import configurables, input_pipeline, partitioning, trainer
    from bigssl_jax.data import registry as registry_lib

    experiment = configurables.ExperimentConfig()
    if not experiment.corpus or experiment.model is None:
        print(f"{prog}: the gin must bind ExperimentConfig.corpus and .model", file=sys.stderr)
        return 2
    if task_kind is not None and experiment.task_kind != task_kind:
        print(
            f"{prog}: ExperimentConfig.task_kind is '{experiment.task_kind}', not "
            f"'{task_kind}': this gin describes no {prog} run",
            file=sys.stderr,
        )
        return 2
    try:
        inputs = build_inputs(experiment)
        mesh = partitioning.make_mesh(configurables.MeshConfig())
        optimizer = configurables.OptimizerConfig()
        trainer_config = configurables.TrainerConfig()
    except (registry_lib.CorpusNotFoundError, ValueError, FileNotFoundError) as error:
        print(f"{prog}: {error} (data dir {data_dir})", file=sys.stderr)
        return 1
    try:
        result = trainer.train(
            model=platform_model(inputs.model),
            optimizer=optimizer,
            config=trainer_config,
            mesh=mesh,
            train_iter=inputs.train_iter,
            model_dir=model_dir,
            eval_iter_fn=inputs.eval_iter_fn,
        )
    except (
        input_pipeline.InputDataError,
        FileNotFoundError,
        ValueError,  # e.g. a checkpointed input position from other input settings
        trainer.NonFiniteError,
    ) as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 1
    if result.preempted:
        print(f"{prog}: stopped at step {result.step} on a signal; checkpoint saved")
        return PREEMPTED
    shown = summary(experiment, result)
    print(f"{prog}: done at step {result.step}{shown}; eval {result.eval_metrics}")
    return 0
