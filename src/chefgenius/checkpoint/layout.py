"""Every file and directory name inside a checkpoint or a run's ``checkpoints/``; nothing else spells them.

A checkpoint is ``checkpoints/step-NNNNNNN/`` holding one entry per named piece (``model/`` and
``tokenizer/`` in Hugging Face format, the others as ``NAME.json`` + ``NAME.safetensors``, or its
``NAME-0000k-of-0000n.safetensors`` parts for a piece over ``format.PART_BYTES``),
``rank-NNNNN/rng.*`` per process, and ``MANIFEST.json`` written last.
"""

from __future__ import annotations

import re
from pathlib import Path

from chefgenius.durable.directory import MANIFEST

SUMMARY = "summary.yaml"  # in final/: written only when training completed

# Named pieces of a training checkpoint. ``ckpt inspect`` reports them under these names.
MODEL = "model"
TOKENIZER = "tokenizer"
OPTIMIZER = "optimizer"
SCHEDULER = "scheduler"
SCALER = "scaler"
SAMPLER = "sampler"
TRAIN_STATE = "train_state"
META = "meta"
RNG = "rng"
SHARDS = "shards"  # FSDP: this rank's slices of model and optimizer state, in its rank directory
STATE_PIECES = (OPTIMIZER, SCHEDULER, SCALER, SAMPLER, TRAIN_STATE)

STEP_DIR = re.compile(r"^step-(\d{7,})$")
RANK_DIR = re.compile(r"^rank-\d{5,}$")

# Upper bounds on what a reader will parse: a hostile file must not exhaust memory.
MAX_STATE_JSON_BYTES = 32 << 20


def checkpoint_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:07d}"


def step_of(path: Path) -> int | None:
    m = STEP_DIR.match(path.name)
    return int(m.group(1)) if m else None


def rank_dir(ckpt: Path, rank: int) -> Path:
    return ckpt / f"rank-{rank:05d}"


def model_dir(ckpt: Path) -> Path:
    return ckpt / MODEL


def tokenizer_dir(ckpt: Path) -> Path:
    return ckpt / TOKENIZER


def has_manifest(directory: Path) -> bool:
    """Whether ``directory`` was committed by chefgenius (a checkpoint or final/), so it must verify."""
    return (directory / MANIFEST).exists()


def is_final(final_dir: Path) -> bool:
    """Whether ``final_dir`` holds a committed final model (it is written only at completion)."""
    return (final_dir / SUMMARY).is_file()


def run_of(directory: Path) -> Path:
    """The run directory that a checkpoint, its ``model/`` directory, or ``final/`` belongs to
    (for any other directory: its parent)."""
    directory = Path(directory)
    if directory.name == MODEL:
        directory = directory.parent
    if STEP_DIR.match(directory.name):
        return directory.parent.parent  # RUN/checkpoints/step-NNNNNNN
    return directory.parent


def checkpoint_name_hint(root: Path) -> str:
    """How a user names a checkpoint of a run, in messages."""
    return f"{root}/step-NNNNNNN"


def hf_dirs(path: Path) -> tuple[Path, Path]:
    """Model and tokenizer directories of a checkpoint, an old-style ``final/`` or one HF directory."""
    if (path / MODEL).is_dir():
        tok = path / TOKENIZER
        return path / MODEL, tok if tok.is_dir() else path / MODEL
    return path, path
