"""Which runs of a cell count: ONE rule, used by the console summary, the MLflow parent's
``summary.csv`` and every report section (issue 19).

A run is left out of a cell's numbers only when its output is provably degenerate: it predicts
the same class for every evaluation image (a constant output is the usual case: a network
whose features died, or whose loss diverged), or its output is not finite. That is a fact of
the predictions, not a test: a weak but working run is never dropped. The chance test this
replaced (:func:`~lungray.report.stats.chance.chance_check`: "accuracy not above the majority
rate and AUC not above 0.5") flagged 39-54 % of WORKING runs of weak recipes (accuracy
0.56-0.59 on 60-200 images): the cell mean was biased up by 0.03-0.04 and the runs left out
differed between the console and the report. When every run of a cell is degenerate, all are
counted (the cell then describes what the recipe does: it collapses).
"""

from __future__ import annotations

from typing import Hashable, Optional, Sequence

import numpy as np

__all__ = ["degenerate_output", "counted_mask", "CONSTANT", "ONE_CLASS", "NON_FINITE"]

CONSTANT = "constant output"
ONE_CLASS = "one class for every image"
NON_FINITE = "non-finite output"


def degenerate_output(probs: np.ndarray, y_true: Optional[np.ndarray] = None, tol: float = 1e-6) -> str:
    """Why a run's output is degenerate (``""`` when it is not).

    ``probs`` ``(N, k)``: the run's class probabilities (or scores) on the evaluation images,
    ``y_true`` their labels. ``"non-finite output"``: a NaN or inf anywhere; ``"constant
    output"``: every image gets the same probabilities (within ``tol``); ``"one class for every
    image"``: the predicted class never changes although the evaluation set holds at least two
    classes. With one class in ``y_true`` (or no labels) a single predicted class is not
    evidence of anything, and only the first two reasons apply.

    >>> degenerate_output(np.tile([0.6, 0.4], (4, 1)), np.array([0, 1, 0, 1]))
    'constant output'
    >>> degenerate_output(np.array([[0.9, 0.1], [0.6, 0.4]]), np.array([0, 1]))
    'one class for every image'
    >>> degenerate_output(np.array([[0.9, 0.1], [0.4, 0.6]]), np.array([0, 1]))
    ''
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        return ""
    if not np.isfinite(p).all():
        return NON_FINITE
    if float((p.max(0) - p.min(0)).max()) <= tol:
        return CONSTANT
    if y_true is not None and np.unique(np.asarray(y_true)).size >= 2 and np.unique(p.argmax(1)).size == 1:
        return ONE_CLASS
    return ""


def counted_mask(cells: Sequence[Hashable], degenerate: Sequence) -> np.ndarray:
    """Which runs count (True) in the numbers of their cell.

    ``cells``: one key per run (e.g. ``(model, optimizer, train_size)``); ``degenerate``: per
    run, a reason from :func:`degenerate_output` (or a bool; ``""``/False/None/NaN: working).
    A run counts unless it is degenerate and its cell has at least one working run.
    """
    flags = np.array([_is_flag(v) for v in degenerate], dtype=bool)
    keys = list(cells)
    if len(keys) != flags.size:
        raise ValueError(f"{len(keys)} cells for {flags.size} runs")
    working: dict = {}
    for k, f in zip(keys, flags):
        working[k] = working.get(k, False) or not f
    return np.array([(not f) or not working[k] for k, f in zip(keys, flags)], dtype=bool)


def _is_flag(v) -> bool:
    if v is None:
        return False
    if isinstance(v, float) and v != v:
        return False
    if isinstance(v, str):
        return v.strip() != ""
    try:
        return bool(v)
    except (TypeError, ValueError):  # pandas.NA
        return False
