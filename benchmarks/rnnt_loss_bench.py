"""Speed and memory of the RNN-T loss (`bigssl_jax.losses.rnnt`) as T and U grow.

For each (T, U) it times, jitted and after a warm-up call (median of --repeats runs):
  loss       rnnt_loss(logits [B, T, U + 1, V], ...)
  loss_grad  value_and_grad of its sum w.r.t. the logits
  lattice    value_and_grad of rnnt_loss_from_log_probs w.r.t. both [B, T, U (+ 1)] inputs,
             i.e. the anti-diagonal scan alone,
and reports XLA's compiled temp bytes (`memory_analysis().temp_size_in_bytes`) beside the
size of the logits. Prints one JSON object.

    python benchmarks/rnnt_loss_bench.py --batch 4 --vocab 256
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from bigssl_jax.losses import rnnt


def _median_ms(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(1000.0 * (time.perf_counter() - start))
    return round(statistics.median(times), 3)


def _temp_mib(fn, args) -> float:
    analysis = fn.lower(*args).compile().memory_analysis()
    return round(analysis.temp_size_in_bytes / 2**20, 2)


def _inputs(rng, batch, frames, num_labels, vocab):
    logits = rng.standard_normal((batch, frames, num_labels + 1, vocab), dtype=np.float32)
    labels = rng.integers(1, vocab, (batch, num_labels)).astype(np.int32)
    # Row b keeps a fraction (4 - b) / 4 of the frames and labels: a realistic padded batch.
    keep = 1.0 - np.arange(batch) / (2 * batch)
    logit_paddings = np.arange(frames)[None] >= np.ceil(keep * frames)[:, None]
    label_paddings = np.arange(num_labels)[None] >= np.ceil(keep * num_labels)[:, None]
    return logits, logit_paddings.astype(np.float32), labels, label_paddings.astype(np.float32)


def _measure(batch, frames, num_labels, vocab, repeats, rng) -> dict:
    logits, logit_pad, labels, label_pad = _inputs(rng, batch, frames, num_labels, vocab)
    args = (jnp.asarray(logits), logit_pad, labels, label_pad)
    loss = jax.jit(rnnt.rnnt_loss)
    loss_grad = jax.jit(jax.value_and_grad(lambda *a: jnp.sum(rnnt.rnnt_loss(*a))))
    blank = jnp.asarray(rng.standard_normal((batch, frames, num_labels + 1)) - 3.0, jnp.float32)
    label = jnp.asarray(rng.standard_normal((batch, frames, num_labels)) - 3.0, jnp.float32)
    lattice = jax.jit(
        jax.value_and_grad(
            lambda b, y, *p: jnp.sum(rnnt.rnnt_loss_from_log_probs(b, y, *p)), argnums=(0, 1)
        )
    )
    lattice_args = (blank, label, logit_pad, label_pad)
    return {
        "T": frames,
        "U": num_labels,
        "logits_mib": round(logits.nbytes / 2**20, 2),
        "loss_ms": _median_ms(loss, args, repeats),
        "loss_grad_ms": _median_ms(loss_grad, args, repeats),
        "lattice_grad_ms": _median_ms(lattice, lattice_args, repeats),
        "loss_temp_mib": _temp_mib(loss, args),
        "loss_grad_temp_mib": _temp_mib(loss_grad, args),
        "lattice_grad_temp_mib": _temp_mib(lattice, lattice_args),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--frames", type=int, nargs="+", default=[50, 100, 200, 400])
    parser.add_argument("--labels", type=int, nargs="+", default=[10, 25, 50, 100])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    results = [
        _measure(args.batch, frames, num_labels, args.vocab, args.repeats, rng)
        for frames in args.frames
        for num_labels in args.labels
    ]
    print(
        json.dumps(
            {
                "backend": jax.default_backend(),
                "device": str(jax.devices()[0].device_kind),
                "batch": args.batch,
                "vocab": args.vocab,
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
