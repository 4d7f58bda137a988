"""Text metrics for generated recipes, and ``chefgenius eval`` over a run (losses live in losses.py).

Metric functions are pure: strings in, numbers out.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from .coverage import coverage, coverage_metrics
from .data.format import parse_recipe

_WORD = re.compile(r"[a-z0-9]+")


# ----- text metrics ---------------------------------------------------------------------------------

def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def structure_score(text: str) -> float:
    """Mean of three checks: a title, a non-empty ingredient list, numbered directions."""
    parsed = parse_recipe(text)
    has_numbered = bool(re.search(r"(?:^|\s)1\.\s", text.split("Directions:", 1)[-1])) and bool(parsed.directions)
    return (bool(parsed.title) + bool(parsed.ingredients) + has_numbered) / 3


def distinct_n(text: str, n: int = 2) -> float:
    """Unique n-grams over all n-grams (1.0 = no repetition)."""
    toks = words(text)
    grams = [tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def repeated_ngram_rate(text: str, n: int = 4) -> float:
    """Share of n-grams that already occurred earlier in the text."""
    toks = words(text)
    grams = [tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)]
    if not grams:
        return 0.0
    counts = Counter(grams)
    return sum(c - 1 for c in counts.values()) / len(grams)


def bleu(hypotheses: list[str], references: list[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)


def rouge(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for h, r in zip(hypotheses, references):
        scores = scorer.score(r, h)
        for k in totals:
            totals[k] += scores[k].fmeasure
    n = max(1, len(hypotheses))
    return {k: v / n for k, v in totals.items()}


# What ``chefgenius eval`` and the report show, in this order.
METRIC_KEYS: tuple[str, ...] = (
    "eval_loss", "eval_perplexity", "bleu", "rouge1", "rouge2", "rougeL", "ingredient_recall",
    "ingredient_recall_list", "ingredient_recall_directions", "ingredient_precision", "structure_score",
    "distinct_2", "repeated_4gram_rate", "length_words",
)


def text_metrics(prompts: list[list[str]], hypotheses: list[str], references: list[str]) -> dict[str, float]:
    n = max(1, len(hypotheses))
    out = {"bleu": bleu(hypotheses, references), **rouge(hypotheses, references)}
    out.update(coverage_metrics(prompts, hypotheses))
    out["structure_score"] = sum(map(structure_score, hypotheses)) / n
    out["distinct_2"] = sum(distinct_n(h, 2) for h in hypotheses) / n
    out["repeated_4gram_rate"] = sum(repeated_ngram_rate(h, 4) for h in hypotheses) / n
    out["length_words"] = sum(len(words(h)) for h in hypotheses) / n
    return out


# ----- a whole run ----------------------------------------------------------------------------------

def evaluate_run(run_dir: Path, *, checkpoint: Path | None = None, split: str = "val", num_samples: int = 20,
                 preset: str = "greedy", max_new_tokens: int | None = None, device: str = "cpu",
                 progress: bool = True, coverage_strength: float = 0.0) -> dict[str, Any]:
    """Loss/perplexity on a split and text metrics on ``num_samples`` generations; writes eval.json."""
    import torch
    from tqdm.auto import tqdm

    from .checkpoint import checkpoint_problem
    from .config import ConfigError, build_config
    from .data.prepared import prepare_dataset
    from .data.tokenize import default_cache_dir
    from .generate import GenerationSettings, generate_texts
    from .losses import validation_loss
    from .model import load_for_inference
    from .rundir import RunDirectory

    run = RunDirectory(run_dir)
    if not run.path.is_dir():
        raise ConfigError(f"run directory {run.path} does not exist")
    with run.lock():  # eval.json must not be written, nor a checkpoint read, while a training run owns the dir
        cfg = build_config(run.read_config())
        source = checkpoint or run.final
        if not source.is_dir():
            raise ConfigError(f"{source} does not exist; train to completion or pass --checkpoint PATH")
        problem = checkpoint_problem(source)
        if problem:
            raise ConfigError(f"{source} does not verify: {problem}")
        model, tokenizer, seq2seq = load_for_inference(source)
        model.to(torch.device(device))
        data = prepare_dataset(cfg.data, is_seq2seq=seq2seq, tokenizer=tokenizer, vocab_size=None,
                               cache_dir=default_cache_dir(cfg.data.cache_dir),
                               log=lambda m: print(m, file=sys.stderr), progress=progress)
        tokens = data.val if split == "val" else data.train
        texts = data.eval_texts(split)
        if num_samples > len(texts):
            print(f"note: {num_samples} samples asked, the prepared dataset keeps {len(texts)} {split} prompts as "
                  "text; generating for those", file=sys.stderr)
        result: dict[str, Any] = {"run": str(run_dir), "model": str(source), "split": split, "recipes": len(tokens)}
        result.update(validation_loss(model, tokens, pad_id=tokenizer.pad_token_id, is_seq2seq=seq2seq,
                                      batch_size=cfg.training.batch_size))
        settings = GenerationSettings(preset=preset, max_new_tokens=max_new_tokens or cfg.data.max_target_tokens,
                                      coverage=coverage_strength)
        prompts, hyps, refs, num_cut, num_capped = [], [], [], 0, 0
        for sample in tqdm(texts[:num_samples], desc="generate", disable=not progress or not num_samples):
            ings = sample["ingredients"]
            gen = generate_texts(model, tokenizer, seq2seq, ings, settings,
                                 max_prompt_tokens=cfg.data.max_prompt_tokens)
            num_cut += bool(gen.dropped_ingredients)
            num_capped += gen.capped_from is not None
            prompts.append(ings)
            hyps.append(gen.texts[0])
            refs.append(sample["target"])
        result["num_samples"] = len(hyps)
        result["preset"] = preset
        result["coverage_strength"] = coverage_strength
        result["prompts_cut"] = num_cut
        result["max_new_tokens_capped"] = num_capped
        if hyps:
            result.update(text_metrics(prompts, hyps, refs))
        # Every sample's ingredient coverage (which requested ingredients were used), five full texts.
        result["coverage"] = [{"ingredients": p, **coverage(p, h).to_dict()} for p, h in zip(prompts, hyps)]
        result["samples"] = [{"ingredients": p, "generated": h, "reference": r}
                             for p, h, r in zip(prompts, hyps, refs)][:5]
        run.eval_file.write_text(json.dumps(result, indent=2))
    return result
