"""A bounded local load test of ``chefgenius serve``: latency, throughput, impatient clients, a burst.

    python bench/serve_load.py --run runs/demo [--requests 200] [--concurrency 8] [--max-new-tokens 128]
                               [--abandon 4]

Starts ``chefgenius serve`` as its own process (127.0.0.1, the run's final/ model on the CPU, queue
limit 8), as a user would, so the clients below do not share its interpreter. Then sends
``--requests`` recipe requests (greedy, a rotating set of ingredient lists) from ``--concurrency``
client threads over HTTP and reports p50 / p95 / max latency, requests/s and status counts. Every
``--abandon``-th client is impatient: it streams, reads the first event and disconnects. The server's
``/healthz`` says what that cost its worker: how long each cancelled running job ran on after its
cancel, against the median decoding step of the completed jobs (target: under one step). Then a
burst of twice the queue limit at once: the excess must get 429 with Retry-After, and /healthz
must answer afterwards. Writes bench/results/serve_load.{md,json}.
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

from common import write_result

PROMPTS = [["chicken", "rice", "onion"], ["flour", "sugar", "butter"], ["egg", "milk", "cheese"],
           ["potato", "bacon"], ["salmon", "lemon", "dill"], ["apple", "cinnamon", "oats"]]
MAX_QUEUE = 8


def start_server(run: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.Popen([sys.executable, "-m", "chefgenius", "serve", "--run", str(run), "--port", str(port),
                             "--device", "cpu", "--max-queue", str(MAX_QUEUE), "--timeout", "120"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--abandon", type=int, default=4, help="every N-th client disconnects after one event (0: none)")
    args = ap.parse_args()
    import httpx

    proc, url = start_server(args.run)

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
    codes = Counter(code for code, _ in results if code > 0)
    impatient = sum(1 for code, _ in results if code < 0)
    burst_codes = Counter(code for code, _ in burst)
    q = statistics.quantiles(ok, n=20) if len(ok) >= 20 else [max(ok)] * 19
    step, mean_after = stats["decoding_step_ms_median"], stats["after_cancel_ms_mean"]
    met = mean_after is not None and step is not None and mean_after < step
    step_cpu, mean_cpu = stats["decoding_step_cpu_ms_median"], stats["after_cancel_cpu_ms_mean"]
    met_cpu = mean_cpu is not None and step_cpu is not None and mean_cpu < step_cpu
    row = {"requests": args.requests, "concurrency": args.concurrency, "status": dict(codes),
           "p50_s": round(statistics.median(ok), 3), "p95_s": round(q[18], 3), "max_s": round(max(ok), 3),
           "requests_per_s": round(len(ok) / wall, 2), "impatient_clients": impatient, "server": stats,
           "abandoned_under_one_step": met, "abandoned_cpu_under_one_step": met_cpu,
           "burst_status": dict(burst_codes), "healthy_after": healthy}
    command = (f"python bench/serve_load.py --run {args.run} --requests {args.requests} --concurrency "
               f"{args.concurrency} --max-new-tokens {args.max_new_tokens} --abandon {args.abandon}")
    lines = ["# Serving under load", "",
             f"`{command}`; `chefgenius serve` in its own process with the run's final/ model on the CPU, greedy, "
             f"up to {args.max_new_tokens} new tokens, queue limit {MAX_QUEUE}, one generation at a time.", "",
             "| requests | concurrency | p50 s | p95 s | max s | requests/s | status |",
             "|---:|---:|---:|---:|---:|---:|---|",
             f"| {args.requests} | {args.concurrency} | {row['p50_s']} | {row['p95_s']} | {row['max_s']} | "
             f"{row['requests_per_s']} | {dict(codes)} |", "",
             f"Impatient clients (every {args.abandon}th streams, reads one event, disconnects): {impatient}. The "
             f"server cancelled {stats['cancelled']} jobs, {stats['cancelled_while_running']} of them running; those "
             f"ran on after their cancel {mean_after} ms on average (median {stats['after_cancel_ms_median']}, max "
             f"{stats['after_cancel_ms_max']}) against a median decoding step of {step} ms. Target, under one step "
             f"on average: {'met' if met else 'NOT met'}. In the worker thread's CPU time (waiting for the "
             f"interpreter or a core not counted): {mean_cpu} ms on average (median "
             f"{stats['after_cancel_cpu_ms_median']}, max {stats['after_cancel_cpu_ms_max']}) against a step of "
             f"{step_cpu} ms: {'under' if met_cpu else 'NOT under'} one step.", "",
             f"Burst of {2 * MAX_QUEUE} at once: {dict(burst_codes)} (negative: an impatient client's status; 429 "
             f"carries Retry-After); /healthz afterwards: {'200' if healthy else 'FAILED'}."]
    write_result("serve_load", lines, {"command": command, **row})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
