"""JSON-lines logs (metrics.jsonl, samples.jsonl): read them whole, cut them back to a step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chefgenius.durable.files import atomic_write_text


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill mid-write; the resume rewrite drops it
    return out


def truncate_after(path: Path, step: int) -> None:
    """Drop entries logged after ``step`` (they will be logged again), atomically."""
    if not path.is_file():
        return
    kept = [e for e in read_jsonl(path) if e.get("step", 0) <= step]
    atomic_write_text(path, "".join(json.dumps(e) + "\n" for e in kept))

