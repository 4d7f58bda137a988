"""Training and validation loss: summed token cross-entropy, so accumulation divides exactly once."""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from .data.loader import Examples, make_batch
from .model import unwrap


def copy_weights(batch: dict[str, torch.Tensor], is_seq2seq: bool, weight: float, skip: torch.Tensor
                 ) -> torch.Tensor:
    """Per-label weights: ``weight`` for target tokens that also occur in the prompt's ingredient list.

    Pure function of the batch (no RNG), so exact resume is unaffected. ``skip``: token ids that
    never count as copied (the prompt prefix, separators, end of text).
    """
    labels = batch["labels"]
    out = torch.ones(labels.shape, dtype=torch.float32, device=labels.device)
    for row in range(labels.shape[0]):
        ids = batch["input_ids"][row][batch["attention_mask"][row].bool()]
        prompt = ids if is_seq2seq else ids[labels[row][: len(ids)] == -100]
        prompt = prompt[~torch.isin(prompt, skip)]
        copied = torch.isin(labels[row], prompt) & (labels[row] != -100)
        out[row][copied] = weight
    return out


def token_loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor], is_seq2seq: bool,
                   weights: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over target tokens and their count, so accumulation can divide once.

    With ``weights`` (same shape as the labels) the sum is weighted; the count stays the plain one.
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
        loss = F.cross_entropy(flat_logits, flat_labels, ignore_index=-100, reduction="sum")
    else:
        per_token = F.cross_entropy(flat_logits, flat_labels, ignore_index=-100, reduction="none")
        loss = (per_token * weights.reshape(-1)).sum()
    return loss, int((labels != -100).sum())


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
        count += n
    loss = total / max(1, count)
    return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0))}
