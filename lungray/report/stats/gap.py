"""The gap between two evaluation sets scored by the same runs: internal minus external (issue 24).

Roberts et al. (2021) and DeGrave et al. (2021, Nat Mach Intell) read a model's shortcut off
the drop from its internal to its external test set. With several seeds and two finite test
sets, that drop has three sources of noise: which run was trained (paired here: every run is
scored on both sets, so the run's own quality cancels in part), which images the internal set
happened to hold, and which images the external set held (independent of each other). The
interval says whether the drop is larger than all three.

Also used for the "as published" inflation (two protocols, each with its own test set):
:func:`set_gap` with ``paired_runs=False``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

__all__ = ["GapCI", "set_gap"]


@dataclass(frozen=True)
class GapCI:
    """``estimate`` = mean score on set A - mean on set B, with a ``level`` interval and a two-sided
    ``p`` for "no gap"; ``var_runs``/``var_a``/``var_b`` are the variance components, ``df`` the
    Satterthwaite degrees of freedom (inf when the run term is absent or zero)."""

    estimate: float
    low: float
    high: float
    p: float
    n_runs_a: int
    n_runs_b: int
    n_a: int
    n_b: int
    var_runs: float
    var_a: float
    var_b: float
    df: float
    level: float = 0.95


def _unit_var(xbar: np.ndarray, codes: Optional[np.ndarray]) -> tuple[float, int]:
    """Variance of the mean of ``xbar`` (one score per image) over resampled units: images, or
    patients (``codes``) whose images move together (cluster-robust, ``G/(G-1)`` corrected).
    ``(var, units)``; a set of one unit has no variance estimate (nan)."""
    n = len(xbar)
    dev = xbar - xbar.mean()
    if codes is not None:
        dev = np.bincount(np.asarray(codes, dtype=np.int64), weights=dev)
    g = len(dev)
    if g < 2:
        return math.nan, g
    return float(g / (g - 1) * np.sum(dev ** 2) / n ** 2), g


def set_gap(
    a: np.ndarray,
    b: np.ndarray,
    *,
    paired_runs: bool = True,
    level: float = 0.95,
    codes_a: Optional[Sequence[int]] = None,
    codes_b: Optional[Sequence[int]] = None,
    borrow_run_variance: bool = True,
) -> GapCI:
    """Gap ``mean(a) - mean(b)`` between per-image scores ``a`` (runs, images of set A) and ``b``
    (runs, images of set B), e.g. 1/0 correct, with an interval.

    ``paired_runs``: row ``s`` of ``a`` and of ``b`` are the same trained run (internal vs
    external of one trial): the run term is the variance of the per-run gaps over runs. Else the
    runs of A and B are independent (two protocols): the run term is the sum of each side's
    variance of its run means over its runs; a side with ONE run (the as-published arm: one seed,
    as the papers ran) has no run variance of its own and, with ``borrow_run_variance``, borrows
    the other side's per-run variance (the same recipe and budget, only the protocol differs), so
    the single run's own seed luck is in the interval rather than silently left out.

    Images: each set's per-image scores averaged over its runs, resampled by image (or by
    ``codes``: patient codes ``0..G-1``, :func:`lungray.report.stats.unit_codes`), independently
    in the two sets. Variance = run term + image term A + image term B (the run-by-image
    interaction is in both the run and the image terms: slightly conservative); the interval is
    Student-t with Satterthwaite's degrees of freedom (normal when only image terms are known).

    Hand case (2 runs; set A per-image means 1, 1, .5, .5; set B .5, .5; every run's gap .25):
    run term 0, image term A = 4/3 * .25 / 16 = 1/48, B 0; df = 3; t(.975, 3) = 3.182:

    >>> g = set_gap(np.array([[1, 1, 1, 0], [1, 1, 0, 1]]), np.array([[1, 0], [0, 1]]))
    >>> round(g.estimate, 3), round(g.low, 3), round(g.high, 3), g.df
    (0.25, -0.209, 0.709, 3.0)
    """
    from scipy import stats as st

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"scores must be (runs, images), got shapes {a.shape} and {b.shape}")
    if paired_runs and a.shape[0] != b.shape[0]:
        raise ValueError(f"paired runs: both sets need the same runs, got {a.shape[0]} and {b.shape[0]}")
    sa, sb = a.shape[0], b.shape[0]
    if sa == 0 or sb == 0 or a.shape[1] == 0 or b.shape[1] == 0:
        return GapCI(math.nan, math.nan, math.nan, math.nan, sa, sb, a.shape[1], b.shape[1], math.nan, math.nan, math.nan, math.nan, level)
    ma, mb = a.mean(1), b.mean(1)
    est = float(ma.mean() - mb.mean())
    terms: list[tuple[float, float]] = []  # (variance, its degrees of freedom)
    if paired_runs:
        v_runs = float(np.var(ma - mb, ddof=1) / sa) if sa > 1 else math.nan
        if sa > 1:
            terms.append((v_runs, sa - 1))
    else:
        parts = [(float(np.var(m, ddof=1) / len(m)), len(m) - 1) for m in (ma, mb) if len(m) > 1]
        if borrow_run_variance and len(parts) == 1 and min(sa, sb) == 1:
            other = ma if sa > 1 else mb
            parts.append((float(np.var(other, ddof=1)), len(other) - 1))
        v_runs = sum(v for v, _ in parts) if parts else math.nan
        terms += parts
    ca = None if codes_a is None else np.asarray(codes_a, dtype=np.int64)
    cb = None if codes_b is None else np.asarray(codes_b, dtype=np.int64)
    va, ga = _unit_var(a.mean(0), ca)
    vb, gb = _unit_var(b.mean(0), cb)
    for v, g in ((va, ga), (vb, gb)):
        if math.isfinite(v):
            terms.append((v, g - 1))
    var = sum(v for v, _ in terms)
    if not terms or not math.isfinite(var) or (not math.isfinite(va) and not math.isfinite(vb)):
        return GapCI(est, math.nan, math.nan, math.nan, sa, sb, a.shape[1], b.shape[1], v_runs, va, vb, math.nan, level)
    if var <= 0:
        p = 1.0 if est == 0 else 0.0
        return GapCI(est, est, est, p, sa, sb, a.shape[1], b.shape[1], v_runs, va, vb, math.inf, level)
    denom = sum(v ** 2 / d for v, d in terms if d > 0 and v > 0)
    df = var ** 2 / denom if denom > 0 else math.inf
    se = math.sqrt(var)
    q = float(st.t.ppf(0.5 + level / 2, df)) if math.isfinite(df) else float(st.norm.ppf(0.5 + level / 2))
    p = float(2 * (st.t.sf(abs(est) / se, df) if math.isfinite(df) else st.norm.sf(abs(est) / se)))
    return GapCI(est, est - q * se, est + q * se, p, sa, sb, a.shape[1], b.shape[1], v_runs, va, vb, float(df), level)
