"""chefgenius against its floor, the bare loop, paired repeat by repeat.

    python bench/throughput_pair.py [--family gpt2|t5] [--preset tiny] [--steps 60] [--repeats 8] [--quick]

throughput.py runs six contenders per repeat, so minutes pass between chefgenius and the bare loop
of one repeat, and this VM's speed drifts by 5-15% over minutes: a 3% difference between two
medians cannot be told from the drift. Here only the two run, back to back, in a shuffled order
each repeat, and the result is the median of the per-repeat ratios with their range: the question
"does chefgenius's loop add work a bare loop does not?" without the other contenders' minutes in
between. Same runners, model, data and settings as throughput.py (CPU, one thread).
Writes bench/results/throughput_pair_FAMILY_PRESET.{md,json}.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
from pathlib import Path

import throughput as tp
import torch
from common import write_result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="t5", choices=["gpt2", "t5"])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="one short repeat: a smoke test, no timing claims")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.repeats = tp.WARM + 6, 1
    torch.set_num_threads(1)
    raw = tp.raw_config(args.family, args.preset, args.steps, True)
    runs: dict[str, list[float]] = {"bare": [], "chefgenius": []}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CHEFGENIUS_CACHE"] = str(Path(tmp) / "cache")
        tp.run_bare(raw)  # warm-up: the first training of a process pays for lazy imports and allocations
        tp.run_chefgenius(raw, Path(tmp) / "warm")
        for rep in range(args.repeats):
            order = list(runs)
            random.Random(rep).shuffle(order)
            for name in order:
                runs[name].append(tp.run_bare(raw) if name == "bare" else tp.run_chefgenius(raw, Path(tmp) / f"r{rep}"))
            print(f"repeat {rep}: bare {runs['bare'][-1]:.0f}, chefgenius {runs['chefgenius'][-1]:.0f} tokens/s",
                  flush=True)
    ratios = [c / b for c, b in zip(runs["chefgenius"], runs["bare"])]
    ratio = statistics.median(ratios)
    command = (f"python bench/throughput_pair.py --family {args.family} --preset {args.preset} --steps {args.steps} "
               f"--repeats {args.repeats}")
    name = "GPT-2" if args.family == "gpt2" else "T5"
    lines = [f"# chefgenius against the bare loop, paired: {name} {args.preset}", "",
             f"`{command}`; the runners of throughput.py (same model, data, batches, fp32, CPU, one thread), "
             f"only these two contenders, back to back in a shuffled order each repeat; warm-up run of each first.",
             "", "| repeat | bare loop tokens/s | chefgenius tokens/s | chefgenius / bare |", "|---:|---:|---:|---:|"]
    lines += [f"| {i} | {b:.0f} | {c:.0f} | {c / b:.3f} |"
              for i, (b, c) in enumerate(zip(runs["bare"], runs["chefgenius"]))]
    lines += ["", f"Median of the paired ratios: chefgenius **{ratio:.3f}x** the bare loop (repeats {min(ratios):.3f}-"
              f"{max(ratios):.3f}; target >= 0.95); faster in {sum(r > 1 for r in ratios)} of {len(ratios)} repeats."
              + (" **chefgenius beats its bare-loop floor by more than 3%: the floor is wrong.**"
                 if ratio > 1.03 and not args.quick else "")]
    write_result(f"throughput_pair_{args.family}_{args.preset}", lines,
                 {"command": command, "family": args.family, "preset": args.preset, "steps": args.steps,
                  "repeats": args.repeats, "quick": args.quick, "bare": [round(x) for x in runs["bare"]],
                  "chefgenius": [round(x) for x in runs["chefgenius"]], "ratios": [round(r, 4) for r in ratios],
                  "median_ratio": round(ratio, 4)})


if __name__ == "__main__":
    main()
