"""Whether a run may continue from a checkpoint: one pure function over what changed since it was written."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from chefgenius.checkpoint import ResumeError
from chefgenius.config import TrainingConfig, trajectory_differences

DATA_KEY = "data"
THREADS_KEY = "training.num_threads"
WORLD_KEY = "world_size"


def is_allowed(key: str, allow: tuple[str, ...] | list[str]) -> bool:
    return any(key == a or key.startswith(a + ".") for a in allow)


def resume_changes(ckpt: Any, cfg: Any, train_fingerprint: str, versions: dict[str, str], *, world_size: int,
                   allow: tuple[str, ...], log: Callable[..., None]) -> list[dict[str, Any]]:
    """The config changes a resume from ``ckpt`` accepts (recorded in the train state); says every
    warning; raises :class:`ResumeError` for a refused change."""
    import torch

    changes, warnings = check_changes(ckpt.meta, cfg.to_dict(), train_fingerprint=train_fingerprint,
                                      num_threads=torch.get_num_threads(), versions=versions, allow=allow,
                                      world_size=world_size)
    for line in warnings:
        log(line)
    return changes


def check_changes(meta: dict[str, Any], config: dict[str, Any], *, train_fingerprint: str, num_threads: int,
                   versions: dict[str, str], allow: tuple[str, ...] | list[str] = (), world_size: int = 1
                   ) -> tuple[list[dict[str, Any]], list[str]]:
    """Accepted changes and warnings; raises :class:`ResumeError` listing every refused difference at once.

    Refused unless named in ``allow`` (``--allow-change``): a trajectory config key, the training
    data (fingerprint), the CPU thread count (it changes floating-point reduction order) and the
    number of processes (also accepted by ``training.elastic``).
    """
    diffs = trajectory_differences(meta["config"], config)
    if meta["train_fingerprint"] != train_fingerprint:
        diffs.append((DATA_KEY, meta["train_fingerprint"], train_fingerprint))
    saved_threads = meta.get("num_threads")
    if isinstance(saved_threads, int) and saved_threads != num_threads:
        diffs.append((THREADS_KEY, saved_threads, num_threads))
    saved_world = meta.get("world_size", 1)
    if isinstance(saved_world, int) and saved_world != world_size:
        diffs.append((WORLD_KEY, saved_world, world_size))
        if config.get("training", {}).get("elastic"):
            allow = (*allow, WORLD_KEY)
    refused = [d for d in diffs if not is_allowed(d[0], allow)]
    if refused:
        listing = "; ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, a, b in refused)
        keys = " ".join(f"--allow-change {k}" for k, _, _ in refused)
        raise ResumeError(f"cannot resume: the run differs from the checkpoint ({listing}); "
                          f"restore it or accept deliberately with {keys}")
    warnings = [f"config change accepted on resume: {k}: {a!r} -> {b!r}" for k, a, b in diffs]
    if any(k == WORLD_KEY for k, _, _ in diffs):
        warnings.append("note: the number of processes changed: the run continues from the same sample with the "
                        "same global batch, but results are no longer bit-identical to an unchanged run "
                        "(the gradient sum is added in another order)")
    saved = meta.get("versions") or {}
    for lib in ("torch", "transformers"):
        if saved.get(lib) and versions.get(lib) and saved[lib] != versions[lib]:
            warnings.append(f"warning: checkpoint written with {lib} {saved[lib]}, running {versions[lib]}; "
                            "exactness is only guaranteed on the same versions")
    return [{"key": k, "old": a, "new": b} for k, a, b in diffs], warnings


def grad_accum_for(cfg: TrainingConfig, meta: dict[str, Any] | None, world_size: int,
                   log: Callable[..., None]) -> int:
    """Micro-batches per step: the config's, or after a change of world size what keeps the global batch."""
    saved_world = meta.get("world_size", 1) if meta is not None else world_size
    if saved_world == world_size:
        return cfg.grad_accum
    saved = meta["config"]["training"]
    global_batch = int(meta.get("global_batch") or saved["batch_size"] * saved["grad_accum"] * saved_world)
    per_micro = cfg.batch_size * world_size
    if global_batch % per_micro:
        raise ResumeError(
            f"cannot resume on {world_size} processes: the run's global batch of {global_batch} samples "
            f"is not a multiple of training.batch_size={cfg.batch_size} x {world_size} processes; use a "
            f"process count that divides {global_batch // math.gcd(global_batch, cfg.batch_size)} or change "
            "training.batch_size (with --allow-change training.batch_size)")
    accum = global_batch // per_micro
    log(f"world size {saved_world} -> {world_size}: gradient accumulation {accum} keeps the global "
        f"batch of {global_batch} samples")
    return accum
