"""Wrapping a built model for training: DDP or FSDP2 across processes, torch.compile, and undoing it.

The plain model stays reachable (``Parallel.model``): it is what checkpoints save and samples use.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from chefgenius.config import Config
from chefgenius.runtime import distributed
from chefgenius.runtime.devices import is_strict
from chefgenius.runtime.sharding import shard_model


@dataclass
class Parallel:
    model: torch.nn.Module  # the plain model: saved, generates samples
    train_model: torch.nn.Module  # what the step runs (DDP / compiled wrappers)
    eval_model: torch.nn.Module  # what validation runs
    ddp: torch.nn.parallel.DistributedDataParallel | None = None
    sharded: bool = False

    def gradient_sync(self, is_last: bool) -> AbstractContextManager:
        """Exchange gradients only on the step's last micro-batch (``no_sync`` on the others)."""
        if self.sharded:
            self.model.set_requires_gradient_sync(is_last)
        return nullcontext() if self.ddp is None or is_last else self.ddp.no_sync()

    def release(self) -> None:
        """Drop the DDP wrapper (it holds the process group) once every rank is done with it."""
        if self.ddp is not None:
            distributed.barrier()
            self.train_model = self.eval_model = self.model
            self.ddp = None


def parallelize(model: torch.nn.Module, cfg: Config, device: torch.device, world_size: int) -> Parallel:
    """Shard (FSDP2) or replicate (DDP) over the processes, then compile if asked."""
    tc = cfg.training
    p = Parallel(model, model, model, sharded=world_size > 1 and cfg.model.sharding == "fsdp")
    if p.sharded:
        shard_model(model)
    elif world_size > 1:
        # DDP broadcasts rank 0's parameters here, so every rank starts from the same weights.
        p.ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False)
        ordered = tc.reduction == "ordered" or (tc.reduction == "auto" and (
            device.type == "cpu" or is_strict(tc, device)))
        p.ddp.register_comm_hook(None, distributed.ordered_sum_hook if ordered else distributed.sum_hook)
        p.train_model = p.ddp
    if cfg.model.compile:
        p.train_model = torch.compile(p.train_model)
        p.eval_model = p.train_model if p.ddp is None else model
    return p


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The underlying HF model, through torch.compile, DistributedDataParallel and LoRA wrappers."""
    from torch.nn.parallel import DistributedDataParallel

    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            break
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model
