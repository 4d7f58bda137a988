"""FSDP2 (``fully_shard``) for models that do not fit one device, and their sharded training state.

Each rank saves its own shard of every parameter and of its AdamW moments (as safetensors, with a
JSON index: global shape, offset along dim 0; files named by checkpoint/shards.py) — not
torch.distributed.checkpoint's format, whose metadata file is a pickle. Loading assembles full
tensors from every rank's shards and takes this rank's slice, so a checkpoint loads on any number
of processes, or into an unsharded model.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from chefgenius.errors import ResumeError


def shard_model(model: torch.nn.Module) -> torch.nn.Module:
    """fully_shard every transformer block (the model's ``_no_split_modules``) and then the root.

    Gradients are summed over ranks (divide factor 1): the trainer divides the loss by the global
    token count, exactly as with DDP.
    """
    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule, fully_shard

    # Every rank initialised its own weights (seed + rank): take rank 0's, as DDP does, before cutting.
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, 0)
    blocks = set(getattr(model, "_no_split_modules", None) or [])
    for module in list(model.modules()):
        if type(module).__name__ in blocks:
            fully_shard(module)
    fully_shard(model)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # plain SUM: gloo has no PREMUL_SUM
    return model


def reshard(model: torch.nn.Module) -> None:
    """Back to sharded parameters (after a forward without backward, e.g. evaluation, some stay gathered)."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter gathered whole (a collective: every rank calls it)."""
    reshard(model)
    return {n: p.full_tensor() for n, p in model.named_parameters()}


def _local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return (t.to_local() if isinstance(t, DTensor) else t).detach().contiguous()


def _offset(global_rows: int, rank: int, world: int) -> int:
    # fully_shard cuts dim 0 like torch.chunk: ceil(rows / world) per rank, the last ones shorter.
    return min(rank * math.ceil(global_rows / world), global_rows)


def shard_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, rank: int, world: int) -> dict[str, Any]:
    """This rank's slices of the model and of its optimizer state, plus the index to reassemble them
    (the tensors are the live local shards: copy them before training goes on)."""
    from torch.distributed.tensor import DTensor

    reshard(model)
    tensors: dict[str, Any] = {}
    moments: dict[str, Any] = {}
    steps: dict[str, float] = {}
    index: dict[str, dict[str, Any]] = {}
    state = optimizer.state
    for name, p in model.named_parameters():
        assert isinstance(p, DTensor), f"{name} is not sharded"
        local = _local(p)
        shape = list(p.shape)
        offset = _offset(shape[0], rank, world) if p.ndim else 0
        index[name] = {"shape": shape, "offset": offset, "rows": int(local.shape[0]) if local.ndim else 0}
        tensors[name] = local
        for key, value in state.get(p, {}).items():
            if key == "step":
                steps[name] = float(value)
            elif isinstance(value, torch.Tensor):
                moments[f"{name}::{key}"] = _local(value)
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.state_dict()["param_groups"]]
    return {"world_size": world, "index": index, "model": tensors, "moments": moments, "steps": steps,
            "param_groups": groups}


def _assemble(parts: list[dict[str, Any]], name: str
              ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, float], list]:
    """Full tensors from every rank's shards (model, optimizer moments), per-parameter steps, groups."""
    if not parts or len(parts) != parts[0].get("world_size"):
        raise ResumeError(f"cannot resume: {name} holds {len(parts)} of "
                          f"{parts[0].get('world_size') if parts else '?'} model shards (damaged or incomplete)")
    full: dict[str, torch.Tensor] = {}
    moments: dict[str, torch.Tensor] = {}
    def place(into: dict[str, torch.Tensor], key: str, value: torch.Tensor, info: dict[str, Any]) -> None:
        if not value.ndim:  # a 0-d tensor is not cut: every rank holds all of it
            into[key] = value
        else:
            whole = into.setdefault(key, torch.empty(info["shape"], dtype=value.dtype))
            whole[info["offset"]:info["offset"] + info["rows"]] = value

    for part in parts:
        for name, info in part["index"].items():
            place(full, name, part["model"][name], info)
        for key, value in part["moments"].items():  # keys are "param::moment"
            place(moments, key, value, part["index"][key.partition("::")[0]])
    return full, moments, parts[0]["steps"], parts[0]["param_groups"]


def load_shards(parts: list[dict[str, Any]], name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                rank: int, world: int) -> None:
    """Fill this rank's slices (or the whole unsharded model) from the shards of a checkpoint (``name``)
    saved by any number of processes."""
    from torch.distributed.tensor import DTensor

    full, moments, steps, groups = _assemble(parts, name)
    params = dict(model.named_parameters())
    if set(full) != set(params):
        missing, extra = sorted(set(params) - set(full)), sorted(set(full) - set(params))
        raise ResumeError(f"cannot resume: sharded model state does not match the model (missing {missing[:3]}, "
                          f"unexpected {extra[:3]})")

    def mine(name: str, value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if value.shape != like.shape:
            raise ResumeError(f"cannot resume: {name} has shape {tuple(value.shape)} in the checkpoint, "
                              f"{tuple(like.shape)} in the model")
        if isinstance(like, DTensor):
            local = like.to_local()
            start = _offset(value.shape[0], rank, world)
            piece = value[start:start + local.shape[0]].to(local.device, local.dtype)
            return DTensor.from_local(piece, like.device_mesh, like.placements, shape=like.shape, stride=like.stride())
        return value.to(like.device, like.dtype)

    with torch.no_grad():
        for name, p in params.items():
            value = mine(name, full[name], p)
            (p.to_local() if isinstance(p, DTensor) else p).copy_(value.to_local() if isinstance(value, DTensor)
                                                                   else value)
    if len(groups) != len(optimizer.param_groups):
        raise ResumeError(f"cannot resume: sharded optimizer state has {len(groups)} groups, the model "
                          f"{len(optimizer.param_groups)}")
    for saved, live in zip(groups, optimizer.param_groups):
        if saved.get("param_names") != live.get("param_names"):
            raise ResumeError("cannot resume: sharded optimizer groups name other parameters than the model's")
        live.update({k: v for k, v in saved.items() if k != "param_names"})
    for name, p in params.items():
        if name not in steps:
            continue
        entry: dict[str, Any] = {"step": torch.tensor(steps[name], dtype=torch.float32)}
        for key in ("exp_avg", "exp_avg_sq"):
            if f"{name}::{key}" in moments:
                entry[key] = mine(name, moments[f"{name}::{key}"], p)
        optimizer.state[p] = entry
