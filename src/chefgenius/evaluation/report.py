"""Run report: PNG plots (matplotlib) and one self-contained HTML page from a run directory."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from chefgenius.checkpoint.run_directory import RunDirectory
from chefgenius.config import ConfigError
from chefgenius.durable.jsonl import read_jsonl
from chefgenius.evaluation.text_metrics import METRIC_KEYS


def _plot(path: Path, title: str, series: list[tuple[str, list[float], list[float]]], resumes: list[int],
          ylabel: str, logy: bool = False) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [s for s in series if s[1]]
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    for label, xs, ys in series:
        ax.plot(xs, ys, label=label, marker="o" if len(xs) < 30 else None, markersize=3)
    for i, step in enumerate(resumes):
        ax.axvline(step, color="grey", linestyle="--", linewidth=0.8, label="resume" if i == 0 else None)
    ax.set_title(title)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _plots(out: Path, train: list[dict[str, Any]], evals: list[dict[str, Any]], saves: list[dict[str, Any]],
           resumes: list[int]) -> list[Path | None]:
    def col(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        return [p[0] for p in pts], [p[1] for p in pts]

    return [
        _plot(out / "loss.png", "Loss", [("train", *col(train, "loss")), ("validation", *col(evals, "eval_loss"))],
              resumes, "cross-entropy"),
        _plot(out / "lr.png", "Learning rate", [("lr", *col(train, "lr"))], resumes, "lr"),
        _plot(out / "throughput.png", "Throughput", [("tokens/s", *col(train, "tokens_per_s"))], resumes, "tokens/s"),
        _plot(out / "perplexity.png", "Validation perplexity", [("perplexity", *col(evals, "eval_perplexity"))],
              resumes, "perplexity", logy=True),
        _plot(out / "grad_norm.png", "Gradient norm", [("grad norm", *col(train, "grad_norm"))], resumes, "norm"),
        _plot(out / "checkpoint_saves.png", "Checkpoint saves", [("training blocked", *col(saves, "blocked_s")),
                                                                 ("writing", *col(saves, "write_s"))],
              resumes, "seconds per save"),
    ]


def write_report(run_dir: Path) -> Path:
    """Write ``report/`` (PNG plots + index.html) and return the HTML path."""
    run_dir = Path(run_dir)
    run = RunDirectory(run_dir)
    entries = read_jsonl(run.metrics)
    if not entries:
        raise ConfigError(f"{run_dir} has no metrics.jsonl entries; pass a run directory written by 'chefgenius train'")
    out = run.report_dir
    out.mkdir(exist_ok=True)
    train = [e for e in entries if "loss" in e]
    evals = [e for e in entries if "eval_loss" in e]
    resumes = [e["step"] for e in entries if e.get("event") == "resume"]
    saves = [e for e in entries if e.get("event") == "save"]

    plots = _plots(out, train, evals, saves, resumes)
    samples = read_jsonl(run.samples)
    last_step = max((s["step"] for s in samples), default=None)
    eval_json = run.eval_file
    eval_result = json.loads(eval_json.read_text()) if eval_json.is_file() else None

    parts = [f"<h1>chefgenius run report</h1><p>{html.escape(str(run_dir))}: {len(train)} logged steps, "
             f"{len(evals)} evaluations, {len(resumes)} resume(s)"
             + (f" at steps {', '.join(map(str, resumes))}" if resumes else "") + "</p>"]
    if evals:
        best = min(evals, key=lambda e: e["eval_loss"])
        parts.append(f"<p>best validation loss {best['eval_loss']:.4f} (perplexity {best['eval_perplexity']:.2f}) "
                     f"at step {best['step']}; last {evals[-1]['eval_loss']:.4f}</p>")
    if eval_result:
        rows = "".join(f"<tr><td>{k}</td><td>{eval_result[k]:.4f}</td></tr>" for k in METRIC_KEYS
                       if k in eval_result)
        parts.append(f"<h2>chefgenius eval ({html.escape(str(eval_result.get('preset')))}, "
                     f"{eval_result.get('num_samples')} samples)</h2><table>{rows}</table>")
    for p in plots:
        if p is not None:
            data = base64.b64encode(p.read_bytes()).decode()
            parts.append(f'<div><img alt="{p.stem}" src="data:image/png;base64,{data}"></div>')
    if last_step is not None:
        parts.append(f"<h2>Sample generations at step {last_step}</h2>")
        for s in samples:
            if s["step"] == last_step:
                parts.append(f"<h3>{html.escape(s['ingredients'])}</h3><pre>{html.escape(s['text'])}</pre>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>chefgenius report</title><style>"
            "body{font-family:sans-serif;max-width:760px;margin:2em auto}pre{background:#f6f6f6;padding:1em;"
            "white-space:pre-wrap}td{padding:2px 12px}</style></head><body>" + "".join(parts) + "</body></html>")
    index = out / "index.html"
    index.write_text(page)
    return index
