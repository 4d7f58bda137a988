"""chefgenius against one peer (the bare loop, or the HF Trainer on identical batches), paired.

    python bench/throughput_pair.py [--against bare|hf] [--family gpt2|t5] [--preset tiny] [--steps 60]
                                    [--repeats 8] [--quick]

throughput.py runs six contenders per repeat, so minutes pass between chefgenius and the bare loop
of one repeat, and this VM's speed drifts by 5-15% over minutes: a 3% difference between two
medians cannot be told from the drift. Here only the two run, back to back, in a shuffled order
each repeat, and the result is the median of the per-repeat ratios with its 95% bootstrap interval. Same runners,
model, data and settings as throughput.py (CPU, one thread); the HF Trainer gets chefgenius's exact
batches. Writes bench/results/throughput_pair_FAMILY_PRESET[_hf].{md,json}.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import throughput as tp
import torch
from common import MIN_REPEATS, judged, order_seed, paired, said, shuffled, write_result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--against", default="bare", choices=["bare", "hf"])
    ap.add_argument("--family", default="t5", choices=["gpt2", "t5"])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="one short repeat: a smoke test, no timing claims")
    ap.add_argument("--seed", type=int, default=None, help="the order's seed (default: a fresh one, recorded)")
    args = ap.parse_args()
    args.seed = order_seed(args.seed)
    if args.quick:
        args.steps, args.repeats = tp.WARM + 6, 1
    torch.set_num_threads(1)
    raw = tp.raw_config(args.family, args.preset, args.steps, True)
    peer, target = ("bare loop", 0.95) if args.against == "bare" else ("HF Trainer, same batches", 1.0)
    runs: dict[str, list[float]] = {peer: [], "chefgenius": []}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CHEFGENIUS_CACHE"] = str(Path(tmp) / "cache")

        def run(name: str, work: Path) -> float:
            work.mkdir()
            if name == "chefgenius":
                return tp.run_chefgenius(raw, work).per_s
            window = tp.run_bare(raw) if args.against == "bare" else tp.run_hf(raw, work, True, same_batches=True)
            return window.per_s

        for i, name in enumerate(runs):  # warm-up: a process's first training pays for lazy imports and allocations
            run(name, Path(tmp) / f"warm-{i}")
        for rep in range(args.repeats):
            order = shuffled(runs, args.seed, rep)
            for i, name in enumerate(order):
                runs[name].append(run(name, Path(tmp) / f"r{rep}-{i}"))
            print(f"repeat {rep}: {peer} {runs[peer][-1]:.0f}, chefgenius {runs['chefgenius'][-1]:.0f} tokens/s",
                  flush=True)
    vs = paired(runs["chefgenius"], runs[peer])
    floor_beaten = args.against == "bare" and vs["lo95"] > 1.0 and vs["repeats"] >= MIN_REPEATS
    command = (f"python bench/throughput_pair.py --family {args.family} --preset {args.preset} --steps {args.steps} "
               f"--repeats {args.repeats} --seed {args.seed}" + (" --against hf" if args.against == "hf" else ""))
    name = "GPT-2" if args.family == "gpt2" else "T5"
    lines = [f"# chefgenius against the {peer}, paired: {name} {args.preset}", "",
             f"`{command}`; the runners of throughput.py (same model, data, batches, fp32, CPU, one thread), "
             f"only these two contenders, back to back in a shuffled order each repeat; warm-up run of each first.",
             "", f"| repeat | {peer} tokens/s | chefgenius tokens/s | chefgenius / {peer} |", "|---:|---:|---:|---:|"]
    lines += [f"| {i} | {b:.0f} | {c:.0f} | {c / b:.3f} |"
              for i, (b, c) in enumerate(zip(runs[peer], runs["chefgenius"]))]
    lines += ["", f"Paired repeat by repeat: chefgenius **{said(vs)}** the {peer} (95% bootstrap interval of the "
              f"median ratio); target >= {target}: {judged(vs, at_least=target)}."
              + (" **chefgenius beats its bare-loop floor (interval clear of 1.0): the floor is wrong.**"
                 if floor_beaten else "")]
    write_result(f"throughput_pair_{args.family}_{args.preset}" + ("_hf" if args.against == "hf" else ""), lines,
                 {"command": command, "against": args.against, "family": args.family, "preset": args.preset,
                  "steps": args.steps, "repeats": args.repeats, "quick": args.quick,
                  "peer": [round(x) for x in runs[peer]], "chefgenius": [round(x) for x in runs["chefgenius"]],
                  "ratios": vs["ratios"], "median_ratio": vs["ratio"], "paired": vs,
                  "floor_beaten": floor_beaten})


if __name__ == "__main__":
    main()
