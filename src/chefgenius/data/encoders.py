"""Batch encoders for preparation: the Hugging Face fast tokenizer, or tiktoken where it gives the same ids.

A byte-level BPE (GPT-2's, or the one trained from scratch here) is, for tiktoken, a table of token
bytes -> rank with GPT-2's pre-tokenisation pattern. tiktoken merges the adjacent pair whose joined
bytes rank lowest; the BPE model merges the listed pair that ranks lowest. Those agree when the
ranks follow the merge list, which :func:`exact_encoder` checks on the tokenizer's own file, and
then on texts: preparation compares both encoders on a sample before using tiktoken and on every
:data:`AUDIT_EVERY`-th text while it runs, and starts over with the Hugging Face encoder at the first
difference. tiktoken encodes about 2.7x faster on one core here (``bench/prepare_scale.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

# GPT-2's pre-tokenisation pattern: the one tokenizers' ByteLevel pre-tokenizer applies with use_regex.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
AUDIT_EVERY = 64  # one text in this many is encoded by both encoders while preparing

Encoder = Callable[[list[str]], list[list[int]]]


def hf_encoder(tokenizer: Any) -> Encoder:
    """Batch encoding in the Rust backend (all cores, no offsets kept); ids equal ``tokenizer.encode``."""
    backend = tokenizer.backend_tokenizer
    batch = getattr(backend, "encode_batch_fast", backend.encode_batch)
    return lambda texts: [e.ids for e in batch(texts, add_special_tokens=False)]


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte (tokenizers' ByteLevel alphabet), reversed."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


def tiktoken_ranks(tokenizer: Any) -> tuple[dict[bytes, int], list[str]] | None:
    """(token bytes -> id, added tokens' texts) when the tokenizer is a byte-level BPE tiktoken reproduces."""
    try:
        doc = json.loads(tokenizer.backend_tokenizer.to_str())
    except (AttributeError, ValueError):
        return None
    model, pre = doc.get("model") or {}, doc.get("pre_tokenizer") or {}
    if doc.get("normalizer") is not None or model.get("type") != "BPE":
        return None
    if pre != {**pre, "type": "ByteLevel", "add_prefix_space": False, "use_regex": True}:
        return None
    if model.get("dropout") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix") \
            or model.get("byte_fallback") or model.get("ignore_merges"):
        return None
    added = [t["content"] for t in doc.get("added_tokens", [])]
    alphabet = _byte_alphabet()
    ranks: dict[bytes, int] = {}
    for text, idx in model["vocab"].items():
        if text in added:
            continue
        if any(c not in alphabet for c in text):
            return None
        ranks[bytes(alphabet[c] for c in text)] = idx
    if len(ranks) != len(model["vocab"]) - sum(t in model["vocab"] for t in added) or \
            any(bytes([b]) not in ranks for b in range(256)):
        return None
    # Ranks must follow the merge list: the i-th merge's token gets a larger id than the (i-1)-th's,
    # and every multi-byte token is some merge's result.
    last, made = -1, 0
    for merge in model.get("merges", []):
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        idx = model["vocab"].get(left + right)
        if idx is None or idx <= last:
            return None
        last, made = idx, made + 1
    if made != sum(len(b) > 1 for b in ranks):
        return None
    return ranks, added


def tiktoken_encoder(ranks: dict[bytes, int], added: list[str], fallback: Encoder) -> Encoder | None:
    """tiktoken over ``ranks``; texts that hold an added token's text go to ``fallback`` (the BPE splits there)."""
    try:
        import tiktoken
    except ImportError:
        return None
    enc = tiktoken.Encoding("chefgenius-bpe", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={})
    encode = enc.encode_ordinary
    # One search of a batch joined by NUL first: a token without NUL cannot span two texts.
    joinable = all("\x00" not in a for a in added)

    def run(texts: list[str]) -> list[list[int]]:
        out = [encode(t) for t in texts]
        if joinable:
            joined = "\x00".join(texts)
            if not any(a in joined for a in added):
                return out
        special = [i for i, t in enumerate(texts) if any(a in t for a in added)]
        if special:
            for i, ids in zip(special, fallback([texts[i] for i in special])):
                out[i] = ids
        return out

    return run


def exact_encoder(tokenizer: Any) -> Encoder | None:
    """tiktoken for this tokenizer when its file says tiktoken can reproduce it; ``None`` otherwise."""
    found = tiktoken_ranks(tokenizer)
    return tiktoken_encoder(*found, hf_encoder(tokenizer)) if found else None


def first_difference(fast: Encoder, reference: Encoder, texts: list[str]) -> int | None:
    """Index of the first text the two encoders disagree on, or ``None``."""
    for i, (a, b) in enumerate(zip(fast(texts), reference(texts))):
        if a != b:
            return i
    return None
