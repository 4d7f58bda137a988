"""The trainer's one owner of checkpoints: what to resume, restoring it, when to save, saving
(synchronous, background or sharded behind one call), retention, stopping with every save committed,
final/. Every ``checkpoint.*`` setting is read here and nowhere else.

Model and optimizer are one state piece (:class:`ModelState`) whether sharded or not; everything
else that speaks ``state_dict()`` is handed over once by name (:meth:`Checkpointer.track`).

The save path, synchronous: :meth:`Checkpointer.save` takes a snapshot (snapshot.py), then
:func:`collective.save_as_rank0` writes it into a temporary directory (snapshot.py → format.py →
tensorfile.py → durable/files.py) and commits it (durable/directory.py). In the background, the same
snapshot is taken into reused buffers and a writer thread does the rest.
"""

from __future__ import annotations

import errno
import shutil
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from chefgenius.checkpoint.collective import Written, decided_by_rank0, save_as_rank, save_as_rank0
from chefgenius.checkpoint.final import write_final
from chefgenius.checkpoint.layout import OPTIMIZER, SHARDS, checkpoint_dir
from chefgenius.checkpoint.priority import hurry, run_idle
from chefgenius.checkpoint.reading import Checkpoint, choose_checkpoint
from chefgenius.checkpoint.shards import read_shards
from chefgenius.checkpoint.snapshot import StateSnapshot, TensorBuffers, take_snapshot, write_snapshot
from chefgenius.checkpoint.state import ResumeError, Stateful
from chefgenius.checkpoint.store import (
    apply_retention,
    files_of_rank,
    finish_removals,
    read_checkpoint_manifest,
)
from chefgenius.config import CheckpointConfig
from chefgenius.durable.directory import (
    commit_written,
    discarded_on_error,
    hash_files,
    remove_temporaries,
    temporary_directory,
)
from chefgenius.errors import CheckpointWriteError
from chefgenius.runtime import distributed
from chefgenius.runtime.sharding import full_state_dict, load_shards, shard_state

SAVE_EVENT = "save"


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

    def rank_state(self) -> dict[str, Any] | None:
        """What each rank saves besides its RNG: its slices of model and optimizer (sharded), else nothing."""
        if not self.sharded:
            return None
        return {SHARDS: shard_state(self.model, self.optimizer, self.rank, self.world_size)}

    def load(self, ckpt: Checkpoint) -> dict[str, Stateful]:
        """Fill model and optimizer from a sharded checkpoint now; for a whole one, the pieces to load."""
        if not ckpt.is_sharded:
            return self.pieces()
        load_shards(read_shards(ckpt.path), ckpt.path.name, self.model, self.optimizer, self.rank, self.world_size)
        return {}

    def full_weights(self) -> dict[str, torch.Tensor] | None:
        """Every rank gathers a sharded model whole (a collective); None for a whole model."""
        return full_state_dict(self.model) if self.sharded else None


class SaveAbandoned(Exception):
    """A background save given up on purpose (the user aborted); its temporary directory is removed."""


@dataclass
class _PendingSave:
    step: int
    # (result, seconds the background job took); result: single process, the paths retention removed;
    # multi-process, this rank's file digests
    future: Future[tuple[Any, float]]
    abandon: threading.Event
    tmp: Path | None = None  # multi-process: the shared temporary directory, committed collectively
    blocked_s: float = 0.0  # how long the save call held training (waiting for the previous one + snapshot)


def _nothing(directory: Path) -> None:
    return None


class Checkpointer:
    """``on_written(tmp)``: called in every process once it has written its part of a save, before the
    commit (in whichever thread writes); an observer's hook (the fault tests hold a save open with it)."""

    def __init__(self, root: Path, cfg: CheckpointConfig, log: Callable[..., None], rank: int = 0,
                 world_size: int = 1, *, on_written: Written | None = None) -> None:
        self.root, self.cfg, self.log, self.rank, self.world_size = root, cfg, log, rank, world_size
        self.on_written = on_written or _nothing
        self.model_state: ModelState | None = None
        self.states: dict[str, Stateful] = {}
        self.meta: dict[str, Any] = {}
        self.protected: set[int] = set()  # the step resumed from: retention never deletes it
        self.started_at: int | None = None  # the step of the newest save this run started (or resumed from)
        self.last_saved: int | None = None  # the step of the newest checkpoint this run committed
        self.figures: list[dict[str, Any]] = []  # per committed save, for metrics.jsonl (rank 0)
        self._pending: _PendingSave | None = None
        self._buffers = TensorBuffers()
        self._writer: ThreadPoolExecutor | None = None
        self._said_priority = False
        self._first_call: tuple[int, float] | None = None  # (step, time) of this run's first save call
        self._first_figures: dict[str, Any] | None = None
        self._advised = False

    # ----- resuming ---------------------------------------------------------------------------------

    def remove_temporaries(self, *also: Path) -> None:
        for d in (self.root, *also):
            for removed in remove_temporaries(d):
                self.log(f"removed {removed.name}: left by an interrupted save")

    def select(self, resume: str) -> Checkpoint | None:
        """``auto``: newest that verifies (saying why newer ones were skipped); ``never``; or a path.

        In a multi-process run rank 0 chooses and verifies; the others open what it chose.
        """
        if not distributed.is_initialized() or self.rank == 0:
            try:
                ckpt = choose_checkpoint(self.root, resume, self.log)
            except BaseException as err:
                distributed.broadcast_json({"error": str(err)})
                raise
            distributed.broadcast_json({"path": str(ckpt.path) if ckpt else None})
        else:
            choice = distributed.broadcast_json()
            if "error" in choice:
                raise ResumeError(f"rank 0 could not choose a checkpoint: {choice['error']}")
            ckpt = None if choice["path"] is None else Checkpoint.trusted(Path(choice["path"]))
        if ckpt is not None:
            self.protected.add(ckpt.step)
        return ckpt

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
        self.started_at = self.last_saved = ckpt.step
        return restored

    # ----- saving -----------------------------------------------------------------------------------

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
        if self.cfg.async_ and not force and self.cfg.when_busy == "skip" and self.busy:
            self.log(f"checkpoint: step {step} skipped: the save of step {self._pending.step} is still being "
                     "written (checkpoint.when_busy=skip)")
            return None
        self.started_at = step
        if self.cfg.async_:
            self._save_in_background(step, {"val_loss": val_loss, **self.meta, "created": time.time()})
            return None
        t0 = time.perf_counter()
        snapshot = self._snapshot({"val_loss": val_loss, **self.meta, "created": time.time()}, buffers=None)
        try:
            if self.rank == 0:
                path = save_as_rank0(checkpoint_dir(self.root, step), step, self._writes(snapshot), self.on_written)
            else:
                path = save_as_rank(step, self.rank, self._writes(snapshot), self.on_written)
        except CheckpointWriteError as err:
            return self._failed(step, err)
        self.last_saved = step
        if self.rank == 0:
            took = time.perf_counter() - t0
            self._committed(path, step, "sync", took, took)
            self._say_removed(self._apply_retention())
        return path

    def _snapshot(self, meta: dict[str, Any], buffers: TensorBuffers | None) -> StateSnapshot:
        """This rank's part of the state: all of it on rank 0, only its RNG (and shards) elsewhere."""
        ms, first = self.model_state, self.rank == 0
        return take_snapshot(model=ms.whole_model if first else None,
                             pieces={**ms.pieces(), **self.states} if first else {},
                             meta=meta if first else None, buffers=buffers, rank_state=ms.rank_state())

    def _writes(self, snapshot: StateSnapshot) -> Callable[[Path], None]:
        first, ms = self.rank == 0, self.model_state
        return lambda tmp: write_snapshot(tmp, snapshot, model=ms.whole_model if first else None,
                                          tokenizer=ms.tokenizer if first else None, rank=self.rank)

    def _committed(self, path: Path, step: int, mode: str, blocked_s: float, write_s: float) -> None:
        """Rank 0, after a commit: what the save cost, as one metrics.jsonl entry (``event: save``)."""
        if path.is_dir():  # retention may already have removed a step that was neither newest nor best
            size = sum(e["size"] for e in read_checkpoint_manifest(path)["files"].values())
            self.figures.append({"event": SAVE_EVENT, "step": step, "mode": mode, "bytes": size,
                                 "blocked_s": round(blocked_s, 4), "write_s": round(write_s, 4),
                                 "mb_per_s": round(size / max(write_s, 1e-9) / 1e6, 1)})

    def _say_removed(self, removed: list[Path]) -> None:
        for gone in removed:
            self.log(f"retention: removed {gone.name}")

    def _apply_retention(self) -> list[Path]:
        return apply_retention(self.root, keep_last=self.cfg.keep_last, keep_best=self.cfg.keep_best,
                               protect=self.protected)

    def _failed(self, step: int, err: CheckpointWriteError) -> None:
        if self.cfg.on_error == "stop":
            raise err
        self.log(f"WARNING: checkpoint at step {step} FAILED and training goes on "
                 f"(checkpoint.on_error=continue): {err.strerror}")
        return None

    # ----- background saves -------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """A background save is still being written (multi-process: not yet written on every rank as of
        the last step's all-gather, which every rank heard alike)."""
        pending = self._pending
        return pending is not None and (pending.tmp is not None or not pending.future.done())

    def _save_in_background(self, step: int, meta: dict[str, Any]) -> None:
        """Snapshot the state into reused CPU buffers now; write, fsync and hash it in a background
        thread. Waits for the previous save first (its buffers are reused).

        Single process: the background thread also commits and applies retention. Multi-process:
        rank 0 creates the temporary directory and names it to all; each rank's thread writes its
        piece, fsyncs and hashes its files; the commit is a collective on the main threads, at the
        first step boundary where every rank reports its piece written (:meth:`poll`), or at the
        next save, stop or end (:meth:`wait`): rank 0 writes the manifest from every rank's hashes
        (nothing is read back) and renames. Only the snapshot blocks training; the save touches no
        live state, so the run's results do not depend on when it finishes.
        """
        t0 = time.perf_counter()
        previous = self._pending.step if self.busy else None
        self.wait()
        if previous is not None and self.rank == 0:
            self.log(f"checkpoint: step {step} waited {time.perf_counter() - t0:.2f} s for the save of step "
                     f"{previous} to be written; raise checkpoint.every_steps, or set checkpoint.when_busy=skip "
                     "to skip such saves")
        tmp: Path | None = None
        if distributed.is_initialized():
            message = decided_by_rank0(self.rank, lambda: {
                "tmp": str(temporary_directory(checkpoint_dir(self.root, step), step))})
            if "error" in message:
                self._failed(step, CheckpointWriteError(errno.EIO, message["error"]))
                return
            tmp = Path(message["tmp"])
        write = self._writes(self._snapshot(meta, self._buffers))
        abandon = threading.Event()

        def check_abandoned() -> None:
            if abandon.is_set():
                raise SaveAbandoned(f"checkpoint step {step} abandoned")

        def commit_alone() -> tuple[Any, float]:
            self._background_priority()
            started = time.perf_counter()
            final = checkpoint_dir(self.root, step)
            staged = temporary_directory(final, step)
            with discarded_on_error(staged, final.name, step):
                write(staged)
                self.on_written(staged)
            commit_written(staged, final, step, before_commit=check_abandoned)
            return self._apply_retention(), time.perf_counter() - started

        def write_piece() -> tuple[Any, float]:
            self._background_priority()
            started = time.perf_counter()
            write(tmp)
            self.on_written(tmp)
            check_abandoned()
            return hash_files(tmp, files_of_rank(tmp, self.rank)), time.perf_counter() - started

        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chefgenius-checkpoint")
        self._pending = _PendingSave(step, self._writer.submit(write_piece if tmp is not None else commit_alone),
                                     abandon, tmp, blocked_s=time.perf_counter() - t0)

    def _background_priority(self) -> None:
        """The writer at idle priority; said once per run where the system refuses it."""
        refused = run_idle()
        if refused is not None and not self._said_priority:
            self._said_priority = True
            self.log(f"WARNING: checkpoint: the background writer cannot run at idle priority ({refused}); it "
                     "runs at training's priority, and on a machine whose cores training fills, background "
                     "saves may slow training more than synchronous ones (checkpoint.async: false)")

    @property
    def piece_written(self) -> bool:
        """Whether this rank's part of a background save is written (shared at the next step)."""
        return self._pending is not None and self._pending.future.done()

    def poll(self, written_everywhere: bool) -> None:
        """At a step boundary: finish the background save once every rank has written its piece
        (``written_everywhere``: the same value on every rank, from the step's all-gather)."""
        if self._pending is not None and written_everywhere:
            self.wait()

    def wait(self) -> Path | None:
        """Block until the background save (if any) is committed; report it like a synchronous save:
        its error raises (``on_error: stop``) or is logged loudly (``continue``, returns None).
        Multi-process: every rank calls it at the same point (it commits collectively)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        hurry()  # the writer ran at idle priority while training went on; now training waits for it
        if pending.tmp is not None:
            return self._commit_group(pending)
        try:
            removed, took = pending.future.result()
        except CheckpointWriteError as err:
            return self._failed(pending.step, err)
        self.last_saved = pending.step
        final = checkpoint_dir(self.root, pending.step)
        self._committed(final, pending.step, "async", pending.blocked_s, took)
        self._say_removed(removed)
        return final

    def _commit_group(self, pending: _PendingSave) -> Path | None:
        problem = None
        hashed: dict[str, Any] = {}
        took = 0.0
        try:
            hashed, took = pending.future.result()
        except Exception as err:  # noqa: BLE001 - every rank must hear of it; reported below as the save's error
            problem = f"rank {self.rank}: {getattr(err, 'strerror', None) or err}"
            print(f"error: cannot write checkpoint step {pending.step}: {problem}", file=sys.stderr, flush=True)
        reports = distributed.all_gather_json({"hashed": hashed, "problem": problem})
        final = checkpoint_dir(self.root, pending.step)

        def commit() -> dict[str, Any]:
            problems = [r["problem"] for r in reports if r["problem"]]
            if problems:
                shutil.rmtree(pending.tmp, ignore_errors=True)
                return {"error": f"cannot write checkpoint step {pending.step}: {problems[0]}"}
            merged = {rel: entry for r in reports for rel, entry in r["hashed"].items()}
            commit_written(pending.tmp, final, pending.step, hashed=merged)
            return {"path": str(final)}

        outcome = decided_by_rank0(self.rank, commit)
        if "error" in outcome:
            return self._failed(pending.step, CheckpointWriteError(errno.EIO, outcome["error"]))
        self.last_saved = pending.step
        if self.rank == 0:
            self._committed(final, pending.step, "async", pending.blocked_s, took)
            self._say_removed(self._apply_retention())
        return final

    def abandon(self) -> None:
        """Give up the background save (a second Ctrl-C, or a failing multi-process run, where a commit
        would need the other ranks): it stops before its commit; its temporary directory is removed, or
        left to the next run; a checkpoint it already committed stays."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        pending.abandon.set()
        try:
            pending.future.result()
        except SaveAbandoned:
            pass
        except Exception as err:  # noqa: BLE001 - the run is already failing or aborting: said, not raised
            self.log(f"WARNING: checkpoint step {pending.step} was abandoned and had failed too: {err}")

    # ----- reporting --------------------------------------------------------------------------------

    def drain_figures(self) -> list[dict[str, Any]]:
        """Per-save figures of the saves committed since the last call (metrics.jsonl ``event: save``)."""
        out, self.figures = self.figures, []
        if out and self._first_figures is None:
            self._first_figures = out[0]
        return out

    def _advise(self, step: int) -> None:
        """At the second save call of a run, say what a save costs in steps and in training time."""
        now = time.perf_counter()
        if self._first_call is None:
            self._first_call = (step, now)
            return
        first = self._first_figures or next(iter(self.figures), None)
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

    # ----- ending -----------------------------------------------------------------------------------

    def stop(self, step: int, *, val_loss: float | None) -> None:
        """A stop was requested after ``step``: save it unless it was just saved, commit, and say so."""
        if self.started_at != step:
            self.save(step, val_loss=val_loss, force=True)
        self.finish()
        if self.last_saved == step:
            self.log(f"stopped at step {step}; checkpoint saved; run the same command again to resume")
        else:
            self.log(f"stopped at step {step}; its checkpoint FAILED (see above): the same command resumes "
                     "from the newest checkpoint that was saved")

    def finish(self) -> None:
        """Commit the pending background save, if any (its error raises or is logged per ``on_error``),
        and finish deleting what retention set aside."""
        self.wait()
        finish_removals()

    def after_error(self) -> None:
        """A failing single-process run still commits the checkpoint it was writing (a good step's
        state); a save error then is logged, and the error that stopped the run is the one raised.
        A multi-process commit needs every rank, which a failing run cannot promise: abandoned."""
        if self.world_size > 1:
            self.abandon()
            return
        try:
            self.wait()
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
