"""chefgenius under a real one-node Slurm (scripts/slurm/ci_cluster.sh): the main job submitted with
scripts/slurm/train.sbatch is requeued mid-run, warned of its time limit, and still ends bit-identical
to an uninterrupted run; a job whose time limit is shorter than its training finishes over several
allocations with nobody resubmitting it.

Slurm holds a requeued job for about 2 minutes (its BeginTime) before it may start again; the tests
set ``StartTime=now+3`` on a job pending for that reason, which only skips that wait (a real cluster's
scheduler starts it when it can). Nothing else is done by hand: requeues come from Slurm itself
(``scontrol requeue``) or from train.sbatch on the warning signal.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import assert_same_weights, final_weights

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SBATCH = ROOT / "scripts" / "slurm" / "train.sbatch"
CLUSTER = ROOT / "scripts" / "slurm" / "ci_cluster.sh"
# The main job (configs/default.yaml, the bundled corpus), shortened to 6 epochs (66 steps) with a
# checkpoint every 10 steps, one thread (the same in every allocation and in the reference).
TRAIN_ARGS = ["--set", "training.num_epochs=6", "--set", "checkpoint.every_steps=10",
              "--set", "training.num_threads=1", "--no-sample", "--no-report"]


@pytest.fixture(scope="module")
def slurm() -> None:
    """A one-node Slurm that takes jobs, started (and installed) by ci_cluster.sh where possible."""
    if os.geteuid() != 0 and not shutil.which("sbatch"):
        pytest.skip("no Slurm here and not root to install one (scripts/slurm/ci_cluster.sh needs root)")
    if os.geteuid() == 0:
        done = subprocess.run(["bash", str(CLUSTER)], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.skip(f"Slurm could not be started here: {(done.stderr or done.stdout).strip()[-300:]}")
    if subprocess.run(["sinfo", "-h"], capture_output=True, timeout=30).returncode != 0:
        pytest.skip("Slurm does not answer (sinfo failed); run scripts/slurm/ci_cluster.sh as root")


@pytest.fixture(scope="module")
def reference(slurm, tmp_path_factory):
    """The same training, uninterrupted, outside Slurm: started at once, waited for when compared, so
    that it runs while the jobs wait on Slurm (the file's wall time is the longest job's, not the sum)."""
    run = tmp_path_factory.mktemp("slurm-ref") / "run"
    proc = subprocess.Popen([sys.executable, "-m", "chefgenius", "train", "-o", str(run), *TRAIN_ARGS],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def finished() -> Path:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        return run

    yield finished
    if proc.poll() is None:
        proc.kill()


@pytest.fixture(scope="module")
def time_limited_job(slurm, tmp_path_factory):
    """A job with a one-minute limit, warned 45 s before it (each allocation has about 15 s), submitted
    first so that it runs beside the other test."""
    tmp_path = tmp_path_factory.mktemp("slurm-time")
    run = tmp_path / "run"
    jid = submit(tmp_path, run, "--time=1", "--signal=B:USR1@45")
    yield jid, run, tmp_path
    subprocess.run(["scancel", jid], capture_output=True, timeout=30)


def submit(tmp_path: Path, run: Path, *sbatch_args: str, env: dict[str, str] | None = None) -> str:
    full_env = {**os.environ, "CHEFGENIUS_PYTHON": sys.executable, **(env or {})}
    done = subprocess.run(["sbatch", "--parsable", f"--chdir={tmp_path}", f"--output={tmp_path / 'job.log'}",
                           *sbatch_args, str(SBATCH), "-o", str(run), *TRAIN_ARGS],
                          capture_output=True, text=True, env=full_env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def job(jid: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "-o", "show", "job", jid], capture_output=True, text=True, timeout=30).stdout
    return dict(item.split("=", 1) for item in out.split() if "=" in item)


def wait_for(jid: str, tmp_path: Path, what: str, predicate, timeout: float = 240) -> dict[str, str]:
    """Poll the job until ``predicate(job)`` holds; a job held only by its requeue BeginTime is started now."""
    deadline = time.monotonic() + timeout
    hurried: set[str] = set()  # once per requeue: each update sets the begin time anew
    while True:
        info = job(jid)
        if predicate(info):
            return info
        if info.get("JobState") == "PENDING" and info.get("Reason") == "BeginTime" and \
                info.get("Restarts") not in hurried:
            hurried.add(info.get("Restarts"))
            # now+3: slurmd refuses a launch in the same second its previous allocation was revoked
            # ("Job credential revoked"), which is why Slurm itself waits 2 minutes.
            subprocess.run(["scontrol", "update", f"JobId={jid}", "StartTime=now+3"], capture_output=True, timeout=30)
        if info.get("JobState") in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY") or \
                time.monotonic() > deadline:
            subprocess.run(["scancel", jid], capture_output=True, timeout=30)
            log = (tmp_path / "job.log").read_text() if (tmp_path / "job.log").exists() else "(no log)"
            state = f"{info.get('JobState')} ({info.get('Reason')})"
            pytest.fail(f"waiting for {what}: job {jid} is {state}\n{log[-4000:]}")
        time.sleep(0.2)


def wait_for_file(path: Path, jid: str, tmp_path: Path, timeout: float = 240) -> None:
    wait_for(jid, tmp_path, f"{path}", lambda info: path.exists(), timeout)


def starts(run: Path) -> list[dict]:
    return [e for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if e.get("event") == "start"]


def losses(run: Path) -> dict[int, float]:
    rows = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_a_requeued_and_warned_job_ends_bit_identical(slurm, reference, time_limited_job, tmp_path):
    run = tmp_path / "run"
    gates = [tmp_path / "gate-20", tmp_path / "gate-40"]
    for gate in gates:
        gate.mkdir()
    hooks = {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "hooks"), os.environ.get("PYTHONPATH", "")]),
             "CHEFGENIUS_TEST_HOLD_SAVE": f"20:{gates[0]},40:{gates[1]}"}
    jid = submit(tmp_path, run, env=hooks)

    # Preempted while the step-20 save is being written: Slurm's SIGTERM, then the save goes on.
    wait_for_file(gates[0] / "held", jid, tmp_path)
    subprocess.run(["scontrol", "requeue", jid], check=True, timeout=30)
    (gates[0] / "release").touch()
    wait_for(jid, tmp_path, "the second allocation", lambda i: i.get("Restarts") == "1" and i["JobState"] == "RUNNING")

    # The time-limit warning (what --signal=B:USR1@120 sends), during the step-40 save.
    wait_for_file(gates[1] / "held", jid, tmp_path)
    subprocess.run(["scancel", "--batch", "--signal=USR1", jid], check=True, timeout=30)
    (gates[1] / "release").touch()
    info = wait_for(jid, tmp_path, "the end of training", lambda i: i["JobState"] == "COMPLETED")

    assert info["Restarts"] == "2"
    assert [(s["slurm_job_id"], s["slurm_restart_count"]) for s in starts(run)] == \
        [(jid, "0"), (jid, "1"), (jid, "2")]
    resumed = [s["step"] for s in starts(run)]
    assert resumed[0] == 0 and 20 <= resumed[1] < 40 <= resumed[2]
    ref = reference()
    assert_same_weights(final_weights(ref), final_weights(run))
    assert losses(run) == losses(ref) and len(losses(run)) == 7  # logged every 10 steps, and the last
    log = (tmp_path / "job.log").read_text()
    assert "time-limit warning" in log and f"requeueing job {jid}" in log
    assert "received SIGTERM" in log and f"slurm: slurm_job_id {jid}, slurm_restart_count 2" in log
    # Progress as plain lines: no carriage-return redraws in the job's log.
    assert "\r" not in log and "step 66/66 (100%)" in log


def test_a_job_shorter_than_its_training_finishes_over_several_allocations(slurm, reference, time_limited_job):
    jid, run, tmp_path = time_limited_job
    info = wait_for(jid, tmp_path, "the end of training", lambda i: i["JobState"] == "COMPLETED", timeout=400)
    assert int(info["Restarts"]) >= 1
    assert [int(s["slurm_restart_count"]) for s in starts(run)] == list(range(int(info["Restarts"]) + 1))
    ref = reference()
    assert_same_weights(final_weights(ref), final_weights(run))
    assert losses(run) == losses(ref)
