"""Collect every stateful piece of a run under named keys, and put them back.

The one place that knows what a training checkpoint holds. Each piece speaks
``state_dict()`` / ``load_state_dict()``; RNG state is per rank.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from .format import CheckpointFormatError, load_state, save_state
from .rng import capture_rng, restore_rng
from .store import commit_checkpoint, rank_dir, write_states


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


class ResumeError(ValueError):
    """A checkpoint that cannot be resumed from as-is (missing piece, mismatch); exit code 2."""


def save_training_checkpoint(root: Path, step: int, *, pieces: dict[str, Stateful], meta: dict[str, Any],
                             save_model: Callable[[Path], None], rank: int = 0) -> Path:
    def write(tmp: Path) -> None:
        save_model(tmp)
        write_states(tmp, {name: obj.state_dict() for name, obj in pieces.items()})
        save_state(tmp, "meta", meta)
        rd = rank_dir(tmp, rank)
        rd.mkdir()
        save_state(rd, "rng", capture_rng())

    return commit_checkpoint(root, step, write)


def read_meta(ckpt: Path) -> dict[str, Any]:
    return load_state(ckpt, "meta")


def check_optimizer_matches(state: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
    """Refuse optimizer state whose parameters differ from the model's in count, order or shape."""
    saved_groups = state.get("param_groups", [])
    if len(saved_groups) != len(optimizer.param_groups):
        raise ResumeError(f"optimizer state has {len(saved_groups)} parameter groups, the model has "
                          f"{len(optimizer.param_groups)}")
    for gi, (saved, live) in enumerate(zip(saved_groups, optimizer.param_groups)):
        if len(saved["params"]) != len(live["params"]):
            raise ResumeError(f"optimizer group {gi} holds {len(saved['params'])} parameters, the model has "
                              f"{len(live['params'])}")
        names_saved, names_live = saved.get("param_names"), live.get("param_names")
        if names_saved is not None and names_live is not None and list(names_saved) != list(names_live):
            first = next(i for i, (a, b) in enumerate(zip(names_saved, names_live)) if a != b)
            raise ResumeError(f"optimizer group {gi} parameter {first} is {names_saved[first]!r} in the "
                              f"checkpoint but {names_live[first]!r} in the model (order or names changed)")
        for pid, param in zip(saved["params"], live["params"]):
            for key, value in state.get("state", {}).get(pid, {}).items():
                if isinstance(value, torch.Tensor) and value.ndim and value.shape != param.shape:
                    name = (names_live or [])[live["params"].index(param)] if names_live else pid
                    raise ResumeError(f"optimizer state {key!r} of parameter {name} has shape "
                                      f"{tuple(value.shape)}, the parameter has {tuple(param.shape)}")


def load_training_checkpoint(ckpt: Path, *, pieces: dict[str, Stateful], rank: int = 0) -> None:
    """Load every piece; a missing or mismatching piece raises, never a silent fresh start."""
    for name, obj in pieces.items():
        try:
            state = load_state(ckpt, name)
        except CheckpointFormatError as err:
            raise ResumeError(f"cannot resume: {err}") from None
        if isinstance(obj, torch.optim.Optimizer):
            check_optimizer_matches(state, obj)
        try:
            obj.load_state_dict(state)
        except (ValueError, KeyError, RuntimeError, TypeError) as err:
            raise ResumeError(f"cannot resume: '{name}' state in {ckpt.name} does not load: "
                              f"{str(err).splitlines()[0]}") from None
    try:
        rng = load_state(rank_dir(ckpt, rank), "rng")
        restore_rng(rng)
    except CheckpointFormatError as err:
        raise ResumeError(f"cannot resume: rank {rank} RNG state: {err}") from None
    except ValueError as err:
        raise ResumeError(f"cannot resume: {err}") from None
