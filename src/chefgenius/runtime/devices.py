"""Process set-up that decides floating-point results: device, threads, determinism, seeds."""

from __future__ import annotations

import os
import random
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch

from chefgenius.config import ConfigError, TrainingConfig
from chefgenius.runtime import distributed
from chefgenius.runtime.distributed import check_local_devices


def resolve_device(name: str) -> torch.device:
    """The device ``name`` (auto, cpu, cuda, cuda:N) stands for here; one-line error where it is not."""
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


def rank_device(name: str, world_size: int, local_rank: int, local_world_size: int) -> torch.device:
    """The device this process trains on: with several processes, ``cuda`` (or ``auto`` on a GPU
    machine) means ``cuda:LOCAL_RANK``, one GPU per process on each machine.

    The layout is checked against what the user configured, before the index is added: ``cuda:K``
    pinned for several local processes is refused, and so are more local processes than GPUs.
    """
    device = resolve_device(name)
    if world_size <= 1:
        return device
    check_local_devices(device, local_world_size)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def setup_runtime(cfg: TrainingConfig, rank: int, world_size: int) -> torch.device:
    """The device, the process group (torchrun), threads and determinism, and seeds (``seed + rank``)."""
    device = rank_device(cfg.device, world_size, distributed.local_rank(), distributed.local_world_size())
    distributed.init(device, cfg.dist_timeout_s)
    apply_runtime(cfg, device)
    seed_everything(cfg.seed + rank)
    return device


def autocast_for(device: torch.device, precision: str) -> AbstractContextManager:
    """A fresh autocast context for mixed precision (bf16 / fp16); a no-op for fp32 and bf16-pure."""
    if precision in ("bf16", "fp16"):
        return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return nullcontext()


def forked_rng(device: torch.device) -> AbstractContextManager:
    """The global RNGs forked for drawing outside training (sampling a recipe): the CPU generator and,
    on a GPU, that device's only (forking every visible GPU would initialise them all)."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
