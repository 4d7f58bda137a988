"""A trained model ready to generate: from a run's ``final/``, a checkpoint, or a Hugging Face directory,
with the prompt budget it was trained with. What ``generate``, ``eval`` and ``serve`` load."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from chefgenius.checkpoint.layout import checkpoint_name_hint, run_of
from chefgenius.checkpoint.run_directory import RunDirectory
from chefgenius.config import ConfigError, build_config
from chefgenius.generation.decode import GenerationSettings, generate_texts
from chefgenius.models.builders import load_for_inference
from chefgenius.runtime.devices import resolve_device

DEFAULT_MAX_PROMPT_TOKENS = 64


@dataclass
class Generator:
    model: torch.nn.Module
    tokenizer: Any
    is_seq2seq: bool
    max_prompt_tokens: int
    source: str  # what was loaded, for messages and the API

    def generate(self, ingredients: list[str] | str, settings: GenerationSettings | None = None, *,
                 num: int = 1, title: str | None = None) -> list[str]:
        """Recipes (in the training target format) for one ingredient list: greedy and guarded unless
        ``settings`` say otherwise. Same settings and seed, same text."""
        return generate_texts(self.model, self.tokenizer, self.is_seq2seq, ingredients,
                              settings or GenerationSettings(), num=num, title=title,
                              max_prompt_tokens=self.max_prompt_tokens).texts


def _run_config_of(path: Path) -> RunDirectory | None:
    """The run a checkpoint or final/ directory belongs to, when it still sits inside it."""
    for candidate in (path, run_of(path)):
        rd = RunDirectory(candidate)
        if rd.config_file.is_file() and rd.checkpoints.is_dir():
            return rd
    return None


def load_generator(*, run: Path | None = None, model: str | None = None, device: str = "auto") -> Generator:
    """Exactly one of ``run`` (its final/ model) and ``model`` (a directory or hub id)."""
    if (run is None) == (model is None):
        raise ConfigError("pass exactly one of --run DIR and --model PATH")
    dev = resolve_device(device)  # before loading anything: a device that is not here is a one-line error
    max_prompt_tokens = DEFAULT_MAX_PROMPT_TOKENS
    if run is not None:
        rd = RunDirectory(run)
        if not rd.path.is_dir():
            raise ConfigError(f"run directory {run} does not exist")
        if not rd.is_complete():
            raise ConfigError(f"{run} has no final/ model (training not complete); use --model "
                              f"{checkpoint_name_hint(rd.checkpoints)}")
        max_prompt_tokens = build_config(rd.read_config()).data.max_prompt_tokens
        path: Any = rd.final
    else:
        path = model
        owner = _run_config_of(Path(model))
        if owner is not None:
            max_prompt_tokens = build_config(owner.read_config()).data.max_prompt_tokens
    m, tok, seq2seq = load_for_inference(path)
    return Generator(m.to(dev), tok, seq2seq, max_prompt_tokens, str(path))
