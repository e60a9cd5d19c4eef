"""Times `bigssl make-corpus` on one preset in a temporary directory; prints one JSON object.

python benchmarks/make_corpus_bench.py --preset=small --jobs=2
"""

import argparse
import json
import os
import pathlib
import tempfile
import time

from bigssl_jax.data import synthetic_corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=list(synthetic_corpus.PRESETS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out_dir:
        start = time.perf_counter()
        info, _ = synthetic_corpus.make_corpus(
            out_dir, preset=args.preset, seed=args.seed, jobs=args.jobs, progress=False
        )
        seconds = time.perf_counter() - start
        size = sum(p.stat().st_size for p in pathlib.Path(out_dir).rglob("*") if p.is_file())
    utterances = sum(split["num_utterances"] for split in info["splits"].values())
    hours = sum(split["hours"] for split in info["splits"].values())
    result = {
        "preset": args.preset,
        "jobs": args.jobs,
        "cpu_count": os.cpu_count(),
        "utterances": utterances,
        "audio_hours": round(hours, 3),
        "megabytes": round(size / 2**20, 1),
        "wall_seconds": round(seconds, 1),
        "utterances_per_second": round(utterances / seconds, 1),
        "realtime_factor": round(hours * 3600 / seconds, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
