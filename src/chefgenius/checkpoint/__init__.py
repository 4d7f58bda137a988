"""The only code that reads or writes files inside checkpoints and ``final/``."""

from chefgenius.checkpoint.format import FORMAT_VERSION, CheckpointFormatError, load_state, save_state
from chefgenius.checkpoint.manager import (
    Checkpoint,
    CheckpointManager,
    checkpoint_problem,
    open_checkpoint,
    write_final,
    write_hf_directory,
)
from chefgenius.checkpoint.state import ResumeError
from chefgenius.checkpoint.store import (
    CheckpointInfo,
    CheckpointWriteError,
    commit_checkpoint,
    commit_directory,
    list_checkpoints,
    verify_checkpoint,
)

__all__ = [
    "FORMAT_VERSION", "Checkpoint", "CheckpointFormatError", "CheckpointInfo", "CheckpointManager",
    "CheckpointWriteError", "ResumeError", "checkpoint_problem", "commit_checkpoint", "commit_directory",
    "list_checkpoints", "load_state", "open_checkpoint", "save_state", "verify_checkpoint", "write_final",
    "write_hf_directory",
]
