"""The only code that reads or writes files inside checkpoints and ``final/``.

What every reader needs is exported here; writing (checkpointer.py, final.py) is imported from its
module, so that naming a run's files does not load transformers.
"""

from chefgenius.checkpoint.format import FORMAT_VERSION, CheckpointFormatError, load_state, save_state
from chefgenius.checkpoint.reading import Checkpoint, checkpoint_problem, open_checkpoint
from chefgenius.checkpoint.state import ResumeError
from chefgenius.checkpoint.store import CheckpointInfo, list_checkpoints, verify_checkpoint
from chefgenius.errors import CheckpointWriteError

__all__ = [
    "FORMAT_VERSION", "Checkpoint", "CheckpointFormatError", "CheckpointInfo", "CheckpointWriteError",
    "ResumeError", "checkpoint_problem", "list_checkpoints", "load_state", "open_checkpoint", "save_state",
    "verify_checkpoint",
]
