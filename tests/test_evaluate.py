"""Text metrics against hand-computed values."""

from __future__ import annotations

import pytest

from chefgenius.data.recipe_format import structure_score
from chefgenius.evaluation.text_metrics import (
    bleu,
    bleu_ci95,
    distinct_n,
    paired_bleu,
    repeated_ngram_rate,
    rouge,
    text_metrics,
)

GOOD = "Title: Egg Toast\nIngredients:\n- 2 eggs\n- 1 slice bread\nDirections:\n1. Fry the eggs.\n2. Toast the bread."


def test_structure_score_counts_title_ingredients_numbered_steps():
    assert structure_score(GOOD) == 1.0
    assert structure_score("Title:\nIngredients:\n- a\nDirections:\n1. b") == pytest.approx(2 / 3)
    assert structure_score("Ingredients:\n- a\nDirections:\nmix it") == pytest.approx(1 / 3)
    assert structure_score("nothing here") == 0.0


def test_repetition_metrics():
    assert distinct_n("a b a b", 2) == pytest.approx(2 / 3)  # bigrams ab, ba, ab
    assert distinct_n("a", 2) == 1.0
    assert repeated_ngram_rate("a b c d a b c d", 4) == pytest.approx(1 / 5)  # abcd repeats once in 5 4-grams


def test_bleu_and_rouge_bounds_and_identity():
    assert bleu([GOOD], [GOOD]) == pytest.approx(100.0)
    assert bleu(["completely different words here"], [GOOD]) < 5
    r = rouge(["the cat sat"], ["the cat ran"])
    assert r["rouge1"] == pytest.approx(2 / 3) and r["rouge2"] == pytest.approx(1 / 2)


def test_text_metrics_aggregates_means():
    m = text_metrics([["egg"], ["rice"]], [GOOD, "junk"], [GOOD, GOOD])
    assert m["structure_score"] == pytest.approx(0.5) and m["ingredient_recall"] == pytest.approx(0.5)


REFS = [f"mix {w} with sugar and bake the {w} for ten minutes" for w in
        ("flour", "oats", "rice", "apples", "pears", "nuts", "dates", "figs", "plums", "beans")]
HALF = [r if i % 2 else "boil water" for i, r in enumerate(REFS)]  # half perfect, half junk


def test_bleu_interval_is_zero_without_variation_and_shrinks_with_more_prompts():
    assert bleu_ci95(REFS, REFS) == 0.0  # every resample is a perfect corpus
    small, large = bleu_ci95(HALF, REFS), bleu_ci95(HALF * 8, REFS * 8)
    assert 0.0 < large < small


def test_paired_bleu_difference_sign_and_interval():
    same = paired_bleu(HALF, HALF, REFS)
    assert same == {"difference": 0.0, "low": 0.0, "high": 0.0}
    better = [r if i % 2 else r.replace("ten", "five") for i, r in enumerate(REFS)]  # strictly closer than HALF
    up = paired_bleu(HALF, better, REFS)
    assert up["difference"] == pytest.approx(bleu(better, REFS) - bleu(HALF, REFS))
    assert 0.0 < up["low"] <= up["difference"] <= up["high"]
    down = paired_bleu(better, HALF, REFS)
    assert down["difference"] == pytest.approx(-up["difference"]) and down["high"] < 0.0
    with pytest.raises(ValueError, match="same"):
        paired_bleu(HALF, HALF[:3], REFS)
