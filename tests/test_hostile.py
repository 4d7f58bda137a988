"""What a hostile user or a hostile world does: doctored checkpoints, full disks, a second run,
silent changes. Each class of input is tried in several variants, through the real code path."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from chefgenius.checkpoint import ResumeError, list_checkpoints, verify_checkpoint
from chefgenius.checkpoint.reading import checkpoint_problem
from chefgenius.cli import app
from chefgenius.durable.directory import write_manifest
from chefgenius.models.builders import ModelLoadError
from chefgenius.training.trainer import Trainer

from .conftest import assert_same_weights, final_weights, quiet, resize_fs, tiny_config, write_config
from .soak import last_logged_step, train_command
from .test_resume import Crash, _crash_at, train_losses

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _one_line(output: str) -> str:
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    return lines[0]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> tuple[Path, object]:
    """A run stopped at step 6 with checkpoints at 2, 4 and 6 (kept), plus the finished reference."""
    root = tmp_path_factory.mktemp("hostile")
    cfg = tiny_config(training={"num_epochs": 1}, checkpoint={"every_steps": 2, "keep_last": 10},
                      evaluation={"every_steps": 100, "at_epoch_end": False})
    Trainer(cfg, root / "ref", log=quiet).fit()
    with pytest.raises(Crash):
        Trainer(cfg, root / "run", on_step=_crash_at(6), log=quiet).fit()
    return root / "run", cfg


def _copy_run(stopped_run, tmp_path) -> tuple[Path, Path]:
    run, _ = stopped_run
    dest = tmp_path / "run"
    shutil.copytree(run, dest)
    return dest, list_checkpoints(dest / "checkpoints")[-1].path


def _remanifest(ckpt: Path) -> None:
    (ckpt / "MANIFEST.json").unlink()
    write_manifest(ckpt, int(ckpt.name.split("-")[1]))


# ----- model weights that verify but are not the model -------------------------------------------

@pytest.mark.parametrize("doctor, fragment", [
    (lambda t: {"transformer.wte.weight": t["transformer.wte.weight"]}, "missing"),
    (lambda t: {**t, "transformer.h.9.attn.c_attn.weight": torch.zeros(2, 2)}, "unexpected"),
    (lambda t: {**t, "transformer.wpe.weight": torch.zeros(7, t["transformer.wpe.weight"].shape[1])},
     "wrong shape"),
])
def test_model_tensors_missing_extra_or_misshapen_are_refused_everywhere(stopped_run, tmp_path, doctor, fragment):
    run, ckpt = _copy_run(stopped_run, tmp_path)
    cfg = stopped_run[1]
    weights = ckpt / "model" / "model.safetensors"
    save_file(doctor(load_file(str(weights))), str(weights), metadata={"format": "pt"})
    _remanifest(ckpt)
    assert verify_checkpoint(ckpt) is None  # the manifest is consistent: only loading can tell
    with pytest.raises(ModelLoadError, match=fragment):
        Trainer(cfg, run, log=quiet).setup()
    for args in (("generate", "--model", ckpt, "--ingredients", "egg", "--max-new-tokens", "5"),
                 ("ckpt", "export", ckpt, tmp_path / "out")):
        r = invoke(*args)
        assert r.exit_code == 2 and fragment in _one_line(r.output), r.output
    assert not (tmp_path / "out").exists()


# ----- manifests and state files that lie ----------------------------------------------------------

def _entry_outside(ckpt: Path) -> None:
    doc = json.loads((ckpt / "MANIFEST.json").read_text())
    doc["files"]["../../config.yaml"] = {"size": 1, "sha256": "0" * 64}
    (ckpt / "MANIFEST.json").write_text(json.dumps(doc))


def _entry_absolute(ckpt: Path) -> None:
    doc = json.loads((ckpt / "MANIFEST.json").read_text())
    doc["files"]["/etc/hostname"] = {"size": 1, "sha256": "0" * 64}
    (ckpt / "MANIFEST.json").write_text(json.dumps(doc))


def _entry_wrong_type(ckpt: Path) -> None:
    doc = json.loads((ckpt / "MANIFEST.json").read_text())
    doc["files"]["sampler.json"] = "trust me"
    (ckpt / "MANIFEST.json").write_text(json.dumps(doc))


def _files_not_a_mapping(ckpt: Path) -> None:
    doc = json.loads((ckpt / "MANIFEST.json").read_text())
    doc["files"] = ["sampler.json"]
    (ckpt / "MANIFEST.json").write_text(json.dumps(doc))


def _symlink_outside(ckpt: Path) -> None:
    target = ckpt / "sampler.json"
    outside = ckpt.parent.parent / "outside.json"
    shutil.copy(target, outside)
    target.unlink()
    target.symlink_to(outside)


def _unlisted_file(ckpt: Path) -> None:
    (ckpt / "extra.safetensors").write_bytes(b"surprise")


def _deep_manifest(ckpt: Path) -> None:
    (ckpt / "MANIFEST.json").write_text("[" * 100_000 + "]" * 100_000)


def _deep_state(ckpt: Path) -> None:
    (ckpt / "train_state.json").write_text('{"format_version": 1, "state": ' + "[" * 100_000 + "]" * 100_000 + "}")
    _remanifest(ckpt)


def _huge_state(ckpt: Path) -> None:
    with (ckpt / "train_state.json").open("w") as f:
        f.write('{"format_version": 1, "state": {"pad": "')
        f.write("x" * (40 << 20))
        f.write('"}}')
    _remanifest(ckpt)


def _state_not_a_mapping(ckpt: Path) -> None:
    (ckpt / "sampler.json").write_text('{"format_version": 1, "state": [1, 2, 3]}')
    _remanifest(ckpt)


def _copied_manifest(ckpt: Path) -> None:
    older = sorted(ckpt.parent.glob("step-*"))[-2]
    shutil.copy(older / "MANIFEST.json", ckpt / "MANIFEST.json")


@pytest.mark.parametrize("doctor", [_entry_outside, _entry_absolute, _entry_wrong_type, _files_not_a_mapping,
                                    _symlink_outside, _unlisted_file, _deep_manifest, _deep_state, _huge_state,
                                    _state_not_a_mapping, _copied_manifest])
def test_lying_checkpoint_is_invalid_in_verify_list_inspect_and_resume_falls_back(stopped_run, tmp_path, doctor):
    run, newest = _copy_run(stopped_run, tmp_path)
    doctor(newest)
    problem = checkpoint_problem(newest)
    assert problem and "\n" not in problem
    r = invoke("ckpt", "verify", newest)
    assert r.exit_code == 1 and newest.name in _one_line(r.output)
    listing = invoke("ckpt", "list", run)
    assert listing.exit_code == 0, listing.output
    row = next(line for line in listing.output.splitlines() if line.startswith(newest.name))
    assert "INVALID" in row
    r = invoke("ckpt", "inspect", newest)
    assert r.exit_code == 1 and "INVALID" in _one_line(r.output)
    logs: list[str] = []
    trainer = Trainer(stopped_run[1], run, log=lambda *a: logs.append(" ".join(map(str, a)))).setup()
    assert trainer.resumed_from is not None and trainer.resumed_from.path.name != newest.name
    assert any("skipping checkpoint " + newest.name in line for line in logs)
    assert trainer.fit().status == "completed"
    assert_same_weights(final_weights(stopped_run[0].parent / "ref"), final_weights(run))


# ----- ckpt export never loses user data ---------------------------------------------------------

def test_export_refuses_non_empty_dirs_and_files_and_replaces_only_with_force(stopped_run, tmp_path):
    _, newest = _copy_run(stopped_run, tmp_path)
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("precious")
    r = invoke("ckpt", "export", newest, target)
    assert r.exit_code == 2 and "--force" in _one_line(r.output)
    assert (target / "notes.txt").read_text() == "precious"
    a_file = tmp_path / "file.bin"
    a_file.write_text("precious")
    r = invoke("ckpt", "export", newest, a_file)
    assert r.exit_code == 2 and "not a directory" in _one_line(r.output) and a_file.read_text() == "precious"
    r = invoke("ckpt", "export", newest, target, "--force")
    assert r.exit_code == 0, r.output
    assert not (target / "notes.txt").exists() and (target / "model.safetensors").is_file()
    assert (target / "tokenizer.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


# ----- full disks, on a real small filesystem ----------------------------------------------------

# The filesystem sizes are set for the tiny preset's checkpoints (~10 MB), so the disk fills inside a save.
TINY = {"preset": "tiny"}


@pytest.mark.parametrize("size", ["12M", "16M"])  # 12M: the model writer fails; 16M: the optimizer writer
def test_full_disk_during_checkpoint_exits_1_keeps_earlier_and_resumes_exactly(tmp_path, small_fs, size):
    cfg = tiny_config(model=TINY, training={"num_epochs": 1}, checkpoint={"every_steps": 3, "keep_last": 1},
                      evaluation={"every_steps": 100, "at_epoch_end": False})
    Trainer(cfg, tmp_path / "ref", log=quiet).fit()
    fs = small_fs(size)
    config = write_config(cfg, tmp_path / "c.yaml")
    r = invoke("train", "--config", config, "--output-dir", fs / "run", "--no-sample")
    assert r.exit_code == 1, r.output
    line = r.output.strip().splitlines()[-1]
    assert "No space left on device" in line and "earlier checkpoints are intact" in line
    ckpts = list_checkpoints(fs / "run" / "checkpoints")
    assert [c.step for c in ckpts] == [3] and verify_checkpoint(ckpts[0].path) is None
    assert not [p for p in (fs / "run" / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    assert not (fs / "run" / "final").exists()
    resize_fs(fs, "64M")
    r = invoke("train", "--config", config, "--output-dir", fs / "run", "--no-sample")
    assert r.exit_code == 0, r.output
    assert_same_weights(final_weights(tmp_path / "ref"), final_weights(fs / "run"))
    assert train_losses(tmp_path / "ref") == train_losses(fs / "run")


def test_full_disk_with_on_error_continue_warns_then_final_fails_cleanly(tmp_path, small_fs):
    fs = small_fs("12M")
    cfg = tiny_config(model=TINY, training={"num_epochs": 1},
                      checkpoint={"every_steps": 3, "keep_last": 1, "on_error": "continue"},
                      evaluation={"every_steps": 100, "at_epoch_end": False})
    r = invoke("train", "--config", write_config(cfg, tmp_path / "c.yaml"), "--output-dir", fs / "run", "--no-sample")
    assert r.exit_code == 1, r.output
    assert "FAILED and training goes on" in r.output
    assert "cannot write final" in r.output.strip().splitlines()[-1]
    assert not (fs / "run" / "final").exists()
    assert verify_checkpoint(fs / "run" / "checkpoints" / "step-0000003") is None


def _fill(fs: Path) -> None:
    with (fs / "filler").open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def test_full_disk_for_metrics_raises_the_real_enospc_and_writes_no_final(tmp_path, small_fs):
    """The disk fills after step 2; metrics.jsonl meets ENOSPC once its last page is full, well before the
    only checkpoint at the end (the CLI's one line for it is tested in test_cli)."""
    fs = small_fs("16M")
    cfg = tiny_config(training={"num_epochs": 6}, checkpoint={"every_steps": 1000},
                      evaluation={"every_steps": 1000, "at_epoch_end": False})
    with pytest.raises(OSError) as err:
        Trainer(cfg, fs / "run", on_step=lambda t: _fill(fs) if t.state.step == 2 else None, log=quiet).fit()
    assert err.value.errno == 28 and "metrics.jsonl" in str(err.value.filename)
    assert not (fs / "run" / "final").exists()


def test_full_disk_for_the_prepared_dataset_is_one_line_exit_1_and_leaves_nothing(tmp_path, small_fs):
    fs = small_fs("64k")
    cfg = tiny_config(training={"max_steps": 2, "warmup_steps": 1}, data={"cache_dir": str(fs)})
    r = invoke("train", "--config", write_config(cfg, tmp_path / "c.yaml"), "--output-dir", tmp_path / "run")
    assert r.exit_code == 1, r.output
    line = r.output.strip().splitlines()[-1]
    assert "prepared dataset" in line and "No space left on device" in line and "data.cache_dir" in line
    assert not [p for p in (fs / "prepared").iterdir() if p.name.startswith(".tmp")]
    assert not list((fs / "prepared").glob("[0-9a-f]*"))


def test_full_disk_for_report_is_one_line(tmp_path, small_fs):
    cfg = tiny_config(training={"max_steps": 2, "warmup_steps": 1})
    fs = small_fs("16M")
    Trainer(cfg, fs / "run", log=quiet).fit()
    _fill(fs)
    r = invoke("report", fs / "run")
    assert r.exit_code == 1 and "No space left on device" in _one_line(r.output)
    assert "checkpoints" not in r.output


# ----- one run per directory ---------------------------------------------------------------------

def _wait_for_step(run: Path, proc: subprocess.Popen, step: int, *, checkpoint: bool = False) -> None:
    """Until the run has logged ``step`` (and, with ``checkpoint``, committed a checkpoint: the background
    writer yields the cores to training, so on a busy machine its commit can trail the step)."""
    deadline = time.monotonic() + 120

    def reached() -> bool:
        return last_logged_step(run) >= step and (not checkpoint or bool(list_checkpoints(run / "checkpoints")))

    while not reached() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "training ended before the test could act"


def test_second_run_on_the_same_directory_is_refused_and_a_killed_run_leaves_no_lock(tmp_path):
    # Outlives both probes; keeps every checkpoint, so the one the eval probe names is never retired under it.
    cfg = tiny_config(training={"num_epochs": 40}, checkpoint={"every_steps": 2, "keep_last": 1000})
    config = write_config(cfg, tmp_path / "c.yaml")
    run = tmp_path / "run"
    first = subprocess.Popen(train_command(config, run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The probes run in this test's process: a real second process for the first run's lock, without
    # paying another interpreter's start-up.
    try:
        _wait_for_step(run, first, 3, checkpoint=True)
        second = runner.invoke(app, train_command(config, run)[3:])
        assert second.exit_code == 2, second.output
        assert f"pid {first.pid}" in second.stderr and len(second.stderr.strip().splitlines()) == 1
        ckpt = list_checkpoints(run / "checkpoints")[-1].path
        ev = runner.invoke(app, ["eval", "--run", str(run), "--checkpoint", str(ckpt), "--num-samples", "0"])
        assert ev.exit_code == 2 and "in use" in ev.stderr and not (run / "eval.json").exists()
        assert first.poll() is None, "the first run ended too early to prove anything"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    again = runner.invoke(app, [*train_command(config, run)[3:], "--set", "training.max_steps=8",
                                "--allow-change", "training.max_steps"])
    assert again.exit_code == 0 and "resumed from" in again.stdout, again.output


# ----- silent changes ----------------------------------------------------------------------------

def test_resume_with_another_thread_count_is_refused_unless_allowed(tmp_path):
    cfg = tiny_config(training={"num_epochs": 1})
    with pytest.raises(Crash):
        Trainer(cfg, tmp_path, on_step=_crash_at(4), log=quiet).fit()
    other = tiny_config(training={"num_epochs": 1, "num_threads": 2})
    try:
        with pytest.raises(ResumeError, match="training.num_threads: checkpoint 1 vs now 2"):
            Trainer(other, tmp_path, log=quiet).setup()
        t = Trainer(other, tmp_path, allow_changes=("training.num_threads",), log=quiet).setup()
        assert {"key": "training.num_threads", "old": 1, "new": 2} in t.state.config_changes
    finally:
        torch.set_num_threads(1)


def test_invalid_utf8_rows_and_nan_scores_are_counted_not_kept(tmp_path):
    from chefgenius.config import QualityConfig
    from chefgenius.data.clean import clean_recipes
    from chefgenius.data.sources import read_source

    good = b'0,Soup,"[""1 onion"", ""2 cups water""]","[""Boil."", ""Serve.""]",x,y,"[""onion""]"\n'
    bad = b'1,Caf\xe9 Cr\xeape,"[""1 egg"", ""2 cups milk""]","[""Mix."", ""Fry.""]",x,y,"[""egg""]"\n'
    csv_path = tmp_path / "r.csv"
    csv_path.write_bytes(b",title,ingredients,directions,link,source,NER\n" + good + bad)
    kept, report = clean_recipes(read_source(str(csv_path)), QualityConfig())
    assert [r.title for r in kept] == ["Soup"] and report.dropped["malformed: invalid UTF-8"] == 1
    row = {"title": "A", "ingredients": ["1 egg", "salt"], "directions": ["Fry."]}
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_bytes(json.dumps(row).encode() + b"\n" + json.dumps({**row, "title": "B"}).encode()[:-2]
                      + b'\xff"}\n' + json.dumps({**row, "title": "C", "quality_score": float("nan")}).encode()
                      + b"\n" + json.dumps({**row, "title": "D", "quality_score": 7}).encode() + b"\n")
    kept, report = clean_recipes(read_source(str(jsonl)), QualityConfig())
    assert [r.title for r in kept] == ["A"]
    assert report.dropped["malformed: invalid UTF-8"] == 1
    assert report.dropped["malformed: quality_score is not a number in [0, 1]"] == 2


def test_yaml_config_with_invalid_utf8_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_bytes(b"training:\n  seed: 1 # caf\xe9\n")
    r = invoke("train", "--config", bad, "--output-dir", tmp_path / "run")
    assert r.exit_code == 2 and "not valid UTF-8" in _one_line(r.output)


@pytest.mark.parametrize("damage", ["flipped byte", "out-of-range id, manifest recomputed"])
def test_damaged_prepared_dataset_is_rebuilt_with_a_message(tmp_path, damage):
    cfg = tiny_config(training={"max_steps": 2, "warmup_steps": 1}, data={"cache_dir": str(tmp_path / "cache")})
    Trainer(cfg, tmp_path / "a", log=quiet).fit()
    (store,) = [p for p in (tmp_path / "cache" / "prepared").iterdir() if len(p.name) == 24]
    ids = store / "train_tgt.bin"
    data = bytearray(ids.read_bytes())
    if damage == "flipped byte":
        data[len(data) // 2] ^= 0x01
        ids.write_bytes(bytes(data))
    else:
        data[0:2] = (65000).to_bytes(2, "little")
        ids.write_bytes(bytes(data))
        (store / "MANIFEST.json").unlink()
        write_manifest(store, 0)
    logs: list[str] = []
    result = Trainer(cfg, tmp_path / "b", log=lambda *a: logs.append(" ".join(map(str, a)))).fit()
    assert result.status == "completed"
    damaged = [line for line in logs if "is damaged" in line and "rebuilding" in line]
    assert len(damaged) == 1 and store.name in damaged[0], logs
    assert ("does not match its XXH3-128" if damage == "flipped byte" else "outside the vocabulary") in damaged[0]
    assert_same_weights(final_weights(tmp_path / "a"), final_weights(tmp_path / "b"))


# ----- generation limits -------------------------------------------------------------------------

def test_generation_says_what_it_cut_and_capped(tmp_path):
    cfg = tiny_config(training={"max_steps": 2, "warmup_steps": 1})
    Trainer(cfg, tmp_path / "run", log=quiet).fit()
    many = ", ".join(f"spice{i}" for i in range(500))
    r = invoke("generate", "--run", tmp_path / "run", "--ingredients", many, "--max-new-tokens", "100000")
    assert r.exit_code == 0, r.output
    assert "left out" in r.output and "spice499" not in r.output.split("left out")[0]
    assert "capped to" in r.output
    r = invoke("eval", "--run", tmp_path / "run", "--num-samples", "0")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["num_samples"] == 0


def test_sample_budget_beyond_the_model_is_refused_before_training(tmp_path):
    cfg = tiny_config(training={"max_steps": 2, "warmup_steps": 1},
                      evaluation={"prompts": ["egg"], "max_new_tokens": 1000})
    r = invoke("train", "--config", write_config(cfg, tmp_path / "c.yaml"), "--output-dir", tmp_path / "run")
    assert r.exit_code == 2 and "evaluation.max_new_tokens" in r.output.strip().splitlines()[-1]
    assert not (tmp_path / "run" / "checkpoints").exists()


# ----- messages ----------------------------------------------------------------------------------

def test_messages_name_the_real_problem(tmp_path, monkeypatch):
    cfg = tiny_config(training={"max_steps": 2, "warmup_steps": 1})
    config = write_config(cfg, tmp_path / "c.yaml")
    adir = tmp_path / "recipes.csv"
    adir.mkdir()
    r = invoke("train", "--config", config, "--output-dir", tmp_path / "r1", "--set", f"data.path={adir}",
               "--set", "data.format=csv")
    assert r.exit_code == 2 and "is not a file" in _one_line(r.output) and "checkpoints" not in r.output
    a_file = tmp_path / "file"
    a_file.write_text("x")
    r = invoke("train", "--config", config, "--output-dir", a_file)
    assert r.exit_code == 2 and "is a file" in _one_line(r.output)
    r = invoke("generate", "--run", tmp_path / "nonexistent", "--ingredients", "egg")
    assert r.exit_code == 2 and "does not exist" in _one_line(r.output)
    r = invoke("ckpt", "export", tmp_path / "nonexistent", tmp_path / "out")
    assert r.exit_code == 2 and "does not exist" in _one_line(r.output) and "hub" not in r.output
    import socket

    dialled: list[object] = []
    real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", lambda sock, addr: dialled.append(addr) or real_connect(sock, addr))
    r = invoke("data", "check", "someuser/recipes")
    assert r.exit_code == 2 and "does not exist" in _one_line(r.output) and dialled == []  # nothing sent to a hub


def test_broken_pipe_is_not_an_error(stopped_run, tmp_path):
    run, newest = _copy_run(stopped_run, tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "chefgenius.cli", "ckpt", "inspect", str(newest), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything is written, like `| head -0`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and err == "", err

