"""Where a sharded (FSDP) checkpoint keeps each rank's slices: ``rank-NNNNN/shards.*``.

The slicing and reassembly live in sharding.py; this module only names, writes and reads the files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chefgenius.checkpoint.format import CheckpointFormatError, load_state
from chefgenius.checkpoint.layout import RANK_DIR, SHARDS, rank_dir
from chefgenius.checkpoint.state import ResumeError


def is_sharded(ckpt: Path) -> bool:
    """Whether the checkpoint holds its model and optimizer as per-rank shards."""
    return (rank_dir(ckpt, 0) / f"{SHARDS}.json").is_file()


def read_shards(ckpt: Path) -> list[dict[str, Any]]:
    """Every rank's shard file, in rank order (what :func:`chefgenius.sharding.assemble` takes)."""
    dirs = sorted(d for d in ckpt.iterdir() if RANK_DIR.match(d.name) and (d / f"{SHARDS}.json").is_file())
    try:
        return [load_state(d, SHARDS) for d in dirs]
    except CheckpointFormatError as err:
        raise ResumeError(f"cannot resume: sharded state: {err}") from None


def read_shard_index(ckpt: Path, rank: int) -> dict[str, Any]:
    """One rank's index (global shape, offset and rows of each parameter), tensors not read."""
    return load_state(rank_dir(ckpt, rank), SHARDS, with_tensors=False)["index"]
