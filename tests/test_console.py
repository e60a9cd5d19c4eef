"""The console of `bigssl` commands: environment defaults, what is shown, exit codes.

The subprocess tests run `bigssl` as a user does: without the test set-up's JAX_PLATFORMS,
XLA_FLAGS, TF_CPP_MIN_LOG_LEVEL or CUDA_VISIBLE_DEVICES, with the set-up's extras (libtpu)
installed.
"""

import logging
import os
import subprocess
import sys

import pytest

from bigssl_jax import console, paths
from bigssl_jax.data import registry

BIGSSL = os.path.join(os.path.dirname(sys.executable), "bigssl")
TEST_SETUP_VARIABLES = (
    "JAX_PLATFORMS",
    "XLA_FLAGS",
    "TF_CPP_MIN_LOG_LEVEL",
    "CUDA_VISIBLE_DEVICES",
)

# Lines that commands printed on a CPU machine with libtpu installed (issue 25).
NATIVE_LINES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796662199.592462   10409 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.",
    "E0000 00:00:1796662201.401879   10409 cuda_platform.cc:52] failed call to cuInit: INTERNAL:"
    " CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    "Failed to find host bounds for accelerator type: WARNING: could not determine TPU "
    "accelerator type, please set env var `TPU_ACCELERATOR_TYPE` manually",
    "WARNING: Logging before InitGoogle() is written to STDERR",
    "E0000 00:00:1796662204.438069   10409 common_lib.cc:906] INVALID_ARGUMENT: Error: "
    "unexpected worker hostname",
    "=== Source Location Trace: ===",
    "learning/45eac/tfrc/runtime/libtpu_init_utils.cc:370",
    "W1207 16:53:50.079512   12861 cpu_compiler.cc:1009] slow compile",
]
USER_LINES = [
    "I1207 16:52:52.457320 139692127181696 trainer.py:699] training from step 0 to 4",
    "train: corpus 'nope' is not in the registry /d/registry.json (registered: none)",
    "F1207 16:53:50.079512   12861 tfrt_cpu.cc:12] Check failed: a fatal native error",
    "Traceback (most recent call last):",
    '  File "/x/bigssl_jax/trainer.py", line 3, in train',
    " 45%|████▌     | 45/100 [00:02<00:03, 18.0utt/s]",
]


def _user_env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TEST_SETUP_VARIABLES}
    return {**env, "BIGSSL_DATA_DIR": str(tmp_path / "data")}


def _bigssl(tmp_path, *args: str) -> subprocess.CompletedProcess:
    command = [BIGSSL, *args]
    return subprocess.run(
        command, env=_user_env(tmp_path), capture_output=True, text=True, timeout=300
    )


def test_jax_platforms_defaults_to_cpu_without_accelerator_device_files(tmp_path, monkeypatch):
    monkeypatch.setattr(console, "ACCELERATOR_DEVICE_GLOBS", (str(tmp_path / "accel*"),))
    environ = {}
    console.prepare_environment(environ)
    assert environ == {"JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"}
    environ = {"JAX_PLATFORMS": "tpu", "TF_CPP_MIN_LOG_LEVEL": "0"}
    console.prepare_environment(environ)  # what the user set is kept
    assert environ == {"JAX_PLATFORMS": "tpu", "TF_CPP_MIN_LOG_LEVEL": "0"}
    (tmp_path / "accel0").touch()  # a TPU: JAX chooses
    environ = {}
    console.prepare_environment(environ)
    assert environ == {"TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.mark.parametrize("line", NATIVE_LINES)
def test_native_noise_is_recognised(line):
    assert console.NATIVE_NOISE.match((line + "\n").encode())


@pytest.mark.parametrize("line", USER_LINES)
def test_lines_for_the_user_are_not_noise(line):
    assert not console.NATIVE_NOISE.match((line + "\n").encode())


def _record(path: str, level: int) -> logging.LogRecord:
    return logging.LogRecord("absl", level, path, 1, "message", None, None)


def test_console_filter_shows_own_lines_progress_and_library_errors():
    keep = console._ConsoleFilter().filter
    own = os.path.join(os.path.dirname(console.__file__), "trainer.py")
    orbax = os.path.join("/site-packages", "orbax", "checkpoint", "checkpoint_manager.py")
    clu = os.path.join("/site-packages", "clu", "platform", "local.py")
    assert keep(_record(own, logging.INFO)) and keep(_record(clu, logging.INFO))
    assert not keep(_record(orbax, logging.INFO)) and not keep(_record(orbax, logging.WARNING))
    assert keep(_record(orbax, logging.ERROR))


def test_a_failing_train_prints_one_line_and_logs_the_rest_to_the_run_dir(tmp_path):
    missing = tmp_path / "data" / "prepared" / "embedded_tiny" / "gone.tfrecord"
    info = registry.SplitInfo(files=(str(missing),), num_examples=4, hours=0.01, labeled=False)
    corpora = registry.CorpusRegistry(paths.registry_path(tmp_path / "data"))
    corpora.register_split("embedded_tiny", "unlabeled", info, source="test")
    run = tmp_path / "run"
    done = _bigssl(
        tmp_path, "train", "--gin_file=experiments/pretrain_best_rq_smoke.gin", f"--model_dir={run}"
    )
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("train: corpus 'embedded_tiny' split 'unlabeled'")
    assert str(missing) in done.stderr
    log = (run / console.LOG_NAME).read_text()
    assert log.startswith("=== bigssl train (pid ")


@pytest.mark.parametrize(
    "args, code, message",
    [
        (("params", "--no_such_flag"), 2, "bigssl params: flag error: Unknown command line flag"),
        (("prepare", "--num_shards=many"), 2, "bigssl prepare: flag error:"),
        (("train", "--gin_file=no/such.gin"), 2, "bigssl: gin error: gin file not found"),
        (("train",), 2, "train: --model_dir is required"),
        (("no-such-command",), 2, "bigssl: unknown command 'no-such-command'"),
        (("vocab", "--corpus=nope"), 1, "vocab: corpus 'nope' is not in the registry"),
    ],
)
def test_exit_codes_usage_2_runtime_1_with_one_line(tmp_path, args, code, message):
    done = _bigssl(tmp_path, *args)
    assert done.returncode == code, done.stderr
    assert done.stderr.splitlines()[0].startswith(message), done.stderr
    if args[0] != "no-such-command":  # which prints the usage after its line
        assert len(done.stderr.splitlines()) == 1, done.stderr
