"""What a cluster job needs besides Slurm itself (tests/test_slurm.py runs the real thing): the time-limit
warning handled as a stop with a save, readable progress in a log file, a restart that waits for its own
exiting predecessor instead of refusing the run, and train.sbatch's launch line for every layout."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from chefgenius.checkpoint import list_checkpoints, verify_checkpoint
from chefgenius.checkpoint.run_directory import RunDirectory, RunLockedError
from chefgenius.training.progress import BarProgress, LineProgress, make_progress
from chefgenius.training.trainer import Trainer

from .conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGUSR2])
def test_the_time_limit_warning_stops_after_the_step_with_a_checkpoint(tmp_path, signum):
    cfg = tiny_config(training={"num_epochs": 1}, checkpoint={"every_steps": 100})
    said = []
    before = signal.getsignal(signum)

    def warn_at_step_3(trainer: Trainer) -> None:
        if trainer.state.step == 3:
            os.kill(os.getpid(), signum)  # what Slurm's --signal=USR1@120 sends

    result = Trainer(cfg, tmp_path / "run", on_step=warn_at_step_3, log=lambda *a: said.append(" ".join(a))).fit()
    assert result.status == "interrupted" and result.stop_signal == signum
    ckpts = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [c.step for c in ckpts] == [result.step] and result.step >= 3
    assert verify_checkpoint(ckpts[0].path) is None
    assert any("time-limit warning" in line for line in said)
    assert signal.getsignal(signum) is before  # handlers restored after training


def test_a_warning_during_start_up_stops_after_the_first_step(tmp_path):
    from chefgenius.training.signals import listen_early

    cfg = tiny_config(training={"num_epochs": 1}, checkpoint={"every_steps": 100})
    before = [signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2)]
    listen_early()  # what `chefgenius train` does before its imports
    try:
        os.kill(os.getpid(), signal.SIGUSR1)  # the warning arrives while the model still loads
        said = []
        result = Trainer(cfg, tmp_path / "run", log=lambda *a: said.append(" ".join(a))).fit()
    finally:
        signal.signal(signal.SIGUSR1, before[0])
        signal.signal(signal.SIGUSR2, before[1])
    assert result.status == "interrupted" and result.stop_signal == signal.SIGUSR1 and result.step == 1
    assert [c.step for c in list_checkpoints(tmp_path / "run" / "checkpoints")] == [1]
    assert any("while starting: stopping after the first step" in line for line in said)


def test_train_nproc_hands_torchrun_an_agent_that_ignores_the_warning(monkeypatch):
    from chefgenius import cli

    before = [signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2)]
    seen = []
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(cli.sys, "argv", ["chefgenius", "train", "--nproc", "2", "-o", "runs/x"])
    monkeypatch.setattr(cli.os, "execv", lambda exe, argv: seen.append(
        (argv, signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGUSR2))))
    try:
        cli._launch_torchrun(2, 0)
    finally:
        signal.signal(signal.SIGUSR1, before[0])
        signal.signal(signal.SIGUSR2, before[1])
    (argv, usr1, usr2), = seen
    assert "--nproc-per-node=2" in argv and usr1 is signal.SIG_IGN and usr2 is signal.SIG_IGN


def test_progress_in_a_file_is_plain_lines_with_step_loss_speed_and_eta(monkeypatch):
    out = io.StringIO()
    clock = iter([0.0, 1.0, 1.5, 31.0, 40.0])
    monkeypatch.setattr("chefgenius.training.progress.time.perf_counter", lambda: next(clock))
    progress = make_progress(4, 0, enabled=True, every_s=30, file=out)
    assert isinstance(progress, LineProgress)
    for loss in (2.5, 2.25, 2.0, 1.75):
        progress.advance(loss, epoch=0.5, num_tokens=100)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    # One line once 30 s passed (step 3), one at the end (step 4); none in between.
    assert lines == ["step 3/4 (75%) loss 2.0000 epoch 0.50 tokens/s 10 elapsed 0:00:31 ETA 0:00:10",
                     "step 4/4 (100%) loss 1.7500 epoch 0.50 tokens/s 10 elapsed 0:00:40 ETA 0:00:00"]


def test_progress_in_a_terminal_is_a_bar_and_off_is_nothing():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    bar = make_progress(10, 2, enabled=True, every_s=30, file=Tty())
    assert isinstance(bar, BarProgress)
    bar.close()
    assert make_progress(10, 0, enabled=False, every_s=30) is None


HOLDER = """
import os, sys, time
from pathlib import Path
from chefgenius.checkpoint.run_directory import RunDirectory
with RunDirectory(sys.argv[1]).lock():
    Path(sys.argv[2]).touch()
    while not Path(sys.argv[3]).exists():
        time.sleep(0.01)
"""


def _hold_lock(run: Path, tmp_path: Path, job: str | None) -> tuple[subprocess.Popen, Path]:
    locked, release = tmp_path / "locked", tmp_path / "release"
    env = {k: v for k, v in os.environ.items() if k != "SLURM_JOB_ID"} | ({"SLURM_JOB_ID": job} if job else {})
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run), str(locked), str(release)], env=env)
    while not locked.exists():
        assert proc.poll() is None, "the lock holder died"
        time.sleep(0.01)
    return proc, release


def test_a_requeued_job_waits_for_its_previous_allocation_to_let_go(tmp_path, monkeypatch, capfd):
    run = tmp_path / "run"
    holder, release = _hold_lock(run, tmp_path, job="4242")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("RANK", raising=False)
    taken = threading.Event()

    def take() -> None:
        with RunDirectory(run).lock(wait_s=120):
            taken.set()

    thread = threading.Thread(target=take)
    thread.start()
    while "waiting up to 120s" not in capfd.readouterr().err:  # it said so, then waits for the release
        assert thread.is_alive()
        time.sleep(0.01)
    assert not taken.is_set()
    release.touch()
    holder.wait(timeout=60)
    thread.join(timeout=60)
    assert taken.is_set()


def test_another_live_run_is_refused_at_once_and_a_stuck_predecessor_after_the_bound(tmp_path, monkeypatch):
    run = tmp_path / "run"
    holder, release = _hold_lock(run, tmp_path, job="7")
    monkeypatch.delenv("RANK", raising=False)
    try:
        monkeypatch.setenv("SLURM_JOB_ID", "8")  # another job's live training
        with pytest.raises(RunLockedError, match=r"in use by another chefgenius process \(pid \d+\)"):
            with RunDirectory(run).lock(wait_s=120):
                pass
        monkeypatch.setenv("SLURM_JOB_ID", "7")  # its own earlier allocation that does not exit
        with pytest.raises(RunLockedError, match=r"still in use by pid \d+ \(an earlier allocation of Slurm job 7\) "
                                                 r"after 0s"):
            with RunDirectory(run).lock(wait_s=0.2):
                pass
    finally:
        release.touch()
        holder.wait(timeout=60)


def _launch_line(tmp_path: Path, env: dict[str, str]) -> str:
    """train.sbatch run outside Slurm with stand-ins for srun and scontrol, and `echo` as Python: the
    command each node would run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "srun").write_text('#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    (bin_dir / "scontrol").write_text('#!/bin/bash\necho node-a; echo node-b\n')
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    full_env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CHEFGENIUS_PYTHON": "echo",
                "SLURM_JOB_ID": "77", "SLURM_RESTART_COUNT": "3", "SLURM_JOB_NODELIST": "node-[a-b]", **env}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "slurm" / "train.sbatch"), "-c", "my.yaml", "-o", "runs/x"],
                          capture_output=True, text=True, env=full_env, timeout=60)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line.startswith("-m ")][0]


@pytest.mark.parametrize("nodes,gpus,want", [
    ("1", "", "-m chefgenius train -c my.yaml -o runs/x"),  # this machine: one CPU process, no torchrun
    ("1", "8", "-m torch.distributed.run --nnodes 1 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint "
               "node-a:29400 --rdzv-id 77-3 -m chefgenius train -c my.yaml -o runs/x"),
    ("4", "8", "-m torch.distributed.run --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint "
               "node-a:29400 --rdzv-id 77-3 -m chefgenius train -c my.yaml -o runs/x"),
    ("2", "", "-m torch.distributed.run --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint "
              "node-a:29400 --rdzv-id 77-3 -m chefgenius train -c my.yaml -o runs/x"),
])
def test_train_sbatch_runs_one_process_per_gpu_on_each_node(tmp_path, nodes, gpus, want):
    env = {"SLURM_NNODES": nodes} | ({"SLURM_GPUS_ON_NODE": gpus} if gpus else {"SLURM_GPUS_ON_NODE": "0"})
    assert _launch_line(tmp_path, env) == want
