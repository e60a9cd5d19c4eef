"""Multi-host correctness with real processes: 2 processes x 4 CPU devices == 1 x 8.

Both processes run `tests/multihost_worker.py` (BEST-RQ pre-training of a tiny Conformer on a
toy corpus, see its docstring), joined by `jax.distributed` on localhost, each reading its
own `seqio.ShardInfo` half of the data. They train 2 steps and save (every process writes its
shards; process 0 the JSON meta holding both processes' data positions), then a second
`trainer.train` call, with a fresh trainer, checkpoint manager and input pipelines, restores
that checkpoint from disk and trains to step 4. The reference, one process with 8 devices
(this pytest process), trains straight to step 4 on the same global batches. Final params
and eval loss agree to float32 round-off.
"""

import os
import pathlib
import socket
import subprocess
import sys

import multihost_worker
import numpy as np
import pytest

from bigssl_jax import checkpointing

REPO = pathlib.Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "multihost_worker.py"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def _env(cache_dir) -> dict:
    """4 CPU devices per process; a compilation cache so the second `train` call (and the
    second process) reuses compiled programs (e.g. Orbax's per-array slices)."""
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0",
        "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "CUDA_VISIBLE_DEVICES": "",
    }
    env.pop("BIGSSL_DISTRIBUTED", None)
    return env


def _run_job(args, cache_dir) -> None:
    """Both processes of the 2-process job, to completion."""
    coordinator = f"localhost:{_free_port()}"
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                *args,
                f"--process_id={index}",
                "--num_processes=2",
                f"--coordinator={coordinator}",
            ],
            env=_env(cache_dir),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for index in range(2)
    ]
    logs = [p.communicate(timeout=240)[0] for p in processes]
    for index, (process, log) in enumerate(zip(processes, logs, strict=True)):
        assert process.returncode == 0, f"process {index}:\n{log[-3000:]}"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from bigssl_tasks import toy_corpus

    directory = tmp_path_factory.mktemp("data")
    toy_corpus.write_toy_corpus(
        directory,
        multihost_worker.CORPUS,
        splits={"unlabeled": (32, False), "dev": (8, False)},
        num_shards=2,
        min_seconds=0.4,
        max_seconds=1.0,
    )
    return directory


# The key projection's bias has no effect on attention (it adds q . b_k to every logit of
# a softmax row), so its gradient is float noise that Adam scales to full-size steps.
NOISE_ONLY = ("['key']['bias']",)


def test_two_processes_with_a_restore_equal_one_process(data_dir, tmp_path):
    job_dir = tmp_path / "job"
    common = [f"--data_dir={data_dir}", f"--model_dir={job_dir}"]
    _run_job([*common, "--num_steps", "2", "4", f"--out={tmp_path / 'job'}"], tmp_path / "xla")
    meta = checkpointing.Checkpointer(job_dir).restore_meta(2)
    shards = [state["shard"] for state in meta["input"]["processes"]]
    assert shards == [[0, 2], [1, 2]]  # each process's own position, saved by process 0
    assert checkpointing.Checkpointer(job_dir).all_steps() == [2, 4]

    args = multihost_worker.parse(
        [*common[:1], f"--model_dir={tmp_path / 'single'}", "--num_steps", "4", "--out=unused"]
    )
    single = multihost_worker.train(args, 4)
    at_2, job = np.load(tmp_path / "job_0.npz"), np.load(tmp_path / "job_1.npz")
    assert int(job["step"]) == single["step"] == 4
    assert int(job["first_step"]) == 3  # the second call resumed from the step-2 checkpoint
    assert set(job.files) == set(single)
    np.testing.assert_allclose(job["eval_loss"], single["eval_loss"], rtol=1e-5)
    compared = [n for n in job.files if n.startswith("[") and not n.endswith(NOISE_ONLY)]
    for name in compared:
        np.testing.assert_allclose(job[name], single[name], rtol=1e-5, atol=1e-6, err_msg=name)
    # Steps 3 and 4 moved the params.
    assert any(not np.allclose(at_2[n], job[n]) for n in compared)
