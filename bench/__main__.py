"""``python -m bench [--quick]``: every benchmark, one after another, results under bench/results/.

Run it on an idle machine: two trainings at once on 2 cores make every figure meaningless.
``--quick`` runs the throughput comparison for a few steps only (a smoke test, no figures written).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FULL = [
    ["throughput.py", "--steps", "80", "--repeats", "3"],
    ["checkpoint_save.py", "--repeats", "5"],
    ["startup.py", "--repeats", "3"],
    ["distributed_scale.py", "--steps", "60", "--repeats", "3"],
]
QUICK = [["throughput.py", "--quick"]]


def main() -> None:
    quick = "--quick" in sys.argv[1:]
    failed = []
    for script, *args in QUICK if quick else FULL:
        print(f"== {script} {' '.join(args)}", flush=True)
        if subprocess.run([sys.executable, str(HERE / script), *args]).returncode != 0:
            failed.append(script)
    if not quick:
        print("prepare_scale.py needs a 2.2M-row CSV: see its docstring", flush=True)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
