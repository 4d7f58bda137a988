"""Training throughput: chefgenius against the Hugging Face Trainer and a bare PyTorch loop.

    python bench/throughput.py [--steps 80] [--repeats 3] [--family gpt2|t5] [--preset tiny|small|base|large]
                               [--device cpu|cuda] [--quick]

Every contender trains the same model (GPT-2 or T5, built from config, same seed) on the same prepared
RecipeNLG-style data (the bundled corpus), batch size 8, one micro-batch per step, fp32, AdamW
with the same hyper-parameters, clipping 1.0, one thread, on the same device. Measured: target tokens
per second over the same window of steps for every contender: steps ``WARM + 1`` to ``max_steps - 1``
(start-up and warm-up excluded, and the last step, where chefgenius evaluates and saves), data loading
and collation included; the tokens are those of the batches those steps trained on, counted exactly
(:class:`Window`; tests/test_bench_count.py). On CUDA each mark waits for the device
(``torch.cuda.synchronize``). Contenders run one after another, never at once, in an order shuffled
each repeat from a seed drawn for the run and recorded in the result (``--order-seed`` replays one).

- bare loop: the floor; batches are collated before timing, then forward/backward/clip/step.
- chefgenius: ``Trainer.fit`` with evaluation and checkpoints out of the timed window.
- Hugging Face Trainer: its documented way to train a causal LM on tokenised examples (a list of
  dicts and a padding collator), ``save_strategy="no"``, ``report_to="none"``; once with default
  random batches and once with ``train_sampling_strategy="group_by_length"`` (transformers 5;
  chefgenius groups by length by default).

Writes bench/results/throughput.{md,json} (GPT-2 tiny, CPU) or throughput_FAMILY_PRESET[_cuda].{md,json}.
Needs ``transformers`` Trainer's dependency ``accelerate``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from common import MIN_REPEATS, judged, order_seed, paired, said, shuffled, train_config, write_result

WARM = 10
DEVICE = "cpu"
PRECISION = "fp32"
FASTEST = "chefgenius, determinism=default (fastest CUDA kernels)"
# The contenders the targets compare (--core): chefgenius against the HF Trainer on identical batches
# (>= 1.0x) and against the bare loop (>= 0.95x).
CORE = ("bare PyTorch loop (same batches as chefgenius)", "chefgenius (defaults: length-grouped)",
        "HF Trainer, chefgenius's batches")
# Dense bf16 tensor-core peaks (vendor data sheets, no sparsity), for MFU; --peak-tflops overrides.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0, "A10": 125.0}


@dataclass
class Window:
    """What a contender trained in the timed window: target tokens and seconds."""

    tokens: int
    seconds: float

    @property
    def per_s(self) -> float:
        return self.tokens / self.seconds


def last_timed_step(max_steps: int) -> int:
    """The window is steps WARM+1 .. max_steps-1: chefgenius's last step evaluates and saves."""
    return max_steps - 1


def mark() -> float:
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def raw_config(family: str, preset: str, steps: int, group_by_length: bool, determinism: str | None = None) -> dict:
    return train_config(
        family, preset, 8000 if preset in ("base", "large") else 1000,
        data={"max_prompt_tokens": 48, "max_target_tokens": 192, "val_fraction": 0.1},
        model={"dropout": 0.0},
        training={"seed": 1, "max_steps": steps, "batch_size": 8, "grad_accum": 1, "learning_rate": 1e-3,
                  "warmup_steps": 5, "schedule": "cosine", "weight_decay": 0.01, "max_grad_norm": 1.0,
                  "group_by_length": group_by_length, "num_threads": 1, "device": DEVICE, "precision": PRECISION,
                  **({"determinism": determinism} if determinism else {})},
        evaluation={"max_batches": 1}, checkpoint={"every_steps": 100_000}, logging={"every_steps": 100_000})


def target_tokens(labels: torch.Tensor, seq2seq: bool) -> int:
    return int((labels[:, 0 if seq2seq else 1:] != -100).sum())


def run_chefgenius(cfg_raw: dict, work: Path) -> Window:
    from chefgenius.config import build_config
    from chefgenius.training.trainer import Trainer

    marks: dict[int, tuple[float, int]] = {}

    def on_step(t: Trainer) -> None:
        # The last step ends with the final evaluation and checkpoint: stop the clock one step before.
        if t.state.step in (WARM, last_timed_step(t.total_steps)):
            marks[t.state.step] = (mark(), t.state.num_tokens)

    trainer = Trainer(build_config(cfg_raw), work / "cg", log=lambda *a: None, on_step=on_step, resume="never")
    trainer.fit()
    (t0, n0), (t1, n1) = marks[WARM], marks[last_timed_step(trainer.total_steps)]
    return Window(n1 - n0, t1 - t0)


def prepared(cfg_raw: dict):
    from chefgenius.config import build_config
    from chefgenius.data.prepared import prepare_dataset
    from chefgenius.data.tokenization import default_cache_dir

    cfg = build_config(cfg_raw)
    data = prepare_dataset(cfg.data, is_seq2seq=cfg.model.from_scratch == "t5", tokenizer=None,
                           vocab_size=cfg.model.vocab_size,
                           cache_dir=default_cache_dir(None), log=lambda *a: None, progress=False)
    return cfg, data


def fresh_model(cfg, tokenizer) -> torch.nn.Module:
    from chefgenius.models.builders import build_from_scratch
    from chefgenius.runtime.devices import seed_everything

    seed_everything(cfg.training.seed)
    return build_from_scratch(cfg.model, tokenizer, cfg.data.max_prompt_tokens + cfg.data.max_target_tokens + 8)


def run_bare(cfg_raw: dict) -> Window:
    """Batches built up front from chefgenius's own sampler order, their token counts too: the loop does
    only the math (no per-step host read of the labels, which would synchronise a GPU every step)."""
    from chefgenius.data.loader import ResumableSampler, collate
    from chefgenius.training.optim import build_optimizer, build_scheduler

    cfg, data = prepared(cfg_raw)
    tok = data.tokenizer()
    tc = cfg.training
    sampler = ResumableSampler(data.train.lengths(), batch_size=tc.batch_size, grad_accum=1, seed=tc.seed,
                               shuffle=True, group_by_length=tc.group_by_length)
    dev = torch.device(DEVICE)
    host = [collate([data.train.example(i) for i in sampler.next_step()[0]], tok.pad_token_id)
            for _ in range(tc.max_steps)]
    counts = [target_tokens(b["labels"], cfg.model.from_scratch == "t5") for b in host]
    batches = [{k: v.to(dev) for k, v in b.items()} for b in host]
    last = last_timed_step(tc.max_steps)
    model = fresh_model(cfg, tok).to(dev)
    model.train()
    opt = build_optimizer(model, tc, dev)
    sched = build_scheduler(opt, tc, tc.max_steps)
    params = [p for g in opt.param_groups for p in g["params"]]
    t0 = t1 = 0.0
    for step, batch in enumerate(batches, 1):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=PRECISION == "bf16"):
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step == WARM:
            t0 = mark()
        elif step == last:
            t1 = mark()
    return Window(sum(counts[WARM:last]), t1 - t0)  # batch k trains step k + 1


def chefgenius_batches(cfg, data) -> list[list[int]]:
    """The sample indices of every batch chefgenius trains on, in its order (its own sampler)."""
    from chefgenius.data.loader import ResumableSampler

    tc = cfg.training
    sampler = ResumableSampler(data.train.lengths(), batch_size=tc.batch_size, grad_accum=1, seed=tc.seed,
                               shuffle=True, group_by_length=tc.group_by_length)
    return [list(sampler.next_step()[0]) for _ in range(tc.max_steps)]


def percent(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def flops_per_target_token(cfg, data, model) -> float:  # noqa: ANN001
    """Training FLOPs of a GPT-2 per target token on chefgenius's timed batches: 6N per real token plus
    12·L·d·T for attention (PaLM, appendix B), over the unpadded tokens, since padding is not useful
    work; N counts every parameter (the tied embedding once: it is the LM head's matmul)."""
    batches = chefgenius_batches(cfg, data)[WARM:]
    examples = [data.train.example(i) for b in batches for i in b]
    lengths = [len(x) for x, _ in examples]
    targets = sum(int((y[1:] != -100).sum()) for _, y in examples)
    n = sum(p.numel() for p in model.parameters())
    layers, width = model.config.n_layer, model.config.n_embd
    per_real_token = 6 * n + 12 * layers * width * sum(x * x for x in lengths) / sum(lengths)
    return per_real_token * sum(lengths) / targets


def counting_collator(tok, seq2seq: bool, counted: dict):  # noqa: ANN001, ANN201
    """The Trainer's collator: chefgenius's padding, counting target tokens into ``counted`` ("last": the
    batch just collated, which the Trainer's loader fetches one step ahead; "batches": every batch's
    count in the order collated, so batch k is what step k + 1 trained on, however far ahead the
    loader fetches)."""
    from chefgenius.data.loader import collate

    def collator(features: list[dict]) -> dict[str, torch.Tensor]:
        batch = collate([(torch.tensor(f["input_ids"]), torch.tensor(f["labels"])) for f in features],
                        tok.pad_token_id)
        counted["last"] = target_tokens(batch["labels"], seq2seq)
        counted["tokens"] += counted["last"]
        counted.setdefault("batches", []).append(counted["last"])
        return batch

    return collator


def hf_arguments(tc, output_dir: Path, **extra):  # noqa: ANN001, ANN201
    """TrainingArguments with chefgenius's hyper-parameters, no saving, evaluation, logging or reporting."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=tc.batch_size, max_steps=tc.max_steps,
        learning_rate=tc.learning_rate, weight_decay=tc.weight_decay, warmup_steps=tc.warmup_steps,
        lr_scheduler_type="cosine", max_grad_norm=tc.max_grad_norm, logging_steps=100_000, save_strategy="no",
        eval_strategy="no", report_to="none", seed=tc.seed, data_seed=tc.seed, dataloader_num_workers=0,
        remove_unused_columns=False, disable_tqdm=True, **extra)


def run_hf(cfg_raw: dict, work: Path, group_by_length: bool, same_batches: bool = False) -> Window:
    """``same_batches``: the Trainer's data loader is handed chefgenius's exact batches (sampler overridden)."""
    from transformers import Trainer, TrainerCallback

    cfg, data = prepared(cfg_raw)
    tok = data.tokenizer()
    tc = cfg.training
    rows = [{"input_ids": x.tolist(), "labels": y.tolist()} for x, y in map(data.train.example,
                                                                           range(len(data.train)))]
    counted: dict = {"tokens": 0, "last": 0, "batches": []}
    collator = counting_collator(tok, cfg.model.from_scratch == "t5", counted)
    last = last_timed_step(tc.max_steps)
    marks: dict[int, float] = {}

    class Marks(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
            if state.global_step in (WARM, last):
                marks[state.global_step] = mark()

    args = hf_arguments(tc, work / "hf", use_cpu=DEVICE == "cpu", bf16=PRECISION == "bf16",
                        train_sampling_strategy="group_by_length" if group_by_length else "random")
    batches = chefgenius_batches(cfg, data) if same_batches else None

    class SameBatches(Trainer):
        def get_train_dataloader(self):  # noqa: ANN201
            from torch.utils.data import DataLoader

            return self.accelerator.prepare(DataLoader(rows, batch_sampler=batches, collate_fn=collator))

    trainer = (SameBatches if same_batches else Trainer)(model=fresh_model(cfg, tok), args=args, train_dataset=rows,
                                                         data_collator=collator, callbacks=[Marks()])
    trainer.train()
    # By batch, not by the running total at each mark: accelerate's loader collates one batch ahead of
    # the step that uses it, except after the last one, so totals at two marks miss a batch (issue 46).
    return Window(sum(counted["batches"][WARM:last]), marks[last] - marks[WARM])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--family", default="gpt2", choices=["gpt2", "t5"])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                    help="bf16: autocast over fp32 weights for every contender (chefgenius training.precision, "
                         "HF bf16=True, torch.autocast in the bare loop)")
    ap.add_argument("--peak-tflops", type=float, help="the device's dense peak for MFU (default: known GPUs, bf16)")
    ap.add_argument("--quick", action="store_true", help="one short repeat: a smoke test, no timing claims")
    ap.add_argument("--core", action="store_true",
                    help="only the contenders the targets compare (chefgenius, the HF Trainer on its batches, the "
                         "bare loop): half the time, for the slow presets; the random-batch rows are context")
    ap.add_argument("--order-seed", type=int, help="the seed of the contenders' order (default: drawn, recorded)")
    args = ap.parse_args()
    seed = order_seed(args.order_seed)
    global DEVICE, PRECISION
    DEVICE, PRECISION = args.device, args.precision
    if args.quick:
        args.steps, args.repeats = WARM + 6, 1
    torch.set_num_threads(1)

    def cfg(grouped: bool, determinism: str | None = None) -> dict:
        return raw_config(args.family, args.preset, args.steps, grouped, determinism)

    contenders = {
        "bare PyTorch loop (same batches as chefgenius)": lambda w: run_bare(cfg(True)),
        "chefgenius (defaults: length-grouped)": lambda w: run_chefgenius(cfg(True), w),
        "HF Trainer, chefgenius's batches": lambda w: run_hf(cfg(True), w, True, same_batches=True),
        "HF Trainer, group_by_length": lambda w: run_hf(cfg(True), w, True),
        "chefgenius, random batches": lambda w: run_chefgenius(cfg(False), w),
        "HF Trainer (defaults: random batches)": lambda w: run_hf(cfg(False), w, False),
    }
    if args.core:
        contenders = {k: v for k, v in contenders.items() if k in CORE}
    if DEVICE == "cuda":  # chefgenius is strict on CUDA by default (bit-identical resume): what that costs
        contenders[FASTEST] = lambda w: run_chefgenius(cfg(True, "default"), w)
    results: dict[str, list[float]] = {k: [] for k in contenders}
    params = 0
    if DEVICE == "cuda":
        # Strict mode sets cuBLAS's workspace (setdefault), and PyTorch reads it once per process: set for
        # every contender from the start, so none runs with another workspace because of the order
        # (issue 46). The cost of strict determinism printed below is then that of deterministic kernels.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CHEFGENIUS_CACHE"] = str(Path(tmp) / "cache")
        for rep in range(args.repeats):
            order = shuffled(contenders.items(), seed, rep)
            for i, (name, fn) in enumerate(order):
                work = Path(tmp) / f"r{rep}-{i}"
                work.mkdir()
                # chefgenius turns deterministic algorithms on where it is strict (CUDA) and never off:
                # every contender starts from torch's default, the fastest kernels
                torch.use_deterministic_algorithms(False)
                results[name].append(fn(work).per_s)
                print(f"{name}: {results[name][-1]:.0f} tokens/s", flush=True)
        c, data = prepared(cfg(True))
        model = fresh_model(c, data.tokenizer())
        params = sum(p.numel() for p in model.parameters())
        flops = flops_per_target_token(c, data, model) if args.family == "gpt2" else None
    med = {k: statistics.median(v) for k, v in results.items()}
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else ""
    peak = args.peak_tflops or (next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device_name), None)
                                if args.precision == "bf16" else None)
    same = (*CORE, FASTEST)  # the contenders that train on identical batches
    hf_default, hf_same = med.get("HF Trainer (defaults: random batches)"), med["HF Trainer, chefgenius's batches"]
    bare = med["bare PyTorch loop (same batches as chefgenius)"]
    rows = [{"contender": k, "median_tokens_per_s": round(v), "min": round(min(results[k])),
             "max": round(max(results[k])), "vs_hf_defaults": round(v / hf_default, 3) if hf_default else None,
             "vs_hf_same_batches": round(v / hf_same, 3), "vs_bare": round(v / bare, 3),
             "spread": round((max(results[k]) - min(results[k])) / v, 3),
             "mfu": round(v * flops / (peak * 1e12), 4) if peak and flops and k in same else None,
             "all": [round(x) for x in results[k]]} for k, v in med.items()]
    command = (f"python bench/throughput.py --steps {args.steps} --repeats {args.repeats} --family {args.family} "
               f"--preset {args.preset} --device {args.device}"
               + (f" --precision {args.precision}" if args.precision != "fp32" else "")
               + (f" --peak-tflops {args.peak_tflops}" if args.peak_tflops else "") + (" --core" if args.core else ""))
    name = "GPT-2" if args.family == "gpt2" else "T5"
    where = device_name if args.device == "cuda" else "CPU, 1 thread"
    precision = "bf16 autocast" if args.precision == "bf16" else "fp32"
    mfu_note = (f"; MFU against a dense bf16 peak of {peak:g} TFLOPS, {flops / 1e6:.1f} MFLOPs per target token "
                "(6N + 12·L·d·T over the unpadded tokens of the identical batches)" if peak and flops else "")
    lines = [f"# Training throughput, {name} {args.preset}" + (" (CUDA)" if args.device == "cuda" else "")
             + (", bf16" if args.precision == "bf16" else ""), "",
             f"`{command}`; {name} {args.preset} from scratch ({params / 1e6:.1f}M parameters), batch 8, {precision}, "
             f"{where}; target tokens/s over steps {WARM + 1}-{last_timed_step(args.steps)} (the same batches' "
             f"tokens for every contender, counted by batch), median of {args.repeats}, contenders in an order "
             f"shuffled each repeat (seed {seed}); spread = (max - min) / median{mfu_note}.", "",
             "| contender | tokens/s | min | max | spread | vs HF defaults | vs HF, same batches | vs bare loop "
             "| MFU |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['contender']} | {r['median_tokens_per_s']} | {r['min']} | {r['max']} | {r['spread']} | "
              f"{r['vs_hf_defaults'] or '-'} | {r['vs_hf_same_batches']} | {r['vs_bare']} | "
              f"{percent(r['mfu'])} |" for r in rows]
    cg = med["chefgenius (defaults: length-grouped)"]
    ours = results["chefgenius (defaults: length-grouped)"]
    vs = {"hf_same_batches": paired(ours, results["HF Trainer, chefgenius's batches"]),
          "bare": paired(ours, results["bare PyTorch loop (same batches as chefgenius)"])}
    if not args.core:
        vs["hf_random"] = paired(results["chefgenius, random batches"],
                                 results["HF Trainer (defaults: random batches)"])
    random_pair = f"random against random {said(vs['hf_random'])}; " if "hf_random" in vs else ""
    floor_beaten = vs["bare"]["lo95"] > 1.0 and vs["bare"]["repeats"] >= MIN_REPEATS
    lines += ["", "Like for like, paired repeat by repeat (medians of the per-repeat ratios, 95% bootstrap interval): "
              f"chefgenius {said(vs['hf_same_batches'])} the HF Trainer on identical batches, target >= 1.0: "
              f"{judged(vs['hf_same_batches'], at_least=1.0)}; {random_pair}"
              f"{said(vs['bare'])} the bare loop, target >= 0.95: {judged(vs['bare'], at_least=0.95)}."
              + (" **chefgenius beats its bare-loop floor (interval clear of 1.0): the floor is wrong.**"
                 if floor_beaten else "")]
    if FASTEST in med:
        lines += [f"Determinism: chefgenius strict (its CUDA default: deterministic kernels, bit-identical resume) "
                  f"runs at {cg / med[FASTEST]:.3f}x the speed of determinism=default (fastest kernels)."]
    plain = (args.family, args.preset, args.device, args.precision) == ("gpt2", "tiny", "cpu", "fp32")
    result = "throughput" if plain else f"throughput_{args.family}_{args.preset}" + (
        "_cuda" if args.device == "cuda" else "") + ("_bf16" if args.precision == "bf16" else "")
    write_result(result, lines, {"command": command, "family": args.family, "preset": args.preset,
                                 "device": where, "precision": args.precision, "parameters": params,
                                 "steps": args.steps, "repeats": args.repeats, "quick": args.quick,
                                 "peak_tflops": peak, "flops_per_target_token": flops, "order_seed": seed,
                                 "timed_steps": [WARM + 1, last_timed_step(args.steps)], "rows": rows,
                                 "paired": vs, "floor_beaten": floor_beaten})


if __name__ == "__main__":
    main()
