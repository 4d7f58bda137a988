"""Multi-process training on torch.distributed (gloo on CPU), launched through torchrun like a user does.

Every test starts real processes with ``chefgenius train --nproc N`` and kills them with real
signals. References are module-scoped: one uninterrupted run per process count.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from chefgenius.checkpoint import list_checkpoints
from chefgenius.checkpoint.format import load_state
from chefgenius.checkpoint.manager import checkpoint_problem
from chefgenius.data.loader import sample_digest

from .conftest import assert_same_weights, final_weights, tiny_config, write_config
from .soak import held_save, slow_saves

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
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
    """SIGKILL the launcher and every worker at once, as a power loss would."""
    for pid in [proc.pid, *descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


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


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dist")


@pytest.fixture(scope="module")
def ref2(workdir) -> tuple[Path, Path]:
    """Uninterrupted 2-process run (no dropout: also the reference of the equivalence tests), saving
    synchronously; the runs under test use the returned config, which saves in the background (the
    default), so every comparison with it also checks background saves against synchronous ones."""
    train(make_config(workdir, "ref2-sync", background=False), workdir / "ref2", 2)
    return make_config(workdir, "ref2"), workdir / "ref2"


@pytest.fixture(scope="module")
def ref3(workdir) -> tuple[Path, Path]:
    """Uninterrupted 3-process run with dropout: every rank draws from its own RNG stream."""
    cfg = make_config(workdir, "ref3", dropout=0.1, batch_size=2, num_epochs=1)  # 15 steps
    train(cfg, workdir / "ref3", 3)
    return cfg, workdir / "ref3"


def test_two_processes_equal_one_process_with_twice_the_accumulation(ref2, tmp_path):
    cfg2, run2 = ref2
    one = tmp_path / "one"
    from chefgenius.config import load_config
    from chefgenius.trainer import Trainer

    Trainer(load_config(make_config(tmp_path, "one", grad_accum=2), []), one, log=lambda *a: None).fit()
    # Same samples per micro-batch, gradients summed g0 + g1 either way, loss divided by the global
    # token count: bit-identical weights and the same logged loss at every step.
    assert_same_weights(final_weights(one), final_weights(run2))
    assert step_losses(one) == step_losses(run2)
    meta = load_state(run2 / "checkpoints" / "step-0000022", "meta")
    assert meta["world_size"] == 2 and meta["global_batch"] == 8
    assert len(list((run2 / "checkpoints" / "step-0000022").glob("rank-*"))) == 2  # every rank's RNG


def test_every_sample_once_per_epoch_and_visible_in_the_checkpoint(ref2):
    _, run2 = ref2
    final = sampler_at(run2, 22)
    assert final["last_epoch"]["consumed"] == 87 and final["last_epoch"]["complete"]
    mid = sampler_at(run2, 16)  # epoch 1, 5 steps in: 40 samples
    assert (mid["epoch"], mid["position"], mid["consumed"]) == (1, 40, 40)
    from chefgenius.data.loader import ResumableSampler

    order = ResumableSampler(np.ones(87), batch_size=4, grad_accum=2, seed=7, shuffle=True).epoch_order(1)
    assert int(mid["digest"], 16) == sample_digest(order[:40])
    shown = subprocess.run([sys.executable, "-m", "chefgenius", "ckpt", "inspect", "--json",
                            str(run2 / "checkpoints" / "step-0000016")], capture_output=True, text=True)
    info = json.loads(shown.stdout)
    assert info["epoch_samples"]["consumed"] == 40 and info["epoch_samples"]["digest"] == mid["digest"]
    assert info["processes"] == {"world_size": 2, "grad_accum": 1, "global_batch": 8}


def test_killed_two_process_job_resumes_bit_exact(ref2, tmp_path):
    """Killed twice: first only the launcher's process group (its workers must follow it, or they
    would train on as orphans holding the run), then every process at once, as a power loss would."""
    cfg, ref = ref2
    run = tmp_path / "run"
    first, second = sorted(random.Random(2).sample(range(3, 20), 2))
    proc = start(cfg, run, 2)
    wait_until(lambda: logged_step(run) >= first, proc)
    workers = kill_launcher_group(proc)
    t0 = time.time()
    while not all(is_gone(p) for p in workers):
        assert time.time() - t0 < 10, "workers outlived their launcher"
        time.sleep(0.05)
    kill_then_finish(cfg, run, 2, [second])  # the same command: the run is not held by orphans, it resumes
    assert_same_run(run, ref)
    assert all(checkpoint_problem(c.path) is None for c in list_checkpoints(run / "checkpoints"))
    assert_same_checkpoints(run, ref)


def test_three_processes_with_dropout_resume_bit_exact_after_kills(ref3, tmp_path):
    """Fixed-order gradient sum: DDP's rebuilt buckets after a restart cannot change the rounding."""
    cfg, ref = ref3
    run = tmp_path / "run"
    kill_then_finish(cfg, run, 3, [10])
    assert_same_run(run, ref)


def test_a_rank_killed_while_a_checkpoint_is_written_commits_nothing_and_torchrun_restarts_it(ref2, tmp_path):
    """Rank 1 is SIGKILLed after writing its piece of step 8's save, before anyone commits: step 8 must
    not be committed; torchrun restarts the group, which resumes from step 4 and ends identical."""
    cfg, ref = ref2
    run = tmp_path / "run"
    gate = tmp_path / "gate"
    proc = start(cfg, run, 2, "--max-restarts", "1", env=held_save(8, gate))
    wait_until(lambda: (gate / "held").exists() and any(
        (p / "rank-00001").is_dir() for p in (run / "checkpoints").glob(".tmp-step-0000008-*")), proc)
    os.kill(worker_of_rank(proc.pid, 1), signal.SIGKILL)
    (gate / "release").touch()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
    assert_same_run(run, ref)
    resumes = [e for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
               if e.get("event") == "resume"]
    # Committed before: step 4, and step 5 (a new best validation loss); step 8 never was.
    assert [e["checkpoint"] for e in resumes] == ["step-0000005"]


def test_elastic_resume_keeps_the_global_batch_and_every_sample(ref2, tmp_path):
    """2 processes, killed; resumed on 1 (refused until allowed), killed; resumed on 2 to the end."""
    cfg, ref = ref2
    run = tmp_path / "run"
    done = None
    for nproc, until in ((2, 8), (1, 16), (2, None)):
        allow = ("--allow-change", "world_size") if until != 8 else ()
        if until is None:
            done = train(cfg, run, nproc, *allow)
            break
        if nproc == 1:
            refused = train(cfg, run, nproc, expect=2)
            assert "--allow-change world_size" in refused.stderr
        # Saves pause before they commit, so the kill lands before the next checkpoint exists.
        proc = start(cfg, run, nproc, *allow, env=slow_saves(0.6))
        wait_until(lambda at=until: (run / "checkpoints" / f"step-{at:07d}").is_dir(), proc)
        kill_job(proc)
    assert "world size 1 -> 2: gradient accumulation 1 keeps the global batch of 8 samples" in done.stdout
    resumed_at = [e["step"] for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                  if e.get("event") == "resume"]
    assert resumed_at == [8, 16]
    # The same samples in every later checkpoint and a complete epoch: none lost, none repeated.
    for step in (20, 22):
        mine, theirs = sampler_at(run, step), sampler_at(ref, step)
        for key in ("epoch", "position", "consumed", "digest", "last_epoch"):
            assert mine[key] == theirs[key], (step, key)
    assert sampler_at(run, 22)["last_epoch"]["complete"]
    assert load_state(run / "checkpoints" / "step-0000016", "meta")["world_size"] == 1  # written by 1 process
    # Exactness is not promised across world sizes; here the slices and their order happen to match.
    theirs = step_losses(ref)
    for step, loss in step_losses(run).items():
        assert loss == pytest.approx(theirs[step], rel=1e-5)


def test_a_world_size_that_cannot_keep_the_global_batch_is_refused(ref2):
    from chefgenius.checkpoint.manager import open_checkpoint
    from chefgenius.checkpoint.state import ResumeError
    from chefgenius.config import load_config
    from chefgenius.resume import grad_accum_for

    cfg, ref = ref2
    meta = open_checkpoint(ref / "checkpoints" / "step-0000016").meta
    training = load_config(cfg, []).training
    with pytest.raises(ResumeError, match="global batch of 8 samples is not a multiple of training.batch_size=4 x 3"):
        grad_accum_for(training, meta, 3, log=lambda *a: None)
    assert grad_accum_for(training, meta, 1, log=lambda *a: None) == 2  # 1 process x 4 x 2 keeps the batch of 8


# ----- FSDP2 (model.sharding: fsdp) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def ref_fsdp(workdir) -> tuple[Path, Path]:
    """Like ``ref2``: the reference saves synchronously, the returned config in the background."""
    train(make_config(workdir, "fsdp-sync", sharding="fsdp", background=False), workdir / "fsdp", 2)
    return make_config(workdir, "fsdp", sharding="fsdp"), workdir / "fsdp"


def test_fsdp_trains_like_ddp_and_saves_one_shard_per_rank(ref_fsdp, ref2):
    _, run = ref_fsdp
    ckpt = run / "checkpoints" / "step-0000016"
    assert not (ckpt / "model").exists()  # no full copy: each rank wrote its slice
    for r in (0, 1):
        index = load_state(ckpt / f"rank-0000{r}", "shards", with_tensors=False)["index"]
        assert index["transformer.wte.weight"]["offset"] == r * 200  # 400 rows cut in two
    assert checkpoint_problem(ckpt) is None
    # The same arithmetic as DDP except the gradient norm (summed from shards): close, not equal.
    ddp, fsdp = final_weights(ref2[1]), final_weights(run)
    for k in ddp:
        assert (ddp[k] - fsdp[k]).abs().max() < 1e-4, k
    theirs = step_losses(ref2[1])
    assert all(loss == pytest.approx(theirs[s], rel=1e-5) for s, loss in step_losses(run).items())


def test_fsdp_killed_job_resumes_bit_exact(ref_fsdp, tmp_path):
    cfg, ref = ref_fsdp
    run = tmp_path / "run"
    kill_then_finish(cfg, run, 2, [10])
    assert_same_run(run, ref)
    assert_same_checkpoints(run, ref)


def test_fsdp_checkpoint_resumes_on_another_world_size(ref_fsdp, tmp_path):
    """Shards written by 2 processes are reassembled by 1 (unsharded model): same samples, close losses."""
    import shutil

    cfg, ref = ref_fsdp
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    shutil.rmtree(run / "final")
    for c in list_checkpoints(run / "checkpoints"):
        if c.step > 16:
            shutil.rmtree(c.path)
    train(cfg, run, 1, "--allow-change", "world_size")
    for key in ("epoch", "position", "consumed", "digest", "last_epoch"):
        assert sampler_at(run, 22)[key] == sampler_at(ref, 22)[key]
    theirs = step_losses(ref)
    assert all(loss == pytest.approx(theirs[s], rel=1e-5) for s, loss in step_losses(run).items())
    mine, full = final_weights(run), final_weights(ref)
    assert all((mine[k] - full[k]).abs().max() < 1e-4 for k in full)



# ----- the launcher and its workers ---------------------------------------------------------------------


def is_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")  # a zombie has stopped; whoever adopted it reaps it


def kill_launcher_group(proc: subprocess.Popen) -> list[int]:
    """SIGKILL the launcher's process group only, as ``kill -9 -PGID``, an OOM kill of the launcher or a
    closed terminal does; torchrun's workers live in sessions of their own, outside that group."""
    workers = descendants(proc.pid)
    assert workers
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return workers


def test_a_rank_failing_at_start_ends_the_job_promptly_with_its_error(tmp_path):
    cfg = make_config(tmp_path, "cfg")
    t0 = time.time()
    done = train(cfg, tmp_path / "run", 2, expect=1, env={
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent / "hooks"), os.environ.get("PYTHONPATH", "")]),
        "CHEFGENIUS_TEST_FAIL_RANK": "1"})
    assert time.time() - t0 < 60  # rank 0 waits for rank 1 in the rendezvous; torchrun must end it
    assert "injected start-up failure of rank 1" in done.stdout + done.stderr


def test_more_processes_than_gpus_are_refused_before_any_starts(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from chefgenius import cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(os, "execv", lambda *a: pytest.fail("a process was launched"))
    cfg = make_config(tmp_path, "cfg")
    out = CliRunner().invoke(cli.app, ["train", "-c", str(cfg), "-o", str(tmp_path / "run"), "--nproc", "2",
                                       "--device", "cuda"])
    assert out.exit_code == 2
    lines = [x for x in out.output.splitlines() if x.strip()]
    assert lines == ["error: 2 processes on this machine need 2 GPUs, 1 CUDA device(s) visible; use at most 1 "
                     "processes per machine, or training.device=cpu"]
    out = CliRunner().invoke(cli.app, ["train", "-c", str(cfg), "-o", str(tmp_path / "run"), "--nproc", "2",
                                       "--device", "cuda:0"])
    assert out.exit_code == 2 and "puts all 2 processes on one GPU" in out.output
    assert not (tmp_path / "run").exists()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(cfg: Path, run: Path, tmp_path: Path) -> list[subprocess.Popen]:
    """Two torchrun agents, one process each, meeting by c10d rendezvous like two machines would; each
    "node" has a data cache of its own, the run directory is shared."""
    port, job = free_port(), f"job{random.randrange(10**6)}"
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", job,
               "-m", "chefgenius", "train", "-c", str(cfg), "-o", str(run), "--no-sample", "--no-report"]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                      start_new_session=True,
                                      env={**os.environ, "CHEFGENIUS_CACHE": str(tmp_path / f"cache-node{node}")}))
    return procs


def test_two_nodes_rehearsed_on_one_machine_resume_like_one_node(ref2, tmp_path):
    cfg, ref = ref2
    run = tmp_path / "run"
    nodes = two_nodes(cfg, run, tmp_path)
    wait_until(lambda: logged_step(run) >= 9, nodes[0])
    workers = [w for proc in nodes for w in kill_launcher_group(proc)]
    t0 = time.time()
    while not all(is_gone(p) for p in workers):
        assert time.time() - t0 < 10, "workers outlived their launcher"
        time.sleep(0.05)
    nodes = two_nodes(cfg, run, tmp_path)
    for proc in nodes:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    for node in (0, 1):  # each node prepared the data in its own cache (and both agreed on it)
        assert any((tmp_path / f"cache-node{node}" / "prepared" / "index").iterdir())
    assert_same_run(run, ref)
