"""Decoding that cannot write what a cook would not read twice (a transformers ``LogitsProcessor``).

At each new token the text written so far is decoded and the best-scored candidates are checked;
a candidate is forbidden (its score set to -inf) when it would

- **copy an earlier ingredient line** past its quantity: once the current line, with the candidate,
  is the start of an earlier line and has reached the ingredient's name ("1 cup" may be written
  again, "1 cup s..." after "1 cup sugar" may not); nor list an ingredient a second time in another
  quantity ("1 can soup" ... "1/2 c. soup": 4.8% of real recipes do, for a topping, and a weak model
  does it in most); nor end a line that names nothing ("- 4 cups cooked");
- **repeat a sentence of the directions**: end a sentence equal to an earlier one, copy the first
  four words of an earlier sentence, or open a third sentence with the same three words ("Add rice
  and onion. ... Add rice and cubes. ... Add rice and" no more) or the same two content words ("Add
  rice. ... Add the rice to ... Add rice" no more);
- **break the step numbering**: a number opening a sentence in the directions must be the next step's,
  and a new line of the directions starts with it ("8. " and nothing else: not "8 of rice");
- **end a step unfinished**: a step ends (new line or end of text) only after a sentence of its own
  has ended ("8." alone or "Add rice and" then a new line is not a step);
- **make a step mostly one word**: a word that would be more than half of the step's words;
- **repeat itself within a sentence**: a pair of content words twice in one sentence ("soup mix and
  soup mix"), a food word a third time ("cocoa, cocoa, margarine, cocoa"), a food word right after
  itself across punctuation or small words ("Add rice, rice." "rice to rice": recipe_checks.food_twice_in_a_row)
  or any word of three letters or more right after itself ("chopped chopped", in the list too); in a
  line of the list, a pair of content words twice ("zucchini, drained spinach, drained spinach");
- **open a second ingredient inside a line**: "- 1/2 c. self- 1/2 c. butter" (a dash then a space
  within a line is a bullet that lost its new line);
- **leave a parenthesis unmatched**: close one its line never opened ("- 1/2 oz.) cans") or end a
  line with one open ("- 1/2 c. pork roast (I use");
- **title the dish with a non-word**: a title word that cannot become a word of the training titles
  (:mod:`title_words`, kept with the tokenizer) or of the request ("Pushel", "Sandwich onar");
- **give the dish a food it will not have**: a food word of the title (recipe_checks.FOOD_WORDS) that
  none of the requested ingredients names ("Peach Cobbler" from flour, sugar, butter), when they are known;
- **cook with what was never listed**: a food word in the directions that no ingredient line names
  ("Beat in a pumpkin": an "extra item" of recipe_checks; "the meat" after ground chuck and "Cream
  butter and sugar" are not), the requested ingredients aside (forbidding
  those where the list forgot one cost ingredient recall 0.77 -> 0.71 on the held-out prompts).

and it keeps **the layout** the parser reads (where the tokenizer keeps new lines): a title with a
word in it, then ``Ingredients:``, lines that open with ``- `` (at most :data:`MAX_INGREDIENTS`),
then ``Directions:`` and numbered steps; the text ends only after a finished step. Where none of
the best-scored candidates fits the layout, the text it requires is forced (its first token).

The checks are pure functions of the text so far, so decoding stays deterministic per seed, and
they only remove candidates, so a model that writes sound recipes decodes exactly as before.
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch

from chefgenius.data import title_words
from chefgenius.data.recipe_format import (
    _QUANTITY,
    DIRECTIONS_LABEL,
    INGREDIENTS_LABEL,
    TITLE_LABEL,
    _split_numbered,
    ingredient_name,
)
from chefgenius.data.recipe_words import FILLER_WORDS, WORD, normal_word, words
from chefgenius.generation.recipe_checks import (
    DISH_WORDS,
    FOOD_WORDS,
    cream_verb_aside,
    food_twice_in_a_row,
    ingredient_key,
    listed_foods,
    sentence_opening,
)

CANDIDATES = 40  # the best-scored tokens checked at each step (greedy takes the first allowed one)
MAX_INGREDIENTS = 20  # lines of the list before the directions must begin
MAX_TITLE_WORDS = 8  # words of the title before its line must end
_TITLE_SMALL_WORDS = frozenset("a an and or of with in on the for to au de la".split())
_SENTENCE_END = re.compile(r"[.!?]\s")
_GLUED_BULLET = re.compile(r"-\s")  # within an ingredient line (its own bullet is not part of it)
_TRAILING_NUMBER = re.compile(r"(?:^|[.!?:]\s*|\n\s*)(\d*)$")


def _norm(text: str) -> str:
    return " ".join(text.lower().replace(",", " , ").split())


class RecipeGuard:
    """``start``: the position in ``input_ids`` where the recipe text begins; ``prefix_text``: what of
    the recipe the prompt already holds (the title label, or a given title); ``ingredients``: the
    requested ones (the title's food words must be among them; none given: the title is left alone)."""

    def __init__(self, tokenizer: Any, *, start: int, prefix_text: str = "", ingredients: list[str] | tuple = ()
                 ) -> None:
        self.tokenizer, self.start, self.prefix_text = tokenizer, start, prefix_text
        self.eos = tokenizer.eos_token_id
        self.asked_foods = listed_foods(" ".join(ingredients))
        self.title_foods = (self.asked_foods | DISH_WORDS) if ingredients else None
        known = title_words.of(tokenizer)
        self.title_vocab = None if known is None else \
            tuple(sorted(set(known) | set(title_words.words_of(" ".join(ingredients)))))
        self._pieces: dict[int, str] = {}
        # Byte-level BPE decodes token by token (a piece is the same alone as in context); other
        # tokenizers (sentencepiece drops a word's leading space alone) decode each candidate in context.
        probe = tokenizer.encode(" Add 2 cups of rice, then stir.\n- 1 egg", add_special_tokens=False)
        self._by_piece = "".join(tokenizer.decode([t]) for t in probe) == tokenizer.decode(probe)
        # The layout rules need new lines; T5's sentencepiece turns them into spaces.
        self._lines = "\n" in tokenizer.decode(probe, skip_special_tokens=True)

    def _candidate_text(self, generated: list[int], text: str, token: int) -> str:
        if token == self.eos:
            return "\n"  # the end of the text ends the step being written, as a new line does
        if self._by_piece:
            piece = self._pieces.get(token)
            if piece is None:
                piece = self._pieces[token] = self.tokenizer.decode([token], skip_special_tokens=True)
            return piece
        full = self.tokenizer.decode([*generated, token], skip_special_tokens=True)
        return full[len(text):] if full.startswith(text) else full

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        for row in range(input_ids.shape[0]):
            self._guard_row(input_ids[row, self.start:].tolist(), scores[row])
        return scores

    def _guard_row(self, generated: list[int], scores: torch.Tensor) -> None:
        written = self.tokenizer.decode(generated, skip_special_tokens=True)
        text = self.prefix_text + written
        check = _checker(text, self.title_foods, self.asked_foods, self.title_vocab)
        layout = _layout(text) if self._lines else None
        if check is None and layout is None:
            return
        in_steps = DIRECTIONS_LABEL in text
        line = text.rsplit("\n", 1)[-1]
        open_parens = line.count("(") - line.count(")")

        def refused(token: int) -> bool:
            if token == self.eos and self._lines:
                if not in_steps:
                    return True  # a recipe does not end before its directions
                if text.endswith("\n"):
                    return False  # after a finished step (a new line needs one)
            piece = self._candidate_text(generated, written, token)
            if layout is not None and not _fits(layout, piece):
                return True
            if self._lines and _breaks_parentheses(open_parens, piece):
                return True
            return check is not None and check(piece)

        best = torch.topk(scores, min(CANDIDATES, scores.shape[-1])).indices.tolist()
        banned = [t for t in best if refused(t)]
        if banned and len(banned) < len(best):  # never forbid every candidate
            scores[banned] = float("-inf")
        elif banned and layout is not None:  # nothing fits: write what the layout requires
            forced = self._forced(layout)
            if forced:
                keep = max(forced, key=lambda t: float(scores[t]))
                kept = scores[keep].clone()
                scores[:] = float("-inf")
                scores[keep] = kept

    def _forced(self, layout: tuple[str, tuple[str, ...]]) -> list[int]:
        line, starts = layout
        out = []
        for start in starts:
            ids = self.tokenizer.encode(start[len(line):], add_special_tokens=False)
            if ids:
                out.append(ids[0])
        return out


def _layout(text: str) -> tuple[str, tuple[str, ...]] | None:
    """The line being written and what it must start with, where the section requires it (None: free)."""
    d = text.find(DIRECTIONS_LABEL)
    i = text.find(INGREDIENTS_LABEL)
    if d >= 0:
        block = text[d + len(DIRECTIONS_LABEL):]
        if "\n" not in block:
            return block, ("\n",)  # the label's line ends
        line = block.rsplit("\n", 1)[-1]
        steps = _split_numbered(block) if re.search(r"(?:^|\s)1\.\s", block) else []
        return (line, (f"{len(steps) + 1}. ",)) if len(line) < 4 else None
    if i >= 0:
        block = text[i + len(INGREDIENTS_LABEL):]
        if "\n" not in block:
            return block, ("\n",)
        line = block.rsplit("\n", 1)[-1]
        if len(line) >= len(DIRECTIONS_LABEL) + 1:
            return None  # past the opening of the line: its content is free
        listed = len(re.findall(r"(?:^|\n)- ", block))
        return line, ("- ",) * (listed < MAX_INGREDIENTS) + (DIRECTIONS_LABEL,) * (listed > 0)
    t = text.find(TITLE_LABEL)
    if t >= 0:
        title = text[t + len(TITLE_LABEL):]
        if "\n" in title:
            return title.rsplit("\n", 1)[-1], (INGREDIENTS_LABEL,)
        if len(WORD.findall(title.lower())) >= MAX_TITLE_WORDS and not re.search(r"[A-Za-z]$", title):
            return title, (title + "\n",)
    return None


def _breaks_parentheses(depth: int, piece: str) -> bool:
    """Whether ``piece`` closes a parenthesis its line never opened ("- 1/2 oz.) cans"), or ends the line
    with one still open ("- 1/2 c. pork roast (I use"); ``depth``: parentheses the line holds open."""
    for ch in piece:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                return True
        elif ch == "\n":
            return depth > 0
    return False


def _fits(layout: tuple[str, tuple[str, ...]], piece: str) -> bool:
    line, starts = layout
    new = line + piece
    return any(s.startswith(new) or new.startswith(s) for s in starts)


def _checker(text: str, title_foods: frozenset[str] | None = None, asked: frozenset[str] = frozenset(),
             title_vocab: tuple[str, ...] | None = None):
    """A predicate over the next piece of text, for the section being written (None: nothing to check).
    ``asked``: food words of the request, which the steps may use even where the list forgot them;
    ``title_vocab``: the sorted words a title may use (None: any)."""
    d = text.find(DIRECTIONS_LABEL)
    i = text.find(INGREDIENTS_LABEL)
    if d >= 0:
        listed = listed_foods(text[i + len(INGREDIENTS_LABEL):d]) | asked if 0 <= i < d else None
        return _directions_checker(text[d + len(DIRECTIONS_LABEL):], listed)
    if i >= 0:
        return _ingredients_checker(text[i + len(INGREDIENTS_LABEL):])
    t = text.find(TITLE_LABEL)
    if t >= 0:
        return _title_checker(text[t + len(TITLE_LABEL):], title_foods, title_vocab)
    return None


def _names_a_missing_food(text: str, piece: str, allowed: frozenset[str]) -> bool:
    """Whether ``piece`` writes a food word (whole or begun in ``text``) that is not ``allowed``."""
    partial = re.search(r"[A-Za-z]*$", text).group(0)  # the word being written, if any
    tail = text[max(0, len(text) - len(partial) - 8):len(text) - len(partial)]  # is it a sentence's first?
    for word in WORD.findall(cream_verb_aside(tail + partial + piece)[len(tail):].lower()):
        w = normal_word(word)
        # a word still being written may yet become an allowed one ("pea" of "peanut")
        if w in FOOD_WORDS and w not in allowed and not any(a.startswith(word) for a in allowed):
            return True
    return False


def _outside(vocab: tuple[str, ...], text: str, ended: bool) -> bool:
    """Whether ``text`` (from the start of a word) holds a word ``vocab`` does not; its last word, unless
    ``ended``, only has to begin one."""
    for m in WORD.finditer(text.lower()):
        word = m.group(0)
        k = bisect.bisect_left(vocab, word)  # the first known word >= this one: it, or one it begins
        if k == len(vocab) or not vocab[k].startswith(word):
            return True
        if (ended or m.end() < len(text)) and vocab[k] != word:
            return True
    return False


def _title_checker(title: str, allowed: frozenset[str] | None, vocab: tuple[str, ...] | None = None):
    """A title opens with a capital or a digit, has a word before its line ends, no sentence end and
    no word twice; with the requested ingredients known, its food words are among them; with a title
    vocabulary, its words are among those."""
    begun = bool(title.strip())
    partial = re.search(r"[A-Za-z]*$", title).group(0)
    before = len(WORD.findall(title[:len(title) - len(partial)].lower()))  # words the piece cannot touch

    def misfits(piece: str) -> bool:
        head = piece.split("\n", 1)[0]
        if not begun and head.strip() and not (head.strip()[0].isupper() or head.strip()[0].isdigit()):
            return True  # "Title: , cut into strips ...", "Title: and serve."
        if "\n" in piece and not re.search(r"[A-Za-z]", title + head):
            return True  # "Title:" and nothing
        if re.search(r"[.!?]", head):
            return True  # "Title: Pasta. Season with ..."
        words = WORD.findall((title + head).lower())
        if len(words) > MAX_TITLE_WORDS:
            return True
        # Title case: a word the piece begins opens with a capital, the small words of titles aside
        begins = re.findall(r"(?<![A-Za-z])[A-Za-z]+", (partial + head))[1 if partial else 0:] if head else []
        if any(w[0].islower() and w not in _TITLE_SMALL_WORDS for w in begins):
            return True  # "Creamy is tender"
        touched = before if head[:1].isalpha() else len(WORD.findall(title.lower()))
        if any(len(words[k]) > 2 and words[k] in words[:k] for k in range(touched, len(words))):
            return True  # "Grilled Grilled Grilled"
        if vocab is not None and _outside(vocab, partial + head, "\n" in piece):
            return True  # "Pushel", "Sandwich onar"
        return allowed is not None and _names_a_missing_food(title, piece, allowed)

    return misfits


def _ingredients_checker(block: str):
    if re.search(r"(?:^|\n)\s*-$", block):  # a bullet was just written; its space comes with the next piece
        block += " "
    parts = re.split(r"(?:^|\n|\s)-\s", block)
    # each earlier line with the length of its quantity ("1 c. " of "1 c. sugar"): a new line may copy
    # that much ("1 c." again), not what follows it
    earlier = [(line, len(_QUANTITY.match(line).group(0))) for line in (_norm(p) for p in parts[1:-1] if p.strip())]
    names = {ingredient_key(p) for p in parts[1:-1]} - {""}
    current = parts[-1]
    if "\n" in current or len(parts) < 2:
        return None
    glued_before = bool(_GLUED_BULLET.search(current))

    def copies_a_line(piece: str) -> bool:
        head = piece.split("\n", 1)[0]
        if not glued_before and _GLUED_BULLET.search(current + head):
            return True  # a bullet inside the line: "- 1/2 c. self- 1/2 c. butter"
        if "\n" in piece:  # a line ends: it must name something ("- 4 cups cooked" does not), and not again
            line = current + head
            return line.rstrip().endswith("-") or not ingredient_name(line) or ingredient_key(line) in names
        if _doubles_a_word(current, piece):
            return True
        if _repeats_a_pair(current, piece):
            return True  # "- 1 pkg. zucchini, drained spinach, drained spinach"
        new = _norm(current + piece)
        if new and ingredient_name(new) and any(line.startswith(new) and len(new) > q for line, q in earlier):
            return True
        # the same ingredient in another quantity ("1 can soup" ... "1/2 c. soup"): a word that ends
        # here might still go on ("cocoa" -> "cocoa butter"), so this forbids its one spelling only
        return ingredient_key(current + piece) in names

    return copies_a_line


def _doubles_a_word(text: str, piece: str) -> bool:
    """Whether ``piece`` writes a word of three letters or more right after itself ("chopped chopped")."""
    words = re.findall(r"[A-Za-z]+|[^A-Za-z\s]", (re.search(r"\S*\s*\S*\s*$", text).group(0) + piece).lower())
    return any(len(b) > 2 and a == b for a, b in zip(words, words[1:]))


def _repeats_a_pair(text: str, piece: str) -> bool:
    """Whether ``piece`` makes ``text`` say a pair of content words a second time."""
    before, after = _content_words(text), _content_words(text + piece)
    counts_before = Counter(zip(before, before[1:]))
    return any(n > 1 and n > counts_before[p] for p, n in Counter(zip(after, after[1:])).items())


def _mostly_one_word(words: list[str]) -> bool:
    return len(words) >= 4 and Counter(words).most_common(1)[0][1] * 2 > len(words)


def _content_words(text: str) -> list[str]:
    return [w for w in words(text) if w not in FILLER_WORDS]


def _food_counts(words: list[str]) -> Counter[str]:
    return Counter(w for w in map(normal_word, words) if w in FOOD_WORDS)


@dataclass(frozen=True)
class _Directions:
    """What the rules for the directions need to know about the text written so far, computed once
    per step of decoding; each rule below then judges one candidate piece against it."""

    block: str
    listed: frozenset[str] | None  # the food words of the ingredient list (None: no list to hold the steps to)
    next_step: int
    last: str  # the step being written
    line: str  # the line being written
    sentence: str  # the sentence being written ("" between sentences)
    earlier: frozenset[str]  # the earlier sentences, as their words
    openings: Counter  # first three words of the earlier sentences
    openings2: Counter  # first two content words of the earlier sentences
    number: re.Match | None  # a step number being written at the end of the block
    was_mostly_one: bool
    pairs_before: Counter
    foods_before: Counter
    words_before: Counter
    twice_before: int
    opening_before: tuple[str, ...]
    opens_a_step: bool  # "3." written, nothing of the step yet


def _directions(block: str, listed: frozenset[str] | None) -> _Directions:
    steps = _split_numbered(block) if re.search(r"(?:^|\s)1\.\s", block) else []
    last = steps[-1] if steps else ""
    if steps and not re.search(r"[.!?]\s*$", last):
        last = re.sub(r"\s\d+$", "", last)  # a step number being written belongs to the next step
    sentences = [s for step in steps[:-1] for s in re.split(r"[.!?]", step)] + re.split(r"[.!?]", last)[:-1]
    sentence = "" if re.search(r"[.!?]\s*$", last) else re.split(r"[.!?]", last)[-1]
    line = block.rsplit("\n", 1)[-1]  # how a new line opens: _layout
    before = _content_words(sentence)
    return _Directions(
        block=block, listed=listed, next_step=len(steps) + 1 if steps else 1, last=last, line=line,
        sentence=sentence, earlier=frozenset(" ".join(words(s)) for s in sentences if len(words(s)) >= 2),
        openings=Counter(tuple(words(s)[:3]) for s in sentences if len(words(s)) >= 3),
        openings2=Counter(o for o in map(sentence_opening, sentences) if len(o) == 2),
        number=_TRAILING_NUMBER.search(block), was_mostly_one=_mostly_one_word(_content_words(last)),
        pairs_before=Counter(zip(before, before[1:])), foods_before=_food_counts(before),
        words_before=Counter(w for w in before if len(w) > 2),
        twice_before=len(food_twice_in_a_row(sentence, ended=False)), opening_before=sentence_opening(sentence),
        opens_a_step=bool(re.fullmatch(r"\d+\.\s*", line)))


# The rules for the directions, in the order they are asked. Each returns True (the piece breaks the
# recipe), False (it is fine: ask no further rule) or None (no opinion).


def _opens_a_step_in_lower_case(d: _Directions, piece: str) -> bool | None:
    """A step opens with a capital, not with a lower-case list ("1. chicken, rice, onion")."""
    return True if d.opens_a_step and re.match(r"\s*[a-z]", piece) else None


def _ends_a_step_unfinished(d: _Directions, piece: str) -> bool | None:
    """A new line (or the end) after a step that has no sentence of its own ended."""
    if "\n" not in piece:
        return None
    step = re.sub(r"^\s*\d+\.\s*", "", d.line + piece.split("\n", 1)[0])
    return True if d.block.strip() and not re.search(r"[.!?]\s*$", step) else None


def _repeats_within_the_sentence(d: _Directions, piece: str) -> bool | None:
    """A pair of content words twice in one sentence ("soup mix and soup mix"), a food word or any
    other word of three letters or more three times ("cocoa, cocoa, margarine, cocoa") or a word
    right after itself."""
    head = re.split(r"[.!?]", piece)[0]
    after = _content_words(d.sentence + head)
    pairs = Counter(zip(after, after[1:]))
    repeats = (
        _doubles_a_word(d.block, head)
        or any(n > 1 and n > d.pairs_before[p] for p, n in pairs.items())
        or len(food_twice_in_a_row(d.sentence + head, ended=bool(re.search(r"[.!?\n]", piece)))) > d.twice_before
        or any(n > 2 and n > d.foods_before[w] for w, n in _food_counts(after).items())
        # any word of three letters or more a third time ("water, water, yeast, water", "stirring
        # occasionally, stirring often, stirring constantly"): 0.2% of real sentences do it
        or any(n > 2 and n > d.words_before[w] for w, n in Counter(w for w in after if len(w) > 2).items()))
    return True if repeats else None


def _names_a_food_not_listed(d: _Directions, piece: str) -> bool | None:
    return True if d.listed is not None and _names_a_missing_food(d.block, piece, d.listed) else None


def _breaks_the_numbering(d: _Directions, piece: str) -> bool | None:
    """Step numbers in order; None: the piece writes no step number."""
    if d.number is None:
        return None
    so_far = d.number.group(1)
    stripped = piece.strip()
    if stripped[:1].isdigit() and (not so_far or piece[:1].isdigit()):
        digits = re.match(r"\d*", so_far + stripped if so_far else stripped).group(0)
        return not str(d.next_step).startswith(digits)
    if so_far and piece.startswith("."):
        return so_far != str(d.next_step)
    return None


def _ends_an_earlier_sentence_again(d: _Directions, piece: str) -> bool | None:
    if not re.search(r"[.!?]", piece):
        return None
    return True if " ".join(words(d.sentence + re.split(r"[.!?]", piece)[0])) in d.earlier else None


def _copies_an_earlier_sentence(d: _Directions, piece: str) -> bool | None:
    joined = " ".join(words(d.sentence + piece))
    return True if len(joined.split()) >= 4 and any(s.startswith(joined) for s in d.earlier
                                                    if len(s.split()) >= 4) else None


def _opens_a_third_sentence_alike(d: _Directions, piece: str) -> bool | None:
    """A third sentence opening like two before it: the same three words ("Add rice and ..."), or the
    same two content words ("Add rice. ... Add the rice ... Add rice")."""
    opening = tuple(words(d.sentence + piece)[:3])
    if len(opening) == 3 and len(words(d.sentence)) <= 3 and d.openings[opening] >= 2:
        return True
    opens = sentence_opening(d.sentence + re.split(r"[.!?]", piece)[0])
    return True if len(opens) == 2 and opens != d.opening_before and d.openings2[opens] >= 2 else None


def _makes_the_step_mostly_one_word(d: _Directions, piece: str) -> bool | None:
    return not d.was_mostly_one and _mostly_one_word(_content_words(d.last + piece))


DIRECTION_RULES = (_opens_a_step_in_lower_case, _ends_a_step_unfinished, _repeats_within_the_sentence,
                   _names_a_food_not_listed, _breaks_the_numbering, _ends_an_earlier_sentence_again,
                   _copies_an_earlier_sentence, _opens_a_third_sentence_alike, _makes_the_step_mostly_one_word)


def _directions_checker(block: str, listed: frozenset[str] | None = None):
    """``listed``: the food words of the ingredient list (None: no list to hold the steps to)."""
    d = _directions(block, listed)

    def breaks(piece: str) -> bool:
        for rule in DIRECTION_RULES:
            verdict = rule(d, piece)
            if verdict is not None:
                return verdict
        return False

    return breaks
