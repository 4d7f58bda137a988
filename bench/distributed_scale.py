"""Multi-process scaling on this machine, and the cost of the fixed-order gradient sum.

    python bench/distributed_scale.py [--steps 60] [--repeats 3] [--preset small]

Contenders, run one after the other (never at once) in a shuffled order each repeat, same model, data,
global batch (16), random batches and seed:
  1 process, accumulation 2 (1 and 2 threads)  |  2 processes DDP, ordered (CPU default)
  |  2 processes DDP, tree all-reduce
  |  2 processes FSDP2  |  the Hugging Face Trainer with DDP on the same 2 processes (accelerate, gloo:
  bench/hf_ddp_worker.py).
"ordered" is the rank-order sum that keeps a resume bit-exact with any number of processes; with
exactly 2 it runs the same all-reduce as "tree all-reduce" (one addition per element: equal bits), so
the two rows differ only by noise; before 7b9b49c it gathered and cost 8% (docs/benchmarks.md).
Throughput is target tokens per second of the training loop: the median of its 10-step windows after
the first (which holds warm-up), so process start-up is not counted; for chefgenius the windows are
logged in metrics.jsonl, for the Trainer a callback marks every 10th step on each rank (a window: every
rank's tokens over the slowest rank's time).
Writes bench/results/distributed_scale.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from common import order_seed, paired, said, shuffled, train_config, write_result

HF = "2 processes, Hugging Face Trainer DDP (accelerate, tree all-reduce)"


def config(preset: str, steps: int, grad_accum: int, sharding: str, reduction: str, threads: int = 1) -> dict:
    return train_config(
        "gpt2", preset, 1000,
        data={"max_prompt_tokens": 32, "max_target_tokens": 128, "val_fraction": 0.1},
        model={"dropout": 0.0, "sharding": sharding},
        training={"seed": 1, "max_steps": steps, "batch_size": 8, "grad_accum": grad_accum, "group_by_length": False,
                  "num_threads": threads, "reduction": reduction, "warmup_steps": 5},
        evaluation={"max_batches": 1}, checkpoint={"every_steps": 10_000}, logging={"every_steps": 10})


def run_one(name: str, nproc: int, cfg: dict, work: Path, env: dict[str, str]) -> float:
    run_dir = work / name
    cfg_path = work / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "chefgenius", "train", "-c", str(cfg_path), "-o", str(run_dir), "--no-sample",
           "--resume", "never"]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][1:]
    return statistics.median(rates)


def run_hf_ddp(name: str, cfg: dict, work: Path, env: dict[str, str]) -> float:
    out = work / name
    out.mkdir()
    (work / f"{name}.json").write_text(json.dumps(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(Path(__file__).resolve().parent / "hf_ddp_worker.py"), str(work / f"{name}.json"), str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    ranks = [{step: mark for step, mark in json.loads((out / f"rank{r}.json").read_text())["marks"]} for r in range(2)]
    steps = sorted(ranks[0])[1:]  # windows of 10 steps after the first, as chefgenius logs them
    rates = [sum(m[b][1] - m[a][1] for m in ranks) / max(m[b][0] - m[a][0] for m in ranks)
             for a, b in zip(steps, steps[1:])]
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--seed", type=int, default=None, help="the order's seed (default: a fresh one, recorded)")
    args = ap.parse_args()
    args.seed = order_seed(args.seed)
    contenders = [
        ("1 process, accumulation 2", 1, config(args.preset, args.steps, 2, "ddp", "auto")),
        ("1 process, 2 threads, accumulation 2", 1, config(args.preset, args.steps, 2, "ddp", "auto", threads=2)),
        ("2 processes DDP, ordered (CPU default)", 2, config(args.preset, args.steps, 1, "ddp", "ordered")),
        ("2 processes DDP, tree all-reduce", 2, config(args.preset, args.steps, 1, "ddp", "allreduce")),
        ("2 processes FSDP2", 2, config(args.preset, args.steps, 1, "fsdp", "auto")),
        (HF, 2, config(args.preset, args.steps, 1, "ddp", "allreduce")),
    ]
    results: dict[str, list[float]] = {name: [] for name, _, _ in contenders}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "CHEFGENIUS_CACHE": str(Path(tmp) / "cache")}
        for rep in range(args.repeats):
            order = shuffled(enumerate(contenders), args.seed, rep)
            work = Path(tmp) / f"r{rep}"
            work.mkdir()
            for i, (name, nproc, cfg) in order:
                results[name].append(run_hf_ddp(f"c{i}", cfg, work, env) if name == HF
                                     else run_one(f"c{i}", nproc, cfg, work, env))
                print(f"{name}: {results[name][-1]:.0f} tokens/s", flush=True)
    base = statistics.median(results[contenders[0][0]])
    ordered = statistics.median(results["2 processes DDP, ordered (CPU default)"])
    hf = statistics.median(results[HF])
    rows = []
    for name, _, _ in contenders:
        med = statistics.median(results[name])
        rows.append({"contender": name, "median_tokens_per_s": round(med), "min": round(min(results[name])),
                     "max": round(max(results[name])), "vs_1_process": round(med / base, 3),
                     "vs_ordered": round(med / ordered, 3), "vs_hf_ddp": round(med / hf, 3),
                     "all": [round(x) for x in results[name]]})
    command = (f"python bench/distributed_scale.py --steps {args.steps} --repeats {args.repeats} "
               f"--preset {args.preset} --seed {args.seed}")
    lines = ["# Multi-process scaling (CPU, gloo)", "", f"`{command}`; GPT-2 {args.preset} from scratch, global "
             f"batch 16, one thread per process unless said; median of {args.repeats} runs, training-loop tokens/s "
             "(start-up excluded).", "",
             "| contender | tokens/s (median) | min | max | vs 1 process | vs ordered sum | vs HF Trainer DDP |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['contender']} | {r['median_tokens_per_s']} | {r['min']} | {r['max']} | {r['vs_1_process']} | "
              f"{r['vs_ordered']} | {r['vs_hf_ddp']} |" for r in rows]
    vs = {"tree_vs_hf_ddp": paired(results["2 processes DDP, tree all-reduce"], results[HF]),
          "ordered_vs_hf_ddp": paired(results["2 processes DDP, ordered (CPU default)"], results[HF]),
          "fsdp2_vs_hf_ddp": paired(results["2 processes FSDP2"], results[HF]),
          "ordered_vs_1_process": paired(results["2 processes DDP, ordered (CPU default)"], results[contenders[0][0]])}
    lines += ["", "Like for like, paired repeat by repeat (tokens/s ratios, 95% bootstrap interval): 2 processes, "
              f"random batches, tree all-reduce: chefgenius {said(vs['tree_vs_hf_ddp'])} the Hugging Face Trainer "
              f"with DDP; with the default on CPU (rank-order sum, bit-exact resume with any number of processes; "
              f"at 2 processes the same all-reduce) {said(vs['ordered_vs_hf_ddp'])}; FSDP2 "
              f"{said(vs['fsdp2_vs_hf_ddp'])}. Two processes against one: {said(vs['ordered_vs_1_process'])}."]
    write_result("distributed_scale", lines, {"command": command, "preset": args.preset, "steps": args.steps,
                                              "repeats": args.repeats, "global_batch": 16, "rows": rows,
                                              "paired": vs, "seed": args.seed})

if __name__ == "__main__":
    main()
