"""The one recipe format: formatting, parsing, and round trips through tokenizers."""

from __future__ import annotations

from chefgenius.data.recipe_format import format_target, ingredient_name, parse_recipe, recipe_to_example
from chefgenius.data.sources import Recipe
from chefgenius.data.tokenizer import train_tokenizer

R = Recipe("Lemon Rice", ("1 cup rice", "2 cups water", "1 lemon, juiced"),
           ("Rinse the rice.", "Boil the water with 2. 5 g salt.", "Add the lemon juice and serve."))


def test_parse_inverts_format_even_without_newlines():
    text = format_target(R.title, R.ingredients, R.directions)
    for variant in (text, text.replace("\n", " "), " ".join(text.split())):
        parsed = parse_recipe(variant)
        assert (parsed.title, parsed.ingredients, parsed.directions) == (R.title, R.ingredients, R.directions)


def test_parse_of_partial_text_is_incomplete_not_an_error():
    assert not parse_recipe("Title: Soup Ingredients: - water").is_complete
    assert parse_recipe("garbage").title == ""


def test_prompt_lists_ingredient_names():
    assert ingredient_name("2 c. chopped onion, diced") == "onion"
    assert ingredient_name("1 (8 oz.) pkg. cream cheese, cubed") == "cream cheese"
    prompt, _ = recipe_to_example(R)
    assert prompt == "Generate a recipe with: rice, water, lemon"


def test_round_trip_through_trained_tokenizer_and_newline_dropping_decode():
    text = format_target(R.title, R.ingredients, R.directions)
    tok = train_tokenizer([text] * 20, vocab_size=300)
    decoded = tok.decode(tok.encode(text, add_special_tokens=False))
    assert decoded == text
    # T5's sentencepiece collapses newlines into spaces; the parser must not care.
    collapsed = " ".join(decoded.split())
    parsed = parse_recipe(collapsed)
    assert (parsed.title, parsed.ingredients, parsed.directions) == (R.title, R.ingredients, R.directions)


def test_round_trip_through_a_t5_style_unigram_tokenizer():
    """T5's fast tokenizer pipeline (whitespace split + metaspace, unigram) drops newlines."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace()])
    tok.decoder = decoders.Metaspace()
    text = format_target(R.title, R.ingredients, R.directions)
    tok.train_from_iterator([text] * 20, trainers.UnigramTrainer(vocab_size=120, special_tokens=["<unk>"],
                                                                  unk_token="<unk>"))
    decoded = tok.decode(tok.encode(text).ids)
    assert "\n" not in decoded  # the newlines are really gone
    parsed = parse_recipe(decoded)
    assert (parsed.title, parsed.ingredients, parsed.directions) == (R.title, R.ingredients, R.directions)
