"""This machine's best dense float32 matmul rate, the denominator of model FLOP utilisation.

Measures, in GFLOP/s (2 n^3 FLOPs per n x n product, best of `--repeats` timed calls):
  * xla_dot_2d:          a jitted 2-D `a @ b` (XLA:CPU runs it on one thread by default);
  * xla_batched_einsum:  a jitted 'bij,bjk->bik' with b = 4 (XLA:CPU splits the batch);
  * the same two with `XLA_FLAGS=--xla_cpu_use_xnnpack=true` (in a subprocess: XLA flags are
    read once, when the backend starts);
  * numpy: `np.matmul` on the BLAS numpy was built with.
and prints one JSON object with every rate, the best one ('peak_gflops') and the CPU count.

    python benchmarks/matmul_peak.py [--size 2048] [--repeats 5]

`train_step_bench.py` imports `measure_xla` to measure the peak in its own process.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

XNNPACK_FLAG = "--xla_cpu_use_xnnpack=true"


def _best_seconds(fn, repeats: int) -> float:
    fn()  # compile / warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure_xla(size: int, repeats: int) -> dict[str, float]:
    """GFLOP/s of a jitted 2-D dot and of a batched einsum of the same per-product size."""
    import jax  # noqa: PLC0415  (XLA_FLAGS must be set before JAX starts)
    import jax.numpy as jnp  # noqa: PLC0415

    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (size, size), jnp.float32)
    b = jax.random.normal(key_b, (size, size), jnp.float32)
    batch = 4
    half = size // 2
    a3 = jax.random.normal(key_a, (batch, half, half), jnp.float32)
    b3 = jax.random.normal(key_b, (batch, half, half), jnp.float32)
    dot = jax.jit(lambda x, y: x @ y)
    einsum = jax.jit(lambda x, y: jnp.einsum("bij,bjk->bik", x, y))
    dot_s = _best_seconds(lambda: dot(a, b).block_until_ready(), repeats)
    einsum_s = _best_seconds(lambda: einsum(a3, b3).block_until_ready(), repeats)
    return {
        "xla_dot_2d": 2 * size**3 / dot_s / 1e9,
        "xla_batched_einsum": 2 * batch * half**3 / einsum_s / 1e9,
    }


def measure_numpy(size: int, repeats: int) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    return 2 * size**3 / _best_seconds(lambda: a @ b, repeats) / 1e9


def _xla_in_subprocess(size: int, repeats: int, xla_flags: str) -> dict[str, float]:
    env = {**os.environ, "XLA_FLAGS": xla_flags, "JAX_PLATFORMS": "cpu"}
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import matmul_peak; "
        "print(json.dumps(matmul_peak.measure_xla(int(sys.argv[2]), int(sys.argv[3]))))"
    )
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run(
        [sys.executable, "-c", code, here, str(size), str(repeats)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    rates = dict(_xla_in_subprocess(args.size, args.repeats, ""))
    xnnpack = _xla_in_subprocess(args.size, args.repeats, XNNPACK_FLAG)
    rates.update({f"{name}_xnnpack": value for name, value in xnnpack.items()})
    rates["numpy"] = measure_numpy(args.size, args.repeats)
    rates = {name: round(value, 1) for name, value in rates.items()}
    print(
        json.dumps(
            {
                "size": args.size,
                "cpus": os.cpu_count(),
                "gflops": rates,
                "peak_gflops": max(rates.values()),
                "peak": max(rates, key=rates.get),
            }
        )
    )


if __name__ == "__main__":
    main()
