"""The trainer's one collaborator for checkpoints: what to resume, restoring it, when to save, saving
(synchronous, background or sharded behind one call), stopping with every save committed, final/.

Model and optimizer are one state piece (:class:`ModelState`) whether sharded or not; everything
else that speaks ``state_dict()`` is handed over once by name (:meth:`Checkpointer.track`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from chefgenius.checkpoint.layout import OPTIMIZER, SHARDS
from chefgenius.checkpoint.manager import Checkpoint, CheckpointManager, write_final
from chefgenius.checkpoint.shards import read_shards, write_shards
from chefgenius.checkpoint.state import ResumeError, Stateful
from chefgenius.checkpoint.store import finish_removals
from chefgenius.config import CheckpointConfig


@dataclass
class ModelState:
    """Model, optimizer and tokenizer as one checkpoint piece.

    Whole: rank 0 writes ``model/`` and the optimizer. Sharded (FSDP): every rank writes its slices
    of both into its rank directory, and a sharded checkpoint loads into any number of processes.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    tokenizer: Any
    sharded: bool = False
    rank: int = 0
    world_size: int = 1

    @property
    def whole_model(self) -> torch.nn.Module | None:
        return None if self.sharded else self.model

    def pieces(self) -> dict[str, Stateful]:
        return {} if self.sharded else {OPTIMIZER: self.optimizer}

    def _shards(self) -> dict[str, Any]:
        from chefgenius.runtime.sharding import shard_state

        return shard_state(self.model, self.optimizer, self.rank, self.world_size)

    def rank_writer(self) -> Callable[[Path], None] | None:
        """What each rank writes besides its RNG in a synchronous save."""
        return (lambda tmp: write_shards(tmp, self.rank, self._shards())) if self.sharded else None

    def rank_snapshot(self) -> dict[str, Any] | None:
        """What each rank snapshots besides its RNG in a background save."""
        return {SHARDS: self._shards()} if self.sharded else None

    def load(self, ckpt: Checkpoint) -> dict[str, Stateful]:
        """Fill model and optimizer from a sharded checkpoint now; for a whole one, the pieces to load."""
        if not ckpt.is_sharded:
            return self.pieces()
        from chefgenius.runtime.sharding import load_shards

        load_shards(read_shards(ckpt.path), ckpt.path.name, self.model, self.optimizer, self.rank, self.world_size)
        return {}

    def full_weights(self) -> dict[str, torch.Tensor] | None:
        """Every rank gathers a sharded model whole (a collective); None for a whole model."""
        from chefgenius.runtime.sharding import full_state_dict

        return full_state_dict(self.model) if self.sharded else None


class Checkpointer:
    def __init__(self, root: Path, cfg: CheckpointConfig, log: Callable[..., None], rank: int = 0,
                 world_size: int = 1) -> None:
        self.cfg, self.log, self.rank, self.world_size = cfg, log, rank, world_size
        self.manager = CheckpointManager(root, cfg, log, rank)
        self.model_state: ModelState | None = None
        self.states: dict[str, Stateful] = {}
        self.meta: dict[str, Any] = {}
        self.started_at: int | None = None  # the step of the newest save this run started (or resumed from)
        self._first_call: tuple[int, float] | None = None  # (step, time) of this run's first save call
        self._advised = False
        self._first_figures: dict[str, Any] | None = None

    def select(self, resume: str) -> Checkpoint | None:
        return self.manager.select(resume)

    def remove_temporaries(self, *also: Path) -> None:
        self.manager.remove_temporaries(*also)

    def track(self, model_state: ModelState, states: dict[str, Stateful], meta: dict[str, Any]) -> None:
        """What every save holds: model and optimizer, the other pieces by name, and the run's meta."""
        self.model_state, self.states, self.meta = model_state, states, meta

    def restore(self, ckpt: Checkpoint, *, new_rank_seed: int | None) -> bool:
        """Load every piece, then this rank's RNG (or seed a rank the checkpoint did not have with
        ``new_rank_seed``; returns False then)."""
        if self.model_state.sharded and not ckpt.is_sharded:
            raise ResumeError(f"cannot resume {ckpt.path.name} with model.sharding=fsdp: it holds an unsharded "
                              "model; resume it with sharding ddp (it can then be saved sharded)")
        pieces = {**self.model_state.load(ckpt), **self.states}
        restored = ckpt.load_state(pieces, rank=self.rank, missing_rng_seed=new_rank_seed)
        self.started_at = self.manager.last_saved = ckpt.step
        return restored

    def should_save(self, step: int, *, is_new_best: bool, is_done: bool) -> bool:
        """Every ``checkpoint.every_steps``, at the end, and at a new best (so keep_best has its weights)."""
        return step % self.cfg.every_steps == 0 or is_new_best or is_done

    def save(self, step: int, *, val_loss: float | None, force: bool = False) -> Path | None:
        """Save this step's state: in the background with ``checkpoint.async`` (returns None at once;
        :meth:`finish` commits it), else committed before returning (None if it failed with
        ``checkpoint.on_error: continue``). Multi-process: every rank calls it at the same step.

        While the previous background save is still being written, ``checkpoint.when_busy: skip``
        skips this one (said in the log) unless ``force`` (the end of the run, a stop)."""
        self._advise(step)
        if self.cfg.async_ and not force and self.cfg.when_busy == "skip" and self.manager.busy:
            self.log(f"checkpoint: step {step} skipped: the save of step {self.manager.pending_step} is still being "
                     "written (checkpoint.when_busy=skip)")
            return None
        ms = self.model_state
        meta = {"val_loss": val_loss, **self.meta, "created": time.time()}
        pieces = {**ms.pieces(), **self.states}
        self.started_at = step
        if self.cfg.async_:
            self.manager.save_async(step, model=ms.whole_model, tokenizer=ms.tokenizer, pieces=pieces, meta=meta,
                                    rank_state=ms.rank_snapshot())
            return None
        return self.manager.save(step, model=ms.whole_model, tokenizer=ms.tokenizer, pieces=pieces, meta=meta,
                                 rank_piece=ms.rank_writer())

    def drain_figures(self) -> list[dict[str, Any]]:
        """Per-save figures of the saves committed since the last call (metrics.jsonl ``event: save``)."""
        out, self.manager.figures = self.manager.figures, []
        if out and self._first_figures is None:
            self._first_figures = out[0]
        return out

    def _advise(self, step: int) -> None:
        """At the second save call of a run, say what a save costs in steps and in training time."""
        now = time.perf_counter()
        if self._first_call is None:
            self._first_call = (step, now)
            return
        first = self._first_figures or next(iter(self.manager.figures), None)
        if self._advised or first is None or step <= self._first_call[0] or self.rank != 0:
            return
        self._advised = True
        per_step = max((now - self._first_call[1] - first["blocked_s"]) / (step - self._first_call[0]), 1e-9)
        interval = self.cfg.every_steps * per_step
        if first["mode"] == "sync":
            cost = first["write_s"]
        else:  # training waits for a save that outlasts the interval (when_busy=wait)
            cost = first["blocked_s"] + max(0.0, first["write_s"] - interval) * (self.cfg.when_busy == "wait")
        size = f"{first['bytes'] / 1e9:.2f} GB" if first["bytes"] >= 1e9 else f"{first['bytes'] / 1e6:.0f} MB"
        lasts = round(first["write_s"] / per_step)
        self.log(f"checkpoint: a save writes {size} in {first['write_s']:.2f} s "
                 f"({first['mb_per_s']:.0f} MB/s) and blocked training {first['blocked_s']:.2f} s; a step takes "
                 f"{per_step:.3f} s, so a save lasts about {lasts} step{'' if lasts == 1 else 's'}; saving every "
                 f"{self.cfg.every_steps} steps slows training by about {100 * cost / interval:.0f}%")

    @property
    def piece_written(self) -> bool:
        """Whether this rank's part of a background save is written (shared at the next step)."""
        return self.manager.piece_written

    def poll(self, written_everywhere: bool) -> None:
        self.manager.poll(written_everywhere)

    def stop(self, step: int, *, val_loss: float | None) -> None:
        """A stop was requested after ``step``: save it unless it was just saved, commit, and say so."""
        if self.started_at != step:
            self.save(step, val_loss=val_loss, force=True)
        self.manager.wait()
        finish_removals()
        if self.manager.last_saved == step:
            self.log(f"stopped at step {step}; checkpoint saved; run the same command again to resume")
        else:
            self.log(f"stopped at step {step}; its checkpoint FAILED (see above): the same command resumes "
                     "from the newest checkpoint that was saved")

    def finish(self) -> None:
        """Commit the pending background save, if any (its error raises or is logged per ``on_error``),
        and finish deleting what retention set aside."""
        self.manager.wait()
        finish_removals()

    def abandon(self) -> None:
        """Give up the pending background save (a second Ctrl-C): nothing half-written is left."""
        self.manager.abandon()

    def after_error(self) -> None:
        """A failing single-process run still commits the checkpoint it was writing (a good step's
        state); a save error then is logged, and the error that stopped the run is the one raised.
        A multi-process commit needs every rank, which a failing run cannot promise: abandoned."""
        if self.world_size > 1:
            self.manager.abandon()
            return
        try:
            self.manager.wait()
        except BaseException as err:  # noqa: BLE001 - reported; the original error propagates
            self.log(f"WARNING: the checkpoint being written when the run failed did not commit: {err}")

    def write_final(self, final_dir: Path, step: int, summary: dict[str, Any]) -> Path:
        """Rank 0 writes ``final/``; a sharded model is first gathered (every rank takes part)."""
        ms = self.model_state
        full = ms.full_weights()
        if self.rank != 0:
            return final_dir
        return write_final(final_dir, step, model=ms.model, tokenizer=ms.tokenizer, summary=summary,
                           state_dict=full)
