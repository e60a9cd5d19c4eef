"""Stage subprocesses that stop with their job.

A job (`bigssl pipeline`, `bigssl experiment`) runs each stage as a `bigssl` subprocess, two
at a time when stages run side by side. Without this module a SIGTERM to the job kills only
the job's own process and leaves its stages training as orphans. Within
`forwarding_sigterm()`, a SIGTERM to the job is passed on to every live stage (each trainer
saves a checkpoint on it and exits), no new stage starts, and `run` raises `Stopped` for
each stage that ended that way, so the job stops with one line and the same command
resumes it:

    with stage_processes.forwarding_sigterm():
        returncode = stage_processes.run(argv, log=log_path, env=env)
"""

import contextlib
import os
import signal
import subprocess
import threading

_LOCK = threading.Lock()
_LIVE: set[subprocess.Popen] = set()
_STOPPING = threading.Event()


class Stopped(RuntimeError):
    """The job was asked to stop (SIGTERM) while or before this stage ran."""


def run(argv: list[str], *, log: os.PathLike, env: dict[str, str], name: str) -> int:
    """Runs `argv` with stdout and stderr appended to `log`; its exit code.

    Raises:
      Stopped: the job received SIGTERM before the stage started or while it ran.
    """
    if _STOPPING.is_set():
        raise Stopped(f"stage '{name}' not started: the job was asked to stop")
    with open(log, "a") as out, _LOCK:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        _LIVE.add(process)
    try:
        returncode = process.wait()
    finally:
        with _LOCK:
            _LIVE.discard(process)
    if _STOPPING.is_set():
        raise Stopped(
            f"stage '{name}' stopped on SIGTERM (exit {returncode}); run the same command "
            "again to resume"
        )
    return returncode


def _forward(signum, frame) -> None:
    del frame
    _STOPPING.set()
    with _LOCK:
        for process in _LIVE:
            process.send_signal(signum)


@contextlib.contextmanager
def forwarding_sigterm():
    """Within the block (entered on the main thread), SIGTERM goes to the live stages
    instead of ending this process; the previous handler is restored after it."""
    previous = signal.signal(signal.SIGTERM, _forward)
    _STOPPING.clear()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
