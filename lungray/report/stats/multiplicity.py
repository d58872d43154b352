"""Corrections over the report's family of comparisons: Holm (family-wise error) and
Benjamini-Hochberg (false-discovery rate).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["holm", "benjamini_hochberg"]


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control under ANY dependence;
    the comparisons of one report share models and evaluation images, so they are
    dependent). NaN stays NaN and is not counted in the family.

    >>> holm([0.01, 0.04, 0.03]).round(3).tolist()
    [0.03, 0.06, 0.06]
    """
    p, order = _finite_order(pvalues)
    out = np.full(p.shape, np.nan)
    m = order.size
    if m:
        out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


def _finite_order(pvalues: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The p-values as floats and the indices of the finite ones, smallest p first (ties in
    input order): the family a step-wise adjustment walks through."""
    p = np.asarray(pvalues, dtype=np.float64)
    ok = np.flatnonzero(np.isfinite(p))
    return p, ok[np.argsort(p[ok], kind="stable")]


def benjamini_hochberg(pvalues: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values: false discovery rate control for
    independent or positively dependent tests). NaN stays NaN and is not counted.

    >>> benjamini_hochberg([0.01, 0.04, 0.03]).round(3).tolist()
    [0.03, 0.04, 0.04]
    """
    p, order = _finite_order(pvalues)
    out = np.full(p.shape, np.nan)
    m = order.size
    if m:
        adj = p[order] * m / np.arange(1, m + 1)
        out[order] = np.minimum(1.0, np.minimum.accumulate(adj[::-1])[::-1])
    return out
