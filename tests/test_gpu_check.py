"""The GPU check judges figures, not exit codes: each rule reads FAIL for a result that misses it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VERDICT = ROOT / "scripts" / "gpu_check_verdict.py"

PROBE = {"identical_weights": True, "tensors": 52, "differing": [], "identical_losses": True, "parameters": 953088,
         "preset": "tiny", "steps": 12, "nproc": 2, "sharding": "fsdp", "killed_after_checkpoint": 4}


def verdict(*args: object) -> tuple[int, str]:
    done = subprocess.run([sys.executable, str(VERDICT), *map(str, args)], capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout.strip()


def throughput(vs_hf: float, vs_bare: float, repeats: int) -> dict:
    row = {"contender": "chefgenius (defaults: length-grouped)", "vs_hf_same_batches": vs_hf, "vs_bare": vs_bare,
           "median_tokens_per_s": 1000, "mfu": 0.31}
    return {"repeats": repeats, "rows": [row]}


def test_the_probe_passes_only_bit_identical(tmp_path):
    log = tmp_path / "probe.log"
    log.write_text("training...\n" + json.dumps(PROBE) + "\n")
    rc, line = verdict("probe", log)
    assert rc == 0 and line.startswith("PASS: 52 tensors torch.equal") and "2 processes (fsdp)" in line
    log.write_text(json.dumps({**PROBE, "identical_weights": False, "differing": ["lm_head.weight"]}) + "\n")
    rc, line = verdict("probe", log)
    assert rc == 1 and line.startswith("FAIL: ") and "lm_head.weight" in line
    log.write_text("Traceback: the run crashed\n")
    rc, line = verdict("probe", log)
    assert rc == 1 and "no figures to judge" in line


def test_throughput_needs_the_ratios_and_the_repeats(tmp_path):
    result = tmp_path / "t.json"
    result.write_text(json.dumps(throughput(1.02, 0.97, 3)))
    rc, line = verdict("throughput", result)
    assert rc == 0 and "1.020x the HF Trainer" in line and "MFU 31.0%" in line
    for vs_hf, vs_bare, repeats, missed in ((0.99, 0.97, 3, "HF >= 1.0"), (1.02, 0.94, 3, "bare >= 0.95"),
                                            (1.02, 0.97, 1, "repeats >= 3")):
        result.write_text(json.dumps(throughput(vs_hf, vs_bare, repeats)))
        rc, line = verdict("throughput", result)
        assert rc == 1 and line.startswith("FAIL") and f"missed: {missed}" in line


def test_checkpoint_rows_are_judged_against_end_only(tmp_path):
    result = tmp_path / "c.json"
    rows = [{"contender": "checkpoint only at the end", "vs_end_only": 1.0, "all_s": [1, 1, 1]},
            {"contender": "every 10 steps, async (default)", "vs_end_only": 1.4, "all_s": [1, 1, 1]}]
    result.write_text(json.dumps({"rows": rows}))
    assert verdict("ckpt", result, "--max-vs-end-only", 1.5)[0] == 0
    rc, line = verdict("ckpt", result, "--max-vs-end-only", 1.05)
    assert rc == 1 and "missed: <= 1.05x end-only" in line


def test_selftest_fails_when_a_rule_lets_a_miss_through(tmp_path):
    (tmp_path / "probe.log").write_text(json.dumps(PROBE) + "\n")
    (tmp_path / "bench-results").mkdir()
    (tmp_path / "bench-results" / "throughput.json").write_text(json.dumps(throughput(1.3, 0.8, 1)))
    rc, line = verdict("selftest", tmp_path)
    assert rc == 0 and "4 results made to miss their threshold all read FAIL" in line
    rc, line = verdict("selftest", tmp_path / "empty")
    assert rc == 1 and "no results" in line
