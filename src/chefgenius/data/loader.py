"""The resumable sampler, and batch collation of tokenised examples.

The sampler is the data-order state: ``(epoch, position)`` with position counted in global
samples. Epoch ``e``'s order is a permutation drawn from a generator seeded by ``(seed, e)``, so
resuming jumps straight to any position without replaying earlier batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch


@dataclass
class TokenizedData:
    """Variable-length examples; ``labels`` use -100 for positions outside the loss."""

    input_ids: list[torch.Tensor]
    labels: list[torch.Tensor]

    def __len__(self) -> int:
        return len(self.input_ids)

    def lengths(self) -> np.ndarray:
        return np.array([len(x) + len(y) for x, y in zip(self.input_ids, self.labels)], dtype=np.int64)

    def example(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.input_ids[i], self.labels[i]


class Examples(Protocol):
    """What batching needs: the in-memory :class:`TokenizedData` or a memory-mapped prepared split."""

    def __len__(self) -> int: ...
    def lengths(self) -> np.ndarray: ...
    def example(self, i: int) -> tuple[torch.Tensor, torch.Tensor]: ...


def collate(batch: list[tuple[torch.Tensor, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch; padding never enters the loss."""
    inputs = [b[0] for b in batch]
    labels = [b[1] for b in batch]
    width = max(len(x) for x in inputs)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.int64)
    attention = torch.zeros((len(batch), width), dtype=torch.int64)
    for i, x in enumerate(inputs):
        input_ids[i, : len(x)] = x
        attention[i, : len(x)] = 1
    lwidth = max(len(y) for y in labels)
    label_ids = torch.full((len(batch), lwidth), -100, dtype=torch.int64)
    for i, y in enumerate(labels):
        label_ids[i, : len(y)] = y
    return {"input_ids": input_ids, "attention_mask": attention, "labels": label_ids}


def make_batch(data: Examples, indices: list[int] | range, pad_id: int, device: torch.device
               ) -> dict[str, torch.Tensor]:
    """The padded batch of ``indices`` on ``device``; used by training and evaluation alike."""
    return to_device(collate([data.example(i) for i in indices], pad_id), device)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def target_tokens(batch: dict[str, torch.Tensor], is_seq2seq: bool) -> int:
    """Tokens that enter the loss (a causal LM predicts from the second position on). Counted on
    the CPU batch, before it moves to the device: no device-to-host sync per micro-batch."""
    return int((batch["labels"][:, 0 if is_seq2seq else 1:] != -100).sum())


class ResumableSampler:
    """Yields the sample indices of each optimizer step; state is ``(epoch, position)``.

    An optimizer step takes ``batch_size * grad_accum * world_size`` samples, or what is left of
    the epoch: the last step of an epoch is deliberately smaller rather than spilling into the
    next epoch, so every epoch sees each sample exactly once and epochs start on a step boundary.
    """

    def __init__(self, lengths: np.ndarray | list[int], *, batch_size: int, grad_accum: int, seed: int,
                 shuffle: bool = True, group_by_length: bool = False, world_size: int = 1, rank: int = 0,
                 group_width: int | None = None) -> None:
        if not len(lengths):
            raise ValueError("the training split is empty")
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.grad_accum = grad_accum
        self.seed = seed
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.world_size = world_size
        self.rank = rank
        # Length grouping works in units of this many samples; it is part of the epoch order, so it is
        # saved and kept when the world size changes (the order must not depend on it).
        self.group_width = group_width or batch_size * world_size
        self.epoch = 0
        self.position = 0
        self.consumed = 0  # samples handed out in this epoch, and an order-independent digest of their ids
        self.digest = 0
        self.last_epoch: dict[str, Any] | None = None
        self._order_epoch = -1
        self._order: np.ndarray = np.arange(0)

    @property
    def num_samples(self) -> int:
        return len(self.lengths)

    @property
    def samples_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.num_samples / self.samples_per_step)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Global sample order of ``epoch``: a pure function of (seed, epoch)."""
        if epoch == self._order_epoch:
            return self._order
        n = self.num_samples
        if not self.shuffle:
            order = np.arange(n)
        else:
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch])))
            order = rng.permutation(n)
            if self.group_by_length:
                order = self._group(order, rng)
        self._order_epoch, self._order = epoch, order
        return order

    def _group(self, order: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        # Sort within windows of 50 batches, then shuffle whole batches: less padding, still random.
        # Vectorised (2.2M samples: 1.3 s as a loop over windows and batches, the start-up of a big corpus).
        width = self.group_width
        lengths = self.lengths[order].astype(np.int64)
        window = np.arange(len(order), dtype=np.int64) // (width * 50)
        longest = int(lengths.max(initial=0)) + 1
        # one stable sort: by window, longest first within it, ties in the order's order
        grouped = order[np.argsort(window * longest + (longest - 1 - lengths), kind="stable")]
        n_batches = -(-len(grouped) // width)
        perm = rng.permutation(n_batches)
        starts = perm * width
        sizes = np.minimum(width, len(grouped) - starts)
        offsets = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        return grouped[np.repeat(starts, sizes) + offsets]

    def next_step(self) -> list[list[int]]:
        """Micro-batches (this rank's indices) of the next optimizer step; advances the state.

        Each global micro-batch of ``batch_size * world_size`` samples is cut into consecutive slices
        of ``batch_size``, rank r taking slice r: the micro-batches of N ranks are exactly those of one
        process with N times the accumulation. Every rank gets the same number of micro-batches; at
        the end of an epoch a rank may get an empty one (it still takes part in the gradient sum).
        """
        order = self.epoch_order(self.epoch)
        end = min(self.position + self.samples_per_step, self.num_samples)
        chunk = order[self.position:end]
        micro = []
        width = self.batch_size * self.world_size
        for start in range(0, len(chunk), width):
            mine = chunk[start:start + width][self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
            micro.append([int(i) for i in mine])
        self.consumed += len(chunk)
        self.digest = (self.digest + sample_digest(chunk)) % 2**64
        self.position = end
        if self.position >= self.num_samples:
            self.last_epoch = {"epoch": self.epoch, "consumed": self.consumed, "digest": f"{self.digest:016x}",
                               "complete": self.consumed == self.num_samples
                               and self.digest == sample_digest(np.arange(self.num_samples))}
            self.epoch += 1
            self.position = 0
            self.consumed = self.digest = 0
        return micro

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "num_samples": self.num_samples,
                "samples_per_step": self.samples_per_step, "seed": self.seed, "group_width": self.group_width,
                "world_size": self.world_size, "consumed": self.consumed, "digest": f"{self.digest:016x}",
                "last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_samples"] != self.num_samples:
            raise ValueError(f"sampler state is for {state['num_samples']} samples, the data has {self.num_samples}")
        if state["seed"] != self.seed:
            raise ValueError(f"sampler state has seed {state['seed']}, the config has {self.seed}")
        if state["samples_per_step"] != self.samples_per_step:
            raise ValueError(f"sampler state takes {state['samples_per_step']} samples per optimizer step, this run "
                             f"{self.samples_per_step}: the global batch (batch_size x grad_accum x processes) "
                             "must stay the same")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        # Checkpoints before 0.3 have no group width: theirs was batch_size x world size.
        self.group_width = int(state.get("group_width") or self.batch_size * int(state.get("world_size", 1)))
        self._order_epoch = -1
        if "consumed" in state:
            self.consumed, self.digest = int(state["consumed"]), int(state["digest"], 16)
        else:  # older checkpoints: what the order handed out so far
            self.consumed = self.position
            self.digest = sample_digest(self.epoch_order(self.epoch)[:self.position])
        self.last_epoch = state.get("last_epoch")


def sample_digest(ids: np.ndarray) -> int:
    """Order-independent digest of sample ids: the sum of their splitmix64 hashes modulo 2**64.

    Two sets of ids with the same digest and count are, for practical purposes, the same set; a
    lost or repeated sample changes it.
    """
    with np.errstate(over="ignore"):
        z = np.asarray(ids, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
        return int(z.sum(dtype=np.uint64))
