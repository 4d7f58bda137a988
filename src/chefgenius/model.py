"""Build or load models and tokenizers: from-scratch presets, Hugging Face weights, LoRA.

Nothing here unpickles: weights are read only from safetensors (``use_safetensors=True``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.utils import logging as hf_logging

from .config import ModelConfig

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"

PRESETS: dict[str, dict[str, dict[str, int]]] = {
    "gpt2": {
        "tiny": {"n_embd": 128, "n_layer": 4, "n_head": 4},
        "small": {"n_embd": 256, "n_layer": 6, "n_head": 8},
    },
    "t5": {
        "tiny": {"d_model": 128, "d_ff": 256, "num_layers": 3, "num_heads": 4, "d_kv": 32},
        "small": {"d_model": 256, "d_ff": 1024, "num_layers": 4, "num_heads": 4, "d_kv": 64},
    },
}
DEFAULT_LORA_TARGETS = {"gpt2": ["c_attn"], "t5": ["q", "v"]}


class ModelLoadError(ValueError):
    """A model or tokenizer path that cannot be used (missing, not HF format, wrong kind)."""


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the training split; deterministic for the same texts."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[PAD, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                   bos_token=EOS)


def load_tokenizer(path: str | Path) -> Any:
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load a tokenizer from {path}: {str(err).splitlines()[0]}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # GPT-2 has no pad token; padding is masked out anyway
    return tok


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
    p = Path(path)
    adapter = p / "adapter_config.json"
    if adapter.is_file():
        base = json.loads(adapter.read_text()).get("base_model_name_or_path")
        if (p / "base_model").is_dir():
            base = str(p / "base_model")
        return is_seq2seq_dir(base)
    try:
        conf = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot read a model config from {path}: {str(err).splitlines()[0]}") from None
    return bool(getattr(conf, "is_encoder_decoder", False))


def load_pretrained(path: str | Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    seq2seq = is_seq2seq_dir(path)
    cls = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    try:
        return cls.from_pretrained(str(path), dtype=dtype, use_safetensors=True)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"cannot load model weights from {path}: {str(err).splitlines()[0]} "
            "(a HF model dir with model.safetensors is needed)"
        ) from None


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
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable)


def model_family(model: torch.nn.Module) -> str:
    return getattr(unwrap(model).config, "model_type", "unknown")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The underlying HF model (LoRA-wrapped models expose ``get_base_model``)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def save_model(model: torch.nn.Module, tokenizer: Any, out_dir: Path) -> None:
    """HF-format model (or LoRA adapter) under ``out_dir/model`` and tokenizer under ``out_dir/tokenizer``."""
    model.save_pretrained(str(out_dir / "model"))
    tokenizer.save_pretrained(str(out_dir / "tokenizer"))


def load_for_inference(path: str | Path, merge_lora: bool = True) -> tuple[torch.nn.Module, Any, bool]:
    """Model, tokenizer, is_seq2seq from a run's ``final/``, a checkpoint, or a plain HF dir / hub id."""
    p = Path(path)
    model_dir = p / "model" if (p / "model").is_dir() else p
    tok_dir = p / "tokenizer" if (p / "tokenizer").is_dir() else model_dir
    if (model_dir / "adapter_config.json").is_file():
        base_path = json.loads((model_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
        for candidate in (p / "base_model", p.parent / "base_model", p.parent.parent / "base_model"):
            if candidate.is_dir():
                base_path = str(candidate)
                break
        base = load_pretrained(base_path)
        model = load_lora_adapter(base, model_dir, trainable=False)
        if merge_lora:
            model = model.merge_and_unload()
        seq2seq = bool(getattr(unwrap(model).config, "is_encoder_decoder", False))
    else:
        model = load_pretrained(model_dir)
        seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    model.eval()
    return model, load_tokenizer(tok_dir), seq2seq
