"""How much of a padded batch is padding: the ceiling on what batching alone can gain.

    python bench/padding.py [--data PATH ...]

For each dataset (the bundled corpus, and the 1k RecipeNLG sample when ../shared/data has it),
with the throughput benchmark's lengths (48 prompt + 192 target tokens) and batch 8: the share of
pad tokens over 20 shuffled epochs with random batches (the Hugging Face Trainer's default) and
with chefgenius's length-grouped batches. Removing every pad token (perfect packing, free) can
make training at most ``padded / real`` times faster than a loop over random batches, if compute
scales with tokens; that bounds the "1.3x the HF Trainer's defaults" target of issue 10.
Writes bench/results/padding.{md,json}.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
from common import ROOT, train_config, write_result


def lengths_of(path: str | None) -> np.ndarray:
    from chefgenius.config import build_config
    from chefgenius.data.prepared import prepare_dataset
    from chefgenius.data.tokenization import default_cache_dir

    cfg = build_config(train_config("gpt2", "tiny", 1000, data={"path": path, "max_prompt_tokens": 48,
                                                                "max_target_tokens": 192, "val_fraction": 0.1}))
    data = prepare_dataset(cfg.data, is_seq2seq=False, tokenizer=None, vocab_size=1000,
                           cache_dir=default_cache_dir(None), log=lambda *a: None, progress=False)
    return np.asarray([len(data.train.example(i)[0]) for i in range(len(data.train))])  # tokens per sequence


def pad_share(lengths: np.ndarray, grouped: bool, epochs: int = 20) -> tuple[float, float]:
    from chefgenius.data.loader import ResumableSampler

    real = padded = 0
    for seed in range(epochs):
        sampler = ResumableSampler(lengths, batch_size=8, grad_accum=1, seed=seed, shuffle=True,
                                   group_by_length=grouped)
        for _ in range(sampler.steps_per_epoch):
            batch = lengths[sampler.next_step()[0]]
            real += int(batch.sum())
            padded += int(batch.max()) * len(batch)
    return 1 - real / padded, padded / real


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", nargs="*", default=None)
    args = ap.parse_args()
    sample = ROOT.parent / "shared" / "data" / "recipenlg-sample-1k.csv"
    paths = args.data if args.data is not None else [None, *([str(sample)] if sample.is_file() else [])]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CHEFGENIUS_CACHE"] = tmp
        for path in paths:
            lengths = lengths_of(path)
            (rand, rand_bound), (grp, grp_bound) = pad_share(lengths, False), pad_share(lengths, True)
            rows.append({"data": Path(path).name if path else "bundled corpus", "recipes": len(lengths),
                         "mean_tokens": round(float(lengths.mean()), 1), "max_tokens": int(lengths.max()),
                         "pad_share_random": round(rand, 4), "pad_share_grouped": round(grp, 4),
                         "ceiling_vs_random": round(rand_bound, 3), "ceiling_vs_grouped": round(grp_bound, 3)})
    command = "python bench/padding.py"
    lines = ["# Padding in a batch of 8 (the ceiling on batching gains)", "",
             f"`{command}`; sequence lengths of the throughput benchmark (48 + 192 tokens), 20 shuffled epochs. "
             "Ceiling: padded tokens / real tokens, the most a loop without any padding could gain.", "",
             "| data | recipes | mean tokens | max | pad share, random batches | pad share, length-grouped | "
             "ceiling vs random | ceiling vs grouped |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['data']} | {r['recipes']} | {r['mean_tokens']} | {r['max_tokens']} | "
              f"{r['pad_share_random']:.1%} | {r['pad_share_grouped']:.1%} | {r['ceiling_vs_random']}x | "
              f"{r['ceiling_vs_grouped']}x |" for r in rows]
    write_result("padding", lines, {"command": command, "rows": rows})


if __name__ == "__main__":
    main()
