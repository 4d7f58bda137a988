"""Imported at start-up by every Python process the fault tests launch with this folder on PYTHONPATH
(torchrun's workers too). Through the library's save hook it can

- hold every checkpoint save open for CHEFGENIUS_TEST_SAVE_PAUSE_S seconds, and
- hold the save of a step (CHEFGENIUS_TEST_HOLD_SAVE="STEP:GATE_DIR", several separated by commas) until
  the test releases it: the hook creates GATE_DIR/held when that save is written, then waits for
  GATE_DIR/release.
"""

import os

_pause = float(os.environ.get("CHEFGENIUS_TEST_SAVE_PAUSE_S") or 0)
_hold = os.environ.get("CHEFGENIUS_TEST_HOLD_SAVE")
if _pause or _hold:
    import time
    from pathlib import Path

    from chefgenius.checkpoint import store

    if _pause:
        store.SAVE_HOOKS.append(lambda directory: time.sleep(_pause))
    if _hold:
        _gates = {f"step-{int(step):07d}": Path(gate) for step, gate in
                  (item.split(":", 1) for item in _hold.split(","))}

        def _held(directory: Path) -> None:
            gate = next((g for name, g in _gates.items() if name in directory.name), None)
            if gate is None:
                return
            (gate / "held").touch()
            while not (gate / "release").exists():
                time.sleep(0.01)

        store.SAVE_HOOKS.append(_held)

# CHEFGENIUS_TEST_FAIL_RANK=R: the process of global rank R fails as it joins the process group.
if os.environ.get("CHEFGENIUS_TEST_FAIL_RANK") not in (None, "") and \
        os.environ.get("RANK") == os.environ["CHEFGENIUS_TEST_FAIL_RANK"]:
    from chefgenius.runtime import distributed

    def _fail(*args, **kwargs):
        raise RuntimeError(f"injected start-up failure of rank {os.environ['RANK']}")

    distributed.init = _fail
