"""What a cook sees in a trained run's recipes, with and without RecipeGuard, greedy and with coverage.

    python bench/recipe_quality.py --run runs/nlg [--prompts bench/data/heldout-ingredients.txt] [--val 50]

Held-out prompts: ingredient lists written for this benchmark, from no corpus (the default file has
20). For each decoding (greedy / --coverage, each guarded and unguarded): duplicate-line share,
looping-directions share, title fit, extra items, ingredient recall and structure of the generated
recipes; and with ``--val N``, BLEU / ROUGE-L / recall on the first N validation prompts (the
``eval`` command) for the same decodings. Writes bench/results/recipe_quality.{md,json} (``--name``)
and the held-out recipes as JSONL beside them. The main job's sample is judged the same way:
``--run runs/demo --prompts bench/data/first-run-triples.txt --max-new-tokens 128 --name first_run``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from common import results_dir, write_result

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--prompts", type=Path, default=HERE / "data" / "heldout-ingredients.txt")
    ap.add_argument("--val", type=int, default=0, help="also evaluate on this many validation prompts")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--name", default="recipe_quality", help="results file name (bench/results/NAME.{md,json})")
    ap.add_argument("--experiment", action="store_true",
                    help="a one-off variant: write under bench/results/experiments/ (never joined into RESULTS.md)")
    args = ap.parse_args()
    import torch

    from chefgenius.cli import COVERAGE_STRENGTH
    from chefgenius.data.recipe_format import structure_score
    from chefgenius.evaluation.evaluate import evaluate_run
    from chefgenius.generation.decode import GenerationSettings, generate_texts
    from chefgenius.generation.ingredient_coverage import coverage
    from chefgenius.generation.loading import load_generator
    from chefgenius.generation.recipe_checks import check_recipe, cook_metrics

    torch.set_num_threads(2)
    g = load_generator(run=args.run, device="cpu")
    model, tok, seq2seq, max_prompt = g.model, g.tokenizer, g.is_seq2seq, g.max_prompt_tokens
    prompts = [x.strip() for x in args.prompts.read_text().splitlines() if x.strip()]
    modes = {"greedy, unguarded": (0.0, False), "greedy, guarded (default)": (0.0, True),
             "coverage, unguarded": (COVERAGE_STRENGTH, False), "coverage, guarded": (COVERAGE_STRENGTH, True)}
    rows, texts_out = [], []
    generations: dict[str, list[dict]] = {}
    for name, (strength, guard) in modes.items():
        settings = GenerationSettings(max_new_tokens=args.max_new_tokens, coverage=strength, guard=guard)
        t0 = time.perf_counter()
        texts = [generate_texts(model, tok, seq2seq, p, settings, max_prompt_tokens=max_prompt).texts[0]
                 for p in prompts]
        seconds = (time.perf_counter() - t0) / len(prompts)
        texts_out += [{"mode": name, "ingredients": p, "text": t, "loops": check_recipe(t).loops,
                       "duplicate_lines": check_recipe(t).duplicate_lines} for p, t in zip(prompts, texts)]
        asked = [[x.strip() for x in p.split(",")] for p in prompts]
        row = {"mode": name, **cook_metrics(texts), "title_nonword_rate": _nonword_rate(tok, prompts, texts),
               "ingredient_recall": statistics.mean(coverage(a, t).recall for a, t in zip(asked, texts)),
               "structure_score": statistics.mean(map(structure_score, texts)), "seconds_per_recipe": seconds}
        if args.val:
            ev = evaluate_run(args.run, num_samples=args.val, coverage_strength=strength, guard=guard, progress=False)
            generations[name] = ev["generations"]
            row.update({f"val_{k}": ev[k] for k in ("bleu", "bleu_ci95", "rougeL", "ingredient_recall",
                                                     "duplicate_line_rate", "repeated_ingredient_rate",
                                                     "looping_directions_rate")})
        rows.append(row)
        print(json.dumps(row), flush=True)
    samples = results_dir(args.experiment) / f"{args.name}_samples.jsonl"
    samples.write_text("".join(json.dumps(x) + "\n" for x in texts_out))
    shown = args.prompts.relative_to(HERE.parent) if args.prompts.is_relative_to(HERE.parent) else args.prompts
    command = f"python bench/recipe_quality.py --run {args.run} --val {args.val}" + (
        f" --prompts {shown}" if args.prompts != ap.get_default("prompts") else "") + (
        f" --max-new-tokens {args.max_new_tokens}" if args.max_new_tokens != 256 else "") + (
        f" --name {args.name}" if args.name != "recipe_quality" else "") + (" --experiment" if args.experiment else "")
    keys = ["duplicate_line_rate", "repeated_ingredient_rate", "looping_directions_rate", "title_fit_rate",
            "title_nonword_rate",
            "extra_items", "ingredient_recall",
            "structure_score", "seconds_per_recipe"]
    val_keys = ["val_bleu", "val_bleu_ci95", "val_rougeL", "val_ingredient_recall", "val_duplicate_line_rate",
                "val_repeated_ingredient_rate", "val_looping_directions_rate"] if args.val else []
    lines = ["# Recipe quality (what a cook sees)", "",
             f"`{command}`; {len(prompts)} held-out ingredient lists ({args.prompts.name}, from no corpus)"
             + (f"; validation: the first {args.val} prompts of the run's validation split" if args.val else "")
             + ".", "", "| decoding | " + " | ".join(keys + val_keys) + " |",
             "|---|" + "---:|" * len(keys + val_keys)]
    lines += ["| " + r["mode"] + " | " + " | ".join(f"{r[k]:.3f}" for k in keys + val_keys) + " |" for r in rows]
    effect = _guard_effect(generations) if args.val else {}
    if effect:
        lines += ["", "The guard's effect on validation BLEU, paired bootstrap over the same prompts (1,000 "
                  "resamples; guarded minus unguarded, 95% interval): "
                  + "; ".join(f"{k} {v['difference']:+.2f} ({v['low']:+.2f} to {v['high']:+.2f})"
                              for k, v in effect.items()) + "."]
    write_result(args.name, lines, {"command": command, "rows": rows, "prompts": prompts,
                                    "guard_effect_on_val_bleu": effect}, experiment=args.experiment)


def _guard_effect(generations: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """Guarded minus unguarded validation BLEU per decoding, on the same prompts and references."""
    from chefgenius.evaluation.text_metrics import paired_bleu

    pairs = {"greedy": ("greedy, unguarded", "greedy, guarded (default)"),
             "coverage": ("coverage, unguarded", "coverage, guarded")}
    out = {}
    for key, (off, on) in pairs.items():
        if off in generations and on in generations:
            refs = [g["reference"] for g in generations[off]]
            out[key] = paired_bleu([g["generated"] for g in generations[off]],
                                   [g["generated"] for g in generations[on]], refs)
    return out


def _nonword_rate(tok, prompts: list[str], texts: list[str]) -> float:
    """Share of titles with a word neither the training titles (title_words.json) nor the request use."""
    from chefgenius.data import title_words
    from chefgenius.data.recipe_format import parse_recipe

    known = set(title_words.of(tok) or ())
    if not known:
        return float("nan")
    return statistics.mean(bool(set(title_words.words_of(parse_recipe(t).title)) - known
                                - set(title_words.words_of(p))) for p, t in zip(prompts, texts))


if __name__ == "__main__":
    main()
