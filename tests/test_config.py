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
    with pytest.raises(ConfigError, match="warmup_steps"):
        load_config(None, ["training.max_steps=5", "training.warmup_steps=10"])
