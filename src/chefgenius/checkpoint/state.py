"""Load every stateful piece of a run from a checkpoint, by name, refusing anything that does not fit.

Each piece speaks ``state_dict()`` / ``load_state_dict()``; RNG state is per rank and restored
last, so nothing drawn while loading shifts it. (Writing: snapshot.py.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from chefgenius.checkpoint.format import CheckpointFormatError, load_state
from chefgenius.checkpoint.layout import RNG, rank_dir
from chefgenius.checkpoint.rng import restore_rng
from chefgenius.errors import ResumeError  # re-exported
from chefgenius.runtime.devices import seed_everything


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


def check_optimizer_matches(state: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
    """Refuse optimizer state whose parameters differ from the model's in count, order or shape."""
    saved_groups = state.get("param_groups", []) if isinstance(state, dict) else None
    if not isinstance(saved_groups, list) or not all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                                      for g in saved_groups):
        raise ResumeError("optimizer state has no valid parameter groups (damaged or foreign)")
    if len(saved_groups) != len(optimizer.param_groups):
        raise ResumeError(f"optimizer state has {len(saved_groups)} parameter groups, the model has "
                          f"{len(optimizer.param_groups)}")
    per_param = state.get("state", {})
    if not isinstance(per_param, dict):
        raise ResumeError("optimizer state has no valid per-parameter state (damaged or foreign)")
    for gi, (saved, live) in enumerate(zip(saved_groups, optimizer.param_groups)):
        if len(saved["params"]) != len(live["params"]):
            raise ResumeError(f"optimizer group {gi} holds {len(saved['params'])} parameters, the model has "
                              f"{len(live['params'])}")
        names_saved, names_live = saved.get("param_names"), live.get("param_names")
        if names_saved is not None and names_live is not None and list(names_saved) != list(names_live):
            first = next(i for i, (a, b) in enumerate(zip(names_saved, names_live)) if a != b)
            raise ResumeError(f"optimizer group {gi} parameter {first} is {names_saved[first]!r} in the "
                              f"checkpoint but {names_live[first]!r} in the model (order or names changed)")
        for i, (pid, param) in enumerate(zip(saved["params"], live["params"])):
            entry = per_param.get(pid, {})
            for key, value in (entry.items() if isinstance(entry, dict) else ()):
                if isinstance(value, torch.Tensor) and value.ndim and value.shape != param.shape:
                    name = names_live[i] if names_live else pid
                    raise ResumeError(f"optimizer state {key!r} of parameter {name} has shape "
                                      f"{tuple(value.shape)}, the parameter has {tuple(param.shape)}")


def load_training_state(ckpt: Path, *, pieces: dict[str, Stateful], rank: int = 0,
                        missing_rng_seed: int | None = None) -> bool:
    """Load every piece; a missing or mismatching piece raises, never a silent fresh start.

    ``missing_rng_seed``: after a change of world size a new rank has no RNG state of its own; it is
    then seeded with this value (returns False) instead of refusing.
    """
    for name, obj in pieces.items():
        try:
            state = load_state(ckpt, name)
        except CheckpointFormatError as err:
            raise ResumeError(f"cannot resume: {err}") from None
        if isinstance(obj, torch.optim.Optimizer):
            check_optimizer_matches(state, obj)
        try:
            obj.load_state_dict(state)
        except (ValueError, KeyError, RuntimeError, TypeError, AttributeError, IndexError) as err:
            raise ResumeError(f"cannot resume: '{name}' state in {ckpt.name} does not load: "
                              f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if missing_rng_seed is not None and not rank_dir(ckpt, rank).is_dir():
        seed_everything(missing_rng_seed)
        return False
    try:
        restore_rng(load_state(rank_dir(ckpt, rank), RNG))
    except CheckpointFormatError as err:
        raise ResumeError(f"cannot resume: rank {rank} RNG state: {err}") from None
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, RuntimeError) as err:
        raise ResumeError(f"cannot resume: rank {rank} RNG state in {ckpt.name} does not load: {err}") from None
    return True
