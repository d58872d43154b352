"""The inside of one trial: optimizers, the training loop, checkpoints and evaluation.

``lungray.train`` stays cheap to import (config validation, :mod:`lungray.train.validate`, imports
:mod:`lungray.train.optim` and :mod:`lungray.train.tasks` for their registries), so
:func:`run_trial` is loaded from :mod:`lungray.train.loop`, and torch with it, on first use.
"""

from __future__ import annotations

from typing import Any

from lungray.train.result import TrialResult

__all__ = ["run_trial", "TrialResult", "validate_trial"]


def __getattr__(name: str) -> Any:
    if name in ("run_trial", "validate_trial"):
        from lungray.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'lungray.train' has no attribute {name!r}")
