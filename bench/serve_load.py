"""A bounded local load test of ``chefgenius serve``: latency, throughput, impatient clients, a burst.

    python bench/serve_load.py --run runs/demo [--requests 200] [--concurrency 8] [--max-new-tokens 128]
                               [--abandon 4] [--compare-threads N] [--repeats 3] [--seed S]

Starts ``chefgenius serve`` as its own process (127.0.0.1, the run's final/ model on the CPU, queue
limit 8), as a user would, so the clients below do not share its interpreter. Then sends
``--requests`` recipe requests (greedy, a rotating set of ingredient lists) from ``--concurrency``
client threads over HTTP and reports p50 / p95 / max latency, requests/s and status counts. Every
``--abandon``-th client is impatient: it streams, reads the first event and disconnects. The server's
``/healthz`` says what that cost its worker: how long each cancelled running job ran on after its
cancel, against the median decoding step of the completed jobs (target: under one step). Then a
burst of twice the queue limit at once: the excess must get 429 with Retry-After, and /healthz
must answer afterwards. serve's default generation threads (every core but one) run against
``--compare-threads`` (every core), ``--repeats`` times in a shuffled order. Writes
bench/results/serve_load.{md,json}.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import order_seed, shuffled, write_result

PROMPTS = [["chicken", "rice", "onion"], ["flour", "sugar", "butter"], ["egg", "milk", "cheese"],
           ["potato", "bacon"], ["salmon", "lemon", "dill"], ["apple", "cinnamon", "oats"]]
MAX_QUEUE = 8


def start_server(run: Path, threads: int | None) -> tuple[subprocess.Popen, str]:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    extra = ["--threads", str(threads)] if threads else []  # none: serve's default, as a user gets it
    proc = subprocess.Popen([sys.executable, "-m", "chefgenius", "serve", "--run", str(run), "--port", str(port),
                             "--device", "cpu", "--max-queue", str(MAX_QUEUE), "--timeout", "120", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"chefgenius serve exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("chefgenius serve did not answer /healthz within 120 s")


def measure(args: argparse.Namespace, threads: int | None) -> dict:
    """One server, one load: latency, throughput, what the impatient clients cost, then a burst."""
    import httpx

    proc, url = start_server(args.run, threads)

    def one(i: int) -> tuple[int, float]:
        """Status and seconds; an impatient client's status is negative."""
        body = {"ingredients": PROMPTS[i % len(PROMPTS)], "max_new_tokens": args.max_new_tokens, "seed": i}
        t0 = time.perf_counter()
        if args.abandon and i % args.abandon == args.abandon - 1:
            with httpx.stream("POST", f"{url}/v1/recipes", json={**body, "stream": True}, timeout=300) as r:
                if r.status_code == 200:
                    next(r.iter_lines())  # one event, then the client is gone
                return -r.status_code, time.perf_counter() - t0
        with httpx.Client(timeout=300) as c:
            r = c.post(f"{url}/v1/recipes", json=body)
        return r.status_code, time.perf_counter() - t0

    def idle() -> dict:
        while True:  # the last cancelled jobs may still be stopping
            health = httpx.get(f"{url}/healthz", timeout=30).json()
            if not health["queued"] and not health["running"]:
                return health
            time.sleep(0.1)

    try:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(one, range(args.requests)))
        wall = time.perf_counter() - t0
        stats = idle()["since_start"]
        with ThreadPoolExecutor(2 * MAX_QUEUE) as pool:  # a burst: twice the queue limit at once
            burst = list(pool.map(one, range(2 * MAX_QUEUE)))
        healthy = httpx.get(f"{url}/healthz", timeout=30).status_code == 200
    finally:
        proc.terminate()
        proc.wait(60)
    ok = sorted(s for code, s in results if code == 200)
    q = statistics.quantiles(ok, n=20) if len(ok) >= 20 else [max(ok)] * 19
    step, after = stats["decoding_step_ms_median"], stats["after_cancel_ms_mean"]
    step_cpu, after_cpu = stats["decoding_step_cpu_ms_median"], stats["after_cancel_cpu_ms_mean"]
    return {"threads": threads or "default", "status": dict(Counter(code for code, _ in results if code > 0)),
            "p50_s": round(statistics.median(ok), 3), "p95_s": round(q[18], 3), "max_s": round(max(ok), 3),
            "requests_per_s": round(len(ok) / wall, 2), "impatient_clients": sum(1 for c, _ in results if c < 0),
            "server": stats, "after_cancel_in_steps": round(after / step, 2) if after is not None and step else None,
            "after_cancel_cpu_in_steps": round(after_cpu / step_cpu, 2) if after_cpu is not None and step_cpu else None,
            "burst_status": dict(Counter(code for code, _ in burst)), "healthy_after": healthy}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--abandon", type=int, default=4, help="every N-th client disconnects after one event (0: none)")
    ap.add_argument("--compare-threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="also serve with this many generation threads (default: every core), 0: not")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=None, help="of the contenders' order (default: drawn, recorded)")
    args = ap.parse_args()
    seed = order_seed(args.seed)
    settings: list[int | None] = [None] + ([args.compare_threads] if args.compare_threads else [])
    rows: list[dict] = []
    for rep in range(args.repeats):
        for threads in shuffled(settings, seed, rep):
            rows.append({"repeat": rep, **measure(args, threads)})
            print(rows[-1], flush=True)
    command = (f"python bench/serve_load.py --run {args.run} --requests {args.requests} --concurrency "
               f"{args.concurrency} --max-new-tokens {args.max_new_tokens} --abandon {args.abandon} "
               f"--compare-threads {args.compare_threads} --repeats {args.repeats} --seed {seed}")
    default = [r for r in rows if r["threads"] == "default"]
    met = all(r["after_cancel_in_steps"] is not None and r["after_cancel_in_steps"] < 1 for r in default)
    lines = ["# Serving under load", "",
             f"`{command}`; `chefgenius serve` in its own process with the run's final/ model on the CPU, greedy, "
             f"up to {args.max_new_tokens} new tokens, queue limit {MAX_QUEUE}, one generation at a time; "
             f"{args.concurrency} client threads in this process, every {args.abandon}th of them impatient (streams, "
             "reads one event, disconnects). Generation threads: serve's default (every core but one) and "
             f"{args.compare_threads}, in an order shuffled per repeat from seed {seed}.", "",
             "| repeat | generation threads | p50 s | p95 s | requests/s | status | after a cancel, ms (mean / max) | "
             "a decoding step, ms (median) | after a cancel, in steps | worker CPU after a cancel, in steps |",
             "|---:|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        st = r["server"]
        lines.append(f"| {r['repeat']} | {r['threads']} | {r['p50_s']} | {r['p95_s']} | {r['requests_per_s']} | "
                     f"{r['status']} | {st['after_cancel_ms_mean']} / {st['after_cancel_ms_max']} | "
                     f"{st['decoding_step_ms_median']} | {r['after_cancel_in_steps']} | "
                     f"{r['after_cancel_cpu_in_steps']} |")
    lines += ["", "A cancelled running job's time after its cancel: from the moment the server saw the client go "
              "to the moment the worker was free, averaged over the cancelled jobs of a run; a step: the median "
              "decoding step of the completed jobs of the same run. Target (serve's default): under one step on "
              f"average, in every repeat: {'met' if met else 'NOT met'}.", "",
              "Bursts of twice the queue limit at once (negative: an impatient client's status; 429 carries "
              "Retry-After): " + "; ".join(f"{r['threads']}: {r['burst_status']}, /healthz after "
                                          f"{'200' if r['healthy_after'] else 'FAILED'}" for r in rows) + "."]
    write_result("serve_load", lines, {"command": command, "seed": seed, "rows": rows, "target_met": met})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
