"""Checkpoint directories: atomic commit, manifest + verification, discovery, retention.

A checkpoint is written into ``.tmp-step-NNNNNNN-PID`` beside its final place; files are
fsynced, ``MANIFEST.json`` (name, size and SHA-256 of every file) is written last, then the
directory is renamed to ``step-NNNNNNN`` and the parent fsynced. A kill at any moment leaves
either a complete checkpoint or a temporary directory that readers ignore and the next run
removes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .format import FORMAT_VERSION, CheckpointFormatError, load_state, save_state

MANIFEST = "MANIFEST.json"
_STEP_DIR = re.compile(r"^step-(\d{7,})$")
_TMP_PREFIX = ".tmp-"


class CheckpointWriteError(OSError):
    """A save failed (full disk, permissions...); earlier checkpoints are untouched."""


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    path: Path


def checkpoint_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:07d}"


def rank_dir(ckpt: Path, rank: int) -> Path:
    return ckpt / f"rank-{rank:05d}"


def list_checkpoints(root: Path) -> list[CheckpointInfo]:
    """Committed checkpoint directories, oldest first (validity not checked)."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir():
            found.append(CheckpointInfo(int(m.group(1)), p))
    return sorted(found, key=lambda c: c.step)


def remove_temporaries(root: Path) -> list[Path]:
    """Delete leftovers of interrupted saves; returns what was removed."""
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(_TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(directory: Path, step: int) -> None:
    files = {p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in _files(directory)}
    doc = {"format_version": FORMAT_VERSION, "step": step, "created": time.time(), "files": files}
    path = directory / MANIFEST
    with path.open("w") as f:
        json.dump(doc, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def read_manifest(ckpt: Path) -> dict[str, Any]:
    path = ckpt / MANIFEST
    if not path.is_file():
        raise CheckpointFormatError(f"{ckpt.name}: missing {MANIFEST} (incomplete or foreign checkpoint)")
    try:
        doc = json.loads(path.read_text())
        doc["files"].items()
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        raise CheckpointFormatError(f"{ckpt.name}: {MANIFEST} is unreadable") from None
    return doc


def verify_checkpoint(ckpt: Path) -> str | None:
    """None when every file matches the manifest, else one line naming the first problem."""
    try:
        doc = read_manifest(ckpt)
    except CheckpointFormatError as err:
        return str(err)
    if doc.get("format_version") != FORMAT_VERSION:
        return (f"{ckpt.name}: format version {doc.get('format_version')!r}, this chefgenius reads "
                f"{FORMAT_VERSION}")
    for rel, entry in doc["files"].items():
        p = ckpt / rel
        if not p.is_file():
            return f"{ckpt.name}: file {rel} is missing"
        size = p.stat().st_size
        if size != entry.get("size"):
            return f"{ckpt.name}: file {rel} has {size} bytes, manifest says {entry.get('size')}"
        if _sha256(p) != entry.get("sha256"):
            return f"{ckpt.name}: file {rel} does not match its SHA-256 in the manifest (corrupted)"
    return None


def find_resumable(root: Path) -> tuple[CheckpointInfo | None, list[tuple[CheckpointInfo, str]]]:
    """Newest checkpoint that verifies, and the newer ones skipped with the reason for each."""
    skipped = []
    for info in reversed(list_checkpoints(root)):
        problem = verify_checkpoint(info.path)
        if problem is None:
            return info, skipped
        skipped.append((info, problem))
    return None, skipped


def commit_directory(final: Path, step: int, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp_dir)`` beside ``final``, then fsync, manifest and rename atomically into place."""
    root = final.parent
    tmp = root / f"{_TMP_PREFIX}{final.name}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        write(tmp)
        for p in _files(tmp):
            _fsync_file(p)
        write_manifest(tmp, step)
        for d in sorted({p.parent for p in _files(tmp)} | {tmp}, key=lambda d: len(d.parts), reverse=True):
            _fsync_dir(d)
        if final.exists():
            # Only an unverifiable leftover can stand here (resume skips to an older one): set it aside.
            trash = root / f"{_TMP_PREFIX}replaced-{final.name}-{os.getpid()}"
            os.rename(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.rename(tmp, final)
        _fsync_dir(root)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = err.strerror or str(err)
        where = err.filename or tmp
        raise CheckpointWriteError(err.errno, f"cannot write {final.name} (step {step}) at {where}: {reason}") from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def commit_checkpoint(root: Path, step: int, write: Callable[[Path], None]) -> Path:
    return commit_directory(checkpoint_dir(root, step), step, write)


def write_states(directory: Path, states: dict[str, Any]) -> None:
    for name, state in states.items():
        save_state(directory, name, state)


def read_states(ckpt: Path, names: Iterable[str]) -> dict[str, Any]:
    return {name: load_state(ckpt, name) for name in names}


def select_retained(infos: list[CheckpointInfo], val_losses: dict[int, float | None], *, keep_last: int,
                    keep_best: int, protect: Iterable[int] = ()) -> set[int]:
    """Steps to keep: the newest ``keep_last``, the ``keep_best`` lowest validation losses, protected."""
    steps = [i.step for i in infos]
    keep = set(steps[-keep_last:]) | set(protect)
    ranked = sorted((v, s) for s, v in val_losses.items() if v is not None and s in steps)
    keep |= {s for _, s in ranked[:keep_best]}
    return keep


def apply_retention(root: Path, *, keep_last: int, keep_best: int, protect: Iterable[int] = ()) -> list[Path]:
    """Delete checkpoints outside the retained set; call only after a new checkpoint committed."""
    infos = list_checkpoints(root)
    losses = {i.step: checkpoint_val_loss(i.path) for i in infos}
    keep = select_retained(infos, losses, keep_last=keep_last, keep_best=keep_best,
                           protect=[*protect, infos[-1].step] if infos else protect)
    removed = []
    for info in infos:
        if info.step not in keep:
            shutil.rmtree(info.path, ignore_errors=True)
            removed.append(info.path)
    return removed


def checkpoint_val_loss(ckpt: Path) -> float | None:
    try:
        meta = load_state(ckpt, "meta")
    except (CheckpointFormatError, OSError):
        return None
    return meta.get("val_loss")
