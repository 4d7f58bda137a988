"""The prepared dataset: equal to the in-memory path, keyed by what made it, crash-safe, mapped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from chefgenius.config import build_config
from chefgenius.data import prepared as prepared_mod
from chefgenius.data import sources
from chefgenius.data.loader import ResumableSampler, make_batch
from chefgenius.data.prepared import prepare_dataset
from chefgenius.data.recipe_format import recipe_to_example
from chefgenius.data.sources import bundled_corpus_path
from chefgenius.data.tokenization import tokenizer_digest
from chefgenius.data.tokenizer import train_tokenizer

from .conftest import SHARED_DATA, quiet
from .reference_data import prepare_recipes, tokenize_recipes


def _data_cfg(path: Path | None, **over):
    return build_config({"data": {"path": str(path) if path else None, "max_prompt_tokens": 24,
                                  "max_target_tokens": 96, **over}}).data


@pytest.mark.parametrize("is_seq2seq", [False, True])
def test_prepared_equals_the_in_memory_path_on_the_recipenlg_sample(tmp_path, monkeypatch, is_seq2seq):
    path = SHARED_DATA / "recipenlg-sample-1k.csv"
    if not path.exists():
        pytest.skip(f"{path} absent (shared data folder not provided)")
    monkeypatch.setattr(sources, "ARROW_BLOCK_BYTES", 48 << 10)  # many Arrow batches over two workers:
    monkeypatch.setattr(prepared_mod, "CHUNK_ROWS", 97)  # the merge must keep order
    cfg = _data_cfg(path)
    direct = prepare_recipes(cfg)
    tok = train_tokenizer([p + "\n" + t for p, t in (recipe_to_example(r) for r in direct.train)], 600)
    ds = prepare_dataset(cfg, is_seq2seq=is_seq2seq, tokenizer=None, vocab_size=600, cache_dir=tmp_path,
                         log=quiet, workers=2)
    assert tokenizer_digest(ds.tokenizer()) == tokenizer_digest(tok)
    assert (ds.train_fingerprint, ds.val_fingerprint) == (direct.train_fingerprint, direct.val_fingerprint)
    rep = ds.report
    assert (rep.num_read, rep.num_kept, dict(rep.dropped), dict(rep.repaired)) == (
        direct.report.num_read, direct.report.num_kept, dict(direct.report.dropped), dict(direct.report.repaired))
    for side, recipes in (("train", direct.train), ("val", direct.val)):
        stored = getattr(ds, side)
        reference = tokenize_recipes(recipes, tok, is_seq2seq=is_seq2seq, max_prompt_tokens=24,
                                     max_target_tokens=96, mask_prompt=True)
        assert len(stored) == len(reference) > 0
        assert stored.lengths().tolist() == reference.lengths().tolist()
        for i in range(len(stored)):
            a, b = stored.example(i), reference.example(i)
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), (side, i)
    texts = ds.eval_texts("val")
    assert texts[0]["target"] == recipe_to_example(direct.val[0])[1]


def test_duplicates_within_and_across_chunks_are_dropped_as_the_in_memory_path_drops_them(tmp_path, monkeypatch):
    lines = bundled_corpus_path().read_text().splitlines()
    source = tmp_path / "recipes.jsonl"
    with source.open("w") as f:
        for i, line in enumerate(lines):
            f.write(line + "\n")
            if i % 4 == 0:  # the same recipe again, in the same chunk
                f.write(line + "\n")
            if i % 5 == 1:  # the same content in other case and spacing: the same content hash
                row = json.loads(line)
                f.write(json.dumps({**row, "title": "  " + row["title"].upper() + " !"}) + "\n")
        f.write("\n".join(lines[:30:2]) + "\n")  # and again chunks later
    monkeypatch.setattr(prepared_mod, "CHUNK_ROWS", 7)
    cfg = _data_cfg(source)
    direct = prepare_recipes(cfg)
    assert direct.report.dropped["duplicate"] > 40
    tok = train_tokenizer([p + "\n" + t for p, t in (recipe_to_example(r) for r in direct.train)], 400)
    ds = prepare_dataset(cfg, is_seq2seq=False, tokenizer=tok, vocab_size=None, cache_dir=tmp_path / "c",
                         log=quiet, workers=2)
    assert ds.report.to_dict() == direct.report.to_dict()  # counts and the first examples of each reason
    assert (ds.train_fingerprint, ds.val_fingerprint) == (direct.train_fingerprint, direct.val_fingerprint)
    for side, recipes in (("train", direct.train), ("val", direct.val)):
        stored = getattr(ds, side)
        reference = tokenize_recipes(recipes, tok, is_seq2seq=False, max_prompt_tokens=24,
                                     max_target_tokens=96, mask_prompt=True)
        assert stored.lengths().tolist() == reference.lengths().tolist()
        assert all(torch.equal(stored.example(i)[0], reference.example(i)[0]) for i in range(len(stored)))
    assert [t["target"] for t in ds.eval_texts("val")] == [recipe_to_example(r)[1] for r in direct.val][:len(
        ds.eval_texts("val"))]


def test_a_changed_source_byte_makes_a_new_dataset_and_the_old_one_comes_back(tmp_path):
    source = tmp_path / "recipes.jsonl"
    source.write_bytes(bundled_corpus_path().read_bytes())
    stat = source.stat()
    cfg = _data_cfg(source)
    logs: list[str] = []

    def prepare():
        return prepare_dataset(cfg, is_seq2seq=False, tokenizer=None, vocab_size=400, cache_dir=tmp_path / "c",
                               log=logs.append, workers=1).path

    first = prepare()
    data = bytearray(source.read_bytes())
    at = data.index(b"onion")
    data[at:at + 5] = b"oni0n"  # same size, and the mtime is put back below
    source.write_bytes(bytes(data))
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    changed = prepare()
    assert changed != first and " built in " in logs[-1]
    source.write_bytes(bundled_corpus_path().read_bytes())
    assert prepare() == first and " reused " in logs[-1]


def test_killed_preparation_leaves_nothing_that_passes_for_complete(tmp_path):
    path = SHARED_DATA / "recipenlg-sample-1k.csv"
    if not path.exists():
        pytest.skip(f"{path} absent (shared data folder not provided)")
    big = tmp_path / "big.csv"
    lines = path.read_text().splitlines(keepends=True)
    with big.open("w") as f:  # 5 copies with distinct titles: a few seconds of preparation
        f.write(lines[0])
        for copy in range(5):
            for line in lines[1:]:
                f.write(line.replace(",", f",copy{copy} ", 1) if line[:1].isdigit() else line)
    env = {**os.environ, "CHEFGENIUS_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "chefgenius.cli", "data", "prepare", str(big), "--set", "model.vocab_size=400"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = tmp_path / "cache" / "prepared"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if root.is_dir() and any(p.name.startswith(".tmp-") for p in root.iterdir()):
            break
        time.sleep(0.005)
    assert proc.poll() is None, "preparation finished before it could be killed"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not [p for p in root.iterdir() if len(p.name) == 24]  # no store was committed
    done = subprocess.run(cmd, env=env, capture_output=True, timeout=300)  # bytes: text mode would hide a \r
    assert done.returncode == 0, done.stderr.decode()
    assert b"bytes/token" in done.stdout
    assert b"\r" not in done.stderr  # stderr is no terminal: no live bars piling up in a log
    stores = [p for p in root.iterdir() if len(p.name) == 24]
    assert len(stores) == 1 and not [p for p in root.iterdir() if p.name.startswith(".tmp-")]
    meta = json.loads((stores[0] / "meta.json").read_text())
    clean = prepare_dataset(_data_cfg(big), is_seq2seq=False, tokenizer=None, vocab_size=400,
                            cache_dir=tmp_path / "clean", log=quiet, workers=1)
    assert meta["fingerprints"] == clean.meta["fingerprints"] and meta["counts"] == clean.meta["counts"]


def test_mapped_split_with_the_sampler_across_an_epoch_boundary(tmp_path):
    cfg = _data_cfg(None)
    ds = prepare_dataset(cfg, is_seq2seq=False, tokenizer=None, vocab_size=400, cache_dir=tmp_path, log=quiet,
                         workers=1)
    assert isinstance(ds.train._src, torch.Tensor) is False and ds.train._src.__class__.__name__ == "memmap"
    direct = prepare_recipes(cfg)
    reference = tokenize_recipes(direct.train, ds.tokenizer(), is_seq2seq=False, max_prompt_tokens=24,
                                 max_target_tokens=96, mask_prompt=True)

    def sampler():
        return ResumableSampler(ds.train.lengths(), batch_size=4, grad_accum=3, seed=5, group_by_length=True)

    straight, seen = sampler(), []
    steps = [straight.next_step() for _ in range(3 * straight.steps_per_epoch)]
    for epoch in range(3):
        per_epoch = steps[epoch * straight.steps_per_epoch:(epoch + 1) * straight.steps_per_epoch]
        seen = sorted(i for step in per_epoch for mb in step for i in mb)
        assert seen == list(range(len(ds.train)))  # each sample exactly once per epoch
    # Stop one step before the epoch ends, resume in a new sampler: the same steps follow.
    resumed = sampler()
    for _ in range(straight.steps_per_epoch - 1):
        resumed.next_step()
    state = resumed.state_dict()
    again = sampler()
    again.load_state_dict(state)
    tail = [again.next_step() for _ in range(2 * straight.steps_per_epoch + 1)]
    assert tail == steps[straight.steps_per_epoch - 1:]
    for step in tail[:3]:
        for mb in step:
            a = make_batch(ds.train, mb, 0, torch.device("cpu"))
            b = make_batch(reference, mb, 0, torch.device("cpu"))
            assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_processes_preparing_the_same_dataset_build_it_once(tmp_path):
    env = {**os.environ, "CHEFGENIUS_CACHE": str(tmp_path / "cache")}
    source = tmp_path / "recipes.jsonl"
    source.write_bytes(bundled_corpus_path().read_bytes())
    cmd = [sys.executable, "-m", "chefgenius.cli", "data", "prepare", str(source), "--set", "model.vocab_size=400"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert sorted(" built in " in out for out in outs) == [False, True]
    assert sum(" reused " in out for out in outs) == 1
    assert len([p for p in (tmp_path / "cache" / "prepared").iterdir() if len(p.name) == 24]) == 1
