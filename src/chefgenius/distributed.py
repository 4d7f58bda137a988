"""Process-group facts from the torchrun environment, and rank-0 printing."""

from __future__ import annotations

import os
import sys


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def print0(*args: object, file=None) -> None:
    """Print on rank 0 only, so that N processes do not repeat every line."""
    if is_main():
        print(*args, file=file or sys.stdout, flush=True)
