"""One optimizer step over its micro-batches, exact for any split over processes and accumulation."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from chefgenius.config import TrainingConfig
from chefgenius.data.loader import collate, make_batch, target_tokens, to_device
from chefgenius.data.recipe_format import PROMPT_PREFIX
from chefgenius.runtime import distributed
from chefgenius.runtime.parallel import Parallel
from chefgenius.training.losses import copy_weights, token_loss_sum


@dataclass
class StepResult:
    loss: float  # token mean over every rank's micro-batches
    grad_norm: float
    lr: float  # the learning rate this step used
    num_tokens: int  # target tokens over every rank
    shared: list[float]  # the caller's flags, summed over ranks


def copy_skip_ids(tokenizer: Any, device: torch.device) -> torch.Tensor:
    """Tokens that never count as copied from the prompt: its prefix, separators, end and padding."""
    ids = {*(t for text in (PROMPT_PREFIX, ", ", ",\n") for t in tokenizer.encode(text, add_special_tokens=False)),
           tokenizer.eos_token_id, tokenizer.pad_token_id}
    return torch.tensor(sorted(ids - {None}), device=device)


class TrainStep:
    """The loss is divided by the *global* token count and gradients are summed over ranks, so N
    processes x accumulation A compute what one process does with N*A; gradients are exchanged once
    per step."""

    def __init__(self, parallel: Parallel, optimizer: torch.optim.Optimizer, scheduler: Any,
                 scaler: torch.amp.GradScaler | None, data: Any, tokenizer: Any, *, is_seq2seq: bool,
                 cfg: TrainingConfig, device: torch.device, autocast: Callable[[], Any]) -> None:
        self.parallel, self.optimizer, self.scheduler, self.scaler = parallel, optimizer, scheduler, scaler
        self.data, self.pad, self.is_seq2seq, self.cfg = data, tokenizer.pad_token_id, is_seq2seq, cfg
        self.device, self.autocast = device, autocast
        self.copy_skip = copy_skip_ids(tokenizer, device)

    def __call__(self, micro_batches: list[list[int]], shared: list[float]) -> StepResult:
        """``shared``: flags every rank contributes (stop requested, checkpoint piece written); they ride
        on the step's one all-gather instead of costing collectives of their own."""
        self.parallel.train_model.train()
        on_cpu = [collate([self.data.example(i) for i in mb], self.pad) if mb else None for mb in micro_batches]
        num_tokens = distributed.all_sum_int(sum(target_tokens(b, self.is_seq2seq) for b in on_cpu if b is not None))
        total = torch.zeros((), dtype=torch.float64, device=self.device)  # float64: same sum for any split
        for i, cpu_batch in enumerate(on_cpu):
            loss_sum = self._micro_batch(cpu_batch, num_tokens, is_last=i == len(on_cpu) - 1)
            if loss_sum is not None:
                total += loss_sum
        loss_total, *summed = distributed.all_gather_sum([float(total), *map(float, shared)])
        grad_norm, lr = self._update()
        return StepResult(loss_total / max(1, num_tokens), grad_norm, lr, num_tokens, summed)

    def _micro_batch(self, cpu_batch: dict[str, torch.Tensor] | None, num_tokens: int,
                     is_last: bool) -> torch.Tensor | None:
        """Forward and backward of one micro-batch; returns its loss sum (None for a padding batch)."""
        weight = 1.0
        if cpu_batch is None:  # no sample for this rank at the epoch's end: join the reduction with zeros
            batch, weight = make_batch(self.data, [0], self.pad, self.device), 0.0
        else:
            batch = to_device(cpu_batch, self.device)
        with self.parallel.gradient_sync(is_last):
            weights = (copy_weights(batch, self.is_seq2seq, self.cfg.copy_weight, self.copy_skip)
                       if self.cfg.copy_weight != 1.0 else None)
            with self.autocast():
                loss_sum, _ = token_loss_sum(self.parallel.train_model, batch, self.is_seq2seq, weights,
                                             self.cfg.label_smoothing)
            # Dividing by the step's token count (not per micro-batch) makes accumulation exact.
            loss = loss_sum * weight / max(1, num_tokens)
            (self.scaler.scale(loss) if self.scaler else loss).backward()
        return loss_sum.detach().double() if weight else None

    def _update(self) -> tuple[float, float]:
        """Clip, step optimizer and schedule; returns the gradient norm and the learning rate used."""
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm or math.inf)
        if hasattr(grad_norm, "full_tensor"):  # sharded gradients give a DTensor norm
            grad_norm = grad_norm.full_tensor()
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm), lr
