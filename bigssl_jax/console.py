"""What a `bigssl` command prints on the console, and where everything else goes.

The console holds what the user wants to read: the command's own output, the log lines of
`bigssl_jax` / `bigssl_tasks` (INFO and above: training progress, evaluations, warnings such
as a skipped non-finite step), clu's progress notes (steps/s, ETA), progress bars, the
libraries' errors, and one line per user error. The rest goes to `<model_dir>/bigssl.log`
when the command has a local run directory (appended to, one header line per invocation)
and nowhere otherwise; `--verbose` shows it on the console as well:

  * the libraries' INFO and WARNING log lines (Orbax, seqio, JAX, TensorFlow) and Python
    warnings (`logging.captureWarnings`), by a filter on absl's handler (`start`);
  * what native code writes straight to stderr below FATAL: glog / absl-C++ lines (they
    name a C++ source file: TensorFlow's CUDA probing, XLA's messages) and libtpu's
    start-up warning. From before the command's module is imported
    (`filter_native_stderr`), a forked filter process sits between file descriptor 2 and
    the console and routes those lines by their format (`NATIVE_NOISE`), holding them until
    `start` says where they go; every other line (the Python side's, a native FATAL one)
    passes straight through, also when the command dies.

Also before the command's module is imported, `prepare_environment` sets defaults that the
user's own environment overrides:
  * JAX_PLATFORMS=cpu when the machine has no accelerator device files (TPU: /dev/accel*,
    /dev/vfio; GPU: /dev/nvidia*, /dev/kfd), so JAX does not probe the libtpu that the
    `tpu-aot` extra installs (`bigssl compile` still loads it for its compile-only devices);
  * TF_CPP_MIN_LOG_LEVEL=2: TensorFlow's C++ INFO and WARNING lines off.
"""

import atexit
import glob
import importlib.util
import logging
import os
import pathlib
import re
import select
import signal
import sys
import time
from collections.abc import MutableMapping

from absl import logging as absl_logging

LOG_NAME = "bigssl.log"
ACCELERATOR_DEVICE_GLOBS = ("/dev/accel*", "/dev/vfio/*", "/dev/nvidia*", "/dev/kfd")
NATIVE_NOISE = re.compile(
    rb"[IWE]\d{4} [\d:.]+ +\d+ [\w./-]+\.(?:cc|cpp|c|h):\d+\] "  # C++ (glog, absl), below FATAL
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|WARNING: Logging before InitGoogle\(\) is written to STDERR"
    rb"|Failed to find host bounds for accelerator type"  # libtpu without a TPU
    rb"|=== Source Location Trace: ===|[\w./-]+\.cc:\d+\r?$"
)
_OWN_PACKAGES = tuple(
    os.path.join(os.path.realpath(folder), "")
    for name in ("bigssl_jax", "bigssl_tasks")
    for folder in importlib.util.find_spec(name).submodule_search_locations
)
_CLU_PROGRESS = os.path.join("clu", "platform", "")  # where clu logs work-unit notes
_DRAIN_MARK = b"\0bigssl: console drained\0\n"  # written by `_drain`, never shown
_DRAIN_SECONDS = 5.0


def prepare_environment(environ: MutableMapping[str, str] = os.environ) -> None:
    """Sets JAX_PLATFORMS and TF_CPP_MIN_LOG_LEVEL defaults (module docstring) in `environ`."""
    if not any(glob.glob(pattern) for pattern in ACCELERATOR_DEVICE_GLOBS):
        environ.setdefault("JAX_PLATFORMS", "cpu")
    environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def log_path(model_dir: str | None) -> pathlib.Path | None:
    """`<model_dir>/bigssl.log` for a local run directory, else None (a URI or no run dir)."""
    if not model_dir or "://" in model_dir:
        return None
    return pathlib.Path(model_dir).absolute() / LOG_NAME


class _ConsoleFilter(logging.Filter):
    """Passes this project's records, clu's progress notes (steps/s, ETA of the trainer's
    `ReportProgress`), and other libraries' records from ERROR up."""

    def filter(self, record: logging.LogRecord) -> bool:
        path = os.path.realpath(record.pathname)
        own = path.startswith(_OWN_PACKAGES) or _CLU_PROGRESS in path
        return own or record.levelno >= logging.ERROR


def start(command: str, *, model_dir: str | None, verbose: bool) -> None:
    """Sets up the console for `command` (module docstring), once its flags are parsed.

    Args:
      command: the command line's name, e.g. 'bigssl train' (the log file's header).
      model_dir: the run directory, if any: the log file goes there.
      verbose: show everything on the console too.
    """
    path = log_path(model_dir)
    absl_logging.set_verbosity(absl_logging.INFO)
    logging.captureWarnings(True)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as log:
            log.write(f"=== {command} (pid {os.getpid()}, {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        handler = logging.FileHandler(path)
        handler.setFormatter(absl_logging.PythonFormatter())
        logging.getLogger().addHandler(handler)
    if not verbose:
        absl_logging.get_absl_handler().addFilter(_ConsoleFilter())
    _tell_filter(b"verbose" if verbose else b"log " + os.fsencode(path or os.devnull))


_control: int | None = None  # the command's end of the native filter's control pipe


def filter_native_stderr() -> None:
    """Points file descriptor 2 at a forked filter process (module docstring). Its native
    noise is held until `start` says where it goes (the log file, nowhere, or the console)."""
    global _control
    sys.stderr.flush()
    data_read, data_write = os.pipe()
    control_read, _control = os.pipe()
    ack_read, ack_write = os.pipe()
    console = os.dup(2)
    if os.fork() == 0:  # the filter: never returns
        for fd in (data_write, _control, ack_read):
            os.close(fd)
        _NativeFilter(console, ack_write).run(data_read, control_read)
    for fd in (data_read, control_read, ack_write):
        os.close(fd)
    os.dup2(data_write, 2)
    os.close(data_write)
    atexit.register(_drain, console, ack_read)


def _tell_filter(message: bytes) -> None:
    """Sends the filter its one control message (when there is a filter)."""
    global _control
    if _control is not None:
        os.write(_control, message)
        os.close(_control)
        _control = None


class _NativeFilter:
    """The filter process: routes each line from the pipe until every writer has closed it."""

    def __init__(self, console: int, ack: int):
        self.console = console
        self.ack = ack  # written to when `_DRAIN_MARK` has come through
        self.log: int | None = None  # where noise goes, once the command said
        self.held: list[bytes] = []  # noise from before that
        self.noise: bool | None = None  # whether the current unfinished line is noise

    def run(self, data: int, control: int) -> None:
        """Reads `data` (and the one message on `control`) until end of file; exits."""
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # outlive the command to pass its last lines
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)  # hold none of the command's streams open
        watched = [data, control]
        while True:
            ready, _, _ = select.select(watched, [], [])
            if control in ready:
                self._decide(os.read(control, 4096))
                watched.remove(control)
            elif chunk := os.read(data, 65536):
                self._route(chunk)
            else:
                os._exit(0)

    def _decide(self, message: bytes) -> None:
        """b'verbose': noise to the console; b'log PATH': appended to PATH; b'' (the command
        ended before saying): dropped. Writes what was held."""
        if message == b"verbose":
            self.log = self.console
        else:
            path = message.removeprefix(b"log ") or os.devnull
            self.log = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        for piece in self.held:
            os.write(self.log, piece)
        self.held = []

    def _route(self, chunk: bytes) -> None:
        """Splits `chunk` into lines (and the drain mark, acknowledged) and routes them."""
        for piece in chunk.splitlines(keepends=True):
            drained = piece.endswith(_DRAIN_MARK)
            piece = piece.removesuffix(_DRAIN_MARK)
            if piece:
                self._route_line(piece)
            if drained:
                os.write(self.ack, b".")

    def _route_line(self, piece: bytes) -> None:
        """A noise line (or its piece) to the log (or held), every other one to the console."""
        if self.noise is None:
            self.noise = bool(NATIVE_NOISE.match(piece))
        if not self.noise:
            os.write(self.console, piece)
        elif self.log is None:
            self.held.append(piece)
        else:
            os.write(self.log, piece)
        if piece.endswith((b"\n", b"\r")):
            self.noise = None


def _drain(console: int, ack: int) -> None:
    """At exit: waits (briefly) until the filter has passed everything written so far, then
    gives fd 2 back to the console. (The filter itself lives on while any process started
    by the command, such as multiprocessing's resource tracker, still holds the pipe.)"""
    sys.stderr.flush()
    try:
        os.write(2, _DRAIN_MARK)
        select.select([ack], [], [], _DRAIN_SECONDS)
    except OSError:  # the filter is gone
        pass
    os.dup2(console, 2)
