"""A SIGTERM to a job reaches its running stages (which save and exit), starts no new stage,
and ends the job with `Stopped` (jobs/stage_processes.py)."""

import os
import signal
import sys
import threading
import time

import pytest

from bigssl_jax.jobs import stage_processes

# A stand-in for a trainer: says it is ready, and on SIGTERM "saves" and exits with 3.
STAGE = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: (print('saved', flush=True), sys.exit(3)))\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def _wait_for(path, text, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {path}")


def test_a_stage_that_ends_normally_returns_its_exit_code(tmp_path):
    log = tmp_path / "ok.log"
    argv = [sys.executable, "-c", "print('hello'); raise SystemExit(5)"]
    with stage_processes.forwarding_sigterm():
        assert stage_processes.run(argv, log=log, env=dict(os.environ), name="ok") == 5
    assert log.read_text() == "hello\n"


def test_sigterm_reaches_both_side_by_side_stages_and_stops_the_job(tmp_path):
    errors = {}
    previous = signal.getsignal(signal.SIGTERM)

    def stage(name):
        try:
            argv = [sys.executable, "-c", STAGE]
            stage_processes.run(argv, log=tmp_path / f"{name}.log", env=dict(os.environ), name=name)
        except stage_processes.Stopped as error:
            errors[name] = str(error)

    with stage_processes.forwarding_sigterm():
        threads = [threading.Thread(target=stage, args=(name,)) for name in ("a", "b")]
        for thread in threads:
            thread.start()
        for name in ("a", "b"):
            _wait_for(tmp_path / f"{name}.log", "ready")
        os.kill(os.getpid(), signal.SIGTERM)  # this process survives: the handler forwards it
        for thread in threads:
            thread.join(30)
        assert set(errors) == {"a", "b"}
        assert "stopped on SIGTERM (exit 3)" in errors["a"] and "resume" in errors["a"]
        assert all("saved" in (tmp_path / f"{n}.log").read_text() for n in ("a", "b"))
        with pytest.raises(stage_processes.Stopped, match="'c' not started"):
            stage_processes.run([sys.executable, "-c", ""], log=tmp_path / "c.log",
                                env=dict(os.environ), name="c")  # fmt: skip
        assert not (tmp_path / "c.log").exists()
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is restored
