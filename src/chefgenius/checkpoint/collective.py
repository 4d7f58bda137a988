"""A synchronous save by every process of a run at once: one directory, one commit, one outcome.

Rank 0 creates the temporary directory and names it to the others; every rank writes its own part
into it; only when all ranks report success does rank 0 write the manifest and rename it into place.
Every rank then learns the outcome, so all of them stop or go on together. A rank killed at any point
leaves an uncommitted temporary directory that the next run removes. With one process the same code
runs, and every exchange is a no-op.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from chefgenius.durable.directory import commit_written, discarded_on_error, temporary_directory
from chefgenius.errors import CheckpointWriteError
from chefgenius.runtime import distributed

Written = Callable[[Path], None]  # called with a save's temporary directory once this process wrote its part


def save_as_rank0(final: Path, step: int, write: Callable[[Path], None], on_written: Written) -> Path:
    """Rank 0 (or the only process): create, write its part, hear every rank, commit, tell the outcome."""
    announced = False
    error: CheckpointWriteError | None = None
    try:
        tmp = temporary_directory(final, step)
        with discarded_on_error(tmp, final.name, step):
            announced = True
            distributed.broadcast_json({"tmp": str(tmp)})
            failure: BaseException | None = None
            try:
                write(tmp)
            except BaseException as err:  # the other ranks must still hear that this save failed
                failure = err
            everyone = distributed.all_true(failure is None)
            if failure is not None:
                raise failure
            if not everyone:
                raise CheckpointWriteError(errno.EIO, f"cannot write checkpoint step {step}: another process "
                                           "failed to write its state (see its error above)")
            on_written(tmp)
        path = commit_written(tmp, final, step)
    except CheckpointWriteError as err:
        error = err
        if distributed.is_initialized() and not announced:
            distributed.broadcast_json({"error": err.strerror})
    if distributed.is_initialized():
        distributed.broadcast_json({"error": error.strerror} if error else {"path": str(path)})
    if error is not None:
        raise error
    return path


def save_as_rank(step: int, rank: int, write: Callable[[Path], None], on_written: Written) -> Path:
    """Rank > 0: write this rank's part into the directory rank 0 names, then hear the outcome."""
    message = distributed.broadcast_json()
    if "tmp" in message:
        failure: str | None = None
        try:
            write(Path(message["tmp"]))
            on_written(Path(message["tmp"]))
        except (OSError, SafetensorError) as err:  # safetensors reports a full disk as its own error
            failure = f"rank {rank}: {getattr(err, 'strerror', None) or err}"
            print(f"error: cannot write checkpoint step {step}: {failure}", file=sys.stderr, flush=True)
        distributed.all_true(failure is None)
        message = distributed.broadcast_json()
    if "error" in message:
        raise CheckpointWriteError(errno.EIO, message["error"])
    return Path(message["path"])


def decided_by_rank0(rank: int, decide: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """What rank 0's ``decide()`` returns (or the error of the write it failed), on every rank."""
    if rank != 0:
        return distributed.broadcast_json()
    try:
        message = decide()
    except CheckpointWriteError as err:
        message = {"error": err.strerror}
    distributed.broadcast_json(message)
    return message
