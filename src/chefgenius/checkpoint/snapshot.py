"""A training checkpoint held in CPU memory: taken at a step boundary, written later (or at once).

Taking a snapshot is the only part of an asynchronous save that blocks training: every tensor is
copied into CPU buffers that are reused from one save to the next (pinned when the state lives
on a GPU, so the copies do not stall the host), and every other value is rebuilt as fresh JSON
data. Nothing in a snapshot refers to live training state, so a background thread can write it
while the next steps change the model and optimizer in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .format import EncodedState, encode_state, write_encoded
from .layout import META, RNG, model_dir, rank_dir, tokenizer_dir
from .rng import capture_rng


class TensorBuffers:
    """CPU tensors keyed by name, allocated on first use and refilled by later snapshots."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}
        self._copied_from_cuda = False

    def copy(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach()
        buf = self._buffers.get(key)
        if buf is None or buf.shape != tensor.shape or buf.dtype != tensor.dtype:
            pin = tensor.device.type == "cuda"
            buf = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=pin)
            self._buffers[key] = buf
        on_gpu = tensor.device.type == "cuda"
        self._copied_from_cuda |= on_gpu
        buf.copy_(tensor, non_blocking=on_gpu)
        return buf

    def ready_event(self) -> Any:
        """An event the writer waits on before reading buffers filled by asynchronous GPU copies."""
        if not self._copied_from_cuda:
            return None
        self._copied_from_cuda = False
        event = torch.cuda.Event()
        event.record()
        return event

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers.values())


@dataclass
class StateSnapshot:
    """Everything one rank writes into a checkpoint, detached from the live objects."""

    pieces: dict[str, EncodedState]  # optimizer, scheduler, sampler, train state, meta
    rng: EncodedState
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


def take_snapshot(*, model: Any, pieces: dict[str, Any], meta: dict[str, Any],
                  buffers: TensorBuffers | None) -> StateSnapshot:
    """``buffers`` None: a synchronous save; tensors are cloned and the live model is written directly.

    ``model`` None: the model is sharded and written by every rank itself (see sharding.py)."""
    copy = buffers.copy if buffers is not None else None
    encoded = {name: encode_state(name, obj.state_dict(), copy) for name, obj in pieces.items()}
    encoded[META] = encode_state(META, meta)
    model_state = _model_state_copy(model, buffers) if buffers is not None and model is not None else None
    return StateSnapshot(pieces=encoded, rng=encode_state(RNG, capture_rng()), model_state=model_state,
                         ready=buffers.ready_event() if buffers is not None else None)


def write_snapshot(directory: Path, snapshot: StateSnapshot, *, model: Any, tokenizer: Any, rank: int = 0) -> None:
    """Write a snapshot in the checkpoint layout (the model and tokenizer in Hugging Face format)."""
    if snapshot.ready is not None:
        snapshot.ready.synchronize()
    if model is not None:
        if snapshot.model_state is not None:
            # save_pretrained pops entries from the dict it is given: hand it a fresh one each time.
            model.save_pretrained(str(model_dir(directory)), state_dict=dict(snapshot.model_state))
        else:
            model.save_pretrained(str(model_dir(directory)))
    tokenizer.save_pretrained(str(tokenizer_dir(directory)))
    for name, encoded in snapshot.pieces.items():
        write_encoded(directory, name, encoded)
    write_rank_snapshot(directory, snapshot.rng, rank)


def write_rank_snapshot(directory: Path, rng: EncodedState, rank: int) -> None:
    """What differs between processes: each rank's RNG streams (dropout), under ``rank-NNNNN/``."""
    rd = rank_dir(directory, rank)
    rd.mkdir()
    write_encoded(rd, RNG, rng)
