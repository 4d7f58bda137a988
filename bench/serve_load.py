"""A bounded local load test of ``chefgenius serve``: latency and throughput, and what a burst gets.

    python bench/serve_load.py --run runs/demo [--requests 200] [--concurrency 8] [--max-new-tokens 128]

Starts the server in this process (uvicorn on 127.0.0.1, the run's final/ model on the CPU, queue
limit 8), then sends ``--requests`` recipe requests (greedy, a rotating set of ingredient lists)
from ``--concurrency`` client threads over HTTP; reports p50 / p95 / max latency, requests/s and
status counts. Every ``--abandon``-th client is an impatient one: it streams, reads the first event
and disconnects. Reported: worker time spent on abandoned requests after their client left
(target: under one decoding step each; the step time is measured from the completed requests).
Then a burst of twice the queue limit at once: the excess must get 429 with Retry-After, and
/healthz must answer afterwards. Writes bench/results/serve_load.{md,json}.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import write_result

PROMPTS = [["chicken", "rice", "onion"], ["flour", "sugar", "butter"], ["egg", "milk", "cheese"],
           ["potato", "bacon"], ["salmon", "lemon", "dill"], ["apple", "cinnamon", "oats"]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--abandon", type=int, default=4, help="every N-th client disconnects after one event (0: none)")
    args = ap.parse_args()
    import httpx
    import torch

    from chefgenius.checkpoint.run_directory import RunDirectory
    from chefgenius.serving.app import Server, Sources, start_in_thread

    torch.set_num_threads(2)
    rd = RunDirectory(args.run)
    server = Server(Sources(rd.final.resolve(), rd.path.resolve()), max_queue=8, timeout_s=60, device="cpu")
    server.generator(None)
    web, port = start_in_thread(server)
    url = f"http://127.0.0.1:{port}"

    def one(i: int) -> tuple[int, float]:
        body = {"ingredients": PROMPTS[i % len(PROMPTS)], "max_new_tokens": args.max_new_tokens, "seed": i}
        t0 = time.perf_counter()
        if args.abandon and i % args.abandon == args.abandon - 1:
            with httpx.stream("POST", f"{url}/v1/recipes", json={**body, "stream": True}, timeout=120) as r:
                if r.status_code == 200:
                    next(r.iter_lines())  # one event, then the client is gone
                return -r.status_code, time.perf_counter() - t0
        with httpx.Client(timeout=120) as c:
            r = c.post(f"{url}/v1/recipes", json=body)
        return r.status_code, time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        results = list(pool.map(one, range(args.requests)))
    wall = time.perf_counter() - t0
    server.queue.idle(120)
    ok = sorted(s for code, s in results if code == 200)
    codes = Counter(code for code, _ in results if code > 0)
    abandoned = sum(1 for code, _ in results if code == -200)
    per_request = (server.queue.abandoned_s / server.queue.cancelled) if server.queue.cancelled else 0.0
    step_s = (server.queue._service_s or 0.0) / args.max_new_tokens  # a completed request's time per token
    with ThreadPoolExecutor(2 * server.max_queue) as pool:  # a burst: twice the queue limit at once
        burst = list(pool.map(one, range(2 * server.max_queue)))
    burst_codes = Counter(code for code, _ in burst)
    healthy = httpx.get(f"{url}/healthz", timeout=30).status_code == 200
    web.should_exit = True
    q = statistics.quantiles(ok, n=20) if len(ok) >= 20 else [max(ok)] * 19
    row = {"requests": args.requests, "concurrency": args.concurrency, "status": dict(codes),
           "p50_s": round(statistics.median(ok), 3), "p95_s": round(q[18], 3), "max_s": round(max(ok), 3),
           "requests_per_s": round(len(ok) / wall, 2), "burst_status": dict(burst_codes), "healthy_after": healthy,
           "abandoned": abandoned, "cancelled": server.queue.cancelled,
           "abandoned_worker_s_per_request": round(per_request, 4), "decoding_step_s": round(step_s, 4),
           "abandoned_under_one_step": per_request < step_s}
    command = (f"python bench/serve_load.py --run {args.run} --requests {args.requests} --concurrency "
               f"{args.concurrency} --max-new-tokens {args.max_new_tokens} --abandon {args.abandon}")
    lines = ["# Serving under load", "",
             f"`{command}`; the run's final/ model on the CPU (2 threads), greedy, up to {args.max_new_tokens} new "
             "tokens, queue limit 8, one generation at a time.", "",
             "| requests | concurrency | p50 s | p95 s | max s | requests/s | status |",
             "|---:|---:|---:|---:|---:|---:|---|",
             f"| {args.requests} | {args.concurrency} | {row['p50_s']} | {row['p95_s']} | {row['max_s']} | "
             f"{row['requests_per_s']} | {dict(codes)} |", "",
             f"Impatient clients (every {args.abandon}th streams, reads one event, disconnects): {abandoned}; "
             f"cancelled jobs {server.queue.cancelled}; worker time after the client left "
             f"{per_request * 1000:.1f} ms per abandoned request against a decoding step of {step_s * 1000:.1f} ms "
             f"(target: under one step): {'met' if per_request < step_s else 'NOT met'}.", "",
             f"Burst of {2 * server.max_queue} at once: {dict(burst_codes)} (negative: an impatient client's "
             "status; 429 carries Retry-After); /healthz "
             f"afterwards: {'200' if healthy else 'FAILED'}."]
    write_result("serve_load", lines, {"command": command, **row})


if __name__ == "__main__":
    main()
