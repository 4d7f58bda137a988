"""Hugging Face directories written from a run: ``final/`` (committed like a checkpoint) and exports."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from chefgenius.checkpoint.layout import SUMMARY
from chefgenius.data.tokenizer import save_tokenizer
from chefgenius.durable.directory import commit_directory
from chefgenius.runtime.parallel import unwrap


def write_hf_directory(directory: Path, model: Any, tokenizer: Any, state_dict: dict[str, Any] | None = None
                       ) -> None:
    """One Hugging Face model directory: weights, config, generation config and tokenizer side by side.

    ``state_dict``: full weights gathered from a sharded model (saved instead of the model's own)."""
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
