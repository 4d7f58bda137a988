"""Build a RecipeNLG-shaped CSV of any size from the 1k sample, for benchmarks (never committed as data).

    python scripts/make_big_recipenlg.py --rows 2231142 --out /tmp/recipenlg-2.2m.csv

Rows are copies of the sample's rows with the copy number in the title, so every row is a
distinct recipe (de-duplication keeps them all) and the text statistics are RecipeNLG's.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

DEFAULT_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "recipenlg-sample-1k.csv"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_231_142)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE)
    args = ap.parse_args()
    if not args.sample.is_file():
        print(f"error: {args.sample} does not exist (pass --sample PATH to a RecipeNLG CSV)", file=sys.stderr)
        return 2
    with args.sample.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    title = header.index("title")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for i in range(args.rows):
            row = list(rows[i % len(rows)])
            row[0] = str(i)
            row[title] = f"{row[title]} {i // len(rows)}"
            writer.writerow(row)
    print(f"wrote {args.rows} rows to {args.out} ({args.out.stat().st_size / 1e9:.2f} GB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
