"""Sweeps: the model x training size x optimizer x seed grid on Ray Tune + Ray Train, tracked in MLflow.

``run_study`` (:mod:`lungray.sweep.runner`) is the driver; ``main`` (:mod:`lungray.sweep.cli`)
is the command line of the thin scripts in ``sweeps/``; ``sync_mlflow`` (:mod:`lungray.sweep.sync`)
rebuilds the MLflow view from a Ray experiment directory. Nothing here imports Ray, MLflow or
torch at module level: they load when a sweep starts.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_study", "SweepResult", "main", "sync_mlflow"]


def __getattr__(name: str) -> Any:
    if name in ("run_study", "SweepResult"):
        from lungray.sweep import runner

        return getattr(runner, name)
    if name == "main":
        from lungray.sweep.cli import main

        return main
    if name == "sync_mlflow":
        from lungray.sweep.sync import sync_mlflow

        return sync_mlflow
    raise AttributeError(f"module 'lungray.sweep' has no attribute {name!r}")
