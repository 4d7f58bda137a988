"""The fast preparation paths give exactly what the plain rules give: the RE2 prefilter and the fast
cleaning, block content hashes, Arrow's CSV parsing, tiktoken's ids, and each fallback when they can't."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from chefgenius.config import QualityConfig, build_config
from chefgenius.data import clean, encoders, prepared, sources
from chefgenius.data.clean import CleanReport, clean_one, content_hash, normalise_text
from chefgenius.data.prepared import prepare_dataset
from chefgenius.data.recipe_format import recipe_to_example
from chefgenius.data.sources import Recipe, arrow_csv_rows, read_rows, read_source
from chefgenius.data.tokenizer import train_tokenizer

from .conftest import SHARED_DATA

# Pieces that touch every rule: the prefilter's words next to ASCII and non-ASCII letters, the
# letters IGNORECASE folds (İ ı ſ K), emoticons with and without word neighbours, whitespace of
# every kind, section headers, junk words with punctuation, shouting, URLs inside words.
PIECES = ["I", "i'm", "İ", "ı", "ſ", "\u212a", "my", "we", "our", "me", "mé", "this", "recipe", "this recipe",
          "my family", "we use", "thiſ", "thiſ recipe",
          "reviewſ", "enjoy", "Delicious", "reviews", "http://x.io", "xhttp", "www.", "WWW", "LOL",
          "lol", "yum!", "omg", "ABCD", "EFGH", "ABC", ":)", ";-P", "<3", "^_^", "xD", "x-D", "a:)b", "!!!", "???",
          "!!", "😀", "☀", " ", "  ", "\t", "\n", "\u00a0", "\u3000",
          "\x1f", "é", "Ω", "ﬁ", "½", "Filling:", "°", "\x85", "\u2028", "\u200b", "this  recipe",
          "For the crust:", "for   the sauce", "Glaze", "sauce", "1 cup", "2 c. flour", "", "_", ".", ",", "-"]


def _line(rng: random.Random) -> str:
    return "".join(rng.choice(PIECES) + rng.choice(["", " ", " ", ""]) for _ in range(rng.randrange(0, 5)))


def _random_recipes(n: int, seed: int = 0) -> list[Recipe]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ings = tuple(_line(rng).strip() for _ in range(rng.randrange(0, 5)))
        dirs = tuple(_line(rng).strip() for _ in range(rng.randrange(0, 4)))
        out.append(Recipe(_line(rng).strip(), ings, dirs, source_row=i))
    return out


def _sample_recipes() -> list[Recipe]:
    """Real recipes: the shared RecipeNLG samples where present, and always the bundled corpus (twelve
    times, so that rows the prefilter clears weigh enough without the shared folder: with six, a clone
    without it failed the bound below by 17 calls of 3,003)."""
    from chefgenius.data.sources import bundled_corpus_path

    rows: list[Recipe] = [r for r in read_source(bundled_corpus_path()) if isinstance(r, Recipe)] * 12
    for name in ("recipenlg-sample-1k.csv", "recipenlg-junk-sample.csv"):
        if (SHARED_DATA / name).exists():
            rows += [r for r in read_source(str(SHARED_DATA / name)) if isinstance(r, Recipe)]
    return rows


@pytest.mark.parametrize("junk", [None, ["omg!", "a.b", "yum", "k"]])
def test_batch_cleaning_equals_the_exact_rules_row_by_row(junk, monkeypatch):
    cfg = QualityConfig() if junk is None else QualityConfig(junk_words=junk)
    rows = _random_recipes(6000) + _sample_recipes()
    rng = random.Random(3)
    for i in rng.sample(range(len(rows)), 300):  # scores given by the source, and rows that failed to parse
        rows[i] = Recipe(*dataclasses.astuple(rows[i])[:3], quality_score=rng.choice([0.2, 0.9]), source_row=i)
    for i in rng.sample(range(len(rows)), 50):
        rows[i] = sources.RowError(i, "ingredients is not a valid JSON list", "x")
    calls = {"score": 0, "repair_regex": 0}
    real_score, real_repair_line = clean.quality_score, clean._repair_line
    monkeypatch.setattr(clean, "quality_score", lambda *a: calls.__setitem__("score", calls["score"] + 1) or
                        real_score(*a))
    monkeypatch.setattr(clean, "_repair_line", lambda *a: calls.__setitem__("repair_regex", calls["repair_regex"] + 1)
                        or real_repair_line(*a))
    fast, exact = CleanReport(), CleanReport()
    got = clean.clean_rows(rows, cfg, fast)
    fast_calls = dict(calls)
    want = [clean_one(row, cfg, exact) for row in rows]
    assert got == want
    assert json.dumps(fast.to_dict()) == json.dumps(exact.to_dict())  # counts, examples and their order
    # The batch skips the Python regexes for most rows, and still uses them for many.
    assert len(rows) // 10 < fast_calls["score"] < calls["score"] - fast_calls["score"] - len(rows) // 10
    assert 0 < fast_calls["repair_regex"] < calls["repair_regex"] - fast_calls["repair_regex"]


def test_a_non_ascii_junk_word_turns_the_prefilter_off():
    cfg = QualityConfig(junk_words=["café"])
    assert clean._flag_patterns(tuple(cfg.junk_words)) is None
    rows = _random_recipes(200)
    fast, exact = CleanReport(), CleanReport()
    assert clean.clean_rows(rows, cfg, fast) == [clean_one(r, cfg, exact) for r in rows]
    assert fast.to_dict() == exact.to_dict()


def test_block_content_hash_equals_the_line_by_line_definition():
    def by_line(r: Recipe) -> str:
        parts = [normalise_text(r.title), *map(normalise_text, r.ingredients), "\x1e",
                 *map(normalise_text, r.directions)]
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()

    rows = _random_recipes(6000, seed=1) + _sample_recipes() + [Recipe("a\x00b", ("\x00",), ()), Recipe("", (), ())]
    assert [content_hash(r) for r in rows] == [by_line(r) for r in rows]


def _rows_via_arrow(path: Path) -> list:
    batches = arrow_csv_rows(path)
    assert batches is not None, "Arrow refused a file it should read"
    return [row for chunk in batches for row in chunk.rows()]


def test_arrow_reads_each_row_as_the_csv_module_does(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "ARROW_BLOCK_BYTES", 4096)  # many batches: row numbers must continue
    tricky = tmp_path / "tricky.csv"
    with tricky.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\r\n")
        w.writerow(["", "title", "ingredients", "directions", "link", "NER"])
        for i in range(300):
            w.writerow([i, f'Soup "{i}",\nwith a newline', '["1 \\"cup\\"", "2 eggs"]', '["Stir,\\nthen boil."]',
                        "" if i % 3 else "www.x.io", '["egg"]'])
    with tricky.open("ab") as f:
        f.write(b'301,Caf\xc3\xa9 bad \xff byte,"[""x""]","[""y""]",,"[]"\r\n\r\n302,bare " quote,"[""x""]","[]",,\r\n')
    files = [tricky] + [SHARED_DATA / n for n in ("recipenlg-sample-1k.csv",) if (SHARED_DATA / n).exists()]
    for path in files:
        via_arrow, via_csv = _rows_via_arrow(path), list(read_rows(str(path), "csv"))
        assert via_arrow == via_csv, path
        if path == tricky:  # the batch holding the bad byte is decoded cell by cell, the others validated whole
            assert any(r.valid_utf8 for r in via_arrow) and not all(r.valid_utf8 for r in via_arrow)
        assert [r.parse() for r in via_arrow] == [r.parse() for r in via_csv], path


def test_a_row_arrow_would_skip_sends_the_whole_pass_to_the_csv_module(tmp_path, monkeypatch):
    path = tmp_path / "recipes.csv"
    good = '{i},Soup {i},"[""1 onion"", ""2 cups water"", ""salt""]","[""Boil."", ""Stir.""]","[""onion""]"\n'
    with path.open("w") as f:
        f.write(",title,ingredients,directions,NER\n")
        for i in range(400):
            f.write(good.format(i=i))
        f.write('400,Soup 400,"[""onion""]","[""Boil.""]","[""onion""]",one cell too many\n')
        for i in range(401, 600):
            f.write(good.format(i=i))
    monkeypatch.setattr(sources, "ARROW_BLOCK_BYTES", 2048)  # the bad row lies in a later batch
    batches = arrow_csv_rows(path)
    with pytest.raises(sources.ArrowFallback):
        for _ in batches:
            pass
    logs: list[str] = []
    cfg = build_config({"data": {"path": str(path), "max_prompt_tokens": 24, "max_target_tokens": 64}}).data
    ds = prepare_dataset(cfg, is_seq2seq=False, tokenizer=None, vocab_size=300, cache_dir=tmp_path / "c",
                         log=logs.append, workers=2)
    assert any("reading it with the csv module" in line for line in logs), logs
    rep = ds.report
    assert rep.num_read == 600 and rep.dropped["malformed: row has more cells than the header"] == 1
    assert rep.dropped["duplicate"] == 0 and rep.num_kept == 599


def _bpe_tokenizer(texts: list[str], vocab: int) -> PreTrainedTokenizerFast:
    return train_tokenizer(texts, vocab)


def _sample_texts() -> list[str]:
    path = SHARED_DATA / "recipenlg-sample-1k.csv"
    if not path.exists():
        pytest.skip(f"{path} absent (shared data folder not provided)")
    out = []
    for r in read_source(str(path)):
        if isinstance(r, Recipe):
            p, t = recipe_to_example(r)
            out += [p + "\n", t]
    return out


@pytest.mark.parametrize("vocab", [300, 4000])
def test_tiktoken_gives_the_tokenizers_ids(vocab):
    texts = _sample_texts()
    tok = _bpe_tokenizer(texts, vocab)
    fast = encoders.exact_encoder(tok)
    assert fast is not None
    hostile = ["</s> inside a recipe", "<pad><unk>", "tabs\tand\u00a0nbsp  ", "İstanbul ſoup", "😀🍳", "\x00\x1f", ""]
    assert encoders.first_difference(fast, encoders.hf_encoder(tok), texts + hostile) is None


def test_a_tokenizer_tiktoken_cannot_reproduce_gets_no_tiktoken():
    texts = _sample_texts()[:200]
    tok = _bpe_tokenizer(texts, 300)
    backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    backend.normalizer = normalizers.Lowercase()
    assert encoders.exact_encoder(PreTrainedTokenizerFast(tokenizer_object=backend)) is None
    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    wordpiece.pre_tokenizer = pre_tokenizers.Whitespace()
    assert encoders.exact_encoder(PreTrainedTokenizerFast(tokenizer_object=wordpiece)) is None


def _store_arrays(ds) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(ds.path.glob("*.bin"))}


@pytest.mark.parametrize("where", ["checked before", "audited while running"])
def test_a_tiktoken_difference_falls_back_to_the_tokenizer(tmp_path, monkeypatch, where):
    cfg = build_config({"data": {"max_prompt_tokens": 24, "max_target_tokens": 96}}).data
    reference = prepare_dataset(cfg, is_seq2seq=False, tokenizer=None, vocab_size=400, cache_dir=tmp_path / "hf",
                                log=lambda _: None, workers=2, encoder="hf")
    real = encoders.tiktoken_encoder

    def wrong(ranks, added, fallback):  # one id off in every text: any comparison must see it
        enc = real(ranks, added, fallback)
        return lambda texts: [[*ids[:-1], (ids[-1] + 1) % 300] if ids else ids for ids in enc(texts)]

    monkeypatch.setattr(encoders, "tiktoken_encoder", wrong)
    monkeypatch.setattr(prepared, "exact_encoder", lambda tok: wrong(*encoders.tiktoken_ranks(tok),
                                                                     encoders.hf_encoder(tok)))
    from chefgenius.data import token_arrays

    monkeypatch.setattr(token_arrays, "tiktoken_encoder", wrong)  # what the (forked) workers build
    if where == "audited while running":
        monkeypatch.setattr(prepared, "TIKTOKEN_CHECK", 0)  # the check before sees nothing
    logs: list[str] = []
    ds = prepare_dataset(cfg, is_seq2seq=False, tokenizer=None, vocab_size=400, cache_dir=tmp_path / "auto",
                         log=logs.append, workers=2)
    said = "differs from the tokenizer" if where == "checked before" else "tokenising again with the tokenizer"
    assert any(said in line for line in logs), logs
    assert ds.path.name == reference.path.name and _store_arrays(ds) == _store_arrays(reference)


def test_tiktoken_and_the_tokenizer_make_the_same_store(tmp_path, monkeypatch):
    path = SHARED_DATA / "recipenlg-sample-1k.csv"
    if not path.exists():
        pytest.skip(f"{path} absent (shared data folder not provided)")
    monkeypatch.setattr(sources, "ARROW_BLOCK_BYTES", 64 << 10)  # a dozen batches over two workers
    cfg = build_config({"data": {"path": str(path), "max_prompt_tokens": 24, "max_target_tokens": 96}}).data
    stores = {}
    for encoder in ("auto", "hf"):
        logs: list[str] = []
        stores[encoder] = prepare_dataset(cfg, is_seq2seq=False, tokenizer=None, vocab_size=600,
                                          cache_dir=tmp_path / encoder, log=logs.append, workers=2, encoder=encoder)
        assert any(("tiktoken" in line) == (encoder == "auto") for line in logs if "tokenising with" in line)
    assert stores["auto"].meta["fingerprints"] == stores["hf"].meta["fingerprints"]
    assert _store_arrays(stores["auto"]) == _store_arrays(stores["hf"])


def test_prefilter_patterns_are_supersets_python_cannot_outrun():
    """The constants the prefilter is built from are what Python's re really does."""
    import re
    import sys

    space = re.compile(r"\s")
    assert clean._PY_SPACE == "".join(c for c in map(chr, range(sys.maxunicode + 1)) if space.fullmatch(c))
    letter = re.compile("[a-z]", re.IGNORECASE)
    folds: dict[str, str] = {}
    for ch in map(chr, range(128, sys.maxunicode + 1)):
        if letter.fullmatch(ch):
            ascii_letter = next(c for c in "abcdefghijklmnopqrstuvwxyz" if re.fullmatch(c, ch, re.IGNORECASE))
            folds[ascii_letter] = folds.get(ascii_letter, "") + ch
    assert folds == clean._FOLDS
