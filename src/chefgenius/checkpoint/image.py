"""A safetensors file held in memory exactly as it will lie on disk, for background saves.

A background save first copies the state into CPU buffers (the snapshot), then writes them. When
those buffers are laid out as the files themselves (header first, then every tensor at its offset)
in one page-aligned block per file, the writer hands that block to the disk as it is, with
``O_DIRECT``: no staging copy on cores training is using, no staging blocks in memory beside the
snapshot. The snapshot copies each tensor into its place in the image (:attr:`FileImage.views`);
the writer recognises an image by its address and layout (:func:`image_holding`) and writes any
other tensors the usual way, so a file the snapshot did not foresee is still written correctly.
Used for state on the CPU; a GPU's state is copied into pinned buffers of its own.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import torch

ALIGN = 4096  # O_DIRECT wants the memory address, the file offset and the length aligned to this

@dataclass(frozen=True)
class TensorFileLayout:
    """Where everything of one safetensors file lies: its first ``len(prefix)`` bytes (the header's length
    and the header), then each tensor at ``prefix + offsets[name]``, in ``order``."""

    order: tuple[str, ...]
    prefix: bytes
    offsets: dict[str, int]
    data_bytes: int

    @property
    def size(self) -> int:
        return len(self.prefix) + self.data_bytes


_images: weakref.WeakValueDictionary[int, FileImage] = weakref.WeakValueDictionary()
_lock = threading.Lock()


class FileImage:
    """One file's bytes in one page-aligned block of CPU memory: the header is written once, the
    tensors are refilled by every snapshot of the same layout.

    Each view has a storage of its own over the block (``torch.frombuffer``), as separately allocated
    tensors do: ``save_pretrained`` finds tied weights by storage, and views of one storage would all
    look tied to it (it would clone each)."""

    def __init__(self, layout: TensorFileLayout, dtypes: dict[str, torch.dtype],
                 shapes: dict[str, tuple[int, ...]]) -> None:
        import mmap

        import numpy as np

        self.layout = layout
        self._memory = mmap.mmap(-1, layout.size + (-layout.size % ALIGN))  # page-aligned; pages taken when touched
        self._array = np.frombuffer(self._memory, dtype=np.uint8)
        self._array[:len(layout.prefix)] = np.frombuffer(layout.prefix, dtype=np.uint8)
        base = len(layout.prefix)
        self.views: dict[str, torch.Tensor] = {}
        for name in layout.order:
            count = torch.Size(shapes[name]).numel()
            view = (torch.frombuffer(self._array, dtype=dtypes[name], count=count, offset=base + layout.offsets[name])
                    if count else torch.empty(0, dtype=dtypes[name]))
            self.views[name] = view.view(shapes[name])
        with _lock:
            _images[self.address] = self

    @property
    def address(self) -> int:
        return self._array.ctypes.data

    def bytes(self) -> memoryview:
        """The whole file, from its first byte: page-aligned, so it can go to the disk as it is."""
        return memoryview(self._array[:self.layout.size])


def image_holding(layout: TensorFileLayout, tensors: dict[str, torch.Tensor]) -> FileImage | None:
    """The image whose views ``tensors`` are, when that image has exactly ``layout``; else None."""
    placed = [(name, t) for name, t in tensors.items() if t.numel()]
    if not placed:
        return None
    name, first = placed[0]
    with _lock:
        image = _images.get(first.data_ptr() - len(layout.prefix) - layout.offsets[name])
    if image is None or image.layout != layout:
        return None
    base = image.address + len(layout.prefix)
    if any(t.data_ptr() != base + layout.offsets[n] for n, t in placed):
        return None
    return image
