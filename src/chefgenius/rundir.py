"""A run directory: where each file of a run lives, whether the run is complete, and its lock.

The checkpoint package owns what is inside ``checkpoints/`` and ``final/``; this module owns
the names around them. Nothing here writes on construction.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from .checkpoint.layout import is_final
from .distributed import rank
from .errors import RunDirError, RunLockedError  # re-exported
from .fileio import atomic_write_text
from .tracking import truncate_after

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
    def lock(self) -> Iterator[None]:
        """Exclusive lock for the whole run; the OS releases it when the process dies, even by SIGKILL.

        In a multi-process run rank 0 holds it for the job; the other ranks take no lock. Not
        re-entrant: one owner takes it (the Trainer, or a command that reads the run).
        """
        if rank() != 0:
            yield
            return
        self.check_usable()
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLockedError(f"{self.path} is in use by another chefgenius process (pid {holder}); wait for "
                                 "it to finish or stop it, or choose another --output-dir") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # closing releases the flock; the pid text is left, harmless


