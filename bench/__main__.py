"""``python -m bench [--quick]``: every benchmark, one after another; then ``bench/RESULTS.md`` (+ JSON).

Run it on an idle machine: two trainings at once on 2 cores make every figure meaningless.
``--quick`` is a smoke test (about a minute, run by CI): every benchmark path once with few steps,
no timing claims, results written to a temporary directory and left out of RESULTS.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
FULL = [
    ["throughput.py", "--steps", "80", "--repeats", "5"],
    ["throughput.py", "--steps", "60", "--repeats", "5", "--preset", "base"],
    ["throughput.py", "--steps", "60", "--repeats", "5", "--family", "t5"],
    ["checkpoint_save.py", "--preset", "large", "--repeats", "5"],
    ["async_checkpoint.py", "--preset", "large", "--steps", "24", "--every", "4", "--batch-size", "1",
     "--repeats", "2"],
    ["io_interference.py", "--gib", "2", "--repeats", "3"],
    ["optimizer_step.py", "--steps", "20", "--repeats", "3"],
    ["padding.py"],
    ["startup.py", "--repeats", "3"],
    ["distributed_scale.py", "--steps", "60", "--repeats", "5"],
]
QUICK = [
    ["throughput.py", "--quick"],
    ["checkpoint_save.py", "--quick"],
    ["async_checkpoint.py", "--preset", "tiny", "--steps", "8", "--every", "2", "--repeats", "1"],
    ["io_interference.py", "--gib", "0.25", "--repeats", "1"],
    ["optimizer_step.py", "--steps", "2", "--repeats", "1"],
    ["padding.py"],
]


def main() -> None:
    quick = "--quick" in sys.argv[1:]
    failed = []
    run_id = uuid.uuid4().hex
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "BENCH_RUN_ID": run_id, **({"BENCH_RESULTS_DIR": tmp} if quick else {})}
        for script, *args in QUICK if quick else FULL:
            print(f"== {script} {' '.join(args)}", flush=True)
            if subprocess.run([sys.executable, str(HERE / script), *args], env=env).returncode != 0:
                failed.append(script)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")
    if not quick:
        sys.path.insert(0, str(HERE))
        from common import MixedResults, collect

        try:
            print(f"wrote {collect('python -m bench', run_id, sorted({s for s, *_ in FULL}))}", flush=True)
        except MixedResults as e:
            raise SystemExit(str(e)) from None


if __name__ == "__main__":
    main()
