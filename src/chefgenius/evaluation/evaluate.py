"""``chefgenius eval``: validation loss and text metrics of a run's model (metrics in text_metrics.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from chefgenius.checkpoint import checkpoint_problem
from chefgenius.checkpoint.run_directory import RunDirectory
from chefgenius.config import ConfigError, build_config
from chefgenius.data.prepared import prepare_dataset
from chefgenius.data.tokenization import default_cache_dir
from chefgenius.evaluation.text_metrics import METRIC_KEYS, paired_bleu, text_metrics
from chefgenius.generation.decode import GenerationSettings, generate_texts
from chefgenius.generation.ingredient_coverage import coverage
from chefgenius.models.builders import load_for_inference
from chefgenius.training.losses import validation_loss

__all__ = ["METRIC_KEYS", "evaluate_run"]


# ----- a whole run ----------------------------------------------------------------------------------

def evaluate_run(run_dir: Path, *, checkpoint: Path | None = None, split: str = "val", num_samples: int = 20,
                 preset: str = "greedy", max_new_tokens: int | None = None, device: str = "cpu",
                 progress: bool = True, coverage_strength: float = 0.0, guard: bool = True,
                 against: Path | None = None) -> dict[str, Any]:
    """Loss/perplexity on a split and text metrics on ``num_samples`` generations; writes eval.json.

    ``against``: an earlier eval.json on the same prompts; the BLEU difference to it, with its paired
    bootstrap interval, goes into the result as ``against``. Read before anything is written, so it
    may be this run's own eval.json.
    """
    import torch

    if against is not None and num_samples == 0:
        raise ConfigError(f"--against {against} compares generations, and --num-samples 0 makes none; "
                          "pass the earlier evaluation's --num-samples")
    baseline = _baseline_generations(against) if against is not None else None
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
        if baseline is not None and [g["reference"] for g in baseline] != [t["target"] for t in texts[:num_samples]]:
            raise ConfigError(f"--against {against} was evaluated on other prompts ({len(baseline)} recipes); "
                              "compare evaluations made with the same --split and --num-samples on the same data")
        result: dict[str, Any] = {"run": str(run_dir), "model": str(source), "split": split, "recipes": len(tokens)}
        result.update(validation_loss(model, tokens, pad_id=tokenizer.pad_token_id, is_seq2seq=seq2seq,
                                      batch_size=cfg.training.batch_size))
        settings = GenerationSettings(preset=preset, max_new_tokens=max_new_tokens or cfg.data.max_target_tokens,
                                      coverage=coverage_strength, guard=guard)
        prompts, hyps, refs, num_cut, num_capped = _generate(model, tokenizer, seq2seq, texts[:num_samples], settings,
                                                             cfg.data.max_prompt_tokens, progress)
        result.update(num_samples=len(hyps), preset=preset, coverage_strength=coverage_strength, guard=guard,
                      prompts_cut=num_cut,
                      max_new_tokens_capped=num_capped)
        if hyps:
            result.update(text_metrics(prompts, hyps, refs))
        # Every sample's ingredient coverage (which requested ingredients were used), five full texts.
        result["coverage"] = [{"ingredients": p, **coverage(p, h).to_dict()} for p, h in zip(prompts, hyps)]
        # Every generation with its reference, so two evaluations can be compared prompt by prompt
        # (metrics.paired_bleu); ``samples``: the first five, for reading.
        result["generations"] = [{"ingredients": p, "generated": h, "reference": r}
                                 for p, h, r in zip(prompts, hyps, refs)]
        result["samples"] = result["generations"][:5]
        if baseline is not None and hyps:
            paired = paired_bleu([g["generated"] for g in baseline], hyps, refs)
            result["against"] = {"file": str(against), **{f"bleu_{k}": v for k, v in paired.items()}}
        run.eval_file.write_text(json.dumps(result, indent=2))
    return result


def _baseline_generations(path: Path) -> list[dict[str, str]]:
    """The generations of an earlier eval.json, checked: one line saying what is wrong otherwise."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--against {path} does not exist; pass an eval.json written by chefgenius eval") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"--against {path} is not readable JSON ({err}); pass an eval.json written by "
                          "chefgenius eval") from None
    gens = data.get("generations") if isinstance(data, dict) else None
    if not isinstance(gens, list) or not all(
            isinstance(g, dict) and isinstance(g.get("generated"), str) and isinstance(g.get("reference"), str)
            for g in gens):
        raise ConfigError(f"--against {path} holds no generations (written by an older chefgenius?); "
                          "evaluate that model again, then compare")
    return gens


def _generate(model: Any, tokenizer: Any, seq2seq: bool, samples: list[dict[str, Any]], settings: Any,
              max_prompt_tokens: int, progress: bool) -> tuple[list, list, list, int, int]:
    """Prompts, generated texts and references of ``samples``; how many prompts were cut, budgets capped."""
    from tqdm.auto import tqdm

    prompts, hyps, refs, num_cut, num_capped = [], [], [], 0, 0
    for sample in tqdm(samples, desc="generate", disable=not progress or not samples):
        gen = generate_texts(model, tokenizer, seq2seq, sample["ingredients"], settings,
                             max_prompt_tokens=max_prompt_tokens)
        num_cut += bool(gen.dropped_ingredients)
        num_capped += gen.capped_from is not None
        prompts.append(sample["ingredients"])
        hyps.append(gen.texts[0])
        refs.append(sample["target"])
    return prompts, hyps, refs, num_cut, num_capped
