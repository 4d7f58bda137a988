"""The words a model's titles may use: those of the titles it was trained on, kept with its tokenizer.

A tiny model spells titles it never saw ("Pushel", "Sandwich onar"); no rule about food words can tell
a non-word from a rare dish, but the training titles can. The words of the training split's titles
(those of the recipes the tokenizer is trained on) are written beside the tokenizer as
:data:`FILE`, travel with it into every checkpoint and ``final/``, and RecipeGuard lets a title word
be written only while it can still become one of them or of the request's. A tokenizer without the
file (a hub model, an older run) leaves titles to the other rules.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from chefgenius.data.recipe_format import TITLE_LABEL
from chefgenius.data.recipe_words import WORD
from chefgenius.errors import ModelLoadError

FILE = "title_words.json"
MAX_WORDS = 50_000  # the most frequent title words kept (the 2.2M-row corpus has more, mostly typos)
_ATTRIBUTE = "chefgenius_title_words"


def words_of(text: str) -> list[str]:
    """Title words as the guard sees them: runs of letters, lower-cased ("Mom's" -> mom, s)."""
    return WORD.findall(text.lower())


def title_of(target: str) -> str:
    """The title of a formatted recipe (its first line, without the label)."""
    first = target.split("\n", 1)[0]
    return first[len(TITLE_LABEL):] if first.startswith(TITLE_LABEL) else ""


def collect(targets: Iterable[str]) -> tuple[str, ...]:
    """The words of these recipes' titles, the :data:`MAX_WORDS` most frequent, sorted."""
    counts = Counter(w for t in targets for w in words_of(title_of(t)))
    return tuple(sorted(w for w, _ in counts.most_common(MAX_WORDS)))


def attach(tokenizer: Any, words: Iterable[str] | None) -> Any:
    if words is not None:
        setattr(tokenizer, _ATTRIBUTE, tuple(sorted(set(words))))
    return tokenizer


def of(tokenizer: Any) -> tuple[str, ...] | None:
    """The sorted title words a tokenizer carries (None: it carries none)."""
    return getattr(tokenizer, _ATTRIBUTE, None)


def save(directory: Path, words: Iterable[str] | None) -> None:
    if words is not None:
        (Path(directory) / FILE).write_text(json.dumps({"title_words": sorted(set(words))}))


def load(directory: Path) -> tuple[str, ...] | None:
    path = Path(directory) / FILE
    if not path.is_file():
        return None
    try:
        words = json.loads(path.read_text())["title_words"]
        if not isinstance(words, list) or not all(isinstance(w, str) and WORD.fullmatch(w) for w in words):
            raise ValueError("not a list of lower-case words")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"{path} is not a title-word list ({err}); delete it to generate without "
                             "the title vocabulary, or copy it again from the run it came from") from None
    return tuple(sorted(set(words)))
