"""Training progress for a person: a live bar in a terminal, a plain line every few seconds in a file.

Under a scheduler (``sbatch``, ``nohup``, a CI log) stderr is a file, and a redrawn bar becomes one
"line" of tens of kilobytes of carriage returns that ``tail``, ``grep`` and ``less`` choke on; there
each update is a whole line instead: step, loss, tokens/s and the time left.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class LineProgress:
    """One line per ``every_s`` seconds (and at the end), never a carriage return."""

    def __init__(self, total: int, initial: int, every_s: float, file: TextIO) -> None:
        self.total, self.step, self.every_s, self.file = total, initial, every_s, file
        self._t0 = self._last = time.perf_counter()
        self._first_step, self._tokens = initial, 0
        self._loss: float | None = None
        self._epoch = 0.0

    def advance(self, loss: float, epoch: float, num_tokens: int) -> None:
        self.step += 1
        self._loss, self._epoch, self._tokens = loss, epoch, self._tokens + num_tokens
        now = time.perf_counter()
        if now - self._last >= self.every_s or self.step >= self.total:
            self._last = now
            self._print(now)

    def _print(self, now: float) -> None:
        elapsed = now - self._t0
        done = self.step - self._first_step
        eta = elapsed / done * (self.total - self.step) if done else 0.0
        loss = f"{self._loss:.4f}" if self._loss is not None else "-"
        self.file.write(f"step {self.step}/{self.total} ({100 * self.step / max(self.total, 1):.0f}%) "
                        f"loss {loss} epoch {self._epoch:.2f} tokens/s {self._tokens / max(elapsed, 1e-9):,.0f} "
                        f"elapsed {_clock(elapsed)} ETA {_clock(eta)}\n")
        self.file.flush()

    def write(self, message: str) -> None:
        self.file.write(message + "\n")
        self.file.flush()

    def close(self) -> None:
        pass


class BarProgress:
    """tqdm's live bar, for a terminal."""

    def __init__(self, total: int, initial: int, file: TextIO) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True, file=file)

    def advance(self, loss: float, epoch: float, num_tokens: int) -> None:
        self._bar.update(1)
        self._bar.set_postfix(epoch=f"{epoch:.2f}", loss=f"{loss:.3f}")

    def write(self, message: str) -> None:
        self._bar.write(message)  # above the bar, which stays intact

    def close(self) -> None:
        self._bar.close()


def make_progress(total: int, initial: int, *, enabled: bool, every_s: float,
                  file: Any = None) -> BarProgress | LineProgress | None:
    """A bar where ``file`` (stderr) is a terminal, lines elsewhere; None when disabled."""
    if not enabled:
        return None
    file = file or sys.stderr
    if file.isatty():
        return BarProgress(total, initial, file)
    return LineProgress(total, initial, every_s, file)
