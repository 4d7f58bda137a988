"""Start-up: process start -> end of the first optimizer step, chefgenius (fresh and resuming) vs the
Hugging Face Trainer.

    python bench/startup.py [--repeats 5] [--order-seed N]

Each contender is a fresh ``python`` process timed from ``Popen`` to the moment its first step is
on record (chefgenius: the metrics.jsonl line of that step; HF: a callback's marker file), then
killed. Same GPT-2 tiny, same tokenised bundled corpus (the HF script reads the token ids from a
JSON file written beforehand, so it does no tokenising of its own), one thread. Resuming at steps
1,000 and 100,000: the step-10 checkpoint rewritten as if taken there, mid-epoch (see
prepare_scale.py; for a 2.2M-recipe epoch, resuming at step 1,000,000 is measured there).
Writes bench/results/startup.{md,json}.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import judged, order_seed, paired, said, shuffled, train_config, write_result
from prepare_scale import move_checkpoint_to

HF_SCRIPT = r'''
import json, sys, time
from pathlib import Path
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments
import torch
torch.set_num_threads(1)
work = Path(sys.argv[1])
rows = json.loads((work / "rows.json").read_text())
meta = json.loads((work / "meta.json").read_text())
class Mark(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 1:
            (work / "first_step").write_text(str(time.time()))
def collate(features):
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), width), meta["pad"]); lab = torch.full((len(features), width), -100)
    att = torch.zeros((len(features), width), dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f["input_ids"]); ids[i, :n] = torch.tensor(f["input_ids"]); lab[i, :n] = torch.tensor(f["labels"])
        att[i, :n] = 1
    return {"input_ids": ids, "attention_mask": att, "labels": lab}
torch.manual_seed(1)
model = GPT2LMHeadModel(GPT2Config(vocab_size=meta["vocab"], n_positions=256, n_embd=128, n_layer=4, n_head=4))
args = TrainingArguments(output_dir=str(work / "out"), per_device_train_batch_size=8, max_steps=1000,
                         save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
                         remove_unused_columns=False, dataloader_num_workers=0, logging_steps=1000)
Trainer(model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=[Mark()]).train()
'''


def chefgenius_config(work: Path) -> Path:
    cfg = train_config("gpt2", "tiny", 1000, data={"max_prompt_tokens": 48, "max_target_tokens": 192},
                       training={"seed": 1, "max_steps": 1_000_000, "batch_size": 8, "num_threads": 1},
                       checkpoint={"every_steps": 10}, logging={"every_steps": 1})
    path = work / "cg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def logged_step(run: Path) -> int:
    f = run / "metrics.jsonl"
    if not f.is_file():
        return 0
    return max([json.loads(x).get("step", 0) for x in f.read_text().splitlines() if x.strip()] or [0])


def timed(cmd: list[str], done, env: dict[str, str]) -> float:
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                         start_new_session=True)
    while not done():
        if p.poll() is not None:
            raise SystemExit(f"{cmd} ended before its first step")
        time.sleep(0.005)
    elapsed = time.time() - t0
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    return elapsed


def resumable_copy(base: Path, run: Path, step: int) -> Path:
    """A copy of ``base`` whose only checkpoint is its step-10 one, moved to ``step`` (mid-epoch)."""
    from chefgenius.checkpoint import list_checkpoints, load_state
    from chefgenius.checkpoint.layout import checkpoint_dir

    shutil.copytree(base, run)
    for extra in list_checkpoints(run / "checkpoints"):
        if extra.step != 10:
            shutil.rmtree(extra.path)
    if step != 10:
        sampler = load_state(checkpoint_dir(run / "checkpoints", 10), "sampler")
        half = sampler["num_samples"] // 2 // sampler["samples_per_step"] * sampler["samples_per_step"]
        move_checkpoint_to(run, step, half)
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--order-seed", type=int, help="the seed of the contenders' order (default: drawn, recorded)")
    args = ap.parse_args()
    seed = order_seed(args.order_seed)
    resume_steps = (10, 1_000, 100_000)
    res: dict[str, list[float]] = {"chefgenius, fresh": [], **{f"chefgenius, resuming at step {s:,}": []
                                                               for s in resume_steps},
                                   "Hugging Face Trainer, fresh": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {**os.environ, "CHEFGENIUS_CACHE": str(work / "cache"), "OMP_NUM_THREADS": "1"}
        cfg = chefgenius_config(work)
        cg = [sys.executable, "-m", "chefgenius", "train", "-c", str(cfg), "--no-sample"]
        # Prepare once (both sides then read prepared token ids) and dump the ids for the HF script.
        timed([*cg, "-o", str(work / "warm")], lambda: logged_step(work / "warm") >= 1, env)
        os.environ["CHEFGENIUS_CACHE"] = env["CHEFGENIUS_CACHE"]
        from chefgenius.checkpoint.layout import checkpoint_dir
        from chefgenius.config import load_config
        from chefgenius.data.prepared import prepare_dataset
        from chefgenius.data.tokenization import default_cache_dir

        c = load_config(cfg, [])
        data = prepare_dataset(c.data, is_seq2seq=False, tokenizer=None, vocab_size=c.model.vocab_size,
                               cache_dir=default_cache_dir(None), log=lambda *a: None, progress=False)
        tok = data.tokenizer()
        rows = [{"input_ids": x.tolist(), "labels": y.tolist()} for x, y in map(data.train.example,
                                                                               range(len(data.train)))]
        (work / "rows.json").write_text(json.dumps(rows))
        (work / "meta.json").write_text(json.dumps({"pad": tok.pad_token_id, "vocab": len(tok)}))
        (work / "hf.py").write_text(HF_SCRIPT)
        # A run with a checkpoint at step 10 to resume from (copied fresh for every repeat).
        timed([*cg, "-o", str(work / "base")], lambda: checkpoint_dir(work / "base" / "checkpoints", 10).is_dir(), env)
        def fresh(rep: int) -> float:
            run = work / f"fresh{rep}"
            return timed([*cg, "-o", str(run)], lambda: logged_step(run) >= 1, env)

        def resumed(rep: int, step: int) -> float:
            resume = resumable_copy(work / "base", work / f"resume{rep}-{step}", step)
            return timed([*cg, "-o", str(resume)], lambda: logged_step(resume) > step and _resumed(resume), env)

        def hf(rep: int) -> float:
            hf_dir = work / f"hf{rep}"
            hf_dir.mkdir()
            for name in ("rows.json", "meta.json"):
                (hf_dir / name).write_text((work / name).read_text())
            return timed([sys.executable, str(work / "hf.py"), str(hf_dir)], lambda: (hf_dir / "first_step").exists(),
                         env)

        runners = {"chefgenius, fresh": fresh, "Hugging Face Trainer, fresh": hf,
                   **{f"chefgenius, resuming at step {s:,}": functools.partial(resumed, step=s) for s in resume_steps}}
        for rep in range(args.repeats):
            order = shuffled(runners, seed, rep)
            for name in order:
                res[name].append(runners[name](rep))
            print({k: round(v[-1], 2) for k, v in res.items()}, flush=True)
    med = {k: statistics.median(v) for k, v in res.items()}
    hf = med["Hugging Face Trainer, fresh"]
    fresh = med["chefgenius, fresh"]
    rows_out = [{"contender": k, "median_s": round(v, 2), "min_s": round(min(res[k]), 2),
                 "max_s": round(max(res[k]), 2), "vs_hf": round(v / hf, 3), "vs_fresh": round(v / fresh, 3),
                 "all_s": [round(x, 2) for x in res[k]]} for k, v in med.items()]
    vs_hf = paired(res["chefgenius, fresh"], res["Hugging Face Trainer, fresh"], higher_is_better=False)
    vs_fresh = {f"resuming at step {s:,}": paired(res[f"chefgenius, resuming at step {s:,}"], res["chefgenius, fresh"],
                                                 higher_is_better=False) for s in resume_steps}
    command = f"python bench/startup.py --repeats {args.repeats} --order-seed {seed}"
    lines = ["# Start-up: process start -> first optimizer step", "", f"`{command}`; GPT-2 tiny, bundled corpus "
             f"(prepared once beforehand), one thread, median of {args.repeats}, contenders in an order shuffled each "
             "repeat. Target: <= 0.8x the HF Trainer; resuming flat within noise.", "",
             "| contender | median s | min | max | vs HF Trainer | vs chefgenius fresh |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['contender']} | {r['median_s']} | {r['min_s']} | {r['max_s']} | {r['vs_hf']} | {r['vs_fresh']} |"
              for r in rows_out]
    lines += ["", f"Paired repeat by repeat (time ratios, 95% bootstrap interval): chefgenius fresh {said(vs_hf)} the "
              f"time of the HF Trainer, target <= 0.8: {judged(vs_hf, at_most=0.8)}. Against chefgenius fresh: "
              + "; ".join(f"{k} {said(v)}" for k, v in vs_fresh.items()) + "."]
    write_result("startup", lines, {"command": command, "repeats": args.repeats, "order_seed": seed, "rows": rows_out,
                                    "paired": {"fresh_vs_hf": vs_hf, **vs_fresh}})


def _resumed(run: Path) -> bool:
    return any(json.loads(x).get("event") == "resume" for x in (run / "metrics.jsonl").read_text().splitlines()
               if x.strip())


if __name__ == "__main__":
    main()
