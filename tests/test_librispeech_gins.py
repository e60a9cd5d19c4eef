"""The LibriSpeech recipe gins (gin/experiments/librispeech/): parse, build, check the recipe.

Each experiment is parsed, its model built abstractly (`jax.eval_shape` of the train state:
nothing is allocated) and sharded over its TPU mesh's compile-only devices (libtpu, the
`tpu-aot` extra), and its key hyperparameters are checked against ../shared/RECIPE.md:
model size, objective, optimizer and schedule, steps, and the global batch of 2048.
"""

import math

import gin
import jax
import jax.numpy as jnp
import pytest

from bigssl_jax import configurables, gin_utils, optimizers, partitioning, train_step
from bigssl_jax.jobs import aot
from bigssl_jax.models import w2v_bert, wav2vec2

GLOBAL_BATCH = 2048
CHIPS_PER_HOST = 4  # v4 and v5p TPU VMs

# name -> (objective, layers, contrastive layers, optimizer, topology, parameters (B) range)
EXPERIMENTS = {
    "pretrain_wav2vec2_xl": ("wav2vec2", 24, None, "adam", "v4-64", (0.55, 0.65)),
    "pretrain_wav2vec2_xxl": ("wav2vec2", 42, None, "adafactor", "v4-64", (0.95, 1.1)),
    "pretrain_w2v_bert_xl": ("w2v_bert", 24, 12, "adam", "v4-64", (0.55, 0.65)),
    "pretrain_w2v_bert_xxl": ("w2v_bert", 42, 12, "adafactor", "v4-64", (0.95, 1.1)),
    "pretrain_wav2vec2_g": ("wav2vec2", 36, None, "adafactor", "v5p-256", (7.5, 8.2)),
}


def _build(name: str, bindings=()) -> dict:
    """The configurables an experiment gin binds (gin state cleared afterwards)."""
    gin.clear_config()
    try:
        gin_utils.parse([f"experiments/librispeech/{name}.gin"], bindings)
        built = {
            "experiment": configurables.ExperimentConfig(),
            "trainer": configurables.TrainerConfig(),
            "optimizer": configurables.OptimizerConfig(),
            "mesh": configurables.MeshConfig(),
            "compile": configurables.CompileConfig(),
        }
        with gin.config_scope("train"):
            built["train_input"] = configurables.InputConfig(task="any")
    finally:
        gin.clear_config()
    return built


def _abstract_state(model, optimizer):
    batch = {"audio": jax.ShapeDtypeStruct((1, 16000), jnp.float32)}
    tx = optimizers.make_optimizer(optimizer)
    return jax.eval_shape(
        lambda rng: train_step.init_state(model, tx, rng, batch), jax.random.key(0)
    )


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_librispeech_pretraining_experiment(name):
    objective, layers, contrastive, optimizer_name, topology, size = EXPERIMENTS[name]
    built = _build(name)
    experiment, model = built["experiment"], built["experiment"].model
    assert experiment.corpus == "librilight" and experiment.train_split == "unlabeled"
    expected_model = {
        "wav2vec2": wav2vec2.Wav2Vec2TrainModel,
        "w2v_bert": w2v_bert.W2vBertTrainModel,
    }
    assert isinstance(model, expected_model[objective])
    assert model.encoder.num_layers == layers and not model.encoder.use_relative_position
    assert model.encoder.model_dim == (3072 if topology == "v5p-256" else 1024)
    if contrastive is not None:
        assert model.objective.num_contrastive_layers == contrastive
        assert model.objective.contrastive.num_codes == 1024
    else:
        assert (model.objective.num_groups, model.objective.num_codes) == (2, 320)
        assert model.objective.num_negatives == 100

    optimizer = built["optimizer"]
    assert (optimizer.name, optimizer.b1, optimizer.b2) == (optimizer_name, 0.9, 0.98)
    assert (optimizer.peak_lr, optimizer.warmup_steps, optimizer.decay) == (2e-3, 25000, "rsqrt")
    assert built["trainer"].num_steps == 400_000

    # The global batch: per-host batch x hosts of the topology = the recipe's 2048.
    assert built["compile"].topology == topology
    hosts = aot.parse_topology(topology).num_chips // CHIPS_PER_HOST
    assert built["train_input"].batch_size * hosts == GLOBAL_BATCH
    assert built["train_input"].longest_seconds == 16.0

    # Built abstractly and sharded over the topology's chips: every sharded dim divides.
    boxed = _abstract_state(model, optimizer)
    params = sum(math.prod(x.shape) for x in jax.tree.leaves(boxed.params)) / 1e9
    assert size[0] < params < size[1], params
    devices = aot.topology_devices(aot.parse_topology(topology))
    mesh = partitioning.make_mesh(built["mesh"], devices)
    assert mesh.shape["fsdp"] == len(devices)
    partitioning.state_shardings(boxed, mesh, partitioning.LOGICAL_AXIS_RULES)


# name -> (layers, optimizer, noisy student)
FINETUNING = {
    "finetune_rnnt_xl": (24, "adam", False),
    "finetune_rnnt_xxl": (42, "adafactor", False),
    "nst_student_gen1_xl": (24, "adam", True),
    "nst_student_gen2_xl": (24, "adam", True),
    "nst_student_gen3_xxl": (42, "adafactor", True),
    "nst_student_gen4_xxl_plus": (43, "adafactor", True),
}
FINETUNE_BATCH = 256


@pytest.mark.parametrize("name", sorted(FINETUNING))
def test_librispeech_finetuning_and_student_experiment(name):
    from bigssl_jax.models import rnnt_model

    layers, optimizer_name, student = FINETUNING[name]
    built = _build(name, ["PSEUDO_LABELS = 'gs://bucket/pseudo/gen1'"] if student else [])
    experiment, model = built["experiment"], built["experiment"].model
    assert experiment.corpus == "librispeech" and experiment.train_split == "labeled"
    assert isinstance(model, rnnt_model.RnntTrainModel)
    assert model.encoder.num_layers == layers and model.vocab_size == 1024
    assert (model.decoder.lstm_layers, model.decoder.lstm_dim) == (2, 640)
    assert model.spec_augment is not None
    if student:
        assert experiment.pseudo_labels == ("gs://bucket/pseudo/gen1",)
        assert experiment.mix_ratios == (1, 9)
    else:
        assert experiment.pseudo_labels == ()

    optimizer = built["optimizer"]
    assert optimizer.name == optimizer_name
    assert (optimizer.encoder_peak_lr, optimizer.encoder_warmup_steps) == (3e-4, 5000)
    assert (optimizer.peak_lr, optimizer.warmup_steps) == (1e-3, 1500)
    config = built["trainer"]
    assert config.init_params_scopes == ("encoder",) and config.best_metric == "wer"
    hosts = aot.parse_topology(built["compile"].topology).num_chips // CHIPS_PER_HOST
    assert built["train_input"].batch_size * hosts == FINETUNE_BATCH

    boxed = _abstract_state(model, optimizer)
    assert set(boxed.params) == {"encoder", "decoder"}
    devices = aot.topology_devices(aot.parse_topology(built["compile"].topology))
    mesh = partitioning.make_mesh(built["mesh"], devices)
    partitioning.state_shardings(boxed, mesh, partitioning.LOGICAL_AXIS_RULES)
