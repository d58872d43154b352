"""A study, resolved and validated: what every entry point (sweep CLI, tests, notebooks) loads.

:func:`load_study` layers a preset, an optional YAML file and ``a.b=value`` overrides
(:func:`lungray.config.resolve_study`: unknown keys and wrong types refused) and then checks every
registry name and range that needs no data (:func:`lungray.train.validate.validate_study`), so a
typo fails in one line before any data is read or any GPU is touched.

It sits above :mod:`lungray.train` in the layers (``pyproject.toml``, ``[tool.importlinter]``):
the validation reads the data, model, task and optimizer registries, and those import
:mod:`lungray.config` for its dataclasses, so loading and validating cannot both live in config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from lungray.config import StudyConfig, resolve_study
from lungray.train.validate import validate_study

__all__ = ["load_study", "validate_study"]


def load_study(
    preset: str = "default",
    yaml_path: Optional[str | Path] = None,
    overrides: Sequence[str] = (),
    validate: bool = True,
    require_data: bool = True,
) -> StudyConfig:
    """Resolve preset -> YAML -> overrides into a validated :class:`~lungray.config.StudyConfig`.

    ``validate=False`` returns the resolved tree unchecked (tests that build a deliberately
    invalid study); ``require_data=False`` accepts a missing ``data.path`` (``--dry-run`` shows a
    study's grid before the dataset is at hand).
    """
    cfg = resolve_study(preset, yaml_path, overrides)
    if validate:
        validate_study(cfg, require_data=require_data)
    return cfg
