"""Kill-and-resume driver: SIGKILL a real ``chefgenius train`` at chosen moments, re-run, repeat.

Used by the fault-injection tests and by ``tests/soak_resume.py``. :func:`slow_saves` makes the
launched processes hold every checkpoint save open (tests/hooks/sitecustomize.py), so that kills
land while a save is in flight.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from chefgenius.checkpoint.run_directory import RunDirectory
from chefgenius.durable.directory import TMP_PREFIX


@dataclass
class SoakResult:
    kills: int = 0
    kills_during_save: int = 0
    resumes: int = 0
    exit_code: int | None = None
    log: list[str] = field(default_factory=list)


HOOKS = Path(__file__).resolve().parent / "hooks"


def slow_saves(seconds: float, env: dict[str, str] | None = None) -> dict[str, str]:
    """An environment whose chefgenius processes hold each checkpoint save open for ``seconds``."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HOOKS), env.get("PYTHONPATH", "")) if p)
    if seconds:
        env["CHEFGENIUS_TEST_SAVE_PAUSE_S"] = str(seconds)
    return env


def held_save(step: int, gate: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """An environment whose chefgenius processes hold the save of ``step`` open until ``gate/release``
    exists; ``gate/held`` appears when that save is written."""
    env = slow_saves(0, env)
    gate.mkdir(parents=True, exist_ok=True)
    env["CHEFGENIUS_TEST_HOLD_SAVE"] = f"{step}:{gate}"
    return env


def train_command(config: Path, run_dir: Path, extra: list[str] | None = None) -> list[str]:
    return [sys.executable, "-m", "chefgenius.cli", "train", "--config", str(config), "--output-dir", str(run_dir),
            "--no-sample", "--no-report", *(extra or [])]


def last_logged_step(run_dir: Path) -> int:
    path = RunDirectory(run_dir).metrics
    if not path.exists():
        return 0
    step = 0
    for line in path.read_text().splitlines():
        try:
            step = max(step, int(json.loads(line).get("step", 0)))
        except (json.JSONDecodeError, ValueError, TypeError):
            continue
    return step


def _saving(run_dir: Path) -> bool:
    root = RunDirectory(run_dir).checkpoints
    try:
        return any(e.name.startswith(f"{TMP_PREFIX}step") for e in os.scandir(root))
    except FileNotFoundError:
        return False


def kill_and_resume(config: Path, run_dir: Path, *, num_kills: int, seed: int = 0, during_save_every: int = 3,
                    timeout_s: float = 600.0, env: dict[str, str] | None = None) -> SoakResult:
    """Run training to completion, SIGKILLing it ``num_kills`` times.

    Each kill waits for the run to make progress (1-3 new logged steps past where it resumed);
    every ``during_save_every``-th kill instead waits for a checkpoint's temporary directory to
    appear and kills while it is being written.
    """
    rng = random.Random(seed)
    result = SoakResult()
    deadline = time.monotonic() + timeout_s
    cmd = train_command(config, run_dir)
    while True:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        if result.kills >= num_kills:
            _, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            result.exit_code = proc.returncode
            result.log.append(err.decode(errors="replace")[-2000:])
            return result
        start_step = last_logged_step(run_dir)
        want_save = during_save_every and (result.kills + 1) % during_save_every == 0
        target = start_step + rng.randint(1, 3)
        killed_in_save = False
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                raise TimeoutError("soak run exceeded its time limit")
            if want_save:
                if _saving(run_dir):
                    killed_in_save = True
                    break
            elif last_logged_step(run_dir) >= target:
                time.sleep(rng.random() * 0.05)  # land anywhere inside a step, not only at its end
                break
            time.sleep(0.002)
        if proc.poll() is not None:  # finished before we could kill it
            result.exit_code = proc.returncode
            _, err = proc.communicate()
            result.log.append(err.decode(errors="replace")[-2000:])
            return result
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        result.kills += 1
        result.kills_during_save += int(killed_in_save)
        result.resumes += 1
