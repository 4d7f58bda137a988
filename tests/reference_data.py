"""The in-memory reference path from a data config to clean, split, tokenised recipes.

Training and evaluation use the prepared dataset (chefgenius.data.prepared); the equivalence tests
check that it yields the same recipes, order, token ids and fingerprints as this plain path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from chefgenius.config import DataConfig
from chefgenius.data.clean import CleanReport, clean_recipes
from chefgenius.data.loader import TokenizedData
from chefgenius.data.recipe_format import recipe_to_example
from chefgenius.data.sources import DataError, Recipe, read_source
from chefgenius.data.split import fingerprint, split_recipes
from chefgenius.data.tokenization import encode_example


@dataclass
class PreparedData:
    train: list[Recipe]
    val: list[Recipe]
    report: CleanReport
    train_fingerprint: str
    val_fingerprint: str


def prepare_recipes(cfg: DataConfig) -> PreparedData:
    rows = read_source(cfg.path, cfg.format, cfg.hf_split)
    if cfg.max_recipes is not None:
        rows = (r for i, r in enumerate(rows) if i < cfg.max_recipes)
    kept, report = clean_recipes(rows, cfg.quality)
    source = cfg.path or "the bundled corpus"
    if not kept:
        raise DataError(
            f"no usable recipes in {source}: read {report.num_read}, dropped all "
            f"({', '.join(f'{k}: {v}' for k, v in report.dropped.most_common(3)) or 'file is empty'}); "
            "run 'chefgenius data check' on it"
        )
    train, val = split_recipes(kept, cfg.split_seed, cfg.val_fraction)
    if not train or not val:
        raise DataError(
            f"{source} has {len(kept)} usable recipes: too few for a train/validation split "
            f"with data.val_fraction={cfg.val_fraction}; add recipes or change the fraction"
        )
    return PreparedData(train, val, report, fingerprint(train), fingerprint(val))


def tokenize_recipes(recipes: list[Recipe], tokenizer: Any, *, is_seq2seq: bool, max_prompt_tokens: int,
                     max_target_tokens: int, mask_prompt: bool) -> TokenizedData:
    inputs, labels = [], []
    for r in recipes:
        prompt, target = recipe_to_example(r)
        ids, lab = encode_example(tokenizer, prompt, target, is_seq2seq=is_seq2seq,
                                  max_prompt_tokens=max_prompt_tokens, max_target_tokens=max_target_tokens,
                                  mask_prompt=mask_prompt)
        inputs.append(torch.tensor(ids, dtype=torch.int64))
        labels.append(torch.tensor(lab, dtype=torch.int64))
    return TokenizedData(inputs, labels)
