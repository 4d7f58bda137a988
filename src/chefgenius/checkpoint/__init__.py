"""The only code that reads or writes checkpoints."""

from .format import FORMAT_VERSION, CheckpointFormatError, load_state, save_state
from .state import ResumeError, load_training_checkpoint, read_meta, save_training_checkpoint
from .store import (
    CheckpointInfo,
    CheckpointWriteError,
    apply_retention,
    checkpoint_dir,
    commit_directory,
    find_resumable,
    list_checkpoints,
    remove_temporaries,
    verify_checkpoint,
)

__all__ = [
    "FORMAT_VERSION", "CheckpointFormatError", "CheckpointInfo", "CheckpointWriteError", "ResumeError",
    "apply_retention", "checkpoint_dir", "commit_directory", "find_resumable", "list_checkpoints", "load_state",
    "load_training_checkpoint", "read_meta", "remove_temporaries", "save_state", "save_training_checkpoint",
    "verify_checkpoint",
]
