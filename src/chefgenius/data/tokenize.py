"""Token ids of examples, and the on-disk token cache shared by training and evaluation.

A cache entry is keyed by (split fingerprint, tokenizer, lengths) and carries a digest of its
arrays; an entry that fails the digest or holds ids outside the vocabulary is rebuilt, loudly.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..config import DataConfig
from .format import recipe_to_example
from .loader import TokenizedData
from .sources import Recipe

CACHE_VERSION = 2
_ARRAYS = ("input_ids", "input_offsets", "labels", "label_offsets")


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


def tokenize_recipes(recipes: list[Recipe], tokenizer: Any, *, is_seq2seq: bool, max_prompt_tokens: int,
                     max_target_tokens: int, mask_prompt: bool) -> TokenizedData:
    inputs, labels = [], []
    for r in recipes:
        prompt, target = recipe_to_example(r)
        ids, lab = encode_example(tokenizer, prompt, target, is_seq2seq=is_seq2seq,
                                  max_prompt_tokens=max_prompt_tokens, max_target_tokens=max_target_tokens,
                                  mask_prompt=mask_prompt)
        inputs.append(torch.tensor(ids, dtype=torch.int64))
        labels.append(torch.tensor(lab, dtype=torch.int64))
    return TokenizedData(inputs, labels)


def _pack(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
    offsets = torch.zeros(len(seqs) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lengths, 0)
    flat = torch.cat(seqs) if seqs else torch.zeros(0, dtype=torch.int64)
    return flat.to(torch.int32), offsets


def _unpack(flat: torch.Tensor, offsets: torch.Tensor) -> list[torch.Tensor]:
    flat = flat.to(torch.int64)
    return [flat[offsets[i]:offsets[i + 1]].clone() for i in range(len(offsets) - 1)]


def _digest(arrays: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in _ARRAYS:
        h.update(arrays[name].contiguous().numpy().tobytes())
    return h.hexdigest()


def _read_entry(path: Path, num_examples: int, vocab_size: int) -> TokenizedData:
    """The cached data, or ``ValueError`` saying what is wrong with the entry."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in _ARRAYS}
    except (SafetensorError, OSError, KeyError) as err:
        raise ValueError(f"unreadable ({str(err).splitlines()[0]})") from None
    if meta.get("digest") != _digest(arrays):
        raise ValueError("its contents do not match their digest")
    ids, ioff, lab, loff = (arrays[k] for k in _ARRAYS)
    for flat, off in ((ids, ioff), (lab, loff)):
        shape_ok = len(off) == num_examples + 1 and int(off[0]) == 0 and int(off[-1]) == len(flat)
        if not shape_ok or bool((off.diff() < 0).any()):
            raise ValueError("its offsets do not describe the split")
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(f"it holds token ids outside the vocabulary of {vocab_size}")
    bad_labels = (lab != -100) & ((lab < 0) | (lab >= vocab_size))
    if bool(bad_labels.any()):
        raise ValueError(f"it holds labels outside the vocabulary of {vocab_size}")
    return TokenizedData(_unpack(ids, ioff), _unpack(lab, loff))


def cached_tokenize(recipes: list[Recipe], tokenizer: Any, *, split_fingerprint: str, cache_dir: Path,
                    is_seq2seq: bool, max_prompt_tokens: int, max_target_tokens: int, mask_prompt: bool,
                    log: Callable[[str], None] = print) -> tuple[TokenizedData, bool]:
    """Tokenise once per (data, tokenizer, lengths); returns the data and whether the cache hit."""
    key = hashlib.sha256(
        f"{CACHE_VERSION}|{split_fingerprint}|{tokenizer_digest(tokenizer)}|{is_seq2seq}|"
        f"{max_prompt_tokens}|{max_target_tokens}|{mask_prompt}".encode()
    ).hexdigest()[:24]
    path = cache_dir / "tokens" / f"{key}.safetensors"
    if path.is_file():
        try:
            return _read_entry(path, len(recipes), len(tokenizer)), True
        except ValueError as err:
            log(f"warning: token cache entry {path} is damaged: {err}; rebuilding it")
    data = tokenize_recipes(recipes, tokenizer, is_seq2seq=is_seq2seq, max_prompt_tokens=max_prompt_tokens,
                            max_target_tokens=max_target_tokens, mask_prompt=mask_prompt)
    ids, ioff = _pack(data.input_ids)
    lab, loff = _pack(data.labels)
    arrays = {"input_ids": ids, "input_offsets": ioff, "labels": lab, "label_offsets": loff}
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(arrays, str(tmp), metadata={"digest": _digest(arrays)})
        os.replace(tmp, path)
    except (OSError, SafetensorError) as err:
        tmp.unlink(missing_ok=True)
        reason = getattr(err, "strerror", None) or str(err).splitlines()[0]
        log(f"WARNING: cannot write token cache {path} ({reason}); training goes on without a cache, "
            "so the next start tokenises again")
    return data, False


def tokenize_split(recipes: list[Recipe], fingerprint: str, tokenizer: Any, cfg: DataConfig, is_seq2seq: bool,
                   log: Callable[[str], None] = print) -> tuple[TokenizedData, bool]:
    """One split through the cache, with the run's lengths: training and evaluation call this alike."""
    return cached_tokenize(recipes, tokenizer, split_fingerprint=fingerprint,
                           cache_dir=default_cache_dir(cfg.cache_dir), is_seq2seq=is_seq2seq,
                           max_prompt_tokens=cfg.max_prompt_tokens, max_target_tokens=cfg.max_target_tokens,
                           mask_prompt=cfg.mask_prompt, log=log)
