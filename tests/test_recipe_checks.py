"""What a cook sees: duplicate lines, looping steps, titles that do not fit, extra items, on hand-made recipes."""

from __future__ import annotations

import pytest

from chefgenius.data.recipe_format import format_target
from chefgenius.generation.recipe_checks import (
    check_recipe,
    cook_metrics,
    direction_loops,
    duplicate_ingredient_lines,
    repeated_ingredients,
)

from .conftest import SHARED_DATA

GOOD = format_target("Chicken Fried Rice", ["3 cups cooked rice, cold", "1 cup chicken, diced", "1 onion, chopped",
                                            "2 tbsp soy sauce"],
                     ["Heat the oil in a wok.", "Fry the onion until soft.", "Add the chicken and the rice.",
                      "Season with soy sauce and serve."])


def test_a_sound_recipe_passes_every_check():
    c = check_recipe(GOOD)
    assert (c.duplicate_lines, c.repeated_ingredients, c.loops, c.title_misfits, c.extra_items) == \
        ([], [], [], [], [])
    assert c.title_fits


def test_duplicate_lines_ignore_spacing_and_case_but_not_quantities():
    lines = ["1 (8 oz.) can salmon, drained", "2 eggs", "1 (8 oz.)  can Salmon, drained", "1 cup sugar",
             "2 cups sugar"]  # sugar twice in other amounts is fine
    assert duplicate_ingredient_lines(lines) == ["1 (8 oz.)  can Salmon, drained"]
    assert duplicate_ingredient_lines(["graham crackers", "butter", "graham crackers", "graham crackers"]) == \
        ["graham crackers"]


def test_repeated_ingredients_are_found_in_any_quantity_and_number():
    lines = ["1 can cream of mushroom soup", "1/2 stick oleo", "1 (8 oz.) can cream of mushroom soup",
             "1/2 sticks oleo", "2 eggs", "1 cup sugar"]
    assert repeated_ingredients(lines) == ["cream of mushroom soup", "oleo"]
    assert repeated_ingredients(["2 c. flour", "1 c. sugar", "1 tsp. vanilla"]) == []


@pytest.mark.parametrize(("steps", "reason"), [
    (["Add soup mix and soup mix and soup mix and milk."], "step 1 says 'soup mix' over and over"),
    (["Add cocoa, cocoa, margarine, cocoa, margarine and cocoa."], "step 1 says 'cocoa' over and over"),
    (["Add rice and bouillon cubes. Add rice.", "Add rice. Stir."], "repeats 'add rice'"),
    (["Boil water.", "Add rice. 2. Add rice."], "step 2 restarts numbering at 2"),
    (["Boil.", "Stir.", "9. 9. 9. 9."], "step 3 restarts numbering at 9"),
    (["Boil.", "rice and rice and rice and rice and rice."], "step 2 is mostly 'rice'"),
    (["Cook rice, onion and salt.", "Add rice, rice."], "step 2 says 'rice' twice in a row"),
    (["Add rice to rice and stir."], "step 1 says 'rice' twice in a row"),
    (["Cook rice and rice over chicken."], "step 1 says 'rice' twice in a row"),
    (["Mix sugar, cocoa, cocoa as desired."], "step 1 says 'cocoa' twice in a row"),
    (["Add rice and onion.", "Add the rice to the pan.", "Boil.", "Add rice, then serve."],
     "3 sentences open with 'add rice'"),
])
def test_looping_directions_are_named(steps, reason):
    assert any(r.startswith(reason) for r in direction_loops(steps)), direction_loops(steps)


def test_real_step_numbers_temperatures_and_short_repeats_are_not_loops():
    assert direction_loops(["Preheat oven to 350.", "Bake 25 to 30 minutes at 350.", "Cool 10. Serve."]) == []
    assert direction_loops(["Preheat oven to 350 degrees.", "Bake for 10 to 12 minutes.", "Serve warm."]) == []
    assert direction_loops(["Mix.", "Mix."]) == []  # one-word sentences are not judged
    assert direction_loops(["Boil.", "Add rice and cook until done.\n3."]) == []  # cut off at the next step
    # two things of one food word, and an opening said twice, are not loops
    assert direction_loops(["Stir in tomatoes, tomato sauce and water.", "Cream the cream cheese; add milk.",
                            "Add rice and onion.", "Add rice to the pan."]) == []


def test_title_fit_and_extra_items():
    text = format_target("Peach Cobbler", ["1 cup flour", "1 cup sugar", "1/2 cup butter", "1 tsp vanilla"],
                         ["Mix the flour and sugar.", "Beat in a pumpkin.", "Bake."])
    c = check_recipe(text)
    assert c.title_misfits == ["peach"] and not c.title_fits
    assert c.extra_items == ["pumpkin"]
    plural = format_target("Blueberry Muffins", ["2 cups blueberries", "1 muffin mix"], ["Fold in the blueberries."])
    assert check_recipe(plural).title_fits and check_recipe(plural).extra_items == []


def test_cook_metrics_are_shares_of_recipes():
    bad = format_target("Rice", ["1 cup rice", "1 cup rice"], ["Add rice. Add rice."])
    m = cook_metrics([GOOD, bad])
    assert m == {"duplicate_line_rate": 0.5, "repeated_ingredient_rate": 0.5, "looping_directions_rate": 0.5,
                 "title_fit_rate": 1.0, "extra_items": 0.0}


def test_the_corpus_itself_rarely_trips_the_checks():
    """Real recipes after cleaning are the baseline a model learns: their rates bound what decoding can fix."""
    from chefgenius.config import QualityConfig
    from chefgenius.data.clean import clean_recipes
    from chefgenius.data.sources import read_source

    path = SHARED_DATA / "recipenlg-sample-1k.csv"
    if not path.exists():
        pytest.skip(f"{path} absent (shared data folder not provided)")
    kept, _ = clean_recipes(read_source(path), QualityConfig())
    texts = [format_target(r.title, r.ingredients, r.directions) for r in kept]
    m = cook_metrics(texts)
    assert m["duplicate_line_rate"] <= 0.02 and m["looping_directions_rate"] <= 0.05, m
    assert m["repeated_ingredient_rate"] <= 0.08, m  # a topping's sugar, a glaze's butter


def test_generic_words_and_the_verb_cream_are_not_extra_items():
    """The steps may call what the list names specifically by its kind ("the meat" after ground beef,
    "cheese" after Cheddar), and "cream" as a verb names no ingredient; "Add the cream" still does."""
    text = format_target("Cheesy Beef", ["1 lb. ground beef", "1 cup grated Cheddar", "1/2 cup butter", "1 cup sugar"],
                         ["Brown the meat.", "Cream butter and sugar.", "Cream together until light.",
                          "Sprinkle with cheese."])
    c = check_recipe(text)
    assert c.extra_items == [] and c.title_fits
    cream = format_target("Beef", ["1 lb. ground beef"], ["Brown the beef.", "Add the cream. Stir in cream cheese."])
    assert check_recipe(cream).extra_items == ["cream", "cheese"]
    nothing_meaty = format_target("Rice", ["1 cup rice"], ["Cook the rice.", "Add the meat."])
    assert check_recipe(nothing_meaty).extra_items == ["meat"]
