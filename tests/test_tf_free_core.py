"""The step-level core imports and trains without TensorFlow or seqio (issue 26).

A typical GPU image has JAX, flax, optax and orbax but not TensorFlow; `tests/tf_free_worker.py`
blocks both packages with a `sys.meta_path` finder, imports the layers, losses, models,
train state and step, optimizers, partitioning, checkpointing, the trainer, the platform
defaults and the FLOPs / AOT jobs, and trains a one-block BEST-RQ model for two steps.
"""

import json
import os
import pathlib
import subprocess
import sys

from bigssl_jax import summaries

WORKER = pathlib.Path(__file__).resolve().parent / "tf_free_worker.py"


def test_the_core_trains_with_tensorflow_and_seqio_blocked(tmp_path):
    # One CPU device: the suite's 8 fake devices (conftest's XLA_FLAGS) would not divide the
    # worker's 2-utterance batches.
    env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
    run = subprocess.run(
        [sys.executable, str(WORKER), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["blocked"], "the finder did not block `import tensorflow`"
    assert report["failed"] == {}, report["failed"]
    assert report["loaded"] == []
    assert report["step"] == 2 and report["finite"]
    assert (tmp_path / "run" / "checkpoints" / "2").is_dir()


class _Recorder:
    def __init__(self):
        self.written = []

    def write_scalars(self, step, scalars):
        self.written.append((step, dict(scalars)))

    def flush(self):
        pass


def test_step_rate_writes_steps_per_second_every_few_steps():
    """`summaries.StepRate`, the progress report without TensorFlow: the first step (the
    compilation) is not timed, then one rate every `every_steps` steps."""
    writer = _Recorder()
    report = summaries.StepRate(num_steps=10, writer=writer, every_steps=2)
    for step in range(1, 7):
        report(step)
    assert [step for step, _ in writer.written] == [2, 4, 6]
    assert all(values["steps_per_sec"] > 0 for _, values in writer.written)
