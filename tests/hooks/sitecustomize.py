"""Imported at start-up by every Python process the fault tests launch with this folder on PYTHONPATH
(torchrun's workers too): holds each checkpoint save open for CHEFGENIUS_TEST_SAVE_PAUSE_S seconds
through the library's save hook, so that a test can kill a run while a save is in flight."""

import os

_pause = float(os.environ.get("CHEFGENIUS_TEST_SAVE_PAUSE_S") or 0)
if _pause:
    import time

    from chefgenius.checkpoint import store

    store.SAVE_HOOKS.append(lambda: time.sleep(_pause))
