"""Training and validation loss: summed token cross-entropy, so accumulation divides exactly once."""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from chefgenius.data.loader import Examples, make_batch
from chefgenius.runtime.parallel import unwrap


def copy_weights(batch: dict[str, torch.Tensor], is_seq2seq: bool, weight: float, skip: torch.Tensor
                 ) -> torch.Tensor:
    """Per-label weights: ``weight`` for target tokens that also occur in the prompt's ingredient list.

    Pure function of the batch (no RNG), so exact resume is unaffected. ``skip``: token ids that
    never count as copied (the prompt prefix, separators, end of text).
    """
    labels, ids = batch["labels"], batch["input_ids"]
    # Prompt positions: every attended input token (seq2seq), or those without a label (causal LM).
    prompt = batch["attention_mask"].bool()
    if not is_seq2seq:
        prompt = prompt & (labels[:, :ids.shape[1]] == -100)
    prompt = prompt & ~torch.isin(ids, skip)
    # One comparison of every label with every prompt token of its row: no per-row Python loop and
    # no data-dependent shapes, so no device-to-host synchronisation on a GPU.
    copied = ((labels.unsqueeze(2) == ids.unsqueeze(1)) & prompt.unsqueeze(1)).any(dim=2) & (labels != -100)
    return torch.where(copied, torch.tensor(weight, dtype=torch.float32, device=labels.device),
                       torch.ones((), dtype=torch.float32, device=labels.device))


def token_loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor], is_seq2seq: bool,
                   weights: torch.Tensor | None = None, label_smoothing: float = 0.0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy over target tokens and their count, so accumulation can divide once.

    With ``weights`` (same shape as the labels) the sum is weighted; the count stays the plain one.
    ``label_smoothing`` is for training only: validation losses stay plain cross-entropy, comparable
    between runs trained with and without it.
    """
    if is_seq2seq:
        labels = batch["labels"]
        decoder_input_ids = unwrap(model).prepare_decoder_input_ids_from_labels(labels=labels)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       decoder_input_ids=decoder_input_ids).logits
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        weights = weights[:, 1:] if weights is not None else None
    flat_logits, flat_labels = logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1)
    if weights is None:
        loss = F.cross_entropy(flat_logits, flat_labels, ignore_index=-100, reduction="sum",
                               label_smoothing=label_smoothing)
    else:
        per_token = F.cross_entropy(flat_logits, flat_labels, ignore_index=-100, reduction="none",
                                    label_smoothing=label_smoothing)
        loss = (per_token * weights.reshape(-1)).sum()
    return loss, (labels != -100).sum()  # a tensor: reading it would synchronise with the device


@torch.no_grad()
def validation_loss(model: torch.nn.Module, data: Examples, *, pad_id: int, is_seq2seq: bool,
                    batch_size: int, max_batches: int | None = None, autocast: Any = None) -> dict[str, float]:
    """Token-mean loss and perplexity over ``data`` in file order (deterministic, no RNG)."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    starts = list(range(0, len(data), batch_size))[:max_batches]
    for start in starts:
        batch = make_batch(data, range(start, min(start + batch_size, len(data))), pad_id, device)
        with autocast if autocast is not None else nullcontext():
            loss_sum, n = token_loss_sum(model, batch, is_seq2seq)
        total += float(loss_sum)
        count += int(n)
    loss = total / max(1, count)
    return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0))}
