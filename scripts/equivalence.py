"""Digest of what a set of training runs produce: final weights (per tensor) and the loss at every step.

Run it before and after a change that must not change numbers (a refactor), then compare:

    python scripts/equivalence.py --out /tmp/before.json            # at the old commit
    python scripts/equivalence.py --out /tmp/after.json --compare /tmp/before.json

Each case is a real ``chefgenius train`` process (a fresh data cache each), covering the paths a
refactor of the trainer can disturb: the README's default run, DDP and FSDP on two processes, LoRA,
a seq2seq model, synchronous saves, evaluation samples and copy weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# A short run of the tiny model that still evaluates, generates samples, checkpoints and retains.
SHORT = ["--set", "training.max_steps=24", "--set", "evaluation.every_steps=10", "--set", "checkpoint.every_steps=8",
         "--set", "logging.every_steps=2", "--set", "training.num_threads=1", "--set", "data.max_target_tokens=96",
         "--set", "evaluation.max_batches=2", "--set", "evaluation.max_new_tokens=24"]

CASES: dict[str, list[str]] = {
    "default": [],  # the README's main job, unchanged
    "ddp2": ["--nproc", "2", *SHORT],
    "fsdp2": ["--nproc", "2", "--set", "model.sharding=fsdp", *SHORT],
    "lora": ["--set", "model.use_lora=true", *SHORT],
    "t5": ["--set", "model.from_scratch=t5", *SHORT],
    "sync_copy_weight": ["--set", "checkpoint.async=false", "--set", "training.copy_weight=3", *SHORT],
}


def tensor_digests(directory: Path) -> dict[str, str]:
    from safetensors.torch import load_file

    out: dict[str, str] = {}
    for f in sorted(directory.rglob("*.safetensors")):
        for name, t in sorted(load_file(str(f)).items()):
            key = f"{f.relative_to(directory)}:{name}"
            out[key] = hashlib.sha256(t.contiguous().view(-1).view(__import__("torch").uint8).numpy().tobytes()
                                      + str((t.dtype, tuple(t.shape))).encode()).hexdigest()[:16]
    return out


def losses(run: Path) -> list[list[float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [[r["step"], r["loss"]] for r in rows if "loss" in r] + [[r["step"], r["eval_loss"]]
                                                                    for r in rows if "eval_loss" in r]


def run_case(name: str, args: list[str], root: Path) -> dict[str, object]:
    run = root / name
    env = {**os.environ, "CHEFGENIUS_CACHE": str(root / f"cache-{name}")}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "chefgenius", "train", "-o", str(run), "--no-sample", *args],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return {"seconds": round(time.perf_counter() - t0, 1), "weights": tensor_digests(run / "final"),
            "losses": losses(run)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--compare", type=Path, help="an earlier --out to compare with (exit 1 on any difference)")
    ap.add_argument("--only", nargs="*", help="case names to run (default: all)")
    a = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result: dict[str, object] = {"commit": commit, "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, args in CASES.items():
            if a.only and name not in a.only:
                continue
            result["cases"][name] = run_case(name, args, Path(tmp))
            print(f"{name}: {result['cases'][name]['seconds']} s", flush=True)
    a.out.write_text(json.dumps(result, indent=1))
    if a.compare:
        before = json.loads(a.compare.read_text())["cases"]
        bad = 0
        for name, case in result["cases"].items():
            ref = before.get(name)
            if ref is None:
                print(f"{name}: not in {a.compare}")
                continue
            same_w, same_l = case["weights"] == ref["weights"], case["losses"] == ref["losses"]
            print(f"{name}: weights {'identical' if same_w else 'DIFFER'} ({len(case['weights'])} tensors), "
                  f"losses {'identical' if same_l else 'DIFFER'} ({len(case['losses'])} entries)")
            bad += not (same_w and same_l)
        raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
