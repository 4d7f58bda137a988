"""RecipeGuard forbids exactly the continuations that would repeat a line, a sentence or a step number."""

from __future__ import annotations

import pytest
import torch

from chefgenius.generation.guard import RecipeGuard


@pytest.fixture(scope="module")
def tok():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    from chefgenius.data.recipe_format import format_target
    from chefgenius.data.sources import bundled_corpus_path, read_source

    texts = [format_target(r.title, r.ingredients, r.directions) for r in read_source(bundled_corpus_path())]
    tk = Tokenizer(models.BPE(unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = __import__("tokenizers").decoders.ByteLevel()
    tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=800, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return GPT2TokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def _verdicts(tok, written: str, candidates: list[str], **guard) -> dict[str, bool]:
    """Whether each candidate continuation (one token each) is forbidden after ``written``."""
    ids = tok.encode(written)
    firsts = {}
    for c in candidates:
        encoded = tok.encode(c)
        assert len(encoded) == 1, f"{c!r} is not one token here: pick another candidate"
        firsts[c] = encoded[0]
    scores = torch.zeros(1, len(tok))
    for rank, c in enumerate(candidates):  # every candidate among the best-scored
        scores[0, firsts[c]] = 10.0 - rank
    out = RecipeGuard(tok, start=0, **guard)(torch.tensor([ids]), scores)
    return {c: bool(torch.isinf(out[0, firsts[c]])) for c in candidates}


def test_an_earlier_ingredient_line_cannot_be_written_again_past_its_quantity(tok):
    written = "Title: Cake\nIngredients:\n- 1 cup sugar\n- 2 eggs\n- 1 cup"
    assert _verdicts(tok, written, [" sugar", " flour", " milk"]) == {" sugar": True, " flour": False,
                                                                        " milk": False}
    # a line may start like an earlier one (the quantity), but not list the same ingredient in another
    # quantity (singular or plural), nor double a word
    assert _verdicts(tok, "Ingredients:\n- 1 cup sugar\n- ", ["1", "2"]) == {"1": False, "2": False}
    assert _verdicts(tok, "Ingredients:\n- 1 cup sugar\n- 2 tbsp", [" sugar", " butter"]) == {
        " sugar": True, " butter": False}
    assert _verdicts(tok, "Ingredients:\n- 2 eggs\n- 1", [" egg"]) == {" egg": True}
    assert _verdicts(tok, "Ingredients:\n- 1 cup chopped", [" chopped", " onion"]) == {" chopped": True,
                                                                                       " onion": False}
    # a line ends only once it names something
    assert _verdicts(tok, "Ingredients:\n- 4 cups cooked", ["\n", " rice"]) == {"\n": True, " rice": False}
    assert _verdicts(tok, "Ingredients:\n- 4 cups cooked rice", ["\n"]) == {"\n": False}


def test_a_new_line_may_open_with_an_earlier_lines_quantity_unit_and_all(tok):
    """The unit being written ("1 c", "1 (8 oz") is not yet an ingredient's name: with it counted as one,
    every line after "- 1 c. sugar" had to use a quantity never used before ("1/2 pt. peanuts")."""
    assert _verdicts(tok, "Ingredients:\n- 1 cup sugar\n- 1", [" cup"]) == {" cup": False}
    assert _verdicts(tok, "Ingredients:\n- 1 c. sugar\n- 1", [" c"]) == {" c": False}
    assert _verdicts(tok, "Ingredients:\n- 1 c. sugar\n- 1 c", ["."]) == {".": False}
    assert _verdicts(tok, "Ingredients:\n- 1 (8 oz.) can salmon\n- 1 (8", [" oz"]) == {" oz": False}
    # past the quantity the earlier line may not be copied
    assert _verdicts(tok, "Ingredients:\n- 1 c. sugar\n- 1 c.", [" milk", " s"]) == {" milk": False, " s": True}


def test_a_line_of_the_list_says_a_pair_of_words_once(tok):
    """ "- 1 (4 oz.) pkg. zucchini, drained spinach, drained spinach" (a held-out recipe before this rule)."""
    written = "Ingredients:\n- 1 pkg. cut spinach, fresh cut"
    assert _verdicts(tok, written, [" spinach", " lemon"]) == {" spinach": True, " lemon": False}
    # a word alone may come again in the line
    assert _verdicts(tok, "Ingredients:\n- 1 c. spinach, chopped lemon and", [" spinach"]) == {" spinach": False}


def test_parentheses_close_only_what_their_line_opened_and_close_before_it_ends(tok):
    assert _verdicts(tok, "Ingredients:\n- 1 (8 oz.) can soup\n- 1/2 oz", [")", "."]) == {")": True, ".": False}
    assert _verdicts(tok, "Ingredients:\n- 1 (8 oz", [")"]) == {")": False}
    assert _verdicts(tok, "Ingredients:\n- 1 cup rice (I use brown", ["\n", ")"]) == {"\n": True, ")": False}
    assert _verdicts(tok, "Ingredients:\n- rice\nDirections:\n1. Boil rice (10 minutes", ["\n", ")"]) == {
        "\n": True, ")": False}


def test_a_line_of_the_list_holds_one_ingredient(tok):
    assert _verdicts(tok, "Ingredients:\n- 1 cup sugar\n- 1/2 c. self-", [" 1", "r"]) == {" 1": True, "r": False}
    assert _verdicts(tok, "Ingredients:\n- 1 cup sugar\n- 1/2 c. lemon flavored", ["-", " sugar"]) == {
        "-": False, " sugar": False}  # the dash may still join a word ("flavored-rice")
    assert _verdicts(tok, "Ingredients:\n- 1 cup sugar\n- 1/2 c. lemon-", ["\n"]) == {"\n": True}


def test_a_sentence_of_the_directions_cannot_be_repeated(tok):
    written = "Ingredients:\n- 1 cup rice\nDirections:\n1. Add rice.\n2. Boil. Add rice"
    assert _verdicts(tok, written, [".", " and"]) == {".": True, " and": False}


def test_no_third_sentence_opens_like_two_before_it(tok):
    two = "Ingredients:\n- 1 cup rice\n- 1 onion\nDirections:\n1. Add rice and onion.\n2. Add rice and water.\n3."
    assert _verdicts(tok, two + " Add rice", [" and", " to"]) == {" and": True, " to": False}
    one = "Ingredients:\n- 1 cup rice\n- 1 onion\nDirections:\n1. Add rice and onion.\n2."
    assert _verdicts(tok, one + " Add rice", [" and", " to"]) == {" and": False, " to": False}


def test_step_numbers_go_on_in_order(tok):
    written = "Ingredients:\n- rice\nDirections:\n1. Boil water.\n2. Add rice.\n"
    assert _verdicts(tok, written, ["3", "2", "1"]) == {"3": False, "2": True, "1": True}


def test_a_step_ends_only_after_a_sentence_of_its_own(tok):
    steps = "Ingredients:\n- rice\nDirections:\n1. Boil water.\n"
    eos = tok.eos_token
    # "2." alone, or "Add rice and", cannot be ended by a new line or by the end of the text
    assert _verdicts(tok, steps + "2.", ["\n", " Add"]) == {"\n": True, " Add": False}
    assert _verdicts(tok, steps + "2. Add rice and", ["\n", eos, " stir"]) == {"\n": True, eos: True, " stir": False}
    assert _verdicts(tok, steps + "2. Add rice.", ["\n", eos]) == {"\n": False, eos: False}


def test_a_step_opens_with_a_capital_or_a_number(tok):
    steps = "Ingredients:\n- rice\n- 2 eggs\nDirections:\n1. Boil water.\n2."
    verdicts = _verdicts(tok, steps, [" rice", " Add", " 2", " add"])
    assert verdicts == {" rice": True, " Add": False, " 2": False, " add": True}
    # inside a step, lower case goes on as before
    assert _verdicts(tok, steps + " Add", [" rice", " eggs"]) == {" rice": False, " eggs": False}


def test_no_word_a_third_time_in_one_sentence(tok):
    listed = "Ingredients:\n- 2 cups water\n- 1 c. sugar\n- 2 c. flour\n- 1 tsp. salt\n- 1 pkg. yeast\n- 1 c. milk\n"
    steps = listed + "Directions:\n1. Mix sugar, water, flour, salt, yeast, milk and water"
    assert _verdicts(tok, steps + ",", [" water", " sugar"]) == {" water": True, " sugar": False}
    # a new sentence counts afresh
    assert _verdicts(tok, steps + ". Add", [" water", " sugar"]) == {" water": False, " sugar": False}


def test_a_new_line_of_the_directions_starts_with_the_next_step_number(tok):
    steps = "Ingredients:\n- rice\nDirections:\n1. Boil water.\n2. Add rice.\n"
    assert _verdicts(tok, steps, ["3", " of", "A"]) == {"3": False, " of": True, "A": True}
    assert _verdicts(tok, steps + "3", [".", " of", "s"]) == {".": False, " of": True, "s": True}


def _finishing(tok, written: str, word: str, **guard) -> bool:
    """Whether the token that finishes ``word`` (its earlier tokens written) is forbidden after ``written``."""
    ids = tok.encode(word)
    return _verdicts(tok, written + tok.decode(ids[:-1]), [tok.decode(ids[-1:])], **guard)[tok.decode(ids[-1:])]


def test_the_title_names_no_food_that_was_not_asked_for(tok):
    asked = {"ingredients": ["2 cups flour", "sugar", "butter", "vanilla"]}
    assert [_finishing(tok, "Title: Butter", w, **asked) for w in (" Lemon", " Sugar", " Cookies", " Chicken")] == [
        True, False, False, True]
    # a word still being written may become an asked-for one; a finished one may not be a missing food
    asked = {"ingredients": ["peanuts", "honey"]}
    assert _verdicts(tok, "Title: Pea", ["n", "s"], **asked) == {"n": False, "s": True}
    # no ingredients known (a bare guard): the title is left alone
    assert [_finishing(tok, "Title: Butter", w) for w in (" Lemon", " Chicken")] == [False, False]


def test_the_steps_cook_only_with_what_the_list_names(tok):
    written = "Ingredients:\n- 2 cups rice\n- 1 onion, diced\nDirections:\n1. Cook the"
    assert _verdicts(tok, written, [" rice", " onion", " chicken", " pot"]) == {
        " rice": False, " onion": False, " chicken": True, " pot": False}
    # a requested ingredient the list forgot may still be cooked with
    assert _verdicts(tok, written, [" chicken", " lemon"], ingredients=["chicken", "rice"]) == {
        " chicken": False, " lemon": True}


def test_the_layout_the_parser_reads_is_kept(tok):
    eos = tok.eos_token
    assert _verdicts(tok, "Title:", [",", "\n", " and", " Bake"]) == {",": True, "\n": True, " and": True,
                                                                       " Bake": False}
    # no sentence and no word twice in a title, and a long one ends its line
    assert _verdicts(tok, "Title: Bake", [".", " Bake", " and", " is"]) == {".": True, " Bake": True, " and": False,
                                                                         " is": True}
    long_title = "Title: Bake Mix Stir Fold Serve Cool Chill Slice"
    assert _verdicts(tok, long_title, ["\n", " of"]) == {"\n": False, " of": True}
    assert _verdicts(tok, "Title: Rice Bowl\n", ["Ingredients", "-", "1", eos]) == {
        "Ingredients": False, "-": True, "1": True, eos: True}
    listed = "Title: Rice Bowl\nIngredients:\n- 1 cup rice\n"
    assert _verdicts(tok, listed, ["-", "Directions", "1", eos]) == {"-": False, "Directions": False, "1": True,
                                                                     eos: True}
    # the list is not left empty, and a recipe may end after a finished step
    assert _verdicts(tok, "Title: Rice Bowl\nIngredients:\n", ["-", "Directions"]) == {"-": False, "Directions": True}
    assert _verdicts(tok, listed + "Directions:\n1. Boil the rice.\n", [eos, "2"]) == {eos: False, "2": False}


def test_what_the_layout_requires_is_written_when_no_candidate_fits(tok):
    ids = tok.encode("Title: Rice Bowl\n")
    fits = [t for t in range(len(tok)) if "Ingredients:".startswith(tok.decode([t])) and tok.decode([t])]
    scores = torch.full((1, len(tok)), 10.0)
    scores[0, fits] = -50.0  # every best-scored candidate misfits
    out = RecipeGuard(tok, start=0)(torch.tensor([ids]), scores)
    kept = torch.isfinite(out[0]).nonzero().flatten().tolist()
    assert len(kept) == 1 and "Ingredients:".startswith(tok.decode(kept))


def test_a_step_cannot_become_mostly_one_word(tok):
    written = "Ingredients:\n- rice\nDirections:\n1. Add rice and rice and"
    assert _verdicts(tok, written, [" rice", " water"]) == {" rice": True, " water": False}


def test_nothing_changes_when_nothing_repeats(tok):
    ids = tok.encode("Title: Soup\nIngredients:\n- 2 onions\n- 1 cup water\nDirections:\n1. Chop the onions.\n2. Boil")
    scores = torch.randn(2, len(tok), generator=torch.Generator().manual_seed(0))
    out = RecipeGuard(tok, start=0)(torch.tensor([ids, ids]), scores)
    banned = torch.isinf(out)
    # only candidates that would break a rule are touched; the top one here ("water" etc.) stays
    assert torch.equal(out[~banned], scores[~banned])
    assert not banned[0, scores[0].argmax()]


def test_a_sentence_cannot_repeat_itself_within(tok):
    steps = "Ingredients:\n- 1 cup rice\n- 1 onion\n- 1 cup milk\nDirections:\n1. "
    # a pair of content words a second time, a food word a third time, a word right after itself
    assert _verdicts(tok, steps + "Add rice and cook rice and", [" cook", " stir"]) == {" cook": True,
                                                                                        " stir": False}
    assert _verdicts(tok, steps + "Add rice, onion, rice and", [" rice", " milk"]) == {" rice": True,
                                                                                       " milk": False}
    assert _verdicts(tok, steps + "Add the", [" the", " rice"]) == {" the": True, " rice": False}
    # the next sentence starts afresh
    assert _verdicts(tok, steps + "Add rice and cook rice.", [" Cook"]) == {" Cook": False}
    # a food word right after itself ends no phrase ("rice, rice." "rice to rice and"), it may name
    # another thing ("tomatoes, tomato sauce")
    assert _verdicts(tok, steps + "Cook rice, rice", [".", " and", ","]) == {".": True, " and": True, ",": True}
    assert _verdicts(tok, steps + "Add rice to rice", [" and", "."]) == {" and": True, ".": True}
    assert _verdicts(tok, steps + "Cook rice and rice", [" over", " with"]) == {" over": True, " with": True}
    assert _verdicts(tok, steps + "Add onion, rice", [" and", "."]) == {" and": False, ".": False}


def test_no_third_sentence_opens_with_the_same_two_content_words(tok):
    steps = "Ingredients:\n- 1 cup rice\n- 1 onion\nDirections:\n1. Add rice and onion.\n2. Add the rice to it.\n3."
    assert _verdicts(tok, steps + " Add", [" rice", " onion"]) == {" rice": True, " onion": False}
    assert _verdicts(tok, steps + " Add the", [" rice", " onion"]) == {" rice": True, " onion": False}
    once = "Ingredients:\n- 1 cup rice\n- 1 onion\nDirections:\n1. Add rice and onion.\n2."
    assert _verdicts(tok, once + " Add", [" rice"]) == {" rice": False}


def test_title_words_are_the_training_titles_and_the_requests(tok):
    """A tiny model spells titles it never saw ("Pushel", "Sandwich onar"): with the training titles'
    words kept with the tokenizer, a title word may only be one that can still become one of them."""
    import copy

    from chefgenius.data import title_words

    known = title_words.attach(copy.copy(tok), ["and", "bacon", "casserole", "chicken", "rice"])
    assert _verdicts(known, "Title: Chicken", [" R", " P", " B"]) == {" R": False, " P": True, " B": False}
    assert _verdicts(known, "Title: Chicken R", ["ice", "us"]) == {"ice": False, "us": True}
    # a word begun may go on to a known one, not end unknown ("Ri" then the title's end)
    assert _verdicts(known, "Title: Chicken Ri", ["ce", "\n"]) == {"ce": False, "\n": True}
    assert _verdicts(known, "Title: Chicken Rice", ["\n", "s"]) == {"\n": False, "s": True}
    # the request's words are titles' words too, though no training title used them
    assert _verdicts(known, "Title: Chicken", [" S", " R"]) == {" S": True, " R": False}
    assert _verdicts(known, "Title: Chicken", [" S", " R"], ingredients=["chicken", "soup"]) == {
        " S": False, " R": False}
    # the rule keeps to the title: the list and the steps may use any word
    assert _verdicts(known, "Title: Chicken\nIngredients:\n- 1 cup", [" P", " R"]) == {" P": False, " R": False}
    # a tokenizer that carries none (a hub model, an older run) leaves titles to the other rules
    assert _verdicts(tok, "Title: Chicken", [" P", " R"]) == {" P": False, " R": False}


def test_title_words_collect_and_refuse_a_corrupt_file(tmp_path):
    from chefgenius.data import title_words
    from chefgenius.errors import ModelLoadError

    targets = ["Title: Mom's Chicken Pie\nIngredients:\n- 1 pushel", "Title: Chicken Rice\nIngredients:\n- rice"]
    assert title_words.collect(targets) == ("chicken", "mom", "pie", "rice", "s")  # the titles', not the lists'
    title_words.save(tmp_path, title_words.collect(targets))
    assert title_words.load(tmp_path) == ("chicken", "mom", "pie", "rice", "s")
    assert title_words.load(tmp_path / "elsewhere") is None
    (tmp_path / title_words.FILE).write_text('{"title_words": ["Chicken", 3]}')
    with pytest.raises(ModelLoadError, match="title_words.json is not a title-word list.*delete it"):
        title_words.load(tmp_path)


def test_the_steps_may_name_a_listed_food_by_its_kind_and_cream_as_a_verb(tok):
    from chefgenius.generation.guard import _names_a_missing_food
    from chefgenius.generation.recipe_checks import listed_foods

    listed = listed_foods("- 1 lb. ground chuck\n- 1/2 c. butter\n- 1 c. sugar")
    assert not _names_a_missing_food("1. Brown the", " meat", listed)
    assert _names_a_missing_food("1. Brown the", " chicken", listed)
    assert not _names_a_missing_food("Directions:\n2. ", "Cream", listed)  # the verb, at a step's start
    assert not _names_a_missing_food("2. Cream", " butter", listed)
    assert _names_a_missing_food("2. Cream", " cheese", listed)  # "Cream cheese": the food, never listed
    assert _names_a_missing_food("3. Add the", " cream", listed)
    written = "Ingredients:\n- 1 lb. ground chuck\n- 2 cups rice\nDirections:\n1. Brown the"
    assert _verdicts(tok, written, [" rice", " chicken"]) == {" rice": False, " chicken": True}


def test_each_directions_rule_judges_a_piece_alone():
    from chefgenius.generation.guard import (
        DIRECTION_RULES,
        _breaks_the_numbering,
        _directions,
        _names_a_food_not_listed,
        _opens_a_step_in_lower_case,
        _opens_a_third_sentence_alike,
    )

    assert len(DIRECTION_RULES) == 9 and DIRECTION_RULES[-1].__name__ == "_makes_the_step_mostly_one_word"
    opened = _directions("1. Brown the chicken.\n2.", None)
    assert _opens_a_step_in_lower_case(opened, " chicken, rice") is True
    assert _opens_a_step_in_lower_case(opened, " Add the rice.") is None
    numbered = _directions("1. Brown the chicken.\n", None)
    assert _breaks_the_numbering(numbered, "3") is True and _breaks_the_numbering(numbered, "2") is False
    assert _breaks_the_numbering(numbered, " Add") is None  # writes no number: no opinion
    listed = _directions("1. Brown the ", frozenset({"chicken"}))
    assert _names_a_food_not_listed(listed, "beef") is True and _names_a_food_not_listed(listed, "chicken") is None
    twice = _directions("1. Add rice and stir. Add rice and cook. ", None)
    assert _opens_a_third_sentence_alike(twice, "Add rice and") is True
    assert _opens_a_third_sentence_alike(twice, "Serve hot") is None
