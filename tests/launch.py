"""Launching, killing and comparing ``chefgenius train --nproc N`` jobs: the distributed tests' helpers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from chefgenius.checkpoint import list_checkpoints
from chefgenius.checkpoint.format import load_state
from chefgenius.checkpoint.reading import checkpoint_problem

from .conftest import assert_same_weights, final_weights, tiny_config, write_config

needs_gloo = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="this torch build has no gloo backend")

# Global batch 8 (batch 4 x 2 processes, or 4 x accumulation 2 in one): 87 training recipes make
# 11 steps per epoch, the last one of 7 samples; 22 steps in all.
TRAINING = {"batch_size": 4, "grad_accum": 1, "num_epochs": 2}


def make_config(tmp_path: Path, name: str, *, dropout: float = 0.0, sharding: str = "ddp", background: bool = True,
                **training) -> Path:
    cfg = tiny_config(model={"dropout": dropout, "sharding": sharding}, training={**TRAINING, **training},
                      checkpoint={"every_steps": 4, "keep_last": 5, "async": background})
    return write_config(cfg, tmp_path / f"{name}.yaml")


def command(cfg: Path, run_dir: Path, nproc: int, *extra: str) -> list[str]:
    launch = ["--nproc", str(nproc)] if nproc > 1 else []
    return [sys.executable, "-m", "chefgenius", "train", "-c", str(cfg), "-o", str(run_dir), "--no-sample",
            "--no-report", *launch, *extra]


def train(cfg: Path, run_dir: Path, nproc: int, *extra: str, expect: int = 0, env: dict | None = None
          ) -> subprocess.CompletedProcess:
    done = subprocess.run(command(cfg, run_dir, nproc, *extra), capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})
    if done.returncode != expect:  # the workers' tracebacks come before torchrun's summary: show both
        Path("/tmp/chefgenius-last-failed-job.log").write_text(done.stdout + done.stderr)
    assert done.returncode == expect, done.stdout[-3000:] + done.stderr[-8000:]
    return done


def start(cfg: Path, run_dir: Path, nproc: int, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(command(cfg, run_dir, nproc, *extra), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, **(env or {})})


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        out += [int(c) for c in children]
        todo += [int(c) for c in children]
    return out


def worker_of_rank(agent: int, rank: int) -> int:
    for pid in descendants(agent):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"LOCAL_WORLD_SIZE" in b"".join(env):
            return pid
    raise AssertionError(f"no worker of rank {rank} under {agent}")


def kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every worker at once, as a power loss would; returns once all are gone
    (a worker adopted by init may take a moment to die after its launcher is reaped)."""
    pids = [proc.pid, *descendants(proc.pid)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)
    wait_until_gone(pids, within=30, why="killed workers did not die")


def logged_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    steps = [json.loads(line).get("step", 0) for line in path.read_text().splitlines() if line.strip()] \
        if path.is_file() else []
    return max(steps, default=0)


def wait_until(predicate, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.time()
    while not predicate():
        assert proc.poll() is None, f"the job ended early: {proc.stderr.read()[-3000:]}"
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.02)


def step_losses(run_dir: Path) -> dict[int, float]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {e["step"]: e["loss"] for e in lines if "loss" in e}


def sampler_at(run_dir: Path, step: int) -> dict:
    return load_state(run_dir / "checkpoints" / f"step-{step:07d}", "sampler")


def kill_then_finish(cfg: Path, run: Path, nproc: int, kill_after: list[int]) -> None:
    """SIGKILL the whole job once it has logged each step of ``kill_after``, then run it to the end."""
    for stop_at in kill_after:
        proc = start(cfg, run, nproc)
        wait_until(lambda at=stop_at: logged_step(run) >= at, proc)
        kill_job(proc)
    train(cfg, run, nproc)


def assert_same_run(run: Path, ref: Path) -> None:
    assert_same_weights(final_weights(run), final_weights(ref))
    assert step_losses(run) == step_losses(ref)


def assert_same_checkpoints(run: Path, ref: Path) -> None:
    """Checkpoints of the same steps hold the same bytes (every rank's RNG, FSDP shards), whether
    written in the background by a killed and resumed job or synchronously by an uninterrupted one;
    only creation times and the resume history differ."""
    steps = {c.step for c in list_checkpoints(run / "checkpoints")}
    steps &= {c.step for c in list_checkpoints(ref / "checkpoints")}
    assert len(steps) >= 3, steps
    for step in sorted(steps):
        a, b = (r / "checkpoints" / f"step-{step:07d}" for r in (run, ref))
        assert checkpoint_problem(a) is None
        files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
        assert "rank-00001/rng.json" in files
        for name in set(files) - {"meta.json", "MANIFEST.json", "train_state.json"}:
            assert (a / name).read_bytes() == (b / name).read_bytes(), f"step {step}: {name} differs"
        mine, theirs = (load_state(c, "train_state") for c in (a, b))
        assert {**mine, "resumes": []} == {**theirs, "resumes": []}


def is_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")  # a zombie has stopped; whoever adopted it reaps it


def wait_until_gone(pids: list[int], *, within: float, why: str) -> None:
    deadline = time.time() + within
    while not all(is_gone(p) for p in pids):
        assert time.time() < deadline, why
        time.sleep(0.01)


def kill_launcher_group(proc: subprocess.Popen) -> list[int]:
    """SIGKILL the launcher's process group only, as ``kill -9 -PGID``, an OOM kill of the launcher or a
    closed terminal does; torchrun's workers live in sessions of their own, outside that group."""
    workers = descendants(proc.pid)
    assert workers
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return workers
