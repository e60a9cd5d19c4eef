"""CPU speed of the demo's fine-tuning step, with its dropout bits drawn three ways.

The step is `bigssl pipeline --preset=demo`'s: CTC fine-tuning of the `small` encoder
(gin/models/small.gin: 4 blocks of width 144) on a batch of `--batch` utterances of
`--seconds` each, SpecAugment as finetune_ctc_small.gin, forward + backward + Adam. Three
variants are compiled in one process and timed in alternating rounds (so machine load hits
them alike):
  * `hashed`: the layers as they are (`layers/dropout.py`: one threefry draw per call, a
    lowbias32 hash of the element index);
  * `threefry`: flax's `nn.Dropout` (one threefry output per element; the code before);
  * `no_dropout`: every dropout rate 0 (the bound on what cheaper bits could give).
Prints one JSON object: per variant the median step time, audio seconds per second, and the
process's user / system CPU seconds and minor page faults per step over its timed steps;
and the speed-up of `hashed` over `threefry`.

    python benchmarks/cpu_step.py [--batch 8] [--seconds 4] [--rounds 6] [--steps 3]
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
import numpy as np  # noqa: E402

from bigssl_jax import optimizers, train_step  # noqa: E402
from bigssl_jax.layers import dropout, frontend  # noqa: E402
from bigssl_jax.models import ctc_model  # noqa: E402
from bigssl_jax.models import encoder as encoder_lib  # noqa: E402

SMALL = encoder_lib.EncoderConfig(  # gin/models/small.gin
    model_dim=144,
    num_layers=4,
    num_heads=4,
    conv_kernel_size=15,
    use_relative_position=True,
    subsampling_channels=32,
)
NO_DROPOUT = {"dropout_rate": 0.0, "ff_dropout_rate": 0.0, "input_dropout_rate": 0.0}


def _batch(batch_size: int, seconds: float, vocab_size: int) -> dict[str, jax.Array]:
    rng = np.random.default_rng(0)
    samples, tokens = round(seconds * 16000), round(seconds * 12)  # ~12 characters a second
    return {
        "audio": jnp.asarray(0.1 * rng.standard_normal((batch_size, samples)), jnp.float32),
        "audio_paddings": jnp.zeros((batch_size, samples), jnp.float32),
        "targets": jnp.asarray(rng.integers(1, vocab_size, (batch_size, tokens)), jnp.int32),
        "target_paddings": jnp.zeros((batch_size, tokens), jnp.float32),
        "weights": jnp.ones((batch_size,), jnp.float32),
    }


def _compiled_step(encoder: encoder_lib.EncoderConfig, batch: dict, threefry: bool):
    """(jitted step, state) after one warm-up step; `threefry` traces it with nn.Dropout."""
    model = ctc_model.CtcTrainModel(
        encoder=encoder,
        vocab_size=32,
        log_mel=frontend.LogMelConfig(),
        spec_augment=frontend.SpecAugmentConfig(num_time_masks=2, max_freq_mask_bins=10),
    )
    tx = optimizers.make_optimizer(optimizers.OptimizerConfig())
    hashed = dropout.Dropout
    dropout.Dropout = nn.Dropout if threefry else hashed  # the layers look it up when traced
    try:
        state = jax.jit(lambda key: nn.unbox(train_step.init_state(model, tx, key, batch)))(
            jax.random.key(0)
        )
        step = jax.jit(train_step.make_train_step(model))
        jax.block_until_ready(step(state, batch, jax.random.key(1)))
    finally:
        dropout.Dropout = hashed
    return step, state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    args = parser.parse_args()

    batch = _batch(args.batch, args.seconds, 32)
    variants = {
        "hashed": _compiled_step(SMALL, batch, threefry=False),
        "threefry": _compiled_step(SMALL, batch, threefry=True),
        "no_dropout": _compiled_step(dataclasses.replace(SMALL, **NO_DROPOUT), batch, False),
    }
    times = {name: [] for name in variants}
    usage = {name: np.zeros(3) for name in variants}  # user s, system s, minor faults
    for round_index in range(args.rounds):
        for name, (step, state) in variants.items():
            before = resource.getrusage(resource.RUSAGE_SELF)
            for index in range(args.steps):
                start = time.perf_counter()
                jax.block_until_ready(step(state, batch, jax.random.key(round_index + index)))
                times[name].append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_SELF)
            usage[name] += [
                after.ru_utime - before.ru_utime,
                after.ru_stime - before.ru_stime,
                after.ru_minflt - before.ru_minflt,
            ]
    steps = args.rounds * args.steps
    results = {}
    for name in variants:
        step_s = statistics.median(times[name])
        user, system, faults = usage[name] / steps
        results[name] = {
            "step_s": round(step_s, 4),
            "audio_seconds_per_second": round(args.batch * args.seconds / step_s, 1),
            "user_cpu_s_per_step": round(user, 3),
            "system_cpu_s_per_step": round(system, 3),
            "minor_faults_per_step": round(faults),
        }
    speedup = results["threefry"]["step_s"] / results["hashed"]["step_s"]
    print(
        json.dumps(
            {
                "device": jax.devices()[0].device_kind,
                "cpus": os.cpu_count(),
                "xla_flags": os.environ.get("XLA_FLAGS", ""),
                "batch": args.batch,
                "seconds": args.seconds,
                "timed_steps": steps,
                "results": results,
                "hashed_over_threefry_speedup": round(speedup, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
