"""Checkpoint save of a ~25M-parameter GPT-2 with AdamW state: time, bytes, peak memory; sync and async.

    python bench/checkpoint_save.py [--repeats 5]

Contenders, same process, same model and optimizer state (after one AdamW step), one after another:
- floor: the same tensors (weights, both AdamW moments) written with safetensors ``save_file`` and
  fsynced (files and directory), nothing else;
- chefgenius: ``CheckpointManager.save`` — model in HF format, tokenizer, optimizer, scheduler,
  sampler, train state, RNG, then fsync, sha256 manifest and atomic rename;
- Hugging Face Trainer ``_save_checkpoint`` of the same model and optimizer (weights as
  safetensors, optimizer with ``torch.save``; it neither fsyncs, hashes nor commits atomically).
- in-memory copy: the same tensors copied into CPU buffers allocated beforehand (the floor of what
  an asynchronous save must block training for);
- chefgenius async: ``CheckpointManager.save_async``: the time training is blocked (the snapshot),
  and the time until the background write is committed.
Peak memory: a fresh process per mode trains two steps (its peak RSS, reset through
/proc/self/clear_refs, is the training peak), then saves while training one more step.
Writes bench/results/checkpoint_save.{md,json}. Issue 10's targets: sync time <= 1.5x HF, bytes <=
1.01x HF; async blocked <= 1.2x the in-memory copy and <= 0.1x HF; peak during a save <= training
peak + one copy of model and optimizer state.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from common import write_result


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


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    tk = Tokenizer(models.BPE(unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.train_from_iterator(["chicken rice onion flour sugar butter eggs"] * 50,
                           trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return GPT2TokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                             pad_token="<|endoftext|>")


def chefgenius_pieces(opt):
    from chefgenius.config import TrainingConfig
    from chefgenius.data.loader import ResumableSampler
    from chefgenius.optim import build_scheduler
    from chefgenius.train_state import TrainState

    return {"optimizer": opt, "scheduler": build_scheduler(opt, TrainingConfig(), 1000),
            "sampler": ResumableSampler(list(range(1, 1001)), batch_size=8, grad_accum=1, seed=0),
            "train_state": TrainState(step=1)}


META = {"config": {}, "train_fingerprint": "x", "versions": {}}


def state_tensors(model, opt) -> list[torch.Tensor]:
    """Every tensor a snapshot copies (tied weights once): model state and optimizer state."""
    seen, out = set(), []
    for t in [*model.state_dict().values(), *(v for st in opt.state.values() for v in st.values()
                                               if isinstance(v, torch.Tensor))]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            out.append(t)
    return out


def copy_pairs(model, opt) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(buffer, source) for every tensor a snapshot copies: the in-memory copy floor."""
    return [(torch.empty_like(t), t) for t in state_tensors(model, opt)]


def state_bytes(model, opt) -> int:
    return sum(t.numel() * t.element_size() for t in state_tensors(model, opt))


def _hwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reset_hwm() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def memory_mode(mode: str) -> dict:
    """Run in a fresh process: training peak, then the peak while a save (sync or async) happens."""
    from chefgenius.checkpoint import CheckpointManager
    from chefgenius.config import CheckpointConfig

    torch.set_num_threads(1)
    tok = tokenizer()
    model, opt = model_and_optimizer(tok)
    pieces = chefgenius_pieces(opt)

    def train_step() -> None:
        ids = torch.randint(0, 8000, (8, 256))
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    train_step()
    _reset_hwm()
    train_step()
    train_step()
    train_peak = _hwm_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        manager = CheckpointManager(Path(tmp), CheckpointConfig(keep_last=1), lambda *a: None)
        _reset_hwm()
        if mode == "async":
            for step in (1, 2):  # the second save reuses the first one's buffers
                manager.save_async(step, model=model, tokenizer=tok, pieces=pieces, meta=META)
                train_step()
                manager.wait()
        else:
            manager.save(1, model=model, tokenizer=tok, pieces=pieces, meta=META)
            train_step()
        save_peak = _hwm_bytes()
    return {"train_peak": train_peak, "save_peak": save_peak, "state_bytes": state_bytes(model, opt)}


def measure_memory() -> dict[str, dict]:
    import subprocess
    import sys

    out = {}
    for mode in ("sync", "async"):
        done = subprocess.run([sys.executable, __file__, "--memory-mode", mode], capture_output=True, text=True,
                              check=True)
        out[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    ap.add_argument("--memory-mode", choices=["sync", "async"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_mode:
        print(json.dumps(memory_mode(args.memory_mode)))
        return
    torch.set_num_threads(1)
    from transformers import Trainer, TrainingArguments

    from chefgenius.checkpoint import CheckpointManager
    from chefgenius.config import CheckpointConfig

    names = {"floor": "floor: safetensors + fsync", "sync": "chefgenius, synchronous",
             "hf": "HF Trainer _save_checkpoint", "copy1": "in-memory copy into reused buffers, 1 thread",
             "copy": "in-memory copy into reused buffers, all cores",
             "blocked": "chefgenius async: training blocked", "background": "chefgenius async: until committed"}
    timings: dict[str, list[float]] = {k: [] for k in names}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tok = tokenizer()
        model, opt = model_and_optimizer(tok)
        n_params = sum(p.numel() for p in model.parameters())
        pieces = chefgenius_pieces(opt)
        manager = CheckpointManager(root / "cg", CheckpointConfig(keep_last=100), lambda *a: None)
        background = CheckpointManager(root / "cg-async", CheckpointConfig(keep_last=100), lambda *a: None)
        background.save_async(0, model=model, tokenizer=tok, pieces=pieces, meta=META)  # allocates the buffers
        background.wait()
        pairs = copy_pairs(model, opt)
        for buf, src in pairs:  # touched once, like the async buffers after their first save
            buf.copy_(src)
        cores = len(os.sched_getaffinity(0))
        shares = [pairs[i::cores] for i in range(cores)]  # tensor copies release the GIL
        pool = ThreadPoolExecutor(max_workers=cores)
        hf = Trainer(model=model, args=TrainingArguments(output_dir=str(root / "hf"), report_to="none",
                                                        use_cpu=True, save_strategy="steps"),
                     optimizers=(opt, pieces["scheduler"]))
        for rep in range(1, args.repeats + 1):
            t0 = time.perf_counter()
            save_floor(root / f"floor-{rep}", model, opt)
            timings["floor"].append(time.perf_counter() - t0)
            sizes["floor"] = dir_bytes(root / f"floor-{rep}")
            shutil.rmtree(root / f"floor-{rep}")
            pieces["train_state"].step = rep
            t0 = time.perf_counter()
            path = manager.save(rep, model=model, tokenizer=tok, pieces=pieces, meta=META)
            timings["sync"].append(time.perf_counter() - t0)
            sizes["sync"] = dir_bytes(path)
            hf.state.global_step = rep
            t0 = time.perf_counter()
            hf._save_checkpoint(hf.model, trial=None)
            timings["hf"].append(time.perf_counter() - t0)
            sizes["hf"] = dir_bytes(root / "hf" / f"checkpoint-{rep}")
            t0 = time.perf_counter()
            for buf, src in pairs:
                buf.copy_(src)
            timings["copy1"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            list(pool.map(lambda share: [b.copy_(s) for b, s in share], shares))
            timings["copy"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            background.save_async(rep, model=model, tokenizer=tok, pieces=pieces, meta=META)
            timings["blocked"].append(time.perf_counter() - t0)
            path = background.wait()
            timings["background"].append(time.perf_counter() - t0)
            sizes["blocked"] = sizes["background"] = dir_bytes(path)
    memory = {} if args.no_memory else measure_memory()
    med = {k: statistics.median(v) for k, v in timings.items()}
    rows = [{"contender": names[k], "median_s": round(med[k], 4), "min_s": round(min(timings[k]), 4),
             "max_s": round(max(timings[k]), 4), "vs_hf_time": round(med[k] / med["hf"], 3),
             "vs_floor_time": round(med[k] / med["floor"], 3),
             "vs_copy_time": round(med[k] / med["copy"], 3),
             "bytes": sizes.get(k), "vs_hf_bytes": round(sizes[k] / sizes["hf"], 4) if k in sizes else None,
             "all_s": [round(x, 4) for x in timings[k]]} for k in names]
    command = f"python bench/checkpoint_save.py --repeats {args.repeats}"
    mem_rows = []
    for mode, m in memory.items():
        extra = m["save_peak"] - m["train_peak"]
        mem_rows.append({"mode": mode, **m, "extra_bytes": extra, "extra_vs_state": round(extra / m["state_bytes"], 3)})
    lines = ["# Checkpoint save", "", f"`{command}`; GPT-2 with {n_params / 1e6:.1f}M parameters and AdamW state "
             f"({state_bytes(model, opt) / 2**20:.0f} MiB of tensors), one thread, median of {args.repeats} "
             "(the async buffers allocated by an earlier save, as in training).", "",
             "| contender | median s | min | max | vs HF save | vs safetensors floor | vs in-memory copy | "
             "bytes | vs HF bytes |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        size = f"{r['bytes']:,} | {r['vs_hf_bytes']}" if r["bytes"] else " | "
        lines.append(f"| {r['contender']} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['max_s']:.3f} | "
                     f"{r['vs_hf_time']} | {r['vs_floor_time']} | {r['vs_copy_time']} | {size} |")
    blocked = med["blocked"]
    lines += ["", f"Targets: synchronous save {med['sync'] / med['hf']:.2f}x HF (<= 1.5x); bytes "
              f"{sizes['sync'] / sizes['hf']:.4f}x HF (<= 1.01x); async training blocked {blocked / med['copy']:.2f}x "
              f"the in-memory copy on all cores (<= 1.2x; {blocked / med['copy1']:.2f}x the one-thread copy) and "
              f"{blocked / med['hf']:.3f}x HF (<= 0.1x).", "",
              "Peak memory (fresh process per mode; RSS high-water mark):", "",
              "| mode | training peak MiB | peak while saving MiB | extra MiB | extra / (model + optimizer state) |",
              "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['mode']} | {r['train_peak'] / 2**20:.0f} | {r['save_peak'] / 2**20:.0f} | "
              f"{r['extra_bytes'] / 2**20:.0f} | {r['extra_vs_state']} (target <= 1) |" for r in mem_rows]
    write_result("checkpoint_save", lines, {"command": command, "parameters": n_params, "repeats": args.repeats,
                                            "rows": rows, "memory": mem_rows})


if __name__ == "__main__":
    main()
