"""Text metrics against hand-computed values."""

from __future__ import annotations

import pytest

from chefgenius.data.format import structure_score
from chefgenius.metrics import bleu, distinct_n, repeated_ngram_rate, rouge, text_metrics

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
