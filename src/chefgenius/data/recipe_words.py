"""The one way recipe text is split into words, for every check that reads recipes.

Coverage (which ingredients a recipe uses), the recipe checks (repeated lines, looping steps, title
fit), the decoding guard and the title vocabulary all compare words; they must agree on what a word
is and on its singular form, or a check would flag what the guard allowed.
"""

from __future__ import annotations

import re

WORD = re.compile(r"[a-z]+")  # a word of lower-cased recipe text (digits and punctuation are not words)
# Small words that carry no food: skipped when a sentence's opening or a step's content is compared.
FILLER_WORDS = frozenset("a an and the of in to with or on until for at into".split())
# Words of an ingredient name that name no food ("salt and pepper to taste").
NAME_IGNORED_WORDS = frozenset({"and", "or", "of", "the", "a", "an", "to", "for", "with", "in", "taste"})


def words(text: str) -> list[str]:
    """The words of ``text``, lower-cased, in order."""
    return WORD.findall(text.lower())


def normal_word(word: str) -> str:
    """Singular form by simple English rules: berries -> berry, tomatoes -> tomato, dishes -> dish."""
    w = word.lower()
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith(("oes", "ches", "shes", "xes", "sses")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def normal_words(text: str) -> list[str]:
    """The words of ``text`` in their singular forms, in order."""
    return [normal_word(w) for w in words(text)]
