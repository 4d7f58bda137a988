"""What every benchmark shares: the machine description and where results are written.

Each benchmark writes ``results/NAME.md`` (a table with ratios against the peer measured in the
same run) and ``results/NAME.json`` (the same figures, plus every repetition). ``python -m bench``
then joins them into ``bench/RESULTS.md`` and ``bench/RESULTS.json``. ``BENCH_RESULTS_DIR``
redirects the output (``--quick`` writes to a temporary directory: smoke figures are no results).
``BENCH_RUN_ID`` (set by ``python -m bench``) is stamped into each JSON twin, so that ``collect`` can
tell the sections this run produced from older ones.
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
         "async_checkpoint_every3", "async_checkpoint_every5", "startup", "distributed_scale", "prepare_scale",
         "prepare_speed")


def results_dir(experiment: bool = False) -> Path:
    """Where results go: ``bench/results/``, or ``bench/results/experiments/`` for one-off experiments
    (a variant tried once, e.g. recipe quality with another dropout), which RESULTS.md never joins."""
    out = Path(os.environ.get("BENCH_RESULTS_DIR") or ROOT / "bench" / "results")
    out = out / "experiments" if experiment else out
    out.mkdir(parents=True, exist_ok=True)
    return out


def _head() -> str:
    """HEAD, marked ``+dirty`` when the tree has changes: modified or new files not ignored by git.

    Benchmark outputs (``bench/results``, ``bench/RESULTS.*``) are not code: without leaving them out,
    the first section ``python -m bench`` writes would mark every later one dirty.
    """
    import subprocess

    outputs = [":(exclude)bench/results", ":(exclude)bench/RESULTS.md", ":(exclude)bench/RESULTS.json"]
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=normal", "--",
                                ".", *outputs], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + ("+dirty" if dirty else "")


_AT_START = _head()  # read when the benchmark starts (it imports this module first), not when it writes


def commit() -> str:
    """The measured code: the tree as the benchmark started; ``+changed`` when it differs at the end
    (a commit or an edit during the run: the figures then belong to neither)."""
    now = _head()
    return _AT_START if now == _AT_START else f"{_AT_START}+changed (now {now})"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _filesystem(path: Path) -> str:
    """The filesystem type and device the benchmark's temporary files land on (``BENCH_TMP`` or /tmp)."""
    target = str(Path(os.environ.get("BENCH_TMP") or "/tmp").resolve())
    best = ("", "unknown", "unknown")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mount, fstype = line.split()[:3]
            if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best[0]):
                best = (mount, fstype, dev)
    except OSError:
        pass
    return f"{best[1]} on {best[2]} (mounted at {best[0] or '?'})"


def machine_info() -> dict[str, Any]:
    """Where and with what a result was measured: commit (and whether the tree was dirty), date, CPU,
    cores, RAM, the filesystem of the temporary files, the load, and every library that is timed."""
    import datetime
    import importlib.metadata

    import torch

    info: dict[str, Any] = {
        "commit": commit(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}", "cpu": _cpu_model(),
        "ram_gib": _ram_gib(), "filesystem": _filesystem(ROOT), "load_average": os.getloadavg()[0],
        "python": platform.python_version(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    for lib in ("transformers", "accelerate", "safetensors", "tokenizers", "xxhash", "datasets", "numpy"):
        try:
            info[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            pass
    return info


def train_config(family: str = "gpt2", preset: str = "tiny", vocab_size: int = 1000, **sections: dict) -> dict:
    """A benchmark's chefgenius config (raw, before validation): a model built from config (nothing
    downloaded), no evaluation prompts or early stopping, no progress bar; ``sections`` add to or
    override the fields of each section (``training={"max_steps": 60}``). Every benchmark builds its
    config here, so what differs between two benchmarks is what each one passes."""
    raw: dict[str, dict] = {"model": {"from_scratch": family, "preset": preset, "vocab_size": vocab_size},
                            "evaluation": {"every_steps": None, "early_stopping_patience": None, "prompts": []},
                            "logging": {"progress_bar": False}}
    for name, fields in sections.items():
        raw[name] = {**raw.get(name, {}), **fields}
    return raw


def gpt2(preset: str, *, vocab_size: int = 8000, n_positions: int = 512, seed: int = 0, **config: Any) -> Any:
    """A Hugging Face GPT-2 of one of chefgenius's presets, built the way benchmarks that time tensors
    (saves, optimizer steps) need it: seeded, from config, nothing downloaded."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from chefgenius.models.builders import PRESETS

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_positions=n_positions,
                                      **PRESETS["gpt2"][preset], **config))


def with_adamw_state(model: Any, *, tokens: int = 32) -> Any:
    """An AdamW over ``model`` after one step on random ids: a checkpoint's full optimizer state."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (1, tokens))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return opt


def shuffled(items: Any, seed: int, rep: int) -> list:
    """Repeat ``rep``'s order of ``items``, drawn from the run's recorded seed: no contender always runs
    first (cold caches) or last, and the seed gives a run's orders again. Every benchmark uses this."""
    import random

    order = list(items)
    random.Random(seed * 1000 + rep).shuffle(order)
    return order


MIN_REPEATS = 5  # below this a bootstrap interval is too coarse to judge by


def order_seed(asked: int | None = None) -> int:
    """The seed of a run's contender order: as asked (to repeat a run's order), else a fresh one that the
    result records (a fixed seed gives every run the same order)."""
    import random

    return asked if asked is not None else random.SystemRandom().randrange(2**31)


def median_interval(ratios: list[float], resamples: int = 5000, seed: int = 0) -> tuple[float, float, float]:
    """The median of paired ratios with its 95% bootstrap interval (percentile), resampling repeats."""
    import random

    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
    return statistics.median(ratios), meds[int(0.025 * resamples)], meds[int(0.975 * resamples) - 1]


def verdict(ratios: list[float], *, higher_is_better: bool = True) -> str:
    """'faster' / 'slower' when the interval lies clear of 1.0, else 'parity'."""
    _, lo, hi = median_interval(ratios)
    if lo > 1.0:
        return "faster" if higher_is_better else "slower"
    if hi < 1.0:
        return "slower" if higher_is_better else "faster"
    return "parity"


def paired(numer: list[float], denom: list[float], *, higher_is_better: bool = True) -> dict[str, Any]:
    """Repeat-by-repeat ratios ``numer[i] / denom[i]`` (both measured in repeat i): their median, 95%
    bootstrap interval and verdict; fewer than 5 repeats give no verdict."""
    return of_ratios([a / b for a, b in zip(numer, denom, strict=True)], higher_is_better=higher_is_better)


def of_ratios(ratios: list[float], *, higher_is_better: bool = True) -> dict[str, Any]:
    """:func:`paired` for ratios already taken repeat by repeat."""
    mid, lo, hi = median_interval(ratios)
    word = verdict(ratios, higher_is_better=higher_is_better) if len(ratios) >= MIN_REPEATS else "too few repeats"
    return {"ratio": round(mid, 3), "lo95": round(lo, 3), "hi95": round(hi, 3), "verdict": word,
            "repeats": len(ratios), "ratios": [round(r, 4) for r in ratios]}


def of_values(values: list[float]) -> dict[str, Any]:
    """An absolute figure (seconds against a fixed target, not a peer): the median of the repeats with
    its 95% bootstrap interval, in the shape :func:`judged` reads."""
    mid, lo, hi = median_interval(values)
    return {"median": round(mid, 3), "lo95": round(lo, 3), "hi95": round(hi, 3), "repeats": len(values)}


def said(p: dict[str, Any]) -> str:
    """A paired ratio as the results say it: ``1.012x (95% 0.981-1.044: parity)``."""
    return f"{p['ratio']:.3f}x (95% {p['lo95']:.3f}-{p['hi95']:.3f}: {p['verdict']})"


def judged(p: dict[str, Any], *, at_least: float | None = None, at_most: float | None = None) -> str:
    """A target on a paired ratio: met only when the whole interval is on its side (issue 46)."""
    if p["repeats"] < MIN_REPEATS:
        return "not judged (fewer than 5 repeats)"
    spans = "not shown (the interval spans it)"
    if at_least is not None:
        return "met" if p["lo95"] >= at_least else "NOT met" if p["hi95"] < at_least else spans
    assert at_most is not None
    return "met" if p["hi95"] <= at_most else "NOT met" if p["lo95"] > at_most else spans


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def write_result(name: str, lines: list[str], data: dict[str, Any], experiment: bool = False) -> Path:
    """``lines``: the Markdown section (title first); ``data``: its JSON twin (gets ``machine`` added)."""
    out = results_dir(experiment)
    info = machine_info()
    libs = ", ".join(f"{k} {info[k]}" for k in ("torch", "transformers", "accelerate", "safetensors", "tokenizers")
                     if k in info)
    lines = [lines[0], "", f"_Commit {info['commit']}, {info['date']}; {info.get('gpu') or info['cpu']}, "
             f"{info['machine']}, {info['ram_gib']} GiB RAM; temporary files on {info['filesystem']}; {libs}; "
             f"load average {info['load_average']:.2f} at the end._", *lines[1:]]
    run_id = {"run_id": os.environ["BENCH_RUN_ID"]} if os.environ.get("BENCH_RUN_ID") else {}
    (out / f"{name}.json").write_text(json.dumps({**info, **run_id, **data}, indent=2) + "\n")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return out / f"{name}.md"


class MixedResults(Exception):
    """RESULTS.md would join figures of different code, or ones this run did not produce."""


def collect(command: str, run_id: str, scripts: list[str], name: str = "RESULTS", join_others: bool = True) -> Path:
    """Join the sections ``command`` (run ``run_id``, which ran ``scripts``) produced into ``RESULTS.md``.

    Refused (:class:`MixedResults`) when a script produced no section, a section was measured on a
    dirty tree or another commit than the rest. Sections of benchmarks run on their own (preparation
    of the 2.2M-row file, recipe quality, serving) are joined only when measured at the same commit,
    and otherwise named as left out: their figures stay in ``results/`` with their own provenance.
    """
    out = results_dir()
    found = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
    ours = {n: d for n, d in found.items() if d.get("run_id") == run_id}
    missing = [s for s in scripts if not any(str(d.get("command", "")).startswith(f"python bench/{s}")
                                             for d in ours.values())]
    commits = {d.get("commit") for d in ours.values()}
    problems = [f"no section from {', '.join(missing)}"] if missing else []
    if len(commits) != 1 or any(c is None or "+" in c for c in commits):
        problems.append(f"sections measured at {', '.join(sorted(map(str, commits))) or 'no commit'}")
    if problems:
        raise MixedResults(f"refusing to write RESULTS.md: {'; '.join(problems)} (one clean commit is needed: "
                           "commit the tree and run `python -m bench` again)")
    (at,) = commits
    others = {n: d for n, d in found.items() if n not in ours and (out / f"{n}.md").is_file()} if join_others else {}
    joined = {**ours, **{n: d for n, d in others.items() if d.get("commit") == at}}
    left_out = sorted(f"{n} ({d.get('commit') or 'no commit recorded'})" for n, d in others.items() if n not in joined)
    names = [n for n in ORDER if n in joined] + sorted(n for n in joined if n not in ORDER)
    info = machine_info()
    head = ["# chefgenius benchmark results", "",
            f"Produced by `{command}` at commit {at} on {info['machine']}, Python {info['python']}, torch "
            f"{info['torch']}" + (f", transformers {info['transformers']}" if "transformers" in info else "") + ". "
            "Contenders of a comparison run one after another in the same benchmark run, on an idle machine; "
            "ratios are the result, absolute times only context. Each section says its own command, commit, "
            "machine and load.", ""]
    if left_out:
        head += [f"Left out (measured at another commit; see their own files in bench/results/): "
                 f"{', '.join(left_out)}.", ""]
    body = []
    for n in names:
        section = (out / f"{n}.md").read_text().strip().splitlines()
        section[0] = "#" + section[0] if section[0].startswith("# ") else section[0]
        body += [*section, ""]
    target = out.parent / f"{name}.md"
    target.write_text("\n".join(head + body))
    (out.parent / f"{name}.json").write_text(json.dumps(
        {**info, "command": command, "commit": at, "left_out": left_out,
         "results": {n: joined[n] for n in names}}, indent=2) + "\n")
    return target
