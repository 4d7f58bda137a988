"""What checkpointing costs a training run: every N steps (asynchronous, synchronous) vs only at the end.

    python bench/async_checkpoint.py [--preset large] [--steps 24] [--every 4] [--batch-size 1] [--repeats 2]

Each contender is one ``Trainer.fit`` of the same GPT-2 built from config (``large``: ~160M
parameters, 1.9 GB per checkpoint) on the bundled corpus, short sequences and a small batch so that
one save lasts several steps, training on every core (the default thread count: the background
writer competes with training for them, as it does for a user), no evaluation. Timed from the end
of step 1 to the end of ``fit`` (the final checkpoint and final/ included: every contender writes
them). Contenders run in a shuffled order each repeat. Per-save blocked and write times come from
the run's metrics.jsonl (``event: save``). The async target only applies when N steps take at least
1.5x a save; the table says whether they did.
Writes bench/results/async_checkpoint_everyN.{md,json} (``large``) or async_checkpoint_PRESET_everyN.{md,json}.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import judged, order_seed, paired, said, shuffled, train_config, write_result

DEVICE, PRECISION = "cpu", "fp32"


def raw_config(preset: str, steps: int, every: int, background: bool, batch: int) -> dict:
    return train_config(
        "gpt2", preset, 8000,
        data={"max_prompt_tokens": 32, "max_target_tokens": 64, "val_fraction": 0.1},
        model={"dropout": 0.0},
        training={"seed": 1, "max_steps": steps, "batch_size": batch, "learning_rate": 1e-4, "warmup_steps": 2,
                  "num_threads": None, "device": DEVICE, "precision": PRECISION},
        evaluation={"at_epoch_end": False, "max_batches": 1},
        checkpoint={"every_steps": every, "keep_last": 2, "keep_best": 0, "async": background},
        logging={"every_steps": 1})


def run(raw: dict, work: Path) -> tuple[float, int, list[dict], float]:
    from chefgenius.config import build_config
    from chefgenius.training.trainer import Trainer

    marks: dict[int, float] = {}

    def on_step(t: Trainer) -> None:
        marks[t.state.step] = time.perf_counter()

    trainer = Trainer(build_config(raw), work, log=lambda *a: None, on_step=on_step, resume="never")
    trainer.fit()
    end = time.perf_counter()
    params = sum(p.numel() for p in trainer.model.parameters())
    del trainer
    gc.collect()  # model, optimizer and snapshot buffers (~4 GB at 160M) before the next contender
    entries = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines() if x.strip()]
    saves = [e for e in entries if e.get("event") == "save"]
    return end - marks[1], params, saves, (marks[max(marks)] - marks[1]) / max(1, max(marks) - 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="large")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--every", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = ap.parse_args()
    global DEVICE, PRECISION
    DEVICE, PRECISION = args.device, args.precision
    contenders = {  # name: (every, checkpoint.async)
        "checkpoint only at the end": (10**9, True),
        f"every {args.every} steps, async (default)": (args.every, True),
        f"every {args.every} steps, synchronous": (args.every, False),
    }
    seed = order_seed()  # a new order every run, recorded with the result
    times: dict[str, list[float]] = {k: [] for k in contenders}
    saves: dict[str, list[dict]] = {k: [] for k in contenders}
    step_s: list[float] = []
    params = 0
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        os.environ["CHEFGENIUS_CACHE"] = str(Path(tmp) / "cache")
        run(raw_config(args.preset, 2, 10**9, True, args.batch_size), Path(tmp) / "warm")  # prepares the data once
        for rep in range(args.repeats):
            order = shuffled(contenders.items(), seed, rep)
            for i, (name, (every, background)) in enumerate(order):
                os.sync()
                seconds, params, logged, per_step = run(raw_config(args.preset, args.steps, every, background,
                                                                   args.batch_size), Path(tmp) / f"{rep}-{i}")
                times[name].append(seconds)
                saves[name] += [s for s in logged if s["step"] < args.steps]  # the final save is everyone's
                if every > args.steps:
                    step_s.append(per_step)
                print(f"{name}: {seconds:.2f} s", flush=True)
    load.append(os.getloadavg()[0])
    base = statistics.median(times["checkpoint only at the end"])
    rows = []
    for k, v in times.items():
        blocked = [s["blocked_s"] for s in saves[k]]
        written = [s["write_s"] for s in saves[k]]
        rows.append({"contender": k, "median_s": round(statistics.median(v), 3), "min_s": round(min(v), 3),
                     "max_s": round(max(v), 3), "vs_end_only": round(statistics.median(v) / base, 3),
                     "blocked_per_save_s": round(statistics.median(blocked), 3) if blocked else None,
                     "write_per_save_s": round(statistics.median(written), 3) if written else None,
                     "all_s": [round(x, 3) for x in v]})
    step = statistics.median(step_s)
    save = rows[2]["write_per_save_s"] or 0.0  # a synchronous save's duration
    interval_ok = args.every * step >= 1.5 * save
    command = (f"python bench/async_checkpoint.py --preset {args.preset} --steps {args.steps} --every {args.every} "
               f"--batch-size {args.batch_size} --repeats {args.repeats}"
               + (f" --device {args.device}" if args.device != "cpu" else "")
               + (f" --precision {args.precision}" if args.precision != "fp32" else ""))
    where = (f"{__import__('torch').cuda.get_device_name()}, {args.precision}" if args.device == "cuda"
             else f"default threads ({os.cpu_count()} cores)")
    # CPU (this machine): <= 1.10x whenever N steps take >= 1.5x a save; one H200 (issue 20): <= 1.5x saving
    # every 10 steps (2.47x before), <= 1.05x every 50
    target = 1.10 if args.device == "cpu" else 1.5 if args.every <= 10 else 1.05
    # The GPU targets hold whatever the interval (issue 46): only the CPU target has the 1.5-saves condition.
    # Paired repeat by repeat: each contender against the end-only run of the same repeat, with a 95%
    # bootstrap interval; a target is met only when the whole interval is on its side.
    end_only = times["checkpoint only at the end"]
    for r in rows:
        r["vs_end_only"] = paired(times[r["contender"]], end_only, higher_is_better=False)
        r["paired_vs_end_only"], r["lo95"], r["hi95"] = (r["vs_end_only"][k] for k in ("ratio", "lo95", "hi95"))
    default = rows[1]  # checkpoint.async: true, the default
    judged_default = judged(default["vs_end_only"], at_most=target)
    outcome = "does not apply" if not interval_ok and args.device == "cpu" else judged_default
    sync_vs_async = paired(times[rows[2]["contender"]], times[rows[1]["contender"]], higher_is_better=False)
    lines = ["# Checkpointing during a run", "",
             f"`{command}`; GPT-2 {args.preset} ({params / 1e6:.1f}M parameters) + AdamW, batch {args.batch_size}, "
             f"{where}, {args.steps} steps timed from step 1 to the end of `fit` "
             f"(final checkpoint and final/ included); median of {args.repeats}, shuffled order; load average "
             f"{load[0]:.2f} before, {load[1]:.2f} after.", "",
             "| contender | median s | min | max | vs only at the end, paired (95%) | blocked per save s | "
             "written per save s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['contender']} | {r['median_s']:.2f} | {r['min_s']:.2f} | {r['max_s']:.2f} | "
              f"{r['paired_vs_end_only']} ({r['lo95']}-{r['hi95']}) | "
              f"{r['blocked_per_save_s'] if r['blocked_per_save_s'] is not None else '-'} | "
              f"{r['write_per_save_s'] if r['write_per_save_s'] is not None else '-'} |" for r in rows]
    lines += ["", f"A step takes {step:.2f} s, so {args.every} steps take {args.every * step:.1f} s against "
              f"{save:.1f} s per synchronous save ({args.every * step / max(save, 1e-9):.2f}x; the async target "
              f"needs >= 1.5x on CPU: {'met' if interval_ok else 'NOT met'}). "
              f"Target (the default, asynchronous): every {args.every} steps <= {target:.2f}x only at the end, the "
              f"interval included: {default['paired_vs_end_only']}x "
              f"({default['lo95']}-{default['hi95']}): {outcome}. Synchronous against async, paired: "
              f"{said(sync_vs_async)} the time (the default loses if synchronous is faster). "
              f"Contenders in an order shuffled per repeat from seed {seed}."]
    name = ("async_checkpoint" if args.preset == "large" else f"async_checkpoint_{args.preset}") + (
        f"_cuda_every{args.every}" if args.device == "cuda" else f"_every{args.every}")
    write_result(name, lines, {"command": command, "parameters": params, "rows": rows, "step_s": step, "seed": seed,
                               "sync_vs_async": sync_vs_async, "target": outcome,
                               "interval_vs_save": round(args.every * step / max(save, 1e-9), 3), "load": load})


if __name__ == "__main__":
    main()
