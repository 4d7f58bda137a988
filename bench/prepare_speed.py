"""First `data prepare` of a full-size RecipeNLG file against the path users would otherwise write.

    python scripts/make_big_recipenlg.py --rows 2231142 --out /tmp/big/recipenlg-2.2m-varied.csv
    python bench/prepare_speed.py --big /tmp/big/recipenlg-2.2m-varied.csv --repeats 5

The input should be ``make_big_recipenlg.py``'s default, varied rows (fields composed from different
sample recipes): copies of the sample repeat whole fields 2,230 times, which real data never does.

Contenders, each a fresh process with an empty cache, in a shuffled order per repetition:
- ``chefgenius``: ``chefgenius data prepare FILE`` (clean, de-duplicate, split, train the tokenizer,
  tokenise, verify, commit).
- ``datasets``: Hugging Face ``load_dataset("csv")`` + ``.map(format + tokenize, batched=True,
  num_proc=2)`` with the tokenizer chefgenius trained, on the same file: no cleaning, no
  de-duplication, no split (it does less work; it is the path chefgenius must not be slower than).
  Inside its timer it does only what a user's script does: load and map (the row count it prints is
  metadata; it does not read the ~400M token ids back into Python values).
- ``baseline`` (with ``--baseline COMMIT``, once): ``data prepare`` of that commit, from a git
  worktree. Its store must be byte-identical (token arrays, offsets, fingerprints, report, tokenizer)
  to every ``chefgenius`` store: the digests are compared here and the run fails if they differ.

Writes bench/results/prepare_speed.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import commit, judged, machine_info, of_values, order_seed, paired, said, shuffled, spread, write_result

ROOT = Path(__file__).resolve().parents[1]
STORE_FILES = ("train_src.bin", "train_tgt.bin", "train_src_offsets.bin", "train_tgt_offsets.bin",
               "val_src.bin", "val_tgt.bin", "val_src_offsets.bin", "val_tgt_offsets.bin")


def timed(cmd: list[str], env: dict[str, str], cwd: Path = ROOT) -> dict:
    """Wall time and peak RSS (GNU time: the largest process of the tree; workers are counted apart)."""
    t0 = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    return {"wall_s": wall, "peak_rss_gb": rss_kb / 1e6, "stdout": done.stdout, "stderr": done.stderr}


def store_of(cache: Path) -> Path:
    stores = [p for p in (cache / "prepared").iterdir() if (p / "meta.json").is_file()]
    if len(stores) != 1:
        raise RuntimeError(f"expected one prepared store under {cache}, found {len(stores)}")
    return stores[0]


def store_identity(store: Path) -> dict[str, str]:
    """What must be equal between two preparations of the same file: array digests and the meta that matters."""
    import xxhash

    out = {}
    for name in STORE_FILES:
        h = xxhash.xxh3_128()
        with (store / name).open("rb") as f:
            for block in iter(lambda: f.read(8 << 20), b""):
                h.update(block)
        out[name] = h.hexdigest()
    meta = json.loads((store / "meta.json").read_text())
    for key in ("fingerprints", "counts", "tokenizer_digest", "vocab_size", "arrays"):
        out[key] = json.dumps(meta[key], sort_keys=True)
    report = meta["report"]
    out["report"] = json.dumps({k: report[k] for k in ("read", "kept", "dropped", "repaired")}, sort_keys=True)
    out["store_name"] = store.name
    return out


def run_chefgenius(big: Path, work: Path, python: str, cwd: Path, label: str) -> dict:
    cache = work / f"cache-{label}"
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "CHEFGENIUS_CACHE": str(cache), "PYTHONPATH": str(cwd / "src")}
    res = timed([python, "-m", "chefgenius.cli", "data", "prepare", str(big)], env, cwd)
    store = store_of(cache)
    res["identity"] = store_identity(store)
    res["stage_log"] = [line for line in res["stdout"].splitlines() if line.startswith("data:")]
    res["store"] = str(store)
    return res


DATASETS_PEER = r'''
import json, sys
from datasets import load_dataset
from transformers import AutoTokenizer
path, tok_dir, cache = sys.argv[1:4]
tok = AutoTokenizer.from_pretrained(tok_dir)

def fmt(title, ingredients, directions, ner):
    prompt = "Generate a recipe with: " + ", ".join(json.loads(ner))
    lines = ["Title: " + title, "Ingredients:"] + ["- " + x for x in json.loads(ingredients)]
    lines += ["Directions:"] + [f"{i}. {x}" for i, x in enumerate(json.loads(directions), 1)]
    return prompt + "\n", "\n".join(lines)

def encode(batch):
    pairs = [fmt(*row) for row in zip(batch["title"], batch["ingredients"], batch["directions"], batch["NER"])]
    src = tok([p for p, _ in pairs], add_special_tokens=False)["input_ids"]
    tgt = tok([t for _, t in pairs], add_special_tokens=False)["input_ids"]
    return {"src": src, "tgt": tgt}

ds = load_dataset("csv", data_files=path, split="train", cache_dir=cache)
ds = ds.map(encode, batched=True, num_proc=2, remove_columns=ds.column_names)
print(f"datasets: {len(ds)} rows")
'''


def run_datasets(big: Path, tokenizer: Path, work: Path) -> dict:
    cache = work / "cache-datasets"
    shutil.rmtree(cache, ignore_errors=True)
    script = work / "datasets_peer.py"
    script.write_text(DATASETS_PEER)
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "HF_HOME": str(cache / "home"), "HF_HUB_OFFLINE": "1"}
    res = timed([sys.executable, str(script), str(big), str(tokenizer), str(cache)], env)
    shutil.rmtree(cache, ignore_errors=True)
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--big", type=Path, required=True)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bench-prepare-speed")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--baseline", help="a commit whose `data prepare` must give the same store (run once)")
    ap.add_argument("--seed", type=int, default=None, help="the order's seed (default: a fresh one, recorded)")
    args = ap.parse_args()
    args.seed = order_seed(args.seed)
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data: dict = {"machine": machine_info(), "commit": commit(), "file": str(args.big),
                  "file_bytes": args.big.stat().st_size, "repeats": args.repeats, "seed": args.seed, "runs": []}
    identities = []
    if args.baseline:
        tree = work / "baseline-tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), args.baseline],
                       check=True, capture_output=True)
        try:
            res = run_chefgenius(args.big, work, sys.executable, tree, "baseline")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
        data["baseline"] = {"commit": args.baseline, "wall_s": res["wall_s"], "peak_rss_gb": res["peak_rss_gb"],
                            "identity": res["identity"]}
        identities.append(("baseline", res["identity"]))
        tokenizer = Path(res["store"]) / "tokenizer"
    else:
        tokenizer = None
    for rep in range(args.repeats):
        order = shuffled(["chefgenius", "datasets"], args.seed, rep)
        if tokenizer is None:  # the peer needs chefgenius's tokenizer: without a baseline, chefgenius goes first
            order = ["chefgenius", "datasets"]
        for name in order:
            if name == "chefgenius":
                res = run_chefgenius(args.big, work, sys.executable, ROOT, f"run{rep}")
                identities.append((f"chefgenius #{rep}", res["identity"]))
                tokenizer = tokenizer or Path(res["store"]) / "tokenizer"
                entry = {"stages": res["stage_log"]}
            else:
                res = run_datasets(args.big, tokenizer, work)
                entry = {"summary": res["stdout"].strip().splitlines()[-1]}
            data["runs"].append({"contender": name, "repeat": rep, "wall_s": res["wall_s"],
                                 "peak_rss_gb": res["peak_rss_gb"], **entry})
            print(f"{name} #{rep}: {res['wall_s']:.1f} s, peak RSS {res['peak_rss_gb']:.2f} GB", flush=True)
    # Reuse: the key matches, the source is re-hashed and the whole store verified (digests, id range).
    last = work / f"cache-run{args.repeats - 1}"
    again = timed([sys.executable, "-m", "chefgenius.cli", "data", "prepare", str(args.big)],
                  {**os.environ, "CHEFGENIUS_CACHE": str(last)})
    verify_line = next((x for x in again["stdout"].splitlines() if " reused (" in x), "")
    data["again"] = {"wall_s": again["wall_s"], "log": verify_line}
    ref_name, ref = identities[0]
    differ = {name: [k for k in ref if ident.get(k) != ref[k]] for name, ident in identities[1:]}
    data["identical"] = not any(differ.values())
    data["differences"] = differ
    walls = {c: [r["wall_s"] for r in data["runs"] if r["contender"] == c] for c in ("chefgenius", "datasets")}
    rss = {c: max(r["peak_rss_gb"] for r in data["runs"] if r["contender"] == c) for c in walls}
    stats = {c: spread(v) for c, v in walls.items()}
    data["stats"] = stats
    ratio = stats["chefgenius"]["median"] / stats["datasets"]["median"]
    data["ratio_vs_datasets"] = ratio
    # Both targets judged on a 95% bootstrap interval (issue 46): against the peer on the ratios paired
    # repeat by repeat, against 180 s on the interval of the median wall; "met" only when the whole interval
    # is on the target's side, never from fewer than 5 repeats.
    vs = paired(walls["chefgenius"], walls["datasets"], higher_is_better=False)
    wall = of_values(walls["chefgenius"])
    over = sum(w > 180 for w in walls["chefgenius"])
    data["paired"] = vs
    data["wall_interval"] = wall
    data["targets"] = {"vs_datasets": judged(vs, at_most=1.0), "180_s": judged(wall, at_most=180)}
    cg = stats["chefgenius"]["median"]
    lines = [f"# First preparation of {args.big.name} ({args.big.stat().st_size / 1e9:.2f} GB)", "",
             f"Commit {data['commit']}; median of {args.repeats}, order shuffled per repeat from seed {args.seed} "
             "(chefgenius first in the first repeat: the peer uses its tokenizer), each from an empty cache; "
             f"`python bench/prepare_speed.py --big {args.big.name} --repeats {args.repeats} --seed {args.seed}`.", "",
             "| contender | wall (median) | runs | peak RSS | target |", "|---|---:|---|---:|---|",
             f"| `chefgenius data prepare` | {cg:.1f} s | {', '.join(f'{x:.1f}' for x in walls['chefgenius'])} | "
             f"{rss['chefgenius']:.2f} GB | <= 1.0x datasets: **{data['targets']['vs_datasets']}** "
             f"(paired {said(vs)}); "
             f"<= 180 s: **{data['targets']['180_s']}** (median 95% {wall['lo95']:.1f}-{wall['hi95']:.1f} s; "
             f"{over} of {len(walls['chefgenius'])} runs over 180 s) |",
             f"| `datasets` load_dataset + map(num_proc=2) | {stats['datasets']['median']:.1f} s | "
             f"{', '.join(f'{x:.1f}' for x in walls['datasets'])} | {rss['datasets']:.2f} GB | peer |"]
    if "baseline" in data:
        b = data["baseline"]
        lines.append(f"| `data prepare` at {b['commit']} (before) | {b['wall_s']:.1f} s | 1 | "
                     f"{b['peak_rss_gb']:.2f} GB | |")
    lines += [f"| `data prepare` again (store reused, fully verified) | {data['again']['wall_s']:.1f} s | 1 | "
              f"{again['peak_rss_gb']:.2f} GB | verification <= 1 s |", "", f"Reuse: {verify_line}"]
    lines += ["", f"Stores identical to {ref_name} (token arrays, offsets, fingerprints, counts, report, tokenizer): "
              f"**{'yes' if data['identical'] else 'NO: ' + json.dumps(differ)}**", "",
              "Stages of the first chefgenius run:", ""]
    first = next(r for r in data["runs"] if r["contender"] == "chefgenius")
    lines += [f"- {s}" for s in first["stages"]]
    write_result("prepare_speed", lines, data)
    print("\n".join(lines))
    return 0 if data["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
