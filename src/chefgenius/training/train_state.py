"""The trainer's own progress, saved in every checkpoint; the data position lives in the sampler."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainState:
    """Step, token count, best validation loss and early stopping, the open logging window, history.

    Bounded in size: per-step losses go to metrics.jsonl; only the losses of the current logging
    window are kept (the next log entry averages them, also across a resume).
    """

    step: int = 0
    best_val_loss: float = math.inf
    best_step: int | None = None
    num_bad_evals: int = 0
    stopped_early: bool = False
    num_tokens: int = 0
    window_losses: list[float] = field(default_factory=list)
    eval_history: list[dict[str, float]] = field(default_factory=list)
    resumes: list[dict[str, Any]] = field(default_factory=list)
    config_changes: list[dict[str, Any]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "window_losses" not in state and isinstance(state.get("loss_history"), list):
            # First-wave checkpoints kept every step's loss; resumed() trims this to the open window.
            state = {**state, "window_losses": [entry[1] for entry in state["loss_history"]]}
        missing = set(self.__dataclass_fields__) - set(state)
        if missing:
            raise ValueError(f"train state lacks {', '.join(sorted(missing))}")
        for k in self.__dataclass_fields__:
            setattr(self, k, state[k])
        if not isinstance(self.step, int) or isinstance(self.step, bool) or self.step < 0:
            raise ValueError(f"train state has an invalid step {self.step!r}")

    def advance(self, loss: float, num_tokens: int) -> None:
        """One optimizer step done."""
        self.step += 1
        self.num_tokens += num_tokens
        self.window_losses.append(loss)

    def close_window(self) -> float:
        """The mean loss of the logging window that ends here; a new window opens."""
        mean = sum(self.window_losses) / len(self.window_losses)
        self.window_losses = []
        return mean

    def resumed(self, checkpoint_name: str, changes: list[dict[str, Any]], log_every: int) -> None:
        """Record a resume; keep only the losses of the logging window still open at this step."""
        open_window = self.step % log_every
        self.window_losses = self.window_losses[max(0, len(self.window_losses) - open_window):]
        self.resumes.append({"step": self.step, "from": checkpoint_name})
        self.config_changes.extend(changes)

    def record_eval(self, metrics: dict[str, float], *, patience: int | None, threshold: float) -> bool:
        """Update best / early-stopping state; returns whether this evaluation is a new best."""
        self.eval_history.append({"step": self.step, **metrics})
        if metrics["eval_loss"] < self.best_val_loss - threshold:
            self.best_val_loss, self.best_step, self.num_bad_evals = metrics["eval_loss"], self.step, 0
            return True
        self.num_bad_evals += 1
        if patience and self.num_bad_evals >= patience:
            self.stopped_early = True
        return False
