"""Full-RecipeNLG-scale benchmark: preparation, start-up and resume, memory, bytes per token.

    python scripts/make_big_recipenlg.py --rows 2231142 --out /tmp/big/recipenlg-2.2m.csv
    python bench/prepare_scale.py --big /tmp/big/recipenlg-2.2m.csv --workdir /tmp/bench-scale

Writes bench/results/prepare_scale.{md,json}. Every figure is measured in this run, on this
machine; the contenders of a comparison run one after the other, never at the same time, in a
shuffled order; ``--skip-prepare`` reuses the store in the workdir and reports no preparation figures
(``bench/prepare_speed.py`` measures preparation side by side with the `datasets` path).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml
from common import order_seed, shuffled, train_config, write_result

ROOT = Path(__file__).resolve().parents[1]


def plain_read(path: Path) -> tuple[float, int]:
    """The floor: one process, csv + json.loads of the three list columns, nothing kept."""
    csv.field_size_limit(2**31 - 1)
    t0, n = time.perf_counter(), 0
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            json.loads(row["ingredients"]), json.loads(row["directions"]), json.loads(row["NER"])
            n += 1
    return time.perf_counter() - t0, n


def timed(cmd: list[str], env: dict[str, str]) -> dict[str, float | str]:
    """Wall time and peak RSS of a command (GNU time)."""
    t0 = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    return {"wall_s": wall, "peak_rss_gb": rss_kb / 1e6, "stdout": done.stdout}


def config(data_path: str | None, max_steps: int) -> dict:
    """The default user's model (GPT-2 tiny, the default 2,048-token vocabulary) on ``data_path``."""
    return train_config(vocab_size=2048, data={"path": data_path},
                        training={"max_steps": max_steps, "warmup_steps": 10, "num_threads": 2},
                        # A capped validation: the full 334k-recipe split would dominate a start-up measurement.
                        evaluation={"every_steps": 10**9, "max_batches": 4},
                        checkpoint={"every_steps": 10**9, "keep_last": 1, "keep_best": 0},
                        logging={"every_steps": 1})


def first_step_seconds(cfg_path: Path, run: Path, env: dict[str, str], after: int, extra: list[str]) -> float:
    """Process start to the first logged optimizer step after ``after`` (a killed run is fine)."""
    metrics = run / "metrics.jsonl"
    from chefgenius.durable.jsonl import read_jsonl, truncate_after

    truncate_after(metrics, after)  # what a resume does first: an earlier resume's steps are not this one's
    cmd = [sys.executable, "-m", "chefgenius.cli", "train", "-c", str(cfg_path), "-o", str(run), "--no-sample", *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while proc.poll() is None:
            if metrics.is_file():
                for entry in read_jsonl(metrics):  # whole lines only
                    if entry.get("step", 0) > after and "loss" in entry:
                        return time.perf_counter() - t0
            time.sleep(0.005)
        raise RuntimeError(f"training ended before its first step:\n{proc.stderr.read().decode()[-3000:]}")
    finally:
        proc.kill()
        proc.wait()


def move_checkpoint_to(run: Path, step: int, position: int) -> None:
    """Rewrite the newest checkpoint as if taken at ``step`` (sampler at ``position`` of its epoch), through
    chefgenius's own state files, so that resume cost at a late step can be measured without training that long."""
    from chefgenius.checkpoint import list_checkpoints, load_state, save_state
    from chefgenius.checkpoint.layout import MANIFEST, checkpoint_dir
    from chefgenius.durable.directory import write_manifest

    src = list_checkpoints(run / "checkpoints")[-1].path
    dst = checkpoint_dir(src.parent, step)
    src.rename(dst)
    state = load_state(dst, "train_state")
    state["step"] = step
    save_state(dst, "train_state", state)
    sampler = load_state(dst, "sampler")
    sampler.update(epoch=step // max(1, sampler["num_samples"] // sampler["samples_per_step"]), position=position)
    for recount in ("consumed", "digest", "last_epoch"):  # recomputed from the position on load
        sampler.pop(recount, None)
    save_state(dst, "sampler", sampler)
    sched = load_state(dst, "scheduler")
    sched["last_epoch"], sched["_step_count"] = step, step + 1
    save_state(dst, "scheduler", sched)
    (dst / MANIFEST).unlink()
    write_manifest(dst, step)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--big", type=Path, required=True)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench-scale"))
    ap.add_argument("--skip-prepare", action="store_true",
                    help="reuse the prepared dataset in the workdir cache (no preparation figures then)")
    ap.add_argument("--repeats", type=int, default=3, help="start-up measurements per corpus, shuffled order")
    ap.add_argument("--seed", type=int, default=None, help="the order's seed (default: drawn, recorded)")
    args = ap.parse_args()
    args.seed = order_seed(args.seed)
    work = args.workdir
    if not args.skip_prepare:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CHEFGENIUS_CACHE": str(work / "cache")}
    results: dict[str, object] = {"command": " ".join(["python", "bench/prepare_scale.py",
                                                       *[a for a in sys.argv[1:] if a != "--seed"]]
                                                      ) + f" --seed {args.seed}"}

    results["plain_read_s"], rows = plain_read(args.big)
    results["rows"] = rows
    if not args.skip_prepare:
        prep = timed([sys.executable, "-m", "chefgenius.cli", "data", "prepare", str(args.big)], env)
        results["prepare_wall_s"], results["prepare_peak_rss_gb"] = prep["wall_s"], prep["peak_rss_gb"]
        results["prepare_summary"] = prep["stdout"].strip().splitlines()[-1]
        results["bytes_per_token"] = float(re.search(r"\(([\d.]+) bytes/token\)", prep["stdout"]).group(1))
    again = timed([sys.executable, "-m", "chefgenius.cli", "data", "prepare", str(args.big)], env)
    results["prepare_again_wall_s"] = again["wall_s"]  # key matches: the store is re-verified and reused

    corpora = {"bundled": None, "big": str(args.big.resolve())}
    resume_extra = ["--allow-change", "training.max_steps", "--allow-change", "training.warmup_steps"]
    for name, data in corpora.items():  # a short real run with a checkpoint, moved to step 1,000,000
        (work / f"{name}.yaml").write_text(yaml.safe_dump(config(data, 2_000_000)))
        short = work / f"short-{name}.yaml"
        short.write_text(yaml.safe_dump({**config(data, 3), "checkpoint": {"every_steps": 3, "keep_last": 1}}))
        resumed = work / f"resume-{name}"
        shutil.rmtree(resumed, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "chefgenius.cli", "train", "-c", str(short), "-o", str(resumed),
                        "--no-sample"], env=env, check=True, capture_output=True)
        shutil.rmtree(resumed / "final")
        move_checkpoint_to(resumed, 1_000_000, 40)
        first_step_seconds(work / f"{name}.yaml", work / f"warm-{name}", env, 0, [])  # page cache, once
    samples: dict[str, dict[str, list[float]]] = {n: {"fresh": [], "resume": []} for n in corpora}
    for rep in range(args.repeats):
        plan = shuffled([(n, kind) for n in corpora for kind in ("fresh", "resume")], args.seed, rep)
        for name, kind in plan:
            cfg_path = work / f"{name}.yaml"
            if kind == "fresh":
                run = work / f"run-{name}"
                shutil.rmtree(run, ignore_errors=True)
                samples[name]["fresh"].append(first_step_seconds(cfg_path, run, env, 0, []))
            else:  # a resume leaves the checkpoint as it was (killed before its next save)
                samples[name]["resume"].append(first_step_seconds(cfg_path, work / f"resume-{name}", env,
                                                                  1_000_000, resume_extra))
    starts: dict[str, dict[str, object]] = {}
    for name in corpora:
        shutil.rmtree(work / f"rss-{name}", ignore_errors=True)  # a finished run there would exit at once
        rss = timed([sys.executable, "-m", "chefgenius.cli", "train", "-c", str(work / f"short-{name}.yaml"),
                     "-o", str(work / f"rss-{name}"), "--no-sample"], env)
        shutil.rmtree(work / f"rss-{name}", ignore_errors=True)
        starts[name] = {"fresh_first_step_s": statistics.median(samples[name]["fresh"]),
                        "resume_1e6_first_step_s": statistics.median(samples[name]["resume"]),
                        "samples": samples[name], "train_peak_rss_gb": rss["peak_rss_gb"]}
    results["starts"] = starts
    b, s = starts["big"], starts["bundled"]

    def each(name: str, kind: str) -> str:
        return ", ".join(f"{v:.2f}" for v in samples[name][kind])

    lines = [f"# Full-scale data ({rows:,} RecipeNLG-shaped rows)", "",
             f"`{results['command']}`; start-up figures are medians of {args.repeats} (each sample in brackets), "
             "big and bundled corpus in a shuffled order per repeat.", "",
             "| measurement | value | target |", "|---|---|---|",
             f"| plain single-process read (csv + json.loads of 3 columns) | {results['plain_read_s']:.1f} s | floor |"]
    if "prepare_wall_s" in results:
        lines += [f"| `data prepare`, first time | {results['prepare_wall_s']:.1f} s "
                  f"({results['prepare_wall_s'] / results['plain_read_s']:.2f}x the plain read) | <= 180 s |",
                  f"| `data prepare` peak RSS | {results['prepare_peak_rss_gb']:.2f} GB | <= 2 GB |",
                  f"| prepared size | {results['bytes_per_token']:.2f} bytes/token | <= 2.2 |"]
    lines += [f"| `data prepare` again (key matches, store verified) | {results['prepare_again_wall_s']:.1f} s | |",
              f"| start -> first step, fresh: big / bundled | {b['fresh_first_step_s']:.2f} s ({each('big', 'fresh')})"
              f" / {s['fresh_first_step_s']:.2f} s ({each('bundled', 'fresh')}): "
              f"+{b['fresh_first_step_s'] - s['fresh_first_step_s']:.2f} s | +<= 1.5 s |",
              f"| start -> first step, resume at step 1,000,000 mid-epoch: big / bundled | "
              f"{b['resume_1e6_first_step_s']:.2f} s ({each('big', 'resume')}) / {s['resume_1e6_first_step_s']:.2f} s"
              f" ({each('bundled', 'resume')}): +{b['resume_1e6_first_step_s'] - s['resume_1e6_first_step_s']:.2f} s"
              " | +<= 1.5 s |",
              f"| training peak RSS: big / bundled | {b['train_peak_rss_gb']:.2f} GB / {s['train_peak_rss_gb']:.2f} GB "
              f"(+{b['train_peak_rss_gb'] - s['train_peak_rss_gb']:.2f} GB) | +<= 1.3 GB |"]
    write_result("prepare_scale", lines, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
