"""chefgenius: recipe-generation training that resumes bit-exactly after any stop.

The Python API (README "Python API")::

    from chefgenius import Trainer, load_config, load_generator

    cfg = load_config("configs/default.yaml", ["training.num_epochs=3"])
    result = Trainer(cfg, "runs/demo").fit()          # resumes from the newest checkpoint, if any
    recipe = load_generator(run="runs/demo").generate("chicken, rice, onion")[0]

Names are imported on first use, so that ``import chefgenius`` (and the CLI's start, which
hands over to torchrun before anything heavy is needed) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "chefgenius.config",
    "ConfigError": "chefgenius.config",
    "load_config": "chefgenius.config",
    "build_config": "chefgenius.config",
    "Trainer": "chefgenius.training.trainer",
    "FitResult": "chefgenius.training.trainer",
    "Generator": "chefgenius.generation.loading",
    "load_generator": "chefgenius.generation.loading",
    "GenerationSettings": "chefgenius.generation.decode",
    "parse_recipe": "chefgenius.data.recipe_format",
    "render_recipe": "chefgenius.data.recipe_format",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'chefgenius' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
