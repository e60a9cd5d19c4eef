"""Throughput of the jitted front end: log-mel + SpecAugment on a padded batch.

Prints one JSON object: milliseconds per batch and seconds of audio processed per second, for
`log_mel` alone and for `log_mel` followed by `spec_augment`.

    python benchmarks/frontend_bench.py --batch 32 --seconds 16
"""

import argparse
import json
import time

import jax
import numpy as np

from bigssl_jax.layers import frontend


def _time_ms(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    jax.block_until_ready(out)
    return 1000.0 * (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=16.0)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    mel_config = frontend.LogMelConfig()
    spec_config = frontend.SpecAugmentConfig()
    num_samples = int(args.seconds * mel_config.sample_rate)
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal((args.batch, num_samples))).astype(np.float32)
    lengths = rng.integers(num_samples // 2, num_samples + 1, size=args.batch)
    paddings = (np.arange(num_samples)[None] >= lengths[:, None]).astype(np.float32)
    audio, paddings = jax.device_put(audio), jax.device_put(paddings)

    @jax.jit
    def features(audio, paddings):
        return frontend.log_mel(audio, paddings, mel_config)

    @jax.jit
    def augmented(audio, paddings, key):
        feats, feat_paddings = frontend.log_mel(audio, paddings, mel_config)
        return frontend.spec_augment(feats, feat_paddings, key, spec_config)

    key = jax.random.key(0)
    mel_ms = _time_ms(features, audio, paddings, repeats=args.repeats)
    both_ms = _time_ms(augmented, audio, paddings, key, repeats=args.repeats)
    audio_seconds = args.batch * args.seconds
    print(
        json.dumps(
            {
                "device": str(jax.devices()[0].device_kind),
                "batch": args.batch,
                "seconds_per_utterance": args.seconds,
                "log_mel_ms": round(mel_ms, 3),
                "log_mel_specaug_ms": round(both_ms, 3),
                "log_mel_audio_s_per_s": round(audio_seconds / (mel_ms / 1000.0), 1),
                "log_mel_specaug_audio_s_per_s": round(audio_seconds / (both_ms / 1000.0), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
