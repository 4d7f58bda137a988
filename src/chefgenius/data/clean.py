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
from dataclasses import dataclass, field

from chefgenius.config import QualityConfig
from chefgenius.data.sources import Recipe, RowError

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


# ASCII text normalises without NFKC or regexes: every ASCII character is NFKC-stable, and the ones
# that are neither \w nor \s become spaces in one translate (``str.split`` splits on \s, as _WS does).
_ASCII_TO_SPACE = str.maketrans({c: " " for c in map(chr, range(128)) if not re.fullmatch(r"[\w\s]", c)})


def normalise_text(text: str) -> str:
    if text.isascii():
        return " ".join(text.lower().translate(_ASCII_TO_SPACE).split())
    text = unicodedata.normalize("NFKC", text).lower()
    return _WS.sub(" ", re.sub(r"[^\w\s]", " ", text)).strip()


def content_hash(recipe: Recipe) -> str:
    """Hash of the normalised title, ingredients and directions: identity for split and dedupe.

    Equal to hashing ``"\\x1f".join([n(title), *map(n, ingredients), "\\x1e", *map(n, directions)])``
    with ``n = normalise_text``, computed a block of lines at a time (the equality is tested)."""
    head, tail = (recipe.title, *recipe.ingredients), recipe.directions
    joined = _normalised_block(head) + b"\x1f\x1e" + (b"\x1f" + _normalised_block(tail) if tail else b"")
    return hashlib.sha256(joined).hexdigest()


# normalise_text over many lines at once, NUL between them: NUL is no \\w and no \\s, has no
# compatibility decomposition and composes with nothing (NFKC and lower() act on each line as if
# alone), so only the spaces beside each NUL need stripping. A line that holds NUL itself goes alone.
_ASCII_BLOCK = bytes(b if (b == 0 or re.fullmatch(r"\w", chr(b).lower())) else 32 for b in range(256))
# The same for UTF-8 bytes of text whose non-ASCII characters are all word characters: those bytes stay.
_UTF8_BLOCK = _ASCII_BLOCK[:128] + bytes(range(128, 256))
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def _normalised_block(lines: tuple[str, ...]) -> bytes:
    text = "\x00".join(lines)
    if text.count("\x00") != len(lines) - 1:
        return b"\x1f".join(normalise_text(x).encode() for x in lines)
    if text.isascii():
        data = text.encode().lower().translate(_ASCII_BLOCK)
    else:
        # NFKC and lower() as normalise_text; then each distinct non-ASCII character that is no word
        # character becomes a space, and the bytes of the rest pass the ASCII table untouched.
        text = unicodedata.normalize("NFKC", text).lower()
        for c in set(_NON_ASCII.findall(text)):
            if not _WORD_CHAR.match(c):
                text = text.replace(c, " ")
        data = text.encode().translate(_UTF8_BLOCK)
    # Only spaces and NULs remain between words: split() collapses the runs and strips the ends.
    return b" ".join(data.split()).replace(b" \x00", b"\x00").replace(b"\x00 ", b"\x00").replace(b"\x00", b"\x1f")


_DIGIT = re.compile(r"\d")
_WORD_CHAR = re.compile(r"\w")
# Any line of a newline-joined block is_section_header() could accept (lines stripped, no newline in them).
_HEADER_LINE = re.compile(r"^(?:[^\d\n]{0,39}:|" + _SECTION_WORD.pattern + r")$", re.MULTILINE | re.IGNORECASE)


def is_section_header(line: str) -> bool:
    """'Filling', 'For the crust:', 'Cake:' are headers; 'hot sauce' and 'pie crust' are ingredients."""
    text = line.strip()
    if text.endswith(":") and len(text) <= 40 and not _DIGIT.search(text):
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


def _respace_line(line: str, counts: Counter) -> str:
    return _WS.sub(" ", line).strip(" ")  # _repair_line of a line without !!! runs, emoticons or emoji


def _strip_only(line: str, counts: Counter) -> str:
    return line.strip(" ")


_NEEDS_RESPACING = re.compile(r"\s{2,}|[^\S ]")


def repair(recipe: Recipe, counts: Counter, needs: bool | None = None, *, junk_free: bool = False) -> Recipe:
    """Strip fixable junk: !!!! runs, emoticons, section headers listed as ingredients, empty steps.

    ``needs=False`` says the caller has proved no line needs more than stripping, ``junk_free`` that
    no line holds a !!! run, an emoticon or an emoji (:func:`clean_rows`); the result is the same."""
    if needs is None:
        joined = "\x00".join((recipe.title, *recipe.ingredients, *recipe.directions))
        needs = bool((_NEEDS_RESPACING if junk_free else _NEEDS_REPAIR).search(joined))
    elif not needs and not _HEADER_LINE.search("\n".join(recipe.ingredients)) and \
            all(map(_WORD_CHAR.search, recipe.directions)):
        return recipe  # the caller proved every line stripped, non-empty and single-spaced: nothing to do
    fix = (_respace_line if junk_free else _repair_line) if needs else _strip_only
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
        if not line or not _WORD_CHAR.search(line):
            counts["empty_steps"] += 1
        else:
            directions.append(line)
    return Recipe(title, tuple(ingredients), tuple(directions), recipe.quality_score, recipe.source_row, recipe.ner)


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
    """Validate, repair and score one row (no de-duplication); counts what happened in ``report``.

    The definition; :func:`clean_rows` gives the same for a batch of rows, faster."""
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
    return _kept_or_dropped(row, fixed, score, cfg, report)


def _kept_or_dropped(row: Recipe, fixed: Recipe, score: float, cfg: QualityConfig, report: CleanReport
                     ) -> Recipe | None:
    if score < cfg.min_quality:
        report.drop("low_quality", f"{excerpt(row)} score={score:.2f}")
        return None
    return Recipe(fixed.title, fixed.ingredients, fixed.directions, score, fixed.source_row, fixed.ner)


# ----- the prefilter: one RE2 pass over a batch of rows ------------------------------------------------
# A superset of every pattern above, for Arrow's RE2 kernels: rows it does not match cannot match any
# of them, so they skip the Python regexes. Superset by construction: lookarounds are dropped, word
# boundaries are ASCII ones (any non-ASCII neighbour counts as a boundary, which only flags more), and
# letters carry the non-ASCII characters Python's IGNORECASE matches them with.
_PY_SPACE = "".join(c for c in map(chr, range(0x3001)) if c.isspace())  # str.isspace == re's \s
_FOLDS = {"i": "İı", "k": "\u212a", "s": "ſ"}  # re.IGNORECASE's non-ASCII matches of ASCII letters


def _re2_class(chars: str) -> str:
    return "[" + "".join(f"\\x{{{ord(c):x}}}" for c in chars) + "]"


def _re2_words(words: Iterable[str], *, bounded: bool = True) -> str:
    """Python's ``\\b(?:w1|w2)\\b`` under IGNORECASE (``bounded=False``: without the ``\\b``), widened for RE2.

    A ``\\b`` next to a word character becomes "start, end or an ASCII non-word character" (a
    non-ASCII neighbour may be a Python word character: counting it as a boundary only flags more);
    a ``\\b`` next to a non-word character is dropped."""
    def letter(c: str) -> str:
        if c.isascii() and c.isalpha():
            return _re2_class(c.lower() + c.upper() + _FOLDS.get(c.lower(), ""))
        return _re2_class(c)

    alts = []
    for w in words:
        if not w:
            continue
        left = bounded and bool(re.fullmatch(r"\w", w[0]))
        right = bounded and bool(re.fullmatch(r"\w", w[-1]))
        alts.append((r"(?:^|[^A-Za-z0-9_])" if left else "") + "".join(map(letter, w)) +
                    (r"(?:$|[^A-Za-z0-9_])" if right else ""))
    return "|".join(alts)


@functools.lru_cache(maxsize=8)
def _flag_patterns(junk_words: tuple[str, ...]) -> tuple[str, str, str] | None:
    """Supersets for RE2 of what repair() changes, of the junk quality_score() reads in the original
    lines (!!! runs, emoticons, emoji), and of what it penalises in the repaired text."""
    if any(not w.isascii() for w in junk_words):  # a non-ASCII word could fold onto ASCII text: no prefilter
        return None
    space = _re2_class(_PY_SPACE)
    junk_parts = [
        r"!!!|\?\?\?",  # _BANG_RUN
        r"[:;=8][-']?[()\[\]DPpOo3/\\|*]|<3|\^_\^|x-?D",  # _EMOTICON without its lookarounds
        r"[\x{1F300}-\x{1FAFF}\x{2600}-\x{27BF}]",  # _EMOJI
    ]
    repair_parts = [
        *junk_parts,
        _re2_class(_PY_SPACE.replace(" ", "")) + "|" + space + space,  # whitespace _repair_line collapses
        r"^ | $",  # with the double space above: some line is empty or not stripped (repair()'s fast path)
    ]
    quality_parts = [
        _re2_words(["http", "www"], bounded=False),  # _URL
        _re2_words(["i", "my", "we", "our", "me"]),  # _FIRST_PERSON; also the first word of _COMMENTARY's pairs
        _re2_words(["enjoy", "delicious", "review", "reviews", "reviewer", "this recipe"]),  # _COMMENTARY
        r"[A-Z]{4}",  # _SHOUT
        *([_re2_words(junk_words)] if any(junk_words) else []),
    ]
    return tuple("|".join(f"(?:{p})" for p in parts) for parts in (repair_parts, junk_parts, quality_parts))


def _matches(recipes: list[Recipe], pattern: str) -> list[bool]:
    """Whether ``pattern`` (RE2) matches each recipe's lines joined by spaces: one Arrow kernel call."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not recipes:
        return []
    texts = pa.array([" ".join((r.title, *r.ingredients, *r.directions)) for r in recipes], type=pa.large_string())
    return pc.match_substring_regex(texts, pattern).to_pylist()


def clean_rows(rows: list[Recipe | RowError], cfg: QualityConfig, report: CleanReport) -> list[Recipe | None]:
    """:func:`clean_one` of each row, with the same results and the same report (counts, examples, order).

    Two RE2 passes decide which rows need the Python regexes: one over the rows as read (may repair
    change it? may it hold junk the score reads there?), one over the rows repair changed (may the
    score penalise what is left?). A row no pattern can match skips them: most rows of a real corpus."""
    patterns = _flag_patterns(tuple(cfg.junk_words))
    if patterns is None:
        return [clean_one(row, cfg, report) for row in rows]
    recipes = [row for row in rows if isinstance(row, Recipe)]
    may_repair, has_junk, may_penalise = (_matches(recipes, p) for p in patterns)
    # Repairs first, in row order (the report's repair counts are kept in that order).
    fixed: list[Recipe | None] = []
    untouched: list[bool] = []
    k = 0
    for row in rows:
        if isinstance(row, RowError):
            fixed.append(None)
            untouched.append(False)
            continue
        f = repair(row, report.repaired, needs=None if may_repair[k] else False, junk_free=not has_junk[k])
        fixed.append(f)
        # Not flagged and no line removed: the repaired lines are the lines read.
        untouched.append(not may_repair[k] and len(f.ingredients) == len(row.ingredients) and
                         len(f.directions) == len(row.directions))
        k += 1
    recheck = [j for j, row in enumerate(rows) if fixed[j] is not None and not untouched[j] and
               row.quality_score is None and _hard_rule(fixed[j], cfg) is None]
    penalised_after_repair = dict(zip(recheck, _matches([fixed[j] for j in recheck], patterns[2])))
    # Then drops and scores, in row order (the report's examples are the first ones of each reason).
    out: list[Recipe | None] = []
    k = 0
    for j, row in enumerate(rows):
        report.num_read += 1
        if isinstance(row, RowError):
            report.drop(f"malformed: {row.reason}", f"row {row.row}: {row.excerpt!r}")
            out.append(None)
            continue
        f, junk, penalise = fixed[j], has_junk[k], may_penalise[k]
        k += 1
        reason = _hard_rule(f, cfg)
        if reason:
            report.drop(reason, excerpt(row))
            out.append(None)
            continue
        score = row.quality_score
        if score is None:
            could = penalise if untouched[j] else junk or penalised_after_repair[j]
            score = quality_score(f, cfg.junk_words, row) if could else 1.0
        out.append(_kept_or_dropped(row, f, score, cfg, report))
    return out


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
    if max(map(len, (*recipe.ingredients, *recipe.directions)), default=0) > cfg.max_line_chars:
        return "line_too_long"
    total = len(recipe.title) + sum(map(len, recipe.ingredients)) + sum(map(len, recipe.directions))
    if total > cfg.max_total_chars:
        return "too_long"
    return None
