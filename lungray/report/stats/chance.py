"""Runs indistinguishable from chance: is one training run's evaluation better than a constant guess?

For information only (``runs.csv``: ``chance_p_accuracy``, ``chance_p_auc``). It no longer
decides which runs count (:mod:`lungray.report.stats.degenerate` does): on a small evaluation
set a weak but working run is often "not distinguishable from chance", and leaving such runs
out biased weak cells up by 0.03-0.04 (issue 19).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["ChanceCheck", "chance_check"]


@dataclass(frozen=True)
class ChanceCheck:
    """Is one run's evaluation distinguishable from a model that learned nothing?

    ``p_accuracy``: one-sided exact binomial test of accuracy > the majority-class rate (what
    always predicting the commonest class scores); ``p_auc``: one-sided Mann-Whitney test of
    AUC > 0.5 (for more than two classes, the smallest one-vs-rest p-value times the number of
    classes, Bonferroni). ``stuck`` when NEITHER is below ``alpha``: the run's accuracy is not
    above what a constant prediction gets and its scores do not rank the classes.
    """

    stuck: bool
    accuracy: float
    majority_rate: float
    p_accuracy: float
    p_auc: float
    alpha: float = 0.05


def chance_check(y_true: np.ndarray, probs: np.ndarray, alpha: float = 0.05) -> ChanceCheck:
    """Test one run against chance (see :class:`ChanceCheck`).

    A collapsed network (a constant output, the usual "stuck" failure) scores exactly the
    majority rate and AUC 0.5, and is caught with any evaluation set. A weak but working model
    on a small evaluation set is often flagged too: the flag says "not distinguishable from
    chance at this n", which is why it leaves no run out of a cell.
    """
    from scipy import stats as st

    y = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(probs, dtype=np.float64)
    n, k = p.shape
    if n == 0:
        return ChanceCheck(False, math.nan, math.nan, math.nan, math.nan, alpha)
    acc = float(np.mean(p.argmax(1) == y))
    maj = float(np.bincount(y, minlength=k).max() / n)
    p_acc = float(st.binom.sf(round(acc * n) - 1, n, maj))
    classes = [1] if k == 2 else list(range(k))
    ps = []
    for c in classes:
        pos = y == c
        if pos.all() or not pos.any():
            continue
        ps.append(float(st.mannwhitneyu(p[pos, c], p[~pos, c], alternative="greater", method="asymptotic").pvalue))
    p_auc = min(1.0, min(ps) * len(ps)) if ps else 1.0
    return ChanceCheck(bool(p_acc >= alpha and p_auc >= alpha), acc, maj, p_acc, p_auc, alpha)
