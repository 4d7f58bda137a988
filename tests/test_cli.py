"""The command line, end to end on a tiny run: train, generate, data check, ckpt, eval, report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from chefgenius.cli import app
from chefgenius.evaluation.text_metrics import bleu

from .conftest import SHARED_DATA, tiny_config

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    cfg = tiny_config(training={"num_epochs": 2}, evaluation={"prompts": ["egg, milk"], "max_new_tokens": 40})
    (root / "c.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    result = invoke("train", "--config", root / "c.yaml", "--output-dir", root / "run")
    assert result.exit_code == 0, result.output
    assert "sample recipe for: egg, milk" in result.output
    assert "data: read 114, kept 114, dropped 0" in result.output
    return root / "run"


def test_train_writes_run_directory_and_is_idempotent(tiny_run):
    assert (tiny_run / "config.yaml").is_file() and (tiny_run / "final" / "model.safetensors").is_file()
    report = json.loads((tiny_run / "data_report.json").read_text())
    assert report["read"] == 114 and report["kept"] == 114 and report["dropped"] == {}
    assert invoke("ckpt", "verify", tiny_run / "final").exit_code == 0  # final/ is committed atomically too
    entries = [json.loads(x) for x in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    train = [e for e in entries if "loss" in e]
    assert {"step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s"} <= set(train[0])
    assert [e["step"] for e in train] == list(range(1, len(train) + 1))
    assert any("eval_perplexity" in e for e in entries)
    assert (tiny_run / "report" / "index.html").is_file() and (tiny_run / "report" / "loss.png").is_file()
    again = invoke("train", "--config", tiny_run.parent / "c.yaml", "--output-dir", tiny_run)
    assert again.exit_code == 0 and "already complete" in again.output


def test_final_is_one_hugging_face_directory(tiny_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, pipeline

    final = tiny_run / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    assert model.config.vocab_size == len(tok)
    assert GenerationConfig.from_pretrained(final).eos_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("</s>")
    pipe = pipeline("text-generation", model=str(final))
    out = pipe("Generate a recipe with: egg, milk\nTitle:", max_new_tokens=8, do_sample=False)
    assert out[0]["generated_text"].startswith("Generate a recipe with: egg, milk")


def test_old_final_layout_with_model_and_tokenizer_subdirs_still_loads(tiny_run, tmp_path):
    import shutil

    from chefgenius.models.builders import load_for_inference

    old = tmp_path / "old_final"
    (old / "model").mkdir(parents=True)
    (old / "tokenizer").mkdir()
    for f in (tiny_run / "final").iterdir():
        dest = "tokenizer" if f.name.startswith("tokenizer") else "model"
        shutil.copy(f, old / dest / f.name)
    model, tok, seq2seq = load_for_inference(old)
    assert not seq2seq and model.config.vocab_size == len(tok)


def test_generate_is_deterministic_per_seed(tiny_run):
    args = ("generate", "--run", tiny_run, "--ingredients", "egg, milk, sugar", "--max-new-tokens", "30",
            "--preset", "creative")
    a, b, c = invoke(*args, "--seed", "1"), invoke(*args, "--seed", "1"), invoke(*args, "--seed", "2")
    assert a.exit_code == 0, a.output
    assert a.output == b.output and a.output != c.output
    js = invoke("generate", "--run", tiny_run, "--ingredients", "egg", "--json", "--max-new-tokens", "20")
    record = json.loads(js.output.splitlines()[-1])
    assert set(record) == {"title", "ingredients", "directions", "complete", "used", "unused", "unused_in_directions",
                           "ingredient_recall", "duplicate_lines", "repeated_ingredients", "looping", "title_fits",
                           "title_misfits", "extra_items"}
    from chefgenius.generation.recipe_checks import duplicate_ingredient_lines, repeated_ingredients

    assert record["duplicate_lines"] == duplicate_ingredient_lines(record["ingredients"])
    assert record["repeated_ingredients"] == repeated_ingredients(record["ingredients"])


def test_titles_use_only_the_training_titles_words(tiny_run):
    """The words of the training titles travel with the tokenizer (final/, every checkpoint) and the
    guard keeps generated titles to them and to the request's words."""
    from chefgenius.data import title_words
    from chefgenius.data.recipe_format import parse_recipe
    from chefgenius.data.sources import bundled_corpus_path, read_source
    from chefgenius.generation.loading import load_generator

    words = title_words.load(tiny_run / "final")
    every_title = {w for r in read_source(bundled_corpus_path()) for w in title_words.words_of(r.title)}
    assert words and set(words) <= every_title and len(words) > 0.8 * len(every_title)  # the training split's
    assert {title_words.load(c / "tokenizer") for c in (tiny_run / "checkpoints").glob("step-*")} == {words}
    assert title_words.of(load_generator(run=tiny_run, device="cpu").tokenizer) == words
    outside = {}
    for guard in ("--guard", "--no-guard"):
        for ask in ("egg, milk", "rice, onion, saffron", "walnut, spinach, lemon"):
            out = invoke("generate", "--run", tiny_run, "--ingredients", ask, "--max-new-tokens", "24", guard)
            assert out.exit_code == 0, out.output
            title = parse_recipe(out.output[out.output.index("Title:"):]).title
            outside[guard, ask] = set(title_words.words_of(title)) - set(words) - set(title_words.words_of(ask))
    assert not any(v for (guard, _), v in outside.items() if guard == "--guard"), outside
    assert any(v for (guard, _), v in outside.items() if guard == "--no-guard"), outside  # this model needs it


def test_coverage_decoding_uses_the_requested_ingredients(tiny_run):
    """A barely trained model ignores unusual requests; --coverage makes it list them, deterministically."""
    from chefgenius.generation.ingredient_coverage import coverage

    ask = "egg, walnut, spinach, lemon"
    args = ("generate", "--run", tiny_run, "--ingredients", ask, "--json", "--max-new-tokens", "60", "--title", "Eggs")
    plain = json.loads(invoke(*args).output.splitlines()[-1])
    steered = [invoke(*args, "--coverage", "--coverage-strength", "8").output for _ in range(2)]
    assert steered[0] == steered[1]
    out = json.loads(steered[0].splitlines()[-1])
    assert out["ingredient_recall"] > plain["ingredient_recall"]
    assert out["unused"] == [] and out["used"] == ["egg", "walnut", "spinach", "lemon"]
    text = "Title: x Ingredients: " + " ".join(f"- {x}" for x in out["ingredients"]) + " Directions: " + " ".join(
        f"{i}. {x}" for i, x in enumerate(out["directions"], 1))
    assert coverage(ask.split(", "), text).used == out["used"]  # the JSON says what the metric says


def test_generate_batch_from_file(tiny_run, tmp_path):
    (tmp_path / "p.txt").write_text("egg, milk\n\nrice, onion\n")
    out = tmp_path / "out.jsonl"
    r = invoke("generate", "--run", tiny_run, "--input", tmp_path / "p.txt", "--output", out, "--num", "2",
               "--max-new-tokens", "16", "--preset", "balanced")
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(x["ingredients"], x["index"]) for x in rows] == [("egg, milk", 0), ("egg, milk", 1),
                                                              ("rice, onion", 0), ("rice, onion", 1)]


def test_ckpt_tool(tiny_run, tmp_path):
    import shutil

    from safetensors.torch import load_file

    from .conftest import assert_same_weights

    listing = invoke("ckpt", "list", tiny_run)
    assert listing.exit_code == 0 and "latest" in listing.output and "best" in listing.output
    copy = tmp_path / "copy"  # damaged below: a copy, so that other tests keep a valid run
    shutil.copytree(tiny_run, copy)
    ckpts = sorted((copy / "checkpoints").glob("step-*"))
    assert invoke("ckpt", "verify", ckpts[-1]).exit_code == 0
    inspected = json.loads(invoke("ckpt", "inspect", ckpts[-1], "--json").output)
    assert inspected["rng"]["rank-00000"][:3] == ["python", "numpy", "torch_cpu"]
    diff = invoke("ckpt", "diff", ckpts[0], ckpts[-1])
    assert diff.exit_code == 0 and "step" in diff.output
    export = invoke("ckpt", "export", ckpts[-1], tmp_path / "hf")
    assert export.exit_code == 0, export.output
    from transformers import AutoModelForCausalLM, AutoTokenizer

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert len(AutoTokenizer.from_pretrained(tmp_path / "hf")) == exported.config.vocab_size
    assert_same_weights(load_file(str(tmp_path / "hf" / "model.safetensors")),
                        load_file(str(ckpts[-1] / "model" / "model.safetensors")))
    # damage -> verify names the file, list says why
    target = ckpts[-1] / "scheduler.json"
    target.write_text(target.read_text() + " ")
    bad = invoke("ckpt", "verify", ckpts[-1])
    assert bad.exit_code == 1 and "scheduler.json" in bad.output
    assert "INVALID" in invoke("ckpt", "list", copy).output


def test_eval_and_report(tiny_run):
    r = invoke("eval", "--run", tiny_run, "--num-samples", "2", "--max-new-tokens", "30")
    assert r.exit_code == 0, r.output
    result = json.loads((tiny_run / "eval.json").read_text())
    assert result["eval_perplexity"] == pytest.approx(math.exp(result["eval_loss"]))
    for key in ("bleu",):
        assert 0.0 <= result[key] <= 100.0, key
    for key in ("rouge1", "rouge2", "rougeL", "ingredient_recall", "structure_score", "distinct_2"):
        assert 0.0 <= result[key] <= 1.0, key
    assert result["rouge2"] <= result["rouge1"]
    # Two generated samples, each scored for the ingredients of its own validation prompt.
    assert result["num_samples"] == 2 and len(result["coverage"]) == 2 and len(result["samples"]) == 2
    recall = sum(c["recall"] for c in result["coverage"]) / 2
    assert result["ingredient_recall"] == pytest.approx(recall, abs=1e-3)  # per-sample recalls are rounded
    assert [s["ingredients"] for s in result["samples"]] == [c["ingredients"] for c in result["coverage"]]
    # Every generation is kept with its reference, and BLEU recomputed from them is the reported one.
    gens = result["generations"]
    assert gens[:5] == result["samples"] and all(g["reference"] for g in gens)
    assert bleu([g["generated"] for g in gens], [g["reference"] for g in gens]) == pytest.approx(result["bleu"])
    assert result["bleu_ci95"] >= 0.0
    # --against: the difference to an earlier evaluation of the same prompts, read before eval.json is rewritten
    r = invoke("eval", "--run", tiny_run, "--num-samples", "2", "--max-new-tokens", "30", "--no-guard",
               "--against", tiny_run / "eval.json")
    assert r.exit_code == 0, r.output
    unguarded = json.loads((tiny_run / "eval.json").read_text())
    a = unguarded["against"]
    assert a["bleu_difference"] == pytest.approx(unguarded["bleu"] - result["bleu"])
    assert a["bleu_low"] <= a["bleu_difference"] <= a["bleu_high"] and "BLEU against" in r.output
    (tiny_run / "guarded.json").write_text(json.dumps(result))
    other = invoke("eval", "--run", tiny_run, "--num-samples", "1", "--against", tiny_run / "guarded.json")
    assert other.exit_code == 2 and "other prompts" in other.output
    (tiny_run / "old.json").write_text(json.dumps({"bleu": 1.0}))
    old = invoke("eval", "--run", tiny_run, "--num-samples", "2", "--against", tiny_run / "old.json")
    assert old.exit_code == 2 and "holds no generations" in old.output
    (tiny_run / "cut.json").write_text(json.dumps(unguarded)[:100])  # a file cut short
    cut = invoke("eval", "--run", tiny_run, "--num-samples", "2", "--against", tiny_run / "cut.json")
    assert cut.exit_code == 2 and "not readable JSON" in cut.output
    missing = invoke("eval", "--run", tiny_run, "--num-samples", "2", "--against", tiny_run / "absent.json")
    assert missing.exit_code == 2 and "does not exist" in missing.output
    none = invoke("eval", "--run", tiny_run, "--num-samples", "0", "--against", tiny_run / "guarded.json")
    assert none.exit_code == 2 and "--num-samples 0" in none.output
    assert json.loads((tiny_run / "eval.json").read_text()) == unguarded  # refused before anything was written
    rep = invoke("report", tiny_run)
    html = (tiny_run / "report" / "index.html").read_text()
    assert rep.exit_code == 0 and f"{result['eval_loss']:.4f}" in html


@pytest.mark.parametrize("args, fragment", [
    (("train", "--set", "training.bacth_size=4"), "unknown config key 'training.bacth_size'"),
    (("train", "--set", "data.val_fraction=0"), "data.val_fraction must be in (0, 1)"),
    (("train", "--config", "missing.yaml"), "does not exist"),
    (("generate", "--ingredients", "egg", "--model", "/nonexistent/dir"), "error:"),
    (("generate", "--ingredients", "egg", "--run", "/nonexistent", "--preset", "wild"), "unknown generation preset"),
    (("generate", "--ingredients", "egg", "--run", "/nonexistent", "--num", "2"), "one recipe per prompt"),
    (("eval", "--run", "/nonexistent", "--preset", "wild"), "unknown generation preset"),
    (("report", "/nonexistent"), "has no metrics.jsonl"),
])
def test_user_errors_are_one_line_exit_2(args, fragment):
    r = invoke(*args)
    assert r.exit_code == 2, r.output
    assert fragment in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_empty_and_malformed_data_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(",title,ingredients,directions,link,source,NER\n0,X,not json,[],a,b,[]\n")
    r = invoke("train", "--output-dir", tmp_path / "run", "--set", f"data.path={bad}")
    assert r.exit_code == 2 and "no usable recipes" in r.output
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    r = invoke("train", "--output-dir", tmp_path / "run", "--set", f"data.path={empty}")
    assert r.exit_code == 2 and "file is empty" in r.output
    nocols = tmp_path / "nocols.csv"
    nocols.write_text("name,steps\na,b\n")
    r = invoke("data", "check", nocols)
    assert r.exit_code == 2 and "lacks column" in r.output


def test_data_check_reports_reasons_and_examples():
    path = SHARED_DATA / "recipenlg-junk-sample.csv"
    if not path.exists():
        pytest.skip(f"{path} absent (shared data folder not provided)")
    r = invoke("data", "check", path)
    assert r.exit_code == 0
    assert "read 10" in r.output and "repaired" in r.output and "exclamation_runs" in r.output


def test_recipenlg_sample_trains_and_generates(tmp_path):
    path = SHARED_DATA / "recipenlg-sample-1k.csv"
    if not path.exists():
        pytest.skip(f"{path} absent (shared data folder not provided)")
    cfg = tiny_config(data={"path": str(path), "max_recipes": 300}, training={"max_steps": 6, "warmup_steps": 2},
                      evaluation={"prompts": ["beef, onion"], "max_new_tokens": 24})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    r = invoke("train", "--config", tmp_path / "c.yaml", "--output-dir", tmp_path / "run")
    assert r.exit_code == 0, r.output
    assert "sample recipe for: beef, onion" in r.output
    g = invoke("generate", "--run", tmp_path / "run", "--ingredients", "beef, onion", "--max-new-tokens", "20")
    assert g.exit_code == 0 and g.output.strip()


def test_hf_dataset_directory_source(tmp_path):
    datasets = pytest.importorskip("datasets")
    from chefgenius.data.sources import Recipe, read_source

    ds = datasets.Dataset.from_dict({"title": ["A"], "ingredients": [["1 egg", "salt"]], "directions": [["Fry."]]})
    ds.save_to_disk(str(tmp_path / "ds"))
    rows = list(read_source(str(tmp_path / "ds")))
    assert rows == [Recipe("A", ("1 egg", "salt"), ("Fry.",), source_row=0)]


def test_generate_with_title_keeps_the_title(tiny_run):
    r = invoke("generate", "--run", tiny_run, "--ingredients", "egg, milk", "--title", "Morning Eggs", "--json",
               "--max-new-tokens", "20", "--preset", "greedy")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.splitlines()[-1])["title"].startswith("Morning Eggs")


def test_tensorboard_logging_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from chefgenius.training.trainer import Trainer

    from .conftest import quiet

    cfg = tiny_config(training={"max_steps": 2, "warmup_steps": 1}, logging={"tensorboard": True, "every_steps": 1})
    Trainer(cfg, tmp_path, log=quiet).fit()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = {e["step"]: e["loss"] for e in logged if "loss" in e}
    scalars = {e.step: e.value for e in events.Scalars("train/loss")}
    assert scalars.keys() == losses.keys() == {1, 2}
    assert all(scalars[k] == pytest.approx(losses[k], rel=1e-6) for k in losses)  # TensorBoard stores float32
    assert [e.step for e in events.Scalars("eval/loss")] == [2]


def test_full_disk_while_logging_is_one_line_exit_1(tmp_path, monkeypatch):
    import errno

    from chefgenius.training import metrics_log as tracking

    def full(self, entry):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

    monkeypatch.setattr(tracking.MetricsWriter, "log", full)
    cfg = tiny_config(training={"max_steps": 2, "warmup_steps": 1})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    r = invoke("train", "--config", tmp_path / "c.yaml", "--output-dir", tmp_path / "run")
    assert r.exit_code == 1 and "No space left on device" in r.output and "metrics.jsonl" in r.output
    assert not (tmp_path / "run" / "final").exists()
