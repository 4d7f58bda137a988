"""Text metrics for generated recipes: pure functions, strings in, numbers out."""

from __future__ import annotations

import re
from collections import Counter

from chefgenius.data.recipe_format import structure_score
from chefgenius.generation.ingredient_coverage import coverage_metrics
from chefgenius.generation.recipe_checks import cook_metrics

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


def bleu_ci95(hypotheses: list[str], references: list[str], n_bootstrap: int = 1000) -> float:
    """Half-width of corpus BLEU's 95% bootstrap interval (sacrebleu's own resampling, fixed seed).

    Fifty recipes are a small corpus: two evaluations whose BLEU differs by less than this may differ
    only by which prompts were drawn.
    """
    from sacrebleu.metrics import BLEU

    if len(hypotheses) < 2:
        return 0.0
    return float(BLEU().corpus_score(hypotheses, [references], n_bootstrap=n_bootstrap)._ci)


def paired_bleu(baseline: list[str], system: list[str], references: list[str], n_bootstrap: int = 1000,
                seed: int = 0) -> dict[str, float]:
    """BLEU(system) - BLEU(baseline) on the same prompts, with its 95% paired-bootstrap interval.

    Both outputs are resampled with the same prompt indices, so the prompts' own difficulty cancels:
    far narrower than comparing two separate intervals. Uses sacrebleu's per-sentence statistics,
    so each resample's BLEU is exactly what ``bleu`` gives on that resample.
    """
    import numpy as np
    from sacrebleu.metrics import BLEU

    if not (len(baseline) == len(system) == len(references)) or not references:
        raise ValueError("paired_bleu needs two outputs for the same, non-empty list of references")
    metric = BLEU()
    a = np.asarray(metric._extract_corpus_statistics(baseline, [references]), dtype=np.float64)
    b = np.asarray(metric._extract_corpus_statistics(system, [references]), dtype=np.float64)

    def score(stats: np.ndarray) -> float:
        return float(metric._compute_score_from_stats(stats.sum(0)).score)

    idx = np.random.default_rng(seed).integers(0, len(references), size=(n_bootstrap, len(references)))
    diffs = np.array([score(b[i]) - score(a[i]) for i in idx])
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {"difference": score(b) - score(a), "low": float(low), "high": float(high)}


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
    "eval_loss", "eval_perplexity", "bleu", "bleu_ci95", "rouge1", "rouge2", "rougeL", "ingredient_recall",
    "ingredient_recall_list", "ingredient_recall_directions", "ingredient_precision", "structure_score",
    "distinct_2", "repeated_4gram_rate", "duplicate_line_rate", "repeated_ingredient_rate",
    "looping_directions_rate", "title_fit_rate",
    "extra_items", "length_words",
)


def text_metrics(prompts: list[list[str]], hypotheses: list[str], references: list[str]) -> dict[str, float]:
    n = max(1, len(hypotheses))
    out = {"bleu": bleu(hypotheses, references), "bleu_ci95": bleu_ci95(hypotheses, references),
           **rouge(hypotheses, references)}
    out.update(coverage_metrics(prompts, hypotheses))
    out["structure_score"] = sum(map(structure_score, hypotheses)) / n
    out["distinct_2"] = sum(distinct_n(h, 2) for h in hypotheses) / n
    out["repeated_4gram_rate"] = sum(repeated_ngram_rate(h, 4) for h in hypotheses) / n
    out.update(cook_metrics(hypotheses))  # what a cook sees: repeated lines, loops, titles, extra items
    out["length_words"] = sum(len(words(h)) for h in hypotheses) / n
    return out
