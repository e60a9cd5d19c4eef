"""Where the trainer's metrics go: TensorBoard where TensorFlow is installed, the log always.

    writer = summaries.create_writer(model_dir, just_logging=jax.process_index() > 0)
    report = summaries.progress_reporter(num_steps, writer, every_steps=50)
    report(step)                               # after each applied step: steps/s and ETA
    writer.write_scalars(step, {"train/loss": 0.5})

clu's metric writers import TensorFlow (its summary writer) as soon as `clu.metric_writers`
is imported, and `clu.periodic_actions` imports them. A typical GPU image has JAX, flax, optax
and orbax but not TensorFlow, so the training core imports both only here, inside functions:
with TensorFlow, the writer is clu's default (log lines + TensorBoard events under
`model_dir`) and the reporter clu's `ReportProgress`; without it, the writer only logs (a
warning says that no events are written) and `StepRate` logs steps/s and the ETA instead.
"""

import functools
import os
import time
from collections.abc import Mapping
from typing import Any, Protocol

from absl import logging


class Writer(Protocol):
    """What the trainer calls on a metric writer (a subset of clu's `MetricWriter`)."""

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None: ...

    def flush(self) -> None: ...


@functools.cache
def _clu_writers():
    """`clu.metric_writers`, or None when TensorFlow (which it imports) is not installed."""
    try:
        from clu import metric_writers
    except ImportError as error:
        logging.warning("no TensorBoard events (%s): metrics go to the log only", error)
        return None
    return metric_writers


class LogWriter:
    """A `Writer` that logs each call's scalars as one line (no TensorBoard events)."""

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        shown = ", ".join(f"{k}={float(v):.6g}" for k, v in sorted(scalars.items()))
        logging.info("[%d] %s", step, shown)

    def flush(self) -> None:
        pass


def create_writer(model_dir: os.PathLike | str, *, just_logging: bool) -> Writer:
    """clu's default writer for `model_dir` (events + log), else a `LogWriter`.

    Args:
      model_dir: where TensorBoard events go.
      just_logging: log only (processes other than the first of a multi-host job).
    """
    metric_writers = _clu_writers()
    if metric_writers is None:
        return LogWriter()
    return metric_writers.create_default_writer(os.fspath(model_dir), just_logging=just_logging)


class StepRate:
    """Every `every_steps` steps, writes 'steps_per_sec' and logs it with the ETA of step
    `num_steps` (what clu's `ReportProgress` does, without TensorFlow)."""

    def __init__(self, num_steps: int, writer: Writer, every_steps: int):
        self.num_steps, self.writer, self.every_steps = num_steps, writer, every_steps
        self.last_step, self.last_time = None, time.monotonic()

    def __call__(self, step: int) -> None:
        now = time.monotonic()
        if self.last_step is None:  # the first step (compilation) does not count
            self.last_step, self.last_time = step, now
            return
        if step % self.every_steps or step == self.last_step:
            return
        rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
        self.last_step, self.last_time = step, now
        self.writer.write_scalars(step, {"steps_per_sec": rate})
        eta_minutes = (self.num_steps - step) / rate / 60
        logging.info(
            "%.3g steps/s, %d/%d steps, ETA %.1f min", rate, step, self.num_steps, eta_minutes
        )


def progress_reporter(num_steps: int, writer: Writer, every_steps: int):
    """`report(step)`: clu's `ReportProgress` where TensorFlow is installed, else `StepRate`."""
    if _clu_writers() is None:
        return StepRate(num_steps, writer, every_steps)
    from clu import periodic_actions

    return periodic_actions.ReportProgress(
        num_train_steps=num_steps, writer=writer, every_steps=every_steps
    )
