"""Where metrics go: metrics.jsonl always, TensorBoard and Weights & Biases when asked for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chefgenius.config import LoggingConfig


class MetricsWriter:
    def __init__(self, path: Path, tensorboard_dir: Path, cfg: LoggingConfig, config_dict: dict[str, Any]) -> None:
        run_dir = path.parent
        self.path = path
        self._file = self.path.open("a")
        self._failed = False
        self._tb = None
        self._wandb = None
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise RuntimeError("logging.tensorboard needs the 'tensorboard' extra: "
                                   "pip install 'chefgenius[tensorboard]'") from None
            self._tb = SummaryWriter(str(tensorboard_dir))
        if cfg.wandb:
            try:
                import wandb
            except ImportError:
                raise RuntimeError("logging.wandb needs the 'wandb' extra: pip install 'chefgenius[wandb]'") from None
            self._wandb = wandb.init(project=cfg.wandb_project, dir=str(run_dir), config=config_dict,
                                     name=run_dir.name, resume="allow", id=run_dir.name)

    def log(self, entry: dict[str, Any]) -> None:
        try:
            self._file.write(json.dumps(entry) + "\n")
            self._file.flush()
        except OSError as err:  # a failed flush names no file; say which one
            self._failed = True
            raise OSError(err.errno, err.strerror, str(self.path)) from err
        step = entry.get("step", 0)
        numbers = {k: v for k, v in entry.items() if isinstance(v, (int, float)) and k != "step"}
        if self._tb is not None:
            group = "checkpoint" if entry.get("event") == "save" else "train"
            for k, v in numbers.items():
                self._tb.add_scalar(k.replace("eval_", "eval/") if k.startswith("eval_") else f"{group}/{k}", v, step)
        if self._wandb is not None:
            self._wandb.log(numbers, step=step)

    def close(self) -> None:
        try:
            self._file.close()
        except OSError as err:
            if not self._failed:  # after a failed write the unflushed rest fails again: already reported
                raise OSError(err.errno, err.strerror, str(self.path)) from err
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


class NullMetrics:
    """What ranks other than 0 log to: nothing."""

    def log(self, entry: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass
