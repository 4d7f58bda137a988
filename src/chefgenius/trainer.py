"""The one Trainer: build everything from a config, train, evaluate, checkpoint, resume exactly.

Exactness rests on three rules: every piece of state is saved at optimizer-step boundaries and
restored before the next step; nothing outside the training step draws from the training RNGs
(sample generation forks the RNG); and the data order is a pure function of (seed, epoch,
position). See README "Exact resume" for the guarantees and their limits.

Constructing a Trainer reads and writes nothing. :meth:`setup` reads the data and the checkpoint
(once, through one handle) and builds the model; :meth:`fit` takes the run directory's lock,
returns at once for a completed run, and only then writes into the run directory.
"""

from __future__ import annotations

import copy
import json
import math
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

from . import __version__, distributed
from .checkpoint import (
    Checkpoint,
    CheckpointManager,
    ResumeError,
    checkpoint_problem,
    commit_directory,
    write_final,
)
from .checkpoint.layout import OPTIMIZER, SAMPLER, SCALER, SCHEDULER, SHARDS, TRAIN_STATE, rank_dir
from .config import Config, ConfigError, check_requirements
from .data.format import PROMPT_PREFIX, TITLE_LABEL
from .data.loader import ResumableSampler, collate, make_batch, target_tokens, to_device
from .data.prepared import PreparedDataset, prepare_dataset
from .data.tokenize import default_cache_dir
from .distributed import local_rank, print0, rank, world_size
from .generate import GenerationSettings, generate_texts
from .losses import copy_weights, token_loss_sum, validation_loss
from .model import (
    apply_lora,
    build_from_scratch,
    config_is_seq2seq,
    load_lora_adapter,
    load_pretrained,
    load_tokenizer,
    max_positions,
    model_family,
    unwrap,
)
from .optim import build_optimizer, build_scheduler
from .resume import resume_changes
from .rundir import RunDirectory, RunDirError
from .runtime import apply_runtime, resolve_device, seed_everything
from .sharding import full_state_dict, load_shards, save_shards, shard_model, shard_state
from .tracking import MetricsWriter


@dataclass
class TrainState:
    """The trainer's own progress; the data position lives in the sampler.

    Bounded in size: per-step losses go to metrics.jsonl; only the losses of the current logging
    window are kept (the next log entry averages them, also across a resume).
    """

    step: int = 0
    best_val_loss: float = math.inf
    best_step: int | None = None
    num_bad_evals: int = 0
    stopped_early: bool = False
    num_tokens: int = 0
    window_losses: list[float] = field(default_factory=list)
    eval_history: list[dict[str, float]] = field(default_factory=list)
    resumes: list[dict[str, Any]] = field(default_factory=list)
    config_changes: list[dict[str, Any]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "window_losses" not in state and isinstance(state.get("loss_history"), list):
            # First-wave checkpoints kept every step's loss; the trainer trims this to the open window.
            state = {**state, "window_losses": [entry[1] for entry in state["loss_history"]]}
        missing = set(self.__dataclass_fields__) - set(state)
        if missing:
            raise ValueError(f"train state lacks {', '.join(sorted(missing))}")
        for k in self.__dataclass_fields__:
            setattr(self, k, state[k])
        if not isinstance(self.step, int) or isinstance(self.step, bool) or self.step < 0:
            raise ValueError(f"train state has an invalid step {self.step!r}")


@dataclass
class FitResult:
    status: str  # "completed" | "already_complete" | "interrupted"
    step: int
    final_dir: Path | None
    best_val_loss: float
    seconds: float
    stop_signal: int | None = None


def versions() -> dict[str, str]:
    return {"chefgenius": __version__, "torch": str(torch.__version__), "transformers": str(transformers.__version__),
            "python": sys.version.split()[0]}


class Trainer:
    """Builds a run from a config (fresh or resumed) and trains it with :meth:`fit`."""

    def __init__(self, cfg: Config, run_dir: str | Path, *, resume: str = "auto",
                 allow_changes: tuple[str, ...] = (), on_step: Callable[[Trainer], None] | None = None,
                 log: Callable[..., None] = print0) -> None:
        self.cfg = cfg
        self.run = RunDirectory(run_dir)
        self.run_dir = self.run.path
        self.resume = resume
        self.allow_changes = tuple(allow_changes)
        self.on_step = on_step
        self.log = log
        self.rank, self.world_size = rank(), world_size()
        check_requirements(cfg)
        self.checkpoints = CheckpointManager(self.run.checkpoints, cfg.checkpoint, log, self.rank)
        self.resumed_from: Checkpoint | None = None
        self._is_set_up = False
        self._stop_signal: int | None = None
        self._last_eval: dict[str, float] | None = None

    @property
    def resume_from(self) -> Path | None:
        return self.resumed_from.path if self.resumed_from else None

    # ----- set-up (reads, never writes the run directory) ---------------------------------------

    def setup(self) -> Trainer:
        if self._is_set_up:
            return self
        cfg, tc = self.cfg, self.cfg.training
        self.run.check_usable()
        self.device = resolve_device(tc.device)
        if self.world_size > 1 and self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", local_rank())
        distributed.init(self.device)
        apply_runtime(tc)
        seed_everything(tc.seed + self.rank)
        ckpt = self.checkpoints.select(self.resume)
        mc = cfg.model
        self.is_seq2seq = config_is_seq2seq(mc)
        given = (load_tokenizer(ckpt.tokenizer_dir) if ckpt is not None else
                 None if mc.from_scratch else load_tokenizer(mc.name_or_path))
        if self.rank != 0:
            distributed.barrier()  # rank 0 prepares (or finds) the dataset; the others then map it
        self.data = prepare_dataset(cfg.data, is_seq2seq=self.is_seq2seq, tokenizer=given,
                                    vocab_size=mc.vocab_size if mc.from_scratch else None,
                                    cache_dir=default_cache_dir(cfg.data.cache_dir), log=self.log,
                                    progress=cfg.logging.progress_bar and self.rank == 0)
        if self.rank == 0:
            distributed.barrier()
        self.tokenizer = given if given is not None else self.data.tokenizer()
        tok = self.tokenizer
        self._copy_skip = torch.tensor(sorted({*tok.encode(PROMPT_PREFIX, add_special_tokens=False),
                                               *tok.encode(", ", add_special_tokens=False),
                                               *tok.encode(",\n", add_special_tokens=False),
                                               tok.eos_token_id, tok.pad_token_id} - {None}), device=self.device)
        self._log_data_report(self.data)
        changes: list[dict[str, Any]] = []
        if ckpt is not None:
            changes, warnings = resume_changes(ckpt.meta, cfg.to_dict(), train_fingerprint=self.data.train_fingerprint,
                                               num_threads=torch.get_num_threads(), versions=versions(),
                                               allow=self.allow_changes, world_size=self.world_size)
            for line in warnings:
                self.log(line)
        self.grad_accum = self._grad_accum(ckpt)
        self._ckpt_sharded = ckpt is not None and (rank_dir(ckpt.path, 0) / f"{SHARDS}.json").is_file()
        self.model, self._fresh_base = self._build_model(ckpt, self.tokenizer)
        self.model.to(self.device)
        self._ddp: torch.nn.parallel.DistributedDataParallel | None = None
        self.train_model = self.eval_model = self.model
        self.sharded = self.world_size > 1 and cfg.model.sharding == "fsdp"
        if self.sharded:
            if ckpt is not None and not self._ckpt_sharded:
                raise ResumeError(f"cannot resume {ckpt.path.name} with model.sharding=fsdp: it holds an unsharded "
                                  "model; resume it with sharding ddp (it can then be saved sharded)")
            shard_model(self.model)
        elif self.world_size > 1:
            # DDP broadcasts rank 0's parameters here, so every rank starts from the same weights.
            self._ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                forward_sync_buffers=False)
            ordered = tc.reduction == "ordered" or (tc.reduction == "auto" and (
                self.device.type == "cpu" or tc.determinism == "strict"))
            self._ddp.register_comm_hook(None, distributed.ordered_sum_hook if ordered else distributed.sum_hook)
            self.train_model = self._ddp
        if cfg.model.compile:
            self.train_model = torch.compile(self.train_model)
            self.eval_model = self.train_model if self._ddp is None else self.model
        self._check_generation_budget()

        self.train_data, self.val_data = self.data.train, self.data.val
        self.sampler = ResumableSampler(self.train_data.lengths(), batch_size=tc.batch_size,
                                        grad_accum=self.grad_accum, seed=tc.seed, shuffle=tc.shuffle,
                                        group_by_length=tc.group_by_length, world_size=self.world_size,
                                        rank=self.rank)
        self.total_steps = tc.max_steps or tc.num_epochs * self.sampler.steps_per_epoch
        if self.cfg.evaluation.max_batches is None and len(self.val_data) > 20 * 1000:
            self.log(f"note: every evaluation covers all {len(self.val_data)} validation recipes; set "
                     "evaluation.max_batches to cap it")
        if tc.warmup_steps >= self.total_steps:
            self.log(f"note: training.warmup_steps={tc.warmup_steps} covers the whole run of {self.total_steps} "
                     "steps; the learning rate never reaches its peak")
        self.optimizer = build_optimizer(self.model, tc, self.device)
        self.scheduler = build_scheduler(self.optimizer, tc, self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type) if tc.precision == "fp16" else None
        self.state = TrainState()
        self.log(f"data: {len(self.train_data)} train / {len(self.val_data)} val recipes "
                 f"(fingerprint {self.data.train_fingerprint}); "
                 f"{self.sampler.steps_per_epoch} steps/epoch, {self.total_steps} steps")
        if ckpt is not None:
            t0 = time.perf_counter()
            resized = ckpt.meta.get("world_size", 1) != self.world_size
            # A rank the checkpoint did not have gets a seed of its own (RNG restored last).
            if self._ckpt_sharded:
                load_shards(ckpt.path, self.model, self.optimizer, self.rank, self.world_size)
            pieces = self._pieces()
            if self._ckpt_sharded:
                pieces.pop(OPTIMIZER, None)  # in the shards
            new_rank_seed = tc.seed + self.rank + 1_000_003 * ckpt.step if resized else None
            restored = ckpt.load_state(pieces, rank=self.rank, missing_rng_seed=new_rank_seed)
            if not distributed.all_true(restored):
                self.log("note: processes the checkpoint did not have were seeded from (seed, rank, step)")
            open_window = self.state.step % cfg.logging.every_steps
            self.state.window_losses = self.state.window_losses[max(0, len(self.state.window_losses) - open_window):]
            self.state.resumes.append({"step": self.state.step, "from": ckpt.path.name})
            self.state.config_changes.extend(changes)
            self.log(f"resumed from {ckpt.path} at step {self.state.step} "
                     f"(epoch {self.sampler.epoch}, sample {self.sampler.position}); state loaded in "
                     f"{(time.perf_counter() - t0) * 1000:.0f} ms")
        self.resumed_from = ckpt
        self._is_set_up = True
        return self

    def _grad_accum(self, ckpt: Checkpoint | None) -> int:
        """Micro-batches per step: the config's, or after a change of world size what keeps the global batch."""
        tc = self.cfg.training
        saved_world = ckpt.meta.get("world_size", 1) if ckpt is not None else self.world_size
        if saved_world == self.world_size:
            return tc.grad_accum
        saved = ckpt.meta["config"]["training"]
        global_batch = int(ckpt.meta.get("global_batch") or saved["batch_size"] * saved["grad_accum"] * saved_world)
        per_micro = tc.batch_size * self.world_size
        if global_batch % per_micro:
            raise ResumeError(
                f"cannot resume on {self.world_size} processes: the run's global batch of {global_batch} samples "
                f"is not a multiple of training.batch_size={tc.batch_size} x {self.world_size} processes; use a "
                f"process count that divides {global_batch // math.gcd(global_batch, tc.batch_size)} or change "
                "training.batch_size (with --allow-change training.batch_size)")
        accum = global_batch // per_micro
        self.log(f"world size {saved_world} -> {self.world_size}: gradient accumulation {accum} keeps the global "
                 f"batch of {global_batch} samples")
        return accum

    def _log_data_report(self, data: PreparedDataset) -> None:
        rep = data.report
        dropped = ", ".join(f"{reason}: {n}" for reason, n in rep.dropped.most_common())
        self.log(f"data: read {rep.num_read}, kept {rep.num_kept}, dropped {rep.num_dropped}"
                 + (f" ({dropped})" if dropped else "") + "; details in data_report.json")

    def _build_model(self, ckpt: Checkpoint | None, tokenizer: Any) -> tuple[torch.nn.Module, torch.nn.Module | None]:
        """The model, and a freshly built LoRA base that fit() must store."""
        mc = self.cfg.model
        max_pos = self.cfg.data.max_prompt_tokens + self.cfg.data.max_target_tokens + 8
        fresh_base = None
        if mc.use_lora:
            if mc.from_scratch and ckpt is None:
                base = build_from_scratch(mc, tokenizer, max_pos)
                fresh_base = copy.deepcopy(base)  # apply_lora rewrites the base's layers in place
            elif mc.from_scratch:
                base = load_pretrained(self.run.base_model, strict=True)
            else:
                base = load_pretrained(mc.name_or_path)
            if ckpt is not None:
                model = load_lora_adapter(base, ckpt.model_dir, trainable=True)
            else:
                model = apply_lora(base, mc, base.config.model_type, bool(base.config.is_encoder_decoder))
        elif ckpt is not None and self._ckpt_sharded:
            # Built as at the start, then filled from every rank's shards once the optimizer exists.
            model = build_from_scratch(mc, tokenizer, max_pos) if mc.from_scratch else load_pretrained(mc.name_or_path)
        elif ckpt is not None:
            model = load_pretrained(ckpt.model_dir, strict=True)
        elif mc.from_scratch:
            model = build_from_scratch(mc, tokenizer, max_pos)
        else:
            model = load_pretrained(mc.name_or_path)
        if len(tokenizer) > unwrap(model).get_input_embeddings().weight.shape[0]:
            unwrap(model).resize_token_embeddings(len(tokenizer))
        if mc.gradient_checkpointing:
            unwrap(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            unwrap(model).config.use_cache = False
        if self.cfg.training.precision == "bf16-pure":
            model.to(torch.bfloat16)
        return model, fresh_base

    def _check_generation_budget(self) -> None:
        """Evaluation samples must fit the model's positions; refuse before training, not after it."""
        limit = max_positions(self.model)
        ec = self.cfg.evaluation
        if limit is None or not ec.prompts or self.is_seq2seq:
            return
        prefix = len(self.tokenizer.encode(TITLE_LABEL, add_special_tokens=False))
        need = self.cfg.data.max_prompt_tokens + prefix + ec.max_new_tokens
        if need > limit:
            raise ConfigError(
                f"evaluation.max_new_tokens={ec.max_new_tokens} with data.max_prompt_tokens="
                f"{self.cfg.data.max_prompt_tokens} needs {need} positions, the model has {limit}; set "
                f"evaluation.max_new_tokens to at most {limit - self.cfg.data.max_prompt_tokens - prefix}")

    def _pieces(self) -> dict[str, Any]:
        pieces: dict[str, Any] = {SCHEDULER: self.scheduler, SAMPLER: self.sampler, TRAIN_STATE: self.state}
        if not self.sharded:  # a sharded optimizer is saved with the model shards, per rank
            pieces = {OPTIMIZER: self.optimizer, **pieces}
        if self.scaler is not None:
            pieces[SCALER] = self.scaler
        return pieces

    # ----- training -----------------------------------------------------------------------------

    def _autocast(self):
        p = self.cfg.training.precision
        if p in ("bf16", "fp16"):
            return torch.autocast(self.device.type, dtype=torch.bfloat16 if p == "bf16" else torch.float16)
        return nullcontext()

    def train_step(self, micro_batches: list[list[int]]) -> dict[str, float]:
        """One optimizer step over its micro-batches; loss is the token mean over all of them.

        Multi-process: the loss is divided by the *global* token count and gradients are summed over
        ranks, so N processes x accumulation A compute what one process does with N*A. Gradients are
        exchanged once per step (``no_sync`` on all but the last micro-batch).
        """
        self.train_model.train()
        pad = self.tokenizer.pad_token_id
        on_cpu = [collate([self.train_data.example(i) for i in mb], pad) if mb else None for mb in micro_batches]
        copy_weight = self.cfg.training.copy_weight
        num_tokens = distributed.all_sum_int(sum(target_tokens(b, self.is_seq2seq) for b in on_cpu if b is not None))
        batches = [to_device(b, self.device) if b is not None else None for b in on_cpu]
        total = torch.zeros((), dtype=torch.float64, device=self.device)  # float64: same sum for any split
        for i, batch in enumerate(batches):
            weight = 1.0
            if batch is None:  # no sample for this rank at the epoch's end: join the reduction with zeros
                batch, weight = make_batch(self.train_data, [0], pad, self.device), 0.0
            is_last = i == len(batches) - 1
            if self.sharded:
                self.model.set_requires_gradient_sync(is_last)
            with nullcontext() if self._ddp is None or is_last else self._ddp.no_sync():
                weights = (copy_weights(batch, self.is_seq2seq, copy_weight, self._copy_skip)
                           if copy_weight != 1.0 else None)
                with self._autocast():
                    loss_sum, _ = token_loss_sum(self.train_model, batch, self.is_seq2seq, weights)
                # Dividing by the step's token count (not per micro-batch) makes accumulation exact.
                loss = loss_sum * weight / max(1, num_tokens)
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            if weight:
                total += loss_sum.detach().double()
        # The step's loss over all ranks, whether any rank was asked to stop (all stop together), and
        # how many have written their piece of a background checkpoint (all commit it together).
        loss_total, stops, written = distributed.all_gather_sum([float(total), float(self._stop_signal is not None),
                                                                 float(self.checkpoints.piece_written)])
        if stops and self._stop_signal is None:
            self._stop_signal = signal.SIGTERM
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        max_norm = self.cfg.training.max_grad_norm or math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(grad_norm, "full_tensor"):  # sharded gradients give a DTensor norm
            grad_norm = grad_norm.full_tensor()
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss_total / max(1, num_tokens), "grad_norm": float(grad_norm), "lr": lr,
                "tokens": num_tokens, "checkpoint_written": written == self.world_size}

    def evaluate(self) -> dict[str, float]:
        return validation_loss(self.eval_model, self.val_data, pad_id=self.tokenizer.pad_token_id,
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
                                        max_prompt_tokens=self.cfg.data.max_prompt_tokens).texts[0]}
                for p in ec.prompts]

    def _meta(self) -> dict[str, Any]:
        return {"val_loss": self._last_eval["eval_loss"] if self._last_eval else None,
                "config": self.cfg.to_dict(), "versions": versions(),
                "train_fingerprint": self.data.train_fingerprint, "val_fingerprint": self.data.val_fingerprint,
                "split_seed": self.cfg.data.split_seed, "is_seq2seq": self.is_seq2seq,
                "model_family": model_family(self.model), "world_size": self.world_size,
                "grad_accum": self.grad_accum, "global_batch": self.sampler.samples_per_step,
                "num_threads": torch.get_num_threads(), "created": time.time()}

    def save_checkpoint(self) -> Path | None:
        """Save this step's state. With ``checkpoint.async`` it is written in the background and this
        returns None at once (``self.checkpoints.wait()`` commits it); otherwise it returns the
        committed checkpoint, or None when it failed with ``checkpoint.on_error: continue``.
        Multi-process: every rank calls it at the same step."""
        if self.cfg.checkpoint.async_:
            shards = ({SHARDS: shard_state(self.model, self.optimizer, self.rank, self.world_size)}
                      if self.sharded else None)
            self.checkpoints.save_async(self.state.step, model=None if self.sharded else self.model,
                                        tokenizer=self.tokenizer, pieces=self._pieces(), meta=self._meta(),
                                        rank_state=shards)
            return None
        shards = (lambda tmp: save_shards(tmp, self.model, self.optimizer, self.rank, self.world_size)
                  ) if self.sharded else None
        return self.checkpoints.save(self.state.step, model=None if self.sharded else self.model,
                                     tokenizer=self.tokenizer, pieces=self._pieces(), meta=self._meta(),
                                     rank_piece=shards)

    def _write_final(self) -> Path:
        """Rank 0 writes final/; a sharded model is first gathered (every rank takes part)."""
        full = full_state_dict(self.model) if self.sharded else None
        if self.rank != 0:
            return self.run.final
        summary = {"step": self.state.step, "best_val_loss": self.state.best_val_loss,
                   "best_step": self.state.best_step, "stopped_early": self.state.stopped_early,
                   "train_fingerprint": self.data.train_fingerprint, "versions": versions()}
        return write_final(self.run.final, self.state.step, model=self.model, tokenizer=self.tokenizer,
                           summary=summary, state_dict=full)

    def _install_signal_handlers(self) -> dict[int, Any]:
        def handler(signum: int, frame: Any) -> None:
            if self._stop_signal is not None:
                if signum == signal.SIGINT:
                    raise KeyboardInterrupt  # a second Ctrl-C: abort now
                return  # torchrun forwards SIGTERM after the terminal's SIGINT: already stopping
            self._stop_signal = signum
            self.log(f"\nreceived {signal.Signals(signum).name}: finishing this step and saving a checkpoint "
                     "(press Ctrl-C again to abort)")

        old = {}
        if _in_main_thread():  # every rank: the stop request is shared at the next step (train_step)
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, handler)
        return old

    def _prepare_run_dir(self) -> None:
        """The first writes of a run, after the lock and the completion check."""
        self.checkpoints.remove_temporaries(self.run.path)
        # Entries logged after the restored step (or by a run killed before its first checkpoint)
        # will be logged again; dropping them keeps metrics.jsonl reading like one run.
        self.run.truncate_logs(self.state.step)
        self.run.write_config(self.cfg.to_dict())
        self.run.write_data_report(self.data.report.to_dict())
        if self._fresh_base is not None and not self.run.base_model.is_dir():
            commit_directory(self.run.base_model, 0, lambda d: self._fresh_base.save_pretrained(str(d)))

    def fit(self) -> FitResult:
        t0 = time.perf_counter()
        with self.run.lock():
            if self.run.is_complete():
                problem = checkpoint_problem(self.run.final)
                if problem:
                    raise RunDirError(f"{self.run.path} is complete but its final model is damaged ({problem}); "
                                      f"move {self.run.final} away to re-create it from the newest checkpoint")
                self.log(f"{self.run.path} is already complete (final/ exists); nothing to do")
                return FitResult("already_complete", 0, self.run.final, math.nan, 0.0)
            self.setup()
            if self.rank == 0:
                self._prepare_run_dir()
            writer = (MetricsWriter(self.run.metrics, self.run.tensorboard, self.cfg.logging, self.cfg.to_dict())
                      if self.rank == 0 else _NoMetrics())
            if self.resumed_from is not None:
                writer.log({"event": "resume", "step": self.state.step, "checkpoint": self.resumed_from.path.name})
            old_handlers = self._install_signal_handlers()
            try:
                self._loop(writer)
            finally:
                for sig, h in old_handlers.items():
                    signal.signal(sig, h)
                writer.close()
            elapsed = time.perf_counter() - t0
            if self._stop_signal is not None:
                self.release_processes()
                return FitResult("interrupted", self.state.step, None, self.state.best_val_loss, elapsed,
                                 self._stop_signal)
            final = self._write_final()
            self.release_processes()
        self.log(f"training complete at step {self.state.step}: final model in {final}")
        return FitResult("completed", self.state.step, final, self.state.best_val_loss, elapsed)

    def release_processes(self) -> None:
        """Drop the DDP wrapper (it holds the process group) once every rank is done with it."""
        if self._ddp is not None:
            distributed.barrier()
            self.train_model = self.eval_model = self.model
            self._ddp = None

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
            self.checkpoints.wait()  # normal completion and a stop both end with every save committed
        except KeyboardInterrupt:  # a second Ctrl-C: abort now, leaving no half-written checkpoint
            self.checkpoints.abandon()
            raise
        except BaseException:
            self._wait_for_save_after_error()
            raise
        finally:
            bar.close()
            self.log = log

    def _wait_for_save_after_error(self) -> None:
        """A failing single-process run still commits the checkpoint it was writing (a good step's
        state); a save error then is logged, and the error that stopped the run is the one raised.
        A multi-process commit needs every rank, which a failing run cannot promise: abandoned."""
        if self.world_size > 1:
            self.checkpoints.abandon()
            return
        try:
            self.checkpoints.wait()
        except BaseException as err:  # noqa: BLE001 - reported; the original error propagates
            self.log(f"WARNING: the checkpoint being written when the run failed did not commit: {err}")

    def _run_steps(self, writer: MetricsWriter, bar: Any) -> None:
        st, cc, lc, ec = self.state, self.cfg.checkpoint, self.cfg.logging, self.cfg.evaluation
        window_t, window_tokens = time.perf_counter(), 0
        saved_at = st.step if self.resumed_from else -1  # the step of the newest save started
        if self.resumed_from:
            self.checkpoints.last_saved = st.step
        while not self._is_done() and self._stop_signal is None:
            epoch_before = self.sampler.epoch
            out = self.train_step(self.sampler.next_step())
            self.checkpoints.poll(out["checkpoint_written"])
            st.step += 1
            st.num_tokens += out["tokens"]
            st.window_losses.append(out["loss"])
            window_tokens += out["tokens"]
            epoch_end = self.sampler.epoch != epoch_before
            epoch_float = round(self.sampler.epoch + self.sampler.position / self.sampler.num_samples, 4)
            if st.step % lc.every_steps == 0 or self._is_done():
                now = time.perf_counter()
                writer.log({"step": st.step, "epoch": epoch_float,
                            "loss": sum(st.window_losses) / len(st.window_losses), "lr": out["lr"],
                            "grad_norm": out["grad_norm"], "tokens_per_s": window_tokens / max(now - window_t, 1e-9)})
                window_t, window_tokens = now, 0
                st.window_losses = []
            self._last_eval = None
            is_new_best = False
            if (ec.every_steps and st.step % ec.every_steps == 0) or (epoch_end and ec.at_epoch_end) or self._is_done():
                self._last_eval = self.evaluate()
                is_new_best = self._record_eval(self._last_eval)
                writer.log({"step": st.step, "epoch": epoch_float, **self._last_eval})
                if ec.prompts and (self.rank == 0 or self.sharded):  # a sharded model generates on every rank
                    samples = self._sample_prompts()
                    if self.rank == 0:
                        with self.run.samples.open("a") as f:
                            f.writelines(json.dumps(s) + "\n" for s in samples)
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
            self.checkpoints.wait()
            if self.checkpoints.last_saved == st.step:
                self.log(f"stopped at step {st.step}; checkpoint saved; run the same command again to resume")
            else:
                self.log(f"stopped at step {st.step}; its checkpoint FAILED (see above): the same command resumes "
                         "from the newest checkpoint that was saved")


class _NoMetrics:
    """Ranks other than 0 write no metrics."""

    def log(self, entry: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
