"""From a data config to clean, split recipes in memory, with their fingerprints.

The reference path: training and evaluation use the prepared dataset (``prepared.py``), and the
equivalence tests check that it yields the same recipes, order, token ids and fingerprints as this.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import DataConfig
from .clean import CleanReport, clean_recipes
from .sources import DataError, Recipe, read_source
from .split import fingerprint, split_recipes


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
