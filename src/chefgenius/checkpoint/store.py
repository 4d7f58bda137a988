"""A run's checkpoints: discovery, which files each process writes, and retention.

Each checkpoint is a durable directory (:mod:`chefgenius.durable.directory`: atomic commit, manifest,
verification) named ``step-NNNNNNN``; its manifest must be for that step.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chefgenius.checkpoint.format import CheckpointFormatError, load_state
from chefgenius.checkpoint.layout import META, RANK_DIR, rank_dir, step_of
from chefgenius.durable.directory import MANIFEST, TMP_PREFIX, read_manifest, tree, verify_directory


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    path: Path


def list_checkpoints(root: Path) -> list[CheckpointInfo]:
    """Committed checkpoint directories, oldest first (validity not checked)."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        step = step_of(p)
        if step is not None and p.is_dir() and not p.is_symlink():
            found.append(CheckpointInfo(step, p))
    return sorted(found, key=lambda c: c.step)


def files_of_rank(directory: Path, rank: int) -> list[str]:
    """The files one process writes into a checkpoint: its rank directory, and for rank 0 all the rest.

    Never looks into another rank's directory (that process may be writing there right now)."""
    own = rank_dir(Path(), rank).as_posix()
    if rank != 0:
        files, _ = tree(directory / own)
        return [f"{own}/{f}" for f in files]
    out = []
    for entry in sorted(os.listdir(directory)):
        if RANK_DIR.match(entry) and entry != own:
            continue
        path = directory / entry
        if path.is_dir() and not path.is_symlink():
            out += [f"{entry}/{f}" for f in tree(path)[0]]
        elif entry != MANIFEST:
            out.append(entry)
    return sorted(out)


def verify_checkpoint(ckpt: Path) -> str | None:
    """None when the checkpoint is exactly what its manifest lists and the manifest was written for the
    step its name says, else one line naming the first problem."""
    return verify_directory(ckpt, step_of(ckpt))


def read_checkpoint_manifest(ckpt: Path) -> dict[str, Any]:
    return read_manifest(ckpt, step_of(ckpt))


def select_retained(infos: list[CheckpointInfo], val_losses: dict[int, float | None], *, keep_last: int,
                    keep_best: int, protect: Iterable[int] = ()) -> set[int]:
    """Steps to keep: the newest ``keep_last``, the ``keep_best`` lowest validation losses, protected."""
    steps = [i.step for i in infos]
    keep = set(steps[-keep_last:]) | set(protect)
    ranked = sorted((v, s) for s, v in val_losses.items() if isinstance(v, (int, float)) and s in steps)
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
            remove_in_background(info.path)
            removed.append(info.path)
    return removed


_removals: ThreadPoolExecutor | None = None
_removals_lock = threading.Lock()
_removing: list[Any] = []


def remove_in_background(path: Path) -> None:
    """Set a checkpoint aside under a temporary name (at once: nothing finds it from now on, and a kill
    leaves a leftover the next start removes) and delete it on a background thread. Deleting 1.9 GB
    took 0.25 s of a 1.1 s save here; training need not wait for it."""
    global _removals
    trash = path.parent / f"{TMP_PREFIX}removed-{path.name}-{os.getpid()}"
    if trash.exists():
        shutil.rmtree(trash, ignore_errors=True)
    os.rename(path, trash)
    with _removals_lock:
        if _removals is None:
            _removals = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chefgenius-retention")
        _removing.append(_removals.submit(shutil.rmtree, trash, ignore_errors=True))


def finish_removals() -> None:
    """Wait until every checkpoint set aside by retention is deleted (the end of a run)."""
    while _removing:
        _removing.pop(0).result()


def checkpoint_val_loss(ckpt: Path) -> float | None:
    try:
        meta = load_state(ckpt, META)
    except CheckpointFormatError:
        return None
    value = meta.get("val_loss") if isinstance(meta, dict) else None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
