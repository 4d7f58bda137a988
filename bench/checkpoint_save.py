"""Synchronous checkpoint save of a ~25M-parameter GPT-2 with AdamW state: time and bytes.

    python bench/checkpoint_save.py [--repeats 5]

Contenders, same process, same model and optimizer state (after one AdamW step), one after another:
- floor: the same tensors (weights, both AdamW moments) written with safetensors ``save_file`` and
  fsynced (files and directory), nothing else;
- chefgenius: ``CheckpointManager.save`` — model in HF format, tokenizer, optimizer, scheduler,
  sampler, train state, RNG, then fsync, sha256 manifest and atomic rename;
- Hugging Face Trainer ``_save_checkpoint`` of the same model and optimizer (weights as
  safetensors, optimizer with ``torch.save``; it neither fsyncs, hashes nor commits atomically).
Writes bench/results/checkpoint_save.{md,json}. Issue 10's targets: time <= 1.5x HF, bytes <= 1.01x HF.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def model_and_optimizer(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    # A ~25M model needs a realistic vocabulary: 8,000 rows (the tokenizer only has to be saved).
    cfg = GPT2Config(vocab_size=8000, n_positions=512, n_embd=512, n_layer=7, n_head=8,
                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = GPT2LMHeadModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, 8000, (2, 64))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    return model, opt


def dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def fsync_tree(d: Path) -> None:
    for p in sorted(d.rglob("*")):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
    fd = os.open(d, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def save_floor(d: Path, model, opt) -> None:
    from safetensors.torch import save_file

    d.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"},
              str(d / "model.safetensors"))
    moments = {}
    for i, st in enumerate(opt.state.values()):
        moments[f"{i}.exp_avg"] = st["exp_avg"]
        moments[f"{i}.exp_avg_sq"] = st["exp_avg_sq"]
    save_file(moments, str(d / "optimizer.safetensors"))
    fsync_tree(d)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from transformers import GPT2TokenizerFast, Trainer, TrainingArguments

    from chefgenius.checkpoint import CheckpointManager
    from chefgenius.config import CheckpointConfig, TrainingConfig
    from chefgenius.data.loader import ResumableSampler
    from chefgenius.data.tokenize import default_cache_dir  # noqa: F401  (package import check)
    from chefgenius.optim import build_scheduler
    from chefgenius.trainer import TrainState

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers

        tk = Tokenizer(models.BPE(unk_token=None))
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.train_from_iterator(["chicken rice onion flour sugar butter eggs"] * 50,
                               trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                   initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        tok = GPT2TokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                pad_token="<|endoftext|>")
        model, opt = model_and_optimizer(tok)
        n_params = sum(p.numel() for p in model.parameters())
        sched = build_scheduler(opt, TrainingConfig(), 1000)
        sampler = ResumableSampler(list(range(1, 1001)), batch_size=8, grad_accum=1, seed=0)
        state = TrainState(step=1)
        manager = CheckpointManager(root / "cg", CheckpointConfig(keep_last=100), lambda *a: None)
        hf = Trainer(model=model, args=TrainingArguments(output_dir=str(root / "hf"), report_to="none",
                                                        use_cpu=True, save_strategy="steps"),
                     optimizers=(opt, sched))
        hf.state.global_step = 0
        timings: dict[str, list[float]] = {"floor (safetensors + fsync)": [], "chefgenius": [],
                                           "HF Trainer _save_checkpoint": []}
        sizes: dict[str, int] = {}
        for rep in range(args.repeats):
            t0 = time.perf_counter()
            save_floor(root / f"floor-{rep}", model, opt)
            timings["floor (safetensors + fsync)"].append(time.perf_counter() - t0)
            sizes["floor (safetensors + fsync)"] = dir_bytes(root / f"floor-{rep}")
            state.step = rep + 1
            t0 = time.perf_counter()
            path = manager.save(rep + 1, model=model, tokenizer=tok,
                                pieces={"optimizer": opt, "scheduler": sched, "sampler": sampler,
                                        "train_state": state}, meta={"config": {}, "train_fingerprint": "x",
                                                                     "versions": {}})
            timings["chefgenius"].append(time.perf_counter() - t0)
            sizes["chefgenius"] = dir_bytes(path)
            hf.state.global_step = rep + 1
            t0 = time.perf_counter()
            hf._save_checkpoint(hf.model, trial=None)
            timings["HF Trainer _save_checkpoint"].append(time.perf_counter() - t0)
            sizes["HF Trainer _save_checkpoint"] = dir_bytes(root / "hf" / f"checkpoint-{rep + 1}")
            for d in (root / f"floor-{rep}",):
                shutil.rmtree(d)
    med = {k: statistics.median(v) for k, v in timings.items()}
    hf_t, hf_b = med["HF Trainer _save_checkpoint"], sizes["HF Trainer _save_checkpoint"]
    floor_t = med["floor (safetensors + fsync)"]
    rows = [{"contender": k, "median_s": round(med[k], 3), "min_s": round(min(timings[k]), 3),
             "max_s": round(max(timings[k]), 3), "vs_hf_time": round(med[k] / hf_t, 3),
             "vs_floor_time": round(med[k] / floor_t, 3), "bytes": sizes[k], "vs_hf_bytes": round(sizes[k] / hf_b, 4)}
            for k in timings]
    import transformers

    info = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "torch": torch.__version__,
            "transformers": transformers.__version__, "parameters": n_params, "repeats": args.repeats,
            "command": f"python bench/checkpoint_save.py --repeats {args.repeats}"}
    lines = ["# Synchronous checkpoint save", "", f"`{info['command']}` on {info['machine']}, torch {info['torch']}, "
             f"transformers {info['transformers']}; GPT-2 with {n_params / 1e6:.1f}M parameters and AdamW state; "
             f"median of {args.repeats}.", "",
             "| contender | median s | min | max | vs HF time | vs floor time | bytes | vs HF bytes |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['contender']} | {r['median_s']} | {r['min_s']} | {r['max_s']} | {r['vs_hf_time']} | "
              f"{r['vs_floor_time']} | {r['bytes']:,} | {r['vs_hf_bytes']} |" for r in rows]
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "checkpoint_save.json").write_text(json.dumps({"info": info, "rows": rows}, indent=2))
    (out / "checkpoint_save.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
