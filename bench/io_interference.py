"""What a disk write costs computation running beside it, on this machine: the floor under any
background save.

    python bench/io_interference.py [--gib 2] [--repeats 5] [--seed N]

A matrix-multiply loop (the work a training step does, torch's default threads) is timed alone and
while another process writes ``--gib`` GiB of incompressible bytes with ``O_DIRECT`` and fsyncs them
(``fileio.DirectFile``, the way checkpoints go out: almost no CPU of the writer's own), and while
another process only sleeps as long (the control: a second process that does nothing). The same
with one thread fewer for the loop. For each: the loop's slowdown while the write runs, and where
the machine's time went (``/proc/stat``: user, system, iowait, steal). On a virtual machine whose
hypervisor does the disk I/O on the guest's own vCPUs, a write with the cores busy shows as steal
time and slows the loop, so a background save cannot be free there however little CPU it uses.
Conditions run in a shuffled order per repeat. Writes bench/results/io_interference.{md,json}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, order_seed, paired, said, shuffled, write_result

_WRITER = """
import os, sys
sys.path.insert(0, {src!r})
from pathlib import Path
from chefgenius.durable.files import DirectFile
block = os.urandom(8 << 20)
path = Path(sys.argv[1])
f = DirectFile.open(path)
if f is None:  # the filesystem refuses O_DIRECT: buffered, said so in the results
    print("O_DIRECT refused on", path.parent, "- written buffered", file=sys.stderr)
    with path.open("wb") as g:
        for _ in range(int(float(sys.argv[2]) * 128)):
            g.write(block)
        g.flush()
        os.fsync(g.fileno())
else:
    with f:
        for _ in range(int(float(sys.argv[2]) * 128)):
            f.write(block)
        f.finish()
path.unlink()
raise SystemExit(3 if f is None else 0)  # 3: the table names the row as buffered
"""


def _cpu_times() -> list[int]:
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal


def _loop_seconds(a, b, seconds: float) -> float:  # noqa: ANN001
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        for _ in range(4):
            a @ b
        n += 1
    return (time.perf_counter() - t0) / n


def measure(condition: str, threads: int, gib: float, workdir: Path, seconds: float) -> dict[str, float]:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(768, 768), torch.randn(768, 768)
    _loop_seconds(a, b, 0.5)  # warm
    alone = _loop_seconds(a, b, 3.0)
    if condition == "write":
        cmd = [sys.executable, "-c", _WRITER.format(src=str(ROOT / "src")), str(workdir / "io.bin"), str(gib)]
    else:
        cmd = [sys.executable, "-c", f"import time; time.sleep({seconds})"]
    before, t0 = _cpu_times(), time.perf_counter()
    proc = subprocess.Popen(cmd)
    during = []
    while proc.poll() is None:
        during.append(_loop_seconds(a, b, 0.25))
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 3):
        raise SystemExit(f"the writer failed ({proc.returncode})")
    delta = [y - x for x, y in zip(before, _cpu_times())]
    total = sum(delta) or 1
    return {"direct": float(proc.returncode == 0 and condition == "write"),
            "alone_ms": alone * 1e3, "during_ms": statistics.median(during) * 1e3,
            "slowdown": statistics.median(during) / alone, "wall_s": wall,
            "user_pct": 100 * (delta[0] + delta[1]) / total,
            "system_pct": 100 * (delta[2] + delta[5] + delta[6]) / total, "iowait_pct": 100 * delta[4] / total,
            "idle_pct": 100 * delta[3] / total, "steal_pct": 100 * delta[7] / total}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=None, help="the order's seed (default: drawn, recorded)")
    args = ap.parse_args()
    args.seed = order_seed(args.seed)
    cores = len(os.sched_getaffinity(0))
    thread_counts = sorted({cores, max(1, cores - 1)}, reverse=True)
    rows: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:  # the disk checkpoints go to, not a tmpfs
        sleep_s = 6.0
        for rep in range(args.repeats):
            plan = shuffled([(c, t) for c in ("write", "sleep") for t in thread_counts], args.seed, rep)
            for condition, threads in plan:
                r = measure(condition, threads, args.gib, Path(tmp), sleep_s)
                if condition == "write":
                    sleep_s = r["wall_s"]  # the control sleeps as long as a write lasts
                rows.setdefault(f"{condition}|{threads}", []).append(r)
                print(condition, threads, {k: round(v, 2) for k, v in r.items()}, flush=True)
    command = f"python bench/io_interference.py --gib {args.gib:g} --repeats {args.repeats} --seed {args.seed}"
    lines = ["# What a disk write costs computation beside it", "",
             f"`{command}`: a matrix-multiply "
             f"loop timed alone and while another process writes {args.gib:g} GiB with O_DIRECT + fsync (or only "
             "sleeps as long); medians of the repeats, conditions shuffled per repeat.", "",
             "| beside the loop | loop threads | slowdown | write wall | user | system | iowait | idle | steal |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    summary = {}
    for key in sorted(rows, key=lambda k: (k.split("|")[0] != "write", -int(k.split("|")[1]))):
        condition, threads = key.split("|")
        med = {k: statistics.median(r[k] for r in rows[key]) for k in rows[key][0]}
        summary[key] = {**med, "slowdowns": [r["slowdown"] for r in rows[key]]}
        each = ", ".join(f"{r['slowdown']:.2f}" for r in rows[key])
        how = "O_DIRECT" if all(r["direct"] for r in rows[key]) else "buffered (O_DIRECT refused)"
        what = f"{how} write of {args.gib:g} GiB" if condition == "write" else "a sleeping process"
        lines.append(f"| {what} | {threads} of {cores} | {med['slowdown']:.2f}x "
                     f"({each}) | {med['wall_s']:.1f} s | "
                     f"{med['user_pct']:.0f}% | {med['system_pct']:.0f}% | {med['iowait_pct']:.0f}% | "
                     f"{med['idle_pct']:.0f}% | {med['steal_pct']:.0f}% |")
    # the write against the sleeping control of the same repeat: what the write itself costs the loop
    vs = {t: paired([r["slowdown"] for r in rows[f"write|{t}"]], [r["slowdown"] for r in rows[f"sleep|{t}"]],
                    higher_is_better=False) for t in thread_counts}
    lines += ["", "Paired repeat by repeat (the loop's slowdown beside the write over its slowdown beside the sleep, "
              "95% bootstrap interval): " + "; ".join(f"{t} loop thread(s): {said(v)}" for t, v in vs.items()) + "."]
    write_result("io_interference", lines, {"command": command, "gib": args.gib, "repeats": args.repeats,
                                            "cores": cores, "rows": summary, "seed": args.seed,
                                            "paired_write_vs_sleep": {str(t): v for t, v in vs.items()}})


if __name__ == "__main__":
    main()
