"""The sweep report: learning curves with intervals, tables, paired tests, Grad-CAM (issue 4).

``build_report`` reads a sweep back from MLflow (:mod:`lungray.report.load`), computes its
tables (:mod:`.tables`, with the pure statistics of :mod:`.stats`), draws the figures
(:mod:`.figures`, :mod:`.gradcam`) and writes one self-contained HTML file (:mod:`.html`).
Importing this package is cheap: MLflow, torch and matplotlib load when a report is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

__all__ = ["build_report", "load_sweep", "report_parts"]


def build_report(
    tracking_uri: Optional[str] = None,
    experiment: Optional[str] = None,
    parent_run_id: Optional[str] = None,
    out_dir: Union[str, Path] = "report",
    gradcam: bool = True,
    **options: Any,
) -> Path:
    """Build ``<out_dir>/report.html`` for a sweep in MLflow and return its path.

    Give the MLflow experiment (its latest sweep) or the sweep's parent run id; ``options``
    are passed to :func:`lungray.report.build.build_report` (``target_accuracies``,
    ``n_boot``, ``seed``, ``device``, ``log_to_mlflow``...).
    """
    from lungray.report.build import build_report as _build

    return _build(tracking_uri, experiment, parent_run_id, out_dir, gradcam, **options)


def load_sweep(*args: Any, **kwargs: Any):
    """See :func:`lungray.report.load.load_sweep`."""
    from lungray.report.load import load_sweep as _load

    return _load(*args, **kwargs)


def report_parts(*args: Any, **kwargs: Any):
    """See :func:`lungray.report.build.report_parts`."""
    from lungray.report.build import report_parts as _parts

    return _parts(*args, **kwargs)
