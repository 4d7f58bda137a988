"""A training checkpoint held in CPU memory: taken at a step boundary, written later (or at once).

Taking a snapshot is the only part of an asynchronous save that blocks training: every tensor is
copied into CPU buffers that are reused from one save to the next (laid out as the files they will
be written as, when the state is on the CPU; pinned when it lives on a GPU, so the copies do not
stall the host), and every other value is rebuilt as fresh JSON data. Nothing in a snapshot refers
to live training state, so a background thread can write it while the next steps change the model
and optimizer in place.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from chefgenius.checkpoint.format import EncodedState, balanced, encode_state, split_parts, write_encoded
from chefgenius.checkpoint.hf_weights import direct_weights
from chefgenius.checkpoint.image import FileImage
from chefgenius.checkpoint.layout import META, RNG, model_dir, rank_dir, tokenizer_dir
from chefgenius.checkpoint.priority import adopt
from chefgenius.checkpoint.rng import capture_rng
from chefgenius.checkpoint.tensorfile import file_layout
from chefgenius.data.tokenizer import save_tokenizer
from chefgenius.durable.files import digest_and_sync, knows_digest

Metadata = dict[str, str] | None  # a safetensors file's __metadata__


class TensorBuffers:
    """CPU memory a background save copies the state into, reused from one save to the next.

    State on the CPU is copied into the images of the files it will be written as (:mod:`image`),
    so the writer sends each file to the disk from where it lies: every state piece, and the model's
    weights where the file ``save_pretrained`` writes can be foreseen. Anything else (a GPU's state,
    a LoRA model's adapters) gets a buffer per tensor, pinned when it comes from a GPU so that the
    copies do not stall the host. Copies from CPU tensors are queued and run by :meth:`finish`,
    spread over the machine's cores: training waits for them anyway, so its cores are free (two
    threads copy 300 MiB in 28 ms instead of 51 ms on the 2-core benchmark machine). Copies from a
    GPU are issued at once, non-blocking.
    """

    PARALLEL_MIN_BYTES = 8 << 20

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}
        self._images: dict[bytes, list[FileImage]] = {}  # by layout (the header says it all)
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

    def place(self, files: list[tuple[dict[str, torch.Tensor], Metadata]]) -> list[dict[str, torch.Tensor]]:
        """Queue each file's CPU tensors to be copied into that file's image (its metadata as given);
        returns the copies, file by file. Images of layouts no longer saved are let go."""
        spare, self._images = self._images, {}
        placed = []
        for tensors, metadata in files:
            layout = file_layout(tensors, metadata)
            # An image serves one file per snapshot, even where two files have the same layout.
            free = spare.get(layout.prefix)
            image = free.pop() if free else FileImage(layout, {k: t.dtype for k, t in tensors.items()},
                                                      {k: tuple(t.shape) for k, t in tensors.items()})
            self._images.setdefault(layout.prefix, []).append(image)
            self._queued += [(image.views[k], t.detach()) for k, t in tensors.items()]
            placed.append(dict(image.views))
        return placed

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


def _source(path: str, tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach()


def _model_sources(model: Any) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The model's state dict, one tensor object per piece of memory (tied embeddings: the same
    object under both names, as ``save_pretrained`` expects), and the names of frozen parameters.

    Frozen parameters (a LoRA run's base model) never change during training: a snapshot refers
    to them instead of copying them, so a LoRA snapshot costs the adapters, not the base model.
    """
    trainable = {p.data_ptr() for p in model.parameters() if p.requires_grad}
    frozen_ptrs = {p.data_ptr() for p in model.parameters() if not p.requires_grad} - trainable
    seen: dict[tuple[Any, ...], torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    frozen: set[str] = set()
    for name, t in model.state_dict().items():
        if t.data_ptr() in frozen_ptrs and t.device.type == "cpu":
            frozen.add(name)
        alias = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()),
                 t.dtype)
        out[name] = seen.setdefault(alias, t.detach())
    return out, frozen


def _weights_file(model: Any, sources: dict[str, torch.Tensor], frozen: set[str]) -> dict[str, torch.Tensor] | None:
    """The tensors ``save_pretrained`` will hand to ``save_file`` for these sources (tied aliases
    dropped, by its own rule), or None where that cannot be foreseen: adapters, frozen weights, a
    transformers without that rule, a CUDA model. A wrong guess only costs speed: the writer writes
    tensors that are not the views of an image of exactly their file the usual way."""
    if frozen or hasattr(model, "peft_config") or any(t.device.type != "cpu" for t in sources.values()):
        return None
    try:
        from transformers.modeling_utils import remove_tied_weights_from_state_dict
    except ImportError:
        return None
    kept = remove_tied_weights_from_state_dict(dict(sources), model)
    return kept if all(kept[k] is sources.get(k) for k in kept) else None


def take_snapshot(*, model: Any, pieces: dict[str, Any], meta: dict[str, Any] | None,
                  buffers: TensorBuffers | None, rank_state: dict[str, Any] | None = None) -> StateSnapshot:
    """``buffers`` None: a synchronous save; tensors are cloned and the live model is written directly.

    ``model`` None: nothing of the model is written (sharded: see ``rank_state``; or not rank 0).
    ``meta`` None: no meta piece (ranks other than 0). ``rank_state``: more state for this rank's
    directory besides its RNG (its model and optimizer shards).
    """
    if buffers is None:
        encoded = {name: encode_state(name, obj.state_dict()) for name, obj in pieces.items()}
        rank_pieces = {name: encode_state(name, state) for name, state in (rank_state or {}).items()}
    else:
        encoded = {name: encode_state(name, obj.state_dict(), _source) for name, obj in pieces.items()}
        rank_pieces = {name: encode_state(name, state, _source) for name, state in (rank_state or {}).items()}
    if meta is not None:
        encoded[META] = encode_state(META, meta)
    rank_pieces = {RNG: encode_state(RNG, capture_rng()), **rank_pieces}
    if buffers is None:
        return StateSnapshot(pieces=encoded, rank_pieces=rank_pieces, model_state=None)
    model_state = _copy_into(buffers, model, [*encoded.values(), *rank_pieces.values()])
    return StateSnapshot(pieces=encoded, rank_pieces=rank_pieces, model_state=model_state, ready=buffers.finish())


def _copy_into(buffers: TensorBuffers, model: Any, states: list[EncodedState]) -> dict[str, torch.Tensor] | None:
    """Point every encoded piece, and the model's state (returned), at copies in ``buffers``: in the
    images of their files where the state is on the CPU, else in buffers of their own."""
    files: list[tuple[dict[str, torch.Tensor], Metadata]] = []
    owners: list[EncodedState] = []
    for state in states:
        if not all(t.device.type == "cpu" for t in state.tensors.values()):
            state.tensors.update({k: buffers.copy(k, t) for k, t in state.tensors.items()})
        elif state.tensors:
            parts = split_parts(state.tensors)  # as write_encoded will split them
            files += [(part, None) for part in parts]
            owners += [state] * len(parts)
    sources, frozen = _model_sources(model) if model is not None else ({}, set())
    weights = _weights_file(model, sources, frozen) if model is not None else None
    if weights is not None:
        files.append((weights, {"format": "pt"}))  # the metadata save_pretrained gives its files
    placed = buffers.place(files)
    for owner, views in zip(owners, placed):
        owner.tensors.update(views)
    if model is None:
        return None
    # One copy per tensor object: tied names share theirs, as they share one tensor in the model.
    copies = {id(weights[k]): view for k, view in placed[len(owners)].items()} if weights is not None else {}
    model_state = {}
    for name, t in sources.items():
        if name in frozen:
            model_state[name] = t
            continue
        if id(t) not in copies:
            copies[id(t)] = buffers.copy(f"model.{name}", t)
        model_state[name] = copies[id(t)]
    return model_state


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
        save_tokenizer(tokenizer, tokenizer_dir(directory))


def write_rank_pieces(directory: Path, pieces: dict[str, EncodedState], rank: int) -> None:
    """What differs between processes, under ``rank-NNNNN/``: each rank's RNG streams (dropout), and
    in a sharded run its slices of model and optimizer state."""
    rd = rank_dir(directory, rank)
    rd.mkdir()
    for name, encoded in pieces.items():
        write_encoded(rd, name, encoded)
