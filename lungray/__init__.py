"""lungray: chest-imaging training-size and transfer studies on Ray, with honest statistics.

The package is a small core with registries (models, heads, freeze policies, optimizers,
augmentations, dataset adapters), one frozen config object per study, and pure functions for
metrics, splits, intervals and curve fits. Heavy dependencies (torch, timm, ray, mlflow) are
imported inside functions so that ``import lungray`` and config validation stay cheap.
"""

__version__ = "0.1.0"

from lungray.errors import LungrayError  # noqa: E402

__all__ = ["LungrayError", "__version__"]
