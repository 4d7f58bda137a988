"""Asynchronous checkpoints: what a background save writes is what a synchronous save writes, it
never reads live state after the snapshot, and a kill while it is in flight loses nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from chefgenius.checkpoint import list_checkpoints, load_state, verify_checkpoint
from chefgenius.checkpoint.snapshot import TensorBuffers, take_snapshot, write_snapshot
from chefgenius.data.tokenizer import train_tokenizer
from chefgenius.durable.directory import TMP_PREFIX
from chefgenius.models.builders import build_from_scratch
from chefgenius.training.trainer import Trainer

from .conftest import assert_same_weights, final_weights, quiet, tiny_config, write_config
from .soak import held_save, last_logged_step, train_command


def _files(ckpt: Path) -> dict[str, bytes]:
    return {p.relative_to(ckpt).as_posix(): p.read_bytes() for p in sorted(ckpt.rglob("*")) if p.is_file()}


def _meta_without_time(raw: bytes) -> dict:
    meta = json.loads(raw)["state"]
    meta.pop("created")
    meta["config"]["checkpoint"].pop("async")
    return meta


@pytest.mark.parametrize("model", [{}, {"use_lora": True, "lora_r": 4}], ids=["full", "lora"])
def test_background_checkpoints_hold_the_same_bytes_as_synchronous_ones(tmp_path, model):
    if model:
        pytest.importorskip("peft")
    runs = {}
    for background in (True, False):
        cfg = tiny_config(model=model, training={"num_epochs": 1},
                          checkpoint={"every_steps": 2, "keep_last": 10, "async": background})
        Trainer(cfg, tmp_path / str(background), log=quiet).fit()
        runs[background] = {c.step: c.path for c in list_checkpoints(tmp_path / str(background) / "checkpoints")}
    assert runs[True].keys() == runs[False].keys() and len(runs[True]) >= 3
    for step, path in runs[True].items():
        assert verify_checkpoint(path) is None
        a, b = _files(path), _files(runs[False][step])
        assert a.keys() == b.keys(), step
        # Everything but the creation times (and the async flag in the stored config) is byte-identical:
        # model (with its tied embedding), tokenizer, optimizer, scheduler, sampler, RNG.
        for name in a:
            if name == "meta.json":
                assert _meta_without_time(a[name]) == _meta_without_time(b[name])
            elif name != "MANIFEST.json":
                assert a[name] == b[name], f"step {step}: {name} differs"
    assert_same_weights(final_weights(tmp_path / "True"), final_weights(tmp_path / "False"))


class _Holder:
    """A stateful piece whose tensors the test changes after the snapshot."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def state_dict(self):
        return self.optimizer.state_dict()


def test_a_snapshot_is_unaffected_by_training_after_it_and_reuses_its_buffers(tmp_path):
    from chefgenius.config import build_config

    cfg = build_config({"model": {"from_scratch": "gpt2", "preset": "tiny", "vocab_size": 300}})
    tok = train_tokenizer(["flour sugar butter eggs milk", "whisk the eggs, fold in the flour"] * 20, vocab_size=300)
    model = build_from_scratch(cfg.model, tok, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def step() -> None:
        model(input_ids=torch.randint(0, len(tok), (2, 16)), labels=torch.randint(0, len(tok), (2, 16))).loss.backward()
        opt.step()
        opt.zero_grad()

    step()
    buffers = TensorBuffers()
    expected_weights = {k: v.clone() for k, v in model.state_dict().items()}
    expected_moments = {k: v["exp_avg"].clone() for k, v in opt.state_dict()["state"].items()}
    snap = take_snapshot(model=model, pieces={"optimizer": _Holder(opt)}, meta={"step": 1}, buffers=buffers)
    for _ in range(2):
        step()  # what training does while the snapshot is written in the background
    write_snapshot(tmp_path, snap, model=model, tokenizer=tok)
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert saved and all(torch.equal(saved[k], expected_weights[k]) for k in saved)
    assert not torch.equal(saved["transformer.wte.weight"], model.state_dict()["transformer.wte.weight"])
    moments = load_state(tmp_path, "optimizer")["state"]
    assert all(torch.equal(moments[k]["exp_avg"], expected_moments[k]) for k in expected_moments)

    first = {k: v.data_ptr() for k, v in snap.model_state.items()}
    again = take_snapshot(model=model, pieces={"optimizer": _Holder(opt)}, meta={"step": 3}, buffers=buffers)
    assert {k: v.data_ptr() for k, v in again.model_state.items()} == first  # refilled, not reallocated
    # The tied embedding and output weights share one copy, as they share one tensor in the model.
    assert again.model_state["lm_head.weight"].data_ptr() == again.model_state["transformer.wte.weight"].data_ptr()


def test_sigkill_while_a_background_save_is_in_flight_loses_nothing(tmp_path):
    cfg = tiny_config(training={"num_epochs": 1}, checkpoint={"every_steps": 2, "keep_last": 1, "keep_best": 0},
                      evaluation={"every_steps": None, "at_epoch_end": False})
    ref = tmp_path / "ref"
    Trainer(cfg, ref, log=quiet).fit()
    config = write_config(cfg, tmp_path / "c.yaml")
    run = tmp_path / "run"
    # The save of step 4 is held open in its background thread until released (never, here):
    # training must go on meanwhile, and the kill lands while it is in flight.
    gate = tmp_path / "gate"
    proc = subprocess.Popen(train_command(config, run), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=held_save(4, gate))
    root = run / "checkpoints"
    seen, deadline = None, time.monotonic() + 300  # a safety bound against a hang, not a timing assumption
    while proc.poll() is None and time.monotonic() < deadline:
        if (gate / "held").exists() and last_logged_step(run) >= 5:
            seen = [c.step for c in list_checkpoints(root)]
            break
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()[1].decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert seen is not None, "the run never trained past a save in flight"
    # While step 4 was being written, step 2 (keep_last 1) was still there: retention waits for the commit.
    assert seen == [2] and [c.step for c in list_checkpoints(root)] == [2]
    assert verify_checkpoint(root / "step-0000002") is None
    done = subprocess.run(train_command(config, run), capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    assert b"removed .tmp-step-0000004" in done.stderr or b"removed .tmp-step-0000004" in done.stdout
    assert_same_weights(final_weights(ref), final_weights(run))
    assert not [p for p in root.iterdir() if p.name.startswith(TMP_PREFIX)]
