"""Config loading, overrides and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from chefgenius.config import Config, ConfigError, load_config, trajectory_differences

ROOT = Path(__file__).resolve().parents[1]


def test_default_yaml_matches_builtin_defaults():
    assert load_config(ROOT / "configs" / "default.yaml") == Config()


def test_example_configs_validate():
    for name in ("flan-t5-finetune.yaml", "gpt2-lora.yaml"):
        cfg = load_config(ROOT / "configs" / name)
        assert cfg.model.name_or_path and cfg.model.from_scratch is None


def test_overrides_are_typed():
    cfg = load_config(None, ["training.batch_size=16", "training.learning_rate=3e-4", "model.use_lora=true",
                             "evaluation.prompts=[egg, ham]"])
    assert cfg.training.batch_size == 16 and cfg.training.learning_rate == 3e-4
    assert cfg.model.use_lora is True and cfg.evaluation.prompts == ["egg", "ham"]


@pytest.mark.parametrize("override, fragment", [
    ("training.bacth_size=4", "unknown config key 'training.bacth_size'"),
    ("training.batch_size=many", "training.batch_size"),
    ("data.val_fraction=1.5", "data.val_fraction must be in (0, 1)"),
    ("training.precision=fp8", "training.precision"),
    ("model.name_or_path=gpt2", "set exactly one of model.name_or_path and model.from_scratch"),
    ("training.batch_size", "must look like section.key=value"),
])
def test_bad_values_give_one_line_naming_the_key(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_trajectory_differences_ignore_logging():
    a = Config().to_dict()
    b = load_config(None, ["logging.every_steps=3", "training.seed=1"]).to_dict()
    assert [d[0] for d in trajectory_differences(a, b)] == ["training.seed"]


def test_impossible_combinations_are_refused():
    with pytest.raises(ConfigError, match="early_stopping_patience needs evaluations"):
        load_config(None, ["evaluation.early_stopping_patience=2", "evaluation.every_steps=null"])



def test_all_problems_are_reported_at_once_on_one_line():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["training.batch_size=0", "training.learning_rate=-1", "data.val_fraction=2"])
    msg = str(err.value)
    assert "3 problems" in msg and "\n" not in msg
    assert "training.batch_size" in msg and "training.learning_rate" in msg and "data.val_fraction" in msg


@pytest.mark.parametrize("override, fragment", [
    ("evaluation.generation_preset=wild", "evaluation.generation_preset"),
    ("training.device=tpu", "training.device must be auto, cpu, mps, cuda or cuda:N"),
])
def test_values_that_used_to_fail_late_are_refused_up_front(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, [override])


def test_config_presets_are_the_generation_presets():
    from typing import get_args

    from chefgenius.config import GenerationPreset
    from chefgenius.generation.decode import PRESETS

    assert set(get_args(GenerationPreset)) == set(PRESETS)


def test_missing_extras_are_refused_before_any_work(monkeypatch):
    import importlib.util

    from chefgenius.config import check_requirements

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("tensorboard", "wandb")
                        else real(name, *a))
    cfg = load_config(None, ["logging.tensorboard=true", "logging.wandb=true"])
    with pytest.raises(ConfigError) as err:
        check_requirements(cfg)
    assert "chefgenius[tensorboard]" in str(err.value) and "chefgenius[wandb]" in str(err.value)
