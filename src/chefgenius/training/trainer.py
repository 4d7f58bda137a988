"""The one Trainer: a short loop over collaborators that each own one concern (docs/architecture.md).

Exactness rests on three rules: every piece of state is saved at optimizer-step boundaries and
restored before the next step; nothing outside the training step draws from the training RNGs
(sample generation forks the RNG); and the data order is a pure function of (seed, epoch,
position). See docs/training.md, "Exact resume", for the guarantees and their limits.

Constructing a Trainer reads and writes nothing. :meth:`setup` reads the data and the checkpoint
and builds every part; :meth:`fit` takes the run directory's lock (unless the Trainer is already
held as a context manager), returns at once for a completed run, and only then writes into the
run directory.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chefgenius.checkpoint import Checkpoint, checkpoint_problem
from chefgenius.checkpoint.checkpointer import Checkpointer, ModelState
from chefgenius.checkpoint.layout import SAMPLER, SCALER, SCHEDULER, TRAIN_STATE
from chefgenius.checkpoint.run_directory import RunDirectory, RunDirError
from chefgenius.config import Config, check_requirements
from chefgenius.data.loader import ResumableSampler
from chefgenius.durable.directory import commit_directory
from chefgenius.models.builders import build_model, config_is_seq2seq
from chefgenius.runtime import distributed
from chefgenius.runtime.devices import autocast_for, resume_guarantee, setup_runtime
from chefgenius.runtime.distributed import print0, rank, world_size
from chefgenius.runtime.parallel import parallelize
from chefgenius.training.builders import build_data, final_summary, run_meta, run_notes, versions
from chefgenius.training.metrics_log import MetricsWriter, NullMetrics
from chefgenius.training.optim import build_optimization
from chefgenius.training.progress import make_progress
from chefgenius.training.resume import grad_accum_for, resume_changes
from chefgenius.training.signals import StopRequest, scheduler_job
from chefgenius.training.step import TrainStep
from chefgenius.training.train_state import TrainState
from chefgenius.training.validator import Validator, check_generation_budget


@dataclass
class FitResult:
    status: str  # "completed" | "already_complete" | "interrupted"
    step: int
    final_dir: Path | None
    best_val_loss: float
    seconds: float
    stop_signal: int | None = None


class Trainer:
    """Builds a run from a config (fresh or resumed) and trains it with :meth:`fit`."""

    def __init__(self, cfg: Config, run_dir: str | Path, *, resume: str = "auto",
                 allow_changes: tuple[str, ...] = (), on_step: Callable[[Trainer], None] | None = None,
                 log: Callable[..., None] = print0, on_save_written: Callable[[Path], None] | None = None) -> None:
        """``on_step(trainer)``: after every step. ``on_save_written(tmp)``: in every process, once it has
        written its part of a checkpoint into ``tmp`` and before the commit (in the thread that writes)."""
        self.cfg, self.run, self.resume = cfg, RunDirectory(run_dir), resume
        self.allow_changes, self.on_step, self.log = tuple(allow_changes), on_step, log
        self.rank, self.world_size = rank(), world_size()
        check_requirements(cfg)
        self.checkpointer = Checkpointer(self.run.checkpoints, cfg.checkpoint, self._say, self.rank, self.world_size,
                                         on_written=on_save_written)
        self.stop = StopRequest(self._say)
        self.resumed_from: Checkpoint | None = None
        self._is_set_up = False
        self._lock: AbstractContextManager | None = None

    def _say(self, *args: object) -> None:
        self.log(*args)  # collaborators print through the trainer's current log (above the progress bar)

    def __enter__(self) -> Trainer:
        """Hold the run directory's lock for a whole session: training, then the report and a sample."""
        self._lock = self.run.lock()
        self._lock.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        lock, self._lock = self._lock, None
        lock.__exit__(*exc)

    @property
    def sharded(self) -> bool:
        return self.parallel.sharded

    # ----- set-up (reads, never writes the run directory) ---------------------------------------

    def setup(self) -> Trainer:
        if self._is_set_up:
            return self
        cfg, tc = self.cfg, self.cfg.training
        self.run.check_usable()
        self.device = setup_runtime(tc, self.rank, self.world_size)
        ckpt = self.checkpointer.select(self.resume)
        self.is_seq2seq = config_is_seq2seq(cfg.model)
        self.data, self.tokenizer = build_data(cfg, ckpt, is_seq2seq=self.is_seq2seq, rank=self.rank, log=self._say)
        changes = resume_changes(ckpt, cfg, self.data.train_fingerprint, versions(), world_size=self.world_size,
                                 allow=self.allow_changes, log=self._say) if ckpt is not None else []
        self.grad_accum = grad_accum_for(tc, ckpt.meta if ckpt else None, self.world_size, self._say)
        model, self._fresh_base = build_model(cfg, ckpt, self.tokenizer, self.run.base_model)
        self.parallel = parallelize(model.to(self.device), cfg, self.device, self.world_size)
        self.model = self.parallel.model
        check_generation_budget(cfg, self.model, self.tokenizer, self.is_seq2seq)
        self.sampler = ResumableSampler(self.data.train.lengths(), batch_size=tc.batch_size,
                                        grad_accum=self.grad_accum, seed=tc.seed, shuffle=tc.shuffle,
                                        group_by_length=tc.group_by_length, world_size=self.world_size,
                                        rank=self.rank)
        self.total_steps = tc.max_steps or tc.num_epochs * self.sampler.steps_per_epoch
        for note in run_notes(cfg, len(self.data.val), self.total_steps):
            self.log(note)
        optimizer, scheduler, scaler = build_optimization(self.model, tc, self.device, self.total_steps)
        self.state = TrainState()
        autocast = lambda: autocast_for(self.device, tc.precision)  # noqa: E731 - a fresh context per use
        self.train_step = TrainStep(self.parallel, optimizer, scheduler, scaler, self.data.train, self.tokenizer,
                                    is_seq2seq=self.is_seq2seq, cfg=tc, device=self.device, autocast=autocast)
        self.validator = Validator(cfg, eval_model=self.parallel.eval_model, sample_model=self.model,
                                   tokenizer=self.tokenizer, val_data=self.data.val, is_seq2seq=self.is_seq2seq,
                                   autocast=autocast, samples_file=self.run.samples, writes=self.rank == 0,
                                   generates=self.rank == 0 or self.sharded)
        states = {SCHEDULER: scheduler, SAMPLER: self.sampler, TRAIN_STATE: self.state,
                  **({SCALER: scaler} if scaler is not None else {})}
        self.checkpointer.track(
            ModelState(self.model, optimizer, self.tokenizer, self.sharded, self.rank, self.world_size), states,
            run_meta(cfg, self.data, self.model, is_seq2seq=self.is_seq2seq, world_size=self.world_size,
                     grad_accum=self.grad_accum, global_batch=self.sampler.samples_per_step))
        self.log(f"data: {len(self.data.train)} train / {len(self.data.val)} val recipes "
                 f"(fingerprint {self.data.train_fingerprint}); "
                 f"{self.sampler.steps_per_epoch} steps/epoch, {self.total_steps} steps")
        self.log(resume_guarantee(tc, cfg.model.compile, self.device))  # after every input check: errors stay one line
        if ckpt is not None:
            self._restore(ckpt, changes)
        self.resumed_from = ckpt
        self._is_set_up = True
        return self

    def _restore(self, ckpt: Checkpoint, changes: list[dict[str, Any]]) -> None:
        t0 = time.perf_counter()
        resized = ckpt.meta.get("world_size", 1) != self.world_size
        # A rank the checkpoint did not have gets a seed of its own (RNG restored last).
        new_rank_seed = self.cfg.training.seed + self.rank + 1_000_003 * ckpt.step if resized else None
        if not distributed.all_true(self.checkpointer.restore(ckpt, new_rank_seed=new_rank_seed)):
            self.log("note: processes the checkpoint did not have were seeded from (seed, rank, step)")
        self.state.resumed(ckpt.path.name, changes, self.cfg.logging.every_steps)
        self.log(f"resumed from {ckpt.path} at step {self.state.step} (epoch {self.sampler.epoch}, sample "
                 f"{self.sampler.position}); state loaded in {(time.perf_counter() - t0) * 1000:.0f} ms")

    # ----- training -----------------------------------------------------------------------------

    def fit(self) -> FitResult:
        t0 = time.perf_counter()
        with nullcontext() if self._lock is not None else self.run.lock():
            if self.run.is_complete():
                problem = checkpoint_problem(self.run.final)
                if problem:
                    raise RunDirError(f"{self.run.path} is complete but its final model is damaged ({problem}); "
                                      f"move {self.run.final} away to re-create it from the newest checkpoint")
                self.log(f"{self.run.path} is already complete (final/ exists); nothing to do")
                return FitResult("already_complete", 0, self.run.final, math.nan, 0.0)
            self.setup()
            writer = self._open_run()
            with self.stop.handling_signals():
                try:
                    self._train(writer)
                finally:
                    writer.close()
            elapsed = time.perf_counter() - t0
            if self.stop.requested:
                self.parallel.release()
                return FitResult("interrupted", self.state.step, None, self.state.best_val_loss, elapsed,
                                 self.stop.signal)
            st = self.state
            final = self.checkpointer.write_final(self.run.final, st.step, final_summary(st, self.data))
            self.parallel.release()
        self.log(f"training complete at step {st.step}: final model in {final}")
        return FitResult("completed", st.step, final, st.best_val_loss, elapsed)

    def _open_run(self) -> MetricsWriter | NullMetrics:
        """Rank 0's first writes of a run, after the lock and the completion check; its metrics writer."""
        if self.rank != 0:
            return NullMetrics()
        self.checkpointer.remove_temporaries(self.run.path)
        # Entries logged after the restored step (or by a run killed before its first checkpoint)
        # will be logged again; dropping them keeps metrics.jsonl reading like one run.
        self.run.truncate_logs(self.state.step)
        self.run.write_config(self.cfg.to_dict())
        self.run.write_data_report(self.data.report.to_dict())
        if self._fresh_base is not None and not self.run.base_model.is_dir():
            commit_directory(self.run.base_model, 0, lambda d: self._fresh_base.save_pretrained(str(d)))
        writer = MetricsWriter(self.run.metrics, self.run.tensorboard, self.cfg.logging, self.cfg.to_dict())
        if self.resumed_from is not None:
            writer.log({"event": "resume", "step": self.state.step, "checkpoint": self.resumed_from.path.name})
        job = scheduler_job()
        if job:
            self.log("slurm: " + ", ".join(f"{k} {v}" for k, v in job.items()))
            writer.log({"event": "start", "step": self.state.step, **job})
        return writer

    def _is_done(self) -> bool:
        return self.state.step >= self.total_steps or self.state.stopped_early

    def _train(self, writer: MetricsWriter | NullMetrics) -> None:
        """The loop under a progress bar; returns with every save committed, or raises having
        abandoned the pending save (a second Ctrl-C) or settled it (any other error)."""
        progress = make_progress(self.total_steps, self.state.step, enabled=self.cfg.logging.progress_bar and
                                 self.rank == 0, every_s=self.cfg.logging.progress_every_s)
        log = self.log
        if progress is not None and log is print0:
            self.log = lambda *args: progress.write(" ".join(map(str, args)))  # messages above a live bar
        try:
            self._loop(writer, progress)
            self.checkpointer.finish()
            for figures in self.checkpointer.drain_figures():
                writer.log(figures)
        except KeyboardInterrupt:
            self.checkpointer.abandon()
            raise
        except BaseException:
            self.checkpointer.after_error()
            raise
        finally:
            if progress is not None:
                progress.close()
            self.log = log

    def _loop(self, writer: MetricsWriter | NullMetrics, progress: Any) -> None:
        st, log_every = self.state, self.cfg.logging.every_steps
        window_t, window_tokens = time.perf_counter(), 0
        while not self._is_done() and not self.stop.requested:
            epoch_before = self.sampler.epoch
            out = self.train_step(self.sampler.next_step(),
                                  shared=[self.stop.requested, self.checkpointer.piece_written])
            stops, written = out.shared
            if stops:
                self.stop.request()  # another rank was asked to stop: every rank stops after this step
            self.stop.after_step()
            self.checkpointer.poll(written == self.world_size)
            st.advance(out.loss, out.num_tokens)
            window_tokens += out.num_tokens
            epoch = round(self.sampler.epoch + self.sampler.position / self.sampler.num_samples, 4)
            if st.step % log_every == 0 or self._is_done():
                now = time.perf_counter()
                writer.log({"step": st.step, "epoch": epoch, "loss": st.close_window(), "lr": out.lr,
                            "grad_norm": out.grad_norm, "tokens_per_s": window_tokens / max(now - window_t, 1e-9)})
                window_t, window_tokens = now, 0
            is_new_best = False
            if self.validator.should_validate(st.step, epoch_end=self.sampler.epoch != epoch_before,
                                              is_done=self._is_done()):
                metrics, is_new_best = self.validator.validate(st)
                writer.log({"step": st.step, "epoch": epoch, **metrics})
            if progress is not None:
                progress.advance(out.loss, epoch, out.num_tokens)
            if self.checkpointer.should_save(st.step, is_new_best=is_new_best, is_done=self._is_done()):
                self.checkpointer.save(st.step, val_loss=self.validator.loss_at(st.step), force=self._is_done())
            for figures in self.checkpointer.drain_figures():
                writer.log(figures)
            if self.on_step is not None:
                self.on_step(self)
        if self.stop.requested:
            self.checkpointer.stop(st.step, val_loss=self.validator.loss_at(st.step))
