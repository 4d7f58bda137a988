"""What every benchmark shares: the machine description and where results are written.

Each benchmark writes ``results/NAME.md`` (a table with ratios against the peer measured in the
same run) and ``results/NAME.json`` (the same figures, plus every repetition). ``python -m bench``
then joins them into ``bench/RESULTS.md`` and ``bench/RESULTS.json``. ``BENCH_RESULTS_DIR``
redirects the output (``--quick`` writes to a temporary directory: smoke figures are no results).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# The order of the sections in RESULTS.md.
ORDER = ("throughput", "throughput_gpt2_base", "throughput_t5_tiny", "padding", "optimizer_step", "checkpoint_save",
         "async_checkpoint", "startup", "distributed_scale", "prepare_scale")


def results_dir() -> Path:
    out = Path(os.environ.get("BENCH_RESULTS_DIR") or ROOT / "bench" / "results")
    out.mkdir(parents=True, exist_ok=True)
    return out


def machine_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
                            "python": platform.python_version(), "torch": torch.__version__}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def write_result(name: str, lines: list[str], data: dict[str, Any]) -> Path:
    """``lines``: the Markdown section (title first); ``data``: its JSON twin (gets ``machine`` added)."""
    out = results_dir()
    (out / f"{name}.json").write_text(json.dumps({**machine_info(), **data}, indent=2) + "\n")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return out / f"{name}.md"


def collect(command: str) -> Path:
    """Join every result into ``RESULTS.md`` / ``RESULTS.json`` beside the results directory."""
    out = results_dir()
    names = [n for n in ORDER if (out / f"{n}.md").is_file()]
    names += sorted(p.stem for p in out.glob("*.md") if p.stem not in names)
    info = machine_info()
    head = ["# chefgenius benchmark results", "",
            f"Produced by `{command}` on {info['machine']}, Python {info['python']}, torch {info['torch']}"
            + (f", transformers {info['transformers']}" if "transformers" in info else "") + ". "
            "Contenders of a comparison run one after another in the same benchmark run, on an idle machine; "
            "ratios are the result, absolute times only context. Each section says its own command; a section "
            "whose benchmark was not re-run keeps the figures of its last run (see its JSON twin).", ""]
    body = []
    for n in names:
        section = (out / f"{n}.md").read_text().strip().splitlines()
        section[0] = "#" + section[0] if section[0].startswith("# ") else section[0]
        body += [*section, ""]
    target = out.parent / "RESULTS.md"
    target.write_text("\n".join(head + body))
    (out.parent / "RESULTS.json").write_text(json.dumps(
        {**info, "command": command, "results": {n: json.loads((out / f"{n}.json").read_text()) for n in names
                                                 if (out / f"{n}.json").is_file()}}, indent=2) + "\n")
    return target
