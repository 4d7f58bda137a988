"""Model features: LoRA export/merge, compile keeps a saveable original, gradient checkpointing."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from chefgenius.cli import app
from chefgenius.trainer import Trainer

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

    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    x = torch.tensor([[5, 6, 7, 8]])
    trainer.model.eval()
    merged.eval()
    with torch.no_grad():
        diff = (trainer.model(input_ids=x).logits - merged(input_ids=x).logits).abs().max()
    assert diff < 1e-4  # merging folds B@A into the weights: equal up to float rounding
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "base_model")
    with torch.no_grad():
        assert (base(input_ids=x).logits - merged(input_ids=x).logits).abs().max() > 1e-4  # adapters trained


def test_compiled_model_saves_through_the_original_module(tmp_path):
    cfg = tiny_config(model={"compile": True}, training={"max_steps": 2, "warmup_steps": 1})
    trainer = Trainer(cfg, tmp_path, log=quiet)
    assert trainer.forward_model is not trainer.model
    assert not any("_orig_mod" in k for k in trainer.model.state_dict())


def test_gradient_checkpointing_gives_the_same_losses(tmp_path):
    losses = []
    for gc in (False, True):
        cfg = tiny_config(model={"gradient_checkpointing": gc}, training={"max_steps": 3, "warmup_steps": 1})
        t = Trainer(cfg, tmp_path / str(gc), log=quiet)
        t.fit()
        losses.append(t.state.loss_history)
    assert losses[0] == losses[1]
