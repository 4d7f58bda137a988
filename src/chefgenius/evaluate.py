"""Losses, perplexity and text metrics for generated recipes; ``chefgenius eval`` builds on these.

Metric functions are pure: strings in, numbers out.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .data.format import parse_recipe
from .data.loader import TokenizedData, make_batch
from .model import unwrap

_WORD = re.compile(r"[a-z0-9]+")


# ----- losses ---------------------------------------------------------------------------------------

def token_loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor], is_seq2seq: bool
                   ) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over target tokens and their count, so accumulation can divide once."""
    if is_seq2seq:
        labels = batch["labels"]
        decoder_input_ids = unwrap(model).prepare_decoder_input_ids_from_labels(labels=labels)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       decoder_input_ids=decoder_input_ids).logits
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=-100, reduction="sum")
    return loss, int((labels != -100).sum())


@torch.no_grad()
def validation_loss(model: torch.nn.Module, data: TokenizedData, *, pad_id: int, is_seq2seq: bool,
                    batch_size: int, max_batches: int | None = None, autocast: Any = None) -> dict[str, float]:
    """Token-mean loss and perplexity over ``data`` in file order (deterministic, no RNG)."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    starts = list(range(0, len(data), batch_size))[:max_batches]
    for start in starts:
        batch = make_batch(data, range(start, min(start + batch_size, len(data))), pad_id, device)
        with autocast if autocast is not None else nullcontext():
            loss_sum, n = token_loss_sum(model, batch, is_seq2seq)
        total += float(loss_sum)
        count += n
    loss = total / max(1, count)
    return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0))}


# ----- text metrics ---------------------------------------------------------------------------------

def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _stem(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def ingredient_recall(ingredients: list[str], text: str) -> float:
    """Share of prompt ingredients whose every word appears in the recipe (plural-insensitive)."""
    if not ingredients:
        return 1.0
    vocab = {_stem(w) for w in words(text)}
    used = sum(1 for ing in ingredients if words(ing) and all(_stem(w) in vocab for w in words(ing)))
    return used / len(ingredients)


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


def text_metrics(prompts: list[list[str]], hypotheses: list[str], references: list[str]) -> dict[str, float]:
    n = max(1, len(hypotheses))
    out = {"bleu": bleu(hypotheses, references), **rouge(hypotheses, references)}
    out["ingredient_recall"] = sum(ingredient_recall(p, h) for p, h in zip(prompts, hypotheses)) / n
    out["structure_score"] = sum(map(structure_score, hypotheses)) / n
    out["distinct_2"] = sum(distinct_n(h, 2) for h in hypotheses) / n
    out["repeated_4gram_rate"] = sum(repeated_ngram_rate(h, 4) for h in hypotheses) / n
    out["length_words"] = sum(len(words(h)) for h in hypotheses) / n
    return out


# ----- a whole run ----------------------------------------------------------------------------------

def evaluate_run(run_dir: Path, *, checkpoint: Path | None = None, split: str = "val", num_samples: int = 20,
                 preset: str = "greedy", max_new_tokens: int | None = None, device: str = "cpu",
                 progress: bool = True) -> dict[str, Any]:
    """Loss/perplexity on a split and text metrics on ``num_samples`` generations; writes eval.json."""
    import yaml

    from .config import ConfigError, build_config
    from .data.format import prompt_ingredients, recipe_to_example
    from .data.loader import cached_tokenize, default_cache_dir
    from .data.prepare import prepare_recipes
    from .generate import GenerationSettings, generate_texts
    from .model import load_for_inference

    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"{run_dir} has no config.yaml; pass a run directory written by 'chefgenius train'")
    cfg = build_config(yaml.safe_load(config_path.read_text()))
    source = checkpoint or run_dir / "final"
    if not source.is_dir():
        raise ConfigError(f"{source} does not exist; train to completion or pass --checkpoint PATH")
    if checkpoint is not None:
        from .checkpoint import verify_checkpoint

        problem = verify_checkpoint(checkpoint)
        if problem:
            raise ConfigError(f"checkpoint does not verify: {problem}")
    model, tokenizer, seq2seq = load_for_inference(source)
    model.to(torch.device(device))
    data = prepare_recipes(cfg.data)
    recipes = data.val if split == "val" else data.train
    fp = data.val_fingerprint if split == "val" else data.train_fingerprint
    cache = default_cache_dir(cfg.data.cache_dir)
    tokens, _ = cached_tokenize(recipes, tokenizer, split_fingerprint=fp, cache_dir=cache,
                                is_seq2seq=seq2seq, max_prompt_tokens=cfg.data.max_prompt_tokens,
                                max_target_tokens=cfg.data.max_target_tokens, mask_prompt=cfg.data.mask_prompt)
    result: dict[str, Any] = {"run": str(run_dir), "model": str(source), "split": split, "recipes": len(recipes)}
    result.update(validation_loss(model, tokens, pad_id=tokenizer.pad_token_id, is_seq2seq=seq2seq,
                                  batch_size=cfg.training.batch_size))
    settings = GenerationSettings(preset=preset, max_new_tokens=max_new_tokens or cfg.data.max_target_tokens)
    chosen = recipes[:num_samples]
    prompts, hyps, refs = [], [], []
    from tqdm.auto import tqdm

    for r in tqdm(chosen, desc="generate", disable=not progress):
        ings = prompt_ingredients(r)
        prompts.append(ings)
        hyps.append(generate_texts(model, tokenizer, seq2seq, ings, settings,
                                   max_prompt_tokens=cfg.data.max_prompt_tokens)[0])
        refs.append(recipe_to_example(r)[1])
    result["num_samples"] = len(hyps)
    result["preset"] = preset
    result.update(text_metrics(prompts, hyps, refs))
    result["samples"] = [{"ingredients": p, "generated": h, "reference": r} for p, h, r in zip(prompts, hyps, refs)][:5]
    (run_dir / "eval.json").write_text(json.dumps(result, indent=2))
    return result
