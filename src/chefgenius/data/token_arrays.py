"""The token arrays of a prepared split, encoded in worker processes and written in sample order.

Each worker encodes a slice of the split's sample order (texts read back from the spilled columns)
and hands back flat little-endian id arrays and lengths; the parent writes them in order, so the
files never depend on scheduling. With tiktoken as the encoder (see :mod:`.encoders`), every
:data:`~.encoders.AUDIT_EVERY`-th text is also encoded by the Hugging Face tokenizer, and a
difference aborts the pass (:class:`EncoderMismatch`) so the caller starts over with that tokenizer.
"""

from __future__ import annotations

import itertools
import os
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chefgenius.data.encoders import AUDIT_EVERY, Encoder, hf_encoder, tiktoken_encoder, tiktoken_ranks

BATCH = 4096  # samples per task


class EncoderMismatch(RuntimeError):
    """tiktoken gave other ids than the tokenizer for one text: the pass is redone with the tokenizer."""


class TextColumn:
    """Texts spilled to one file, read back by index with pread (the page cache serves them without
    counting towards RSS: a mapping read at random raised preparation's peak RSS on 2.2M recipes from
    1.06 to 1.84 GB, and was no faster); picklable, so a spawned worker can read them too."""

    def __init__(self, path: Path, offsets: array) -> None:
        self.path, self.offsets = path, offsets
        self._fd: int | None = None
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "offsets": self.offsets}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["offsets"])

    def __del__(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)

    def _descriptor(self) -> int:
        if self._pid != os.getpid():  # a forked worker opens its own descriptor
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def __call__(self, i: int) -> str:
        offs = self.offsets
        return os.pread(self._descriptor(), offs[i + 1] - offs[i], offs[i]).decode("utf-8")

    def many_bytes(self, indices: Iterable[int]) -> list[bytes]:
        """The UTF-8 bytes of the texts at ``indices``, in that order."""
        offs, fd, pread = self.offsets, self._descriptor(), os.pread
        return [pread(fd, offs[i + 1] - offs[i], offs[i]) for i in indices]

    def many(self, indices: Iterable[int]) -> list[str]:
        """The texts at ``indices``, in that order (as ``[self(i) for i in indices]``)."""
        return [b.decode("utf-8") for b in self.many_bytes(indices)]

    def each(self, indices: list[int], block: int = 65_536) -> Iterator[str]:
        """The texts at ``indices`` one by one, read :meth:`many` at a time (bounded memory)."""
        for start in range(0, len(indices), block):
            yield from self.many(indices[start:start + block])


@dataclass
class EncodeJob:
    """Everything a worker needs (inherited through fork, or pickled once per spawned worker)."""

    prompts: TextColumn
    targets: TextColumn
    tokenizer: Any
    use_tiktoken: bool
    is_seq2seq: bool
    max_prompt_tokens: int
    max_target_tokens: int
    dtype: str


_JOB: EncodeJob | None = None
_ENCODERS: tuple[Encoder, Encoder | None] | None = None


def init_worker(job: EncodeJob) -> None:
    global _JOB, _ENCODERS
    _JOB, _ENCODERS = job, None


def _encoders() -> tuple[Encoder, Encoder | None]:
    """(the Hugging Face encoder, tiktoken or None), built once per process."""
    global _ENCODERS
    if _ENCODERS is None:
        reference = hf_encoder(_JOB.tokenizer)
        found = tiktoken_ranks(_JOB.tokenizer) if _JOB.use_tiktoken else None
        _ENCODERS = reference, tiktoken_encoder(*found, reference) if found else None
    return _ENCODERS


def encode_slice(task: tuple[int, np.ndarray]) -> tuple[bytes, bytes, np.ndarray, np.ndarray]:
    """Worker: (flat source ids, flat target ids, source lengths, target lengths) of one slice."""
    start, idx = task
    job = _JOB
    reference, fast = _encoders()
    rows = idx.tolist()
    prompts = job.prompts.many(rows)
    if not job.is_seq2seq:
        prompts = [p + "\n" for p in prompts]
    targets = job.targets.many(rows)
    encode = fast or reference
    src_ids, tgt_ids = encode(prompts), encode(targets)
    if fast is not None:
        _audit(start, prompts, src_ids, reference)
        _audit(start, targets, tgt_ids, reference)
    eos = job.tokenizer.eos_token_id
    # Cut and end the id lists in place (they are this slice's own): copying them took about 15% of a
    # worker's time (cProfile). Prompts: at most max_prompt_tokens, the last one EOS for seq2seq;
    # targets: ids then EOS, cut at max_target_tokens.
    src_cap = job.max_prompt_tokens - 1 if job.is_seq2seq else job.max_prompt_tokens
    for ids in src_ids:
        del ids[src_cap:]
    if job.is_seq2seq:
        for ids in src_ids:
            ids.append(eos)
    tgt_cap = job.max_target_tokens
    for ids in tgt_ids:
        if len(ids) < tgt_cap:
            ids.append(eos)
        else:
            del ids[tgt_cap:]
    out = []
    for seqs in (src_ids, tgt_ids):
        out.append(np.fromiter(itertools.chain.from_iterable(seqs), dtype=job.dtype).tobytes())
    lengths = [np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs)) for seqs in (src_ids, tgt_ids)]
    return out[0], out[1], lengths[0], lengths[1]


def _audit(start: int, texts: list[str], ids: list[list[int]], reference: Encoder) -> None:
    picked = [j for j in range(len(texts)) if (start + j) % AUDIT_EVERY == 0]
    for j, want in zip(picked, reference([texts[j] for j in picked])):
        if ids[j] != want:
            raise EncoderMismatch(f"tiktoken and the tokenizer disagree on sample {start + j} "
                                  f"({texts[j][:60]!r})")


def tasks(order: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    for start in range(0, len(order), BATCH):
        yield start, order[start:start + BATCH]


def write_side(tmp: Path, side: str, results: Iterator[tuple[bytes, bytes, np.ndarray, np.ndarray]],
               dtype: str, progress: Callable[[int], None]) -> dict[str, Any]:
    """Write one split's arrays from ``results`` (in order); returns their description for ``meta.json``."""
    files = {name: (tmp / f"{side}_{name}.bin").open("wb") for name in ("src", "tgt")}
    lengths: dict[str, list[np.ndarray]] = {"src": [], "tgt": []}
    try:
        for src, tgt, src_len, tgt_len in results:
            files["src"].write(src)
            files["tgt"].write(tgt)
            lengths["src"].append(src_len)
            lengths["tgt"].append(tgt_len)
            progress(len(src_len))
    finally:
        for f in files.values():
            f.close()
    out: dict[str, Any] = {}
    for name in ("src", "tgt"):
        lens = np.concatenate(lengths[name]) if lengths[name] else np.zeros(0, np.int64)
        offsets = np.zeros(len(lens) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        offsets.astype("<i8").tofile(tmp / f"{side}_{name}_offsets.bin")
        out[name] = {"dtype": dtype, "length": int(offsets[-1])}
        out[f"{name}_offsets"] = {"dtype": "<i8", "length": int(len(offsets))}
    return out
