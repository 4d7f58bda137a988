"""Multi-process DDP training on torch.distributed (gloo on CPU), launched through torchrun like a user does.

Every test starts real processes with ``chefgenius train --nproc N`` and kills them with real
signals; the reference is module-scoped: one uninterrupted 2-process run. What each rank holds alone
(dropout streams, FSDP shards, a rank's failure) is tested in test_distributed_ranks.py.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from chefgenius.checkpoint import list_checkpoints
from chefgenius.checkpoint.format import load_state
from chefgenius.checkpoint.reading import checkpoint_problem
from chefgenius.data.loader import sample_digest

from .conftest import assert_same_weights, final_weights
from .launch import (
    assert_same_checkpoints,
    assert_same_run,
    command,
    kill_job,
    kill_launcher_group,
    logged_step,
    make_config,
    needs_gloo,
    sampler_at,
    start,
    step_losses,
    train,
    wait_until,
    wait_until_gone,
    worker_of_rank,
)
from .soak import held_save, slow_saves

pytestmark = needs_gloo


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


def test_two_processes_equal_one_process_with_twice_the_accumulation(ref2, tmp_path):
    cfg2, run2 = ref2
    one = tmp_path / "one"
    from chefgenius.config import load_config
    from chefgenius.training.trainer import Trainer

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
    """Only the launcher's process group is killed: its workers must follow it, or they would train on
    as orphans holding the run. (Every process at once, as a power loss would: the 3-process and FSDP
    tests.)"""
    cfg, ref = ref2
    run = tmp_path / "run"
    first = random.Random(2).randint(3, 19)
    proc = start(cfg, run, 2)
    wait_until(lambda: logged_step(run) >= first, proc)
    workers = kill_launcher_group(proc)
    wait_until_gone(workers, within=10, why="workers outlived their launcher")
    train(cfg, run, 2)  # the same command: the run is not held by orphans, it resumes
    assert_same_run(run, ref)
    assert all(checkpoint_problem(c.path) is None for c in list_checkpoints(run / "checkpoints"))
    assert_same_checkpoints(run, ref)


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
        if nproc == 1:  # in this process: a refusal needs no interpreter of its own
            from typer.testing import CliRunner

            from chefgenius import cli

            refused = CliRunner().invoke(cli.app, command(cfg, run, nproc)[3:])
            assert refused.exit_code == 2 and "--allow-change world_size" in refused.stderr, refused.output
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
    from chefgenius.checkpoint.reading import open_checkpoint
    from chefgenius.checkpoint.state import ResumeError
    from chefgenius.config import load_config
    from chefgenius.training.resume import grad_accum_for

    cfg, ref = ref2
    meta = open_checkpoint(ref / "checkpoints" / "step-0000016").meta
    training = load_config(cfg, []).training
    with pytest.raises(ResumeError, match="global batch of 8 samples is not a multiple of training.batch_size=4 x 3"):
        grad_accum_for(training, meta, 3, log=lambda *a: None)
    assert grad_accum_for(training, meta, 1, log=lambda *a: None) == 2  # 1 process x 4 x 2 keeps the batch of 8


# ----- the launcher and its workers ---------------------------------------------------------------------


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


def test_the_launcher_hands_over_to_torchrun_without_importing_torch(tmp_path):
    """Each worker imports torch and transformers anyway; a launcher that did too (it once imported them
    to name the errors it catches) added about 8 s to every ``--nproc`` start."""
    cfg = make_config(tmp_path, "cfg", device="cpu")
    probe = ("import os, sys\n"
             "def execv(path, argv):\n"
             "    print(sorted(m for m in ('torch', 'transformers') if m in sys.modules), argv[1:4])\n"
             "    sys.exit(0)\n"
             "os.execv = execv\n"
             f"sys.argv = ['chefgenius', 'train', '-c', {str(cfg)!r}, '-o', {str(tmp_path / 'run')!r}, "
             "'--nproc', '2']\n"
             "from chefgenius.cli import main\n"
             "main()\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[] ['-m', 'torch.distributed.run', '--standalone']"


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
    wait_until_gone(workers, within=10, why="workers outlived their launcher")
    nodes = two_nodes(cfg, run, tmp_path)
    for proc in nodes:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    for node in (0, 1):  # each node prepared the data in its own cache (and both agreed on it)
        assert any((tmp_path / f"cache-node{node}" / "prepared" / "index").iterdir())
    assert_same_run(run, ref)
