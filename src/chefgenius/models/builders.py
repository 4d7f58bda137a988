"""Build or load models and tokenizers: from-scratch presets, Hugging Face weights, LoRA.

Nothing here unpickles: weights are read only from safetensors (``use_safetensors=True``).
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    GPT2Config,
    GPT2LMHeadModel,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.utils import logging as hf_logging

from chefgenius.checkpoint.layout import hf_dirs, run_of
from chefgenius.checkpoint.run_directory import BASE_MODEL_DIR
from chefgenius.config import Config, ModelConfig
from chefgenius.data.tokenizer import check_model_source, load_tokenizer
from chefgenius.errors import ModelLoadError  # re-exported
from chefgenius.runtime.distributed import print0
from chefgenius.runtime.parallel import unwrap

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()


PRESETS: dict[str, dict[str, dict[str, int]]] = {
    # micro: the smallest model that still has every part (two layers, two heads), for smoke tests and
    # the test suite, where what is checked is exactness, not what the model learns.
    "gpt2": {
        "micro": {"n_embd": 64, "n_layer": 2, "n_head": 2},
        "tiny": {"n_embd": 128, "n_layer": 4, "n_head": 4},
        "small": {"n_embd": 256, "n_layer": 6, "n_head": 8},
        "base": {"n_embd": 512, "n_layer": 7, "n_head": 8},  # ~25M parameters with an 8k vocabulary
        "large": {"n_embd": 1024, "n_layer": 12, "n_head": 16},  # ~160M: a size worth a GPU
    },
    "t5": {
        "micro": {"d_model": 64, "d_ff": 128, "num_layers": 2, "num_heads": 2, "d_kv": 32},
        "tiny": {"d_model": 128, "d_ff": 256, "num_layers": 3, "num_heads": 4, "d_kv": 32},
        "small": {"d_model": 256, "d_ff": 1024, "num_layers": 4, "num_heads": 4, "d_kv": 64},
        "base": {"d_model": 512, "d_ff": 1024, "num_layers": 4, "num_heads": 8, "d_kv": 64},
        "large": {"d_model": 768, "d_ff": 2048, "num_layers": 12, "num_heads": 12, "d_kv": 64},  # ~t5-base
    },
}
DEFAULT_LORA_TARGETS = {"gpt2": ["c_attn"], "t5": ["q", "v"]}


def build_from_scratch(cfg: ModelConfig, tokenizer: Any, max_positions: int) -> torch.nn.Module:
    preset = PRESETS[cfg.from_scratch][cfg.preset]
    vocab = len(tokenizer)
    if cfg.from_scratch == "gpt2":
        conf = GPT2Config(vocab_size=vocab, n_positions=max_positions, bos_token_id=tokenizer.eos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                          resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, **preset)
        return GPT2LMHeadModel(conf)
    conf = T5Config(vocab_size=vocab, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                    decoder_start_token_id=tokenizer.pad_token_id, dropout_rate=cfg.dropout,
                    feed_forward_proj="gated-gelu", tie_word_embeddings=False, **preset)
    return T5ForConditionalGeneration(conf)


def is_seq2seq_dir(path: str | Path) -> bool:
    """Whether the HF model at ``path`` (dir or hub id; LoRA adapter dirs follow their base) is seq2seq."""
    check_model_source(path)
    p = Path(path)
    adapter = p / "adapter_config.json"
    if adapter.is_file():
        return is_seq2seq_dir(find_lora_base(p))
    try:
        conf = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot read a model config from {path}: {str(err).splitlines()[0]}") from None
    return bool(getattr(conf, "is_encoder_decoder", False))


def config_is_seq2seq(cfg: ModelConfig) -> bool:
    """Model family from the config alone, before any weights exist (decides how data is tokenised)."""
    return cfg.from_scratch == "t5" if cfg.from_scratch else is_seq2seq_dir(cfg.name_or_path)


def _weights_problem(info: dict[str, Any]) -> str | None:
    parts = []
    for key, label in (("missing_keys", "missing"), ("unexpected_keys", "unexpected"),
                       ("mismatched_keys", "of the wrong shape")):
        names = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get(key) or [])
        if names:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            parts.append(f"{len(names)} tensor(s) {label} ({', '.join(names[:3])}{more})")
    return "; ".join(parts) or None


def load_pretrained(path: str | Path, dtype: torch.dtype = torch.float32, *, strict: bool = False) -> torch.nn.Module:
    """Weights from safetensors only. ``strict``: the file must hold exactly the model's tensors and shapes
    (our own checkpoints and final models); a hub base model may legitimately initialise a new head."""
    seq2seq = is_seq2seq_dir(path)
    cls = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    try:
        model, info = cls.from_pretrained(str(path), dtype=dtype, use_safetensors=True, output_loading_info=True,
                                          ignore_mismatched_sizes=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise ModelLoadError(
            f"cannot load model weights from {path}: {str(err).splitlines()[0]} "
            "(a HF model dir with model.safetensors is needed)"
        ) from None
    problem = _weights_problem(info)
    if problem and (strict or info.get("mismatched_keys")):
        raise ModelLoadError(f"model weights in {path} do not fit the model: {problem}; the checkpoint is damaged "
                             "or from another model")
    if problem:
        print0(f"warning: {path}: {problem}; those weights start untrained", file=sys.stderr)
    return model


def apply_lora(model: torch.nn.Module, cfg: ModelConfig, family: str, seq2seq: bool) -> torch.nn.Module:
    try:
        from peft import LoraConfig, TaskType, get_peft_model
    except ImportError:
        raise ModelLoadError("model.use_lora needs the 'lora' extra: pip install 'chefgenius[lora]'") from None
    targets = cfg.lora_target_modules or DEFAULT_LORA_TARGETS.get(family)
    if not targets:
        raise ModelLoadError(f"set model.lora_target_modules: no default is known for model type {family!r}")
    lora = LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM if seq2seq else TaskType.CAUSAL_LM, r=cfg.lora_r,
                      lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets)
    return get_peft_model(model, lora)


def load_lora_adapter(base: torch.nn.Module, adapter_dir: Path, trainable: bool) -> torch.nn.Module:
    """Adapters whose tensor names and shapes must be exactly those the base model's LoRA layers expect."""
    from peft import PeftConfig, PeftModel, get_peft_model, get_peft_model_state_dict
    from safetensors import SafetensorError, safe_open

    weights = adapter_dir / "adapter_model.safetensors"
    try:
        conf = PeftConfig.from_pretrained(str(adapter_dir))
        with safe_open(str(weights), framework="pt") as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (OSError, ValueError, SafetensorError) as err:
        raise ModelLoadError(f"cannot read LoRA adapters in {adapter_dir}: {str(err).splitlines()[0]}") from None
    probe = get_peft_model(copy.deepcopy(base), conf)
    expected = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(probe).items()}
    del probe
    info = {"missing_keys": [k for k in expected if k not in found],
            "unexpected_keys": [k for k in found if k not in expected],
            "mismatched_keys": [k for k in expected if k in found and found[k] != expected[k]]}
    problem = _weights_problem(info)
    if problem:
        raise ModelLoadError(f"LoRA adapters in {adapter_dir} do not fit the model: {problem}; the checkpoint is "
                             "damaged or from another model")
    return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable)


def find_lora_base(adapter_dir: Path) -> str:
    """The base model of an adapter directory: the run's stored base when it moved with the run."""
    recorded = json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
    stored = run_of(adapter_dir) / BASE_MODEL_DIR
    if stored.is_dir():
        return str(stored)
    if not recorded:
        raise ModelLoadError(f"{adapter_dir} holds LoRA adapters but no base model can be found for them")
    return recorded


def build_model(cfg: Config, ckpt: Any, tokenizer: Any, base_model_dir: Path
                ) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """The model to train (from ``ckpt``, a :class:`~chefgenius.checkpoint.Checkpoint`, when resuming),
    and a freshly built LoRA base that the run must store (``base_model_dir``) before training."""
    mc = cfg.model
    max_pos = cfg.data.max_prompt_tokens + cfg.data.max_target_tokens + 8
    fresh_base = None
    if mc.use_lora:
        if mc.from_scratch and ckpt is None:
            base = build_from_scratch(mc, tokenizer, max_pos)
            fresh_base = copy.deepcopy(base)  # apply_lora rewrites the base's layers in place
        else:
            base = load_pretrained(base_model_dir, strict=True) if mc.from_scratch else load_pretrained(mc.name_or_path)
        if ckpt is not None:
            model = load_lora_adapter(base, ckpt.model_dir, trainable=True)
        else:
            model = apply_lora(base, mc, base.config.model_type, bool(base.config.is_encoder_decoder))
    elif ckpt is not None and ckpt.is_sharded:
        # Built as at the start, then filled from every rank's shards once the optimizer exists.
        model = build_from_scratch(mc, tokenizer, max_pos) if mc.from_scratch else load_pretrained(mc.name_or_path)
    elif ckpt is not None:
        model = load_pretrained(ckpt.model_dir, strict=True)
    elif mc.from_scratch:
        model = build_from_scratch(mc, tokenizer, max_pos)
    else:
        model = load_pretrained(mc.name_or_path)
    if len(tokenizer) > unwrap(model).get_input_embeddings().weight.shape[0]:
        unwrap(model).resize_token_embeddings(len(tokenizer))
    if mc.gradient_checkpointing:
        unwrap(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        unwrap(model).config.use_cache = False
    if cfg.training.precision == "bf16-pure":
        model.to(torch.bfloat16)
    return model, fresh_base


def model_family(model: torch.nn.Module) -> str:
    return getattr(unwrap(model).config, "model_type", "unknown")


def load_for_inference(path: str | Path, merge_lora: bool = True) -> tuple[torch.nn.Module, Any, bool]:
    """Model, tokenizer, is_seq2seq from a run's ``final/``, a checkpoint, or a plain HF dir / hub id."""
    check_model_source(path)
    model_dir, tok_dir = hf_dirs(Path(path)) if Path(path).is_dir() else (path, path)
    local = Path(model_dir).is_dir()
    if local and (Path(model_dir) / "adapter_config.json").is_file():
        base = load_pretrained(find_lora_base(Path(model_dir)), strict=True)
        model = load_lora_adapter(base, Path(model_dir), trainable=False)
        if merge_lora:
            model = model.merge_and_unload()
        seq2seq = bool(getattr(unwrap(model).config, "is_encoder_decoder", False))
    else:
        model = load_pretrained(model_dir, strict=local)
        seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    model.eval()
    return model, load_tokenizer(tok_dir), seq2seq


def max_positions(model: torch.nn.Module) -> int | None:
    """Longest sequence the model can attend over, or None when it has no fixed limit (T5)."""
    conf = unwrap(model).config
    return getattr(conf, "n_positions", None) or getattr(conf, "max_position_embeddings", None)
