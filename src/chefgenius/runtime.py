"""Process set-up that decides floating-point results: device, threads, determinism, seeds."""

from __future__ import annotations

import os
import random
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch

from .config import ConfigError, TrainingConfig


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"training.device={name} but no CUDA device is visible (use --device cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"training.device={name} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return dev


def is_strict(cfg: TrainingConfig, device: torch.device) -> bool:
    """Deterministic algorithms: asked for, or by default (``auto``) on CUDA, where kernels such as
    atomics-based backward passes otherwise vary from run to run."""
    return cfg.determinism == "strict" or (cfg.determinism == "auto" and device.type == "cuda")


def resume_guarantee(cfg: TrainingConfig, compile_model: bool, device: torch.device) -> str:
    """One line saying what a resumed run of this configuration matches, said at start."""
    if device.type == "cpu":
        return "exact resume: bit-identical to an uninterrupted run (CPU, same threads and versions)"
    if not is_strict(cfg, device):
        return ("exact resume: NOT guaranteed: equal up to rounding (training.determinism=default on "
                f"{device.type}); set training.determinism=strict for bit-identical resume")
    if compile_model:
        return ("exact resume: deterministic kernels, but torch.compile on CUDA is not verified bit-identical "
                "after a resume (Inductor compiles again); expect equality up to rounding")
    return f"exact resume: bit-identical to an uninterrupted run ({device.type}, deterministic algorithms)"


def apply_runtime(cfg: TrainingConfig, device: torch.device) -> None:
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if is_strict(cfg, device):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup_runtime(cfg: TrainingConfig, rank: int, world_size: int) -> torch.device:
    """The device, the process group (torchrun), threads and determinism, and seeds (``seed + rank``)."""
    from . import distributed

    device = resolve_device(cfg.device)
    if world_size > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", distributed.local_rank())
    distributed.init(device, cfg.dist_timeout_s)
    apply_runtime(cfg, device)
    seed_everything(cfg.seed + rank)
    return device


def autocast_for(device: torch.device, precision: str) -> AbstractContextManager:
    """A fresh autocast context for mixed precision (bf16 / fp16); a no-op for fp32 and bf16-pure."""
    if precision in ("bf16", "fp16"):
        return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return nullcontext()
