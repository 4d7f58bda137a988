"""Safetensors files written straight from tensor memory, digested and fsynced on the way out.

``safetensors.torch.save_file`` cannot hand back a digest of what it wrote, so a manifest had to
read every file again. This writer produces the same bytes as ``save_file`` (same header, same
tensor order, same padding: tested byte for byte), feeds each block to the manifest's digest as it
goes to the file, and fsyncs the file before returning, so the commit neither re-reads nor
re-syncs it. The file is written beside its name and renamed into place, so tensors mapped from
an older file of that name stay valid. Tensors are written from their own memory (no serialised copy
of the state), past the page cache where the filesystem allows (``O_DIRECT``: :class:`fileio.DirectFile`);
a background save's tensors already lie in memory as the file will (:mod:`image`) and go to the disk as they are.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import torch

from chefgenius.checkpoint.image import TensorFileLayout, image_holding
from chefgenius.durable.files import BLOCK, DIGEST, new_digest, remember_digest, replace_durably

# safetensors' dtype names, in the order its writer sorts by (largest first, then by name).
_DTYPES: dict[torch.dtype, str] = {
    torch.uint64: "U64", torch.int64: "I64", torch.float64: "F64", torch.float32: "F32", torch.uint32: "U32",
    torch.int32: "I32", torch.bfloat16: "BF16", torch.float16: "F16", torch.uint16: "U16", torch.int16: "I16",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
_RANK = {dtype: i for i, dtype in enumerate(_DTYPES)}


def _raw(tensor: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, without copying them (little-endian, as safetensors stores)."""
    flat = tensor.reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy()) if flat.dtype != torch.uint8 else memoryview(flat.numpy())


def file_layout(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> TensorFileLayout:
    """The layout ``save_file`` gives these tensors (same header, order and padding); raises for a
    tensor it cannot store."""
    for name, t in tensors.items():
        if t.dtype not in _DTYPES:
            raise TypeError(f"tensor {name} has dtype {t.dtype}, which safetensors cannot store")
    order = tuple(sorted(tensors, key=lambda k: (_RANK[tensors[k].dtype], k)))
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offsets, offset = {}, 0
    for name in order:
        t = tensors[name]
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offsets[name] = offset
        offset += size
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * ((8 - len(head) % 8) % 8)
    return TensorFileLayout(order, struct.pack("<Q", len(head)) + head, offsets, offset)


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> dict:
    """Write ``tensors`` (contiguous, on the CPU) as a safetensors file; returns its manifest entry
    (size and digest), which is also remembered for the commit (:func:`fileio.recall_digest`).

    Tensors that are the views of a snapshot's :class:`image.FileImage` with this very layout are
    written as the one page-aligned block of memory they already form: straight from it to the
    disk, no staging copy."""
    for name, t in tensors.items():
        if t.device.type != "cpu" or not t.is_contiguous():
            raise ValueError(f"tensor {name} must be contiguous and on the CPU to be written")
    layout = file_layout(tensors, metadata)
    image = image_holding(layout, tensors)
    digest = new_digest()

    def chunks() -> Iterator[memoryview]:
        if image is not None:
            yield image.bytes()
            return
        yield memoryview(layout.prefix)
        for name in layout.order:
            yield _raw(tensors[name])

    def write(f) -> None:  # noqa: ANN001
        for raw in chunks():
            for start in range(0, len(raw), BLOCK):
                block = raw[start:start + BLOCK]
                f.write(block)
                digest.update(block)

    # Beside and renamed over the target: tensors loaded from the file being replaced may be
    # memory-mapped views of it (safetensors maps), and truncating it under them would crash the reader.
    replace_durably(Path(path), write, direct=True)
    entry = {"size": layout.size, DIGEST: digest.hexdigest()}
    remember_digest(Path(path), entry)
    return entry
