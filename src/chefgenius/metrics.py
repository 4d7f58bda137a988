"""Text metrics for generated recipes: pure functions, strings in, numbers out."""

from __future__ import annotations

import re
from collections import Counter

from .coverage import coverage_metrics
from .data.format import structure_score
from .recipe_checks import cook_metrics

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def distinct_n(text: str, n: int = 2) -> float:
    """Unique n-grams over all n-grams (1.0 = no repetition)."""
    toks = words(text)
    grams = [tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def repeated_ngram_rate(text: str, n: int = 4) -> float:
    """Share of n-grams that already occurred earlier in the text."""
    toks = words(text)
    grams = [tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)]
    if not grams:
        return 0.0
    counts = Counter(grams)
    return sum(c - 1 for c in counts.values()) / len(grams)


def bleu(hypotheses: list[str], references: list[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)


def rouge(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for h, r in zip(hypotheses, references):
        scores = scorer.score(r, h)
        for k in totals:
            totals[k] += scores[k].fmeasure
    n = max(1, len(hypotheses))
    return {k: v / n for k, v in totals.items()}


# What ``chefgenius eval`` and the report show, in this order.
METRIC_KEYS: tuple[str, ...] = (
    "eval_loss", "eval_perplexity", "bleu", "rouge1", "rouge2", "rougeL", "ingredient_recall",
    "ingredient_recall_list", "ingredient_recall_directions", "ingredient_precision", "structure_score",
    "distinct_2", "repeated_4gram_rate", "duplicate_line_rate", "repeated_ingredient_rate",
    "looping_directions_rate", "title_fit_rate",
    "extra_items", "length_words",
)


def text_metrics(prompts: list[list[str]], hypotheses: list[str], references: list[str]) -> dict[str, float]:
    n = max(1, len(hypotheses))
    out = {"bleu": bleu(hypotheses, references), **rouge(hypotheses, references)}
    out.update(coverage_metrics(prompts, hypotheses))
    out["structure_score"] = sum(map(structure_score, hypotheses)) / n
    out["distinct_2"] = sum(distinct_n(h, 2) for h in hypotheses) / n
    out["repeated_4gram_rate"] = sum(repeated_ngram_rate(h, 4) for h in hypotheses) / n
    out.update(cook_metrics(hypotheses))  # what a cook sees: repeated lines, loops, titles, extra items
    out["length_words"] = sum(len(words(h)) for h in hypotheses) / n
    return out
