"""The model's Hugging Face weights written by our tensor writer, inside ``save_pretrained``.

``save_pretrained`` decides what a Hugging Face model directory holds (which tied weights are
dropped, renamed keys, shards, adapters, config and generation config), and that is kept: only its
last step, ``safetensors.torch.save_file``, is replaced while a checkpoint writes the model. That
function serialises the whole file in memory and holds the GIL while it does (the other pieces of
the checkpoint, written side by side, wait for it), writes through the page cache, and hands back no
digest, so the file had to be read again for the manifest. :func:`tensorfile.write_tensors` writes
the same bytes (tested against ``save_file``) from the tensors' memory, past the page cache,
digested and fsynced on the way. Outside a checkpoint's model write, and for anything that writer
cannot take, the original function runs unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from chefgenius.checkpoint.tensorfile import _DTYPES, write_tensors

_local = threading.local()
_install_lock = threading.Lock()


def _dispatching(original: Any) -> Any:
    def save_file(tensors: dict[str, torch.Tensor], filename: Any, metadata: dict[str, str] | None = None) -> None:
        if not getattr(_local, "active", False) or any(t.dtype not in _DTYPES for t in tensors.values()):
            return original(tensors, filename, metadata=metadata)
        cpu = {k: t.detach().to("cpu").contiguous() for k, t in tensors.items()}
        write_tensors(Path(filename), cpu, metadata)
        return None

    save_file.__wrapped__ = original  # type: ignore[attr-defined]
    save_file._chefgenius = True  # type: ignore[attr-defined]
    return save_file


def _install() -> bool:
    """Put the dispatching ``save_file`` where ``save_pretrained`` looks it up; False where it cannot."""
    try:
        from transformers import modeling_utils
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    with _install_lock:
        current = getattr(modeling_utils, "safe_save_file", None)
        if current is None:
            return False  # a transformers release that writes differently: its own writer runs
        if not getattr(current, "_chefgenius", False):
            modeling_utils.safe_save_file = _dispatching(current)
    return True


@contextmanager
def direct_weights() -> Iterator[bool]:
    """Within the block, this thread's ``save_pretrained`` writes its safetensors files with
    :func:`write_tensors` (their digests remembered for the commit); yields whether it does."""
    installed = _install()
    previous = getattr(_local, "active", False)
    _local.active = installed
    try:
        yield installed
    finally:
        _local.active = previous
