"""Durable small writes and chunked file hashing: the helpers every writer of the project shares.

A file replaced with :func:`atomic_write_text` is either the old one or the new one after a crash
or power loss, never a torn mix: temporary file beside it, fsync, rename, fsync of the directory.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

BLOCK = 8 << 20


def fsync_file(path: Path) -> None:
    with Path(path).open("rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically and durably (the temporary name is unique per process)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with tmp.open("w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def update_from_file(hasher: Any, path: Path) -> Any:
    """Feed every byte of ``path`` to ``hasher`` in blocks (memory stays flat for any file size)."""
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            hasher.update(block)
    return hasher


def sha256_file(path: Path) -> str:
    return update_from_file(hashlib.sha256(), path).hexdigest()
