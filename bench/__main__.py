"""``python -m bench [--quick] [--device cuda] [--resume]``: every benchmark, one after another; then
``bench/RESULTS.md`` (+ JSON).

Run it on an idle machine: two trainings at once on 2 cores make every figure meaningless.
``--quick`` is a smoke test (about two minutes, run by CI): every benchmark path once with few steps,
no timing claims, results written to a temporary directory and left out of RESULTS.md.
``--device cuda``: the GPU rows (training throughput in bf16 against the Hugging Face Trainer and a
bare loop on identical batches, with MFU and the cost of strict determinism; GPT-2 tiny and ~160M),
joined into ``bench/RESULTS_CUDA.md``. Checkpoint rows on a GPU come from ``scripts/gpu_check.sh``.
``--resume``: the full suite takes hours, so it records each finished benchmark in
``bench/results/suite.progress``; after an interruption, ``--resume`` runs only the ones left, under the
same run id, and only at the same clean commit (RESULTS.md joins figures of one commit).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402  (bench/ is a folder of scripts: its helpers are imported by path)

# Repeats: at least 5 everywhere, 8 where a claim lies within 5% (the training ratios against the HF
# Trainer and the bare loop). The async target is measured where it binds: N steps lasting about 1.5
# saves (every 3 steps: 1.8-2.0 saves on this machine, the nearest whole number of steps above the edge) and
# about 3 saves (every 5). On this 2-core machine the whole suite took 1 h 53 min at a5697f9 (38 min of it
# GPT-2 base, 3 contenders x 8; 27 min the multi-process rows).
FULL = [
    ["throughput.py", "--steps", "80", "--repeats", "8"],
    ["throughput.py", "--steps", "60", "--repeats", "8", "--family", "t5"],
    ["throughput_pair.py", "--family", "t5", "--repeats", "8"],
    ["throughput_pair.py", "--family", "t5", "--repeats", "8", "--against", "hf"],
    ["checkpoint_save.py", "--preset", "large", "--repeats", "5"],
    ["async_checkpoint.py", "--preset", "large", "--steps", "24", "--every", "3", "--batch-size", "1",
     "--repeats", "5"],
    ["async_checkpoint.py", "--preset", "large", "--steps", "24", "--every", "5", "--batch-size", "1",
     "--repeats", "5"],
    ["io_interference.py", "--gib", "2", "--repeats", "5"],
    ["optimizer_step.py", "--steps", "20", "--repeats", "5"],
    ["padding.py"],
    ["startup.py", "--repeats", "5"],
    ["distributed_scale.py", "--steps", "60", "--repeats", "5"],
    # Last, the slowest (38 min at a5697f9): only the three contenders its targets compare.
    ["throughput.py", "--steps", "60", "--repeats", "8", "--preset", "base", "--core"],
]
CUDA = [
    ["throughput.py", "--device", "cuda", "--precision", "bf16", "--steps", "80", "--repeats", "5"],
    ["throughput.py", "--device", "cuda", "--precision", "bf16", "--preset", "large", "--steps", "60",
     "--repeats", "5"],
]
QUICK = [
    ["throughput.py", "--quick"],
    ["throughput_pair.py", "--quick"],
    ["throughput_pair.py", "--quick", "--against", "hf"],
    ["checkpoint_save.py", "--quick"],
    ["async_checkpoint.py", "--preset", "tiny", "--steps", "8", "--every", "2", "--repeats", "1"],
    ["io_interference.py", "--gib", "0.25", "--repeats", "1"],
    ["optimizer_step.py", "--steps", "2", "--repeats", "1"],
    ["padding.py"],
]


def _progress_file() -> Path:
    return common.results_dir() / "suite.progress"


def _record(run: dict) -> None:
    """Write the progress file whole or not at all: an interruption mid-write must not lose the run."""
    progress = _progress_file()
    tmp = progress.with_suffix(".tmp")
    tmp.write_text(json.dumps(run, indent=2) + "\n")
    os.replace(tmp, progress)


def _started(suite: list[list[str]], name: str, resume: bool) -> tuple[str, list[str]]:
    """The run id and the benchmarks already done: a new run, or the recorded one when resuming."""
    at, progress = common.commit(), _progress_file()
    if not resume:
        if "+" in at:
            print(f"warning: the tree is not a clean commit ({at}): every section will say so and RESULTS.md will "
                  "be refused (commit first to get one)", flush=True)
        if progress.is_file():
            old = json.loads(progress.read_text())
            print(f"an unfinished run at {old.get('commit')} ({len(old.get('done', []))} benchmarks done) is replaced "
                  "(`python -m bench --resume` would have continued it)", flush=True)
        run = {"run_id": uuid.uuid4().hex, "suite": name, "commit": at, "done": []}
        _record(run)
        return run["run_id"], []
    if not progress.is_file():
        raise SystemExit(f"nothing to resume: {progress} is missing (start with `python -m bench`)")
    run = json.loads(progress.read_text())
    if run.get("suite") != name or run.get("commit") != at or "+" in at:
        raise SystemExit(f"cannot resume: the interrupted run was `{run.get('suite')}` at {run.get('commit')}, this "
                         f"is `{name}` at {at} (check out that commit, clean, or start anew with `python -m bench`)")
    left = [" ".join(e) for e in suite if " ".join(e) not in run["done"]]
    print(f"resuming run {run['run_id']} at {at}: {len(run['done'])} done, {len(left)} left", flush=True)
    return run["run_id"], run["done"]


def _done(entry: list[str]) -> None:
    run = json.loads(_progress_file().read_text())
    run["done"].append(" ".join(entry))
    _record(run)


def main() -> None:
    argv = sys.argv[1:]
    quick, resume = "--quick" in argv, "--resume" in argv
    cuda = argv[argv.index("--device") + 1] == "cuda" if "--device" in argv[:-1] else False
    unknown = [a for a in argv if a not in ("--quick", "--resume", "--device", "cuda", "cpu")]
    if unknown:
        raise SystemExit(f"unknown arguments {' '.join(unknown)}: use python -m bench [--quick] [--device cpu|cuda] "
                         "[--resume]")
    if cuda and quick:
        raise SystemExit("--quick runs the CPU smoke test; for a short GPU check use scripts/gpu_check.sh")
    if quick and resume:
        raise SystemExit("--resume continues an interrupted full run; --quick takes two minutes: run it again")
    suite = QUICK if quick else CUDA if cuda else FULL
    name = "python -m bench" + (" --device cuda" if cuda else "")
    run_id, done = (uuid.uuid4().hex, []) if quick else _started(suite, name, resume)
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "BENCH_RUN_ID": run_id, **({"BENCH_RESULTS_DIR": tmp} if quick else {})}
        for entry in suite:
            if " ".join(entry) in done:
                print(f"== {' '.join(entry)}: done in this run already", flush=True)
                continue
            script, *args = entry
            print(f"== {script} {' '.join(args)}", flush=True)
            if subprocess.run([sys.executable, str(HERE / script), *args], env=env).returncode != 0:
                failed.append(script)
            elif not quick:
                _done(entry)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}" + ("" if quick else " (`python -m bench --resume` reruns "
                                                           "only what is left)"))
    if not quick:
        try:
            written = common.collect(name, run_id, sorted({s for s, *_ in suite}),
                              name="RESULTS_CUDA" if cuda else "RESULTS", join_others=not cuda)
            print(f"wrote {written}", flush=True)
        except common.MixedResults as e:
            raise SystemExit(str(e)) from None
        _progress_file().unlink()


if __name__ == "__main__":
    main()
