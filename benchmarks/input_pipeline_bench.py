"""Throughput of the input pipeline (records -> padded numpy batches); prints one JSON object.

Measures audio seconds delivered per wall second (total and per CPU core), batches per
second, the padding fraction, and how long restoring a saved position takes (the
pipeline skips the consumed batches). Without --corpus it writes a toy corpus of
synthetic shards into a temporary directory first.

    python benchmarks/input_pipeline_bench.py --num_batches=50 --batch_size=16
    python benchmarks/input_pipeline_bench.py --corpus=embedded_small --data_dir=bigssl_data
    python benchmarks/input_pipeline_bench.py --speed_factors=0.9,1.0,1.1   # speed perturbation
"""

import argparse
import json
import os
import tempfile
import time

from bigssl_jax import input_pipeline
from bigssl_jax.data import schema
from bigssl_tasks import corpus_tasks, toy_corpus, vocab


def _register(args, data_dir) -> str:
    """Registers the corpus's tasks (writing a toy corpus first if none is named)."""
    corpus = args.corpus
    if corpus is None:
        corpus = "bench_toy"
        toy_corpus.write_toy_corpus(
            data_dir,
            corpus,
            splits={"train": (args.utterances, True)},
            num_shards=4,
            min_seconds=1.0,
            max_seconds=8.0,
        )
        model = vocab.vocab_path(data_dir, corpus, 256)
        vocab.train_vocabulary([" ".join(toy_corpus.WORDS)] * 4, model, vocab_size=256)
    else:
        model = vocab.vocab_path(data_dir, corpus, args.vocab_size)
    names = corpus_tasks.register_corpus_tasks(
        corpus, data_dir=data_dir, vocab_path=model if model.exists() else None
    )
    if args.task:
        return args.task
    return next((n for n in names if n.endswith("_labeled")), names[0])


def _run(config, num_batches: int) -> dict:
    """Times the first batch, then `num_batches` more; returns the measurements."""
    start = time.perf_counter()
    iterator = input_pipeline.make_iterator(config)
    next(iterator)
    first = time.perf_counter() - start
    start = time.perf_counter()
    valid = total = 0.0
    for _ in range(num_batches):
        batch = next(iterator)
        valid += float((1.0 - batch["audio_paddings"]).sum())
        total += batch["audio_paddings"].size
    wall = time.perf_counter() - start
    return {
        "first_batch_s": first,
        "wall_s": wall,
        "state": iterator.get_state(),
        "audio_s": valid / schema.SAMPLE_RATE,
        "padding": 1.0 - valid / total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=None, help="registered corpus; default: a toy one")
    parser.add_argument("--task", default=None, help="task; default: first labeled task")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--vocab_size", type=int, default=1024)
    parser.add_argument("--utterances", type=int, default=1000, help="toy corpus size")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_batches", type=int, default=50)
    parser.add_argument(
        "--speed_factors", default="", help="comma-separated speed perturbation factors"
    )
    args = parser.parse_args()
    speed_factors = tuple(float(f) for f in args.speed_factors.split(",") if f)

    with tempfile.TemporaryDirectory() as tmp:
        task = _register(args, args.data_dir or tmp)
        config = input_pipeline.InputConfig(
            task=task, batch_size=args.batch_size, speed_factors=speed_factors
        )
        run = _run(config, args.num_batches)
        restore_start = time.perf_counter()
        restored = input_pipeline.make_iterator(config)
        restored.set_state(run["state"])
        next(restored)
        restore = time.perf_counter() - restore_start
    cores = len(os.sched_getaffinity(0))
    wall = run["wall_s"]
    result = {
        "task": task,
        "batch_size": args.batch_size,
        "speed_factors": list(speed_factors),
        "num_batches": args.num_batches,
        "cores": cores,
        "batches_per_s": round(args.num_batches / wall, 2),
        "audio_s_per_s": round(run["audio_s"] / wall, 1),
        "audio_s_per_s_per_core": round(run["audio_s"] / wall / cores, 1),
        "padding_fraction": round(run["padding"], 3),
        "first_batch_s": round(run["first_batch_s"], 2),
        "position": [run["state"]["epoch"], run["state"]["batches_in_epoch"]],
        "restore_to_position_s": round(restore, 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
