"""What a cook sees in a generated recipe that the structure score does not: pure functions, text in.

- a **duplicate ingredient line**: the same line twice in the list (after lower-casing and collapsing
  spaces and punctuation), e.g. "- 1 can salmon, drained" twice;
- a **repeated ingredient**: the same ingredient on two lines in any quantities ("1 can mushroom soup",
  "1/2 c. mushroom soup"); real recipes do it for a topping or a glaze (4.8% of the 1k sample);
- **looping directions**: the same sentence twice in the steps, a step number that goes back
  left inside a step ("... 8. rice. 8. rice."), a step made mostly of one word ("rice and rice and
  rice and rice"), or a sentence that says a pair of words three times ("soup mix and soup mix and
  soup mix") or a food word four times;
- a **title that does not fit**: a food word of the title (from :data:`FOOD_WORDS`) that no
  ingredient line mentions ("Peach Cobbler" without peaches);
- **extra items** (Kiddon et al. 2016): food words the directions use that no ingredient line names
  ("Beat in a pumpkin"); a kind of food the list names specifically ("the meat" after ground chuck,
  "cheese" after Cheddar) is named, and "cream" as a verb ("Cream butter and sugar") names nothing.

Food words come from a fixed list of common ingredient nouns (dish names such as "pie" or "pudding"
left out), singularised like the coverage metric; a word outside it is never judged, so these
checks miss some problems rather than invent them. On the 1k RecipeNLG sample after cleaning:
0.8% of real recipes list a line twice (two parts of one dish), 0.6% repeat a step sentence, 93%
have a title that fits and they use 0.33 extra items each (0.44 before kinds and the verb were told
apart: "meat" and "cream" were the commonest extra items): the baseline a model learns from.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from chefgenius.data.recipe_format import ingredient_name, parse_recipe
from chefgenius.data.recipe_words import FILLER_WORDS, WORD, normal_word, normal_words

_FOOD_LIST = """
almond anchovy apple apricot artichoke arugula asparagus avocado bacon banana barley basil bean beef beet
berry blackberry blueberry bourbon bran brandy bread broccoli broth bun butter buttermilk cabbage
cantaloupe caper cardamom carrot cashew cauliflower celery cereal cheddar cheese cherry chestnut chicken
chickpea chili chive chocolate chorizo cilantro cinnamon clam clove cocoa coconut cod coffee corn
cornmeal cornstarch crab cracker cranberry cream cucumber cumin currant date dill duck egg eggplant
fennel feta fig fish flour garlic gelatin gin ginger graham grape grapefruit ham hazelnut herb honey
horseradish jalapeno jam jelly kale ketchup kiwi lamb leek lemon lentil lettuce lime lobster macaroni
mango maple margarine marshmallow mayonnaise meat melon milk mint molasses mozzarella mushroom mussel
mustard noodle nutmeg oat oatmeal okra olive onion orange oregano oyster paprika parmesan parsley parsnip
pasta pea peach peanut pear pecan pepper pepperoni pickle pineapple pistachio plum pork potato prosciutto
prune pumpkin quinoa radish raisin raspberry rhubarb rice ricotta rosemary rum rye saffron sage salami
salmon sausage scallion scallop sesame shallot shrimp sour spaghetti spinach squash steak strawberry
sugar syrup tahini tangerine tarragon tea thyme tofu tomato tortilla trout tuna turkey turnip vanilla
veal vinegar walnut watermelon wheat whiskey wine yam yeast yogurt zucchini
"""
FOOD_WORDS = frozenset(normal_word(w) for w in _FOOD_LIST.split())  # as the text's words are normalised
# Dish names whose first word is a food that the dish need not contain, and title words that name the
# dish rather than an ingredient ("banana bread", "sweet and sour", "ice cream", "meat loaf").
_DISH_NAMES = re.compile(r"\b(?:coffee ?cakes?|shortbread|sweetbreads?)\b")
DISH_WORDS = frozenset({"bread", "meat", "cream", "sour"})

# Generic words the steps use for what the list names specifically ("brown the meat" after "1 lb.
# ground chuck", "sprinkle with cheese" after "grated Cheddar"): covered, not extra. On the 1k sample
# "meat" and "cream" were the two commonest extra items, most of them not extra at all.
_COVERED_BY_TEXT = {
    "meat": "beef pork chicken ham sausage turkey veal lamb steak bacon chorizo salami pepperoni prosciutto duck "
            "hamburger hamburg chuck sirloin roast venison meatball",
    "cheese": "cheddar mozzarella parmesan feta ricotta swiss velveeta",
    "butter": "margarine oleo",
    "margarine": "butter oleo",
    "fish": "salmon tuna cod trout",
    "berry": "strawberry blueberry raspberry blackberry cranberry",
    "noodle": "pasta spaghetti macaroni",
    "pasta": "noodle spaghetti macaroni",
}
_COVERED_BY = {g: frozenset(normal_word(w) for w in specific.split()) for g, specific in _COVERED_BY_TEXT.items()}
# "Cream butter and sugar", "cream together": the verb, which names no ingredient.
_CREAM_VERB = re.compile(r"\bcream(?=\s+(?:together|the|until|well|first|butter|margarine|oleo|shortening|sugars?)\b)"
                         r"|(?:^|(?<=[.!?;:]\s)|(?<=\d\.\s))cream\b(?!\s+(?:cheese|of|soup|sauce)\b)", re.I)

_SENTENCE = re.compile(r"[^.!?]+")
_STEP_NUMBER = re.compile(r"(?:^|[.!?]\s+)(\d{1,2})\.(?=\s|$)")
_TOKEN = re.compile(r"[a-z]+|[,;:()]")
# Words that cannot go on naming a food, so a food word before one ends its phrase ("rice and rice over
# the chicken", "cocoa, cocoa as desired"), as punctuation and the small words of FILLER_WORDS do.
_PHRASE_END = frozenset("over as is are was from by then if when together evenly".split())


def _line_key(line: str) -> str:
    return " ".join(WORD.findall(line.lower()) + re.findall(r"\d+(?:/\d+)?", line))


def duplicate_ingredient_lines(ingredients: tuple[str, ...] | list[str]) -> list[str]:
    """Ingredient lines that already appeared earlier in the list (each repeat once)."""
    seen: set[str] = set()
    out = []
    for line in ingredients:
        key = _line_key(line)
        if key and key in seen and line not in out:
            out.append(line)
        seen.add(key)
    return out


def ingredient_key(line: str) -> str:
    """What an ingredient line lists, singular ("1/2 sticks oleo" and "1 stick oleo": "oleo")."""
    return " ".join(normal_words(ingredient_name(line)))


def repeated_ingredients(ingredients: tuple[str, ...] | list[str]) -> list[str]:
    """Ingredients listed on more than one line, in any quantities (each once)."""
    counts = Counter(k for k in map(ingredient_key, ingredients) if k)
    return [k for k, n in counts.items() if n > 1]


def _sentence_loop(sentence: str) -> str | None:
    """A pair of content words three times in one sentence ("soup mix and soup mix and soup mix") or a
    food word four times: the loop a repeated sentence misses."""
    words = [w for w in normal_words(sentence) if w not in FILLER_WORDS]
    pairs = Counter(zip(words, words[1:])).most_common(1)
    if pairs and pairs[0][1] >= 3:
        return " ".join(pairs[0][0])
    foods = Counter(w for w in words if w in FOOD_WORDS).most_common(1)
    return foods[0][0] if foods and foods[0][1] >= 4 else None


def food_twice_in_a_row(sentence: str, *, ended: bool = True) -> list[str]:
    """Food words written right after themselves, only punctuation or small words between ("rice, rice",
    "rice to rice"), where the second ends a phrase: "tomatoes, tomato sauce" and "cream the cream
    cheese" name two things. ``ended``: the sentence is finished (its end closes the phrase)."""
    tokens = _TOKEN.findall(sentence.lower()) + (["."] if ended else [])
    out, previous = [], None
    for k, token in enumerate(tokens):
        if not token[0].isalpha() or token in FILLER_WORDS:
            continue
        word = normal_word(token)
        closes = k + 1 < len(tokens) and (not tokens[k + 1][0].isalpha() or tokens[k + 1] in FILLER_WORDS
                                          or tokens[k + 1] in _PHRASE_END)
        if word == previous and word in FOOD_WORDS and closes:
            out.append(word)
        previous = word
    return out


def sentence_opening(sentence: str) -> tuple[str, ...]:
    """The first two content words of a sentence (fewer if it has fewer)."""
    return tuple(w for w in WORD.findall(sentence.lower()) if w not in FILLER_WORDS)[:2]


def direction_loops(directions: tuple[str, ...] | list[str]) -> list[str]:
    """Why the steps loop, one reason per problem found (empty: they do not)."""
    reasons = []
    sentences: Counter[str] = Counter()
    openings: Counter[tuple[str, ...]] = Counter()
    for i, step in enumerate(directions, 1):
        for sentence in _SENTENCE.findall(step):
            words = WORD.findall(sentence.lower())
            if len(words) >= 2:
                sentences[" ".join(words)] += 1
            opening = sentence_opening(sentence)
            if len(opening) == 2:
                openings[opening] += 1
            looped = _sentence_loop(sentence)
            if looped:
                reasons.append(f"step {i} says {looped!r} over and over")
            reasons += [f"step {i} says {w!r} twice in a row" for w in food_twice_in_a_row(sentence)]
        # A bare number opening a sentence inside a step: the parser split at the next step number,
        # so what is left is numbering gone round ("8. rice. 8. rice.", "9. 9. 9.").
        if i == len(directions):  # a text cut at its token budget may end on the next step's bare number
            step = re.sub(rf"\s+{i + 1}\.?\s*$", "", step)
        stray = _STEP_NUMBER.findall(step)
        if stray:
            reasons.append(f"step {i} restarts numbering at {stray[0]}")
        words = [w for w in WORD.findall(step.lower()) if w not in FILLER_WORDS]
        if len(words) >= 4:
            word, count = Counter(words).most_common(1)[0]
            if count * 2 > len(words):
                reasons.append(f"step {i} is mostly {word!r}")
    reasons += [f"repeats {s!r}" for s, n in sentences.items() if n > 1]
    reasons += [f"{n} sentences open with {' '.join(o)!r}" for o, n in openings.items() if n > 2]
    return reasons


def food_words(text: str) -> list[str]:
    """The food words of a text, singular, in order of first appearance."""
    out: list[str] = []
    for w in normal_words(text):
        if w in FOOD_WORDS and w not in out:
            out.append(w)
    return out


def listed_foods(ingredients: str) -> frozenset[str]:
    """The food words an ingredient list names, with the generic words it covers ("meat" for ground
    chuck): what the steps may cook with."""
    words = set(normal_words(ingredients))
    covered = {g for g, specific in _COVERED_BY.items() if words & specific}
    return frozenset({w for w in words if w in FOOD_WORDS} | covered)


def step_foods(directions: str) -> list[str]:
    """The food words the steps name, "cream" as a verb ("Cream butter and sugar") aside."""
    return food_words(cream_verb_aside(directions))


def cream_verb_aside(text: str) -> str:
    """``text`` with "cream" as a verb replaced by another verb of its length (positions kept)."""
    return _CREAM_VERB.sub("whisk", text)


@dataclass(frozen=True)
class RecipeChecks:
    duplicate_lines: list[str] = field(default_factory=list)
    repeated_ingredients: list[str] = field(default_factory=list)  # listed twice in other quantities too
    loops: list[str] = field(default_factory=list)
    title_misfits: list[str] = field(default_factory=list)  # title food words no ingredient names
    extra_items: list[str] = field(default_factory=list)  # food words of the steps no ingredient names

    @property
    def title_fits(self) -> bool:
        return not self.title_misfits


def check_recipe(text: str) -> RecipeChecks:
    parsed = parse_recipe(text)
    listed = listed_foods(" ".join(parsed.ingredients))
    return RecipeChecks(
        duplicate_lines=duplicate_ingredient_lines(parsed.ingredients),
        repeated_ingredients=repeated_ingredients(parsed.ingredients),
        loops=direction_loops(parsed.directions),
        title_misfits=[w for w in food_words(_DISH_NAMES.sub(" ", parsed.title.lower()))
                       if w not in listed and w not in DISH_WORDS],
        extra_items=[w for w in step_foods(" ".join(parsed.directions)) if w not in listed],
    )


def cook_metrics(texts: list[str]) -> dict[str, float]:
    """Shares of recipes with each problem, and the mean count of extra items per recipe."""
    checks = [check_recipe(t) for t in texts]
    n = max(1, len(checks))
    return {"duplicate_line_rate": sum(bool(c.duplicate_lines) for c in checks) / n,
            "repeated_ingredient_rate": sum(bool(c.repeated_ingredients) for c in checks) / n,
            "looping_directions_rate": sum(bool(c.loops) for c in checks) / n,
            "title_fit_rate": sum(c.title_fits for c in checks) / n,
            "extra_items": sum(len(c.extra_items) for c in checks) / n}
