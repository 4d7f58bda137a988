"""The user-facing error types, in a module that imports nothing heavy: the CLI catches them around
every command, and a launcher that only execs torchrun must not import torch and transformers (about
8 s here) just to name the exceptions it would catch. Each is re-exported by the module that raises it."""

from __future__ import annotations


class DataError(ValueError):
    """The data source itself is unusable (missing file, missing columns, nothing left)."""


class RunDirError(ValueError):
    """The output directory cannot be used as asked (exit code 2)."""


class RunLockedError(RunDirError):
    """Another process holds the run directory."""


class ResumeError(ValueError):
    """A checkpoint that cannot be resumed from as-is (missing piece, mismatch); exit code 2."""


class CheckpointFormatError(ValueError):
    """A checkpoint file that is not ours, is damaged, or was written by an incompatible version."""


class CheckpointWriteError(OSError):
    """A save failed (full disk, permissions...); earlier checkpoints are untouched."""


class PrepareWriteError(OSError):
    """The prepared dataset could not be written (full disk...); nothing partial is left behind."""


class ModelLoadError(ValueError):
    """A model or tokenizer path that cannot be used (missing, not HF format, wrong kind)."""


class GenerationError(ValueError):
    """Bad generation arguments (unknown preset, empty ingredients)."""
