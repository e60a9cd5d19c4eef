"""Gating and arguments of `jax.distributed.initialize` (bigssl_jax/distributed.py).

The multi-process behaviour itself (collectives, per-process data positions, checkpoints)
is tested with real processes in tests/test_multihost.py.
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from bigssl_jax import distributed


@pytest.mark.parametrize(
    "flag, env, expected",
    [
        (None, {}, False),
        (None, {"BIGSSL_DISTRIBUTED": "1"}, True),
        (None, {"BIGSSL_DISTRIBUTED": "true"}, True),
        (None, {"BIGSSL_DISTRIBUTED": "0"}, False),
        (False, {"BIGSSL_DISTRIBUTED": "1"}, False),
        (True, {}, True),
    ],
)
def test_initialisation_is_gated_by_the_flag_else_the_environment(flag, env, expected):
    assert distributed.is_enabled(flag, env) is expected


def test_flags_override_the_environment_and_unset_values_stay_for_auto_detection():
    env = {"JAX_COORDINATOR_ADDRESS": "n0:1234", "BIGSSL_NUM_PROCESSES": "4"}
    config = distributed.resolve_config(process_id=3, environ=env)
    assert config.kwargs() == {
        "coordinator_address": "n0:1234",
        "num_processes": 4,
        "process_id": 3,
        "initialization_timeout": 300,
    }
    flagged = distributed.resolve_config(coordinator_address="n1:99", num_processes=8, environ=env)
    assert (flagged.coordinator_address, flagged.num_processes) == ("n1:99", 8)
    # On a TPU slice nothing is given: JAX detects all three.
    assert distributed.resolve_config(environ={}).kwargs() == {"initialization_timeout": 300}


@pytest.mark.parametrize(
    "kwargs, env, message",
    [
        ({"num_processes": 2, "process_id": 2}, {}, "process_id 2 is not in"),
        ({}, {"BIGSSL_PROCESS_ID": "one"}, "BIGSSL_PROCESS_ID must be an integer"),
    ],
)
def test_bad_arguments_are_errors(kwargs, env, message):
    with pytest.raises(ValueError, match=message):
        distributed.resolve_config(environ=env, **kwargs)


def test_not_enabled_does_nothing():
    assert not distributed.maybe_initialize(environ={})
    import jax

    assert not jax.distributed.is_initialized()


class _Positions:
    def __init__(self):
        self.position = 0

    def __next__(self):
        self.position += 1
        return {"audio": np.zeros((2, self.position), np.float32)}

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = state["position"]


def test_multihost_iterator_in_one_process_passes_batches_and_wraps_states():
    iterator = distributed.MultiHostIterator(_Positions())
    assert next(iterator)["audio"].shape == (2, 1)
    assert iterator.get_state() == {"processes": [{"position": 1}]}
    iterator.set_state({"processes": [{"position": 5}]})
    assert next(iterator)["audio"].shape == (2, 6)
    with pytest.raises(ValueError, match="saved by 2 processes, restored by 1"):
        iterator.set_state({"processes": [{"position": 1}, {"position": 1}]})
    assert distributed.all_processes_json({"a": [1]}) == [{"a": [1]}]


def _bigssl(*args, env=None):
    environ = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", **(env or {})}
    command = [os.path.join(os.path.dirname(sys.executable), "bigssl"), "params", *args]
    return subprocess.run(command, env=environ, capture_output=True, text=True, timeout=120)


def test_cli_initialises_a_one_process_job_and_reports_bad_arguments():
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    done = _bigssl(
        "--gin_file=models/smoke.gin",
        "--distributed",
        f"--coordinator_address=localhost:{port}",
        "--num_processes=1",
        "--process_id=0",
        "--alsologtostderr",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "process 0 of 1" in done.stderr and "total" in done.stdout
    bad = _bigssl(
        "--gin_file=models/smoke.gin",
        env={"BIGSSL_DISTRIBUTED": "1", "BIGSSL_NUM_PROCESSES": "2", "BIGSSL_PROCESS_ID": "5"},
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == (
        "bigssl: distributed: process_id 5 is not in [0, num_processes=2)"
    )
