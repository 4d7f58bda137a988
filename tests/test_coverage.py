"""Ingredient coverage against hand-computed cases; the coverage decoder on a tiny trained model."""

from __future__ import annotations

import pytest

from chefgenius.coverage import PANTRY, coverage, coverage_metrics, name_words, normal_word

RECIPE = """Title: Chicken Rice
Ingredients:
- 2 chicken breasts, cubed
- 1 c. long grain rice
- 3 tomatoes
- 1 tsp. salt
- 1 c. shredded cheddar cheese
Directions:
1. Brown the chicken in a skillet.
2. Add the rice and the chopped tomatoes; simmer 20 minutes.
3. Season with salt."""


def test_plurals_and_variants_normalise_to_one_word():
    assert [normal_word(w) for w in ("onions", "tomatoes", "berries", "dishes", "boxes", "glass", "asparagus",
                                     "egg")] == ["onion", "tomato", "berry", "dish", "box", "glass", "asparagus",
                                                 "egg"]
    assert name_words("2 c. chopped Onions") == ("onion",)
    assert name_words("salt and pepper") == ("salt", "pepper")


def test_recall_by_section_hand_computed():
    cov = coverage(["chicken", "rice", "onion", "tomato", "salt"], RECIPE)
    assert cov.used == ["chicken", "rice", "tomato", "salt"] and cov.unused == ["onion"]
    assert cov.recall == pytest.approx(4 / 5)
    assert cov.in_list == ["chicken", "rice", "tomato", "salt"]
    assert cov.in_directions == ["chicken", "rice", "tomato", "salt"]
    # Multi-word requests need every word: "chicken breasts" is used, "sour cream" is not.
    cov = coverage(["chicken breasts", "sour cream", "rice"], RECIPE)
    assert cov.used == ["chicken breasts", "rice"] and cov.in_directions == ["rice"]


def test_an_ingredient_listed_but_never_used_in_a_step():
    text = "Title: T\nIngredients:\n- 1 onion\n- 2 eggs\nDirections:\n1. Beat the eggs.\n2. Fry."
    cov = coverage(["onion", "egg"], text)
    assert cov.in_list == ["onion", "egg"] and cov.in_directions == ["egg"]
    assert coverage_metrics([["onion", "egg"]], [text]) == {
        "ingredient_recall": 1.0, "ingredient_recall_list": 1.0, "ingredient_recall_directions": 0.5,
        "ingredient_precision": 1.0}


def test_precision_counts_unrequested_non_pantry_ingredients():
    # Listed: chicken (asked), rice (asked), tomatoes (not asked), salt (pantry), cheddar cheese (not asked).
    cov = coverage(["chicken", "rice"], RECIPE)
    assert cov.unrequested == ["tomatoes", "cheddar cheese"]
    assert cov.num_listed_non_pantry == 4 and cov.precision == pytest.approx(2 / 4)
    assert ("salt",) in PANTRY and ("olive", "oil") in PANTRY
    # A listed "chicken" answers a request for "chicken breasts" and the other way round.
    assert coverage(["chicken breasts"], "Title: A\nIngredients:\n- 1 chicken\nDirections:\n1. Cook.").precision == 1


def test_empty_requests_and_texts():
    assert coverage([], RECIPE).recall == 1.0
    cov = coverage(["rice"], "junk without sections")
    assert cov.recall == 0.0 and cov.in_list == [] and cov.precision == 1.0


def test_copy_weight_upweights_prompt_tokens_only_and_resumes_exactly(tmp_path):
    import torch

    from chefgenius.losses import copy_weights
    from chefgenius.trainer import Trainer

    from .conftest import quiet, tiny_config
    from .test_resume import assert_identical_runs, run_with_stops

    # Causal: prompt [5, 6, 9] (9 is a separator) then target [6, 7, 9, 5]; labels mask the prompt.
    batch = {"input_ids": torch.tensor([[5, 6, 9, 6, 7, 9, 5, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0]]),
             "labels": torch.tensor([[-100, -100, -100, 6, 7, 9, 5, -100]])}
    w = copy_weights(batch, False, 3.0, torch.tensor([9]))
    assert w.tolist() == [[1.0, 1.0, 1.0, 3.0, 1.0, 1.0, 3.0, 1.0]]
    # Seq2seq: the whole encoder input is the prompt.
    s2s = {"input_ids": torch.tensor([[5, 9, 1]]), "attention_mask": torch.tensor([[1, 1, 1]]),
           "labels": torch.tensor([[5, 9, 2, -100]])}
    assert copy_weights(s2s, True, 2.0, torch.tensor([9])).tolist() == [[2.0, 1.0, 1.0, 1.0]]
    # Pure function of the batch: a weighted run stopped and resumed is still bit-identical.
    cfg = tiny_config(training={"copy_weight": 3.0})
    straight = Trainer(cfg, tmp_path / "straight", log=quiet)
    assert straight.fit().status == "completed"
    run_with_stops(cfg, tmp_path / "stopped", [6])
    assert_identical_runs(tmp_path / "straight", tmp_path / "stopped")
    plain = Trainer(tiny_config(training={"max_steps": 3}), tmp_path / "plain", log=quiet)
    plain.fit()
    weighted = Trainer(tiny_config(training={"max_steps": 3, "copy_weight": 3.0}), tmp_path / "weighted", log=quiet)
    weighted.fit()
    assert not torch.equal(plain.model.transformer.wte.weight, weighted.model.transformer.wte.weight)
