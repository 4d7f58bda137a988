"""Durable small writes, chunked file digests and the digests of files just written: the helpers every
writer of the project shares.

A file replaced with :func:`atomic_write_text` is either the old one or the new one after a crash
or power loss, never a torn mix: temporary file beside it, fsync, rename, fsync of the directory.
"""

from __future__ import annotations

import errno
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


def replace_durably(path: Path, write: Any, *, direct: bool = False) -> None:
    """Write ``path`` through ``write(binary_file)`` into a temporary file beside it, fsync it and rename
    it over ``path``: readers see the old file or the whole new one (and a file memory-mapped from the
    old one stays valid). The directory is not fsynced: callers that need it do it (or commit it).
    ``direct``: large files, written past the page cache where the filesystem allows (:class:`DirectFile`)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        f = DirectFile.open(tmp) if direct else None
        if f is not None:
            with f:
                write(f)
                f.finish()  # the last block, the true size, fsync
        else:
            with tmp.open("wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class DirectFile:
    """A write-only file opened with ``O_DIRECT``: bytes are staged in one page-aligned block and go
    from it to the disk, never through the page cache (bytes that are page-aligned in memory already go
    from where they are, when the file is at an aligned offset). A buffered write costs the writing core a copy
    into the page cache and the kernel's writeback later (1.3-2.4 s of CPU per GiB on the 2-core CI
    machine, against 0.35 s this way, measured): cores a background save shares with training. The
    last block is padded to the alignment and the file truncated to its true size before the fsync."""

    ALIGN = 4096

    def __init__(self, fd: int) -> None:
        import mmap

        import numpy as np

        # untouched pages of the staging block take no memory: an aligned writer never touches them
        self._fd, self._buf, self._used, self.size = fd, mmap.mmap(-1, BLOCK), 0, 0
        # Copies into the staging block go through numpy, which releases the GIL while it copies (a
        # slice assignment into the mmap holds it for each 8 MiB): a background writer must not hold
        # the GIL that training's thread needs, least of all while it waits for a core itself.
        self._staging = np.frombuffer(self._buf, dtype=np.uint8)

    @classmethod
    def open(cls, path: Path) -> DirectFile | None:
        """None where ``O_DIRECT`` does not exist (not Linux) or the filesystem refuses it (EINVAL)."""
        flag = getattr(os, "O_DIRECT", 0)
        if not flag:
            return None
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flag, 0o644)
        except OSError as err:
            if err.errno == errno.EINVAL:
                return None
            raise
        return cls(fd)

    def write(self, data: Any) -> int:
        import numpy as np

        view = memoryview(data).cast("B")
        source = np.frombuffer(view, dtype=np.uint8) if len(view) else None
        done = 0
        if source is not None and not self._used and not self.size % self.ALIGN and not source.ctypes.data % self.ALIGN:
            # Already page-aligned in memory (a snapshot's file image): straight to the disk, no staging.
            done = len(view) - len(view) % self.ALIGN
            self._write_all(view[:done])
        while done < len(view):
            n = min(len(view) - done, BLOCK - self._used)
            self._staging[self._used:self._used + n] = source[done:done + n]
            self._used += n
            done += n
            if self._used == BLOCK:
                self._flush(BLOCK)
        self.size += len(view)
        return len(view)

    def _flush(self, length: int) -> None:
        view = memoryview(self._buf)[:length]
        try:
            self._write_all(view)
        finally:
            view.release()
        self._used = 0

    def _write_all(self, view: memoryview) -> None:
        written = 0
        while written < len(view):
            try:
                written += os.write(self._fd, view[written:])
            except OSError as err:
                if err.errno != errno.EINVAL or not self._direct():
                    raise
                # the filesystem took O_DIRECT at open but not for this write: go on buffered
                import fcntl

                fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~os.O_DIRECT)

    def _direct(self) -> bool:
        import fcntl

        return bool(fcntl.fcntl(self._fd, fcntl.F_GETFL) & os.O_DIRECT)

    def finish(self) -> None:
        if self._used:
            pad = -self._used % self.ALIGN
            self._buf[self._used:self._used + pad] = bytes(pad)
            self._flush(self._used + pad)
        os.ftruncate(self._fd, self.size)
        os.fsync(self._fd)

    def __enter__(self) -> DirectFile:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)
        del self._staging  # the mmap cannot close while an array still exports its buffer
        self._buf.close()


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


def _still_valid(path: Path, known: tuple[int, int, dict[str, Any]] | None) -> dict[str, Any] | None:
    if known is None:
        return None
    st = os.stat(path)
    return known[2] if (st.st_size, st.st_mtime_ns) == known[:2] else None


def recall_digest(path: Path) -> dict[str, Any] | None:
    """The entry remembered for ``path`` if the file is unchanged since (same size and mtime), else None;
    forgotten once recalled."""
    with _known_lock:
        known = _known.pop(os.fspath(path), None)
    return _still_valid(path, known)


def knows_digest(path: Path) -> bool:
    """Whether :func:`recall_digest` would give the entry of ``path`` (written and fsynced by us, unchanged)."""
    with _known_lock:
        known = _known.get(os.fspath(path))
    return _still_valid(path, known) is not None


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

