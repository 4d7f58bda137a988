"""Checkpoint format, atomic commit, verification, fallback, retention, write failures, safety."""

from __future__ import annotations

import errno
import json
import math
import pickle
from pathlib import Path

import pytest
import torch

from chefgenius.checkpoint import (
    CheckpointFormatError,
    CheckpointWriteError,
    list_checkpoints,
    load_state,
    save_state,
    verify_checkpoint,
)
from chefgenius.checkpoint.layout import checkpoint_dir
from chefgenius.checkpoint.store import CheckpointInfo, select_retained
from chefgenius.durable.directory import commit_directory, write_manifest
from chefgenius.training.trainer import Trainer

from .conftest import assert_same_weights, final_weights, quiet, tiny_config


def test_state_round_trips_exactly_without_pickle(tmp_path):
    state = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)}},
             "param_groups": [{"betas": (0.9, 0.999), "params": [0], "lr": 1e-3, "name": None}],
             "best": math.inf, "flags": [True, 1, "x"]}
    save_state(tmp_path, "opt", state)
    back = load_state(tmp_path, "opt")
    assert back["param_groups"][0]["betas"] == (0.9, 0.999) and back["best"] == math.inf
    assert list(back["state"]) == [0] and torch.equal(back["state"][0]["exp_avg"], state["state"][0]["exp_avg"])
    assert back["flags"] == [True, 1, "x"]


def test_foreign_format_version_is_refused(tmp_path):
    save_state(tmp_path, "x", {"a": 1})
    p = tmp_path / "x.json"
    p.write_text(p.read_text().replace('"format_version": 1', '"format_version": 99'))
    with pytest.raises(CheckpointFormatError, match="version 99"):
        load_state(tmp_path, "x")


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickle_in_place_of_a_tensor_file_is_refused_and_never_runs(tmp_path):
    payload = _Payload()
    payload.marker = str(tmp_path / "pwned")
    save_state(tmp_path, "opt", {"t": torch.zeros(2)})
    (tmp_path / "opt.safetensors").write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointFormatError, match="not a valid safetensors"):
        load_state(tmp_path, "opt")
    assert not (tmp_path / "pwned").exists()


def commit_checkpoint(root: Path, step: int, write) -> Path:
    return commit_directory(checkpoint_dir(root, step), step, write)


def test_commit_is_atomic_and_manifest_detects_damage(tmp_path):
    def write(d: Path) -> None:
        save_state(d, "a", {"w": torch.arange(10.0)})

    ckpt = commit_checkpoint(tmp_path, 5, write)
    assert ckpt.name == "step-0000005" and verify_checkpoint(ckpt) is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    data = bytearray((ckpt / "a.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (ckpt / "a.safetensors").write_bytes(bytes(data))
    assert "a.safetensors" in verify_checkpoint(ckpt) and "does not match its XXH3-128" in verify_checkpoint(ckpt)


def test_failed_write_leaves_no_temporary_and_names_the_cause(tmp_path, monkeypatch):
    commit_checkpoint(tmp_path, 1, lambda d: save_state(d, "a", {"x": 1}))

    def full_disk(d: Path) -> None:
        save_state(d, "a", {"x": 1})
        raise OSError(errno.ENOSPC, "No space left on device", str(d / "b.safetensors"))

    with pytest.raises(CheckpointWriteError, match="No space left on device"):
        commit_checkpoint(tmp_path, 2, full_disk)
    assert [c.step for c in list_checkpoints(tmp_path)] == [1]
    assert verify_checkpoint(tmp_path / "step-0000001") is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_retention_keeps_last_best_and_protected():
    infos = [CheckpointInfo(s, Path(f"step-{s}")) for s in (10, 20, 30, 40, 50)]
    losses = {10: 3.0, 20: 1.0, 30: 2.0, 40: None, 50: 2.5}
    assert select_retained(infos, losses, keep_last=2, keep_best=1, protect=[10]) == {40, 50, 20, 10}


def test_retention_sets_a_checkpoint_aside_at_once_and_deletes_it_in_the_background(tmp_path, monkeypatch):
    import threading

    from chefgenius.checkpoint import store

    cfg = tiny_config(training={"max_steps": 6, "warmup_steps": 1},
                      checkpoint={"every_steps": 2, "keep_last": 10, "async": False})
    Trainer(cfg, tmp_path / "run", log=quiet).fit()
    root = tmp_path / "run" / "checkpoints"
    release, real_rmtree = threading.Event(), store.shutil.rmtree

    def held_rmtree(path, **kw):  # noqa: ANN001, ANN003, ANN202 - the deletion waits until told
        assert release.wait(20)
        return real_rmtree(path, **kw)

    monkeypatch.setattr(store.shutil, "rmtree", held_rmtree)
    before = [c.path.name for c in list_checkpoints(root)]
    assert len(before) >= 3 and before[-1] == "step-0000006"
    removed = store.apply_retention(root, keep_last=1, keep_best=0)
    assert [p.name for p in removed] == before[:-1]
    # returned before anything was deleted, and nothing finds the dropped checkpoints any more
    assert [c.step for c in list_checkpoints(root)] == [6]
    aside = sorted(p.name for p in root.iterdir() if p.name.startswith(".tmp-removed-"))
    assert len(aside) == len(removed) and all((root / a / "MANIFEST.json").exists() for a in aside)
    release.set()
    store.finish_removals()
    assert sorted(p.name for p in root.iterdir()) == ["step-0000006"]


class Crash(Exception):
    """Stands in for a kill; a distinct type so that no unrelated error passes for it."""


def _crash_at(step):
    def hook(trainer):
        if trainer.state.step == step:
            raise Crash(step)
    return hook


def test_corrupt_newest_checkpoints_fall_back_and_still_end_exact(tmp_path):
    cfg = tiny_config(training={"num_epochs": 2}, checkpoint={"every_steps": 2, "keep_last": 10})
    Trainer(cfg, tmp_path / "a", log=quiet).fit()
    with pytest.raises(Crash):
        Trainer(cfg, tmp_path / "b", on_step=_crash_at(8), log=quiet).fit()
    ckpts = list_checkpoints(tmp_path / "b" / "checkpoints")
    newest, second, third = ckpts[-1].path, ckpts[-2].path, ckpts[-3].path
    data = bytearray((newest / "optimizer.safetensors").read_bytes())
    data[len(data) // 2] ^= 0x01                                   # one flipped byte
    (newest / "optimizer.safetensors").write_bytes(bytes(data))
    (second / "MANIFEST.json").unlink()                            # a deleted manifest
    with (third / "optimizer.safetensors").open("r+b") as f:  # a truncated file
        f.truncate(100)
    logs: list[str] = []
    trainer = Trainer(cfg, tmp_path / "b", log=lambda *a: logs.append(" ".join(map(str, a)))).setup()
    assert trainer.resumed_from.path == ckpts[-4].path
    skipped = [line.split()[2].rstrip(":") for line in logs if line.startswith("skipping checkpoint")]
    assert skipped == [newest.name, second.name, third.name]
    trainer.fit()
    assert_same_weights(final_weights(tmp_path / "a"), final_weights(tmp_path / "b"))


def test_resume_path_to_corrupt_checkpoint_is_an_error(tmp_path):
    from chefgenius.checkpoint import ResumeError

    cfg = tiny_config(training={"max_steps": 4, "warmup_steps": 1})
    Trainer(cfg, tmp_path, log=quiet).fit()
    ckpt = list_checkpoints(tmp_path / "checkpoints")[-1].path
    (ckpt / "sampler.json").write_text("{}")
    with pytest.raises(ResumeError, match="sampler.json"):
        Trainer(cfg, tmp_path, resume=str(ckpt), log=quiet).setup()


@pytest.mark.parametrize("background", [True, False], ids=["async", "sync"])
def test_enospc_during_training_save_stops_with_error_and_keeps_earlier(tmp_path, monkeypatch, background):
    import chefgenius.checkpoint.snapshot as snapshot_mod

    real = snapshot_mod.write_encoded

    def full_disk_at_step_4(directory, name, encoded):
        if "step-0000004" in str(directory):
            raise OSError(errno.ENOSPC, "No space left on device", str(directory / f"{name}.safetensors"))
        return real(directory, name, encoded)

    monkeypatch.setattr(snapshot_mod, "write_encoded", full_disk_at_step_4)
    cfg = tiny_config(training={"num_epochs": 1}, checkpoint={"every_steps": 2, "async": background})
    with pytest.raises(CheckpointWriteError, match="No space left on device"):
        Trainer(cfg, tmp_path, log=quiet).fit()
    ckpts = list_checkpoints(tmp_path / "checkpoints")
    assert [c.step for c in ckpts] == [2] and verify_checkpoint(ckpts[0].path) is None
    assert not (tmp_path / "final").exists()
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp")]

    # checkpoint.on_error=continue keeps training and says so loudly.
    logs: list[str] = []
    cfg2 = tiny_config(training={"num_epochs": 1},
                       checkpoint={"every_steps": 2, "on_error": "continue", "async": background})
    result = Trainer(cfg2, tmp_path / "c", log=lambda *a: logs.append(" ".join(map(str, a)))).fit()
    assert result.status == "completed" and any("FAILED" in line for line in logs)
    assert 4 not in [c.step for c in list_checkpoints(tmp_path / "c" / "checkpoints")]


def test_write_manifest_covers_nested_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f.bin").write_bytes(b"abc")
    write_manifest(tmp_path, 3)
    assert verify_checkpoint(tmp_path) is None
    (tmp_path / "sub" / "f.bin").unlink()
    assert "sub/f.bin is missing" in verify_checkpoint(tmp_path)


def test_kill_while_writing_final_leaves_no_final_and_rerun_completes(tmp_path, monkeypatch):
    import chefgenius.checkpoint.final as trainer_mod

    cfg = tiny_config(training={"max_steps": 4, "warmup_steps": 1})
    real = trainer_mod.commit_directory

    def killed(final, step, write):
        (final.parent / f".tmp-{final.name}-999").mkdir()
        raise KeyboardInterrupt  # stands in for the kill, mid-write

    monkeypatch.setattr(trainer_mod, "commit_directory", killed)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, tmp_path / "a", log=quiet).fit()
    assert not (tmp_path / "a" / "final").exists()
    monkeypatch.setattr(trainer_mod, "commit_directory", real)
    assert Trainer(cfg, tmp_path / "a", log=quiet).fit().status == "completed"
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".tmp")]
    Trainer(cfg, tmp_path / "b", log=quiet).fit()
    assert_same_weights(final_weights(tmp_path / "a"), final_weights(tmp_path / "b"))


def test_each_rank_hashes_only_the_files_it_wrote(tmp_path):
    from chefgenius.checkpoint.store import files_of_rank
    from chefgenius.durable.directory import hash_files

    for f in ["meta.json", "model/model.safetensors", "rank-00000/rng.json", "rank-00001/rng.json",
              "rank-00001/shards.safetensors", "rank-00002/rng.json"]:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text(f)
    assert files_of_rank(tmp_path, 0) == ["meta.json", "model/model.safetensors", "rank-00000/rng.json"]
    assert files_of_rank(tmp_path, 1) == ["rank-00001/rng.json", "rank-00001/shards.safetensors"]
    # A manifest written from every rank's hashes equals one computed by reading everything back.
    hashed = {k: v for r in range(3) for k, v in hash_files(tmp_path, files_of_rank(tmp_path, r)).items()}
    write_manifest(tmp_path, 1, hashed)
    from_ranks = json.loads((tmp_path / "MANIFEST.json").read_text())["files"]
    write_manifest(tmp_path, 1)
    assert from_ranks == json.loads((tmp_path / "MANIFEST.json").read_text())["files"]
    assert sorted(from_ranks) == sorted([*hashed])
