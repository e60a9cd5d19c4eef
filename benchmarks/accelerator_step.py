"""Train-step speed of the Conformers on whatever accelerator JAX sees (GPU, TPU, or CPU).

For each encoder of `--models` (gin/models/<name>.gin: L, XL, ...; `smoke` or `small` for a
quick CPU check) and each step of `--objectives` (`pretrain`: BEST-RQ; `ctc` and `rnnt`:
fine-tuning with `--target_length` tokens), on synthetic batches of `--batch` utterances per
device of `--seconds` each, prints one JSON object per step with:
  * compile_s, step_s (median of `--steps` timed steps after one warm-up), audio seconds per
    wall second, the final loss;
  * model FLOPs per step (`bigssl_jax.jobs.flops` through `jobs.aot.analytic_flops`; what they
    cover is named) and MFU: achieved model FLOP/s per device over the device's published
    dense bf16 peak (`PEAK_BF16_FLOPS`; null where the device kind is not in the table, as
    on CPU), whatever `--dtype`;
  * peak memory: the devices' `memory_stats()['peak_bytes_in_use']` (a high-water mark of the
    whole process: run one model per process for clean figures) or, where devices keep no
    statistics (CPU), the process's max RSS; and XLA's own count for the compiled step.
The encoder gets the platform's defaults (`bigssl_jax.platform_defaults`: bf16, cuDNN
attention and remat on a GPU; nothing on CPU or TPU) unless `--dtype`, `--attention` or
`--remat` name a value. The batch is sharded over all devices (`MeshConfig()`: data parallel).

`--check` instead compares one train step of `--models` (one name) on the platform's devices
with its defaults against the same step on one CPU device in float32 (same params, batch and
rng): {'loss', 'cpu_loss', 'relative_difference', 'close'} with a bf16 tolerance. On a CPU
host that is 8 fake devices (set XLA_FLAGS=--xla_force_host_platform_device_count=8) against
one.

Runs without TensorFlow, seqio and gin (a GPU image has JAX, flax, optax, orbax): the model
gins are read by `read_encoder_gin`, which knows `EncoderConfig.<field> = <literal>` lines and
includes, all that gin/models/ holds.

    python benchmarks/accelerator_step.py --models=L,XL --objectives=pretrain --batch=8
    python benchmarks/accelerator_step.py --models=smoke --objectives=pretrain,ctc,rnnt \\
        --batch=2 --seconds=1 --steps=1                                     # a CPU check
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bigssl_jax import platform_defaults  # noqa: E402  (imports no JAX)

platform_defaults.set_xla_flags()  # before JAX starts its backend

import argparse  # noqa: E402
import ast  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bigssl_jax import optimizers, partitioning, train_step  # noqa: E402
from bigssl_jax.jobs import aot  # noqa: E402
from bigssl_jax.layers import frontend, rnnt_decoder  # noqa: E402
from bigssl_jax.models import ctc_model, rnnt_model  # noqa: E402
from bigssl_jax.models import encoder as encoder_lib  # noqa: E402

GIN_DIR = pathlib.Path(__file__).resolve().parents[1] / "gin"
# Published dense bf16 peaks per device, FLOP/s; the first key found in the device kind wins.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
    ("TPU v4", 275e12),
    ("TPU v5p", 459e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v6", 918e12),
)
OBJECTIVES = ("pretrain", "ctc", "rnnt")
ENCODER_FLAGS = {"dtype": "dtype", "attention": "attention_implementation", "remat": "remat_policy"}


def read_encoder_gin(path: pathlib.Path) -> dict:
    """{field: value} of the `EncoderConfig.<field> = <literal>` lines of a model gin and of
    the gins it includes (later bindings win, as in gin). Other configurables' bindings (the
    front end's, e.g. `LogMelConfig.style`) are skipped: the benchmark's front end is the
    default one, of the same feature shape."""
    fields = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#")[0].strip()
        if include := re.fullmatch(r"include\s+'([^']+)'", line):
            fields.update(read_encoder_gin(GIN_DIR / include.group(1)))
        elif binding := re.fullmatch(r"EncoderConfig\.(\w+)\s*=\s*(.+)", line):
            fields[binding.group(1)] = ast.literal_eval(binding.group(2))
        elif re.fullmatch(r"\w+\.\w+\s*=\s*.+", line):
            continue
        elif line:
            raise ValueError(f"{path}:{number}: neither a binding nor an include: {line}")
    return fields


def encoder_config(name: str, args: argparse.Namespace, platform: str) -> encoder_lib.EncoderConfig:
    """gin/models/<name>.gin with the platform's defaults and the flags' explicit values."""
    explicit = {field: getattr(args, flag) for flag, field in ENCODER_FLAGS.items()}
    explicit = {field: value for field, value in explicit.items() if value != "auto"}
    fields = read_encoder_gin(GIN_DIR / "models" / f"{name}.gin")
    config = encoder_lib.EncoderConfig(**{**fields, **explicit})
    defaults = platform_defaults.for_platform(platform)
    return dataclasses.replace(
        config, **platform_defaults.encoder_overrides(defaults, config, explicit)
    )


def train_model(objective: str, encoder: encoder_lib.EncoderConfig, vocab_size: int):
    if objective == "pretrain":
        return aot.best_rq_model(encoder)
    if objective == "ctc":
        return ctc_model.CtcTrainModel(encoder=encoder, vocab_size=vocab_size)
    decoder = rnnt_decoder.RnntDecoderConfig(vocab_size=vocab_size, dtype=encoder.dtype)
    return rnnt_model.RnntTrainModel(encoder=encoder, decoder=decoder)


def synthetic_batch(batch_size: int, num_samples: int, target_length: int, vocab_size: int):
    """Host arrays in the `aot.abstract_batch` layout: noise audio, random targets."""
    rng = np.random.default_rng(0)
    batch = {
        "audio": (0.1 * rng.standard_normal((batch_size, num_samples))).astype(np.float32),
        "audio_paddings": np.zeros((batch_size, num_samples), np.float32),
        "weights": np.ones((batch_size,), np.float32),
    }
    if target_length:
        batch["targets"] = rng.integers(1, vocab_size, (batch_size, target_length), np.int32)
        batch["target_paddings"] = np.zeros((batch_size, target_length), np.float32)
        batch["confidence"] = np.ones((batch_size,), np.float32)
    return batch


def compiled_step(model, host_batch: dict, mesh):
    """(compiled train step, initial state, global batch, compile seconds) on `mesh`."""
    tx = optimizers.make_optimizer(optimizers.OptimizerConfig())
    batch = partitioning.make_global_batch(host_batch, mesh)
    abstract = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding) for k, v in batch.items()
    }
    _, shardings, rng = aot.abstract_inputs(model, tx, mesh, abstract)
    shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}

    def init_fn(key):
        return train_step.init_state(model, tx, key, shapes)

    rules = partitioning.LOGICAL_AXIS_RULES
    state, _ = partitioning.init_sharded_state(
        init_fn, mesh, rules, jax.random.key(0), shardings=shardings
    )
    start = time.perf_counter()
    compiled = aot.compile_train_step(model, state, shardings, batch, jax.random.key(1), mesh)
    return compiled, state, batch, time.perf_counter() - start


def peak_flops(device) -> float | None:
    kind = device.device_kind
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in kind), None)


def peak_memory() -> dict:
    stats = [d.memory_stats() or {} for d in jax.local_devices()]
    peaks = [s["peak_bytes_in_use"] for s in stats if "peak_bytes_in_use" in s]
    if peaks:
        return {"peak_memory_bytes": max(peaks), "peak_memory_source": "device"}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"peak_memory_bytes": rss, "peak_memory_source": "max_rss"}


def time_steps(compiled, state, batch, steps: int):
    """(median step seconds, last metrics) over `steps` steps after one warm-up."""
    state, metrics = compiled(state, batch, jax.random.key(1))
    jax.block_until_ready(metrics)
    times = []
    for index in range(steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch, jax.random.key(2 + index))
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return statistics.median(times), metrics


def bench(name: str, objective: str, args: argparse.Namespace, mesh) -> dict:
    """Compiles and times one train step; see the module docstring."""
    encoder = encoder_config(name, args, jax.default_backend())
    model = train_model(objective, encoder, args.vocab_size)
    num_devices = mesh.devices.size
    batch_size = args.batch * num_devices
    num_samples = round(args.seconds * aot.SAMPLE_RATE)
    target_length = 0 if objective == "pretrain" else args.target_length
    host_batch = synthetic_batch(batch_size, num_samples, target_length, args.vocab_size)
    compiled, state, batch, compile_s = compiled_step(model, host_batch, mesh)
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    step_s, metrics = time_steps(compiled, state, batch, args.steps)
    num_frames = frontend.num_frames(num_samples, frontend.LogMelConfig())
    flops = aot.analytic_flops(model, num_frames, batch_size)
    per_device = flops["train_step"] / step_s / num_devices
    peak = peak_flops(jax.devices()[0])
    memory = aot.memory_report(compiled, 0)
    return {
        "model": name,
        "objective": objective,
        "params": params,
        "dtype": encoder.dtype,
        "attention_implementation": encoder.attention_implementation or "xla",
        "remat_policy": encoder.remat_policy,
        "global_batch": batch_size,
        "audio_seconds_per_utterance": args.seconds,
        "compile_s": round(compile_s, 1),
        "step_s": round(step_s, 4),
        "audio_seconds_per_second": round(batch_size * args.seconds / step_s, 1),
        "model_flops_per_step": flops["train_step"],
        "model_flops_cover": flops["covers"],
        "model_flops_per_second_per_device": per_device,
        "peak_bf16_flops_per_device": peak,
        "mfu": None if peak is None else round(per_device / peak, 4),
        **peak_memory(),
        "xla_step_bytes": memory["total_bytes"],
        "loss": float(metrics["loss"]),
    }


def first_loss(model, host_batch: dict, mesh) -> float:
    compiled, state, batch, _ = compiled_step(model, host_batch, mesh)
    _, metrics = compiled(state, batch, jax.random.key(1))
    return float(metrics["loss"])


def check(name: str, args: argparse.Namespace, mesh) -> dict:
    """One step's loss on `mesh` with the platform's defaults against one CPU device in
    float32 (XLA attention, no remat): the sharded / accelerated step computes the same."""
    encoder = encoder_config(name, args, jax.default_backend())
    reference = dataclasses.replace(
        encoder, dtype="float32", attention_implementation=None, remat_policy="none"
    )
    num_samples = round(args.seconds * aot.SAMPLE_RATE)
    host_batch = synthetic_batch(args.batch * mesh.devices.size, num_samples, 0, 0)
    loss = first_loss(train_model("pretrain", encoder, 0), host_batch, mesh)
    cpu_mesh = partitioning.make_mesh(partitioning.MeshConfig(), jax.devices("cpu")[:1])
    cpu_loss = first_loss(train_model("pretrain", reference, 0), host_batch, cpu_mesh)
    difference = abs(loss - cpu_loss) / max(abs(cpu_loss), 1e-12)
    tolerance = 2e-2 if encoder.dtype == "bfloat16" else 1e-4
    return {
        "model": name,
        "devices": mesh.devices.size,
        "dtype": encoder.dtype,
        "attention_implementation": encoder.attention_implementation or "xla",
        "loss": loss,
        "cpu_loss": cpu_loss,
        "relative_difference": difference,
        "tolerance": tolerance,
        "close": difference <= tolerance,
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="L,XL", help="gin/models/<name>.gin, comma-separated")
    parser.add_argument("--objectives", default="pretrain", help=f"of {OBJECTIVES}")
    parser.add_argument("--batch", type=int, default=8, help="utterances per device")
    parser.add_argument("--seconds", type=float, default=16.0, help="audio per utterance")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after a warm-up")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    parser.add_argument("--attention", default="auto", choices=("auto", "xla", "cudnn"))
    parser.add_argument("--remat", default="auto", choices=("auto", *encoder_lib.REMAT_POLICIES))
    parser.add_argument("--target_length", type=int, default=128)
    parser.add_argument("--vocab_size", type=int, default=1024)
    parser.add_argument("--check", action="store_true", help="compare with a CPU float32 step")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    mesh = partitioning.make_mesh(partitioning.MeshConfig())
    device = jax.devices()[0]
    header = {
        "platform": jax.default_backend(),
        "device_kind": device.device_kind,
        "devices": mesh.devices.size,
        "jax": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    if args.check:
        print(json.dumps({**header, "check": check(args.models, args, mesh)}), flush=True)
        return
    for name in args.models.split(","):
        for objective in args.objectives.split(","):
            print(json.dumps({**header, **bench(name, objective, args, mesh)}), flush=True)


if __name__ == "__main__":
    main()
