"""The one Trainer: build everything from a config, train, evaluate, checkpoint, resume exactly.

Exactness rests on three rules: every piece of state is saved at optimizer-step boundaries and
restored before the next step; nothing outside the training step draws from the training RNGs
(sample generation forks the RNG); and the data order is a pure function of (seed, epoch,
position). See README "Exact resume" for the guarantees and their limits.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
import yaml

from . import __version__
from .checkpoint import (
    CheckpointWriteError,
    ResumeError,
    apply_retention,
    commit_directory,
    find_resumable,
    list_checkpoints,
    load_training_checkpoint,
    read_meta,
    remove_temporaries,
    save_training_checkpoint,
    verify_checkpoint,
)
from .checkpoint.rng import seed_everything
from .config import Config, trajectory_differences
from .data.format import recipe_to_example
from .data.loader import ResumableSampler, cached_tokenize, default_cache_dir, make_batch
from .data.prepare import prepare_recipes
from .distributed import print0, rank, world_size
from .evaluate import token_loss_sum, validation_loss
from .generate import GenerationSettings, generate_texts
from .model import (
    apply_lora,
    build_from_scratch,
    load_lora_adapter,
    load_pretrained,
    load_tokenizer,
    model_family,
    save_model,
    train_tokenizer,
    unwrap,
)
from .optim import build_optimizer, build_scheduler
from .tracking import MetricsWriter, truncate_after


class RunDirError(ValueError):
    """The output directory cannot be used as asked (exit code 2)."""


@dataclass
class TrainState:
    """The trainer's own progress; the data position lives in the sampler."""

    step: int = 0
    best_val_loss: float = math.inf
    best_step: int | None = None
    num_bad_evals: int = 0
    stopped_early: bool = False
    num_tokens: int = 0
    loss_history: list[list[float]] = field(default_factory=list)
    eval_history: list[dict[str, float]] = field(default_factory=list)
    resumes: list[dict[str, Any]] = field(default_factory=list)
    config_changes: list[dict[str, Any]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = set(self.__dataclass_fields__) - set(state)
        if missing:
            raise ValueError(f"train state lacks {', '.join(sorted(missing))}")
        for k in self.__dataclass_fields__:
            setattr(self, k, state[k])


@dataclass
class FitResult:
    status: str  # "completed" | "already_complete" | "interrupted"
    step: int
    final_dir: Path | None
    best_val_loss: float
    last_val_loss: float | None
    seconds: float
    stop_signal: int | None = None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RunDirError(f"training.device={name} but no CUDA device is visible (use --device cpu)")
    return dev


def versions() -> dict[str, str]:
    return {"chefgenius": __version__, "torch": str(torch.__version__), "transformers": str(transformers.__version__),
            "python": sys.version.split()[0]}


class Trainer:
    """Builds a run from a config (fresh or resumed) and trains it with :meth:`fit`."""

    def __init__(self, cfg: Config, run_dir: str | Path, *, resume: str = "auto",
                 allow_changes: tuple[str, ...] = (), on_step: Callable[[Trainer], None] | None = None,
                 log: Callable[..., None] = print0) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        self.final_dir = self.run_dir / "final"
        self.on_step = on_step
        self.log = log
        self.rank, self.world_size = rank(), world_size()
        if self.world_size > 1:
            # Sampler and checkpoint format are per-rank ready; gradient sync is not written yet.
            raise RunDirError(f"WORLD_SIZE={self.world_size}: multi-process training is not supported yet; "
                              "run a single process")
        tc = cfg.training
        if tc.num_threads:
            torch.set_num_threads(tc.num_threads)
        if tc.determinism == "strict":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        self.device = resolve_device(tc.device)
        seed_everything(tc.seed + self.rank)

        self.resume_from = self._select_checkpoint(resume)
        meta = read_meta(self.resume_from) if self.resume_from else None
        changes = self._check_config(meta, allow_changes) if meta else []

        self.data = prepare_recipes(cfg.data)
        data_changed = meta is not None and meta["train_fingerprint"] != self.data.train_fingerprint
        if data_changed and not self._allowed("data", allow_changes):
            raise ResumeError(
                f"cannot resume: the training data changed (fingerprint {self.data.train_fingerprint}, checkpoint "
                f"has {meta['train_fingerprint']}); restore the data or pass --allow-change data"
            )
        self.tokenizer, self.model, self.is_seq2seq = self._build_model()
        self.model.to(self.device)
        self.forward_model = torch.compile(self.model) if cfg.model.compile else self.model

        cache = default_cache_dir(cfg.data.cache_dir)
        kw = dict(is_seq2seq=self.is_seq2seq, max_prompt_tokens=cfg.data.max_prompt_tokens,
                  max_target_tokens=cfg.data.max_target_tokens, mask_prompt=cfg.data.mask_prompt, cache_dir=cache)
        self.train_data, hit = cached_tokenize(self.data.train, self.tokenizer,
                                               split_fingerprint=self.data.train_fingerprint, **kw)
        self.val_data, _ = cached_tokenize(self.data.val, self.tokenizer,
                                           split_fingerprint=self.data.val_fingerprint, **kw)
        self.sampler = ResumableSampler(self.train_data.lengths(), batch_size=tc.batch_size,
                                        grad_accum=tc.grad_accum, seed=tc.seed, shuffle=tc.shuffle,
                                        group_by_length=tc.group_by_length, world_size=self.world_size,
                                        rank=self.rank)
        self.total_steps = tc.max_steps or tc.num_epochs * self.sampler.steps_per_epoch
        self.optimizer = build_optimizer(self.model, tc, self.device)
        self.scheduler = build_scheduler(self.optimizer, tc, self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type) if tc.precision == "fp16" else None
        self.state = TrainState()
        self._stop_signal: int | None = None
        self._last_eval: dict[str, float] | None = None
        self.log(f"data: {len(self.train_data)} train / {len(self.val_data)} val recipes "
                 f"(fingerprint {self.data.train_fingerprint}, token cache {'hit' if hit else 'built'}); "
                 f"{self.sampler.steps_per_epoch} steps/epoch, {self.total_steps} steps")

        if self.resume_from is not None:
            t0 = time.perf_counter()
            load_training_checkpoint(self.resume_from, pieces=self._pieces(), rank=self.rank)  # RNG restored last
            self.state.resumes.append({"step": self.state.step, "from": self.resume_from.name})
            self.state.config_changes.extend(changes)
            self.log(f"resumed from {self.resume_from} at step {self.state.step} "
                     f"(epoch {self.sampler.epoch}, sample {self.sampler.position}); state loaded in "
                     f"{(time.perf_counter() - t0) * 1000:.0f} ms")
        # Entries logged after the restored step (or by a run killed before its first checkpoint)
        # will be logged again; dropping them keeps metrics.jsonl reading like one run.
        truncate_after(self.run_dir / "metrics.jsonl", self.state.step)
        truncate_after(self.run_dir / "samples.jsonl", self.state.step)

    # ----- set-up -------------------------------------------------------------------------------

    def _select_checkpoint(self, resume: str) -> Path | None:
        if resume not in ("auto", "never"):
            path = Path(resume)
            if not path.is_dir():
                raise RunDirError(f"--resume {resume}: no such checkpoint directory")
            problem = verify_checkpoint(path)
            if problem:
                raise ResumeError(f"--resume {resume}: checkpoint does not verify: {problem}")
            return path
        for removed in [*remove_temporaries(self.ckpt_root), *remove_temporaries(self.run_dir)]:
            self.log(f"removed {removed.name}: left by an interrupted save")
        existing = list_checkpoints(self.ckpt_root)
        if resume == "never":
            if existing:
                raise RunDirError(f"{self.run_dir} already holds checkpoints; pass --resume auto to continue it, "
                                  "or choose a new --output-dir")
            return None
        if not existing:
            return None
        info, skipped = find_resumable(self.ckpt_root)
        for bad, why in skipped:
            self.log(f"skipping checkpoint {bad.path.name}: {why}")
        if info is None:
            raise ResumeError(f"{self.run_dir} holds checkpoints but none verifies; run 'chefgenius ckpt list "
                              f"{self.run_dir}' and remove or repair them, or use a new --output-dir")
        return info.path

    @staticmethod
    def _allowed(key: str, allow: tuple[str, ...]) -> bool:
        return any(key == a or key.startswith(a + ".") for a in allow)

    def _check_config(self, meta: dict[str, Any], allow: tuple[str, ...]) -> list[dict[str, Any]]:
        fmt = meta.get("versions", {})
        diffs = trajectory_differences(meta["config"], self.cfg.to_dict())
        refused = [d for d in diffs if not self._allowed(d[0], allow)]
        if refused:
            listing = "; ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, a, b in refused)
            keys = " ".join(f"--allow-change {k}" for k, _, _ in refused)
            raise ResumeError(f"cannot resume: config differs from the checkpoint ({listing}); "
                              f"restore it or accept deliberately with {keys}")
        for k, a, b in diffs:
            self.log(f"config change accepted on resume: {k}: {a!r} -> {b!r}")
        if fmt.get("torch") and fmt.get("torch") != torch.__version__:
            self.log(f"warning: checkpoint written with torch {fmt['torch']}, running {torch.__version__}; "
                     "exactness is only guaranteed on the same versions")
        return [{"key": k, "old": a, "new": b} for k, a, b in diffs]

    def _base_model_dir(self) -> Path:
        return self.run_dir / "base_model"

    def _build_model(self) -> tuple[Any, torch.nn.Module, bool]:
        mc = self.cfg.model
        ckpt = self.resume_from
        if ckpt is not None:
            tokenizer = load_tokenizer(ckpt / "tokenizer")
        elif mc.from_scratch:
            texts = [p + "\n" + t for p, t in map(recipe_to_example, self.data.train)]
            tokenizer = train_tokenizer(texts, mc.vocab_size)
        else:
            tokenizer = load_tokenizer(mc.name_or_path)
        max_positions = self.cfg.data.max_prompt_tokens + self.cfg.data.max_target_tokens + 8
        if mc.use_lora:
            base_src = mc.name_or_path
            if mc.from_scratch:
                # A from-scratch base is not trained; stored once per run so adapters always find it.
                if ckpt is None:
                    base = build_from_scratch(mc, tokenizer, max_positions)
                    base.save_pretrained(str(self._base_model_dir()))
                    tokenizer.save_pretrained(str(self._base_model_dir()))
                base_src = str(self._base_model_dir())
            base = load_pretrained(base_src)
            seq2seq = bool(base.config.is_encoder_decoder)
            if ckpt is not None:
                model = load_lora_adapter(base, ckpt / "model", trainable=True)
            else:
                model = apply_lora(base, mc, base.config.model_type, seq2seq)
        elif ckpt is not None:
            model = load_pretrained(ckpt / "model")
        elif mc.from_scratch:
            model = build_from_scratch(mc, tokenizer, max_positions)
        else:
            model = load_pretrained(mc.name_or_path)
        seq2seq = bool(unwrap(model).config.is_encoder_decoder)
        if len(tokenizer) > unwrap(model).get_input_embeddings().weight.shape[0]:
            unwrap(model).resize_token_embeddings(len(tokenizer))
        if mc.gradient_checkpointing:
            unwrap(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            unwrap(model).config.use_cache = False
        if self.cfg.training.precision == "bf16-pure":
            model.to(torch.bfloat16)
        return tokenizer, model, seq2seq

    def _pieces(self) -> dict[str, Any]:
        pieces: dict[str, Any] = {"optimizer": self.optimizer, "scheduler": self.scheduler, "sampler": self.sampler,
                                  "train_state": self.state}
        if self.scaler is not None:
            pieces["scaler"] = self.scaler
        return pieces

    # ----- training -----------------------------------------------------------------------------

    def _autocast(self):
        p = self.cfg.training.precision
        if p in ("bf16", "fp16"):
            return torch.autocast(self.device.type, dtype=torch.bfloat16 if p == "bf16" else torch.float16)
        return nullcontext()

    def train_step(self, micro_batches: list[list[int]]) -> dict[str, float]:
        """One optimizer step over its micro-batches; loss is the token mean over all of them."""
        self.forward_model.train()
        batches = [make_batch(self.train_data, mb, self.tokenizer.pad_token_id, self.device) for mb in micro_batches]
        shift = 0 if self.is_seq2seq else 1
        num_tokens = sum(int((b["labels"][:, shift:] != -100).sum()) for b in batches)
        total = torch.zeros((), device=self.device)
        for batch in batches:
            with self._autocast():
                loss_sum, _ = token_loss_sum(self.forward_model, batch, self.is_seq2seq)
            # Dividing by the step's token count (not per micro-batch) makes accumulation exact.
            loss = loss_sum / max(1, num_tokens)
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            total += loss_sum.detach()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        max_norm = self.cfg.training.max_grad_norm or math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": float(total) / max(1, num_tokens), "grad_norm": float(grad_norm), "lr": lr,
                "tokens": num_tokens}

    def evaluate(self) -> dict[str, float]:
        return validation_loss(self.forward_model, self.val_data, pad_id=self.tokenizer.pad_token_id,
                               is_seq2seq=self.is_seq2seq, batch_size=self.cfg.training.batch_size,
                               max_batches=self.cfg.evaluation.max_batches, autocast=self._autocast())

    def _record_eval(self, metrics: dict[str, float]) -> bool:
        """Update best / early-stopping state; returns whether this evaluation is a new best."""
        st, ec = self.state, self.cfg.evaluation
        st.eval_history.append({"step": st.step, **metrics})
        if metrics["eval_loss"] < st.best_val_loss - ec.early_stopping_threshold:
            st.best_val_loss, st.best_step, st.num_bad_evals = metrics["eval_loss"], st.step, 0
            return True
        st.num_bad_evals += 1
        if ec.early_stopping_patience and st.num_bad_evals >= ec.early_stopping_patience:
            st.stopped_early = True
        return False

    def _sample_prompts(self) -> list[dict[str, Any]]:
        ec = self.cfg.evaluation
        settings = GenerationSettings(preset=ec.generation_preset, max_new_tokens=ec.max_new_tokens, seed=0)
        return [{"step": self.state.step, "ingredients": p,
                 "text": generate_texts(self.model, self.tokenizer, self.is_seq2seq, p, settings,
                                        max_prompt_tokens=self.cfg.data.max_prompt_tokens)[0]}
                for p in ec.prompts]

    def _meta(self) -> dict[str, Any]:
        # Checkpoints are only taken between optimizer steps, so the accumulation phase is always 0.
        return {"step": self.state.step, "epoch": self.sampler.epoch, "position": self.sampler.position,
                "accumulation_phase": 0,
                "val_loss": self._last_eval["eval_loss"] if self._last_eval else None,
                "config": self.cfg.to_dict(), "versions": versions(),
                "train_fingerprint": self.data.train_fingerprint, "val_fingerprint": self.data.val_fingerprint,
                "split_seed": self.cfg.data.split_seed, "is_seq2seq": self.is_seq2seq,
                "model_family": model_family(self.model), "world_size": self.world_size, "created": time.time()}

    def save_checkpoint(self) -> Path | None:
        step = self.state.step
        try:
            path = save_training_checkpoint(self.ckpt_root, step, pieces=self._pieces(), meta=self._meta(),
                                            save_model=lambda d: save_model(self.model, self.tokenizer, d),
                                            rank=self.rank)
        except CheckpointWriteError as err:
            if self.cfg.checkpoint.on_error == "stop":
                raise
            self.log(f"WARNING: checkpoint at step {step} FAILED and training goes on "
                     f"(checkpoint.on_error=continue): {err.strerror}")
            return None
        protect = [int(self.resume_from.name.split("-")[1])] if self.resume_from else []
        for removed in apply_retention(self.ckpt_root, keep_last=self.cfg.checkpoint.keep_last,
                                       keep_best=self.cfg.checkpoint.keep_best, protect=protect):
            self.log(f"retention: removed {removed.name}")
        return path

    def _write_final(self) -> Path:
        summary = {"step": self.state.step, "best_val_loss": self.state.best_val_loss,
                   "best_step": self.state.best_step, "stopped_early": self.state.stopped_early,
                   "train_fingerprint": self.data.train_fingerprint, "versions": versions()}

        def write(tmp: Path) -> None:
            save_model(self.model, self.tokenizer, tmp)
            (tmp / "summary.yaml").write_text(yaml.safe_dump(summary, sort_keys=False))

        return commit_directory(self.final_dir, self.state.step, write)

    def _install_signal_handlers(self) -> dict[int, Any]:
        def handler(signum: int, frame: Any) -> None:
            if self._stop_signal is not None:
                raise KeyboardInterrupt  # second signal: abort now
            self._stop_signal = signum
            self.log(f"\nreceived {signal.Signals(signum).name}: finishing this step and saving a checkpoint "
                     "(press Ctrl-C again to abort)")

        old = {}
        if self.rank == 0 and _in_main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, handler)
        return old

    def fit(self) -> FitResult:
        t0 = time.perf_counter()
        if self.final_dir.is_dir() and (self.final_dir / "summary.yaml").is_file():
            self.log(f"{self.run_dir} is already complete (final/ exists); nothing to do")
            return FitResult("already_complete", self.state.step, self.final_dir, self.state.best_val_loss,
                             None, 0.0)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        writer = MetricsWriter(self.run_dir, self.cfg.logging, self.cfg.to_dict())
        if self.resume_from is not None:
            writer.log({"event": "resume", "step": self.state.step, "checkpoint": self.resume_from.name})
        old_handlers = self._install_signal_handlers()
        try:
            self._loop(writer)
        finally:
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
            writer.close()
        elapsed = time.perf_counter() - t0
        last = self.state.eval_history[-1]["eval_loss"] if self.state.eval_history else None
        if self._stop_signal is not None:
            return FitResult("interrupted", self.state.step, None, self.state.best_val_loss, last, elapsed,
                             self._stop_signal)
        final = self._write_final()
        self.log(f"training complete at step {self.state.step}: final model in {final}")
        return FitResult("completed", self.state.step, final, self.state.best_val_loss, last, elapsed)

    def _is_done(self) -> bool:
        return self.state.step >= self.total_steps or self.state.stopped_early

    def _loop(self, writer: MetricsWriter) -> None:
        from tqdm.auto import tqdm

        lc = self.cfg.logging
        bar = tqdm(total=self.total_steps, initial=self.state.step, desc="train", dynamic_ncols=True,
                   file=sys.stderr, disable=not lc.progress_bar or self.rank != 0)
        log = self.log
        if not bar.disable and log is print0:
            self.log = lambda *args: bar.write(" ".join(map(str, args)))  # keep the bar intact below messages
        try:
            self._run_steps(writer, bar)
        finally:
            bar.close()
            self.log = log

    def _run_steps(self, writer: MetricsWriter, bar: Any) -> None:
        st, cc, lc, ec = self.state, self.cfg.checkpoint, self.cfg.logging, self.cfg.evaluation
        window_t, window_tokens = time.perf_counter(), 0
        saved_at = st.step if self.resume_from else -1
        while not self._is_done() and self._stop_signal is None:
            epoch_before = self.sampler.epoch
            out = self.train_step(self.sampler.next_step())
            st.step += 1
            st.num_tokens += out["tokens"]
            st.loss_history.append([st.step, out["loss"]])
            window_tokens += out["tokens"]
            epoch_end = self.sampler.epoch != epoch_before
            epoch_float = round(self.sampler.epoch + self.sampler.position / self.sampler.num_samples, 4)
            if st.step % lc.every_steps == 0 or self._is_done():
                n = (st.step - 1) % lc.every_steps + 1  # steps since the previous entry
                now = time.perf_counter()
                writer.log({"step": st.step, "epoch": epoch_float,
                            "loss": sum(x[1] for x in st.loss_history[-n:]) / n, "lr": out["lr"],
                            "grad_norm": out["grad_norm"], "tokens_per_s": window_tokens / max(now - window_t, 1e-9)})
                window_t, window_tokens = now, 0
            self._last_eval = None
            is_new_best = False
            if (ec.every_steps and st.step % ec.every_steps == 0) or (epoch_end and ec.at_epoch_end) or self._is_done():
                self._last_eval = self.evaluate()
                is_new_best = self._record_eval(self._last_eval)
                writer.log({"step": st.step, "epoch": epoch_float, **self._last_eval})
                if ec.prompts:
                    with (self.run_dir / "samples.jsonl").open("a") as f:
                        f.writelines(json.dumps(s) + "\n" for s in self._sample_prompts())
            bar.update(1)
            bar.set_postfix(epoch=f"{epoch_float:.2f}", loss=f"{out['loss']:.3f}")
            # A new best is saved so that keep_best has its weights.
            if st.step % cc.every_steps == 0 or is_new_best or self._is_done():
                self.save_checkpoint()
                saved_at = st.step
            if self.on_step is not None:
                self.on_step(self)
        if self._stop_signal is not None:
            if saved_at != st.step:
                self.save_checkpoint()
            self.log(f"stopped at step {st.step}; checkpoint saved; run the same command again to resume")


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
