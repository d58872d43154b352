"""Which runs of a cell count: ONE rule, used by the console summary, the MLflow parent's
``summary.csv`` and every report section (issue 19).

A run is left out of a cell's numbers only when its output is provably degenerate: not finite,
constant (the same probabilities for every evaluation image: a network whose features died, or
whose loss diverged), or collapsed (the same predicted class for every image AND scores that rank
the classes no better than chance on these images). These are facts of the predictions, not a
test: a weak but working run, whose scores rank the classes even a little, is never dropped.
The chance test this replaced (:func:`~lungray.report.stats.chance.chance_check`: "accuracy not
above the majority rate and AUC not above 0.5" at p < 0.05) flagged 39-54 % of WORKING runs of
weak recipes (accuracy 0.56-0.59 on 60-200 images): the cell mean was biased up by 0.03-0.04
and the runs left out differed between the console and the report. When every run of a cell is
degenerate, all are counted (the cell then describes what the recipe does: it collapses).
"""

from __future__ import annotations

from typing import Hashable, Optional, Sequence

import numpy as np

__all__ = ["degenerate_output", "counted_mask", "CONSTANT", "COLLAPSED", "NON_FINITE"]

CONSTANT = "constant output"
COLLAPSED = "one class for every image, scores that do not rank"
NON_FINITE = "non-finite output"


def _ranking_auc(probs: np.ndarray, y: np.ndarray) -> float:
    """Macro one-vs-rest AUC of the scores (ties count one half) over the classes present: how
    well the scores rank the classes on these images, whatever the predicted class."""
    from scipy.stats import rankdata

    k = probs.shape[1]
    classes = [1] if k == 2 else [c for c in range(k) if 0 < np.sum(y == c) < y.size]
    aucs = []
    for c in classes:
        pos = y == c
        n1, n0 = int(pos.sum()), int((~pos).sum())
        if n1 == 0 or n0 == 0:
            continue
        r = rankdata(probs[:, c])
        aucs.append((r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))
    return float(np.mean(aucs)) if aucs else float("nan")


def degenerate_output(probs: np.ndarray, y_true: Optional[np.ndarray] = None, tol: float = 1e-6) -> str:
    """Why a run's output is degenerate (``""`` when it is not).

    ``probs`` ``(N, k)``: the run's class probabilities (or scores) on the evaluation images,
    ``y_true`` their labels (class indices into the columns of ``probs``). ``"non-finite output"``: a NaN or inf anywhere; ``"constant
    output"``: every image gets the same probabilities (within ``tol``); ``"one class for every
    image, scores that do not rank"``: the predicted class never changes although the evaluation
    set holds at least two classes, and the scores' one-vs-rest AUC is at most 0.5 (a run that
    predicts one class but still ranks the images has learned something, and counts). With one
    class in ``y_true`` (or no labels) only the first two reasons apply.

    >>> y = np.array([0, 1, 0, 1])
    >>> degenerate_output(np.tile([0.6, 0.4], (4, 1)), y)
    'constant output'
    >>> degenerate_output(np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.7, 0.3]]), y)
    'one class for every image, scores that do not rank'
    >>> degenerate_output(np.array([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.7, 0.3]]), y)  # one class, ranks
    ''
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        return ""
    if not np.isfinite(p).all():
        return NON_FINITE
    if float((p.max(0) - p.min(0)).max()) <= tol:
        return CONSTANT
    if y_true is None:
        return ""
    y = np.asarray(y_true, dtype=np.int64)
    if np.unique(y).size >= 2 and np.unique(p.argmax(1)).size == 1 and not _ranking_auc(p, y) > 0.5:
        return COLLAPSED
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
