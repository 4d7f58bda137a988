"""Real processes, real SIGKILLs: `chefgenius train` killed and re-run ends bit-identical."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import yaml

from chefgenius.checkpoint import list_checkpoints, verify_checkpoint
from chefgenius.training.trainer import Trainer

from .conftest import assert_same_weights, final_weights, quiet, tiny_config
from .soak import kill_and_resume, last_logged_step, slow_saves, train_command


def _write_config(cfg, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


def _reference(cfg, run_dir: Path) -> None:
    assert Trainer(cfg, run_dir, log=quiet).fit().status == "completed"


def test_random_kills_mid_step_and_during_a_checkpoint_write(tmp_path):
    cfg = tiny_config(training={"num_epochs": 3}, checkpoint={"every_steps": 2, "keep_last": 2},
                      evaluation={"every_steps": 6, "at_epoch_end": False})
    _reference(cfg, tmp_path / "ref")
    # The pause hook holds every save open for 0.3 s, so the kill meant for a save lands in one; the
    # other two land anywhere inside a step.
    env = slow_saves(0.3)
    result = kill_and_resume(_write_config(cfg, tmp_path / "c.yaml"), tmp_path / "run", num_kills=3, seed=2,
                             during_save_every=2, env=env)
    assert result.kills == 3 and result.exit_code == 0, result.log
    assert result.kills_during_save == 1  # tests/soak_resume.py runs the long version (100 kills)
    assert_same_weights(final_weights(tmp_path / "ref"), final_weights(tmp_path / "run"))
    ckpts = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert ckpts and all(verify_checkpoint(c.path) is None for c in ckpts)
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    # The log reads like one run: each step's loss once, equal to the uninterrupted run's.
    from .test_resume import train_losses

    assert train_losses(tmp_path / "run") == train_losses(tmp_path / "ref")


def _start_and_wait_for_step(config: Path, run: Path, step: int, env: dict | None = None) -> subprocess.Popen:
    proc = subprocess.Popen(train_command(config, run), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while last_logged_step(run) < step and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "training ended before it could be signalled"
    return proc


def test_sigterm_finishes_the_step_saves_and_resumes_exactly(tmp_path):
    cfg = tiny_config(training={"num_epochs": 1}, checkpoint={"every_steps": 100})
    _reference(cfg, tmp_path / "ref")
    config = _write_config(cfg, tmp_path / "c.yaml")
    run = tmp_path / "run"
    proc = _start_and_wait_for_step(config, run, 3)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out.decode()
    stopped = re.search(rb"stopped at step (\d+); checkpoint saved", out)
    assert stopped, out.decode()
    ckpts = list_checkpoints(run / "checkpoints")
    assert ckpts[-1].step == int(stopped.group(1)) >= 3 and verify_checkpoint(ckpts[-1].path) is None
    assert not (run / "final").exists()
    done = subprocess.run(train_command(config, run), capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    assert_same_weights(final_weights(tmp_path / "ref"), final_weights(run))


def test_second_ctrl_c_aborts_without_leaving_a_broken_checkpoint(tmp_path):
    cfg = tiny_config(training={"num_epochs": 2}, checkpoint={"every_steps": 2})
    config = _write_config(cfg, tmp_path / "c.yaml")
    run = tmp_path / "run"
    # Saves are held open for 2 s, so the second Ctrl-C lands while the stop's own save is under way.
    proc = _start_and_wait_for_step(config, run, 3, env=slow_saves(2))
    proc.send_signal(signal.SIGINT)
    seen = b""
    for line in iter(proc.stdout.readline, b""):  # the handler has run: a second signal is now a second one
        seen += line
        if b"received SIGINT" in line:
            break
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    out = seen + rest
    assert proc.returncode == 130, out.decode()
    assert b"aborted" in out and b"checkpoint saved" not in out
    assert not (run / "final").exists()
    root = run / "checkpoints"
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp")]
    assert all(verify_checkpoint(c.path) is None for c in list_checkpoints(root))
