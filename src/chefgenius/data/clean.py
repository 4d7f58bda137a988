"""Validation, junk repair, quality scoring and de-duplication of recipes.

Every dropped row is counted under a reason with a few examples kept, so nothing vanishes
silently. Junk rules match whole words ("soften" is not "often").
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from ..config import QualityConfig
from .sources import Recipe, RowError

_BANG_RUN = re.compile(r"([!?])\1{2,}")
_EMOTICON = re.compile(r"(?<!\w)(?:[:;=8][-']?[()\[\]DPpOo3/\\|*]|<3|\^_\^|x-?D)(?!\w)")
_EMOJI = re.compile("[\U0001F300-\U0001FAFF\u2600-\u27BF]")
_SECTION_WORD = re.compile(
    r"(?:for\s+(?:the\s+)?)?(?:filling|crust|toppings?|sauce|glaze|frosting|icing|dressing|marinade|batter|"
    r"dough|garnish|streusel|syrup|base|meringue|assembly|optional)",
    re.IGNORECASE,
)
_FIRST_PERSON = re.compile(r"\b(?:i|i'm|i've|my|we|our|me)\b", re.IGNORECASE)
_COMMENTARY = re.compile(
    r"\b(?:enjoy|delicious|reviews?|reviewer|this recipe|my (?:family|kids|husband|wife|mom|mother)|"
    r"(?:i|we) (?:use|used|like|love|prefer|always|usually))\b",
    re.IGNORECASE,
)
_SHOUT = re.compile(r"\b[A-Z]{4,}\b")
_URL = re.compile(r"https?://|www\.", re.IGNORECASE)
_WS = re.compile(r"\s+")
# Anything _repair_line would change; one search over a whole recipe lets clean recipes skip it.
_NEEDS_REPAIR = re.compile("|".join([_BANG_RUN.pattern, _EMOTICON.pattern, _EMOJI.pattern, r"\s{2,}", r"[^\S ]"]))


@dataclass
class CleanReport:
    """Counts of what happened to each row, with up to ``max_examples`` examples per reason."""

    num_read: int = 0
    num_kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    repaired: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 3

    def drop(self, reason: str, excerpt: str) -> None:
        self.dropped[reason] += 1
        bucket = self.examples.setdefault(reason, [])
        if len(bucket) < self.max_examples:
            bucket.append(excerpt)

    @property
    def num_dropped(self) -> int:
        return sum(self.dropped.values())

    def to_dict(self) -> dict:
        return {
            "read": self.num_read,
            "kept": self.num_kept,
            "dropped": dict(self.dropped),
            "repaired": dict(self.repaired),
            "examples": self.examples,
        }

    @classmethod
    def from_dict(cls, d: dict) -> CleanReport:
        return cls(num_read=int(d["read"]), num_kept=int(d["kept"]), dropped=Counter(d["dropped"]),
                   repaired=Counter(d["repaired"]), examples={k: list(v) for k, v in d["examples"].items()})


def normalise_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return _WS.sub(" ", re.sub(r"[^\w\s]", " ", text)).strip()


def content_hash(recipe: Recipe) -> str:
    """Hash of the normalised title, ingredients and directions: identity for split and dedupe."""
    parts = [normalise_text(recipe.title), *map(normalise_text, recipe.ingredients), "\x1e",
             *map(normalise_text, recipe.directions)]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def is_section_header(line: str) -> bool:
    """'Filling', 'For the crust:', 'Cake:' are headers; 'hot sauce' and 'pie crust' are ingredients."""
    text = line.strip()
    if text.endswith(":") and len(text) <= 40 and not re.search(r"\d", text):
        return True
    return bool(_SECTION_WORD.fullmatch(text))


def _repair_line(line: str, counts: Counter) -> str:
    fixed = _BANG_RUN.sub(r"\1", line)
    if fixed != line:
        counts["exclamation_runs"] += 1
    no_emo = _EMOJI.sub("", _EMOTICON.sub("", fixed))
    if no_emo != fixed:
        counts["emoticons"] += 1
    return _WS.sub(" ", no_emo).strip(" ")


def _strip_only(line: str, counts: Counter) -> str:
    return line.strip(" ")


def repair(recipe: Recipe, counts: Counter) -> Recipe:
    """Strip fixable junk: !!!! runs, emoticons, section headers listed as ingredients, empty steps."""
    needs = _NEEDS_REPAIR.search("\x00".join((recipe.title, *recipe.ingredients, *recipe.directions)))
    fix = _repair_line if needs else _strip_only
    title = fix(recipe.title, counts)
    ingredients = []
    for line in recipe.ingredients:
        line = fix(line, counts)
        if not line:
            counts["empty_ingredients"] += 1
        elif is_section_header(line):
            counts["section_headers"] += 1
        else:
            ingredients.append(line)
    directions = []
    for line in recipe.directions:
        line = fix(line, counts)
        if not line or not re.search(r"\w", line):
            counts["empty_steps"] += 1
        else:
            directions.append(line)
    return replace(recipe, title=title, ingredients=tuple(ingredients), directions=tuple(directions))


@functools.lru_cache(maxsize=8)
def _junk_pattern(junk_words: tuple[str, ...]) -> re.Pattern | None:
    words = [w for w in junk_words if w]
    if not words:
        return None
    return re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)


def quality_score(recipe: Recipe, junk_words: Iterable[str], original: Recipe | None = None) -> float:
    """A score in [0, 1]; each kind of junk found costs a fixed amount. Explainable, not learned."""
    original = original or recipe
    raw = " ".join([original.title, *original.ingredients, *original.directions])
    text = " ".join([recipe.title, *recipe.ingredients, *recipe.directions])
    score = 1.0
    if _BANG_RUN.search(raw):
        score -= 0.2
    if _EMOTICON.search(raw) or _EMOJI.search(raw):
        score -= 0.2
    if _URL.search(text):
        score -= 0.3
    pattern = _junk_pattern(tuple(junk_words))
    if pattern is not None:
        score -= 0.15 * min(3, len(pattern.findall(text)))
    directions = " ".join(recipe.directions)
    score -= 0.1 * min(3, len(_FIRST_PERSON.findall(directions)))
    score -= 0.1 * min(3, len(_COMMENTARY.findall(directions)))  # chatter about the recipe, not steps
    if len(_SHOUT.findall(text)) >= 2:
        score -= 0.1
    return max(0.0, round(score, 4))


def excerpt(recipe: Recipe) -> str:
    return f"row {recipe.source_row}: {recipe.title[:60]!r}"


def clean_one(row: Recipe | RowError, cfg: QualityConfig, report: CleanReport) -> Recipe | None:
    """Validate, repair and score one row (no de-duplication); counts what happened in ``report``."""
    report.num_read += 1
    if isinstance(row, RowError):
        report.drop(f"malformed: {row.reason}", f"row {row.row}: {row.excerpt!r}")
        return None
    fixed = repair(row, report.repaired)
    reason = _hard_rule(fixed, cfg)
    if reason:
        report.drop(reason, excerpt(row))
        return None
    score = row.quality_score if row.quality_score is not None else quality_score(fixed, cfg.junk_words, row)
    if score < cfg.min_quality:
        report.drop("low_quality", f"{excerpt(row)} score={score:.2f}")
        return None
    return replace(fixed, quality_score=score)


def merge_report(into: CleanReport, part: CleanReport) -> None:
    """Add a chunk's report; examples keep the first ones in row order, so merging in order is deterministic."""
    into.num_read += part.num_read
    into.num_kept += part.num_kept
    into.dropped.update(part.dropped)
    into.repaired.update(part.repaired)
    for reason, excerpts in part.examples.items():
        bucket = into.examples.setdefault(reason, [])
        bucket.extend(excerpts[: max(0, into.max_examples - len(bucket))])


def clean_recipes(rows: Iterable[Recipe | RowError], cfg: QualityConfig) -> tuple[list[Recipe], CleanReport]:
    """Validate, repair, score and de-duplicate; return the kept recipes and the report."""
    report = CleanReport()
    seen: set[str] = set()
    kept: list[Recipe] = []
    for row in rows:
        recipe = clean_one(row, cfg, report)
        if recipe is None:
            continue
        if cfg.dedupe:
            digest = content_hash(recipe)
            if digest in seen:
                report.drop("duplicate", excerpt(recipe))
                continue
            seen.add(digest)
        kept.append(recipe)
    report.num_kept = len(kept)
    return kept, report


def _hard_rule(recipe: Recipe, cfg: QualityConfig) -> str | None:
    if not recipe.title:
        return "missing_title"
    if len(recipe.title) > cfg.max_title_chars:
        return "title_too_long"
    if len(recipe.ingredients) < cfg.min_ingredients:
        return "too_few_ingredients"
    if len(recipe.directions) < cfg.min_directions:
        return "too_few_directions"
    if any(len(x) > cfg.max_line_chars for x in (*recipe.ingredients, *recipe.directions)):
        return "line_too_long"
    total = len(recipe.title) + sum(map(len, recipe.ingredients)) + sum(map(len, recipe.directions))
    if total > cfg.max_total_chars:
        return "too_long"
    return None
