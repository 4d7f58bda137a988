"""A run directory: where each file of a run lives, whether the run is complete, and its lock.

The checkpoint package owns what is inside ``checkpoints/`` and ``final/``; this module owns
the names around them. Nothing here writes on construction.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from chefgenius.checkpoint.layout import is_final
from chefgenius.durable.files import atomic_write_text
from chefgenius.durable.jsonl import truncate_after
from chefgenius.errors import RunDirError, RunLockedError  # re-exported
from chefgenius.runtime.distributed import rank

LOCK_FILE = ".lock"
BASE_MODEL_DIR = "base_model"


class RunDirectory:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # ----- layout ---------------------------------------------------------------------------------
    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def final(self) -> Path:
        return self.path / "final"

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def samples(self) -> Path:
        return self.path / "samples.jsonl"

    @property
    def data_report(self) -> Path:
        return self.path / "data_report.json"

    @property
    def eval_file(self) -> Path:
        return self.path / "eval.json"

    @property
    def report_dir(self) -> Path:
        return self.path / "report"

    @property
    def base_model(self) -> Path:
        """Untrained base of a from-scratch LoRA run, stored once so adapters always find it."""
        return self.path / BASE_MODEL_DIR

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    # ----- state ----------------------------------------------------------------------------------
    def check_usable(self) -> None:
        """Refuse a path that is a file or lies under one, before anything is read or written."""
        for p in (self.path, *self.path.parents):
            if p.exists():
                if not p.is_dir():
                    raise RunDirError(f"output directory {self.path}: {p} is a file, not a directory; "
                                      "choose another --output-dir")
                break

    def is_complete(self) -> bool:
        """Whether training finished: ``final/`` was committed (it is written only at completion)."""
        return is_final(self.final)

    def read_config(self) -> dict[str, Any]:
        if not self.config_file.is_file():
            raise RunDirError(f"{self.path} has no config.yaml; pass a run directory written by 'chefgenius train'")
        try:
            raw = yaml.safe_load(self.config_file.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise RunDirError(f"{self.config_file} is not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise RunDirError(f"{self.config_file} does not hold a config mapping")
        return raw

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_text(self.config_file, yaml.safe_dump(config, sort_keys=False))

    def write_data_report(self, report: dict[str, Any]) -> None:
        atomic_write_text(self.data_report, json.dumps(report, indent=1))

    def truncate_logs(self, step: int) -> None:
        """Drop log entries after ``step``: they will be logged again, so the logs read like one run."""
        truncate_after(self.metrics, step)
        truncate_after(self.samples, step)

    # ----- lock -----------------------------------------------------------------------------------
    @contextmanager
    def lock(self, wait_s: float | None = None) -> Iterator[None]:
        """Exclusive lock for the whole run; the OS releases it when the process dies, even by SIGKILL.

        In a multi-process run rank 0 holds it for the job; the other ranks take no lock. Not
        re-entrant: one owner takes it (the Trainer, or a command that reads the run).

        A holder that is on its way out does not refuse the run: a process of the same Slurm job (a
        requeued job starts while the previous allocation's processes still exit) or one that is
        dying (killed, or orphaned by its launcher, as torchrun workers are when the launcher is
        SIGKILLed) is waited for, up to ``wait_s`` seconds (``CHEFGENIUS_LOCK_WAIT_S``, default 60),
        saying so. Any other holder refuses the run at once.
        """
        if rank() != 0:
            yield
            return
        self.check_usable()
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _take_lock(fd, self.path, _lock_wait_s() if wait_s is None else wait_s)
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()} {os.environ.get('SLURM_JOB_ID', '-')}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # closing releases the flock; the holder's text is left, harmless


def _lock_wait_s() -> float:
    return float(os.environ.get("CHEFGENIUS_LOCK_WAIT_S") or 60)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _take_lock(fd: int, path: Path, wait_s: float) -> None:
    if _try_lock(fd):
        return
    text = os.pread(fd, 256, 0).decode(errors="replace").split()
    pid, host, job = (text + ["unknown", "-", "-"])[:3]  # older runs wrote the pid alone
    why = _leaving(pid, host, job)
    if why is not None:
        print(f"{path} is still locked by pid {pid} ({why}); waiting up to {wait_s:.0f}s for it to exit",
              file=sys.stderr, flush=True)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if _try_lock(fd):
                return
        raise RunLockedError(f"{path} is still in use by pid {pid} ({why}) after {wait_s:.0f}s; stop it, or set "
                             "CHEFGENIUS_LOCK_WAIT_S to wait longer")
    raise RunLockedError(f"{path} is in use by another chefgenius process (pid {pid}); wait for "
                         "it to finish or stop it, or choose another --output-dir")


def _leaving(pid: str, host: str, job: str) -> str | None:
    """Why the lock's holder is expected to exit soon, or None (a live run of its own)."""
    if job != "-" and job == os.environ.get("SLURM_JOB_ID"):
        return f"an earlier allocation of Slurm job {job}"
    if host not in ("-", socket.gethostname()) or not pid.isdigit():
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if ":" in line)
    except (OSError, IndexError):
        return "gone"  # it exited between the two looks: the lock is about to be free
    state, flags = stat[0], int(stat[6])
    pending = int(status.get("SigPnd", "0").strip() or "0", 16) | int(status.get("ShdPnd", "0").strip() or "0", 16)
    # PF_EXITING (0x4): in the kernel's exit path, where a large process spends a while freeing its
    # memory before its files (and so the lock) are closed.
    if state in ("Z", "X") or flags & 0x4 or pending & (1 << (signal.SIGKILL - 1)):
        return "exiting"
    if status.get("PPid", "").strip() == "1" and "TORCHELASTIC" in _environ_text(pid):
        return "a torchrun worker whose launcher is gone"
    return None


def _environ_text(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    except OSError:
        return ""
