"""Ahead-of-time compilation for TPU topologies (needs libtpu: the `tpu-aot` extra).

Fast checks only: topology names and HBM table, the compile-only devices, compiles of
smoke-sized train steps on a 4-chip v5e (BEST-RQ, and the wav2vec 2.0 and CTC experiments as
`bigssl compile` builds them from their gin), and a configuration too large for its chips
that must come back as a 'does not fit' report, not an exception.
"""

import gin
import pytest

from bigssl_jax import gin_utils, partitioning
from bigssl_jax.commands import compile as compile_command
from bigssl_jax.jobs import aot
from bigssl_jax.models import best_rq, ctc_model, wav2vec2
from bigssl_jax.models import encoder as encoder_lib

GIB = 2**30

# gin/models/smoke.gin.
SMOKE = encoder_lib.EncoderConfig(
    model_dim=64, num_layers=2, num_heads=4, subsampling_channels=16, use_relative_position=True
)
SMALL_OBJECTIVE = best_rq.BestRqConfig(codebook_size=256)


@pytest.mark.parametrize(
    ("name", "libtpu_name", "chips", "hbm_gib"),
    [
        ("v4-8", "v4:2x2x1", 4, 32),
        ("v4-16", "v4:2x2x2", 8, 32),
        ("v4-64", "v4:2x4x4", 32, 32),
        ("v4-128", "v4:4x4x4", 64, 32),
        ("v5p-128", "v5p:4x4x4", 64, 95),
        ("v5p-256", "v5p:4x4x8", 128, 95),
        ("v5e-4", "v5e:2x2", 4, 16),
        ("v5e-256", "v5e:16x16", 256, 16),
        ("v6e-8", "v6e:2x4", 8, 32),
        ("v4:2x4x4", "v4:2x4x4", 32, 32),
    ],
)
def test_parse_topology(name, libtpu_name, chips, hbm_gib):
    topology = aot.parse_topology(name)
    assert topology.topology_name == libtpu_name
    assert topology.num_chips == chips
    assert topology.hbm_bytes_per_chip == hbm_gib * GIB


@pytest.mark.parametrize("name", ["v4-6", "v4-12", "v7-8", "v5e:2x2x2", "tpu-8", "v4-2"])
def test_parse_topology_rejects(name):
    with pytest.raises(ValueError):
        aot.parse_topology(name)


def test_devices_are_chips():
    """v4 megacore: one device per chip (two cores each); slices give slice indices."""
    devices = aot.topology_devices(aot.parse_topology("v4-16"))
    assert len(devices) == 8
    assert {d.num_cores for d in devices} == {2}
    two_slices = aot.topology_devices(aot.parse_topology("v5e-4", num_slices=2))
    assert sorted({d.slice_index for d in two_slices}) == [0, 1]


def test_compile_smoke_fits():
    report = aot.compile_report(
        aot.best_rq_model(SMOKE, SMALL_OBJECTIVE),
        partitioning.MeshConfig(data=1, fsdp=-1),
        aot.CompileConfig(topology="v5e-4", per_chip_batch_size=2, audio_seconds=1.0),
    )
    memory = report["memory_per_chip"]
    assert memory["fits"] is True
    assert memory["hbm_bytes"] == 16 * GIB
    assert 0 < memory["argument_bytes"] and 0 < memory["temp_bytes"]
    assert memory["total_bytes"] < memory["hbm_bytes"]
    assert report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    assert report["batch"]["global"] == 8
    assert report["xla"]["flops_per_chip"] > 0
    assert report["analytic"]["train_step"] > 0
    # Params: the encoder's plus the head's D x V + V.
    assert report["model"]["params"] > 64 * 256


@pytest.fixture
def experiment_gin():
    """Parses an experiment gin as the CLI does; yields `compile`'s (model, labeled)."""

    def parse(name):
        gin_utils.parse([name])
        return compile_command._model()

    gin.clear_config()
    yield parse
    gin.clear_config()


@pytest.mark.parametrize(
    ("gin_file", "model_type", "labeled", "covers"),
    [
        ("experiments/pretrain_wav2vec2_smoke.gin", wav2vec2.Wav2Vec2TrainModel, False, "encoder"),
        ("experiments/finetune_ctc_smoke.gin", ctc_model.CtcTrainModel, True, "encoder + head"),
    ],
)
def test_compile_experiment_model(experiment_gin, gin_file, model_type, labeled, covers):
    """`ExperimentConfig.model` of a smoke experiment compiles with the gin's mesh (data)."""
    model, is_labeled = experiment_gin(gin_file)
    assert isinstance(model, model_type) and is_labeled == labeled
    report = aot.compile_report(
        model,
        partitioning.MeshConfig(data=-1),
        aot.CompileConfig(topology="v5e-4", per_chip_batch_size=1, audio_seconds=1.0),
        labeled=labeled,
        microbatches=2 if labeled else 1,
        global_batch_size=8,
    )
    assert report["memory_per_chip"]["fits"] is True, report["memory_per_chip"]
    assert report["model"]["name"] == model_type.__name__
    assert report["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
    assert report["batch"]["global"] == 8
    assert report["batch"].get("target_length") == (128 if labeled else None)
    assert report["analytic"]["covers"] == covers and report["analytic"]["train_step"] > 0
    assert report["xla"]["flops_per_chip"] > 0


def test_without_experiment_model_compiles_best_rq(experiment_gin):
    model, labeled = experiment_gin("models/smoke.gin")
    assert isinstance(model, best_rq.BestRqTrainModel) and not labeled
    assert model.encoder == SMOKE


def test_bad_models_and_batches_are_value_errors():
    small = aot.CompileConfig(topology="v5e-4", per_chip_batch_size=1)
    with pytest.raises(ValueError, match="no audio encoder"):
        aot.compile_report(object(), partitioning.MeshConfig(data=-1), small)
    with pytest.raises(ValueError, match="microbatches"):
        aot.compile_report(
            aot.best_rq_model(SMOKE), partitioning.MeshConfig(data=-1), small, microbatches=3
        )


def test_too_large_reports_does_not_fit():
    """A 2-block D=4096 model with batch 64 x 8 s on 4 v5e chips: reported, not raised."""
    config = encoder_lib.EncoderConfig(model_dim=4096, num_layers=2, num_heads=8, dtype="bfloat16")
    report = aot.compile_report(
        aot.best_rq_model(config, SMALL_OBJECTIVE),
        partitioning.MeshConfig(data=-1),
        aot.CompileConfig(topology="v5e-4", per_chip_batch_size=16, audio_seconds=8.0),
    )
    memory = report["memory_per_chip"]
    assert memory["fits"] is False
    assert "does not fit" in memory["error"]
    assert memory["over_by_gib"] > 0
    largest = report["largest_state_buffers"]
    assert largest and largest[0]["per_chip_bytes"] >= largest[-1]["per_chip_bytes"]
    assert largest[0]["per_chip_bytes"] >= 4096 * 4 * 4096 * 4  # an FFN kernel or its moment


def test_compile_error_report_parses_both_messages():
    new = (
        "RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: Ran out of memory on HBM, the total "
        "memory required for HLO temporaries (16.07G) exceeds available HBM (15.75G)."
    )
    report = aot.compile_error_report(RuntimeError(new))
    assert report["required_gib"] == 16.07 and report["available_gib"] == 15.75
    old = "RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. Used 40.5G of 31.25G hbm."
    assert aot.compile_error_report(RuntimeError(old))["over_by_gib"] == pytest.approx(9.25)
    other = aot.compile_error_report(RuntimeError("INTERNAL: something\nmore"))
    assert other == {"fits": False, "error": "XLA compile error: INTERNAL: something"}


def test_without_libtpu_says_how_to_install(monkeypatch, capsys):
    from bigssl_jax.commands import compile as compile_command

    monkeypatch.setattr(aot, "libtpu_available", lambda: False)
    assert compile_command.main([]) == 2
    assert 'pip install -e ".[tpu-aot]"' in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="tpu-aot"):
        aot.topology_devices(aot.parse_topology("v5e-4"))
