"""Shared fixtures: a tiny, fast config and helpers that train and compare runs exactly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from chefgenius.config import Config, build_config

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    os.environ["CHEFGENIUS_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    torch.set_num_threads(1)  # same thread count in-process and in CLI subprocesses: exactness needs it
    yield


# The files that start many processes, longest first. With --dist loadfile --no-loadscope-reorder the
# workers take files in collection order, so the longest do not start last and both workers end
# together (longest-first scheduling); the rest keep pytest's order.
_LONGEST_FIRST = ("test_slurm.py", "test_distributed.py", "test_distributed_ranks.py", "test_model.py",
                  "test_kill.py", "test_prepared.py", "test_async_save.py", "test_hostile.py", "test_resume.py")


# Files whose tests start real processes (training CLIs, torchrun, kills, Slurm jobs, a browser, the
# benchmark's peers) or train many full runs in-process (resume, model variants): marked ``slow``, so
# that ``pytest -m "not slow"`` is the inner loop's fast subset (under a minute on 2 cores).
_SLOW_FILES = frozenset({"test_slurm.py", "test_distributed.py", "test_distributed_ranks.py", "test_kill.py",
                         "test_async_save.py", "test_hostile.py", "test_prepared.py", "test_bench_count.py",
                         "test_gpu_check.py", "test_serve.py", "test_model.py", "test_resume.py"})


def pytest_collection_modifyitems(items) -> None:
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
    for item in items:
        if item.path.name in _SLOW_FILES:
            item.add_marker(pytest.mark.slow)


def tiny_config(**sections) -> Config:
    """A run of a dozen steps on the bundled corpus with every feature that touches exactness on."""
    raw = {
        "data": {"max_prompt_tokens": 24, "max_target_tokens": 96, "val_fraction": 0.15},
        "model": {"from_scratch": "gpt2", "preset": "micro", "vocab_size": 400, "dropout": 0.1},
        "training": {"seed": 7, "num_epochs": 2, "batch_size": 4, "grad_accum": 3, "learning_rate": 3e-3,
                     "warmup_steps": 3, "schedule": "cosine", "max_grad_norm": 0.5, "num_threads": 1,
                     "group_by_length": False},
        "evaluation": {"every_steps": 5, "at_epoch_end": True, "max_batches": 2, "prompts": [],
                       "early_stopping_patience": None},
        "checkpoint": {"every_steps": 4, "keep_last": 2, "keep_best": 1},
        "logging": {"every_steps": 1, "progress_bar": False},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return build_config(raw)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    model_dir = run_dir / "final"
    files = sorted(model_dir.glob("*.safetensors"))
    assert files, f"no safetensors in {model_dir}"
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"tensor {k} differs"


def quiet(*args, **kwargs) -> None:
    pass


@pytest.fixture
def small_fs(tmp_path):
    """Mount a real tmpfs of a given size (needs root); skips with the reason where that is impossible."""
    import subprocess

    mounts: list[Path] = []

    def make(size: str, name: str = "fs") -> Path:
        if os.geteuid() != 0:
            pytest.skip("a real small filesystem needs root to mount a tmpfs")
        point = tmp_path / name
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounts.append(point)
        return point

    yield make
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def resize_fs(point: Path, size: str) -> None:
    import subprocess

    subprocess.run(["mount", "-o", f"remount,size={size}", str(point)], check=True)


def write_config(cfg: Config, path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path
