"""Imported at start-up by every Python process the fault tests launch with this folder on PYTHONPATH
(torchrun's workers too). It hands every :class:`chefgenius.training.trainer.Trainer` created in the
process a save observer (``on_save_written``, the library's hook) that can

- hold every checkpoint save open for CHEFGENIUS_TEST_SAVE_PAUSE_S seconds, and
- hold the save of a step (CHEFGENIUS_TEST_HOLD_SAVE="STEP:GATE_DIR", several separated by commas) until
  the test releases it: the hook creates GATE_DIR/held when that save is written, then waits for
  GATE_DIR/release.

The observer is given when the trainer module is first imported (an import hook), so that processes
that never train (the launcher, torchrun) do not import torch here.
"""

import os

_pause = float(os.environ.get("CHEFGENIUS_TEST_SAVE_PAUSE_S") or 0)
_hold = os.environ.get("CHEFGENIUS_TEST_HOLD_SAVE")
if _pause or _hold:
    import functools
    import importlib.abc
    import importlib.machinery
    import sys
    import time
    from pathlib import Path

    _gates = {f"step-{int(step):07d}": Path(gate) for step, gate in
              (item.split(":", 1) for item in _hold.split(","))} if _hold else {}

    def _observe(directory: Path) -> None:
        if _pause:
            time.sleep(_pause)
        gate = next((g for name, g in _gates.items() if name in directory.name), None)
        if gate is None:
            return
        (gate / "held").touch()
        while not (gate / "release").exists():
            time.sleep(0.01)

    def _give_observer(module) -> None:
        original = module.Trainer.__init__

        @functools.wraps(original)
        def init(self, *args, **kwargs):
            kwargs.setdefault("on_save_written", _observe)
            original(self, *args, **kwargs)

        module.Trainer.__init__ = init

    class _TrainerFinder(importlib.abc.MetaPathFinder):
        """Runs :func:`_give_observer` right after chefgenius.training.trainer is executed."""

        def find_spec(self, name, path, target=None):
            if name != "chefgenius.training.trainer":
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            exec_module = spec.loader.exec_module

            def exec_and_observe(module):
                exec_module(module)
                _give_observer(module)

            spec.loader.exec_module = exec_and_observe
            return spec

    sys.meta_path.insert(0, _TrainerFinder())

# CHEFGENIUS_TEST_FAIL_RANK=R: the process of global rank R fails as it joins the process group.
if os.environ.get("CHEFGENIUS_TEST_FAIL_RANK") not in (None, "") and \
        os.environ.get("RANK") == os.environ["CHEFGENIUS_TEST_FAIL_RANK"]:
    from chefgenius.runtime import distributed

    def _fail(*args, **kwargs):
        raise RuntimeError(f"injected start-up failure of rank {os.environ['RANK']}")

    distributed.init = _fail
