"""Read recipes from RecipeNLG CSV, JSONL or Hugging Face datasets into :class:`Recipe` records.

Rows that cannot be parsed are not fatal: they come back as :class:`RowError` with a reason so
that the caller counts them. Only a file that cannot be read at all raises :class:`DataError`.
"""

from __future__ import annotations

import csv
import io
import json
import json.scanner
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from chefgenius.errors import DataError  # re-exported

REQUIRED_FIELDS = ("title", "ingredients", "directions")
_SURROGATE = re.compile("[\udc80-\udcff]")


@dataclass(frozen=True)
class Recipe:
    title: str
    ingredients: tuple[str, ...]
    directions: tuple[str, ...]
    quality_score: float | None = None
    source_row: int = -1
    ner: tuple[str, ...] = ()


@dataclass(frozen=True)
class RawRow:
    """A row read but not yet converted: conversion (JSON parsing of list cells) can run in a worker."""

    row: dict[str, Any]
    index: int
    valid_utf8: bool = field(default=False, compare=False)  # no undecodable bytes: Arrow validated the cells

    def parse(self) -> Recipe | RowError:
        return _to_recipe(self.row, self.index, self.valid_utf8)


@dataclass(frozen=True)
class RowError:
    row: int
    reason: str
    excerpt: str


def bundled_corpus_path() -> Path:
    return Path(str(resources.files("chefgenius") / "data" / "corpus" / "recipes.jsonl"))


# json.loads without its Python wrapper: the same C scanner, so the same values and the same errors.
_SCAN_JSON = json.scanner.make_scanner(json.JSONDecoder())


def _as_list(value: Any, name: str) -> list[str]:
    """Lists stay lists; strings are JSON lists (RecipeNLG) or newline-separated text (JSONL)."""
    if isinstance(value, list):
        items = value
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            # ``text`` has no white space at either end, so json.loads(text) succeeds exactly when one
            # value is scanned from position 0 to the end.
            try:
                items, end = _SCAN_JSON(text, 0)
            except (StopIteration, json.JSONDecodeError):
                raise ValueError(f"{name} is not a valid JSON list") from None
            if end != len(text):
                raise ValueError(f"{name} is not a valid JSON list")
            if not isinstance(items, list):
                raise ValueError(f"{name} is not a list")
        else:
            items = text.splitlines()
    elif value is None:
        raise ValueError(f"{name} is missing")
    else:
        raise ValueError(f"{name} has type {type(value).__name__}, expected list or string")
    try:  # of the values JSON has, only text has .strip()
        return [x.strip() for x in items]
    except AttributeError:
        raise ValueError(f"{name} holds non-text items") from None


def _has_bad_bytes(value: Any) -> bool:
    """Undecodable bytes survive reading as lone surrogates (``surrogateescape``)."""
    if isinstance(value, str):
        return not value.isascii() and _SURROGATE.search(value) is not None
    if isinstance(value, list):
        return any(_has_bad_bytes(v) for v in value)
    return False


def _to_recipe(row: dict[str, Any], index: int, valid_utf8: bool = False) -> Recipe | RowError:
    if not valid_utf8 and any(_has_bad_bytes(v) for v in row.values()):
        return RowError(index, "invalid UTF-8", _row_excerpt(row))
    try:
        title = row.get("title")
        if not isinstance(title, str):
            raise ValueError("title is missing")
        score = row.get("quality_score")
        if score == "":
            score = None
        if score is not None:
            try:
                score = float(score)
            except (TypeError, ValueError):
                raise ValueError("quality_score is not a number") from None
            if not 0.0 <= score <= 1.0:  # NaN fails this too
                raise ValueError("quality_score is not a number in [0, 1]")
        ner_raw = row.get("NER", row.get("ner"))
        ner = tuple(_as_list(ner_raw, "NER")) if ner_raw not in (None, "") else ()
        return Recipe(
            title=title.strip(),
            ner=ner,
            ingredients=tuple(_as_list(row.get("ingredients"), "ingredients")),
            directions=tuple(_as_list(row.get("directions"), "directions")),
            quality_score=None if score is None else float(score),
            source_row=index,
        )
    except ValueError as err:
        return RowError(index, str(err), _row_excerpt(row))


def _row_excerpt(row: dict[str, Any]) -> str:
    return str(row.get("title") or row)[:80].encode("utf-8", "replace").decode()


def _parsed(rows: Iterator[RawRow | RowError]) -> Iterator[Recipe | RowError]:
    return (r.parse() if isinstance(r, RawRow) else r for r in rows)


class ByteCounter(io.RawIOBase):
    """A binary file that counts the bytes handed out, for a progress bar with an ETA over a text reader."""

    def __init__(self, path: Path) -> None:
        self._f = path.open("rb")
        self.count = 0

    def readable(self) -> bool:
        return True

    def rewind(self) -> None:
        """Back to the first byte, for a reader that starts over (an Arrow read that gave up)."""
        self._f.seek(0)
        self.count = 0

    def readinto(self, buf) -> int:
        n = self._f.readinto(buf)
        self.count += n or 0
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


def _csv_rows(path: Path, counter: ByteCounter | None = None) -> Iterator[RawRow | RowError]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    raw = counter or ByteCounter(path)
    with io.TextIOWrapper(io.BufferedReader(raw), newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_FIELDS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(
                f"{path} lacks column(s) {', '.join(missing)}; a RecipeNLG CSV needs title, ingredients, directions"
            )
        index = 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as err:
                yield RowError(index, f"unparseable CSV row: {err}", "")
                index += 1
                continue
            title = str(row.get("title"))[:80].encode("utf-8", "replace").decode()
            if None in row:  # more cells than header columns
                yield RowError(index, "row has more cells than the header", title)
            elif any(row.get(c) is None for c in REQUIRED_FIELDS):
                yield RowError(index, "row has fewer cells than the header", title)
            else:
                yield RawRow(row, index)
            index += 1


ARROW_BLOCK_BYTES = 4 << 20  # bytes of CSV per Arrow batch (about 6,000 RecipeNLG rows): one worker task


class ArrowFallback(RuntimeError):
    """Arrow met a row it will not parse as the csv module does: read the file with the csv module."""


@dataclass(frozen=True)
class ArrowRows:
    """A batch of CSV rows parsed by Arrow (cells as bytes); :meth:`rows` gives what :func:`_csv_rows`
    gives for the same rows: one picklable object per worker task instead of thousands of dicts."""

    batch: Any  # pyarrow.RecordBatch, every column binary
    start: int

    def rows(self) -> list[RawRow]:
        import pyarrow as pa

        names = self.batch.schema.names
        try:  # Arrow checks the UTF-8 of whole columns at once: then no cell needs the per-row check
            cols = [col.cast(pa.string()).to_pylist() for col in self.batch.columns]
            valid = True
        except (pa.ArrowInvalid, UnicodeDecodeError):
            cols = [[c.decode("utf-8", "surrogateescape") for c in col.to_pylist()] for col in self.batch.columns]
            valid = False
        return [RawRow(dict(zip(names, cells)), self.start + i, valid) for i, cells in enumerate(zip(*cols))]


def arrow_csv_rows(path: Path, counter: ByteCounter | None = None) -> Iterator[ArrowRows] | None:
    """The rows of a CSV as Arrow batches, or ``None`` where only the csv module reads it right (a BOM,
    a header it reads otherwise, duplicate or missing columns). A row with the wrong number of cells, or
    one Arrow cannot parse, raises :class:`ArrowFallback` before the batch after it: the caller starts
    over with :func:`read_rows` (never finishing a pass that skipped a row)."""
    try:
        import pyarrow as pa
        import pyarrow.csv as pcsv
    except ImportError:
        return None
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with path.open("rb") as f:
        if f.read(3) == b"\xef\xbb\xbf":
            return None
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as f:
        try:
            header = next(csv.reader(f), [])
        except csv.Error:
            return None
    if len(set(header)) != len(header) or any(c not in header for c in REQUIRED_FIELDS):
        return None

    skipped: list[str] = []

    def invalid(row: Any) -> str:  # Arrow ignores what a handler raises: note it, stop at the next batch
        skipped.append(f"a row has {row.actual_columns} cells, the header {row.expected_columns}")
        return "skip"

    try:
        reader = pcsv.open_csv(
            counter or ByteCounter(path),
            read_options=pcsv.ReadOptions(block_size=ARROW_BLOCK_BYTES, use_threads=True),
            parse_options=pcsv.ParseOptions(newlines_in_values=True, invalid_row_handler=invalid),
            convert_options=pcsv.ConvertOptions(column_types={c: pa.binary() for c in header}))
    except pa.ArrowInvalid:
        return None
    if reader.schema.names != header or skipped:
        return None

    arrow_invalid = pa.ArrowInvalid  # bound now: a generator closed at exit outlives pyarrow's module dict

    def batches() -> Iterator[ArrowRows]:
        start = 0
        try:
            for batch in reader:
                if skipped:
                    raise ArrowFallback(skipped[0])
                yield ArrowRows(batch, start)
                start += batch.num_rows
        except arrow_invalid as err:
            raise ArrowFallback(str(err).splitlines()[0]) from None
        if skipped:
            raise ArrowFallback(skipped[0])

    return batches()


def _jsonl_rows(path: Path, counter: ByteCounter | None = None) -> Iterator[RawRow | RowError]:
    with io.BufferedReader(counter or ByteCounter(path)) as f:
        for index, raw in enumerate(f):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield RowError(index, "invalid UTF-8", raw[:80].decode("utf-8", "replace"))
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                yield RowError(index, f"invalid JSON: {err.msg}", line[:80])
                continue
            if not isinstance(row, dict):
                yield RowError(index, "line is not a JSON object", line[:80])
                continue
            yield RawRow(row, index)


def _hf_rows(path_or_id: str, split: str) -> Iterator[RawRow | RowError]:
    try:
        import datasets
    except ImportError:
        raise DataError("reading a Hugging Face dataset needs the 'hf' extra: pip install 'chefgenius[hf]'") from None
    local = Path(path_or_id)
    try:
        if local.is_dir() and (local / "dataset_info.json").exists():
            ds = datasets.load_from_disk(str(local))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
        else:
            ds = datasets.load_dataset(path_or_id, split=split)
    except Exception as err:  # datasets raises many types; report one line and stop
        raise DataError(f"cannot load dataset {path_or_id!r} split {split!r}: {err}".splitlines()[0]) from None
    missing = [c for c in REQUIRED_FIELDS if c not in ds.column_names]
    if missing:
        raise DataError(f"dataset {path_or_id} lacks column(s) {', '.join(missing)}")
    for index, row in enumerate(ds):
        yield RawRow(row, index)


def read_source(path: str | None, fmt: str = "auto", hf_split: str = "train") -> Iterator[Recipe | RowError]:
    """Recipes or row errors from the configured source; ``None`` means the bundled corpus."""
    return _parsed(read_rows(path, fmt, hf_split))


def read_rows(path: str | None, fmt: str = "auto", hf_split: str = "train", counter: ByteCounter | None = None
              ) -> Iterator[RawRow | RowError]:
    """Rows with their structure checked but cells not yet parsed (see :meth:`RawRow.parse`)."""
    if path is None:
        return _jsonl_rows(bundled_corpus_path(), counter)
    p = Path(path)
    if fmt == "auto":
        if p.is_file():
            fmt = "csv" if p.suffix.lower() in (".csv", ".tsv") else "jsonl"
        elif p.is_dir():
            fmt = "hf"
        else:
            raise DataError(f"data path {path} does not exist (set data.path to a CSV or JSONL file or a saved "
                            "dataset directory; for a Hugging Face hub dataset add format hf)")
    if fmt in ("csv", "jsonl") and p.exists() and not p.is_file():
        raise DataError(f"data path {path} is not a file; data.format={fmt} needs a {fmt.upper()} file")
    if fmt in ("csv", "jsonl") and not p.is_file():
        raise DataError(f"data file {path} does not exist (set data.path to a CSV, JSONL or dataset)")
    if fmt in ("csv", "jsonl") and not os.access(p, os.R_OK):
        raise DataError(f"data file {path} cannot be read (permission denied)")
    if fmt == "csv":
        return _csv_rows(p, counter)
    if fmt == "jsonl":
        return _jsonl_rows(p, counter)
    return _hf_rows(path, hf_split)
