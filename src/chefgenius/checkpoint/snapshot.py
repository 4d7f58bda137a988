"""A training checkpoint held in CPU memory: taken at a step boundary, written later (or at once).

Taking a snapshot is the only part of an asynchronous save that blocks training: every tensor is
copied into CPU buffers that are reused from one save to the next (pinned when the state lives
on a GPU, so the copies do not stall the host), and every other value is rebuilt as fresh JSON
data. Nothing in a snapshot refers to live training state, so a background thread can write it
while the next steps change the model and optimizer in place.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..fileio import digest_and_sync, knows_digest
from .format import EncodedState, balanced, encode_state, write_encoded
from .hf_weights import direct_weights
from .layout import META, RNG, model_dir, rank_dir, tokenizer_dir
from .priority import adopt
from .rng import capture_rng


class TensorBuffers:
    """CPU tensors keyed by name, allocated on first use and refilled by later snapshots.

    Copies from CPU tensors are queued and run by :meth:`finish`, spread over the machine's cores:
    training waits for them anyway, so its cores are free (two threads copy 300 MiB in 28 ms
    instead of 51 ms on the 2-core benchmark machine). Copies from a GPU are issued at once,
    non-blocking, into pinned memory.
    """

    PARALLEL_MIN_BYTES = 8 << 20

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}
        self._queued: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._copied_from_cuda = False
        self._pool: ThreadPoolExecutor | None = None

    def copy(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach()
        buf = self._buffers.get(key)
        on_gpu = tensor.device.type == "cuda"
        if buf is None or buf.shape != tensor.shape or buf.dtype != tensor.dtype:
            buf = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=on_gpu)
            self._buffers[key] = buf
        if on_gpu:
            self._copied_from_cuda = True
            buf.copy_(tensor, non_blocking=True)
        else:
            self._queued.append((buf, tensor))
        return buf

    def finish(self) -> Any:
        """Run the queued copies; returns a CUDA event the writer must wait on (GPU copies), or None."""
        queued, self._queued = self._queued, []
        workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
                      len(queued), 8)
        if workers > 1 and sum(b.numel() * b.element_size() for b, _ in queued) >= self.PARALLEL_MIN_BYTES:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chefgenius-snapshot")
            shares = balanced(queued, workers, lambda bt: bt[0].numel() * bt[0].element_size())
            list(self._pool.map(_copy_all, shares))  # tensor copies release the GIL
        else:
            _copy_all(queued)
        if not self._copied_from_cuda:
            return None
        self._copied_from_cuda = False
        event = torch.cuda.Event()
        event.record()
        return event


def _copy_all(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for buf, src in pairs:
        buf.copy_(src)


@dataclass
class StateSnapshot:
    """Everything one rank writes into a checkpoint, detached from the live objects."""

    pieces: dict[str, EncodedState]  # optimizer, scheduler, sampler, train state, meta (rank 0)
    rank_pieces: dict[str, EncodedState]  # this rank's RNG (and model/optimizer shards), in rank-NNNNN/
    model_state: dict[str, torch.Tensor] | None  # copied weights; None: write the live model now
    ready: Any = None  # a CUDA event to wait for, or None


def _model_state_copy(model: Any, buffers: TensorBuffers) -> dict[str, torch.Tensor]:
    """The model's state dict in buffers; tensors that share memory (tied embeddings) share a copy,
    so the saved model is the one ``save_pretrained`` would write from the live model.

    Frozen parameters (a LoRA run's base model) never change during training: they are referred
    to, not copied, so a LoRA snapshot costs the adapters, not the base model.
    """
    trainable = {p.data_ptr() for p in model.parameters() if p.requires_grad}
    frozen = {p.data_ptr() for p in model.parameters() if not p.requires_grad} - trainable
    copies: dict[tuple[Any, ...], torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        if t.data_ptr() in frozen and t.device.type == "cpu":
            out[name] = t
            continue
        alias = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()),
                 t.dtype)
        if alias not in copies:
            copies[alias] = buffers.copy(f"model.{name}", t)
        out[name] = copies[alias]
    return out


def take_snapshot(*, model: Any, pieces: dict[str, Any], meta: dict[str, Any] | None,
                  buffers: TensorBuffers | None, rank_state: dict[str, Any] | None = None) -> StateSnapshot:
    """``buffers`` None: a synchronous save; tensors are cloned and the live model is written directly.

    ``model`` None: nothing of the model is written (sharded: see ``rank_state``; or not rank 0).
    ``meta`` None: no meta piece (ranks other than 0). ``rank_state``: more state for this rank's
    directory besides its RNG (its model and optimizer shards).
    """
    copy = buffers.copy if buffers is not None else None
    encoded = {name: encode_state(name, obj.state_dict(), copy) for name, obj in pieces.items()}
    if meta is not None:
        encoded[META] = encode_state(META, meta)
    rank_pieces = {RNG: encode_state(RNG, capture_rng())}
    rank_pieces.update({name: encode_state(name, state, copy) for name, state in (rank_state or {}).items()})
    model_state = _model_state_copy(model, buffers) if buffers is not None and model is not None else None
    return StateSnapshot(pieces=encoded, rank_pieces=rank_pieces, model_state=model_state,
                         ready=buffers.finish() if buffers is not None else None)


def write_snapshot(directory: Path, snapshot: StateSnapshot, *, model: Any, tokenizer: Any, rank: int = 0) -> None:
    """Write a snapshot in the checkpoint layout (the model and tokenizer in Hugging Face format);
    ``model`` / ``tokenizer`` None: not written by this rank.

    The files are independent, so they are written side by side (the model with its tokenizer, each
    other piece, this rank's directory), each fsynced and digested by its own writer; the first
    failure is raised once all have stopped, so nothing is left writing into a discarded directory.
    """
    if snapshot.ready is not None:
        snapshot.ready.synchronize()
    jobs: list[Callable[[], Any]] = []
    if model is not None or tokenizer is not None:
        jobs.append(lambda: _write_hf(directory, snapshot, model, tokenizer))
    jobs += [lambda n=name, e=encoded: write_encoded(directory, n, e) for name, encoded in snapshot.pieces.items()]
    jobs.append(lambda: write_rank_pieces(directory, snapshot.rank_pieces, rank))
    with ThreadPoolExecutor(max_workers=min(len(jobs), 4), thread_name_prefix="chefgenius-write",
                            initializer=adopt) as pool:
        futures = [pool.submit(job) for job in jobs]
    for future in futures:
        future.result()  # the first failure, in a fixed order


def _write_hf(directory: Path, snapshot: StateSnapshot, model: Any, tokenizer: Any) -> None:
    if model is not None:
        # save_pretrained decides what the directory holds; its weights go through our writer
        # (hf_weights.py): digested while written, so only the small files are read back here.
        with direct_weights():
            if snapshot.model_state is not None:
                # save_pretrained pops entries from the dict it is given: hand it a fresh one each time.
                model.save_pretrained(str(model_dir(directory)), state_dict=dict(snapshot.model_state))
            else:
                model.save_pretrained(str(model_dir(directory)))
        for path in sorted(model_dir(directory).rglob("*")):
            if path.is_file() and not knows_digest(path):
                digest_and_sync(path)  # while the other pieces are still being written
    if tokenizer is not None:
        from ..model import save_tokenizer

        save_tokenizer(tokenizer, tokenizer_dir(directory))


def write_rank_pieces(directory: Path, pieces: dict[str, EncodedState], rank: int) -> None:
    """What differs between processes, under ``rank-NNNNN/``: each rank's RNG streams (dropout), and
    in a sharded run its slices of model and optimizer state."""
    rd = rank_dir(directory, rank)
    rd.mkdir()
    for name, encoded in pieces.items():
        write_encoded(rd, name, encoded)
