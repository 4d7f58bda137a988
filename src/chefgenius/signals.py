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


class StopRequest:
    """Whether this process was asked to stop, and by which signal. In a multi-process run every rank
    shares its flag at the next step (the trainer's all-gather), so all ranks stop at the same step."""

    def __init__(self, log: Callable[..., None]) -> None:
        self.log = log
        self.signal: int | None = None

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
