"""The CPU a background save's writer takes from training: this checkout against another one.

    python bench/writer_cpu.py --against PATH [--preset large] [--repeats 3]

A background save's writer shares the cores with training; every CPU second it spends (copying,
digesting, system calls) is a second training does not get on a machine whose cores training
fills. Each contender is a checkout (``src/`` of this one, and of ``--against``, e.g. a
``git worktree`` of an earlier commit), run in a fresh process: the same GPT-2 and AdamW state, one
snapshot into reused buffers, then ``write_snapshot`` timed with ``getrusage`` (user + system
seconds of the whole process, nothing else running in it), the first write left out (it allocates).
Contenders alternate in a shuffled order each repeat; each is named by its commit.
Writes bench/results/writer_cpu.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def measure(preset: str, writes: int) -> list[dict]:
    """In this process (PYTHONPATH chooses the chefgenius): CPU and wall seconds of ``writes`` saves."""
    import resource
    import shutil
    import tempfile
    import time

    from common import gpt2, with_adamw_state

    from chefgenius.checkpoint.snapshot import TensorBuffers, take_snapshot, write_snapshot

    model = gpt2(preset, n_positions=1024)
    opt = with_adamw_state(model, tokens=16)

    class Optimizer:
        def state_dict(self) -> dict:
            return opt.state_dict()

    buffers, out = TensorBuffers(), []
    with tempfile.TemporaryDirectory(dir=HERE.parent) as tmp:  # the disk checkpoints go to, not a tmpfs
        for i in range(writes + 1):
            snap = take_snapshot(model=model, pieces={"optimizer": Optimizer()}, meta={"step": i}, buffers=buffers)
            d = Path(tmp) / str(i)
            d.mkdir()
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            write_snapshot(d, snap, model=model, tokenizer=None)
            r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
            shutil.rmtree(d)
            if i:
                out.append({"cpu_s": r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime, "wall_s": t1 - t0,
                            "bytes": size})
    return out


def commit_of(checkout: Path) -> str:
    head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no", "--", "src"],
                           capture_output=True, text=True).stdout.strip()
    return (head or "unknown") + ("+dirty" if dirty else "")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--against", type=Path, required=True, help="another checkout (its src/ is imported)")
    ap.add_argument("--preset", choices=("micro", "tiny", "small", "base", "large"), default="large")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--writes", type=int, default=2, help="timed writes per process")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.preset, args.writes)))
        return
    from common import order_seed, paired, said, shuffled, write_result

    checkouts = {"this checkout": HERE.parent, "against": args.against.resolve()}
    names = {k: f"{k} ({commit_of(path)})" for k, path in checkouts.items()}
    samples: dict[str, list[dict]] = {k: [] for k in checkouts}
    seed = order_seed()
    for rep in range(args.repeats):
        for key in shuffled(checkouts, seed, rep):
            env = {**os.environ, "PYTHONPATH": str(checkouts[key] / "src")}
            done = subprocess.run([sys.executable, __file__, "--against", str(args.against), "--preset", args.preset,
                                   "--writes", str(args.writes), "--measure", "1"], env=env, capture_output=True,
                                  text=True, check=True)
            samples[key] += json.loads(done.stdout.strip().splitlines()[-1])
    med = {k: {m: statistics.median(s[m] for s in v) for m in ("cpu_s", "wall_s", "bytes")} for k, v in samples.items()}
    command = f"python bench/writer_cpu.py --against {args.against} --preset {args.preset} --repeats {args.repeats}"
    lines = ["# Background writer's CPU per save", "",
             f"`{command}`; GPT-2 {args.preset} + AdamW state, {args.writes} timed writes per process, "
             f"{args.repeats} processes per contender in a shuffled order; user + system CPU seconds of the "
             "process during `write_snapshot` (medians, with min-max).", "",
             "| contender | CPU s per save | min | max | wall s | bytes | CPU s per GB |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for k, v in samples.items():
        cpu = [s["cpu_s"] for s in v]
        per_gb = med[k]["cpu_s"] / med[k]["bytes"] * 1e9
        lines.append(f"| {names[k]} | {med[k]['cpu_s']:.3f} | {min(cpu):.3f} | {max(cpu):.3f} | "
                     f"{med[k]['wall_s']:.2f} | {med[k]['bytes']:,.0f} | {per_gb:.3f} |")
    ratio = med["this checkout"]["cpu_s"] / med["against"]["cpu_s"]

    def per_process(key: str) -> list[float]:  # each repeat's process: the median of its writes
        cpu = [s["cpu_s"] for s in samples[key]]
        return [statistics.median(cpu[i:i + args.writes]) for i in range(0, len(cpu), args.writes)]

    vs = paired(per_process("this checkout"), per_process("against"), higher_is_better=False)
    lines += ["", f"This checkout's writer takes {ratio:.2f}x the CPU of the other's per save (medians); paired "
              f"process by process: {said(vs)}."]
    write_result("writer_cpu", lines, {"command": command + f" (order seed {seed})", "contenders": names,
                                       "samples": samples, "medians": med, "cpu_ratio": round(ratio, 3),
                                       "paired": vs, "seed": seed})


if __name__ == "__main__":
    main()
