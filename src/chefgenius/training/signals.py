"""Stopping on request: SIGINT/SIGTERM finish the step and save; a second Ctrl-C aborts at once.

SIGUSR1 and SIGUSR2 do the same: they are what a cluster scheduler sends before a job's time limit
(Slurm's ``--signal=USR1@120``), and their default action would kill the process without a save.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

WARNING_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
_early: list[int] = []  # warnings received while starting up, before training listens


def listen_early() -> None:
    """Hear the time-limit warning from the process's first moments (``train`` calls it before its
    imports): a warning that arrives while the model loads would otherwise kill the process, and
    the training it interrupts stops after its first step instead, with a checkpoint."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in WARNING_SIGNALS:
        signal.signal(sig, lambda signum, frame: _early.append(signum))


class StopRequest:
    """Whether this process was asked to stop, and by which signal. In a multi-process run every rank
    shares its flag at the next step (the trainer's all-gather), so all ranks stop at the same step."""

    def __init__(self, log: Callable[..., None]) -> None:
        self.log = log
        self.signal: int | None = None
        self.deferred: int | None = None  # a warning heard during start-up: stop after the first step

    def after_step(self) -> None:
        """Turn a warning heard during start-up into a stop, now that a step exists to save."""
        if self.deferred is not None and self.signal is None:
            self.signal, self.deferred = self.deferred, None

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def request(self, signum: int = signal.SIGTERM) -> None:
        """Stop at the end of this step (quietly: another rank's request, already reported there)."""
        if self.signal is None:
            self.signal = signum

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: abort now
            return  # torchrun forwards SIGTERM after the terminal's SIGINT: already stopping
        self.signal = signum
        why = " (the scheduler's time-limit warning)" if signum in WARNING_SIGNALS else ""
        self.log(f"\nreceived {signal.Signals(signum).name}{why}: finishing this step and saving a checkpoint "
                 "(press Ctrl-C again to abort)")

    @contextmanager
    def handling_signals(self) -> Iterator[None]:
        """Route SIGINT, SIGTERM and the warning signals here while training (main thread only); restore
        the old handlers after."""
        old: dict[int, Any] = {}
        if _early:
            self.deferred = _early[0]
            _early.clear()
            self.log(f"received {signal.Signals(self.deferred).name} (the scheduler's time-limit warning) while "
                     "starting: stopping after the first step with a checkpoint")
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, *WARNING_SIGNALS):
                old[sig] = signal.signal(sig, self._handle)
        try:
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)


def scheduler_job() -> dict[str, str]:
    """The Slurm job this process runs in, and how often Slurm restarted it (requeues), for the log."""
    if "SLURM_JOB_ID" not in os.environ:
        return {}
    return {"slurm_job_id": os.environ["SLURM_JOB_ID"],
            "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT", "0")}
