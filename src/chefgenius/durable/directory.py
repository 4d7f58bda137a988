"""Durable directories: written beside their place, fsynced, listed in a manifest, renamed in atomically.

Checkpoints, ``final/`` and prepared datasets are all committed this way. A directory is written into
``.tmp-NAME-PID`` beside its final place; files are fsynced, ``MANIFEST.json`` (name, size and XXH3-128
digest of every file; SHA-256 in directories of earlier releases, still verified) is written last, then
the directory is renamed into place and the parent fsynced. A kill at any moment leaves either a
complete directory or a temporary one that readers ignore and the next writer removes. Verification
trusts nothing in the manifest: entries must be plain relative names of regular files inside the
directory, and every file present must be listed.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from safetensors import SafetensorError

from chefgenius.durable.files import DIGEST_HEX_LENGTHS, DIGEST_LABELS, file_digest, fsync_dir, manifest_entry
from chefgenius.errors import CheckpointFormatError, CheckpointWriteError

MANIFEST = "MANIFEST.json"
MANIFEST_VERSION = 1  # the manifest's own format (a checkpoint's state files have theirs: checkpoint.format)
MAX_MANIFEST_BYTES = 8 << 20  # a hostile manifest must not exhaust memory
TMP_PREFIX = ".tmp-"
_HEX = re.compile(r"^[0-9a-f]+$")


def read_json(path: Path, max_bytes: int) -> Any:
    """Parse a JSON file of at most ``max_bytes``; anything unreadable is a :class:`CheckpointFormatError`."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise CheckpointFormatError(f"{path} is {size} bytes, more than the {max_bytes} a file of this kind "
                                        "may hold (damaged or foreign)")
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        what = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise CheckpointFormatError(f"{path} is not valid JSON ({what})") from None
    except OSError as err:
        raise CheckpointFormatError(f"{path} cannot be read ({err.strerror or err})") from None


def remove_temporaries(root: Path) -> list[Path]:
    """Delete leftovers of interrupted saves; returns what was removed."""
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(TMP_PREFIX):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def tree(directory: Path) -> tuple[list[str], list[str]]:
    """Relative names of regular files (manifest excluded) and of anything else (links, fifos...)."""
    files, odd = [], []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=False):
        base = Path(dirpath)
        for name in [*dirnames, *filenames]:
            p = base / name
            rel = p.relative_to(directory).as_posix()
            mode = p.lstat().st_mode
            if stat.S_ISDIR(mode):
                continue
            if stat.S_ISREG(mode):
                if rel != MANIFEST:
                    files.append(rel)
            else:
                odd.append(rel)
    return sorted(files), sorted(odd)


def hash_files(directory: Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Fsync each file and note its size and digest: what one process contributes to a manifest
    (files digested while they were written are not read again)."""
    return {rel: manifest_entry(directory / rel) for rel in names}


def write_manifest(directory: Path, step: int, hashed: dict[str, dict[str, Any]] | None = None) -> None:
    """``hashed``: entries other processes already computed (and fsynced); every other file is
    fsynced and digested here, unless it was digested while written (and is unchanged since)."""
    names, odd = tree(directory)
    if odd:
        raise OSError(errno.EINVAL, f"refusing to commit a directory holding non-regular files {odd}")
    hashed = hashed or {}
    files = {}
    for rel in names:
        known = hashed.get(rel)
        files[rel] = known if known and known.get("size") == (directory / rel).stat().st_size \
            else manifest_entry(directory / rel)
    doc = {"format_version": MANIFEST_VERSION, "step": step, "created": time.time(), "files": files}
    path = directory / MANIFEST
    with path.open("w") as f:
        json.dump(doc, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def read_manifest(ckpt: Path, step: int | None = None) -> dict[str, Any]:
    """The manifest, checked for shape (and, given ``step``, that it was written for that step: a directory
    named for a step); raises :class:`CheckpointFormatError` with one line."""
    path = ckpt / MANIFEST
    if path.is_symlink() or not path.is_file():
        raise CheckpointFormatError(f"{ckpt.name}: missing {MANIFEST} (incomplete, or not written by chefgenius)")
    try:
        doc = read_json(path, MAX_MANIFEST_BYTES)
    except CheckpointFormatError as err:
        raise CheckpointFormatError(f"{ckpt.name}: {MANIFEST} is unreadable: {err}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), dict):
        raise CheckpointFormatError(f"{ckpt.name}: {MANIFEST} has no 'files' mapping (damaged or foreign)")
    if doc.get("format_version") != MANIFEST_VERSION:
        raise CheckpointFormatError(f"{ckpt.name}: format version {doc.get('format_version')!r}, this chefgenius "
                                    f"reads {MANIFEST_VERSION}")
    written = doc.get("step")
    if not isinstance(written, int) or isinstance(written, bool):
        raise CheckpointFormatError(f"{ckpt.name}: {MANIFEST} has no integer 'step'")
    if step is not None and written != step:
        raise CheckpointFormatError(f"{ckpt.name}: {MANIFEST} is for step {written} (copied from another checkpoint?)")
    for rel, entry in doc["files"].items():
        problem = _entry_problem(rel, entry)
        if problem:
            raise CheckpointFormatError(f"{ckpt.name}: {MANIFEST} entry {rel!r} {problem}")
    return doc


def _entry_problem(rel: str, entry: Any) -> str | None:
    parts = rel.split("/") if isinstance(rel, str) else [""]
    odd = any(p in ("..", ".", "") for p in parts) or "\\" in rel or "\x00" in rel
    if odd or PurePosixPath(rel).as_posix() != rel or rel == MANIFEST:
        return "is not a plain relative file name inside the directory"
    if not isinstance(entry, dict):
        return f"must be {{size, xxh3_128 or sha256}}, found {type(entry).__name__}"
    size = entry.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return "has no valid size"
    algos = [a for a in DIGEST_HEX_LENGTHS if a in entry]
    if len(algos) != 1:
        return "has no valid digest (one of xxh3_128, sha256)"
    digest = entry[algos[0]]
    if not isinstance(digest, str) or len(digest) != DIGEST_HEX_LENGTHS[algos[0]] or not _HEX.match(digest):
        return f"has no valid {algos[0]}"
    return None


def _digest_of(entry: dict[str, Any]) -> tuple[str, str]:
    algo = next(a for a in DIGEST_HEX_LENGTHS if a in entry)
    return algo, entry[algo]


def verify_directory(ckpt: Path, step: int | None = None) -> str | None:
    """None when the directory is exactly what its manifest lists (written for ``step``, if given), else one
    line naming the first problem."""
    try:
        if ckpt.is_symlink() or not ckpt.is_dir():
            return f"{ckpt.name}: not a directory"
        doc = read_manifest(ckpt, step)
        files, odd = tree(ckpt)
    except CheckpointFormatError as err:
        return str(err)
    except OSError as err:
        return f"{ckpt.name}: cannot be read ({err.strerror or err})"
    if odd:
        return (f"{ckpt.name}: holds {odd[0]!r}, which is not a regular file (links are not allowed in a "
                "committed directory)")
    listed = doc["files"]
    unlisted = [f for f in files if f not in listed]
    if unlisted:
        return f"{ckpt.name}: file {unlisted[0]} is not in the manifest (added after the commit?)"
    for rel, entry in listed.items():
        p = ckpt / rel
        if rel not in files:
            return f"{ckpt.name}: file {rel} is missing"
        size = p.stat().st_size
        if size != entry["size"]:
            return f"{ckpt.name}: file {rel} has {size} bytes, manifest says {entry['size']}"
    # Files are hashed on a few threads (reading and XXH3 release the GIL: the 826 MB prepared store of
    # the full RecipeNLG verifies in 0.2 s instead of 0.35 s here); the first mismatch in manifest order is named.
    expected = [(rel, *_digest_of(entry)) for rel, entry in listed.items()]
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1, max(1, len(expected)))) as pool:
        found = list(pool.map(lambda item: file_digest(ckpt / item[0], item[1]), expected))
    for (rel, algo, digest), got in zip(expected, found):
        if got != digest:
            return f"{ckpt.name}: file {rel} does not match its {DIGEST_LABELS[algo]} in the manifest (corrupted)"
    return None


def _as_write_error(err: BaseException, name: str, step: int, tmp: Path) -> CheckpointWriteError:
    if isinstance(err, OSError):
        code, reason, where = err.errno, err.strerror or str(err), err.filename or tmp
    else:  # safetensors' Rust writer (used by save_pretrained) raises its own error type for I/O failures
        text = str(err)
        code = errno.ENOSPC if "os error 28" in text or "No space left" in text else errno.EIO
        reason, where = (os.strerror(code) if code == errno.ENOSPC else text), tmp
    return CheckpointWriteError(code, f"cannot write {name} (step {step}) at {where}: {reason}")


def temporary_directory(final: Path, step: int = 0) -> Path:
    """A fresh, empty temporary directory beside ``final`` (where a save is written before its commit)."""
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as err:
        raise _as_write_error(err, final.name, step, tmp) from err
    return tmp


def commit_written(tmp: Path, final: Path, step: int, *, hashed: dict[str, dict[str, Any]] | None = None,
                   before_commit: Callable[[], None] | None = None) -> Path:
    """Fsync, manifest and rename a written temporary directory into place; on failure remove it.

    ``before_commit()`` runs last before the manifest; raising there abandons the save (nothing committed).
    ``hashed``: manifest entries of files other processes wrote, hashed and fsynced.
    """
    root = final.parent
    with discarded_on_error(tmp, final.name, step):
        if before_commit is not None:
            before_commit()
        files, _ = tree(tmp)
        write_manifest(tmp, step, hashed)  # fsyncs what was neither synced by its writer nor by its rank
        for d in sorted({(tmp / f).parent for f in files} | {tmp}, key=lambda d: len(d.parts), reverse=True):
            fsync_dir(d)
        if final.exists() or final.is_symlink():
            # Only an unverifiable leftover can stand here (resume skips to an older one): set it aside.
            trash = root / f"{TMP_PREFIX}replaced-{final.name}-{os.getpid()}"
            os.rename(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.rename(tmp, final)
        fsync_dir(root)
    return final


def commit_directory(final: Path, step: int, write: Callable[[Path], None],
                     before_commit: Callable[[], None] | None = None) -> Path:
    """Run ``write(tmp_dir)`` beside ``final``, then fsync, manifest and rename atomically into place.

    ``before_commit()`` runs last before the manifest; raising there abandons the save (nothing committed)."""
    tmp = temporary_directory(final, step)
    with discarded_on_error(tmp, final.name, step):
        write(tmp)
    return commit_written(tmp, final, step, before_commit=before_commit)


@contextmanager
def discarded_on_error(tmp: Path, name: str, step: int) -> Iterator[None]:
    """Remove the temporary directory of a save that fails; a write failure becomes one CheckpointWriteError."""
    try:
        yield
    except (OSError, SafetensorError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _as_write_error(err, name, step, tmp) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
