"""The on-disk format of one state piece: tensors in ``NAME.safetensors``, the rest in ``NAME.json``.

A piece of more than :data:`PART_BYTES` of tensors (the optimizer of a large model) is written as
``NAME-0000k-of-0000n.safetensors`` parts side by side, listed in ``NAME.json``: one file is one
stream to the disk, and a single stream left the disk idle part of the time (153M GPT-2: the
optimizer's 1.28 GB in two streams took 0.72 s alone, in one about a fifth longer).

Any nesting of dicts, lists, tuples, scalars, strings, None and tensors round-trips exactly:
tensors are replaced by references into the safetensors file, tuples and non-string dict keys
are tagged. Nothing is pickled, so loading cannot run code; reading is bounded in size and
nesting, so a hostile file cannot exhaust memory or the stack either.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from chefgenius.checkpoint.layout import MAX_STATE_JSON_BYTES
from chefgenius.checkpoint.priority import adopt
from chefgenius.checkpoint.tensorfile import write_tensors
from chefgenius.durable.directory import read_json
from chefgenius.errors import CheckpointFormatError  # re-exported

FORMAT_VERSION = 1
PART_BYTES = 512 << 20  # a piece with more tensor bytes than this is split into parts of about this size
MAX_PARTS = 4
_T, _TUP, _ITEMS, _FLOAT = "__tensor__", "__tuple__", "__items__", "__float__"
CopyTensor = Callable[[str, torch.Tensor], torch.Tensor]


def _on_cpu(path: str, tensor: torch.Tensor) -> torch.Tensor:
    """A synchronous save writes before training goes on: CPU tensors are written from their own memory."""
    return tensor.detach().to("cpu").contiguous()


def _encode(obj: Any, tensors: dict[str, torch.Tensor], path: str, copy: CopyTensor) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[path] = copy(path, obj)
        return {_T: path}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _encode(v, tensors, f"{path}.{k}", copy) for k, v in obj.items()}
        return {_ITEMS: [[k, _encode(v, tensors, f"{path}.{k}", copy)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {_TUP: [_encode(v, tensors, f"{path}.{i}", copy) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{path}.{i}", copy) for i, v in enumerate(obj)]
    if isinstance(obj, float) and not math.isfinite(obj):
        return {_FLOAT: repr(obj)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {path} in a checkpoint")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if _T in obj:
            return tensors[obj[_T]]
        if _TUP in obj:
            return tuple(_decode(v, tensors) for v in obj[_TUP])
        if _ITEMS in obj:
            return {k: _decode(v, tensors) for k, v in obj[_ITEMS]}
        if _FLOAT in obj:
            return float(obj[_FLOAT])
        return {k: _decode(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    return obj


def write_bytes(path: Path, data: bytes) -> None:
    """Plain write; a full disk raises ``OSError`` (ENOSPC) naming the file."""
    with path.open("wb") as f:
        f.write(data)


@dataclass
class EncodedState:
    """One state piece split into its JSON tree and the tensors it refers to, ready to be written.

    Taken for a background save, it holds no reference to live training state (every tensor is a
    copy in the snapshot's buffers), so it can be written while training goes on; taken for a
    synchronous save, it refers to the live tensors, written before the next step.
    """

    tree: Any
    tensors: dict[str, torch.Tensor]


def encode_state(name: str, state: Any, copy: CopyTensor | None = None) -> EncodedState:
    """``copy(path, tensor)``: the CPU tensor to write (default: the tensor itself, moved to the CPU if it
    is not there; snapshots copy into reused buffers).

    Anything that cannot be stored raises ``TypeError`` here, before any file is written."""
    tensors: dict[str, torch.Tensor] = {}
    return EncodedState(_encode(state, tensors, name, copy or _on_cpu), tensors)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def balanced(items: list[Any], count: int, size: Callable[[Any], int]) -> list[list[Any]]:
    """``items`` in ``count`` groups of similar total ``size``, largest first onto the lightest group;
    equal sizes keep their order, so the same items always give the same groups."""
    groups: list[list[Any]] = [[] for _ in range(count)]
    loads = [0] * count
    for item in sorted(items, key=lambda x: -size(x)):
        i = loads.index(min(loads))
        groups[i].append(item)
        loads[i] += size(item)
    return groups


def split_parts(tensors: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """The tensors of one piece in parts of similar size; the same tensors give the same parts on
    every machine (a background save writes the files a synchronous one would)."""
    count = min(MAX_PARTS, sum(_nbytes(t) for t in tensors.values()) // PART_BYTES)
    if count < 2:
        return [tensors]
    groups = balanced(sorted(tensors), count, lambda k: _nbytes(tensors[k]))
    return [{k: tensors[k] for k in group} for group in groups]


def part_name(name: str, index: int, count: int) -> str:
    return f"{name}-{index + 1:05d}-of-{count:05d}.safetensors"


def write_encoded(directory: Path, name: str, encoded: EncodedState) -> list[Path]:
    """Write one encoded piece as ``NAME.json`` (+ ``NAME.safetensors``, or its parts); returns the
    files written."""
    json_path = directory / f"{name}.json"
    doc: dict[str, Any] = {"format_version": FORMAT_VERSION, "state": encoded.tree}
    parts = split_parts(encoded.tensors) if encoded.tensors else []
    files = [f"{name}.safetensors"] if len(parts) == 1 else [part_name(name, i, len(parts)) for i in range(len(parts))]
    if len(parts) > 1:
        doc["tensor_files"] = files
    write_bytes(json_path, json.dumps(doc, allow_nan=False).encode())
    # The safetensors layout written from the tensors' memory, digested and fsynced on the way
    # (tensorfile.py): the commit reads nothing back. A full disk raises OSError (ENOSPC).
    paths = [directory / f for f in files] if parts else []
    if len(parts) == 1:
        write_tensors(paths[0], parts[0])
    elif parts:
        with ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix="chefgenius-part",
                                initializer=adopt) as pool:
            futures = [pool.submit(write_tensors, path, part) for path, part in zip(paths, parts)]
        for future in futures:
            future.result()  # the first failure, once every part has stopped
    return [json_path, *paths]


def save_state(directory: Path, name: str, state: Any) -> list[Path]:
    """Write one state piece; returns the files written."""
    return write_encoded(directory, name, encode_state(name, state))


def load_state(directory: Path, name: str, *, with_tensors: bool = True) -> Any:
    """Read one state piece written by :func:`save_state`; damaged or foreign files raise.

    ``with_tensors=False`` checks the same structure and tensor references but reads only the
    safetensors header, giving ``None`` for each tensor: validation without loading the data twice.
    """
    json_path = directory / f"{name}.json"
    if not json_path.is_file():
        raise CheckpointFormatError(f"checkpoint {directory} has no '{name}' state ({json_path.name} missing)")
    doc = read_json(json_path, MAX_STATE_JSON_BYTES)
    version = doc.get("format_version") if isinstance(doc, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointFormatError(
            f"{json_path} has checkpoint format version {version!r}; this chefgenius reads version "
            f"{FORMAT_VERSION} (use the chefgenius release that wrote it)"
        )
    if "state" not in doc:
        raise CheckpointFormatError(f"{json_path} holds no 'state' (damaged or foreign)")
    tensors: dict[str, torch.Tensor | None] = {}
    st_paths = tensor_files(directory, name, doc, json_path)
    for st_path in st_paths:
        try:
            if with_tensors:
                found: dict[str, Any] = load_file(str(st_path))
            else:
                with safe_open(str(st_path), framework="pt") as f:
                    found = dict.fromkeys(f.keys())
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointFormatError(f"{st_path} is not a valid safetensors file ({err})") from None
        twice = tensors.keys() & found.keys()
        if twice:
            raise CheckpointFormatError(f"tensor {min(twice)!r} of {json_path.name} is stored in two of its parts "
                                        f"({st_path.name} and an earlier one); the checkpoint is damaged or foreign")
        tensors.update(found)
    try:
        return _decode(doc["state"], tensors)
    except KeyError as err:
        where = ", ".join(p.name for p in st_paths) or "its files (it has no tensor file)"
        raise CheckpointFormatError(f"{json_path} refers to tensor {err} missing from {where}; "
                                    "the checkpoint is damaged") from None
    except (TypeError, ValueError, AttributeError, RecursionError):
        raise CheckpointFormatError(f"{json_path} does not have the structure of a state file "
                                    "(damaged or foreign)") from None


def tensor_files(directory: Path, name: str, doc: dict, json_path: Path) -> list[Path]:
    """The safetensors files of a piece: its parts as ``NAME.json`` lists them, or ``NAME.safetensors``."""
    listed = doc.get("tensor_files")
    if listed is None:
        single = directory / f"{name}.safetensors"
        return [single] if single.exists() else []
    # Only the names this writer gives, in order: a hostile list cannot point outside the checkpoint.
    count = len(listed) if isinstance(listed, list) else 0
    if count < 2 or listed != [part_name(name, i, count) for i in range(count)]:
        raise CheckpointFormatError(f"{json_path} lists tensor files {listed!r}, not the parts "
                                    f"'{name}-00001-of-0000N.safetensors' it should (damaged or foreign)")
    paths = [directory / f for f in listed]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise CheckpointFormatError(f"checkpoint {directory} lacks {', '.join(missing)}, part of its '{name}' "
                                    "state; the checkpoint is damaged")
    return paths
