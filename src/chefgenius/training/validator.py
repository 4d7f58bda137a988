"""Validation during training: when to validate, the validation loss, early stopping, sample recipes.

Sample generation forks the RNG (generate.py), so validating never shifts the training streams.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from chefgenius.config import Config, ConfigError
from chefgenius.data.recipe_format import TITLE_LABEL
from chefgenius.generation.decode import GenerationSettings, generate_texts
from chefgenius.models.builders import max_positions
from chefgenius.training.losses import validation_loss
from chefgenius.training.train_state import TrainState


def check_generation_budget(cfg: Config, model: torch.nn.Module, tokenizer: Any, is_seq2seq: bool) -> None:
    """Evaluation samples must fit the model's positions; refuse before training, not after it."""
    limit = max_positions(model)
    ec = cfg.evaluation
    if limit is None or not ec.prompts or is_seq2seq:
        return
    prefix = len(tokenizer.encode(TITLE_LABEL, add_special_tokens=False))
    need = cfg.data.max_prompt_tokens + prefix + ec.max_new_tokens
    if need > limit:
        raise ConfigError(
            f"evaluation.max_new_tokens={ec.max_new_tokens} with data.max_prompt_tokens="
            f"{cfg.data.max_prompt_tokens} needs {need} positions, the model has {limit}; set "
            f"evaluation.max_new_tokens to at most {limit - cfg.data.max_prompt_tokens - prefix}")


class Validator:
    """Owns the validation cadence and what a validation does; progress (best loss, patience) is
    recorded in the :class:`TrainState` it is given, which checkpoints hold."""

    def __init__(self, cfg: Config, *, eval_model: torch.nn.Module, sample_model: torch.nn.Module, tokenizer: Any,
                 val_data: Any, is_seq2seq: bool, autocast: Callable[[], Any], samples_file: Path,
                 generates: bool, writes: bool) -> None:
        self.cfg, self.ec = cfg, cfg.evaluation
        self.eval_model, self.sample_model, self.tokenizer = eval_model, sample_model, tokenizer
        self.val_data, self.is_seq2seq, self.autocast = val_data, is_seq2seq, autocast
        self.samples_file = samples_file
        self.generates = generates and bool(self.ec.prompts)  # a sharded model generates on every rank
        self.writes = writes  # rank 0
        self.last: tuple[int, float] | None = None  # (step, validation loss) of the newest validation

    def should_validate(self, step: int, *, epoch_end: bool, is_done: bool) -> bool:
        ec = self.ec
        return bool(ec.every_steps and step % ec.every_steps == 0) or (epoch_end and ec.at_epoch_end) or is_done

    def loss_at(self, step: int) -> float | None:
        """The validation loss measured at ``step``, or None if there was no validation then."""
        return self.last[1] if self.last and self.last[0] == step else None

    def evaluate(self) -> dict[str, float]:
        return validation_loss(self.eval_model, self.val_data, pad_id=self.tokenizer.pad_token_id,
                               is_seq2seq=self.is_seq2seq, batch_size=self.cfg.training.batch_size,
                               max_batches=self.ec.max_batches, autocast=self.autocast())

    def validate(self, state: TrainState) -> tuple[dict[str, float], bool]:
        """Validation loss, early-stopping bookkeeping and sample recipes; returns the metrics and
        whether they are a new best."""
        metrics = self.evaluate()
        self.last = (state.step, metrics["eval_loss"])
        is_new_best = state.record_eval(metrics, patience=self.ec.early_stopping_patience,
                                        threshold=self.ec.early_stopping_threshold)
        if self.generates:
            samples = self.samples(state.step)
            if self.writes:
                with self.samples_file.open("a") as f:
                    f.writelines(json.dumps(s) + "\n" for s in samples)
        return metrics, is_new_best

    def samples(self, step: int) -> list[dict[str, Any]]:
        ec = self.ec
        settings = GenerationSettings(preset=ec.generation_preset, max_new_tokens=ec.max_new_tokens, seed=0)
        return [{"step": step, "ingredients": p,
                 "text": generate_texts(self.sample_model, self.tokenizer, self.is_seq2seq, p, settings,
                                        max_prompt_tokens=self.cfg.data.max_prompt_tokens).texts[0]}
                for p in ec.prompts]
