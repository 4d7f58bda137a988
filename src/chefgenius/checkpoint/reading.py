"""Reading a run's checkpoints: which one to resume from, whether it can be used, and one handle on it.

Reading goes through one :class:`Checkpoint`, opened once per run after the checkpoint verified.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chefgenius.checkpoint.format import CheckpointFormatError, load_state
from chefgenius.checkpoint.layout import (
    META,
    RNG,
    SAMPLER,
    STATE_PIECES,
    TRAIN_STATE,
    model_dir,
    step_of,
    tokenizer_dir,
)
from chefgenius.checkpoint.shards import is_sharded
from chefgenius.checkpoint.state import ResumeError, Stateful, load_training_state
from chefgenius.checkpoint.store import list_checkpoints, verify_checkpoint

# What resume reads from meta, with the type each must have; anything else is a damaged checkpoint.
_META_FIELDS: dict[str, type | tuple[type, ...]] = {"config": dict, "train_fingerprint": str, "versions": dict}


@dataclass
class Checkpoint:
    """A verified checkpoint opened for reading; its meta is already parsed and checked."""

    path: Path
    meta: dict[str, Any]

    @classmethod
    def trusted(cls, path: Path) -> Checkpoint:
        """A checkpoint another process (rank 0) verified and chose: opened without verifying again."""
        return cls(path, load_state(path, META))

    @property
    def step(self) -> int:
        return step_of(self.path) or 0

    @property
    def model_dir(self) -> Path:
        return model_dir(self.path)

    @property
    def tokenizer_dir(self) -> Path:
        return tokenizer_dir(self.path)

    @property
    def is_sharded(self) -> bool:
        return is_sharded(self.path)

    def load_state(self, pieces: dict[str, Stateful], rank: int = 0, missing_rng_seed: int | None = None) -> bool:
        """Every training piece, then the RNG; refuses state whose step disagrees with the directory.

        Returns whether this rank's RNG state was restored (see :func:`load_training_state`).
        """
        restored = load_training_state(self.path, pieces=pieces, rank=rank, missing_rng_seed=missing_rng_seed)
        state = pieces.get(TRAIN_STATE)
        if state is not None and getattr(state, "step", self.step) != self.step:
            raise ResumeError(f"cannot resume: {self.path.name} holds train state for step {state.step}")
        return restored


def checkpoint_problem(ckpt: Path) -> str | None:
    """One line saying why ``ckpt`` cannot be used, or None: the manifest verifies and every state
    file parses within its size and nesting bounds (what verify, list, inspect and resume all use)."""
    problem = verify_checkpoint(ckpt)
    if problem:
        return problem
    names = {f"{n}.json" for n in (*STATE_PIECES, META)}
    for js in sorted([*(p for p in ckpt.glob("*.json") if p.name in names), *ckpt.glob(f"rank-*/{RNG}.json")]):
        try:
            state = load_state(js.parent, js.stem, with_tensors=False)
        except CheckpointFormatError as err:
            return f"{ckpt.name}: {err}"
        if js.stem in (META, TRAIN_STATE, SAMPLER) and not isinstance(state, dict):
            return f"{ckpt.name}: {js.name} does not hold a mapping (damaged or foreign)"
    return None


def open_checkpoint(path: Path) -> Checkpoint:
    problem = checkpoint_problem(path)
    if problem:
        raise ResumeError(f"checkpoint does not verify: {problem}")
    try:
        meta = load_state(path, META)
    except CheckpointFormatError as err:
        raise ResumeError(f"cannot resume: {err}") from None
    bad = [k for k, t in _META_FIELDS.items() if not isinstance(meta, dict) or not isinstance(meta.get(k), t)]
    if bad:
        raise ResumeError(f"cannot resume: {path.name}/meta lacks valid {', '.join(bad)} (damaged or foreign)")
    return Checkpoint(path, meta)


def choose_checkpoint(root: Path, resume: str, log: Callable[..., None]) -> Checkpoint | None:
    """``auto``: the newest that verifies (saying why newer ones were skipped); ``never``; or a path."""
    if resume not in ("auto", "never"):
        path = Path(resume)
        if not path.is_dir():
            raise ResumeError(f"--resume {resume}: no such checkpoint directory")
        return open_checkpoint(path)
    existing = list_checkpoints(root)
    if resume == "never":
        if existing:
            raise ResumeError(f"{root.parent} already holds checkpoints; pass --resume auto to continue "
                              "it, or choose a new --output-dir")
        return None
    if not existing:
        return None
    for info in reversed(existing):
        try:
            return open_checkpoint(info.path)
        except ResumeError as err:
            log(f"skipping checkpoint {info.path.name}: {err}")
    raise ResumeError(f"{root.parent} holds checkpoints but none verifies; run 'chefgenius ckpt list "
                      f"{root.parent}' and remove or repair them, or use a new --output-dir")
