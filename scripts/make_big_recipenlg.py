"""Build a RecipeNLG-shaped CSV of any size from the 1k sample, for benchmarks (never committed as data).

    python scripts/make_big_recipenlg.py --rows 2231142 --out /tmp/recipenlg-2.2m-varied.csv

``--mode varied`` (the default): each row takes its title from one sample recipe, a subset of the
ingredient lines of a second (and its NER entries at the same positions) and a subset of the steps of a third, chosen
by a seeded generator, so whole fields do not repeat and a per-string cache gains only what real
data gives. ``--mode repeated``: copies of the sample's rows (what the benchmarks used before
2026-12-07; a cache of whole fields would hit 2,230 times in 2,231). Either way the copy number is
in the title, so every row is a distinct recipe (de-duplication keeps them all).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from pathlib import Path

DEFAULT_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "recipenlg-sample-1k.csv"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_231_142)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE)
    ap.add_argument("--mode", choices=("varied", "repeated"), default="varied")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not args.sample.is_file():
        print(f"error: {args.sample} does not exist (pass --sample PATH to a RecipeNLG CSV)", file=sys.stderr)
        return 2
    with args.sample.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    title, ingredients, directions, ner = (header.index(c) for c in ("title", "ingredients", "directions", "NER"))
    rng = random.Random(args.seed)

    def subset(lines: list[str]) -> list[int]:
        """The indices of a random subset of at least half of ``lines``, in their order."""
        keep = rng.randint((len(lines) + 1) // 2, len(lines)) if lines else 0
        return sorted(rng.sample(range(len(lines)), keep))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for i in range(args.rows):
            row = list(rows[i % len(rows)])
            if args.mode == "varied":
                a, b = rows[rng.randrange(len(rows))], rows[rng.randrange(len(rows))]
                lines, names = json.loads(a[ingredients]), json.loads(a[ner])
                kept = subset(lines)
                row[ingredients] = json.dumps([lines[k] for k in kept])
                row[ner] = json.dumps([names[k] for k in kept if k < len(names)] or names[:1])
                steps = json.loads(b[directions])
                row[directions] = json.dumps([steps[k] for k in subset(steps)])
            row[0] = str(i)
            row[title] = f"{row[title]} {i // len(rows)}"
            writer.writerow(row)
    print(f"wrote {args.rows} rows to {args.out} ({args.out.stat().st_size / 1e9:.2f} GB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
