"""AdamW with decay only on weight matrices, and warmup + linear / cosine / constant schedules."""

from __future__ import annotations

import math
from functools import partial

import torch

from chefgenius.config import TrainingConfig


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Biases, norms and other 1-d parameters get no weight decay. Order follows named_parameters."""
    decay, no_decay, decay_names, no_decay_names = [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "norm" in name.lower() or name.endswith(".bias"):
            no_decay.append(p)
            no_decay_names.append(name)
        else:
            decay.append(p)
            decay_names.append(name)
    return [
        {"params": decay, "weight_decay": weight_decay, "param_names": decay_names},
        {"params": no_decay, "weight_decay": 0.0, "param_names": no_decay_names},
    ]


def build_optimizer(model: torch.nn.Module, cfg: TrainingConfig, device: torch.device) -> torch.optim.AdamW:
    groups = param_groups(model, cfg.weight_decay)
    # Fused AdamW is one kernel per step on CUDA and on CPU (torch >= 2.4). Measured on CPU with 26M
    # parameters, one thread: 32 ms per step against 145 ms for foreach and 108 ms for the for-loop
    # (bench/optimizer_step.py). A checkpoint keeps the implementation it was written with: the
    # optimizer's param_groups (with their fused / foreach flags) are restored on resume.
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps,
                             fused=fused or None, foreach=None if fused else True)


def lr_factor(step: int, *, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """LR multiplier at optimizer step ``step`` (0-based)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    if schedule == "linear":
        shape = 1.0 - progress
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * shape


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainingConfig, total_steps: int
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    fn = partial(lr_factor, warmup=cfg.warmup_steps, total=total_steps, schedule=cfg.schedule,
                 min_ratio=cfg.min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


def build_optimization(model: torch.nn.Module, cfg: TrainingConfig, device: torch.device, total_steps: int
                       ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR, torch.amp.GradScaler | None]:
    """Optimizer, learning-rate schedule and (fp16 only) gradient scaler."""
    optimizer = build_optimizer(model, cfg, device)
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
    return optimizer, build_scheduler(optimizer, cfg, total_steps), scaler
