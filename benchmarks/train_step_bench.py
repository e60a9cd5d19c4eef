"""CPU speed of the BEST-RQ pre-training step (forward + backward + Adam update).

For each encoder (`--configs`, default smoke and L), on random audio of `--batch` utterances of
`--seconds` each, prints one JSON object with:
  * compile_s, step_s (median of `--steps` timed steps after one warm-up), audio seconds
    processed per wall second;
  * peak memory: growth of the process's max RSS over compile + steps, and XLA's temporary
    buffer bytes of the compiled step;
  * model FLOPs per step (`bigssl_jax.jobs.flops`) and XLA's count of the same compiled step (blocks
    unrolled, `scan_layers=False`, so XLA counts every block; see tests/test_flops.py for the
    gap), achieved model GFLOP/s and model FLOP utilisation (MFU) against the best dense
    matmul rate measured in the same process just before (`matmul_peak.measure_xla`).

'L' is gin/models/L.gin (17 blocks, width 512, kernel 32, relative positions); '--l_layers'
cuts it to fewer blocks of the same shape if 17 is too slow.

    python benchmarks/train_step_bench.py [--configs smoke,L] [--batch 8] [--seconds 4]
"""

import os

# A CPU benchmark: with libtpu installed (the tpu-aot extra) JAX would otherwise try a TPU first.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matmul_peak  # noqa: E402
import numpy as np  # noqa: E402

from bigssl_jax import optimizers, train_step  # noqa: E402
from bigssl_jax.jobs import aot, flops  # noqa: E402
from bigssl_jax.layers import frontend  # noqa: E402
from bigssl_jax.models import best_rq
from bigssl_jax.models import encoder as encoder_lib  # noqa: E402

CONFIGS = {
    # gin/models/smoke.gin
    "smoke": encoder_lib.EncoderConfig(
        model_dim=64,
        num_layers=2,
        num_heads=4,
        conv_kernel_size=5,
        use_relative_position=True,
        subsampling_channels=16,
    ),
    # gin/models/L.gin
    "L": encoder_lib.EncoderConfig(
        model_dim=512,
        num_layers=17,
        num_heads=8,
        conv_kernel_size=32,
        use_relative_position=True,
        subsampling_channels=128,
    ),
}


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def bench_config(
    config: encoder_lib.EncoderConfig, batch_size: int, seconds: float, steps: int, peak: float
) -> dict:
    """Compiles and times the pre-training step for one encoder; see the module docstring."""
    config = dataclasses.replace(config, scan_layers=False)
    objective = best_rq.BestRqConfig()
    model = best_rq.BestRqTrainModel(encoder=config, objective=objective)
    num_samples = round(seconds * aot.SAMPLE_RATE)
    rng = np.random.default_rng(0)
    batch = {
        "audio": jnp.asarray(0.1 * rng.standard_normal((batch_size, num_samples)), jnp.float32),
        "audio_paddings": jnp.zeros((batch_size, num_samples), jnp.float32),
    }
    rss_before = _max_rss_bytes()
    tx = optimizers.make_optimizer(optimizers.OptimizerConfig())
    state = jax.jit(lambda key: nn.unbox(train_step.init_state(model, tx, key, batch)))(
        jax.random.key(0)
    )
    start = time.perf_counter()
    compiled = (
        jax.jit(train_step.make_train_step(model), donate_argnums=(0,))
        .lower(state, batch, jax.random.key(1))
        .compile()
    )
    compile_s = time.perf_counter() - start

    state, metrics = compiled(state, batch, jax.random.key(1))  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for step in range(steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch, jax.random.key(step))
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)

    num_frames = frontend.num_frames(num_samples, frontend.LogMelConfig())
    model_flops = flops.best_rq_train_step_flops(config, objective, num_frames, batch_size)
    xla_flops = compiled.cost_analysis()["flops"]
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    achieved = model_flops["train_step"] / step_s / 1e9
    return {
        "params": params,
        "num_layers": config.num_layers,
        "batch": batch_size,
        "audio_seconds_per_utterance": seconds,
        "compile_s": round(compile_s, 1),
        "step_s": round(step_s, 3),
        "audio_seconds_per_second": round(batch_size * seconds / step_s, 1),
        "max_rss_growth_mib": round((_max_rss_bytes() - rss_before) / 2**20),
        "xla_temp_mib": round(compiled.memory_analysis().temp_size_in_bytes / 2**20),
        "model_gflops_per_step": round(model_flops["train_step"] / 1e9, 2),
        "xla_gflops_per_step": round(xla_flops / 1e9, 2),
        "xla_over_model_flops": round(xla_flops / model_flops["train_step"], 3),
        "model_gflops_per_second": round(achieved, 1),
        "mfu": round(achieved / peak, 3),
        "final_loss": round(float(metrics["loss"]), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="smoke,L")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--l_layers", type=int, default=17)
    args = parser.parse_args()

    peaks = matmul_peak.measure_xla(2048, repeats=5)
    peak = max(peaks.values())
    results = {}
    for name in args.configs.split(","):
        config = CONFIGS[name]
        if name == "L":
            config = dataclasses.replace(config, num_layers=args.l_layers)
        results[name] = bench_config(config, args.batch, args.seconds, args.steps, peak)
    print(
        json.dumps(
            {
                "device": jax.devices()[0].device_kind,
                "cpus": os.cpu_count(),
                "xla_flags": os.environ.get("XLA_FLAGS", ""),
                "matmul_peak_gflops": {k: round(v, 1) for k, v in peaks.items()},
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
