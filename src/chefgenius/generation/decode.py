"""Recipe generation with decoding presets; prompts are built exactly as in training."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from chefgenius.data.recipe_format import (
    DIRECTIONS_LABEL,
    INGREDIENTS_LABEL,
    TITLE_LABEL,
    format_prompt,
    parse_recipe,
    structure_score,
    title_prefix,
)
from chefgenius.data.tokenization import encode_example
from chefgenius.errors import GenerationError  # re-exported
from chefgenius.generation.guard import RecipeGuard
from chefgenius.generation.ingredient_coverage import coverage, is_used, name_words, text_words
from chefgenius.generation.recipe_checks import check_recipe
from chefgenius.models.builders import max_positions
from chefgenius.runtime.devices import forked_rng

PRESETS: dict[str, dict[str, Any]] = {
    "greedy": {"do_sample": False, "num_beams": 1},
    "balanced": {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 50, "repetition_penalty": 1.1},
    "creative": {"do_sample": True, "temperature": 1.0, "top_p": 0.95, "top_k": 0, "repetition_penalty": 1.05},
    "beam": {"do_sample": False, "num_beams": 4, "no_repeat_ngram_size": 4, "early_stopping": True,
             "length_penalty": 1.0},
}


@dataclass
class GenerationSettings:
    preset: str = "greedy"
    max_new_tokens: int = 256
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    seed: int = 0
    # Coverage steering (0 = off): decode with logit bonuses 0, c/4, c/2, 3c/4 and c for requested
    # ingredients not used yet (CoverageProcessor) and keep the recipe that uses the most of them.
    coverage: float = 0.0
    # RecipeGuard (generation/guard.py): no ingredient line twice, no repeated sentence, step numbers in order.
    guard: bool = True

    def generate_kwargs(self, num: int) -> dict[str, Any]:
        if self.preset not in PRESETS:
            raise GenerationError(f"unknown generation preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        kw = dict(PRESETS[self.preset])
        for key in ("temperature", "top_p", "top_k", "repetition_penalty", "no_repeat_ngram_size"):
            value = getattr(self, key)
            if value is not None:
                kw[key] = value
        if kw.get("num_beams", 1) > 1:
            kw["num_beams"] = max(kw["num_beams"], num)
        elif (self.temperature is not None or self.top_p is not None) and not kw.get("do_sample"):
            kw["do_sample"] = True  # asking for a temperature means sampling
        if num > 1 and not kw.get("do_sample") and kw.get("num_beams", 1) == 1:
            raise GenerationError(f"preset {self.preset!r} is deterministic and gives one recipe per prompt; "
                                  "use --preset balanced, creative or beam with --num > 1")
        kw["max_new_tokens"] = self.max_new_tokens
        kw["num_return_sequences"] = num
        return kw


@dataclass
class Generation:
    """Generated texts and what had to be cut to fit the model, so callers can say so."""

    texts: list[str]
    dropped_ingredients: list[str] = field(default_factory=list)
    max_new_tokens: int = 0
    capped_from: int | None = None  # the asked max_new_tokens when it did not fit the model's positions

    def warnings(self, max_prompt_tokens: int) -> list[str]:
        out = []
        if self.dropped_ingredients:
            out.append(f"the prompt is longer than the {max_prompt_tokens} tokens the model was trained on; left "
                       f"out {len(self.dropped_ingredients)} ingredient(s): {', '.join(self.dropped_ingredients[:5])}"
                       + (" ..." if len(self.dropped_ingredients) > 5 else ""))
        if self.capped_from is not None:
            out.append(f"max_new_tokens {self.capped_from} exceeds what the model's positions allow after the prompt; "
                       f"capped to {self.max_new_tokens}")
        return out


class CoverageProcessor:
    """Favour requested ingredients that the current section of the recipe has not used yet.

    While the ingredient list is being written, the first requested ingredient (in the request's
    order, which is the order training targets list them in) missing from the list gets ``strength``
    added to the logit of the first token of its name; in the directions, every ingredient missing
    from the directions does. A name spread over several tokens is then completed (its next token is favoured
    by twice that, alone). Once the words appear, the favour stops, so nothing is pushed twice.
    Deterministic: a pure function of the tokens so far.
    """

    def __init__(self, tokenizer: Any, ingredients: list[str], *, start: int, prefix_text: str,
                 strength: float) -> None:
        self.tokenizer, self.ingredients, self.start = tokenizer, ingredients, start
        self.prefix_text, self.strength = prefix_text, strength
        self.variants: dict[str, list[list[int]]] = {}
        for ing in ingredients:
            words = name_words(ing)
            if not words:
                continue
            surface = " ".join(ing.lower().split())
            seqs = []
            for text in (f" {surface}", f" {surface.capitalize()}"):  # words follow a space in this format
                ids = tokenizer.encode(text, add_special_tokens=False)
                if ids and ids not in seqs:
                    seqs.append(ids)
            self.variants[ing] = seqs

    def _missing(self, text: str) -> list[str]:
        if DIRECTIONS_LABEL in text:
            words = text_words(text.split(DIRECTIONS_LABEL, 1)[1])
            return [i for i in self.variants if not is_used(i, words)]
        if INGREDIENTS_LABEL in text:
            # The list follows the request's order (as the training targets do): favour the next one only.
            words = text_words(text.split(INGREDIENTS_LABEL, 1)[1])
            return [i for i in self.variants if not is_used(i, words)][:1]
        return []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        for row in range(input_ids.shape[0]):
            generated = input_ids[row, self.start:].tolist()
            text = self.prefix_text + self.tokenizer.decode(generated, skip_special_tokens=True)
            starts: set[int] = set()
            continuations: set[int] = set()
            for ing in self._missing(text):
                for seq in self.variants[ing]:
                    # Part of this name is already out: its next token, and only that, is favoured (twice).
                    done = next((k for k in range(min(len(seq) - 1, len(generated)), 0, -1)
                                 if generated[-k:] == seq[:k]), 0)
                    (continuations if done else starts).add(seq[done])
            favoured, bonus = (continuations, 2 * self.strength) if continuations else (starts, self.strength)
            if favoured:
                idx = torch.tensor(sorted(favoured), device=scores.device)
                scores[row, idx] += bonus
        return scores


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def fit_prompt(tokenizer: Any, ingredients: list[str], *, is_seq2seq: bool, max_prompt_tokens: int
               ) -> tuple[list[int], list[str]]:
    """Prompt ids with whole ingredients left out from the end until it fits; returns ids and what was left out."""
    kept = list(ingredients)
    while True:
        prompt = format_prompt(kept)
        src, _ = encode_example(tokenizer, prompt, None, is_seq2seq=is_seq2seq, max_prompt_tokens=10**9,
                                max_target_tokens=1)
        if len(src) <= max_prompt_tokens or len(kept) <= 1:
            break
        kept.pop()
    src, _ = encode_example(tokenizer, format_prompt(kept), None, is_seq2seq=is_seq2seq,
                            max_prompt_tokens=max_prompt_tokens, max_target_tokens=1)
    return src, ingredients[len(kept):]


@torch.no_grad()
def generate_texts(model: torch.nn.Module, tokenizer: Any, is_seq2seq: bool, ingredients: list[str] | str,
                   settings: GenerationSettings, *, num: int = 1, title: str | None = None,
                   max_prompt_tokens: int = 64, streamer: Any = None, stopping_criteria: Any = None,
                   check: Callable[[], None] | None = None) -> Generation:
    """Generated recipe texts (target format) for one ingredient list. Same seed, same text.

    ``streamer``: a transformers streamer fed the new tokens as they come (one decode only: not
    with coverage, which picks the best of several). ``stopping_criteria`` is checked every token
    and ``check`` before each decode (it raises to abandon the rest): how a server cancels work."""
    if isinstance(ingredients, str):
        ingredients = [x.strip() for x in ingredients.split(",")]
    ingredients = [x for x in ingredients if x]
    if not ingredients:
        raise GenerationError("no ingredients given; pass e.g. --ingredients 'chicken, rice, onion'")
    kwargs = settings.generate_kwargs(num)
    src, dropped = fit_prompt(tokenizer, ingredients, is_seq2seq=is_seq2seq, max_prompt_tokens=max_prompt_tokens)
    device = _device(model)
    # Every target starts with the title label, so decoding starts after it (and after a fixed title).
    prefix_text = title_prefix(title) if title else TITLE_LABEL
    prefix_ids = tokenizer.encode(prefix_text, add_special_tokens=False) if prefix_text else []
    result = Generation([], dropped, kwargs["max_new_tokens"])
    kwargs["max_new_tokens"] = _cap_budget(result, max_positions(model) if not is_seq2seq else None,
                                           len(src) + len(prefix_ids))
    was_training = model.training
    model.eval()
    common = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id, **kwargs}

    def decode(strength: float) -> list[str]:
        if check is not None:
            check()
        extra: dict[str, Any] = {"streamer": streamer} if streamer is not None and not settings.coverage else {}
        if stopping_criteria is not None:
            extra["stopping_criteria"] = stopping_criteria
        # Decoder positions before the recipe text: the start token (seq2seq) or the prompt, then the prefix.
        start = (1 if is_seq2seq else len(src)) + len(prefix_ids)
        prefix_seen = prefix_text if not is_seq2seq or prefix_ids else ""
        processors = _processors(tokenizer, ingredients, start, prefix_seen, strength, settings.guard)
        if processors is not None:
            extra["logits_processor"] = processors
        # Sampling draws from the global RNG; fork it so that generating never shifts a training run.
        with forked_rng(device):
            torch.manual_seed(settings.seed)
            if is_seq2seq:
                input_ids = torch.tensor([src], device=device)
                if prefix_ids:
                    first = model.config.decoder_start_token_id
                    extra["decoder_input_ids"] = torch.tensor([[first, *prefix_ids]], device=device)
                out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **extra, **common)
                return [tokenizer.decode(o, skip_special_tokens=True).strip() for o in out]  # includes the prefix
            input_ids = torch.tensor([src + prefix_ids], device=device)
            out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **extra, **common)
            new = out[:, len(src) + len(prefix_ids):]
            return [(prefix_text + tokenizer.decode(o, skip_special_tokens=True)).strip() for o in new]

    if settings.coverage:
        texts = _most_covering([decode(settings.coverage * k / 4) for k in range(5)], ingredients)
    else:
        texts = decode(0.0)
    if was_training:
        model.train()
    result.texts = texts
    return result


def _processors(tokenizer: Any, ingredients: list[str], start: int, prefix_text: str, strength: float,
                guard: bool) -> Any:
    """Coverage steering (if ``strength``) and the guard (last: it has the final say), or None."""
    processors: list[Any] = []
    if strength:
        processors.append(CoverageProcessor(tokenizer, ingredients, start=start, prefix_text=prefix_text,
                                            strength=strength))
    if guard:
        processors.append(RecipeGuard(tokenizer, start=start, prefix_text=prefix_text, ingredients=ingredients))
    if not processors:
        return None
    from transformers import LogitsProcessorList

    return LogitsProcessorList(processors)


def _cap_budget(result: Generation, limit: int | None, used: int) -> int:
    """New tokens that fit the model's positions after ``used`` prompt tokens (recorded in ``result``)."""
    if limit is None or used + result.max_new_tokens <= limit:
        return result.max_new_tokens
    if limit - used < 1:
        raise GenerationError(f"the prompt and title take {used} tokens, the model has {limit} positions; shorten "
                              "the title or the ingredient list")
    result.capped_from, result.max_new_tokens = result.max_new_tokens, limit - used
    return result.max_new_tokens


def _most_covering(candidates: list[list[str]], ingredients: list[str]) -> list[str]:
    """Per returned recipe, the candidate that uses the most requested ingredients among those with a
    complete structure (title, ingredient list, numbered directions), if any; then the one whose list
    names the most of them (a cook shops from the list: rice cooked in a step but never listed is
    missing); ties go to the least steered one (candidates come in order of increasing steering)."""
    def rank(text: str, k: int) -> tuple:
        cov = coverage(ingredients, text)
        return structure_score(text) == 1.0, cov.recall, cov.share(cov.in_list), -k

    return [max((rank(c[i], k), c[i]) for k, c in enumerate(candidates))[1] for i in range(len(candidates[0]))]


def recipe_record(ingredients: list[str] | str, text: str) -> dict[str, Any]:
    """A generated recipe as data: its parsed parts and which requested ingredients it used (what
    ``generate --json`` prints)."""
    if isinstance(ingredients, str):
        ingredients = [x.strip() for x in ingredients.split(",")]

    parsed = parse_recipe(text)
    cov = coverage([x for x in ingredients if x], text)
    checks = check_recipe(text)
    return {"title": parsed.title, "ingredients": list(parsed.ingredients), "directions": list(parsed.directions),
            "complete": parsed.is_complete, "used": cov.used, "unused": cov.unused,
            "unused_in_directions": [x for x in cov.used if x not in cov.in_directions],
            "ingredient_recall": round(cov.recall, 4), "duplicate_lines": checks.duplicate_lines,
            "repeated_ingredients": checks.repeated_ingredients,
            "looping": checks.loops, "title_fits": checks.title_fits, "title_misfits": checks.title_misfits,
            "extra_items": checks.extra_items}
