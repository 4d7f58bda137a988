"""The documented Python API: train, resume and generate from ``import chefgenius`` alone."""

from __future__ import annotations

import subprocess
import sys

import chefgenius
from chefgenius import Trainer, load_config, load_generator, parse_recipe

from .conftest import assert_same_weights, final_weights, quiet, tiny_config


def test_import_chefgenius_loads_no_torch():
    done = subprocess.run([sys.executable, "-c", "import sys, chefgenius; print('torch' in sys.modules)"],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def test_every_exported_name_resolves():
    for name in chefgenius.__all__:
        assert getattr(chefgenius, name) is not None
    assert sorted(dir(chefgenius)) == sorted(chefgenius.__all__)


def test_train_stop_resume_and_generate_through_the_api(tmp_path):
    cfg = tiny_config(training={"num_epochs": 1}, checkpoint={"every_steps": 2})
    straight = Trainer(cfg, tmp_path / "straight", log=quiet).fit()
    assert straight.status == "completed"

    def stop_at_3(trainer: Trainer) -> None:
        if trainer.state.step == 3:
            trainer.stop.request()

    first = Trainer(cfg, tmp_path / "run", log=quiet, on_step=stop_at_3).fit()
    assert first.status == "interrupted" and first.step == 3
    resumed = Trainer(cfg, tmp_path / "run", log=quiet).fit()
    assert resumed.status == "completed" and resumed.step == straight.step
    assert_same_weights(final_weights(tmp_path / "straight"), final_weights(tmp_path / "run"))

    generator = load_generator(run=tmp_path / "run", device="cpu")
    texts = generator.generate("chicken, rice, onion", num=1)
    assert len(texts) == 1 and texts == generator.generate(["chicken", "rice", "onion"])  # same text again
    assert parse_recipe(texts[0]) is not None


def test_load_config_takes_a_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  batch_size: 4\n")
    cfg = load_config(path, ["training.learning_rate=0.01"])
    assert cfg.training.batch_size == 4 and cfg.training.learning_rate == 0.01
