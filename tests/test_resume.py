"""The exactness contract: a run stopped anywhere and resumed ends bit-identical to one that never stopped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chefgenius.checkpoint import ResumeError, list_checkpoints
from chefgenius.training.trainer import Trainer

from .conftest import assert_same_weights, final_weights, quiet, tiny_config


class Crash(RuntimeError):
    """Stands in for a kill: raised after the optimizer step (and any checkpoint) of a given step."""


def _crash_at(step: int):
    def hook(trainer: Trainer) -> None:
        if trainer.state.step == step:
            raise Crash(step)

    return hook


def train_losses(run_dir: Path) -> list[tuple[int, float]]:
    entries = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(e["step"], e["loss"]) for e in entries if "loss" in e]


def eval_losses(run_dir: Path) -> list[tuple[int, float]]:
    entries = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(e["step"], e["eval_loss"]) for e in entries if "eval_loss" in e]


def run_with_stops(cfg, run_dir: Path, stops: list[int]) -> Trainer:
    for step in stops:
        with pytest.raises(Crash):
            Trainer(cfg, run_dir, on_step=_crash_at(step), log=quiet).fit()
    trainer = Trainer(cfg, run_dir, log=quiet)
    assert trainer.fit().status == "completed"
    return trainer


def assert_identical_runs(a: Path, b: Path) -> None:
    assert_same_weights(final_weights(a), final_weights(b))
    la, lb = train_losses(a), train_losses(b)
    assert la == lb and len(la) > 0  # exact float equality, every step
    assert eval_losses(a) == eval_losses(b)


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_stops_mid_epoch_at_epoch_boundary_and_after_eval(tmp_path, family):
    cfg = tiny_config(model={"from_scratch": family})
    straight = Trainer(cfg, tmp_path / "straight", log=quiet).setup()
    spe = straight.sampler.steps_per_epoch
    assert straight.fit().status == "completed"
    # 6: between checkpoints 4 and 8 (steps 5-6 recomputed); spe: epoch boundary; 10: right after the eval at 10.
    stops = sorted({6, spe, 10})
    resumed = run_with_stops(cfg, tmp_path / "resumed", stops)
    assert resumed.state.step == straight.state.step
    assert len(resumed.state.resumes) == len(stops)
    assert_identical_runs(tmp_path / "straight", tmp_path / "resumed")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_resume_is_exact(tmp_path, precision):
    # Autocast on a CPU is slow: a short run (a checkpoint at 4, a stop at 5, eval at 5) says as much.
    cfg = tiny_config(training={"precision": precision, "max_steps": 6, "grad_accum": 1})
    Trainer(cfg, tmp_path / "a", log=quiet).fit()
    run_with_stops(cfg, tmp_path / "b", [5])
    assert_identical_runs(tmp_path / "a", tmp_path / "b")


def test_lora_resume_is_exact_and_saves_only_adapters(tmp_path):
    pytest.importorskip("peft")
    cfg = tiny_config(model={"use_lora": True, "lora_r": 4}, training={"num_epochs": 1, "learning_rate": 1e-2})
    Trainer(cfg, tmp_path / "a", log=quiet).fit()
    run_with_stops(cfg, tmp_path / "b", [3])
    weights = final_weights(tmp_path / "a")
    assert weights and all("lora_" in k for k in weights)
    assert_identical_runs(tmp_path / "a", tmp_path / "b")


def test_resume_refuses_changed_trajectory_config_and_allows_named_changes(tmp_path):
    cfg = tiny_config(training={"num_epochs": 1})
    with pytest.raises(Crash):
        Trainer(cfg, tmp_path, on_step=_crash_at(4), log=quiet).fit()
    changed = tiny_config(training={"num_epochs": 1, "learning_rate": 1e-4, "batch_size": 2})
    with pytest.raises(ResumeError) as err:
        Trainer(changed, tmp_path, log=quiet).setup()
    assert "training.learning_rate" in str(err.value) and "training.batch_size" in str(err.value)
    longer = tiny_config(training={"num_epochs": 2})
    trainer = Trainer(longer, tmp_path, allow_changes=("training.num_epochs",), log=quiet).setup()
    assert trainer.state.config_changes == [{"key": "training.num_epochs", "old": 1, "new": 2}]
    assert trainer.fit().status == "completed"
    assert trainer.state.step == trainer.total_steps == 2 * trainer.sampler.steps_per_epoch


def test_resume_never_refuses_a_dir_with_checkpoints(tmp_path):
    cfg = tiny_config(training={"max_steps": 4, "warmup_steps": 1})
    with pytest.raises(Crash):
        Trainer(cfg, tmp_path, on_step=_crash_at(4), log=quiet).fit()
    with pytest.raises(ResumeError, match="already holds checkpoints"):
        Trainer(cfg, tmp_path, resume="never", log=quiet).setup()


def test_missing_optimizer_state_is_an_error_not_a_fresh_start(tmp_path):
    cfg = tiny_config(training={"num_epochs": 1})
    with pytest.raises(Crash):
        Trainer(cfg, tmp_path, on_step=_crash_at(4), log=quiet).fit()
    ckpt = list_checkpoints(tmp_path / "checkpoints")[-1].path
    (ckpt / "optimizer.json").unlink()
    (ckpt / "MANIFEST.json").unlink()  # make the mutilated checkpoint "valid" to reach the loader
    from chefgenius.durable.directory import write_manifest

    write_manifest(ckpt, 4)
    with pytest.raises(ResumeError, match="optimizer"):
        Trainer(cfg, tmp_path, resume=str(ckpt), log=quiet).setup()


def test_optimizer_state_for_other_parameters_is_refused(tmp_path):
    from chefgenius.checkpoint.format import load_state, save_state
    from chefgenius.durable.directory import write_manifest

    cfg = tiny_config(training={"num_epochs": 1})
    with pytest.raises(Crash):
        Trainer(cfg, tmp_path, on_step=_crash_at(4), log=quiet).fit()
    ckpt = list_checkpoints(tmp_path / "checkpoints")[-1].path
    state = load_state(ckpt, "optimizer")
    state["param_groups"][0]["param_names"][0], state["param_groups"][0]["param_names"][1] = (
        state["param_groups"][0]["param_names"][1], state["param_groups"][0]["param_names"][0])
    save_state(ckpt, "optimizer", state)
    (ckpt / "MANIFEST.json").unlink()
    write_manifest(ckpt, 4)
    with pytest.raises(ResumeError, match="order or names changed"):
        Trainer(cfg, tmp_path, resume=str(ckpt), log=quiet).setup()


def test_checkpoint_holds_every_piece_of_state(tmp_path):
    from chefgenius.checkpoint.inspection import inspect_checkpoint

    cfg = tiny_config(training={"max_steps": 4, "warmup_steps": 1, "precision": "fp16"})
    Trainer(cfg, tmp_path, log=quiet).fit()
    ckpt = list_checkpoints(tmp_path / "checkpoints")[-1].path
    info = inspect_checkpoint(ckpt)
    names = {Path(p).name for p in info["pieces"]}
    assert {"optimizer.safetensors", "rng.safetensors", "scheduler.json", "sampler.json",
            "train_state.json", "scaler.json"} <= names
    assert info["rng"]["rank-00000"][:3] == ["python", "numpy", "torch_cpu"]
    assert info["versions"]["torch"] and info["data"]["train_fingerprint"]
    assert (ckpt / "model" / "model.safetensors").is_file() and (ckpt / "tokenizer").is_dir()


def test_exact_with_grouped_batches_and_sample_generation_at_every_eval(tmp_path):
    """The forked RNG of evaluation samples and length-grouped batching must not shift a resumed run."""
    cfg = tiny_config(training={"group_by_length": True},
                      evaluation={"prompts": ["egg, milk"], "max_new_tokens": 12, "generation_preset": "creative"})
    Trainer(cfg, tmp_path / "a", log=quiet).fit()
    run_with_stops(cfg, tmp_path / "b", [3, 7, 11])
    assert_identical_runs(tmp_path / "a", tmp_path / "b")
    samples = [json.loads(x) for x in (tmp_path / "b" / "samples.jsonl").read_text().splitlines()]
    reference = [json.loads(x) for x in (tmp_path / "a" / "samples.jsonl").read_text().splitlines()]
    assert samples == reference and len(samples) >= 3


def test_changed_training_data_is_refused_unless_allowed(tmp_path):
    from chefgenius.data.sources import bundled_corpus_path

    lines = bundled_corpus_path().read_text().splitlines()
    data = tmp_path / "recipes.jsonl"
    data.write_text("\n".join(lines) + "\n")
    cfg = tiny_config(data={"path": str(data)}, training={"num_epochs": 1})
    with pytest.raises(Crash):
        Trainer(cfg, tmp_path / "run", on_step=_crash_at(4), log=quiet).fit()
    row = json.loads(lines[0])
    row["directions"] = [*row["directions"], "Let it rest for five minutes."]  # one recipe edited in place
    data.write_text("\n".join([json.dumps(row), *lines[1:]]) + "\n")
    with pytest.raises(ResumeError, match="the run differs from the checkpoint.*data: checkpoint"):
        Trainer(cfg, tmp_path / "run", log=quiet).setup()
    trainer = Trainer(cfg, tmp_path / "run", allow_changes=("data",), log=quiet)
    assert trainer.fit().status == "completed"
    assert [c["key"] for c in trainer.state.config_changes] == ["data"]


def test_resume_from_an_older_checkpoint_by_path_is_exact_and_protected_from_retention(tmp_path):
    import shutil

    from chefgenius.durable.directory import write_manifest

    cfg = tiny_config(training={"num_epochs": 2}, checkpoint={"every_steps": 2, "keep_last": 1, "keep_best": 0},
                      evaluation={"every_steps": 100, "at_epoch_end": False})
    Trainer(cfg, tmp_path / "a", log=quiet).fit()
    with pytest.raises(Crash):
        Trainer(cfg, tmp_path / "c", on_step=_crash_at(4), log=quiet).fit()
    with pytest.raises(Crash):
        Trainer(cfg, tmp_path / "b", on_step=_crash_at(8), log=quiet).fit()
    root = tmp_path / "b" / "checkpoints"
    assert [c.step for c in list_checkpoints(root)] == [8]
    # A step-8 checkpoint renamed to step 4 is refused by its manifest, then by its train state.
    fake = root / "step-0000004"
    shutil.copytree(root / "step-0000008", fake)
    with pytest.raises(ResumeError, match="MANIFEST.json is for step 8"):
        Trainer(cfg, tmp_path / "b", resume=str(fake), log=quiet).setup()
    (fake / "MANIFEST.json").unlink()
    write_manifest(fake, 4)
    with pytest.raises(ResumeError, match="train state for step 8"):
        Trainer(cfg, tmp_path / "b", resume=str(fake), log=quiet).setup()
    shutil.rmtree(fake)
    # The user goes back to a real step-4 checkpoint on purpose.
    shutil.copytree(tmp_path / "c" / "checkpoints" / "step-0000004", fake)
    assert Trainer(cfg, tmp_path / "b", resume=str(fake), log=quiet).fit().status == "completed"
    # keep_last=1 would have deleted step 4 at the first save after it; the resume source is protected.
    assert 4 in [c.step for c in list_checkpoints(root)]
    assert_identical_runs(tmp_path / "a", tmp_path / "b")


def test_rerun_of_a_complete_run_with_a_damaged_checkpoint_touches_nothing(tmp_path):
    cfg = tiny_config(training={"num_epochs": 1}, checkpoint={"every_steps": 2, "keep_last": 5})
    Trainer(cfg, tmp_path, log=quiet).fit()
    newest = list_checkpoints(tmp_path / "checkpoints")[-1].path
    (newest / "sampler.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    logs: list[str] = []
    result = Trainer(cfg, tmp_path, log=lambda *a: logs.append(" ".join(map(str, a)))).fit()
    assert result.status == "already_complete" and any("already complete" in line for line in logs)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert not any("skipping" in line for line in logs)


def test_a_first_wave_checkpoint_with_the_full_loss_history_resumes_exactly(tmp_path):
    from chefgenius.checkpoint.format import load_state, save_state
    from chefgenius.durable.directory import write_manifest

    cfg = tiny_config(training={"num_epochs": 1}, logging={"every_steps": 3, "progress_bar": False})
    Trainer(cfg, tmp_path / "a", log=quiet).fit()
    with pytest.raises(Crash):
        Trainer(cfg, tmp_path / "b", on_step=_crash_at(5), log=quiet).fit()
    ckpt = list_checkpoints(tmp_path / "b" / "checkpoints")[-1].path
    state = load_state(ckpt, "train_state")
    assert ckpt.name == "step-0000005" and len(state["window_losses"]) == 2  # steps 4 and 5 since the log at 3
    # The first-wave format: every step's [step, loss] and no window. Steps 1-3 are already logged, so
    # only the open window may count: made-up values there would show in the next logged average.
    losses = [9.0, 9.0, 9.0, *state["window_losses"]]
    del state["window_losses"]
    state["loss_history"] = [[i + 1, loss] for i, loss in enumerate(losses)]
    save_state(ckpt, "train_state", state)
    (ckpt / "MANIFEST.json").unlink()
    write_manifest(ckpt, 5)
    assert Trainer(cfg, tmp_path / "b", log=quiet).fit().status == "completed"
    assert_identical_runs(tmp_path / "a", tmp_path / "b")
