"""The prepared dataset: read -> clean -> dedupe -> split -> tokenise once, then memory-map it.

A prepared dataset is a directory under ``$CHEFGENIUS_CACHE/prepared/`` named by a key over
everything that produced it (a streaming digest of the source bytes, the data config, the
model family and the tokenizer). It is committed like a checkpoint (temporary directory,
fsync, XXH3-128 manifest, rename), so a killed preparation leaves nothing a later run could take
for complete. Token ids are raw little-endian arrays in the narrowest unsigned type the
vocabulary allows, described by ``meta.json``; nothing is pickled.

Preparation streams the source in chunks that a process pool cleans (both cores), merges them
in order (so the result never depends on scheduling), keeps only per-recipe hashes and offsets
in memory, spills texts to disk, and tokenises in the same pool (tiktoken where it gives the
tokenizer's ids, :mod:`.encoders`; the Hugging Face tokenizer otherwise). The
samples of each split are stored in content-hash order, exactly the order of the in-memory path
(``tests/reference_data.py``), so the same recipes get the same sample indices either way.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from array import array
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chefgenius.config import DataConfig, QualityConfig
from chefgenius.data import title_words, token_arrays
from chefgenius.data.clean import CleanReport, clean_rows, content_hash, excerpt, merge_report
from chefgenius.data.encoders import exact_encoder, first_difference, hf_encoder
from chefgenius.data.recipe_format import format_prompt, format_target, prompt_ingredients
from chefgenius.data.sources import (
    ArrowFallback,
    ArrowRows,
    ByteCounter,
    DataError,
    RawRow,
    Recipe,
    RowError,
    arrow_csv_rows,
    bundled_corpus_path,
    read_rows,
)
from chefgenius.data.split import is_validation
from chefgenius.data.token_arrays import EncodeJob, EncoderMismatch, TextColumn
from chefgenius.data.tokenization import tokenizer_digest
from chefgenius.durable.directory import commit_directory, read_manifest, remove_temporaries, verify_directory
from chefgenius.durable.files import atomic_write_text, update_from_file
from chefgenius.errors import PrepareWriteError  # re-exported

PREPARED_VERSION = 2  # 2: the training titles' words beside the tokenizer
TOKENIZER_SAMPLE = 200_000  # train recipes (in content-hash order) a from-scratch tokenizer learns from
EVAL_TEXTS = 1000  # validation prompts and references kept as text for `chefgenius eval`
CHUNK_ROWS = 5_000
FINGERPRINT_BLOCK = 65_536  # recipes per digest update
TIKTOKEN_CHECK = 1000  # training samples both encoders encode before tiktoken is trusted with the rest
SIDES = ("train", "val")


# ----- keys ------------------------------------------------------------------------------------

def _hasher():
    try:
        import xxhash

        return xxhash.xxh3_128()
    except ImportError:  # pragma: no cover - xxhash is a dependency; blake2b is the slower stand-in
        return hashlib.blake2b(digest_size=16)


def source_digest(cfg: DataConfig) -> str:
    """Streaming digest of every byte of the source: a changed file is noticed even with equal size and mtime."""
    path = Path(cfg.path) if cfg.path else bundled_corpus_path()
    h = _hasher()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    else:  # a hub dataset id: its name is all we can key on
        h.update(f"hub:{cfg.path}".encode())
        files = []
    for f in files:
        h.update(f.relative_to(path).as_posix().encode() if f != path else b"")
        update_from_file(h, f)
    return h.hexdigest()


def _data_key_fields(cfg: DataConfig) -> dict[str, Any]:
    return {"format": cfg.format, "hf_split": cfg.hf_split, "max_recipes": cfg.max_recipes,
            "val_fraction": cfg.val_fraction, "split_seed": cfg.split_seed, "quality": cfg.quality.model_dump(),
            "max_prompt_tokens": cfg.max_prompt_tokens, "max_target_tokens": cfg.max_target_tokens}


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps([PREPARED_VERSION, *parts], sort_keys=True).encode()).hexdigest()[:24]


# ----- the stored splits -----------------------------------------------------------------------

class StoredSplit:
    """One split mapped from disk; examples are built on access, so memory grows with what is touched."""

    def __init__(self, directory: Path, side: str, meta: dict[str, Any], *, is_seq2seq: bool, mask_prompt: bool):
        arrays = meta["arrays"][side]
        self.num_examples = int(meta["counts"][side])
        self._src = _map(directory, f"{side}_src", arrays["src"])
        self._tgt = _map(directory, f"{side}_tgt", arrays["tgt"])
        self._src_off = _map(directory, f"{side}_src_offsets", arrays["src_offsets"])
        self._tgt_off = _map(directory, f"{side}_tgt_offsets", arrays["tgt_offsets"])
        self.is_seq2seq, self.mask_prompt = is_seq2seq, mask_prompt
        self.vocab_size, self.path = int(meta["vocab_size"]), directory

    def __len__(self) -> int:
        return self.num_examples

    def lengths(self) -> np.ndarray:
        """Tokens of input and labels together, as :meth:`TokenizedData.lengths` counts them."""
        n = np.diff(self._src_off) + np.diff(self._tgt_off)
        return n if self.is_seq2seq else 2 * n

    def example(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        src = self._src[self._src_off[i]:self._src_off[i + 1]]
        tgt = self._tgt[self._tgt_off[i]:self._tgt_off[i + 1]]
        if (len(src) and src.max() >= self.vocab_size) or (len(tgt) and tgt.max() >= self.vocab_size):
            raise DataError(f"prepared dataset {self.path} is damaged (example {i} holds a token id outside the "
                            f"vocabulary of {self.vocab_size}); remove that directory and rerun to rebuild it")
        src, tgt = torch.from_numpy(src.astype(np.int64)), torch.from_numpy(tgt.astype(np.int64))
        if self.is_seq2seq:
            return src, tgt
        prompt_labels = torch.full_like(src, -100) if self.mask_prompt else src
        return torch.cat([src, tgt]), torch.cat([prompt_labels, tgt])


def _map(directory: Path, name: str, desc: dict[str, Any]) -> np.ndarray:
    if desc["length"] == 0:
        return np.zeros(0, dtype=desc["dtype"])
    return np.memmap(directory / f"{name}.bin", dtype=np.dtype(desc["dtype"]), mode="r", shape=(desc["length"],))


@dataclass
class PreparedDataset:
    path: Path
    meta: dict[str, Any]
    train: StoredSplit
    val: StoredSplit

    @property
    def train_fingerprint(self) -> str:
        return self.meta["fingerprints"]["train"]

    @property
    def val_fingerprint(self) -> str:
        return self.meta["fingerprints"]["val"]

    @property
    def report(self) -> CleanReport:
        return CleanReport.from_dict(self.meta["report"])

    def tokenizer(self) -> Any:
        from chefgenius.data.tokenizer import load_tokenizer  # deferred: transformers (~1 s) only when asked

        return load_tokenizer(self.path / "tokenizer")

    def title_words(self) -> tuple[str, ...] | None:
        return title_words.load(self.path / "tokenizer")

    def eval_texts(self, side: str = "val") -> list[dict[str, Any]]:
        """Prompt ingredients and reference target of the first validation (or train) recipes."""
        return json.loads((self.path / f"{side}_texts.json").read_text())


def open_prepared(path: Path, *, is_seq2seq: bool, mask_prompt: bool) -> PreparedDataset:
    meta = json.loads((path / "meta.json").read_text())
    splits = [StoredSplit(path, side, meta, is_seq2seq=is_seq2seq, mask_prompt=mask_prompt) for side in SIDES]
    return PreparedDataset(path, meta, *splits)


# ----- preparation -----------------------------------------------------------------------------

@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Only one process prepares a given dataset; the others wait here, then open what it wrote."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _store_problem(path: Path) -> str | None:
    """Every file's size and XXH3-128 digest against the manifest, and every token id against the
    vocabulary, at every open: a flipped bit anywhere is caught before training reads it. It runs at
    memory speed (the 826 MB store of the 2.2M-row RecipeNLG: ``bench/prepare_speed.py``)."""
    try:
        doc = read_manifest(path)
    except ValueError as err:
        return str(err)
    for rel, entry in doc["files"].items():
        f = path / rel
        if not f.is_file() or f.stat().st_size != entry["size"]:
            return f"{rel} is missing or has the wrong size"
    problem = verify_directory(path)
    if problem:
        return problem
    try:
        meta = json.loads((path / "meta.json").read_text())
        arrays = {f"{side}_{name}": _map(path, f"{side}_{name}", meta["arrays"][side][name])
                  for side in SIDES for name in ("src", "tgt")}
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:  # numpy's max drops the GIL
            largest = list(pool.map(lambda ids: int(ids.max()) if len(ids) else -1, arrays.values()))
    except (ValueError, KeyError, TypeError, OSError) as err:
        return f"meta.json does not describe the arrays ({err})"
    for name, top in zip(arrays, largest):
        if top >= int(meta["vocab_size"]):
            return f"{name}.bin holds token ids outside the vocabulary of {meta['vocab_size']}"
    return None


def prepare_dataset(cfg: DataConfig, *, is_seq2seq: bool, tokenizer: Any | None, vocab_size: int | None,
                    cache_dir: Path, log: Callable[[str], None] = print, progress: bool = False,
                    workers: int | None = None, encoder: str = "auto"
                    ) -> PreparedDataset:
    """The prepared dataset for this config: reused when its key matches, built (once) otherwise.

    Pass ``tokenizer`` to tokenise with a given tokenizer (pretrained, or restored from a
    checkpoint), or ``vocab_size`` to train a byte-level BPE from scratch on the train split.
    ``encoder="hf"`` tokenises with the tokenizer itself even where tiktoken would give the same ids.
    """
    if encoder not in ("auto", "hf"):
        raise ValueError(f"encoder must be 'auto' or 'hf', not {encoder!r}")
    t0 = time.perf_counter()
    root = cache_dir / "prepared"
    digest = source_digest(cfg)
    data_fields = _data_key_fields(cfg)
    scratch_key = None
    if tokenizer is None:
        scratch_key = _key("scratch", digest, data_fields, is_seq2seq, vocab_size, TOKENIZER_SAMPLE)
    else:
        tok_digest = tokenizer_digest(tokenizer)
    with _file_lock(root / "locks" / f"{scratch_key or tok_digest}-{digest[:16]}.lock"):
        if scratch_key is not None:  # read under the lock: a process that waited sees what the other one built
            index = root / "index" / scratch_key
            tok_digest = index.read_text().strip() if index.is_file() else None
        if tok_digest is not None:
            path = root / _key("store", digest, data_fields, is_seq2seq, tok_digest)
            if path.is_dir():
                problem = _store_problem(path)
                if problem is None:
                    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                    log(f"data: prepared dataset {path.name} reused ({time.perf_counter() - t0:.2f} s to hash the "
                        f"source and verify all {size / 1e6:.0f} MB of it)")
                    return open_prepared(path, is_seq2seq=is_seq2seq, mask_prompt=cfg.mask_prompt)
                log(f"warning: prepared dataset {path} is damaged ({problem}); rebuilding it")
                shutil.rmtree(path, ignore_errors=True)
        try:
            path = _build(cfg, root, digest, data_fields, is_seq2seq=is_seq2seq, tokenizer=tokenizer,
                          vocab_size=vocab_size, log=log, progress=progress, workers=workers, encoder=encoder)
        except OSError as err:  # CheckpointWriteError (the commit) is an OSError too
            raise PrepareWriteError(err.errno, f"cannot write the prepared dataset under {root}: "
                                    f"{os.strerror(err.errno) if err.errno else err}; free space there or point "
                                    "data.cache_dir (or CHEFGENIUS_CACHE) elsewhere") from err
        if scratch_key is not None:
            index = root / "index" / scratch_key
            index.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(index, json.loads((path / "meta.json").read_text())["tokenizer_digest"])
    log(f"data: prepared dataset {path.name} built in {time.perf_counter() - t0:.1f} s")
    return open_prepared(path, is_seq2seq=is_seq2seq, mask_prompt=cfg.mask_prompt)


_COLUMNS = ("ner", "ingredients", "prompt", "target")


@dataclass
class _CleanedChunk:
    """A chunk's kept recipes as columns: per recipe its 32-byte content hash, its side (1: validation)
    and an excerpt; per text column one UTF-8 blob with each text's byte length. A few large objects
    cross the process boundary instead of seven small ones per recipe."""

    hashes: bytes
    sides: bytes
    excerpts: list[str]
    blobs: dict[str, bytes]
    lengths: dict[str, array]


def _clean_chunk(args: tuple[ArrowRows | list[RawRow | Recipe | RowError], dict[str, Any], int, float]
                 ) -> tuple[_CleanedChunk, CleanReport]:
    """Worker: clean one chunk, format its kept recipes and return them as :class:`_CleanedChunk`.

    :func:`clean_rows` sends only the rows some pattern could match through the Python regexes; the
    result is the same as :func:`clean_one` on every row."""
    rows, quality, seed, val_fraction = args
    if isinstance(rows, ArrowRows):
        rows = rows.rows()
    qcfg = QualityConfig.model_validate(quality)
    report = CleanReport()
    parsed = [row.parse() if isinstance(row, RawRow) else row for row in rows]
    hashes, sides, excerpts = bytearray(), bytearray(), []
    texts: dict[str, list[bytes]] = {name: [] for name in _COLUMNS}
    for recipe in clean_rows(parsed, qcfg, report):
        if recipe is None:
            continue
        digest = content_hash(recipe)
        names = prompt_ingredients(recipe)  # recipe_to_example's prompt, from the names computed once
        hashes += bytes.fromhex(digest)
        sides.append(is_validation(digest, seed, val_fraction))
        excerpts.append(excerpt(recipe))
        texts["ner"].append("|".join(recipe.ner).encode())
        texts["ingredients"].append("\x1f".join(names).encode())
        texts["prompt"].append(format_prompt(names).encode())
        texts["target"].append(format_target(recipe.title, recipe.ingredients, recipe.directions).encode())
    return _CleanedChunk(bytes(hashes), bytes(sides), excerpts, {k: b"".join(v) for k, v in texts.items()},
                         {k: array("q", map(len, v)) for k, v in texts.items()}), report


def _chunks(rows: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while True:
        chunk = list(itertools.islice(rows, size))
        if not chunk:
            return
        yield chunk


class _Spill:
    """Append-only text column on disk with offsets in memory; read back by index (:class:`TextColumn`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = path.open("wb")
        self.offsets = array("q", [0])

    def add(self, blob: bytes, lengths: array) -> None:
        """Texts given as their UTF-8 bytes back to back and each one's length."""
        self._f.write(blob)
        ends = itertools.accumulate(lengths, initial=self.offsets[-1])
        next(ends)  # the ``initial`` offset, already there
        self.offsets.extend(ends)

    def reader(self) -> TextColumn:
        self._f.close()
        return TextColumn(self.path, self.offsets)


def _build(cfg: DataConfig, root: Path, digest: str, data_fields: dict[str, Any], *, is_seq2seq: bool,
           tokenizer: Any | None, vocab_size: int | None, log: Callable[[str], None], progress: bool,
           workers: int | None, encoder: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    remove_temporaries(root)  # leftovers of a killed preparation: never mistaken for a dataset
    work = root / f".tmp-work-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        # Stage 1: clean in a process pool, merge in order, de-duplicate, split, spill texts.
        num_workers = workers if workers is not None else min(2, os.cpu_count() or 1)
        t0 = time.perf_counter()
        hashes, sides, report, readers = _clean_all(cfg, work, progress, num_workers, log)
        orders = _split_orders(cfg, hashes, sides, report)
        fingerprints = {side: _fingerprint(order, hashes, readers["ner"]) for side, order in orders.items()}
        t1 = time.perf_counter()
        log(f"data: cleaned {report.num_read} rows in {t1 - t0:.1f} s ({report.num_read / (t1 - t0):.0f} rows/s), "
            f"kept {report.num_kept}")
        # Stage 2: the tokenizer, trained from a bounded, deterministic sample when none is given.
        if tokenizer is None:
            from chefgenius.data.tokenizer import train_tokenizer  # deferred: transformers (~1 s) only when needed

            sample = orders["train"][:TOKENIZER_SAMPLE]
            log(f"data: training a {vocab_size}-token BPE tokenizer on {len(sample)} training recipes")
            rows = sample.tolist()
            tokenizer = train_tokenizer([p + "\n" + t for p, t in zip(readers["prompt"].many(rows),
                                                                       readers["target"].many(rows))], vocab_size)
            log(f"data: tokenizer trained in {time.perf_counter() - t1:.1f} s")
        tok_digest = tokenizer_digest(tokenizer)
        meta = {"version": PREPARED_VERSION, "source": str(cfg.path or "bundled"), "source_digest": digest,
                "data": data_fields, "is_seq2seq": is_seq2seq, "tokenizer_digest": tok_digest,
                "vocab_size": len(tokenizer), "counts": {side: int(len(order)) for side, order in orders.items()},
                "fingerprints": fingerprints}
        final = root / _key("store", digest, data_fields, is_seq2seq, tok_digest)
        # Stage 3: tokenise each split in sample order, in worker processes, straight to disk.
        use_tiktoken = encoder == "auto" and _tiktoken_agrees(tokenizer, orders["train"], readers, is_seq2seq, log)
        job = EncodeJob(readers["prompt"], readers["target"], tokenizer, use_tiktoken, is_seq2seq,
                        cfg.max_prompt_tokens, cfg.max_target_tokens,
                        np.dtype(np.uint16 if len(tokenizer) <= 65536 else np.uint32).newbyteorder("<").str)
        full_meta = {**meta, "report": report.to_dict()}
        t2 = time.perf_counter()
        log(f"data: tokenising with {'tiktoken (checked against the tokenizer)' if use_tiktoken else 'the tokenizer'}")
        def write(tmp: Path) -> None:
            _write_store(tmp, orders, readers, job, progress, full_meta, num_workers)

        try:
            commit_directory(final, 0, write)
        except EncoderMismatch as err:
            log(f"warning: {err}; tokenising again with the tokenizer itself (same result, slower)")
            job.use_tiktoken = False
            commit_directory(final, 0, write)
        log(f"data: tokenised and written in {time.perf_counter() - t2:.1f} s")
        _save_report(root, digest, cfg, report)
        return final
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _clean_all(cfg: DataConfig, work: Path, progress: bool, num_workers: int, log: Callable[[str], None]
               ) -> tuple[bytearray, bytearray, CleanReport, dict[str, TextColumn]]:
    """Every kept recipe's content hash and side (validation or not), the report, and readers of its
    texts spilled to ``work`` (NER, ingredients, prompt, target), in source order.

    A CSV is parsed by Arrow when it reads it as the csv module would (:func:`arrow_csv_rows`); at the
    first row it would not, the pass starts over with the csv module (the same result, slower)."""
    try:
        return _clean_pass(cfg, work, progress, num_workers, arrow=True)
    except ArrowFallback as err:
        log(f"data: Arrow cannot read {cfg.path} as the csv module does ({err}); reading it with the csv module")
        return _clean_pass(cfg, work, progress, num_workers, arrow=False)


def _clean_pass(cfg: DataConfig, work: Path, progress: bool, num_workers: int, *, arrow: bool
                ) -> tuple[bytearray, bytearray, CleanReport, dict[str, TextColumn]]:
    spills = {name: _Spill(work / f"{name}.txt") for name in _COLUMNS}
    hashes, sides = bytearray(), bytearray()
    report = CleanReport()
    seen: set[bytes] = set()
    source_path = Path(cfg.path) if cfg.path else bundled_corpus_path()
    counter = ByteCounter(source_path) if source_path.is_file() else None
    chunks = _source_chunks(cfg, counter, arrow)
    jobs = ((chunk, cfg.quality.model_dump(), cfg.split_seed, cfg.val_fraction) for chunk in chunks)
    bar = _bar(progress, desc="prepare: clean", total=source_path.stat().st_size if counter else None, unit="B",
               unit_scale=True)  # bytes give the ETA; rows/s in the postfix
    t_start, num_rows = time.perf_counter(), 0
    with _pool(num_workers) as pool:
        results = pool.imap(_clean_chunk, jobs) if pool is not None else map(_clean_chunk, jobs)
        for chunk, part in results:
            merge_report(report, part)
            _merge_chunk(chunk, seen if cfg.quality.dedupe else None, report, hashes, sides, spills)
            num_rows += part.num_read
            bar.update(counter.count - bar.n if counter else 0)
            bar.set_postfix(rows=num_rows, rows_per_s=f"{num_rows / (time.perf_counter() - t_start):.0f}",
                            refresh=False)
    bar.close()
    report.num_kept = len(sides)
    return hashes, sides, report, {name: s.reader() for name, s in spills.items()}


def _merge_chunk(chunk: _CleanedChunk, seen: set[bytes] | None, report: CleanReport, hashes: bytearray,
                 sides: bytearray, spills: dict[str, _Spill]) -> None:
    """Append a chunk's recipes in order, dropping those whose content hash was seen before (when
    ``seen`` is given: de-duplication by the first 16 bytes of the hash)."""
    n = len(chunk.sides)
    keep = range(n)
    if seen is not None:
        keep = []
        for i in range(n):
            key = chunk.hashes[32 * i:32 * i + 16]
            if key in seen:
                report.drop("duplicate", chunk.excerpts[i])
            else:
                seen.add(key)
                keep.append(i)
    if len(keep) == n:  # the usual case: the whole chunk, as it came
        hashes += chunk.hashes
        sides += chunk.sides
        for name, spill in spills.items():
            spill.add(chunk.blobs[name], chunk.lengths[name])
        return
    hashes += b"".join(chunk.hashes[32 * i:32 * i + 32] for i in keep)
    sides += bytes(chunk.sides[i] for i in keep)
    for name, spill in spills.items():
        lengths, blob = chunk.lengths[name], chunk.blobs[name]
        starts = list(itertools.accumulate(lengths, initial=0))
        spill.add(b"".join(blob[starts[i]:starts[i + 1]] for i in keep), array("q", (lengths[i] for i in keep)))


def _source_chunks(cfg: DataConfig, counter: ByteCounter | None, arrow: bool) -> Iterator[Any]:
    """Worker tasks: Arrow batches of a CSV where Arrow reads it right, lists of rows otherwise."""
    batches = None
    if arrow and cfg.path and counter is not None and (
            cfg.format == "csv" or (cfg.format == "auto" and Path(cfg.path).suffix.lower() in (".csv", ".tsv"))):
        read_rows(cfg.path, cfg.format, cfg.hf_split)  # the same checks (and errors) as the csv path
        batches = arrow_csv_rows(Path(cfg.path), counter)
        if batches is None:
            counter.rewind()
    if batches is None:
        rows = read_rows(cfg.path, cfg.format, cfg.hf_split, counter)
        if cfg.max_recipes is not None:
            rows = itertools.islice(rows, cfg.max_recipes)
        yield from _chunks(iter(rows), CHUNK_ROWS)
        return
    left = cfg.max_recipes
    for chunk in batches:
        if left is not None:
            if left <= 0:
                return
            if chunk.batch.num_rows > left:
                chunk = ArrowRows(chunk.batch.slice(0, left), chunk.start)
            left -= chunk.batch.num_rows
        yield chunk


def _split_orders(cfg: DataConfig, hashes: bytearray, sides: bytearray, report: CleanReport) -> dict[str, np.ndarray]:
    """Indices of each split's recipes in content-hash order; refuses a source too small to split."""
    source = cfg.path or "the bundled corpus"
    if not report.num_kept:
        raise DataError(
            f"no usable recipes in {source}: read {report.num_read}, dropped all "
            f"({', '.join(f'{k}: {v}' for k, v in report.dropped.most_common(3)) or 'file is empty'}); "
            "run 'chefgenius data check' on it")
    hash_arr = np.frombuffer(bytes(hashes), dtype=">u8").reshape(-1, 4)
    side_arr = np.frombuffer(bytes(sides), dtype=np.uint8).astype(bool)
    orders = {}
    for side, flag in (("train", False), ("val", True)):
        idx = np.flatnonzero(side_arr == flag)
        cols = hash_arr[idx]
        orders[side] = idx[np.lexsort((cols[:, 3], cols[:, 2], cols[:, 1], cols[:, 0]))]
    if not len(orders["train"]) or not len(orders["val"]):
        raise DataError(f"{source} has {report.num_kept} usable recipes: too few for a train/validation split "
                        f"with data.val_fraction={cfg.val_fraction}; add recipes or change the fraction")
    return orders


def _fingerprint(order: np.ndarray, hashes: bytearray, ner: TextColumn) -> str:
    """:func:`~chefgenius.data.split.fingerprint` of the recipes in ``order``, from their stored hashes
    and NER texts: one digest update per block of recipes (two per recipe took ~10 s of one core on
    2.2M rows while the other idled)."""
    h = hashlib.sha256()
    for start in range(0, len(order), FINGERPRINT_BLOCK):
        rows = order[start:start + FINGERPRINT_BLOCK].tolist()
        parts = []
        for i, ner_text in zip(rows, ner.many_bytes(rows)):
            parts.append(hashes[32 * i:32 * i + 32].hex().encode())
            parts.append(ner_text)
        h.update(b"".join(parts))
    return h.hexdigest()[:16]


def _bar(progress: bool, **kwargs: Any) -> Any:
    """A live progress bar on a terminal only: in a log file (sbatch, nohup, a pipe) its carriage
    returns would pile up into one unreadable line; the stage lines given to ``log`` say the rest."""
    from tqdm.auto import tqdm

    return tqdm(disable=not (progress and sys.stderr.isatty()), dynamic_ncols=True, **kwargs)


def _write_store(tmp: Path, orders: dict[str, np.ndarray], readers: dict[str, TextColumn], job: EncodeJob,
                 progress: bool, meta: dict[str, Any], num_workers: int) -> None:
    """Token arrays, evaluation texts, the tokenizer and ``meta.json`` of a prepared dataset."""
    arrays = {}
    with _pool(num_workers, token_arrays.init_worker, (job,)) as pool:
        for side, order in orders.items():
            bar = _bar(progress, desc=f"prepare: tokenise {side}", total=len(order), unit="recipe", leave=False)
            tasks = token_arrays.tasks(order)
            results = pool.imap(token_arrays.encode_slice, tasks) if pool is not None else \
                map(token_arrays.encode_slice, tasks)
            arrays[side] = token_arrays.write_side(tmp, side, results, job.dtype, bar.update)
            bar.close()
            rows = order[:EVAL_TEXTS].tolist()
            texts = [{"ingredients": ingredients.split("\x1f"), "target": target}
                     for ingredients, target in zip(readers["ingredients"].many(rows), readers["target"].many(rows))]
            (tmp / f"{side}_texts.json").write_text(json.dumps(texts))
    from chefgenius.data.tokenizer import save_tokenizer  # deferred: transformers (~1 s) only when writing

    save_tokenizer(job.tokenizer, tmp / "tokenizer")
    # the words of the training titles, kept with the tokenizer (as many recipes as it learns from)
    title_words.save(tmp / "tokenizer", title_words.collect(
        readers["target"].each(orders["train"][:TOKENIZER_SAMPLE].tolist())))
    meta = {**{k: v for k, v in meta.items() if k != "report"}, "arrays": arrays, "report": meta["report"],
            "created": time.time()}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))


def _tiktoken_agrees(tokenizer: Any, order: np.ndarray, readers: dict[str, TextColumn], is_seq2seq: bool,
                     log: Callable[[str], None]) -> bool:
    """Whether tiktoken reproduces this tokenizer: by its file, then on the first training samples."""
    fast = exact_encoder(tokenizer)
    if fast is None:
        return False
    idx = [int(i) for i in order[:TIKTOKEN_CHECK]]
    texts = [p + ("" if is_seq2seq else "\n") for p in readers["prompt"].many(idx)] + readers["target"].many(idx)
    bad = first_difference(fast, hf_encoder(tokenizer), texts)
    if bad is not None:
        log(f"data: tiktoken differs from the tokenizer on {texts[bad][:60]!r}; encoding with the tokenizer")
        return False
    return True


@contextmanager
def _pool(num_workers: int, initializer: Callable[..., None] | None = None, initargs: tuple = ()) -> Iterator[Any]:
    if num_workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield None
        return
    import torch.cuda

    # fork is fast and inherits the loaded modules; never fork a process that initialised CUDA. The
    # Rust tokenizer's threads are off in the workers (they are the parallelism), said here, not warned.
    method = "spawn" if torch.cuda.is_initialized() else "fork"
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        pool = mp.get_context(method).Pool(num_workers, initializer, initargs)
    finally:
        if before is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before
    with pool:
        yield pool


def _report_path(root: Path, digest: str, cfg: DataConfig) -> Path:
    key = _key("report", digest, cfg.format, cfg.hf_split, cfg.max_recipes, cfg.quality.model_dump())
    return root / "reports" / f"{key}.json"


def _save_report(root: Path, digest: str, cfg: DataConfig, report: CleanReport) -> None:
    path = _report_path(root, digest, cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(report.to_dict()))


def stored_report(cfg: DataConfig, cache_dir: Path) -> CleanReport | None:
    """The clean report of an earlier preparation of this exact source and quality config, if any."""
    path = _report_path(cache_dir / "prepared", source_digest(cfg), cfg)
    if not path.is_file():
        return None
    try:
        return CleanReport.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError):
        return None
