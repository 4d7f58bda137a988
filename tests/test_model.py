"""Model features: LoRA export/merge, compile keeps a saveable original, gradient checkpointing."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from chefgenius.cli import app
from chefgenius.training.trainer import Trainer

from .conftest import quiet, tiny_config


def test_lora_final_exports_merged_model(tmp_path):
    pytest.importorskip("peft")
    cfg = tiny_config(model={"use_lora": True, "lora_r": 4}, training={"max_steps": 3, "warmup_steps": 1,
                                                                          "learning_rate": 5e-2})
    trainer = Trainer(cfg, tmp_path / "run", log=quiet)
    trainer.fit()
    out = tmp_path / "merged"
    r = CliRunner().invoke(app, ["ckpt", "export", str(tmp_path / "run" / "final"), str(out)])
    assert r.exit_code == 0, r.output
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out).to(trainer.device)  # the trained model's device (CUDA too)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    x = torch.tensor([[5, 6, 7, 8]], device=trainer.device)
    trainer.model.eval()
    merged.eval()
    with torch.no_grad():
        diff = (trainer.model(input_ids=x).logits - merged(input_ids=x).logits).abs().max()
    assert diff < 1e-4  # merging folds B@A into the weights: equal up to float rounding
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "base_model").to(trainer.device)  # stored once
    with torch.no_grad():
        assert (base(input_ids=x).logits - merged(input_ids=x).logits).abs().max() > 1e-4  # adapters trained


def test_compiled_model_saves_plain_weights_and_resumes_exactly(tmp_path):
    from safetensors import safe_open

    from chefgenius.checkpoint import list_checkpoints

    from .test_resume import Crash, _crash_at, assert_identical_runs

    cfg = tiny_config(model={"compile": True}, training={"max_steps": 4, "warmup_steps": 1},
                      checkpoint={"every_steps": 2}, evaluation={"every_steps": 100, "at_epoch_end": False})
    said: list[str] = []
    straight = Trainer(cfg, tmp_path / "a", log=lambda *a, **k: said.append(" ".join(map(str, a))))
    assert straight.fit().status == "completed"
    assert type(straight.parallel.train_model).__name__ == "OptimizedModule"  # really compiled
    if straight.device.type == "cuda":
        # Not bit-identical after a resume on CUDA (measured on an H200): the run must say so at start.
        assert any("torch.compile on CUDA is not verified bit-identical" in x for x in said), said
        return
    with pytest.raises(Crash):
        Trainer(cfg, tmp_path / "b", on_step=_crash_at(3), log=quiet).fit()
    ckpt = list_checkpoints(tmp_path / "b" / "checkpoints")[-1].path
    with safe_open(str(ckpt / "model" / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert keys and not any("_orig_mod" in k for k in keys)
    assert Trainer(cfg, tmp_path / "b", log=quiet).fit().status == "completed"
    assert_identical_runs(tmp_path / "a", tmp_path / "b")


def test_gradient_checkpointing_gives_the_same_losses(tmp_path):
    from .test_resume import train_losses

    for gc in (False, True):
        cfg = tiny_config(model={"gradient_checkpointing": gc}, training={"max_steps": 3, "warmup_steps": 1})
        Trainer(cfg, tmp_path / str(gc), log=quiet).fit()
    losses = train_losses(tmp_path / "False")
    assert len(losses) == 3 and losses == train_losses(tmp_path / "True")
