#!/usr/bin/env bash
# The GPU check: what this project promises, verified on the GPU it runs on, in one script.
#
#   scripts/gpu_check.sh [--cpu] [--wheels DIR] [--out DIR]
#
# For a GPU machine with no network whose Python already has torch and transformers: the project is
# used from this checkout (PYTHONPATH), and what else it needs (pydantic, typer...) is installed from
# the wheels in DIR into OUT/deps, never from the network. Stages, each bounded in time (about 12
# minutes in all on one H200):
#   env      what the machine is (torch, CUDA, GPU)
#   suite    the test suite on CUDA, without the multi-process tests (pytest -v: failures are named)
#   probe    exact resume at ~160M parameters: GPT-2 large, bf16, asynchronous checkpoints, SIGKILL
#            after the step-20 checkpoint, final weights compared bit for bit with an uninterrupted run
#   bench    the GPU throughput rows in bf16 (chefgenius strict and default, Hugging Face Trainer, bare
#            loop, identical batches, MFU; bench/throughput.py), sections in OUT/bench-results
#   ckpt     checkpoints every 10 steps at ~160M (bf16, batch 16, 60 steps): end-only, async, synchronous
#            (bench/async_checkpoint.py; issue 20's GPU row)
#   refuse   more processes than GPUs (--nproc N+1) ends at once in one line, before any process starts
# --cpu runs the same logic with small sizes on a CPU (CI runs it); there the suite stage is left to
# CI's own pytest run and the refusal is of --device cuda where no GPU is visible.
# Writes OUT/summary.txt (one line per stage, then PASS or FAIL) and a log per stage; exit 0 on PASS.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODE=gpu WHEELS="" OUT="$ROOT/gpu-check"
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) MODE=cpu ;;
        --wheels) WHEELS=$2; shift ;;
        --out) OUT=$2; shift ;;
        *) echo "usage: $0 [--cpu] [--wheels DIR] [--out DIR]" >&2; exit 2 ;;
    esac
    shift
done
PY=${PYTHON:-python3}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
export PYTHONPATH="$ROOT/src:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export CHEFGENIUS_CACHE="$OUT/cache"
FAILED=0

# stage NAME SECONDS COMMAND...: run it under a time limit, log it, record the outcome.
stage() {
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS rc
    echo "== $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" > >(tee "$OUT/$name.log") 2>&1
    rc=$?
    local took=$((SECONDS - t0)) status=PASS
    if [ $rc -ne 0 ]; then status=FAIL; FAILED=1; fi
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status="FAIL (timed out)"; fi
    echo "$name: $status in ${took}s (exit $rc)$(detail "$name")" | tee -a "$SUMMARY"
}

detail() {  # the line of a stage's log worth keeping in the summary
    case "$1" in
        suite) grep -E "^(FAILED|ERROR) |[0-9]+ (passed|failed)" "$OUT/suite.log" | tail -6 | sed 's/^/\n    /' | tr -d '\n' ;;
        probe) grep -E '^\{' "$OUT/probe.log" | tail -1 | sed 's/^/: /' ;;
        bench) grep -E '^\| |^Like for like|^Determinism' "$OUT/bench.log" | tail -9 | sed 's/^/\n    /' | tr -d '\n' ;;
        ckpt) grep -E '^\| |^A step takes' "$OUT/ckpt.log" | tail -4 | sed 's/^/\n    /' | tr -d '\n' ;;
        refuse) grep -E '^error: ' "$OUT/refuse.log" | head -1 | sed 's/^/: /' ;;
    esac
}

if [ -n "$WHEELS" ]; then
    stage deps 120 "$PY" -m pip install --quiet --no-index --no-deps --target "$OUT/deps" "$WHEELS"/*.whl
    export PYTHONPATH="$PYTHONPATH:$OUT/deps"  # after the system's packages: a wheel never shadows its torch
fi

stage env 60 "$PY" -c "
import torch, transformers, chefgenius
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)
print('devices:', [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] or 'none')
assert '$MODE' == 'cpu' or torch.cuda.is_available(), 'no CUDA device visible (use --cpu)'"

if [ "$MODE" = gpu ]; then
    stage suite 300 "$PY" -m pytest -v -p no:cacheprovider -n 6 --dist loadfile "$ROOT/tests" \
        --ignore="$ROOT/tests/test_distributed.py" --ignore="$ROOT/tests/test_distributed_ranks.py"
    stage probe 170 "$PY" "$ROOT/scripts/resume_probe.py" --workdir "$OUT/probe-run"
    export BENCH_RESULTS_DIR="$OUT/bench-results"  # the sections come back with OUT
    stage bench 150 "$PY" "$ROOT/bench/throughput.py" --device cuda --precision bf16 --preset base --steps 60 \
        --repeats 1
    stage ckpt 200 "$PY" "$ROOT/bench/async_checkpoint.py" --device cuda --precision bf16 --preset large \
        --batch-size 16 --steps 60 --every 10 --repeats 1
    N=$(( $("$PY" -c "import torch; print(torch.cuda.device_count())") + 1 ))
    REFUSE=(--nproc "$N")
    WANT="processes on this machine need $N GPUs"
else
    stage probe 240 "$PY" "$ROOT/scripts/resume_probe.py" --workdir "$OUT/probe-run" --preset tiny --vocab 1000 \
        --precision fp32 --device cpu --batch-size 4 --steps 12 --every 4 --kill-after 4
    BENCH_RESULTS_DIR="$OUT/bench-results" stage bench 180 "$PY" "$ROOT/bench/throughput.py" --quick
    REFUSE=(--nproc 2 --device cuda)
    WANT="no CUDA device is visible"
fi

# Exit 2, one line naming the problem, and nothing launched (no run directory made).
stage refuse 60 "$PY" -c "
import subprocess, sys
from pathlib import Path
want, run, *args = sys.argv[1:]
done = subprocess.run([sys.executable, '-m', 'chefgenius', 'train', '-o', run, '--no-sample', *args],
                      capture_output=True, text=True, timeout=50)
lines = [x for x in done.stderr.splitlines() if x.strip()]
print(*lines, sep=chr(10))
assert done.returncode == 2, f'exit {done.returncode}, not 2'
assert len(lines) == 1 and want in lines[0], f'wanted one line saying {want!r}'
assert not Path(run).exists(), 'a run directory was made'
" "$WANT" "$OUT/refused-run" "${REFUSE[@]}"

if [ $FAILED -eq 0 ]; then echo "gpu_check ($MODE): PASS" | tee -a "$SUMMARY"; else
    echo "gpu_check ($MODE): FAIL" | tee -a "$SUMMARY"; fi
echo "summary: $SUMMARY"
exit $FAILED
