"""Checkpoint save of a GPT-2 with AdamW state against the disk's floor and the peers a user would pick.

    python bench/checkpoint_save.py [--preset large|base] [--repeats 5] [--no-memory]

One process, one model (``large``: ~160M parameters with an 8k vocabulary, ~1.9 GB of weights and
AdamW moments; ``base``: ~26M) after one AdamW step. Contenders, in a shuffled order each repeat,
with ``os.sync()`` between them so that nobody pays for the previous one's dirty pages:
- floor: the same tensors (weights, both AdamW moments) written with safetensors ``save_file``,
  one file per thread side by side, every file and the directory fsynced; nothing else;
- floor, O_DIRECT: the same tensor bytes (no headers) in the same three files, written past the page
  cache in 8 MiB aligned blocks, fsynced: the floor of the way chefgenius writes (on this VM's disk
  buffered and direct writes each win on some days; both floors are shown);
- chefgenius, synchronous: ``Checkpointer.save`` with ``checkpoint.async: false``: model in HF format,
  tokenizer, optimizer, scheduler, sampler, train state, RNG, digest manifest, fsync, atomic rename;
- chefgenius async: ``Checkpointer.save`` with ``checkpoint.async: true``: the time training is blocked
  (the snapshot), and the time until the background write is committed;
- torch.distributed.checkpoint ``save`` and ``async_save`` (``no_dist``) of the model and optimizer
  state dicts (DCP fsyncs its files and renames its metadata into place; it keeps no checksums and
  writes its data files into the final directory);
- Hugging Face Trainer ``_save_checkpoint`` as it ships (no fsync, no digest, no atomic commit), and
  the same followed by an fsync of every file;
- in-memory copy: the same tensors copied into buffers allocated beforehand, on one thread and on all
  cores balanced by bytes as chefgenius balances them (the floor of what an asynchronous save blocks).
  The blocked-time target pairs each async save (three per repeat) with the balanced copy taken just
  before and just after it: this VM's memory bandwidth drifts by up to 2x between contenders a minute
  apart (a 1.9 GB copy took 0.076-0.150 s in one run), which buried the save's own cost; the ratio
  against the copy contender of the same repeat is reported beside it.
A contender faster than its floor flags the run. The targets are paired: each repeat's ratio
against the floor written in the same repeat (seconds apart), then the median of those ratios, so
that the disk's changing speed over the minutes of a run cancels out. Peak memory: a fresh process per mode trains two
steps (their RSS peak is the training peak), then saves while training one more step.
Writes bench/results/checkpoint_save.{md,json} (``large``) or checkpoint_save_base.{md,json}.
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
from common import gpt2, judged, median_interval, of_ratios, order_seed, shuffled, with_adamw_state, write_result

SIZES = ("base", "large")  # chefgenius's GPT-2 presets this benchmark saves


def model_and_optimizer(tokenizer, preset: str):
    model = gpt2(preset, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return model, with_adamw_state(model)


def dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def fsync_tree(d: Path) -> None:
    def sync(p: Path) -> None:
        fd = os.open(p, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    for p in sorted(d.rglob("*")):
        if p.is_file():
            sync(p)
    sync(d)


def floor_files(model, opt) -> dict[str, dict[str, torch.Tensor]]:
    """The state as three safetensors files: weights (tied ones once), first and second moments."""
    weights = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    first = {f"{i}": st["exp_avg"] for i, st in enumerate(opt.state.values())}
    second = {f"{i}": st["exp_avg_sq"] for i, st in enumerate(opt.state.values())}
    return {"model": weights, "exp_avg": first, "exp_avg_sq": second}


def save_floor(d: Path, files: dict[str, dict[str, torch.Tensor]], pool: ThreadPoolExecutor) -> None:
    from safetensors.torch import save_file

    d.mkdir()

    def one(item: tuple[str, dict[str, torch.Tensor]]) -> None:
        name, tensors = item
        save_file(tensors, str(d / f"{name}.safetensors"))
        fd = os.open(d / f"{name}.safetensors", os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    list(pool.map(one, files.items()))
    fd = os.open(d, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def save_floor_direct(d: Path, files: dict[str, dict[str, torch.Tensor]], pool: ThreadPoolExecutor) -> None:
    import mmap

    import numpy as np

    d.mkdir()
    block = 8 << 20

    def one(item: tuple[str, dict[str, torch.Tensor]]) -> None:
        name, tensors = item
        fd = os.open(d / f"{name}.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
        buf, used, size = mmap.mmap(-1, block), 0, 0
        staging = np.frombuffer(buf, dtype=np.uint8)  # numpy copies release the GIL, as chefgenius's do
        try:
            for t in tensors.values():
                raw = t.contiguous().reshape(-1).view(torch.uint8).numpy()
                size += len(raw)
                done = 0
                while done < len(raw):
                    n = min(len(raw) - done, block - used)
                    staging[used:used + n] = raw[done:done + n]
                    used, done = used + n, done + n
                    if used == block:
                        os.write(fd, buf)
                        used = 0
            if used:
                os.write(fd, memoryview(buf)[:used + (-used % 4096)])
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)
            del staging
            buf.close()

    list(pool.map(one, files.items()))
    fd = os.open(d, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


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
    from chefgenius.training.optim import build_scheduler
    from chefgenius.training.train_state import TrainState

    return {"optimizer": opt, "scheduler": build_scheduler(opt, TrainingConfig(), 1000),
            "sampler": ResumableSampler(list(range(1, 1001)), batch_size=8, grad_accum=1, seed=0),
            "train_state": TrainState(step=1)}


META = {"config": {}, "train_fingerprint": "x", "versions": {}}


def checkpointer(root: Path, model, opt, tok, *, background: bool, pieces: dict | None = None):
    """The trainer's checkpointer over ``root``, tracking the model, its optimizer and the other pieces
    (``pieces``: shared with another checkpointer)."""
    from chefgenius.checkpoint.checkpointer import Checkpointer, ModelState
    from chefgenius.config import CheckpointConfig

    ck = Checkpointer(root, CheckpointConfig(keep_last=1, keep_best=0, **{"async": background}), lambda *a: None)
    pieces = pieces if pieces is not None else chefgenius_pieces(opt)
    ck.track(ModelState(model, opt, tok), {k: v for k, v in pieces.items() if k != "optimizer"}, META)
    return ck


def state_tensors(model, opt) -> list[torch.Tensor]:
    """Every tensor a snapshot copies (tied weights once): model state and optimizer state."""
    seen, out = set(), []
    for t in [*model.state_dict().values(), *(v for st in opt.state.values() for v in st.values()
                                               if isinstance(v, torch.Tensor))]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            out.append(t)
    return out


def balanced_shares(pairs: list[tuple[torch.Tensor, torch.Tensor]], workers: int) -> list[list]:
    """Largest first onto the least loaded thread, by bytes (chefgenius's snapshot does the same)."""
    from chefgenius.checkpoint.format import balanced

    return balanced(pairs, workers, lambda bt: bt[0].numel() * bt[0].element_size())


def state_bytes(model, opt) -> int:
    return sum(t.numel() * t.element_size() for t in state_tensors(model, opt))


def _hwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def memory_mode(mode: str, preset: str) -> dict:
    """Run in a fresh process: training peak, then the peak while a save (sync or async) happens."""
    tok = tokenizer()
    model, opt = model_and_optimizer(tok, preset)

    def train_step() -> None:
        ids = torch.randint(0, 8000, (1, 64))
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    train_step()
    Path("/proc/self/clear_refs").write_text("5")
    train_step()
    train_step()
    train_peak = _hwm_bytes()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        ck = checkpointer(Path(tmp), model, opt, tok, background=mode == "async")
        Path("/proc/self/clear_refs").write_text("5")
        if mode == "async":
            for step in (1, 2):  # the second save reuses the first one's buffers
                ck.save(step, val_loss=None)
                train_step()
                ck.finish()
        else:
            ck.save(1, val_loss=None)
            train_step()
        save_peak = _hwm_bytes()
    return {"train_peak": train_peak, "save_peak": save_peak, "state_bytes": state_bytes(model, opt)}


def measure_memory(preset: str) -> list[dict]:
    import subprocess
    import sys

    out = []
    for mode in ("sync", "async"):
        done = subprocess.run([sys.executable, __file__, "--memory-mode", mode, "--preset", preset],
                              capture_output=True, text=True, check=True)
        m = json.loads(done.stdout.strip().splitlines()[-1])
        extra = m["save_peak"] - m["train_peak"]
        out.append({"mode": mode, **m, "extra_bytes": extra, "extra_vs_state": round(extra / m["state_bytes"], 3)})
    return out


NAMES = {"floor": "floor: safetensors, files side by side, fsync",
         "floor_direct": "floor: same bytes, O_DIRECT, files side by side, fsync", "sync": "chefgenius, synchronous",
         "blocked": "chefgenius async: training blocked", "background": "chefgenius async: until committed",
         "dcp": "torch DCP save", "dcp_blocked": "torch DCP async_save: training blocked",
         "dcp_background": "torch DCP async_save: until written", "hf": "HF Trainer _save_checkpoint (as shipped)",
         "hf_fsync": "HF Trainer _save_checkpoint + fsync", "copy1": "in-memory copy, 1 thread",
         "copy": "in-memory copy, all cores, balanced by bytes",
         "copy_beside": "the same copy, just before and after each async save (mean of the two)"}
ASYNC_SAVES = 3  # background saves per repeat, each paired with the copies beside it


def contenders(root: Path, model, opt, tok, blocked_beside: list[float]) -> dict[str, object]:
    """Each contender: a function of the repeat number returning {name: seconds} and the bytes written.
    ``blocked_beside`` collects each async save's blocked time over the copies taken beside it."""
    import torch.distributed.checkpoint as dcp
    from transformers import Trainer, TrainingArguments

    from chefgenius.checkpoint.store import finish_removals

    pieces = chefgenius_pieces(opt)
    synchronous = checkpointer(root / "cg", model, opt, tok, background=False, pieces=pieces)
    background = checkpointer(root / "cg-async", model, opt, tok, background=True, pieces=pieces)
    background.save(0, val_loss=None)  # allocates the buffers
    background.wait()
    pairs = [(torch.empty_like(t), t) for t in state_tensors(model, opt)]
    for buf, src in pairs:  # touched once, like the async buffers after their first save
        buf.copy_(src)
    cores = len(os.sched_getaffinity(0))
    shares = balanced_shares(pairs, cores)
    pool = ThreadPoolExecutor(max_workers=max(cores, 3))
    files = floor_files(model, opt)
    hf = Trainer(model=model, args=TrainingArguments(output_dir=str(root / "hf"), report_to="none", use_cpu=True,
                                                    save_strategy="steps", save_total_limit=1),
                 optimizers=(opt, pieces["scheduler"]))

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def floor_of(name: str, save) -> object:
        def run(rep):
            d = root / f"{name}-{rep}"
            s = timed(lambda: save(d, files, pool))
            size = dir_bytes(d)
            shutil.rmtree(d)
            return {name: s}, size
        return run

    def sync(rep):
        pieces["train_state"].step = rep
        s = timed(lambda: synchronous.save(rep, val_loss=None))
        finish_removals()  # the previous checkpoint, deleted after the save returned (as in training)
        return {"sync": s}, dir_bytes(root / "cg" / f"step-{rep:07d}")

    def balanced_copy() -> float:
        return timed(lambda: list(pool.map(lambda share: [b.copy_(s) for b, s in share], shares)))

    def in_background(rep):
        """ASYNC_SAVES saves, each between two balanced copies: this VM's memory bandwidth drifts by 2x
        within a minute, so the blocked-time target compares each save with copies taken beside it."""
        got: dict[str, list[float]] = {"blocked": [], "background": [], "copy_beside": []}
        for j in range(ASYNC_SAVES):
            before = balanced_copy()
            step = rep * ASYNC_SAVES + j
            pieces["train_state"].step = step
            t0 = time.perf_counter()
            background.save(step, val_loss=None)
            blocked = time.perf_counter() - t0
            path = background.wait()
            background_s = time.perf_counter() - t0
            finish_removals()
            os.sync()
            beside = (before + balanced_copy()) / 2
            got["blocked"].append(blocked)
            got["background"].append(background_s)
            got["copy_beside"].append(beside)
            blocked_beside.append(blocked / beside)
        return {k: statistics.median(v) for k, v in got.items()}, dir_bytes(path)

    def state() -> dict:
        return {"model": model.state_dict(), "optim": opt.state_dict()}

    def dcp_save(rep):
        d = root / f"dcp-{rep}"
        s = timed(lambda: dcp.save(state(), checkpoint_id=str(d), no_dist=True))
        size = dir_bytes(d)
        shutil.rmtree(d)
        return {"dcp": s}, size

    def dcp_async(rep):
        d = root / f"dcp-async-{rep}"
        t0 = time.perf_counter()
        future = dcp.async_save(state(), checkpoint_id=str(d), no_dist=True)
        blocked = time.perf_counter() - t0
        (future.upload_completion if hasattr(future, "upload_completion") else future).result()
        total = time.perf_counter() - t0
        size = dir_bytes(d)
        shutil.rmtree(d)
        return {"dcp_blocked": blocked, "dcp_background": total}, size

    def hf_save(rep, fsync: bool):
        hf.state.global_step = rep
        out = root / "hf" / f"checkpoint-{rep}"
        t0 = time.perf_counter()
        hf._save_checkpoint(hf.model, trial=None)
        if fsync:
            fsync_tree(out)
        s = time.perf_counter() - t0
        size = dir_bytes(out)
        shutil.rmtree(out)
        return {"hf_fsync" if fsync else "hf": s}, size

    def copies(rep):
        def one():
            for buf, src in pairs:
                buf.copy_(src)
        return {"copy1": timed(one), "copy": balanced_copy()}, None

    return {"floor": floor_of("floor", save_floor), "floor_direct": floor_of("floor_direct", save_floor_direct),
            "sync": sync, "async": in_background, "dcp": dcp_save,
            "dcp_async": dcp_async,
            "hf": lambda rep: hf_save(rep, False), "hf_fsync": lambda rep: hf_save(rep, True), "copy": copies}


def direct_io_refusal(directory: Path) -> str | None:
    """Why ``directory``'s filesystem refuses O_DIRECT (tmpfs does: EINVAL), or None where it takes it."""
    probe = directory / ".o_direct_probe"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644))
    except OSError as err:
        return f"this filesystem refuses O_DIRECT: {err.strerror}"
    finally:
        probe.unlink(missing_ok=True)
    return None


def table(med: dict, timings: dict, sizes: dict, floors: dict) -> list[str]:
    lines = ["| contender | median s | min | max | MB/s | vs floor (throughput) | vs DCP save | bytes |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for k, label in NAMES.items():
        if k not in med:
            continue
        size = sizes.get(k)
        mbs = f"{size / med[k] / 1e6:.0f}" if size and k not in ("blocked", "dcp_blocked") else ""
        vs_floor = f"{floors['floor'] / med[k] * size / sizes['floor']:.2f}" if size and k in floors["writes"] else ""
        vs_dcp = f"{med['dcp'] / med[k]:.2f}" if k in floors["writes"] else ""
        lines.append(f"| {label} | {med[k]:.3f} | {min(timings[k]):.3f} | {max(timings[k]):.3f} | {mbs} | "
                     f"{vs_floor} | {vs_dcp} | {f'{size:,}' if size else ''} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="large", choices=SIZES)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    ap.add_argument("--quick", action="store_true", help="base size, one repeat, no memory: a smoke test")
    ap.add_argument("--memory-mode", choices=["sync", "async"], help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=None, help="the order's seed (default: a fresh one, recorded)")
    args = ap.parse_args()
    args.seed = order_seed(args.seed)
    if args.memory_mode:
        print(json.dumps(memory_mode(args.memory_mode, args.preset)))
        return
    if args.quick:
        args.preset, args.repeats, args.no_memory = "base", 1, True
    timings: dict[str, list[float]] = {k: [] for k in NAMES}
    sizes: dict[str, int] = {}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        tok = tokenizer()
        model, opt = model_and_optimizer(tok, args.preset)
        n_params = sum(p.numel() for p in model.parameters())
        blocked_beside: list[float] = []
        runs = contenders(Path(tmp), model, opt, tok, blocked_beside)
        direct = direct_io_refusal(Path(tmp))
        if direct:  # tmpfs and some others: the floor of the way chefgenius writes does not exist there
            del runs["floor_direct"]
            del timings["floor_direct"]
        for rep in range(1, args.repeats + 1):
            order = shuffled(runs, args.seed, rep)
            for name in order:
                os.sync()  # the previous contender's dirty pages are written now, not during the next one
                got, size = runs[name](rep)
                for k, v in got.items():
                    timings[k].append(v)
                    if size is not None and k != "copy_beside":
                        sizes[k] = size
    load.append(os.getloadavg()[0])
    memory = [] if args.no_memory else measure_memory(args.preset)
    med = {k: statistics.median(v) for k, v in timings.items()}
    floors = {"floor": med["floor"], "writes": ("floor_direct", "sync", "background", "dcp", "dcp_background", "hf",
                                                "hf_fsync")}

    def paired(k: str, floor: str) -> list[float]:
        """Throughput of ``k`` over the floor's, repeat by repeat (the two ran seconds apart)."""
        return [(sizes[k] / a) / (sizes[floor] / b) for a, b in zip(timings[k], timings[floor])]

    def spread(xs: list[float], **target: float) -> str:
        """The median ratio, its 95% interval, the repeats' range, and the target judged on the interval."""
        med, lo, hi = median_interval(xs)
        judged_ = f": {judged(of_ratios(xs), **target)}" if target else ""
        return f"{med:.2f}x (95% {lo:.2f}-{hi:.2f}, repeats {min(xs):.2f}-{max(xs):.2f}){judged_}"

    def beats(ratios: list[float]) -> bool:
        """Faster than a floor: the median paired ratio above 1 with its 95% bootstrap interval clear of
        1.0 (issue 46: beating either floor counts, not only both at once)."""
        med, lo, _ = median_interval(ratios)
        return med > 1.0 and lo > 1.0

    beaten = [f"{NAMES[k]} (vs {NAMES[floor]})" for k in ("sync", "background", "hf_fsync", "dcp")
              for floor in ("floor", "floor_direct") if floor in timings and beats(paired(k, floor))]
    if (beats([min(c, c1) / b for b, c, c1 in zip(timings["blocked"], timings["copy"], timings["copy1"])])
            or beats([1 / r for r in blocked_beside])):
        beaten.append(NAMES["blocked"])  # on few cores one thread can beat all of them (memory bandwidth)

    vs_floor, vs_dcp = paired("sync", "floor"), paired("sync", "dcp")
    vs_direct = paired("sync", "floor_direct") if "floor_direct" in timings else []
    blocked = blocked_beside
    blocked_apart = [a / b for a, b in zip(timings["blocked"], timings["copy"])]
    cg_vs_floor, cg_vs_dcp = statistics.median(vs_floor), statistics.median(vs_dcp)
    command = f"python bench/checkpoint_save.py --preset {args.preset} --repeats {args.repeats} --seed {args.seed}"
    lines = [f"# Checkpoint save, GPT-2 {args.preset}", "",
             f"`{command}`; {n_params / 1e6:.1f}M parameters with AdamW state ({state_bytes(model, opt) / 1e9:.2f} GB "
             f"of tensors), default threads, median of {args.repeats}, contenders in a shuffled order each repeat "
             f"(from seed {args.seed}) with os.sync() between them; load average {load[0]:.2f} before, "
             f"{load[1]:.2f} after.", "",
             *table(med, timings, sizes, floors), "",
             "Targets, paired repeat by repeat (median of the ratios, 95% bootstrap interval; a target is met only "
             "when the whole interval is on its side): synchronous save throughput "
             + (f"{spread(vs_direct)} the O_DIRECT floor's (the stable floor: the way chefgenius writes), "
                if vs_direct else f"no O_DIRECT floor ({direct}), ")
             + f"{spread(vs_floor, at_least=0.8)} the safetensors floor's (>= 0.8x; this floor measures the page "
             f"cache's day as much as the code), {spread(vs_dcp, at_least=1.0)} DCP's (>= 1.0x); async training "
             f"blocked {spread(blocked, at_most=1.2)} the balanced in-memory "
             f"copy taken just before and after each save ({len(blocked)} saves; <= 1.2x); against the copy "
             f"contender of the same repeat, run apart in the shuffled order: {spread(blocked_apart)}; medians: "
             f"{med['blocked'] / med['copy1']:.2f}x the one-thread copy.",
             "**Floor beaten (the floor is wrong): " + ", ".join(beaten) + "**" if beaten else
             "No contender beats its floor."]
    if memory:
        lines += ["", "Peak memory (fresh process per mode; RSS high-water mark):", "",
                  "| mode | training peak MiB | peak while saving MiB | extra MiB | extra / (model + optimizer) |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['mode']} | {r['train_peak'] / 2**20:.0f} | {r['save_peak'] / 2**20:.0f} | "
                  f"{r['extra_bytes'] / 2**20:.0f} | {r['extra_vs_state']} (target <= 1) |" for r in memory]
    rows = [{"contender": NAMES[k], "median_s": round(med[k], 4), "min_s": round(min(timings[k]), 4),
             "max_s": round(max(timings[k]), 4), "bytes": sizes.get(k), "all_s": [round(x, 4) for x in timings[k]]}
            for k in NAMES if k in timings]
    data = {"command": command, "parameters": n_params, "repeats": args.repeats, "rows": rows, "memory": memory,
            "sync_vs_floor_throughput": round(cg_vs_floor, 3), "sync_vs_dcp_throughput": round(cg_vs_dcp, 3),
            "sync_vs_direct_floor_throughput": round(statistics.median(vs_direct), 3) if vs_direct else None,
            "no_direct_floor": direct, "seed": args.seed,
            "paired": {"sync_vs_floor": [round(x, 3) for x in vs_floor],
                       "sync_vs_direct_floor": [round(x, 3) for x in vs_direct],
                       "sync_vs_dcp": [round(x, 3) for x in vs_dcp], "blocked_vs_copy": [round(x, 3) for x in blocked],
                       "blocked_vs_copy_apart": [round(x, 3) for x in blocked_apart]},
            "blocked_vs_copy": round(statistics.median(blocked), 3), "floor_beaten": beaten, "load": load}
    if not args.quick:
        write_result("checkpoint_save" if args.preset == "large" else f"checkpoint_save_{args.preset}", lines, data)
    else:
        print("\n".join(lines))


if __name__ == "__main__":
    main()
