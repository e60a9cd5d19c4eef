"""Runs the step-level core with TensorFlow and seqio made unimportable; prints one JSON line.

    python tests/tf_free_worker.py MODEL_DIR

`sys.modules` entries of None and a `sys.meta_path` finder placed first make `import
tensorflow` (and tensorflow_text, tensorflow_datasets...) and `import seqio` raise
`ModuleNotFoundError`, and `importlib.util.find_spec` answer None, as on a GPU image
that has JAX, flax, optax and orbax but not TensorFlow. Then every module of the core that a
training step needs is imported, and `trainer.train` runs two steps of a one-block BEST-RQ
model (init, jitted sharded step, TensorBoard-less metrics, an Orbax checkpoint).
Output: {'blocked': bool, 'failed': {module: error}, 'step': int, 'finite': bool (every
parameter after training), 'loaded': [blocked modules found in sys.modules]}. Used by
tests/test_tf_free_core.py.
"""

import importlib
import importlib.abc
import json
import sys


def _blocked(name: str) -> bool:
    top = name.split(".")[0]
    return top == "seqio" or top.startswith("tensorflow")


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if _blocked(name):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None


# A None entry is how Python marks a module as absent: `import` raises ModuleNotFoundError and
# `importlib.util.find_spec` answers None (libraries that probe for TensorFlow, such as etils'
# paths, take it as not installed). The finder catches every other tensorflow* package.
for _name in ("tensorflow", "tensorflow_text", "tensorflow_datasets", "seqio"):
    sys.modules[_name] = None
sys.meta_path.insert(0, _Blocker())

CORE_MODULES = (
    "bigssl_jax.layers.attention",
    "bigssl_jax.layers.conformer",
    "bigssl_jax.layers.frontend",
    "bigssl_jax.layers.masking",
    "bigssl_jax.layers.quantizers",
    "bigssl_jax.layers.rnnt_decoder",
    "bigssl_jax.layers.subsampling",
    "bigssl_jax.losses.ctc",
    "bigssl_jax.losses.rnnt",
    "bigssl_jax.losses.ssl_losses",
    "bigssl_jax.models.asr",
    "bigssl_jax.models.best_rq",
    "bigssl_jax.models.classifier",
    "bigssl_jax.models.ctc_model",
    "bigssl_jax.models.encoder",
    "bigssl_jax.models.rnnt_model",
    "bigssl_jax.models.transformer_lm",
    "bigssl_jax.models.w2v_bert",
    "bigssl_jax.models.wav2vec2",
    "bigssl_jax.train_state",
    "bigssl_jax.train_step",
    "bigssl_jax.optimizers",
    "bigssl_jax.partitioning",
    "bigssl_jax.checkpointing",
    "bigssl_jax.platform_defaults",
    "bigssl_jax.summaries",
    "bigssl_jax.trainer",
    "bigssl_jax.jobs.flops",
    "bigssl_jax.jobs.aot",
)


class _Batches:
    """Two-utterance batches of 0.4 s of noise; the position is saveable (`InputIterator`)."""

    def __init__(self):
        self.position = 0

    def __next__(self):
        import numpy as np

        rng = np.random.default_rng(self.position)
        self.position += 1
        audio = (0.1 * rng.standard_normal((2, 6400))).astype(np.float32)
        return {"audio": audio, "audio_paddings": np.zeros_like(audio)}

    def __iter__(self):
        return self

    def get_state(self):
        return self.position

    def set_state(self, position):
        self.position = position


def _train(model_dir: str) -> tuple[int, bool]:
    """(steps trained, every parameter finite) of two `trainer.train` steps."""
    import jax
    import numpy as np

    from bigssl_jax import optimizers, partitioning, trainer
    from bigssl_jax.models import best_rq
    from bigssl_jax.models import encoder as encoder_lib

    encoder = encoder_lib.EncoderConfig(
        model_dim=32, num_layers=1, num_heads=2, subsampling_channels=8
    )
    model = best_rq.BestRqTrainModel(encoder=encoder, objective=best_rq.BestRqConfig())
    result = trainer.train(
        model=model,
        optimizer=optimizers.OptimizerConfig(),
        config=trainer.TrainerConfig(num_steps=2, log_every=1, async_checkpointing=False),
        mesh=partitioning.make_mesh(partitioning.MeshConfig()),
        train_iter=_Batches(),
        model_dir=model_dir,
    )
    leaves = jax.tree.leaves(result.state.params)
    return result.step, all(bool(np.isfinite(np.asarray(x)).all()) for x in leaves)


def main() -> None:
    try:
        import tensorflow  # noqa: F401

        blocked = False
    except ImportError:
        blocked = True
    failed = {}
    for name in CORE_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as error:
            failed[name] = f"{type(error).__name__}: {error}"
    step, finite = _train(sys.argv[1]) if not failed else (0, False)
    loaded = sorted(name for name, module in sys.modules.items() if module and _blocked(name))
    report = {"blocked": blocked, "failed": failed, "step": step, "finite": finite}
    print(json.dumps({**report, "loaded": loaded}))


if __name__ == "__main__":
    main()
