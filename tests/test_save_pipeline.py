"""The save pipeline: files digested while written, the manifest's digests, per-save figures, busy saves."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from chefgenius.checkpoint import list_checkpoints, verify_checkpoint
from chefgenius.checkpoint.layout import MANIFEST
from chefgenius.checkpoint.tensorfile import write_tensors
from chefgenius.durable.files import DIGEST, file_digest, recall_digest
from chefgenius.training.trainer import Trainer

from .conftest import quiet, tiny_config

ALL_DTYPES = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.uint16, torch.float16, torch.bfloat16,
              torch.int32, torch.uint32, torch.float32, torch.float64, torch.int64, torch.uint64,
              torch.float8_e4m3fn, torch.float8_e5m2]


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {f"w.{i}": (torch.randn(5, 7, generator=g) * 9).to(d) for i, d in enumerate(ALL_DTYPES)}
    out.update({"scalar": torch.tensor(3.5), "empty": torch.zeros(0, 4), "step": torch.tensor(12, dtype=torch.int64),
                "a.long.name.with.dots": torch.arange(10, dtype=torch.float32)})
    return out


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}])
def test_tensor_file_is_byte_identical_to_safetensors_and_its_digest_is_the_files(tmp_path, metadata):
    tensors = _tensors()
    save_file(tensors, str(tmp_path / "theirs.safetensors"), metadata=metadata)
    entry = write_tensors(tmp_path / "ours.safetensors", tensors, metadata)
    ours, theirs = ((tmp_path / f"{n}.safetensors").read_bytes() for n in ("ours", "theirs"))
    assert ours == theirs
    assert entry == {"size": len(ours), DIGEST: file_digest(tmp_path / "ours.safetensors")}
    back = load_file(str(tmp_path / "ours.safetensors"))
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], tensors[k]) for k in tensors)
    assert recall_digest(tmp_path / "ours.safetensors") == entry  # the commit needs not read it again


def test_a_file_changed_after_writing_is_digested_again(tmp_path):
    path = tmp_path / "t.safetensors"
    write_tensors(path, {"x": torch.ones(4)})
    with path.open("r+b") as f:  # same size, other bytes: the remembered digest must not be used
        f.seek(-1, 2)
        f.write(b"\x01")
    import os

    os.utime(path, ns=(1, 1))
    assert recall_digest(path) is None


def test_new_manifests_use_xxh3_and_old_sha256_manifests_still_verify(tmp_path):
    cfg = tiny_config(training={"max_steps": 4, "warmup_steps": 1}, checkpoint={"every_steps": 2})
    Trainer(cfg, tmp_path / "run", log=quiet).fit()
    ckpt = list_checkpoints(tmp_path / "run" / "checkpoints")[-1].path
    doc = json.loads((ckpt / MANIFEST).read_text())
    assert all(set(e) == {"size", DIGEST} for e in doc["files"].values())
    assert all(e[DIGEST] == file_digest(ckpt / rel) for rel, e in doc["files"].items())
    # A checkpoint of an earlier release: SHA-256 entries.
    doc["files"] = {rel: {"size": e["size"], "sha256": file_digest(ckpt / rel, "sha256")}
                    for rel, e in doc["files"].items()}
    (ckpt / MANIFEST).write_text(json.dumps(doc))
    assert verify_checkpoint(ckpt) is None
    opt = ckpt / "optimizer.safetensors"
    data = bytearray(opt.read_bytes())
    data[-3] ^= 0x10
    opt.write_bytes(bytes(data))
    assert "does not match its SHA-256" in verify_checkpoint(ckpt)


def _entries(run) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]


@pytest.mark.parametrize("background", [False, True])
def test_every_save_logs_its_figures_and_the_run_says_what_saving_costs(tmp_path, background):
    said: list[str] = []
    cfg = tiny_config(training={"max_steps": 6, "warmup_steps": 1},
                      checkpoint={"every_steps": 2, "async": background, "keep_last": 10},
                      evaluation={"every_steps": 100, "at_epoch_end": False})
    Trainer(cfg, tmp_path / "run", log=lambda *a: said.append(" ".join(map(str, a)))).fit()
    saves = [e for e in _entries(tmp_path / "run") if e.get("event") == "save"]
    assert [e["step"] for e in saves] == [2, 4, 6]
    for e in saves:
        ckpt = tmp_path / "run" / "checkpoints" / f"step-{e['step']:07d}"
        on_disk = sum(entry["size"] for entry in json.loads((ckpt / MANIFEST).read_text())["files"].values())
        assert e["bytes"] == on_disk and e["mode"] == ("async" if background else "sync")
        assert 0 < e["blocked_s"] and 0 < e["write_s"] and e["mb_per_s"] > 0
        if not background:
            assert e["blocked_s"] == e["write_s"]  # a synchronous save holds training all along
    advice = [x for x in said if x.startswith("checkpoint: a save writes")]
    assert len(advice) == 1 and "saving every 2 steps slows training by about" in advice[0], said


def test_a_save_due_while_the_previous_is_written_waits_or_is_skipped_and_says_so(tmp_path):
    import time

    from chefgenius.checkpoint.layout import step_of

    trainers: list[Trainer] = []

    def outlast_one_step(directory):
        """Hold each background save until training has done the next step (and a little more), so
        that the next save, due one step later, finds it still being written."""
        step = step_of(directory.with_name(directory.name.split("-", 1)[1].rsplit("-", 1)[0]))
        if step is None:  # final/
            return
        deadline = time.monotonic() + 20
        while trainers[-1].state.step <= step < 5 and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.2 if step < 5 else 0)

    runs = {}
    for policy in ("wait", "skip"):
        said: list[str] = []
        cfg = tiny_config(training={"max_steps": 5, "warmup_steps": 1},
                          checkpoint={"every_steps": 1, "when_busy": policy, "keep_last": 10},
                          evaluation={"every_steps": 100, "at_epoch_end": False})
        trainers.append(Trainer(cfg, tmp_path / policy, log=lambda *a, s=said: s.append(" ".join(map(str, a))),
                                on_save_written=outlast_one_step))
        trainers[-1].fit()
        runs[policy] = said
    waited = [x for x in runs["wait"] if "waited" in x and "for the save of step" in x]
    assert len(waited) == 4, runs["wait"]  # saves 2..5 each waited for the one before
    assert [c.step for c in list_checkpoints(tmp_path / "wait" / "checkpoints")] == [1, 2, 3, 4, 5]
    skipped = [x for x in runs["skip"] if "skipped: the save of step" in x and "when_busy=skip" in x]
    kept = [c.step for c in list_checkpoints(tmp_path / "skip" / "checkpoints")]
    assert skipped and len(kept) + len(skipped) == 5 and kept[-1] == 5, runs["skip"]  # the end always saves
    from .test_resume import train_losses

    assert train_losses(tmp_path / "wait") == train_losses(tmp_path / "skip")  # saves never change training


def test_a_state_file_rewritten_from_tensors_mapped_from_it_is_written_whole(tmp_path):
    """safetensors maps the file it loads: rewriting that file from its own tensors must not truncate it
    under them (the reader would crash with SIGBUS)."""
    from chefgenius.checkpoint.format import load_state, save_state

    save_state(tmp_path, "opt", {"w": torch.arange(1 << 16, dtype=torch.float32), "n": 3})
    state = load_state(tmp_path, "opt")
    save_state(tmp_path, "opt", state)
    again = load_state(tmp_path, "opt")
    assert torch.equal(again["w"], torch.arange(1 << 16, dtype=torch.float32)) and again["n"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["opt.json", "opt.safetensors"]  # no part file left


@pytest.mark.parametrize("sizes", [[0], [1], [4095], [4096], [3, 8 << 20, 5], [(8 << 20) - 1, 2, 4097]])
def test_direct_writes_hold_exactly_the_bytes_written(tmp_path, sizes):
    """O_DIRECT writes go out in aligned blocks; the file is still exactly what was written, any size."""
    import os

    from chefgenius.durable.files import DirectFile, replace_durably

    g = torch.Generator().manual_seed(len(sizes))
    chunks = [torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g).numpy().tobytes() for n in sizes]
    if getattr(os, "O_DIRECT", 0):
        probe = DirectFile.open(tmp_path / "probe")
        assert probe is not None, "this filesystem refused O_DIRECT: the test proves nothing here"
        probe.__exit__(None, None, None)
    replace_durably(tmp_path / "f", lambda f: [f.write(c) for c in chunks], direct=True)
    assert (tmp_path / "f").read_bytes() == b"".join(chunks)
    assert [p.name for p in tmp_path.iterdir() if p.name != "probe"] == ["f"]  # no temporary left


def test_a_direct_write_the_filesystem_refuses_goes_on_buffered(tmp_path, monkeypatch):
    """EINVAL from an O_DIRECT write (a filesystem that accepted the flag at open only): the file is
    still written whole, buffered, instead of the save failing."""
    import errno
    import os

    from chefgenius.durable import files as fileio

    if not getattr(os, "O_DIRECT", 0):
        pytest.skip("no O_DIRECT on this platform")
    real_write, refused = os.write, []

    def write(fd, data):  # noqa: ANN001, ANN202
        import fcntl

        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(fileio.os, "write", write)
    data = bytes(range(256)) * 40_000
    fileio.replace_durably(tmp_path / "f", lambda f: f.write(data), direct=True)
    assert refused and (tmp_path / "f").read_bytes() == data


def _optimizer_like(n: int = 6) -> dict:
    g = torch.Generator().manual_seed(1)
    return {"state": {i: {"step": torch.tensor(3.0), "exp_avg": torch.randn(40 + i, 50, generator=g),
                          "exp_avg_sq": torch.rand(40 + i, 50, generator=g)} for i in range(n)},
            "param_groups": [{"lr": 0.1, "params": list(range(n))}]}


def test_a_large_piece_is_written_in_balanced_parts_and_reads_back_exactly(tmp_path, monkeypatch):
    from chefgenius.checkpoint import format as fmt

    state = _optimizer_like()
    total = sum(t.numel() * t.element_size() for s in state["state"].values() for t in s.values())
    monkeypatch.setattr(fmt, "PART_BYTES", total // 3)
    written = fmt.save_state(tmp_path, "optimizer", state)
    names = [p.name for p in written]
    assert names == ["optimizer.json"] + [f"optimizer-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    sizes = [p.stat().st_size for p in written[1:]]
    assert max(sizes) < 1.3 * min(sizes)  # balanced by bytes, not by count
    back = fmt.load_state(tmp_path, "optimizer")
    assert back["param_groups"] == state["param_groups"]
    for i, s in state["state"].items():
        assert all(torch.equal(back["state"][i][k], s[k]) for k in s)
    assert all(recall_digest(p) is not None for p in written[1:])  # digested while written, like one file
    # the same tensors give the same parts, file for file (a background save writes what a sync one would)
    again = tmp_path / "again"
    again.mkdir()
    fmt.save_state(again, "optimizer", state)
    assert all((again / p.name).read_bytes() == p.read_bytes() for p in written)


def test_a_damaged_or_foreign_part_list_is_refused_by_name(tmp_path, monkeypatch):
    from chefgenius.checkpoint import format as fmt
    from chefgenius.checkpoint.format import CheckpointFormatError

    monkeypatch.setattr(fmt, "PART_BYTES", 4096)
    fmt.save_state(tmp_path, "optimizer", _optimizer_like())
    doc = json.loads((tmp_path / "optimizer.json").read_text())
    parts = doc["tensor_files"]
    for listed, said in ((["../../etc/passwd", parts[1]], "lists tensor files"),
                         (parts[:1], "lists tensor files"), (parts[::-1], "lists tensor files")):
        (tmp_path / "optimizer.json").write_text(json.dumps({**doc, "tensor_files": listed}))
        with pytest.raises(CheckpointFormatError, match=said):
            fmt.load_state(tmp_path, "optimizer")
    (tmp_path / "optimizer.json").write_text(json.dumps(doc))
    first = load_file(str(tmp_path / parts[0]))
    save_file({**first, **load_file(str(tmp_path / parts[1]))}, str(tmp_path / parts[0]))  # a tensor in two parts
    with pytest.raises(CheckpointFormatError, match="stored in two of its parts"):
        fmt.load_state(tmp_path, "optimizer")
    (tmp_path / parts[1]).unlink()
    with pytest.raises(CheckpointFormatError, match=f"lacks {parts[1]}"):
        fmt.load_state(tmp_path, "optimizer", with_tensors=False)


@pytest.mark.parametrize("background", [False, True])
def test_a_run_whose_optimizer_is_saved_in_parts_resumes_exactly(tmp_path, monkeypatch, background):
    from chefgenius.checkpoint import format as fmt

    from .test_resume import assert_identical_runs, run_with_stops

    monkeypatch.setattr(fmt, "PART_BYTES", 64 << 10)  # the micro model's optimizer in several parts
    cfg = tiny_config(training={"max_steps": 8, "warmup_steps": 1}, checkpoint={"every_steps": 3, "async": background})
    Trainer(cfg, tmp_path / "straight", log=quiet).fit()
    run_with_stops(cfg, tmp_path / "resumed", [4])
    ckpt = list_checkpoints(tmp_path / "resumed" / "checkpoints")[-1].path
    assert len(list(ckpt.glob("optimizer-*-of-*.safetensors"))) >= 2 and not (ckpt / "optimizer.safetensors").exists()
    assert verify_checkpoint(ckpt) is None
    from chefgenius.checkpoint.inspection import inspect_checkpoint

    pieces = inspect_checkpoint(ckpt)["pieces"]  # `ckpt inspect` shows the parts, not an empty optimizer.json
    assert "optimizer.json" not in pieces and sum(p.startswith("optimizer-") for p in pieces) >= 2
    assert_identical_runs(tmp_path / "straight", tmp_path / "resumed")


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_the_checkpoints_model_is_what_save_pretrained_writes_digested_on_the_way(tmp_path, family):
    """save_pretrained decides what the model directory holds (tied weights dropped, config); inside
    a checkpoint only its file writer is ours: same bytes, digest known without reading the file."""
    from transformers import GPT2Config, GPT2LMHeadModel, T5Config, T5ForConditionalGeneration

    from chefgenius.checkpoint.hf_weights import direct_weights
    from chefgenius.durable.files import knows_digest

    torch.manual_seed(0)
    model = (GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=2))
             if family == "gpt2" else
             T5ForConditionalGeneration(T5Config(vocab_size=300, d_model=32, d_ff=64, d_kv=8, num_layers=2,
                                                 num_heads=2, decoder_start_token_id=0)))
    model.save_pretrained(str(tmp_path / "plain"))
    assert not knows_digest(tmp_path / "plain" / "model.safetensors")  # outside a checkpoint: untouched
    with direct_weights() as ours:
        model.save_pretrained(str(tmp_path / "ours"))
    assert ours
    for name in sorted(p.name for p in (tmp_path / "plain").iterdir()):
        assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name
    weights = tmp_path / "ours" / "model.safetensors"
    assert knows_digest(weights) and recall_digest(weights) == {"size": weights.stat().st_size,
                                                                DIGEST: file_digest(weights)}


def _checkpointers(root, log=lambda *a: None, on_written=None):
    """A background and a synchronous checkpointer over one run's checkpoints, tracking a tiny model."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from chefgenius.checkpoint.checkpointer import Checkpointer, ModelState
    from chefgenius.config import CheckpointConfig, TrainingConfig
    from chefgenius.data.loader import ResumableSampler
    from chefgenius.training.optim import build_scheduler
    from chefgenius.training.train_state import TrainState

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    states = {"scheduler": build_scheduler(opt, TrainingConfig(), 100),
              "sampler": ResumableSampler(list(range(1, 51)), batch_size=4, grad_accum=1, seed=0),
              "train_state": TrainState(step=1)}
    out = []
    for background in (True, False):
        ck = Checkpointer(root, CheckpointConfig(keep_last=5, keep_best=0, **{"async": background}), log,
                          on_written=on_written)
        ck.track(ModelState(model, opt, None), states, {"config": {}})
        out.append(ck)
    return out


@pytest.mark.skipif(not hasattr(__import__("os"), "SCHED_IDLE"), reason="SCHED_IDLE exists on Linux only")
def test_a_background_save_is_written_at_idle_priority_until_someone_waits_for_it(tmp_path):
    """Idle while training runs (a writer at training's priority stalls the intra-op team it
    preempts); normal as soon as training waits for it, so that a busy machine cannot make the
    wait longer than the write. A synchronous save runs at normal priority."""
    import os
    import threading
    import time

    entered, seen = threading.Event(), []

    def hook(directory) -> None:  # noqa: ANN001 - runs in the thread that commits the save
        tid = threading.get_native_id()
        seen.append(os.sched_getscheduler(tid))
        entered.set()
        deadline = time.monotonic() + 20
        while os.sched_getscheduler(tid) != os.SCHED_OTHER and time.monotonic() < deadline:
            time.sleep(0.005)
        seen.append(os.sched_getscheduler(tid))

    background, synchronous = _checkpointers(tmp_path / "ckpt", on_written=hook)
    background.save(1, val_loss=None)
    # This thread sleeps, so the idle writer gets a core once nothing else needs it (in a loaded
    # parallel suite that can take a while: the bound is generous, the test is not about speed).
    assert entered.wait(300)
    background.finish()
    synchronous.save(2, val_loss=None)
    assert seen[:2] == [os.SCHED_IDLE, os.SCHED_OTHER]  # idle while nobody waited, normal once waited for
    assert seen[2:] == [os.SCHED_OTHER, os.SCHED_OTHER]  # the synchronous save, on this thread
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    assert [c.step for c in list_checkpoints(tmp_path / "ckpt")] == [1, 2]


@pytest.mark.skipif(not hasattr(__import__("os"), "SCHED_IDLE"), reason="SCHED_IDLE exists on Linux only")
def test_a_refused_idle_priority_is_said_once_and_the_saves_still_commit(tmp_path, monkeypatch):
    """A sandbox may forbid sched_setscheduler (injected here: an unprivileged Linux process may always
    lower its priority, so the refusal cannot be produced for real on this machine)."""
    from chefgenius.checkpoint import priority

    def refuse(*a):  # noqa: ANN002, ANN202
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(priority.os, "sched_setscheduler", refuse)
    said: list[str] = []
    background, _ = _checkpointers(tmp_path / "ckpt", log=lambda *a: said.append(" ".join(map(str, a))))
    for step in (1, 2):
        background.save(step, val_loss=None)
        background.finish()
    warned = [x for x in said if "cannot run at idle priority" in x]
    assert len(warned) == 1 and "Operation not permitted" in warned[0] and "checkpoint.async: false" in warned[0]
    assert [c.step for c in list_checkpoints(tmp_path / "ckpt")] == [1, 2]
