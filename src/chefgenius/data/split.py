"""Deterministic, stable train/validation split and the training-set fingerprint.

A recipe's side is decided by a hash of (split seed, its normalised content) alone, so file order
does not matter and adding recipes never moves existing ones. Each side is sorted by content hash,
which makes the sample indices (and so the data order) independent of file order too.
"""

from __future__ import annotations

import hashlib

from chefgenius.data.clean import content_hash
from chefgenius.data.sources import Recipe


def is_validation(digest: str, seed: int, val_fraction: float) -> bool:
    h = hashlib.sha256(f"{seed}:{digest}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < val_fraction


def split_recipes(recipes: list[Recipe], seed: int, val_fraction: float) -> tuple[list[Recipe], list[Recipe]]:
    keyed = sorted(((content_hash(r), r) for r in recipes), key=lambda x: x[0])
    train = [r for d, r in keyed if not is_validation(d, seed, val_fraction)]
    val = [r for d, r in keyed if is_validation(d, seed, val_fraction)]
    return train, val


def fingerprint(recipes: list[Recipe]) -> str:
    """Identity of a recipe set in order; recorded by every run and checked on resume."""
    h = hashlib.sha256()
    for r in recipes:
        h.update(content_hash(r).encode())
        h.update("|".join(r.ner).encode())  # NER shapes the prompt, so it is part of the identity
    return h.hexdigest()[:16]
