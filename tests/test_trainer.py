"""Trainer mechanics: loss scaling under accumulation, token cache, early stopping, schedules."""

from __future__ import annotations

import pytest
import torch

from chefgenius.training.optim import lr_factor, param_groups
from chefgenius.training.trainer import Trainer

from .conftest import quiet, tiny_config


def _first_step(tmp_path, name, batch_size, grad_accum):
    cfg = tiny_config(model={"dropout": 0.0}, training={"batch_size": batch_size, "grad_accum": grad_accum,
                                                         "shuffle": False, "max_steps": 1, "warmup_steps": 0,
                                                         "max_grad_norm": None})
    t = Trainer(cfg, tmp_path / name, log=quiet).setup()
    grads = {}

    def capture(optimizer, args, kwargs):
        grads.update({n: p.grad.clone() for n, p in t.model.named_parameters() if p.grad is not None})

    t.train_step.optimizer.register_step_pre_hook(capture)
    out = t.train_step(t.sampler.next_step(), shared=[])
    return out, grads


def test_accumulation_equals_one_big_batch(tmp_path):
    """Loss is the token mean over the whole step, so 3 x 4 accumulated equals 1 x 12 (up to float order)."""
    big, g_big = _first_step(tmp_path, "big", 12, 1)
    acc, g_acc = _first_step(tmp_path, "acc", 4, 3)
    assert big.num_tokens == acc.num_tokens
    assert acc.loss == pytest.approx(big.loss, rel=1e-5)
    assert acc.grad_norm == pytest.approx(big.grad_norm, rel=1e-4)
    assert g_big.keys() == g_acc.keys()
    for n in g_big:
        assert torch.allclose(g_big[n], g_acc[n], rtol=1e-3, atol=1e-7), n


def test_second_run_reuses_the_prepared_dataset(tmp_path):
    logs: list[str] = []
    cfg = tiny_config(training={"max_steps": 1, "warmup_steps": 0}, data={"cache_dir": str(tmp_path / "cache")})
    Trainer(cfg, tmp_path / "a", log=lambda *a: logs.append(" ".join(map(str, a)))).setup()
    Trainer(cfg, tmp_path / "b", log=lambda *a: logs.append(" ".join(map(str, a)))).setup()
    lines = [line for line in logs if "prepared dataset" in line]
    assert len(lines) == 2 and " built in " in lines[0] and " reused " in lines[1]
    assert lines[0].split()[3] == lines[1].split()[3]  # the same store


def test_early_stopping_counts_evaluations(tmp_path):
    cfg = tiny_config(training={"num_epochs": 20, "learning_rate": 0.5, "max_grad_norm": None},
                      evaluation={"every_steps": 2, "at_epoch_end": False, "early_stopping_patience": 2,
                                  "early_stopping_threshold": 100.0})
    t = Trainer(cfg, tmp_path, log=quiet)
    result = t.fit()
    # The threshold makes every evaluation after the first a non-improvement: stop at the third evaluation.
    assert t.state.stopped_early and result.step == 6 and len(t.state.eval_history) == 3
    assert (tmp_path / "final").is_dir()


def test_no_weight_decay_on_biases_and_norms(tmp_path):
    t = Trainer(tiny_config(training={"max_steps": 1, "warmup_steps": 0}), tmp_path, log=quiet).setup()
    decay, no_decay = param_groups(t.model, 0.1)
    assert all(not n.endswith(".bias") and "ln_" not in n for n in decay["param_names"])
    assert any("ln_f" in n for n in no_decay["param_names"]) and no_decay["weight_decay"] == 0.0


def test_schedules():
    assert lr_factor(0, warmup=4, total=10, schedule="linear", min_ratio=0.0) == 0.25
    assert lr_factor(4, warmup=4, total=10, schedule="cosine", min_ratio=0.1) == pytest.approx(1.0)
    assert lr_factor(10, warmup=4, total=10, schedule="cosine", min_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(7, warmup=4, total=10, schedule="linear", min_ratio=0.0) == pytest.approx(0.5)
    assert lr_factor(9, warmup=4, total=10, schedule="constant", min_ratio=0.0) == 1.0


def test_a_run_shorter_than_its_warmup_trains_and_says_so(tmp_path):
    logs: list[str] = []
    cfg = tiny_config(training={"max_steps": 2, "warmup_steps": 3})
    result = Trainer(cfg, tmp_path, log=lambda *a: logs.append(" ".join(map(str, a)))).fit()
    assert result.status == "completed" and result.step == 2
    assert any("covers the whole run" in line for line in logs)


def test_constructing_a_trainer_touches_no_file(tmp_path):
    cfg = tiny_config(training={"max_steps": 2, "warmup_steps": 1})
    Trainer(cfg, tmp_path / "a", log=quiet).fit()
    before = sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    t = Trainer(cfg, tmp_path / "b", log=quiet)
    Trainer(cfg, tmp_path / "a", log=quiet)
    assert not (tmp_path / "b").exists() and t.resumed_from is None
    assert sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before
