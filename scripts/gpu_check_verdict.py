"""The GPU check's verdicts: each stage passes or fails on its figures against a threshold, not on an
exit code. Prints one line, ``PASS: <figures>`` or ``FAIL: <figures> (<what was missed>)``; exit 0 on PASS.

    python scripts/gpu_check_verdict.py probe LOG                # exact resume: every tensor and loss equal
    python scripts/gpu_check_verdict.py throughput JSON [--min-vs-hf 1.0] [--min-vs-bare 0.95] [--min-repeats 3]
    python scripts/gpu_check_verdict.py ckpt JSON --max-vs-end-only 1.5 [--min-repeats 3]
    python scripts/gpu_check_verdict.py selftest DIR             # the rules above fail tampered copies of DIR's results

``LOG`` is a stage log whose last JSON line is ``scripts/resume_probe.py``'s result; ``JSON`` is a
benchmark's result file (``bench/throughput.py``, ``bench/async_checkpoint.py``). ``selftest`` is how
CI, which has no GPU, shows that a missed threshold reads FAIL: it takes the real results of the
``--cpu`` run, makes each miss its threshold, and checks that each verdict turns to FAIL.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

CHEFGENIUS_ROW = "chefgenius (defaults: length-grouped)"


def last_json_line(log: Path) -> dict[str, Any]:
    lines = [x for x in log.read_text().splitlines() if x.startswith("{")]
    if not lines:
        raise ValueError(f"no result line in {log}")
    return json.loads(lines[-1])


def probe_verdict(result: dict[str, Any]) -> tuple[bool, str]:
    ok = bool(result.get("identical_weights")) and bool(result.get("identical_losses"))
    where = f"{result.get('preset')}, {result.get('parameters', 0) / 1e6:.1f}M parameters"
    if result.get("nproc", 1) > 1:
        where += f", {result['nproc']} processes ({result.get('sharding', 'ddp')})"
    figure = (f"{result.get('tensors')} tensors torch.equal after a SIGKILL at step "
              f"{result.get('killed_after_checkpoint')}: {'yes' if result.get('identical_weights') else 'NO'}; "
              f"every loss equal: {'yes' if result.get('identical_losses') else 'NO'} ({where})")
    return ok, figure if ok else f"{figure} (threshold: bit-identical; differing: {result.get('differing')})"


def _row(result: dict[str, Any], name: str) -> dict[str, Any]:
    rows = [r for r in result.get("rows", []) if r["contender"] == name]
    if not rows:
        raise ValueError(f"no row {name!r} in the result")
    return rows[0]


def throughput_verdict(result: dict[str, Any], min_vs_hf: float, min_vs_bare: float,
                       min_repeats: int) -> tuple[bool, str]:
    row = _row(result, CHEFGENIUS_ROW)
    vs_hf, vs_bare, repeats = row["vs_hf_same_batches"], row["vs_bare"], int(result.get("repeats", 0))
    mfu = f", MFU {row['mfu']:.1%}" if row.get("mfu") is not None else ""
    figure = (f"{vs_hf:.3f}x the HF Trainer on identical batches, {vs_bare:.3f}x the bare loop, "
              f"{row['median_tokens_per_s']} tokens/s{mfu}, {repeats} repeats")
    missed = [m for m, bad in ((f"HF >= {min_vs_hf}", vs_hf < min_vs_hf),
                               (f"bare >= {min_vs_bare}", vs_bare < min_vs_bare),
                               (f"repeats >= {min_repeats}", repeats < min_repeats)) if bad]
    return not missed, figure if not missed else f"{figure} (missed: {', '.join(missed)})"


def ckpt_verdict(result: dict[str, Any], max_vs_end_only: float, min_repeats: int) -> tuple[bool, str]:
    rows = [r for r in result.get("rows", []) if "async" in r["contender"]]
    if not rows:
        raise ValueError("no async row in the result")
    row, repeats = rows[0], len(rows[0].get("all_s", []))
    figure = f"{row['contender']}: {row['vs_end_only']:.3f}x end-only, {repeats} repeats"
    missed = [m for m, bad in ((f"<= {max_vs_end_only}x end-only", row["vs_end_only"] > max_vs_end_only),
                               (f"repeats >= {min_repeats}", repeats < min_repeats)) if bad]
    return not missed, figure if not missed else f"{figure} (missed: {', '.join(missed)})"


def selftest(directory: Path) -> tuple[bool, str]:
    """Each rule must PASS on nothing it is not given and FAIL on a copy made to miss its threshold."""
    checked, problems = [], []

    def must_fail(name: str, verdict: tuple[bool, str]) -> None:
        checked.append(name)
        if verdict[0]:
            problems.append(f"{name} passed a result that misses its threshold: {verdict[1]}")

    probe_log = directory / "probe.log"
    if probe_log.is_file():
        probe = last_json_line(probe_log)
        must_fail("probe (one tensor differs)", probe_verdict({**probe, "identical_weights": False}))
        must_fail("probe (one loss differs)", probe_verdict({**probe, "identical_losses": False}))
    for path in sorted((directory / "bench-results").glob("throughput*.json")):
        result = json.loads(path.read_text())
        slow = copy.deepcopy(result)
        _row(slow, CHEFGENIUS_ROW)["vs_hf_same_batches"] = 0.97
        must_fail(f"{path.name} (0.97x the HF Trainer)", throughput_verdict(slow, 1.0, 0.0, 0))
        must_fail(f"{path.name} (fewer repeats)", throughput_verdict({**result, "repeats": 1}, 0.0, 0.0, 3))
    for path in sorted((directory / "bench-results").glob("async_checkpoint*.json")):
        result = json.loads(path.read_text())
        slow = copy.deepcopy(result)
        next(r for r in slow["rows"] if "async" in r["contender"])["vs_end_only"] = 9.0
        must_fail(f"{path.name} (9x end-only)", ckpt_verdict(slow, 1.5, 0))
    if not checked:
        return False, f"no results in {directory} to check the rules against"
    return not problems, "; ".join(problems) or f"{len(checked)} results made to miss their threshold all read FAIL"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="kind", required=True)
    sub.add_parser("probe").add_argument("log", type=Path)
    t = sub.add_parser("throughput")
    t.add_argument("result", type=Path)
    t.add_argument("--min-vs-hf", type=float, default=1.0)
    t.add_argument("--min-vs-bare", type=float, default=0.95)
    t.add_argument("--min-repeats", type=int, default=3)
    c = sub.add_parser("ckpt")
    c.add_argument("result", type=Path)
    c.add_argument("--max-vs-end-only", type=float, required=True)
    c.add_argument("--min-repeats", type=int, default=3)
    sub.add_parser("selftest").add_argument("directory", type=Path)
    args = ap.parse_args(argv)
    try:
        if args.kind == "probe":
            ok, figure = probe_verdict(last_json_line(args.log))
        elif args.kind == "throughput":
            ok, figure = throughput_verdict(json.loads(args.result.read_text()), args.min_vs_hf, args.min_vs_bare,
                                            args.min_repeats)
        elif args.kind == "ckpt":
            ok, figure = ckpt_verdict(json.loads(args.result.read_text()), args.max_vs_end_only, args.min_repeats)
        else:
            ok, figure = selftest(args.directory)
    except (OSError, ValueError, KeyError) as err:
        ok, figure = False, f"no figures to judge ({err})"
    print(f"{'PASS' if ok else 'FAIL'}: {figure}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
