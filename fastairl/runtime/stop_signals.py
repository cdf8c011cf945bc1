"""Stopping a run cleanly on a signal: SIGTERM/SIGUSR1 (a scheduler's pre-emption) and
SIGINT (Ctrl-C) all let every rank finish its step, write ``last.pth`` and leave.

Ctrl-C is the way a new user stops a run, so it must not lose the work since the last
epoch end (a KeyboardInterrupt traceback would). A second Ctrl-C means "now": it raises
KeyboardInterrupt, and the CLI says which checkpoint is left. DataLoader worker processes
ignore SIGINT (the terminal sends it to the whole process group): they are shut down by
the main process once the checkpoint is written, not killed under it mid-batch.
"""
from __future__ import annotations

import contextlib
import logging
import signal

log = logging.getLogger("fastairl")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def install_stop_handlers(runner) -> None:
    """Set ``runner.stop_requested`` (and ``runner.stop_signal``, the first signal) on a
    stop signal; the loop finishes the current step, writes a checkpoint and returns."""
    runner.stop_signal = getattr(runner, "stop_signal", None)

    def handler(signum, frame):
        if signum == signal.SIGINT and runner.stop_requested and runner.stop_signal == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop at once
        runner.stop_requested = True
        runner.stop_signal = runner.stop_signal or signum
        what = "Ctrl-C" if signum == signal.SIGINT else f"signal {signum}"
        log.warning("%s: finishing the current step, writing a checkpoint, then exiting%s", what,
                    " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else "")

    for sig in STOP_SIGNALS:
        with contextlib.suppress(ValueError):  # not the main thread
            signal.signal(sig, handler)


def interrupted(runner) -> bool:
    """Whether the run stopped because of Ctrl-C (exit code 130, as shells expect)."""
    return getattr(runner, "stop_signal", None) == signal.SIGINT


def worker_ignores_sigint(_worker_id: int | None = None) -> None:
    """``worker_init_fn`` of DataLoader workers: Ctrl-C is for the main process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
