"""Read-only views of checkpoints for ``chefgenius ckpt``: list, inspect, diff."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import safe_open

from chefgenius.checkpoint.format import CheckpointFormatError, load_state, tensor_files
from chefgenius.checkpoint.layout import MANIFEST, META, RNG, SAMPLER, TRAIN_STATE
from chefgenius.checkpoint.reading import checkpoint_problem
from chefgenius.checkpoint.store import list_checkpoints, read_checkpoint_manifest


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def list_run(run_dir: Path) -> list[dict[str, Any]]:
    """One row per checkpoint: step, epoch, val loss, size, validity; marks latest valid and best."""
    root = run_dir / "checkpoints" if (run_dir / "checkpoints").is_dir() else run_dir
    rows = []
    for info in list_checkpoints(root):
        problem = checkpoint_problem(info.path)
        meta: dict[str, Any] = {}
        sampler: dict[str, Any] = {}
        if problem is None:
            try:
                meta, sampler = load_state(info.path, META), load_state(info.path, SAMPLER)
                if not isinstance(meta, dict) or not isinstance(sampler, dict):
                    raise CheckpointFormatError("meta or sampler state is not a mapping")
            except CheckpointFormatError as err:
                problem, meta, sampler = str(err), {}, {}
        rows.append({"name": info.path.name, "step": info.step, "epoch": sampler.get("epoch"),
                     "val_loss": meta.get("val_loss"), "bytes": _dir_bytes(info.path),
                     "valid": problem is None, "problem": problem, "latest": False, "best": False})
    latest = next((r["step"] for r in reversed(rows) if r["valid"]), None)  # what --resume auto picks
    valid_losses = [(r["val_loss"], r["step"]) for r in rows if r["valid"] and r["val_loss"] is not None]
    best_step = min(valid_losses)[1] if valid_losses else None
    for r in rows:
        r["latest"] = r["step"] == latest
        r["best"] = r["step"] == best_step
    return rows


def _tensor_summary(path: Path) -> dict[str, int]:
    count, nbytes = 0, 0
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            sl = f.get_slice(key)
            shape = sl.get_shape()
            numel = 1
            for s in shape:
                numel *= s
            itemsize = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "U8": 1, "BOOL": 1, "F64": 8}.get(
                sl.get_dtype(), 4)
            count += 1
            nbytes += numel * itemsize
    return {"tensors": count, "bytes": nbytes}


def inspect_checkpoint(ckpt: Path) -> dict[str, Any]:
    """Everything a verified checkpoint holds, summarised; never unpickles. Call only after verify."""
    manifest = read_checkpoint_manifest(ckpt)
    meta, train_state, sampler = (load_state(ckpt, name) for name in (META, TRAIN_STATE, SAMPLER))
    if not all(isinstance(x, dict) for x in (meta, train_state, sampler)):
        raise CheckpointFormatError(f"{ckpt.name}: meta, train state or sampler is not a mapping (damaged or foreign)")
    out: dict[str, Any] = {"path": str(ckpt), "valid": True, "problem": None,
                           "format_version": manifest.get("format_version"),
                           "step": manifest.get("step"), "files": len(manifest["files"]), "pieces": {}}
    out["versions"] = meta.get("versions")
    out["config"] = meta.get("config")
    out["data"] = {k: meta.get(k) for k in ("train_fingerprint", "val_fingerprint", "split_seed")}
    out["position"] = {"step": train_state.get("step"), "epoch": sampler.get("epoch"),
                       "position": sampler.get("position"), "val_loss": meta.get("val_loss")}
    out["num_threads"] = meta.get("num_threads")
    out["processes"] = {"world_size": meta.get("world_size", 1), "grad_accum": meta.get("grad_accum"),
                        "global_batch": meta.get("global_batch")}
    # What the epoch has consumed so far: lost or repeated samples show as a count or digest mismatch.
    out["epoch_samples"] = {"epoch": sampler.get("epoch"), "consumed": sampler.get("consumed"),
                            "digest": sampler.get("digest"), "last_epoch": sampler.get("last_epoch")}
    for st in sorted(ckpt.rglob("*.safetensors")):
        out["pieces"][st.relative_to(ckpt).as_posix()] = _tensor_summary(st)
    for js in sorted(ckpt.glob("*.json")):
        doc = json.loads(js.read_text())
        has_tensors = bool(tensor_files(ckpt, js.stem, doc if isinstance(doc, dict) else {}, js))  # as the loader
        if js.name not in (MANIFEST, f"{META}.json") and not has_tensors:
            out["pieces"].setdefault(js.name, {"tensors": 0, "bytes": 0})
    rng = {}
    for rank_dir in sorted(ckpt.glob("rank-*")):
        state = load_state(rank_dir, RNG)
        rng[rank_dir.name] = [k for k in ("python", "numpy", "torch_cpu") if k in state] + (
            [f"cuda:{i}" for i in range(len(state.get("cuda") or []))])
    out["rng"] = rng
    out["train_state"] = {k: train_state.get(k) for k in ("step", "best_val_loss", "best_step", "num_bad_evals",
                                                            "stopped_early", "num_tokens")}
    out["train_state"]["resumes"] = len(train_state.get("resumes") or [])
    out["sampler"] = sampler
    return out


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def diff_checkpoints(a: Path, b: Path) -> dict[str, Any]:
    """Config, position and state-piece differences between two checkpoints."""
    ia, ib = inspect_checkpoint(a), inspect_checkpoint(b)
    out: dict[str, Any] = {}
    for section in ("config", "position", "data", "versions", "train_state", "sampler", "pieces"):
        fa, fb = _flat(ia.get(section) or {}), _flat(ib.get(section) or {})
        changed = {k: [fa.get(k), fb.get(k)] for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}
        if changed:
            out[section] = changed
    return out


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
