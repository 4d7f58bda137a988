"""Durable small writes, chunked file digests and the digests of files just written: the helpers every
writer of the project shares.

A file replaced with :func:`atomic_write_text` is either the old one or the new one after a crash
or power loss, never a torn mix: temporary file beside it, fsync, rename, fsync of the directory.
"""

from __future__ import annotations

import hashlib
import os
import threading
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


def replace_durably(path: Path, write: Any) -> None:
    """Write ``path`` through ``write(binary_file)`` into a temporary file beside it, fsync it and rename
    it over ``path``: readers see the old file or the whole new one (and a file memory-mapped from the
    old one stays valid). The directory is not fsynced: callers that need it do it (or commit it)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically and durably (the temporary name is unique per process)."""
    replace_durably(path, lambda f: f.write(text.encode()))
    fsync_dir(Path(path).parent)


def update_from_file(hasher: Any, path: Path) -> Any:
    """Feed every byte of ``path`` to ``hasher`` in blocks (memory stays flat for any file size)."""
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            hasher.update(block)
    return hasher




# ----- manifest digests ------------------------------------------------------------------------------
# New manifests record XXH3-128 (xxhash, ~9 GB/s on one core here, 10x SHA-256): a manifest detects
# corruption (a torn write, a flipped bit, a truncated or swapped file), not tampering, so a fast
# non-cryptographic 128-bit digest keeps that guarantee; SHA-256 manifests of earlier releases still verify.
DIGEST = "xxh3_128"
DIGEST_HEX_LENGTHS = {"xxh3_128": 32, "sha256": 64}
DIGEST_LABELS = {"xxh3_128": "XXH3-128", "sha256": "SHA-256"}


def new_digest(algo: str = DIGEST) -> Any:
    import xxhash

    return xxhash.xxh3_128() if algo == "xxh3_128" else hashlib.new(algo)


def file_digest(path: Path, algo: str = DIGEST) -> str:
    return update_from_file(new_digest(algo), path).hexdigest()


_known: dict[str, tuple[int, int, dict[str, Any]]] = {}
_known_lock = threading.Lock()


def remember_digest(path: Path, entry: dict[str, Any]) -> None:
    """Note the manifest entry of a file just written and fsynced, so the commit neither reads nor
    syncs it again."""
    st = os.stat(path)
    with _known_lock:
        _known[os.fspath(path)] = (st.st_size, st.st_mtime_ns, entry)


def recall_digest(path: Path) -> dict[str, Any] | None:
    """The entry remembered for ``path`` if the file is unchanged since (same size and mtime), else None."""
    with _known_lock:
        known = _known.pop(os.fspath(path), None)
    if known is None:
        return None
    st = os.stat(path)
    return known[2] if (st.st_size, st.st_mtime_ns) == known[:2] else None


def digest_and_sync(path: Path) -> dict[str, Any]:
    """One pass over a file: fsync it and digest it; returns (and remembers) its manifest entry."""
    with Path(path).open("rb") as f:
        h = new_digest()
        for block in iter(lambda: f.read(BLOCK), b""):
            h.update(block)
        os.fsync(f.fileno())
        entry = {"size": os.fstat(f.fileno()).st_size, DIGEST: h.hexdigest()}
    remember_digest(path, entry)
    return entry


def manifest_entry(path: Path) -> dict[str, Any]:
    """The entry of a file for a manifest: remembered from its writing, or fsynced and digested now."""
    return recall_digest(path) or digest_and_sync(path)

