"""What checkpointing costs a training run: every 10 steps (asynchronous, synchronous) vs only at the end.

    python bench/async_checkpoint.py [--preset small] [--steps 60] [--repeats 3]

Each contender is one ``Trainer.fit`` of the same GPT-2 on the bundled corpus (batch 8, fp32, one
torch thread, no evaluation), timed from the end of step 1 to the end of ``fit`` (the final
checkpoint and final/ included: every contender writes them). Contenders alternate within each
repetition. Issue 10's target: every 10 steps asynchronously <= 1.05x only at the end.
Writes bench/results/async_checkpoint.{md,json}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import write_result


def raw_config(preset: str, steps: int, every: int, background: bool) -> dict:
    return {
        "data": {"max_prompt_tokens": 48, "max_target_tokens": 192, "val_fraction": 0.1},
        "model": {"from_scratch": "gpt2", "preset": preset, "vocab_size": 8000, "dropout": 0.0},
        "training": {"seed": 1, "max_steps": steps, "batch_size": 8, "learning_rate": 1e-3, "warmup_steps": 5,
                     "num_threads": 1},
        "evaluation": {"every_steps": None, "at_epoch_end": False, "early_stopping_patience": None,
                       "prompts": [], "max_batches": 1},
        "checkpoint": {"every_steps": every, "keep_last": 2, "keep_best": 0, "async": background},
        "logging": {"every_steps": 10, "progress_bar": False},
    }


def run(raw: dict, work: Path) -> tuple[float, int]:
    from chefgenius.config import build_config
    from chefgenius.trainer import Trainer

    marks: dict[str, float] = {}

    def on_step(t: Trainer) -> None:
        if t.state.step == 1:
            marks["start"] = time.perf_counter()

    trainer = Trainer(build_config(raw), work, log=lambda *a: None, on_step=on_step, resume="never")
    trainer.fit()
    params = sum(p.numel() for p in trainer.model.parameters())
    return time.perf_counter() - marks["start"], params


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    contenders = {
        "checkpoint only at the end": (10**9, True),
        f"every {args.every} steps, async (default)": (args.every, True),
        f"every {args.every} steps, synchronous": (args.every, False),
    }
    times: dict[str, list[float]] = {k: [] for k in contenders}
    params = 0
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CHEFGENIUS_CACHE"] = str(Path(tmp) / "cache")
        run(raw_config(args.preset, 3, 10**9, True), Path(tmp) / "warm")  # prepares the data once
        for rep in range(args.repeats):
            for i, (name, (every, background)) in enumerate(contenders.items()):
                seconds, params = run(raw_config(args.preset, args.steps, every, background), Path(tmp) / f"{rep}-{i}")
                times[name].append(seconds)
                print(f"{name}: {seconds:.2f} s", flush=True)
    base = statistics.median(times["checkpoint only at the end"])
    rows = [{"contender": k, "median_s": round(statistics.median(v), 3), "min_s": round(min(v), 3),
             "max_s": round(max(v), 3), "vs_end_only": round(statistics.median(v) / base, 3),
             "all_s": [round(x, 3) for x in v]} for k, v in times.items()]
    command = f"python bench/async_checkpoint.py --preset {args.preset} --steps {args.steps} --repeats {args.repeats}"
    lines = ["# Checkpointing during a run", "",
             f"`{command}`; GPT-2 {args.preset} ({params / 1e6:.1f}M parameters) + AdamW, batch 8, one torch "
             f"thread, {args.steps} steps timed from step 1 to the end of `fit` (final checkpoint and final/ "
             f"included); median of {args.repeats}.", "",
             "| contender | median s | min | max | vs only at the end |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['contender']} | {r['median_s']:.2f} | {r['min_s']:.2f} | {r['max_s']:.2f} | {r['vs_end_only']} |"
              for r in rows]
    lines += ["", f"Target: every {args.every} steps asynchronously <= 1.05x only at the end: "
              f"{rows[1]['vs_end_only']}x."]
    write_result("async_checkpoint", lines, {"command": command, "parameters": params, "rows": rows})


if __name__ == "__main__":
    main()
