"""benchmarks/accelerator_step.py on CPU: the smoke encoder's pre-training step and the
sharded-against-one-CPU-device check print the JSON they promise."""

import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "accelerator_step.py"
sys.path.insert(0, str(SCRIPT.parent))

import accelerator_step  # noqa: E402

KEYS = {
    "platform",
    "device_kind",
    "devices",
    "model",
    "objective",
    "params",
    "dtype",
    "attention_implementation",
    "remat_policy",
    "global_batch",
    "compile_s",
    "step_s",
    "audio_seconds_per_second",
    "model_flops_per_step",
    "model_flops_cover",
    "mfu",
    "peak_memory_bytes",
    "peak_memory_source",
    "xla_step_bytes",
    "loss",
}


def _run(*flags: str) -> list[dict]:
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--models=smoke", "--batch=1", "--seconds=0.5", *flags],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]


def test_the_smoke_pretraining_step_reports_speed_flops_and_memory():
    (result,) = _run("--objectives=pretrain", "--steps=1")
    assert KEYS <= set(result)
    assert result["platform"] == "cpu" and result["mfu"] is None  # no CPU peak in the table
    assert result["dtype"] == "float32" and result["attention_implementation"] == "xla"
    assert result["global_batch"] == result["devices"]
    assert result["model_flops_per_step"] > 0 and result["step_s"] > 0
    assert result["peak_memory_source"] == "max_rss" and result["peak_memory_bytes"] > 0


def test_the_sharded_step_matches_one_cpu_device():
    (result,) = _run("--check")
    check = result["check"]
    assert check["devices"] == 8 and check["close"], check


def test_model_gins_are_read_without_gin():
    small = accelerator_step.read_encoder_gin(REPO / "gin" / "models" / "small.gin")
    assert small["model_dim"] == 144 and small["use_relative_position"] is True  # from L.gin
    for path in (REPO / "gin" / "models").glob("*.gin"):
        accelerator_step.encoder_lib.EncoderConfig(**accelerator_step.read_encoder_gin(path))


def test_peak_flops_by_device_kind():
    class Device:
        device_kind = "NVIDIA H100 80GB HBM3"

    assert accelerator_step.peak_flops(Device()) == 989e12
    Device.device_kind = "cpu"
    assert accelerator_step.peak_flops(Device()) is None
