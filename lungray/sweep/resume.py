"""``--resume``: a sweep continues only with the grid it started with."""

from __future__ import annotations

from pathlib import Path
from typing import Union

from lungray.config import StudyConfig
from lungray.errors import ConfigError
from lungray.sweep.expdir import load_saved_config, read_sweep_state


def grid_diff(a: StudyConfig, b: StudyConfig) -> list[str]:
    """Top-level (and data.*) keys whose values differ between two configs' grid-defining parts."""
    da, db = a.to_dict(), b.to_dict()
    out = []
    for k in sorted(set(da) | set(db)):
        if k in ("output_dir", "tracking", "resources", "report"):
            continue
        if k == "data" and isinstance(da.get(k), dict) and isinstance(db.get(k), dict):
            out += [f"data.{s}" for s in sorted(set(da[k]) | set(db[k])) if da[k].get(s) != db[k].get(s)]
        elif da.get(k) != db.get(k):
            out.append(k)
    return out


def check_resume(cfg: StudyConfig, experiment_dir: Union[str, Path]) -> dict:
    """Refuse to resume a sweep whose grid changed; returns its saved state."""
    state = read_sweep_state(experiment_dir)
    if state.get("fingerprint") != cfg.fingerprint():
        diff = grid_diff(load_saved_config(experiment_dir), cfg)
        raise ConfigError(
            f"--resume {experiment_dir}: the study changed since this sweep started "
            f"(config fingerprint {state.get('fingerprint')} -> {cfg.fingerprint()}; differs in: "
            f"{', '.join(diff) or 'unknown keys'}); resume without --preset/--config/--set to use the saved "
            "config, or start a new sweep"
        )
    return state
