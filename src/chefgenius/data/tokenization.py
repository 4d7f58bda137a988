"""Token ids of one example, exactly as training sees them; the prepared dataset encodes in batches
with the same rules, and generation builds its prompts here."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any


def default_cache_dir(configured: str | None) -> Path:
    if configured:
        return Path(configured)
    env = os.environ.get("CHEFGENIUS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "chefgenius"


def tokenizer_digest(tokenizer: Any) -> str:
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def encode_example(tokenizer: Any, prompt: str, target: str | None, *, is_seq2seq: bool,
                   max_prompt_tokens: int, max_target_tokens: int, mask_prompt: bool = True
                   ) -> tuple[list[int], list[int]]:
    """Token ids of one example; with ``target=None`` only the generation prompt is built."""
    eos = tokenizer.eos_token_id
    if is_seq2seq:
        src = tokenizer.encode(prompt, add_special_tokens=False)[: max_prompt_tokens - 1] + [eos]
        if target is None:
            return src, []
        tgt = (tokenizer.encode(target, add_special_tokens=False) + [eos])[:max_target_tokens]
        return src, tgt
    src = tokenizer.encode(prompt + "\n", add_special_tokens=False)[:max_prompt_tokens]
    if target is None:
        return src, []
    tgt = (tokenizer.encode(target, add_special_tokens=False) + [eos])[:max_target_tokens]
    ids = src + tgt
    labels = ([-100] * len(src) if mask_prompt else list(src)) + tgt
    return ids, labels
