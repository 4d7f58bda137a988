"""AdamW step on CPU: the for-loop, foreach and fused implementations, on the ~25M GPT-2's parameters.

    python bench/optimizer_step.py [--repeats 5] [--steps 20]

Same parameters, gradients and hyper-parameters for every implementation; one torch thread (as
training runs here); median seconds per ``optimizer.step()`` after two warm-up steps. Also checks
that the three give the same parameters after the steps (they need not be bit-identical; the
largest difference is reported). chefgenius uses foreach on CPU and fused on CUDA.
Writes bench/results/optimizer_step.{md,json}.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import gpt2, order_seed, paired, said, shuffled, write_result


def params(seed: int = 0) -> list[torch.nn.Parameter]:
    out = [p for p in gpt2("base", seed=seed).parameters()]
    g = torch.Generator().manual_seed(1)
    for p in out:
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    return out


def time_steps(kind: str, steps: int) -> tuple[list[float], list[torch.Tensor]]:
    ps = params()
    opt = torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01, foreach=kind == "foreach",
                            fused=True if kind == "fused" else None)
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return times, [p.detach() for p in ps]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--order-seed", type=int, help="the seed of the order (default: drawn, recorded)")
    args = ap.parse_args()
    seed = order_seed(args.order_seed)
    torch.set_num_threads(1)
    kinds = ("for-loop", "foreach", "fused")
    per_step: dict[str, list[float]] = {k: [] for k in kinds}
    final: dict[str, list[torch.Tensor]] = {}
    for rep in range(args.repeats):
        for kind in shuffled(kinds, seed, rep):
            times, final[kind] = time_steps(kind, args.steps)
            per_step[kind].append(statistics.median(times))
    n = sum(p.numel() for p in final["foreach"])
    diff = {k: max(float((a - b).abs().max()) for a, b in zip(final[k], final["foreach"])) for k in kinds}
    base = statistics.median(per_step["foreach"])
    rows = [{"implementation": k, "median_ms": round(statistics.median(v) * 1000, 2),
             "min_ms": round(min(v) * 1000, 2), "max_ms": round(max(v) * 1000, 2),
             "vs_foreach": round(statistics.median(v) / base, 3), "max_abs_diff_vs_foreach": diff[k]}
            for k, v in per_step.items()]
    vs = {k: paired(per_step[k], per_step["foreach"], higher_is_better=False) for k in kinds if k != "foreach"}
    command = f"python bench/optimizer_step.py --steps {args.steps} --repeats {args.repeats} --order-seed {seed}"
    lines = ["# AdamW step on CPU", "", f"`{command}`; {n / 1e6:.1f}M parameters, one thread, median per step "
             f"of {args.steps} steps, median of {args.repeats} repeats in an order shuffled each repeat.", "",
             "| implementation | ms/step | min | max | vs foreach | max abs difference vs foreach |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['implementation']} | {r['median_ms']} | {r['min_ms']} | {r['max_ms']} | {r['vs_foreach']} | "
              f"{r['max_abs_diff_vs_foreach']:.2e} |" for r in rows]
    lines += ["", "Paired repeat by repeat (time per step against foreach, 95% bootstrap interval): "
              + "; ".join(f"{k} {said(v)}" for k, v in vs.items()) + "."]
    write_result("optimizer_step", lines, {"command": command, "parameters": n, "rows": rows, "paired": vs,
                                           "order_seed": seed})


if __name__ == "__main__":
    main()
