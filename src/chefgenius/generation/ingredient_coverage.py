"""Ingredient coverage: which requested ingredients a recipe uses, in its list and in its steps.

An ingredient counts as *used* in a part of the recipe when every word of its name appears there
after plural and variant normalisation ("onions" uses "onion"; "chicken breasts" uses "chicken"
and "tomatoes" uses "tomato"). A listed ingredient is *unrequested* when it matches no requested
ingredient and is not a pantry staple (:data:`PANTRY`); ``ingredient_precision`` is the share of
non-pantry listed ingredients that were requested.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chefgenius.data.recipe_format import ingredient_name, parse_recipe
from chefgenius.data.recipe_words import NAME_IGNORED_WORDS, WORD, normal_word

__all__ = ["normal_word"]  # re-exported: callers import it from here too

# Staples a recipe may add without being asked (names after normalisation, see ``name_words``).
PANTRY: frozenset[tuple[str, ...]] = frozenset(tuple(p.split()) for p in (
    "salt", "pepper", "black pepper", "salt and pepper", "water", "ice", "oil", "vegetable oil",
    "olive oil", "canola oil", "cooking oil", "cooking spray", "butter", "margarine", "sugar",
    "white sugar", "granulated sugar", "flour", "all purpose flour", "plain flour",
))



def name_words(text: str) -> tuple[str, ...]:
    """The normalised content words of an ingredient name ('2 c. chopped Onions' -> ('onion',))."""
    return tuple(normal_word(w) for w in WORD.findall(ingredient_name(text)) if w not in NAME_IGNORED_WORDS)


def text_words(text: str) -> set[str]:
    return {normal_word(w) for w in WORD.findall(text.lower())}


def is_used(ingredient: str, words: set[str]) -> bool:
    key = name_words(ingredient)
    return bool(key) and all(w in words for w in key)


def is_pantry(name: tuple[str, ...]) -> bool:
    return name in PANTRY


def matches_request(listed: tuple[str, ...], requested: list[tuple[str, ...]]) -> bool:
    """A listed ingredient answers a request when either name's words contain the other's."""
    have = set(listed)
    return any(r and (set(r) <= have or have <= set(r)) for r in requested)


@dataclass
class Coverage:
    """Coverage of one generated recipe; lists keep the requested spelling."""

    used: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    in_list: list[str] = field(default_factory=list)
    in_directions: list[str] = field(default_factory=list)
    unrequested: list[str] = field(default_factory=list)  # listed, not asked for, not pantry
    num_listed_non_pantry: int = 0

    @property
    def recall(self) -> float:
        n = len(self.used) + len(self.unused)
        return len(self.used) / n if n else 1.0

    def share(self, part: list[str]) -> float:
        n = len(self.used) + len(self.unused)
        return len(part) / n if n else 1.0

    @property
    def precision(self) -> float:
        n = self.num_listed_non_pantry
        return (n - len(self.unrequested)) / n if n else 1.0

    def to_dict(self) -> dict[str, object]:
        return {"used": self.used, "unused": self.unused, "in_list": self.in_list,
                "in_directions": self.in_directions, "unrequested": self.unrequested,
                "recall": round(self.recall, 4), "precision": round(self.precision, 4)}


def coverage(requested: list[str], text: str) -> Coverage:
    """How a generated recipe ``text`` (target format) covers the ``requested`` ingredients."""
    parsed = parse_recipe(text)
    everywhere = text_words(text)
    listed = [ingredient_name(line) for line in parsed.ingredients]
    list_words = text_words(" ".join(listed))
    step_words = text_words(" ".join(parsed.directions))
    out = Coverage()
    for ing in requested:
        (out.used if is_used(ing, everywhere) else out.unused).append(ing)
        if is_used(ing, list_words):
            out.in_list.append(ing)
        if is_used(ing, step_words):
            out.in_directions.append(ing)
    keys = [name_words(r) for r in requested]
    for name in listed:
        words = name_words(name)
        if not words or is_pantry(words):
            continue
        out.num_listed_non_pantry += 1
        if not matches_request(words, keys):
            out.unrequested.append(name)
    return out


def coverage_metrics(prompts: list[list[str]], texts: list[str]) -> dict[str, float]:
    """Mean coverage figures over generated recipes (see the module docstring)."""
    n = max(1, len(texts))
    covs = [coverage(p, t) for p, t in zip(prompts, texts)]
    return {"ingredient_recall": sum(c.recall for c in covs) / n,
            "ingredient_recall_list": sum(c.share(c.in_list) for c in covs) / n,
            "ingredient_recall_directions": sum(c.share(c.in_directions) for c in covs) / n,
            "ingredient_precision": sum(c.precision for c in covs) / n}
