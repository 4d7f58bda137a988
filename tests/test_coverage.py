"""Ingredient coverage against hand-computed cases; the coverage decoder on a tiny trained model."""

from __future__ import annotations

import pytest
import torch

from chefgenius.generation.ingredient_coverage import PANTRY, coverage, coverage_metrics, name_words, normal_word

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
    from chefgenius.training.losses import copy_weights
    from chefgenius.training.trainer import Trainer

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


def test_copy_weights_equal_their_per_row_definition_on_random_batches():
    """The vectorised weights (no per-row loop, no device sync) against the definition, row by row."""
    from chefgenius.training.losses import copy_weights

    def by_row(batch, is_seq2seq, weight, skip):
        labels = batch["labels"]
        out = torch.ones(labels.shape)
        for row in range(labels.shape[0]):
            ids = batch["input_ids"][row][batch["attention_mask"][row].bool()]
            prompt = ids if is_seq2seq else ids[labels[row][: len(ids)] == -100]
            prompt = prompt[~torch.isin(prompt, skip)]
            out[row][torch.isin(labels[row], prompt) & (labels[row] != -100)] = weight
        return out

    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        rows, width = int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(3, 30, (1,), generator=g))
        ids = torch.randint(0, 12, (rows, width), generator=g)
        attention = (torch.arange(width)[None] < torch.randint(1, width + 1, (rows, 1), generator=g)).long()
        seq2seq = trial % 2 == 0
        if seq2seq:
            labels = torch.randint(0, 12, (rows, int(torch.randint(1, 20, (1,), generator=g))), generator=g)
            labels[torch.rand(labels.shape, generator=g) < 0.3] = -100
        else:
            labels = ids.clone()
            labels[torch.arange(width)[None] < torch.randint(0, width, (rows, 1), generator=g)] = -100
            labels[attention == 0] = -100
        batch = {"input_ids": ids, "attention_mask": attention, "labels": labels}
        skip = torch.tensor([3, 7])
        assert torch.equal(copy_weights(batch, seq2seq, 3.0, skip), by_row(batch, seq2seq, 3.0, skip)), trial


def test_coverage_keeps_the_recipe_that_lists_what_it_uses():
    """Among decodings with the same recall, the one whose ingredient list names the requested
    ingredients wins over one that only cooks with them ("rice" in a step, never listed)."""
    from chefgenius.data.recipe_format import format_target
    from chefgenius.generation.decode import _most_covering

    asked = ["chicken", "rice", "onion"]
    unlisted = format_target("Chicken Sandwich", ["4 slices bread", "1 cup chicken"],
                             ["Cook the rice with the chicken and onion."])
    listed = format_target("Chicken Rice", ["1 cup chicken", "1 cup rice", "1 onion, sliced"],
                           ["Cook the rice with the chicken and onion.", "Serve."])
    fewer = format_target("Chicken", ["1 cup chicken"], ["Cook the chicken."])
    # least steered first: a tie on recall and listing still goes to the least steered one
    assert _most_covering([[fewer], [unlisted], [listed]], asked) == [listed]
    assert _most_covering([[unlisted], [listed], [listed + " "]], asked) == [listed]
    assert _most_covering([[unlisted], [unlisted + " "]], asked) == [unlisted]
