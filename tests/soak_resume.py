"""Soak test (not in CI): kill and resume one training run N times, then compare with a straight run.

    python -m tests.soak_resume --kills 100 --workdir /tmp/soak [--save-pause 0.2]

It lives with the tests because it drives their kill helpers (tests/soak.py).

Prints how many resumes succeeded and whether the final weights equal the uninterrupted run's.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from chefgenius.config import build_config
from chefgenius.training.trainer import Trainer
from tests.soak import kill_and_resume, slow_saves


def soak_config(num_epochs: int):
    return build_config({
        "data": {"max_prompt_tokens": 32, "max_target_tokens": 128},
        "model": {"from_scratch": "gpt2", "preset": "tiny", "vocab_size": 512},
        "training": {"num_epochs": num_epochs, "batch_size": 4, "grad_accum": 3, "warmup_steps": 5,
                     "num_threads": 1, "learning_rate": 0.002},
        "evaluation": {"every_steps": 10, "max_batches": 2, "prompts": [], "early_stopping_patience": None},
        "checkpoint": {"every_steps": 3, "keep_last": 2, "keep_best": 1},
        "logging": {"every_steps": 1, "progress_bar": False},
    })


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / "model.safetensors"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/chefgenius-soak"))
    ap.add_argument("--save-pause", type=float, default=0.0,
                    help="hold each save open this long in its (background) writer, so more kills hit a save")
    args = ap.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    cfg = soak_config(args.epochs)
    config_path = args.workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(cfg.to_dict()))
    t0 = time.time()
    torch.set_num_threads(1)
    Trainer(cfg, args.workdir / "straight", log=lambda *a: None).fit()
    print(f"uninterrupted run: {time.time() - t0:.0f}s", flush=True)
    t0 = time.time()
    result = kill_and_resume(config_path, args.workdir / "killed", num_kills=args.kills, seed=args.seed,
                             during_save_every=3, timeout_s=6 * 3600,
                             env=slow_saves(args.save_pause) if args.save_pause else None)
    a, b = weights(args.workdir / "straight"), weights(args.workdir / "killed")
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ok = result.exit_code == 0 and same
    print(f"kills: {result.kills} ({result.kills_during_save} during a checkpoint write); "
          f"resumes that succeeded: {result.resumes if result.exit_code == 0 else 'run failed'} of {result.kills}; "
          f"final exit code {result.exit_code}; final weights identical: {same}; {time.time() - t0:.0f}s")
    if not ok:
        print(result.log[-1], file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
