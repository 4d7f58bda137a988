"""The owner of a run's checkpoints: which one to resume from, reading it, saving, retention, final/.

The trainer asks this object and never spells a file name inside a checkpoint. Reading goes
through one :class:`Checkpoint` handle, opened once per run after the checkpoint verified.
"""

from __future__ import annotations

import errno
import shutil
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from safetensors import SafetensorError

from chefgenius.checkpoint.format import CheckpointFormatError, load_state
from chefgenius.checkpoint.layout import (
    META,
    RNG,
    SAMPLER,
    STATE_PIECES,
    SUMMARY,
    TRAIN_STATE,
    checkpoint_dir,
    model_dir,
    step_of,
    tokenizer_dir,
)
from chefgenius.checkpoint.priority import hurry, run_idle
from chefgenius.checkpoint.shards import is_sharded
from chefgenius.checkpoint.snapshot import TensorBuffers, take_snapshot, write_snapshot
from chefgenius.checkpoint.state import (
    ResumeError,
    Stateful,
    load_training_state,
    write_rank_state,
    write_training_state,
)
from chefgenius.checkpoint.store import (
    CheckpointWriteError,
    apply_retention,
    commit_checkpoint,
    commit_directory,
    commit_written,
    files_of_rank,
    hash_files,
    list_checkpoints,
    remove_temporaries,
    run_save_hooks,
    temporary_directory,
    verify_checkpoint,
)
from chefgenius.config import CheckpointConfig
from chefgenius.runtime import distributed

# What resume reads from meta, with the type each must have; anything else is a damaged checkpoint.
_META_FIELDS: dict[str, type | tuple[type, ...]] = {"config": dict, "train_fingerprint": str, "versions": dict}


@dataclass
class Checkpoint:
    """A verified checkpoint opened for reading; its meta is already parsed and checked."""

    path: Path
    meta: dict[str, Any]

    @property
    def step(self) -> int:
        return step_of(self.path) or 0

    @property
    def model_dir(self) -> Path:
        return model_dir(self.path)

    @property
    def tokenizer_dir(self) -> Path:
        return tokenizer_dir(self.path)

    @property
    def is_sharded(self) -> bool:
        return is_sharded(self.path)

    def load_state(self, pieces: dict[str, Stateful], rank: int = 0, missing_rng_seed: int | None = None) -> bool:
        """Every training piece, then the RNG; refuses state whose step disagrees with the directory.

        Returns whether this rank's RNG state was restored (see :func:`load_training_state`).
        """
        restored = load_training_state(self.path, pieces=pieces, rank=rank, missing_rng_seed=missing_rng_seed)
        state = pieces.get(TRAIN_STATE)
        if state is not None and getattr(state, "step", self.step) != self.step:
            raise ResumeError(f"cannot resume: {self.path.name} holds train state for step {state.step}")
        return restored


def checkpoint_problem(ckpt: Path) -> str | None:
    """One line saying why ``ckpt`` cannot be used, or None: the manifest verifies and every state
    file parses within its size and nesting bounds (what verify, list, inspect and resume all use)."""
    problem = verify_checkpoint(ckpt)
    if problem:
        return problem
    names = {f"{n}.json" for n in (*STATE_PIECES, META)}
    for js in sorted([*(p for p in ckpt.glob("*.json") if p.name in names), *ckpt.glob(f"rank-*/{RNG}.json")]):
        try:
            state = load_state(js.parent, js.stem, with_tensors=False)
        except CheckpointFormatError as err:
            return f"{ckpt.name}: {err}"
        if js.stem in (META, TRAIN_STATE, SAMPLER) and not isinstance(state, dict):
            return f"{ckpt.name}: {js.name} does not hold a mapping (damaged or foreign)"
    return None


def open_checkpoint(path: Path) -> Checkpoint:
    problem = checkpoint_problem(path)
    if problem:
        raise ResumeError(f"checkpoint does not verify: {problem}")
    try:
        meta = load_state(path, META)
    except CheckpointFormatError as err:
        raise ResumeError(f"cannot resume: {err}") from None
    bad = [k for k, t in _META_FIELDS.items() if not isinstance(meta, dict) or not isinstance(meta.get(k), t)]
    if bad:
        raise ResumeError(f"cannot resume: {path.name}/meta lacks valid {', '.join(bad)} (damaged or foreign)")
    return Checkpoint(path, meta)


class SaveAbandoned(Exception):
    """An asynchronous save given up on purpose (the user aborted); its temporary directory is removed."""


@dataclass
class _PendingSave:
    step: int
    # (result, seconds the background job took); result: single process, the paths retention removed;
    # multi-process, this rank's file digests
    future: Future[tuple[Any, float]]
    abandon: threading.Event
    tmp: Path | None = None  # multi-process: the shared temporary directory, committed collectively
    blocked_s: float = 0.0  # how long the save call held training (waiting for the previous one + snapshot)


SAVE_EVENT = "save"


def save_figures(path: Path, step: int, *, mode: str, blocked_s: float, write_s: float) -> dict[str, Any]:
    """What a committed save cost, as one metrics.jsonl entry (``event: save``)."""
    from chefgenius.checkpoint.store import read_manifest

    size = sum(e["size"] for e in read_manifest(path)["files"].values())
    return {"event": SAVE_EVENT, "step": step, "mode": mode, "bytes": size, "blocked_s": round(blocked_s, 4),
            "write_s": round(write_s, 4), "mb_per_s": round(size / max(write_s, 1e-9) / 1e6, 1)}


@dataclass
class CheckpointManager:
    root: Path
    cfg: CheckpointConfig
    log: Callable[..., None]
    rank: int = 0
    protected: set[int] = field(default_factory=set)
    last_saved: int | None = None  # the step of the newest checkpoint this run committed
    figures: list[dict[str, Any]] = field(default_factory=list)  # per committed save, for metrics.jsonl (rank 0)
    _pending: _PendingSave | None = None
    _buffers: TensorBuffers = field(default_factory=TensorBuffers)
    _writer: ThreadPoolExecutor | None = None
    _said_priority: bool = False

    def _record(self, path: Path, step: int, mode: str, blocked_s: float, write_s: float) -> None:
        if self.rank == 0:
            self.figures.append(save_figures(path, step, mode=mode, blocked_s=blocked_s, write_s=write_s))

    @property
    def busy(self) -> bool:
        """A background save is still being written (multi-process: not yet written on every rank as of
        the last step's all-gather, which every rank heard alike)."""
        pending = self._pending
        return pending is not None and (pending.tmp is not None or not pending.future.done())

    @property
    def pending_step(self) -> int | None:
        return self._pending.step if self._pending is not None else None

    def remove_temporaries(self, *also: Path) -> None:
        for d in (self.root, *also):
            for removed in remove_temporaries(d):
                self.log(f"removed {removed.name}: left by an interrupted save")

    def select(self, resume: str) -> Checkpoint | None:
        """``auto``: newest that verifies (saying why newer ones were skipped); ``never``; or a path.

        In a multi-process run rank 0 chooses and verifies; the others open what it chose.
        """
        if not distributed.is_initialized():
            return self._select(resume)
        if self.rank == 0:
            try:
                ckpt = self._select(resume)
            except BaseException as err:
                distributed.broadcast_json({"error": str(err)})
                raise
            distributed.broadcast_json({"path": str(ckpt.path) if ckpt else None})
            return ckpt
        choice = distributed.broadcast_json()
        if "error" in choice:
            raise ResumeError(f"rank 0 could not choose a checkpoint: {choice['error']}")
        if choice["path"] is None:
            return None
        path = Path(choice["path"])
        self.protected.add(step_of(path) or 0)
        return Checkpoint(path, load_state(path, META))

    def _select(self, resume: str) -> Checkpoint | None:
        if resume not in ("auto", "never"):
            path = Path(resume)
            if not path.is_dir():
                raise ResumeError(f"--resume {resume}: no such checkpoint directory")
            return self._open(path)
        existing = list_checkpoints(self.root)
        if resume == "never":
            if existing:
                raise ResumeError(f"{self.root.parent} already holds checkpoints; pass --resume auto to continue "
                                  "it, or choose a new --output-dir")
            return None
        if not existing:
            return None
        for info in reversed(existing):
            try:
                return self._open(info.path)
            except ResumeError as err:
                self.log(f"skipping checkpoint {info.path.name}: {err}")
        raise ResumeError(f"{self.root.parent} holds checkpoints but none verifies; run 'chefgenius ckpt list "
                          f"{self.root.parent}' and remove or repair them, or use a new --output-dir")

    def _open(self, path: Path) -> Checkpoint:
        ckpt = open_checkpoint(path)
        self.protected.add(ckpt.step)  # retention never deletes the checkpoint a run resumed from
        return ckpt

    def save(self, step: int, *, model: Any, tokenizer: Any, pieces: dict[str, Stateful],
             meta: dict[str, Any], rank_piece: Callable[[Path], None] | None = None) -> Path | None:
        """Commit a checkpoint, then apply retention; a failed write follows ``checkpoint.on_error``.

        Multi-process: rank 0 creates the temporary directory and names it to the others; every
        rank writes its own piece (its RNG state) into it; only when all ranks report success does
        rank 0 write the manifest and commit. Every rank then learns the outcome, so all of them
        stop or go on together. A rank killed at any point leaves an uncommitted temporary.
        ``rank_piece(tmp)``: what else each rank writes (its model and optimizer shards).
        """
        t0 = time.perf_counter()
        try:
            if self.rank == 0:
                path = self._commit(step, model, tokenizer, pieces, meta, rank_piece)
            else:
                path = self._write_rank_piece(step, rank_piece)
        except CheckpointWriteError as err:
            return self._failed(step, err)
        self.last_saved = step
        if self.rank != 0:
            return path
        took = time.perf_counter() - t0
        self._record(path, step, "sync", took, took)
        for removed in self._apply_retention():
            self.log(f"retention: removed {removed.name}")
        return path

    def _apply_retention(self) -> list[Path]:
        return apply_retention(self.root, keep_last=self.cfg.keep_last, keep_best=self.cfg.keep_best,
                               protect=self.protected)

    # ----- asynchronous saves ----------------------------------------------------------------------

    def save_async(self, step: int, *, model: Any, tokenizer: Any, pieces: dict[str, Stateful],
                   meta: dict[str, Any], rank_state: dict[str, Any] | None = None) -> None:
        """Snapshot the state into reused CPU buffers now; write, fsync and hash it in a background
        thread. Waits for the previous save first (its buffers are reused).

        Single process: the background thread also commits and applies retention. Multi-process:
        rank 0 creates the temporary directory and names it to all; each rank's thread writes its
        piece, fsyncs and hashes its files; the commit is a collective on the main threads, at the
        first step boundary where every rank reports its piece written (:meth:`poll`), or at the
        next save, stop or end (:meth:`wait`): rank 0 writes the manifest from every rank's hashes
        (nothing is read back) and renames. Only the snapshot blocks training; the save touches no
        live state, so the run's results do not depend on when it finishes.
        ``rank_state``: this rank's model and optimizer shards (sharded runs; ``model`` is then None).
        """
        t0 = time.perf_counter()
        previous = self.pending_step if self.busy else None
        self.wait()
        waited = time.perf_counter() - t0
        if previous is not None and self.rank == 0:
            self.log(f"checkpoint: step {step} waited {waited:.2f} s for the save of step {previous} to be written; "
                     "raise checkpoint.every_steps, or set checkpoint.when_busy=skip to skip such saves")
        group = distributed.is_initialized()
        tmp: Path | None = None
        if group:
            tmp = self._announce_temporary(step)
            if tmp is None:
                return
        first = self.rank == 0
        snapshot = take_snapshot(model=model if first else None, pieces=pieces if first else {},
                                 meta=meta if first else None, buffers=self._buffers, rank_state=rank_state)
        abandon = threading.Event()

        def check_abandoned() -> None:
            if abandon.is_set():
                raise SaveAbandoned(f"checkpoint step {step} abandoned")

        def write(directory: Path) -> None:
            write_snapshot(directory, snapshot, model=model if first else None,
                           tokenizer=tokenizer if first else None, rank=self.rank)
            check_abandoned()

        def commit_alone() -> tuple[Any, float]:
            self._background_priority()
            started = time.perf_counter()
            commit_checkpoint(self.root, step, write, before_commit=check_abandoned)
            return self._apply_retention(), time.perf_counter() - started

        def write_piece() -> tuple[Any, float]:
            self._background_priority()
            started = time.perf_counter()
            write(tmp)
            run_save_hooks(tmp)
            check_abandoned()
            return hash_files(tmp, files_of_rank(tmp, self.rank)), time.perf_counter() - started

        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chefgenius-checkpoint")
        self._pending = _PendingSave(step, self._writer.submit(write_piece if group else commit_alone), abandon, tmp,
                                     blocked_s=time.perf_counter() - t0)

    def _background_priority(self) -> None:
        """The writer at idle priority; said once per run where the system refuses it."""
        refused = run_idle()
        if refused is not None and not self._said_priority:
            self._said_priority = True
            self.log(f"WARNING: checkpoint: the background writer cannot run at idle priority ({refused}); it "
                     "runs at training's priority, and on a machine whose cores training fills, background "
                     "saves may slow training more than synchronous ones (checkpoint.async: false)")

    def _announce_temporary(self, step: int) -> Path | None:
        """Rank 0 creates the save's temporary directory and names it to every rank (None: it failed)."""
        message = self._decided_by_rank0(lambda: {"tmp": str(temporary_directory(checkpoint_dir(self.root, step)))})
        if "error" in message:
            self._failed(step, CheckpointWriteError(errno.EIO, message["error"]))
            return None
        return Path(message["tmp"])

    def _decided_by_rank0(self, decide: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """What rank 0's ``decide()`` returns (or the error of the write it failed), on every rank."""
        if self.rank != 0:
            return distributed.broadcast_json()
        try:
            message = decide()
        except CheckpointWriteError as err:
            message = {"error": err.strerror}
        distributed.broadcast_json(message)
        return message

    @property
    def piece_written(self) -> bool:
        """Whether this process has a background save whose writing is over (what :meth:`poll` needs to
        hear from every rank)."""
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
        if final.is_dir():  # retention may already have removed a step that was neither newest nor best
            self._record(final, pending.step, "async", pending.blocked_s, took)
        for path in removed:
            self.log(f"retention: removed {path.name}")
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
            commit_written(pending.tmp, final, pending.step, hashed=merged, hooks=False)
            return {"path": str(final)}

        outcome = self._decided_by_rank0(commit)
        if "error" in outcome:
            return self._failed(pending.step, CheckpointWriteError(errno.EIO, outcome["error"]))
        self.last_saved = pending.step
        if self.rank == 0:
            self._record(final, pending.step, "async", pending.blocked_s, took)
            for removed in self._apply_retention():
                self.log(f"retention: removed {removed.name}")
        return final

    def _failed(self, step: int, err: CheckpointWriteError) -> None:
        if self.cfg.on_error == "stop":
            raise err
        self.log(f"WARNING: checkpoint at step {step} FAILED and training goes on "
                 f"(checkpoint.on_error=continue): {err.strerror}")
        return None

    def abandon(self) -> None:
        """Give up the background save (the user aborted, or the run failed in a multi-process job,
        where a commit would need the other ranks): it stops before its commit; its temporary
        directory is removed, or left to the next run; a checkpoint it already committed stays."""
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

    def _commit(self, step: int, model: Any, tokenizer: Any, pieces: dict[str, Stateful], meta: dict[str, Any],
                rank_piece: Callable[[Path], None] | None) -> Path:
        announced = False

        def write(tmp: Path) -> None:
            nonlocal announced
            announced = True
            distributed.broadcast_json({"tmp": str(tmp)})
            failure: BaseException | None = None
            try:
                write_training_state(tmp, model=model, tokenizer=tokenizer, pieces=pieces, meta=meta, rank=0)
                if rank_piece is not None:
                    rank_piece(tmp)
            except BaseException as err:  # the other ranks must still hear that this save failed
                failure = err
            everyone = distributed.all_true(failure is None)
            if failure is not None:
                raise failure
            if not everyone:
                raise CheckpointWriteError(errno.EIO, f"cannot write checkpoint step {step}: another process "
                                           "failed to write its state (see its error above)")

        error: CheckpointWriteError | None = None
        try:
            path = commit_checkpoint(self.root, step, write)
        except CheckpointWriteError as err:
            error = err
            if distributed.is_initialized() and not announced:
                distributed.broadcast_json({"error": err.strerror})
        if distributed.is_initialized():
            distributed.broadcast_json({"error": error.strerror} if error else {"path": str(path)})
        if error is not None:
            raise error
        return path

    def _write_rank_piece(self, step: int, rank_piece: Callable[[Path], None] | None) -> Path:
        """Rank > 0: write this rank's RNG (and shards) into the directory rank 0 names, then hear the outcome."""
        message = distributed.broadcast_json()
        if "tmp" in message:
            failure: str | None = None
            try:
                write_rank_state(Path(message["tmp"]), self.rank)
                if rank_piece is not None:
                    rank_piece(Path(message["tmp"]))
                run_save_hooks(Path(message["tmp"]))
            except (OSError, SafetensorError) as err:  # safetensors reports a full disk as its own error
                failure = f"rank {self.rank}: {getattr(err, 'strerror', None) or err}"
                print(f"error: cannot write checkpoint step {step}: {failure}", file=sys.stderr, flush=True)
            distributed.all_true(failure is None)
            message = distributed.broadcast_json()
        if "error" in message:
            raise CheckpointWriteError(errno.EIO, message["error"])
        return Path(message["path"])


def write_hf_directory(directory: Path, model: Any, tokenizer: Any, state_dict: dict[str, Any] | None = None
                       ) -> None:
    """One Hugging Face model directory: weights, config, generation config and tokenizer side by side.

    ``state_dict``: full weights gathered from a sharded model (saved instead of the model's own)."""
    from chefgenius.data.tokenizer import save_tokenizer
    from chefgenius.runtime.parallel import unwrap

    gen = getattr(unwrap(model), "generation_config", None)
    if gen is not None:  # generation stops at the end-of-recipe token, whoever loads the directory
        gen.eos_token_id = tokenizer.eos_token_id
        gen.pad_token_id = tokenizer.pad_token_id
    if state_dict is not None:
        model.save_pretrained(str(directory), state_dict=state_dict)
    else:
        model.save_pretrained(str(directory))
    save_tokenizer(tokenizer, directory)


def write_final(final_dir: Path, step: int, *, model: Any, tokenizer: Any, summary: dict[str, Any],
                state_dict: dict[str, Any] | None = None) -> Path:
    def write(tmp: Path) -> None:
        write_hf_directory(tmp, model, tokenizer, state_dict)
        (tmp / SUMMARY).write_text(yaml.safe_dump(summary, sort_keys=False))

    return commit_directory(final_dir, step, write)


def export_directory(out: Path, write: Callable[[Path], None], *, force: bool) -> Path:
    """Write ``out`` through a temporary directory and a rename; never replaces user files unless forced."""
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise FileExistsError(f"{out} exists and is not a directory; choose another output path")
        if any(out.iterdir()) and not force:
            raise FileExistsError(f"{out} is not empty; choose an empty or new directory, or pass --force to "
                                  "replace it")
    tmp = out.parent / f".tmp-export-{out.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.mkdir()
        write(tmp)
        if out.exists():
            old = out.parent / f".tmp-replaced-{out.name}"
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
