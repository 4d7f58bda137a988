"""The one recipe text format: training prompts and targets, and the parser for generated text.

Prompt:  ``Generate a recipe with: chicken, rice, onion``
Target::

    Title: Chicken Rice
    Ingredients:
    - 2 chicken breasts
    - 1 cup rice
    Directions:
    1. Brown the chicken.
    2. Add the rice.

The parser does not depend on newlines: tokenizers that collapse whitespace (T5's sentencepiece)
still round-trip, because sections are found by their labels, ingredients by ``- `` bullets and
steps by consecutive numbers ``1. 2. 3.``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from chefgenius.data.sources import Recipe

PROMPT_PREFIX = "Generate a recipe with: "
TITLE_LABEL = "Title:"
INGREDIENTS_LABEL = "Ingredients:"
DIRECTIONS_LABEL = "Directions:"

_QUANTITY = re.compile(
    r"^[\d\s/.,½¼¾⅓⅔-]*(?:\(.*?\)\s*)?"
    r"(?:(?:c|cup|cups|tbsp|tsp|tablespoons?|teaspoons?|oz|ounces?|lb|lbs|pounds?|g|grams?|kg|ml|l|"
    r"liters?|pkg|packages?|cans?|jars?|boxes?|bottles?|cartons?|sticks?|cloves?|slices?|pinch|dash|"
    r"qt|quarts?|pt|pints?|envelopes?|bunch|heads?|large|medium|small|whole)\.?\s+)*",
    re.IGNORECASE,
)
_PREP = re.compile(r",.*$|\(.*?\)|\b(?:chopped|minced|diced|sliced|grated|shredded|fresh|frozen|cooked|toasted|"
                   r"softened|melted|beaten)\b",
                   re.IGNORECASE)


@dataclass(frozen=True)
class ParsedRecipe:
    title: str
    ingredients: tuple[str, ...]
    directions: tuple[str, ...]

    @property
    def is_complete(self) -> bool:
        return bool(self.title and self.ingredients and self.directions)


def ingredient_name(line: str) -> str:
    """'2 c. chopped onion, diced' -> 'onion': the part a cook would list in a prompt."""
    name = _QUANTITY.sub("", line.strip())
    name = _PREP.sub("", name)
    return re.sub(r"\s+", " ", name).strip(" .,;-").lower()


def prompt_ingredients(recipe: Recipe) -> list[str]:
    names = list(recipe.ner) if recipe.ner else [ingredient_name(x) for x in recipe.ingredients]
    out: list[str] = []
    for n in names:
        n = n.strip().lower()
        if n and n not in out:
            out.append(n)
    return out


def format_prompt(ingredients: list[str] | str) -> str:
    if isinstance(ingredients, str):
        ingredients = [x.strip() for x in ingredients.split(",")]
    return PROMPT_PREFIX + ", ".join(x for x in ingredients if x)


# The conversation -> training prompt mapping, saved with every tokenizer (tokenizer_config.json) so that
# ``tokenizer.apply_chat_template(messages, add_generation_prompt=True)`` works from plain transformers:
# the last user message is the ingredient list, everything else is context the model was never
# trained on and is left out. :func:`chat_prompt` is the same mapping in Python (tested equal).
CHAT_TEMPLATE = (
    "{%- set ns = namespace(text='') -%}"
    "{%- for m in messages -%}{%- if m['role'] == 'user' -%}"
    "{%- if m['content'] is string -%}{%- set ns.text = m['content'] -%}"
    "{%- else -%}{%- set ns.text = m['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text')"
    " | join(', ') -%}{%- endif -%}"
    "{%- endif -%}{%- endfor -%}"
    "Generate a recipe with: {{ ns.text.replace('\\n', ',').split(',') | map('trim') | reject('equalto', '')"
    " | join(', ') }}"
    "{%- if add_generation_prompt %}{{ '\\n' }}Title:{% endif -%}"
)


def chat_ingredients(messages: list[dict]) -> list[str]:
    """The ingredients of a conversation: the last user message, split at commas and newlines."""
    text = ""
    for m in messages:
        if m.get("role") == "user":
            content = m.get("content")
            text = content if isinstance(content, str) else ", ".join(
                p.get("text", "") for p in content or [] if isinstance(p, dict) and p.get("type") == "text")
    return [x.strip() for x in text.replace("\n", ",").split(",") if x.strip()]


def chat_prompt(messages: list[dict]) -> str:
    """What :data:`CHAT_TEMPLATE` renders without the generation prompt: the training prompt."""
    return format_prompt(chat_ingredients(messages))


def format_target(title: str, ingredients: tuple[str, ...] | list[str], directions: tuple[str, ...] | list[str]) -> str:
    lines = [f"{TITLE_LABEL} {title}", INGREDIENTS_LABEL]
    lines += [f"- {x}" for x in ingredients]
    lines.append(DIRECTIONS_LABEL)
    lines += [f"{i}. {x}" for i, x in enumerate(directions, 1)]
    return "\n".join(lines)


def title_prefix(title: str) -> str:
    """Start of a target with a fixed title, used to steer generation toward it."""
    return f"{TITLE_LABEL} {title}\n{INGREDIENTS_LABEL}\n"


def recipe_to_example(recipe: Recipe) -> tuple[str, str]:
    return format_prompt(prompt_ingredients(recipe)), format_target(recipe.title, recipe.ingredients, recipe.directions)


def _split_numbered(text: str) -> list[str]:
    """Split '1. a 2. b 3. c' into steps, accepting only consecutive numbers as boundaries."""
    steps: list[str] = []
    start = re.search(r"(?:^|\s)1\.\s", text)
    if not start:
        return [text.strip()] if text.strip() else []
    pos = start.end()
    n = 2
    while True:
        nxt = re.compile(rf"(?:^|\s){n}\.\s").search(text, pos)
        if not nxt:
            steps.append(text[pos:].strip())
            break
        steps.append(text[pos:nxt.start()].strip())
        pos = nxt.end()
        n += 1
    return [s for s in steps if s]


def parse_recipe(text: str) -> ParsedRecipe:
    """Parse generated or formatted text; missing parts come back empty, never raise."""
    text = text.strip()
    title = ""
    ingredients: list[str] = []
    directions: list[str] = []
    t = text.find(TITLE_LABEL)
    i = text.find(INGREDIENTS_LABEL)
    d = text.find(DIRECTIONS_LABEL, max(i, 0))
    if t >= 0:
        end = i if i > t else (d if d > t else len(text))
        title = " ".join(text[t + len(TITLE_LABEL):end].split())
    if i >= 0:
        block = text[i + len(INGREDIENTS_LABEL):d if d > i else len(text)]
        ingredients = [" ".join(x.split()) for x in re.split(r"(?:^|\s)-\s", block) if x.strip()]
    if d >= 0:
        directions = [" ".join(x.split()) for x in _split_numbered(text[d + len(DIRECTIONS_LABEL):])]
    return ParsedRecipe(title, tuple(ingredients), tuple(directions))


def structure_score(text: str) -> float:
    """Mean of three checks: a title, a non-empty ingredient list, numbered directions."""
    parsed = parse_recipe(text)
    has_numbered = bool(re.search(r"(?:^|\s)1\.\s", text.split(DIRECTIONS_LABEL, 1)[-1])) and bool(parsed.directions)
    return (bool(parsed.title) + bool(parsed.ingredients) + has_numbered) / 3


def render_recipe(parsed: ParsedRecipe) -> str:
    return format_target(parsed.title or "(untitled)", parsed.ingredients, parsed.directions)
