"""What each rank holds alone, across real ``chefgenius train --nproc N`` jobs: its own dropout RNG stream
(3 processes), its own slice of the model and optimizer (FSDP2), its own start-up failure.

The DDP tests (equivalence, kills of the launcher, elastic world sizes, two nodes) are in
test_distributed.py; the two files run on the two test workers side by side.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from chefgenius.checkpoint import list_checkpoints
from chefgenius.checkpoint.format import load_state
from chefgenius.checkpoint.reading import checkpoint_problem

from .conftest import final_weights
from .launch import (
    assert_same_checkpoints,
    assert_same_run,
    kill_then_finish,
    make_config,
    needs_gloo,
    sampler_at,
    step_losses,
    train,
)

pytestmark = needs_gloo


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ranks")


@pytest.fixture(scope="module")
def ref3(workdir) -> tuple[Path, Path]:
    """Uninterrupted 3-process run with dropout: every rank draws from its own RNG stream."""
    cfg = make_config(workdir, "ref3", dropout=0.1, batch_size=2, num_epochs=1)  # 15 steps
    train(cfg, workdir / "ref3", 3)
    return cfg, workdir / "ref3"


def test_three_processes_with_dropout_resume_bit_exact_after_kills(ref3, tmp_path):
    """Fixed-order gradient sum: DDP's rebuilt buckets after a restart cannot change the rounding."""
    cfg, ref = ref3
    run = tmp_path / "run"
    kill_then_finish(cfg, run, 3, [10])
    assert_same_run(run, ref)


# ----- FSDP2 (model.sharding: fsdp) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def ref_fsdp(workdir) -> tuple[Path, Path]:
    """Like ``ref2``: the reference saves synchronously, the returned config in the background."""
    train(make_config(workdir, "fsdp-sync", sharding="fsdp", background=False), workdir / "fsdp", 2)
    return make_config(workdir, "fsdp", sharding="fsdp"), workdir / "fsdp"


@pytest.fixture(scope="module")
def one_process(workdir) -> Path:
    """In this process: 1 process with twice the accumulation, bit-identical to 2-process DDP
    (test_distributed.py proves it), so the DDP reference without a job of its own."""
    from chefgenius.config import load_config
    from chefgenius.training.trainer import Trainer

    run = workdir / "one"
    Trainer(load_config(make_config(workdir, "one", grad_accum=2), []), run, log=lambda *a: None).fit()
    return run


def test_fsdp_trains_like_ddp_and_saves_one_shard_per_rank(ref_fsdp, one_process):
    _, run = ref_fsdp
    ckpt = run / "checkpoints" / "step-0000016"
    assert not (ckpt / "model").exists()  # no full copy: each rank wrote its slice
    for r in (0, 1):
        index = load_state(ckpt / f"rank-0000{r}", "shards", with_tensors=False)["index"]
        assert index["transformer.wte.weight"]["offset"] == r * 200  # 400 rows cut in two
    assert checkpoint_problem(ckpt) is None
    # The same arithmetic as DDP except the gradient norm (summed from shards): close, not equal.
    ddp, fsdp = final_weights(one_process), final_weights(run)
    for k in ddp:
        assert (ddp[k] - fsdp[k]).abs().max() < 1e-4, k
    theirs = step_losses(one_process)
    assert all(loss == pytest.approx(theirs[s], rel=1e-5) for s, loss in step_losses(run).items())


def test_fsdp_killed_job_resumes_bit_exact(ref_fsdp, tmp_path):
    cfg, ref = ref_fsdp
    run = tmp_path / "run"
    kill_then_finish(cfg, run, 2, [10])
    assert_same_run(run, ref)
    assert_same_checkpoints(run, ref)


def test_fsdp_checkpoint_resumes_on_another_world_size(ref_fsdp, tmp_path):
    """Shards written by 2 processes are reassembled by 1 (unsharded model): same samples, close losses."""

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



def test_a_rank_failing_at_start_ends_the_job_promptly_with_its_error(tmp_path):
    cfg = make_config(tmp_path, "cfg")
    t0 = time.time()
    done = train(cfg, tmp_path / "run", 2, expect=1, env={
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent / "hooks"), os.environ.get("PYTHONPATH", "")]),
        "CHEFGENIUS_TEST_FAIL_RANK": "1"})
    assert time.time() - t0 < 60  # rank 0 waits for rank 1 in the rendezvous; torchrun must end it
    assert "injected start-up failure of rank 1" in done.stdout + done.stderr


