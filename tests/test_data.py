"""Sources, cleaning, split, tokenised cache and the resumable sampler."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from chefgenius.config import QualityConfig
from chefgenius.data.clean import clean_recipes, content_hash, quality_score, repair
from chefgenius.data.loader import ResumableSampler
from chefgenius.data.sources import DataError, Recipe, read_source
from chefgenius.data.split import fingerprint, split_recipes

from .conftest import SHARED_DATA

CSV_HEADER = ",title,ingredients,directions,link,source,NER\n"


def recipe(title="Soup", ingredients=("1 onion", "2 cups water"), directions=("Boil.", "Serve.")) -> Recipe:
    return Recipe(title, tuple(ingredients), tuple(directions))


def test_csv_parses_json_lists_and_counts_malformed_rows(tmp_path):
    good = '0,Soup,"[""1 onion"", ""2 cups water""]","[""Boil."", ""Serve.""]",x,y,"[""onion"", ""water""]"\n'
    bad_json = '1,Bad,"[""1 onion"", ","[""Boil.""]",x,y,"[]"\n'
    too_many = '2,Extra,"[""a"", ""b""]","[""c""]",x,y,"[]",surplus\n'
    evil = '3,Evil,"__import__(\'os\').system(\'touch pwned\')","[""c""]",x,y,"[]"\n'
    path = tmp_path / "r.csv"
    path.write_text(CSV_HEADER + good + bad_json + too_many + evil)
    rows = list(read_source(str(path), "csv"))
    assert isinstance(rows[0], Recipe) and rows[0].ingredients == ("1 onion", "2 cups water")
    assert rows[0].ner == ("onion", "water")
    kept, report = clean_recipes(rows, QualityConfig())
    assert [r.title for r in kept] == ["Soup"]
    assert report.num_read == 4 and report.num_dropped == 3
    assert any("JSON" in reason for reason in report.dropped)
    assert any("more cells" in reason for reason in report.dropped)
    assert not (tmp_path / "pwned").exists()


def test_missing_columns_and_missing_file_are_clear_errors(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("title,steps\nSoup,boil\n")
    with pytest.raises(DataError, match="lacks column"):
        list(read_source(str(path), "csv"))
    with pytest.raises(DataError, match="does not exist"):
        read_source(str(tmp_path / "nope.csv"))


def test_jsonl_accepts_lists_and_newline_strings_and_honours_quality_score(tmp_path):
    path = tmp_path / "r.jsonl"
    rows = [
        {"title": "A", "ingredients": ["1 egg", "salt"], "directions": "Beat.\nCook."},
        {"title": "B", "ingredients": "1 egg\nsalt", "directions": ["Fry."], "quality_score": 0.1},
        "not an object",
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    parsed = list(read_source(str(path), "jsonl"))
    assert parsed[0].directions == ("Beat.", "Cook.") and parsed[1].ingredients == ("1 egg", "salt")
    kept, report = clean_recipes(parsed, QualityConfig())
    assert [r.title for r in kept] == ["A"]
    assert report.dropped["low_quality"] == 1 and report.num_dropped == 3


def test_repair_removes_junk_and_junk_words_match_whole_words():
    counts: Counter = Counter()
    fixed = repair(recipe(title="Best Ever!!!!!!", ingredients=("Filling", "1 cup sugar", "For the crust:", "2 eggs"),
                          directions=("Mix :-)", "", "Bake!!!!")), counts)
    assert fixed.title == "Best Ever!" and fixed.ingredients == ("1 cup sugar", "2 eggs")
    assert fixed.directions == ("Mix", "Bake!")
    assert counts["section_headers"] == 2 and counts["empty_steps"] == 1 and counts["emoticons"] == 1
    clean = recipe(directions=("Soften the butter and stir often.", "Add approximately 2 cups."))
    assert quality_score(clean, ["often", "mate"]) == 0.85  # "often" is a whole word once; "soften" is not
    assert quality_score(clean, ["mate", "ten"]) == 1.0     # no whole-word "mate" in "approximately"


def test_junk_sample_file_is_repaired_and_scored(tmp_path):
    path = SHARED_DATA / "recipenlg-junk-sample.csv"
    if not path.exists():
        pytest.skip(f"{path} absent (shared data folder not provided)")
    kept, report = clean_recipes(read_source(str(path), "csv"), QualityConfig())
    assert report.num_read == 10
    assert report.repaired["exclamation_runs"] >= 4 and report.repaired["section_headers"] >= 1
    assert all("!!" not in " ".join(r.directions) for r in kept)
    assert "Homemade Butter" not in [r.title for r in kept] and report.dropped["low_quality"] >= 1
    assert report.num_kept + report.num_dropped == report.num_read


def test_dedupe_uses_normalised_content():
    a = recipe()
    b = recipe(title="SOUP", ingredients=("1 Onion", "2 cups  water"))
    kept, report = clean_recipes([a, b], QualityConfig())
    assert len(kept) == 1 and report.dropped["duplicate"] == 1


def test_split_is_stable_under_reordering_and_additions():
    recipes = [recipe(title=f"Soup {i}") for i in range(200)]
    train, val = split_recipes(recipes, seed=3, val_fraction=0.2)
    train2, val2 = split_recipes(list(reversed(recipes)), seed=3, val_fraction=0.2)
    assert train == train2 and val == val2 and fingerprint(train) == fingerprint(train2)
    more = recipes + [recipe(title=f"Stew {i}") for i in range(50)]
    train3, val3 = split_recipes(more, seed=3, val_fraction=0.2)
    assert set(map(content_hash, val)) <= set(map(content_hash, val3))
    assert set(map(content_hash, train)) <= set(map(content_hash, train3))
    assert 20 < len(val) < 60
    _, val_other_seed = split_recipes(recipes, seed=4, val_fraction=0.2)
    assert val_other_seed != val


def _drain(sampler: ResumableSampler, steps: int) -> list[list[list[int]]]:
    return [sampler.next_step() for _ in range(steps)]


def test_sampler_covers_each_epoch_once_with_smaller_last_step():
    s = ResumableSampler([1] * 23, batch_size=4, grad_accum=2, seed=1)
    assert s.steps_per_epoch == 3
    epoch = _drain(s, 3)
    flat = [i for step in epoch for mb in step for i in mb]
    assert sorted(flat) == list(range(23))
    assert [len(mb) for mb in epoch[-1]] == [4, 3]  # 23 - 16 samples left: a partial last step
    assert (s.epoch, s.position) == (1, 0)
    second = [i for step in _drain(s, 3) for mb in step for i in mb]
    assert sorted(second) == list(range(23)) and second != flat


def test_sampler_resumes_in_o1_to_the_same_batches():
    a = ResumableSampler(list(range(50)), batch_size=3, grad_accum=2, seed=9, group_by_length=True)
    _drain(a, 12)
    state = a.state_dict()
    rest = _drain(a, 10)
    b = ResumableSampler(list(range(50)), batch_size=3, grad_accum=2, seed=9, group_by_length=True)
    b.load_state_dict(state)
    assert _drain(b, 10) == rest
    with pytest.raises(ValueError, match="samples"):
        ResumableSampler([1] * 10, batch_size=3, grad_accum=2, seed=9).load_state_dict(state)


def test_sampler_ranks_partition_each_global_batch():
    ranks = [ResumableSampler([1] * 40, batch_size=2, grad_accum=1, seed=5, world_size=2, rank=r) for r in (0, 1)]
    steps = [r.next_step()[0] for r in ranks]
    assert len(set(steps[0]) | set(steps[1])) == 4 and ranks[0].position == ranks[1].position == 4


def test_group_by_length_reduces_padding():
    lengths = [int(x) for x in __import__("numpy").random.default_rng(0).integers(10, 300, 400)]
    def padding(s):
        total = 0
        for step in _drain(s, s.steps_per_epoch):
            for mb in step:
                total += max(lengths[i] for i in mb) * len(mb) - sum(lengths[i] for i in mb)
        return total
    plain = padding(ResumableSampler(lengths, batch_size=8, grad_accum=1, seed=0))
    grouped = padding(ResumableSampler(lengths, batch_size=8, grad_accum=1, seed=0, group_by_length=True))
    assert grouped < plain / 3


def _grouped_by_loops(order, lengths, width, rng):
    """The grouping as first written (a loop over windows and batches): the vectorised one must equal it,
    or every run that resumes across the change would see another batch order."""
    import numpy as np

    chunks = [order[s:s + width * 50][np.argsort(-lengths[order[s:s + width * 50]], kind="stable")]
              for s in range(0, len(order), width * 50)]
    grouped = np.concatenate(chunks)
    batches = [grouped[i:i + width] for i in range(0, len(grouped), width)]
    return np.concatenate([batches[i] for i in rng.permutation(len(batches))])


@pytest.mark.parametrize(("n", "width", "top"), [(50, 3, 5), (997, 8, 300), (20_011, 16, 1000), (7, 4, 2)])
def test_grouped_order_is_the_one_the_loop_gave(n, width, top):
    import numpy as np

    lengths = np.random.default_rng(n).integers(1, top, n)
    s = ResumableSampler([int(x) for x in lengths], batch_size=width, grad_accum=2, seed=3, group_by_length=True)
    for epoch in (0, 1):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([3, epoch])))
        expected = _grouped_by_loops(rng.permutation(n), lengths, width, rng)
        assert np.array_equal(s.epoch_order(epoch), expected)


def test_real_recipenlg_sample_loads():
    path = SHARED_DATA / "recipenlg-sample-1k.csv"
    if not path.exists():
        pytest.skip(f"{path} absent (shared data folder not provided)")
    kept, report = clean_recipes(read_source(str(path), "csv"), QualityConfig())
    assert report.num_read == 999 and report.num_kept > 800


def test_section_headers_are_told_from_ingredients():
    from chefgenius.data.clean import is_section_header

    for header in ("Filling", "FILLING", "For the crust:", "Cake:", "Topping", "for the sauce"):
        assert is_section_header(header), header
    for ingredient in ("hot sauce", "pie crust", "soy sauce", "1 c. sugar", "Sauce: 2 cups tomato puree", "salt"):
        assert not is_section_header(ingredient), ingredient


def test_commentary_lowers_the_score_but_plain_steps_do_not():
    chatty = recipe(directions=("Mix.", "I have used this recipe with great success; enjoy!", "My family loves it."))
    plain = recipe(directions=("Mix the butter and sugar.", "Bake for 30 minutes.", "Serve with a review of nothing."))
    assert quality_score(chatty, []) <= 0.5
    assert quality_score(plain, []) == 0.9  # "review" is commentary even here: one fixed penalty


def test_repair_fast_path_for_clean_recipes_changes_nothing(monkeypatch):
    """Clean recipes skip per-line repair; forcing the per-line path on every row must give the same result."""
    import re

    from chefgenius.data import clean

    rows = [recipe(title="Plain Soup", ingredients=("1 onion", "2 cups  water", "Filling"),
                   directions=("Boil.\tStir.",)),
            recipe(title="Wow!!!", ingredients=("1 egg :)", "salt"), directions=("Fry 🍳", ""))]
    for name in ("recipenlg-sample-1k.csv", "recipenlg-junk-sample.csv"):
        if (SHARED_DATA / name).exists():
            rows += [r for r in read_source(str(SHARED_DATA / name)) if isinstance(r, Recipe)]
    fast = [(repair(r, c := Counter()), c) for r in rows]
    monkeypatch.setattr(clean, "_NEEDS_REPAIR", re.compile(r"(?s).?"))  # always matches: per-line path
    slow = [(repair(r, c := Counter()), c) for r in rows]
    assert fast == slow
