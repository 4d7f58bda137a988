"""The save pipeline: files digested while written, the manifest's digests, per-save figures, busy saves."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from chefgenius.checkpoint import list_checkpoints, verify_checkpoint
from chefgenius.checkpoint.layout import MANIFEST
from chefgenius.checkpoint.tensorfile import write_tensors
from chefgenius.fileio import DIGEST, file_digest, recall_digest
from chefgenius.trainer import Trainer

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
