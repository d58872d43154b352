"""Learning-curve fits: ``error(n) = a * n**-b + c`` and the training size it predicts for a target.

* :func:`fit_power_law`, :func:`fit_power_law_batch` - least squares with the exponent on a grid;
* :func:`bootstrap_power_law` - intervals over runs and evaluation images (or patients; none
  from one run per size); :func:`size_for_target`, :func:`target_where` - the size needed,
  whether it is an extrapolation, and a verdict PER TARGET; :func:`bound_flags` - parameters
  stuck on a bound (the floor's lower bound is a note, :data:`FLOOR_AT_ZERO`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from lungray.report.stats.intervals import CI, unit_codes

__all__ = ["power_law", "PowerLawFit", "fit_power_law", "fit_power_law_batch", "bound_flags", "target_where", "size_for_target",
           "PowerLawBootstrap", "quantiles_with_inf", "bootstrap_power_law", "B_MIN", "B_MAX", "FLOOR_AT_ZERO"]


def power_law(n: np.ndarray | float, a: float, b: float, c: float) -> np.ndarray | float:
    """``a * n**-b + c``: error falls as a power of the training size towards a floor ``c``."""
    return a * np.power(np.asarray(n, dtype=np.float64), -b) + c


@dataclass(frozen=True)
class PowerLawFit:
    """Parameters of ``error(n) = a * n**-b + c`` and how well they describe the points."""

    a: float
    b: float
    c: float
    r2: float  # coefficient of determination on the points that were fitted
    rmse: float
    n_points: int
    n_sizes: int
    ok: bool = True
    message: str = ""

    def predict(self, n: np.ndarray | float) -> np.ndarray | float:
        return power_law(n, self.a, self.b, self.c)


def _failed_fit(n_points: int, n_sizes: int, message: str) -> PowerLawFit:
    return PowerLawFit(math.nan, math.nan, math.nan, math.nan, math.nan, n_points, n_sizes, False, message)


#: The exponent's range: 0 < b <= 3. Learning curves in the literature have b in 0.1-1
#: (Hestness et al. 2017, "Deep learning scaling is predictable, empirically"); 3 is a bound
#: no real curve reaches, so a fit that ends there is flagged.
B_MIN, B_MAX = 0.005, 3.0
_B_GRID = np.concatenate([np.geomspace(B_MIN, 0.1, 24, endpoint=False), np.linspace(0.1, B_MAX, 146)])


def _ls_ac(x: np.ndarray, e: np.ndarray):
    """Least squares of ``e ~ a * x + c`` under ``a >= 0, 0 <= c <= 1``, batched.

    ``x`` (..., P) and ``e`` (..., P) broadcast; returns ``a, c, sse`` of the broadcast shape
    without P. A convex quadratic on a box has its minimum inside or on an edge, and on each
    edge at the clipped 1-D optimum, so the best of the four candidates is the exact optimum.
    """
    p = x.shape[-1]
    sx, sxx = x.sum(-1), (x * x).sum(-1)
    se, see, sxe = e.sum(-1), (e * e).sum(-1), (x * e).sum(-1)
    sx, sxx, se, see, sxe = np.broadcast_arrays(sx, sxx, se, see, sxe)

    def sse(a, c):
        return see - 2 * a * sxe - 2 * c * se + a * a * sxx + 2 * a * c * sx + p * c * c

    with np.errstate(invalid="ignore", divide="ignore"):
        vx = sxx - sx * sx / p
        au = (sxe - sx * se / p) / vx
        cu = (se - au * sx) / p
        a0 = np.maximum(0.0, sxe / sxx)  # edge c = 0
        a1 = np.maximum(0.0, (sxe - sx) / sxx)  # edge c = 1
    c2 = np.clip(se / p, 0.0, 1.0)  # edge a = 0
    cands = [
        (au, cu, np.where((au >= 0) & (cu >= 0) & (cu <= 1) & np.isfinite(au), sse(au, cu), np.inf)),
        (a0, np.zeros_like(a0), sse(a0, 0.0)),
        (a1, np.ones_like(a1), sse(a1, 1.0)),
        (np.zeros_like(c2), c2, sse(0.0, c2)),
    ]
    a, c, best = cands[0]
    for a_, c_, s_ in cands[1:]:
        better = s_ < best
        a, c, best = np.where(better, a_, a), np.where(better, c_, c), np.where(better, s_, best)
    return a, c, best


def fit_power_law_batch(sizes: np.ndarray, errors: np.ndarray, iters: int = 60):
    """Least-squares ``error(n) = a * n**-b + c`` for many data sets at once.

    ``sizes`` (P,), ``errors`` (B, P): one fit per row. For a fixed ``b`` the model is linear
    in ``a`` and ``c`` (solved exactly under the bounds by :func:`_ls_ac`), so the residual sum
    of squares is profiled over a grid of ``b`` and refined by golden-section search around the
    best grid point. Deterministic, global over the grid (no starting point to get wrong, unlike
    a local optimiser), and vectorised: a thousand bootstrap refits cost milliseconds.
    Returns ``a, b, c, sse`` arrays of shape (B,).
    """
    n = np.asarray(sizes, dtype=np.float64)
    e = np.atleast_2d(np.asarray(errors, dtype=np.float64))
    xg = n[None, :] ** -_B_GRID[:, None]  # (G, P)
    _, _, sse = _ls_ac(xg[None, :, :], e[:, None, :])  # (B, G)
    k = np.argmin(sse, axis=1)
    lo = _B_GRID[np.maximum(k - 1, 0)]
    hi = _B_GRID[np.minimum(k + 1, _B_GRID.size - 1)]
    g = (math.sqrt(5) - 1) / 2

    def f(b):
        return _ls_ac(n[None, :] ** -b[:, None], e)[2]

    x1, x2 = hi - g * (hi - lo), lo + g * (hi - lo)
    f1, f2 = f(x1), f(x2)
    for _ in range(iters):
        left = f1 <= f2  # minimum in [lo, x2]
        hi = np.where(left, x2, hi)
        lo = np.where(left, lo, x1)
        x2n = np.where(left, x1, lo + g * (hi - lo))
        x1n = np.where(left, hi - g * (hi - lo), x2)
        f1n = np.where(left, np.nan, f2)  # the surviving interior point keeps its value
        f2n = np.where(left, f1, np.nan)
        x1, x2 = x1n, x2n
        f1 = np.where(left, f(x1), f1n)
        f2 = np.where(left, f2n, f(x2))
    b = np.where(f1 <= f2, x1, x2)
    kbest = sse[np.arange(sse.shape[0]), k]
    fb = np.minimum(f1, f2)
    b = np.where(fb <= kbest, b, _B_GRID[k])
    a, c, ss = _ls_ac(n[None, :] ** -b[:, None], e)
    return a, b, c, ss


def fit_power_law(sizes: Sequence[float], errors: Sequence[float]) -> PowerLawFit:
    """Least-squares fit of ``error(n) = a * n**-b + c`` (:func:`fit_power_law_batch`).

    All points are fitted (every seed at every size), so sizes with more seeds weigh more.
    Bounds keep the fit physical: ``a >= 0``, ``0 < b <= 3``, ``0 <= c <= 1`` for an error
    rate; :func:`bound_flags` says when a parameter ends on a bound. Three parameters need at
    least three distinct sizes; with fewer the result has ``ok=False`` and a message instead of
    raising, so a report of a 2-size smoke sweep still renders.
    """
    n = np.asarray(sizes, dtype=np.float64).ravel()
    e = np.asarray(errors, dtype=np.float64).ravel()
    keep = np.isfinite(n) & np.isfinite(e) & (n > 0)
    n, e = n[keep], e[keep]
    n_sizes = int(np.unique(n).size)
    if n_sizes < 3:
        return _failed_fit(int(n.size), n_sizes, f"needs at least 3 training sizes for 3 parameters, got {n_sizes}")
    a, b, c, ss = (float(v[0]) for v in fit_power_law_batch(n, e[None, :]))
    ss_tot = float(np.sum((e - e.mean()) ** 2))
    r2 = 1.0 - ss / ss_tot if ss_tot > 0 else (1.0 if ss <= 1e-30 else 0.0)
    return PowerLawFit(a, b, c, r2, math.sqrt(max(ss, 0.0) / n.size), int(n.size), n_sizes)


#: The note (not a verdict) for a floor ``c`` that ended on its lower bound 0.
FLOOR_AT_ZERO = ("floor c at its lower bound 0: the measured sizes show no floor (the curve has not flattened "
                 "yet); sizes for targets beyond the largest size measured are then optimistic")


def bound_flags(a: float, b: float, c: float) -> list[str]:
    """Plain-language flags for fitted parameters that ended on a bound of the fit.

    A floor ``c`` pinned at 0 is NOT among them (:data:`FLOOR_AT_ZERO` is a note): the points
    give no evidence of a floor because the curve has not flattened within the sizes measured,
    which is the usual state of a learning curve and says nothing against the fit there. With
    a true floor of 0.06 and sizes 50-1,000 it happened in about a third of simulated sweeps,
    each of which the report called UNRELIABLE (issue 19); it matters only for targets beyond
    the largest size, whose rows say so.
    """
    out = []
    if np.isfinite(c) and c >= 1 - 1e-9:
        out.append("floor c at its upper bound 1")
    if np.isfinite(b) and b >= B_MAX - 1e-6:
        out.append(f"exponent b at its upper bound {B_MAX:g}")
    if np.isfinite(b) and b <= B_MIN + 1e-9:
        out.append("exponent b at its lower bound (a flat curve)")
    if np.isfinite(a) and a <= 1e-12:
        out.append("amplitude a = 0 (a flat curve: no learning with size)")
    return out


def target_where(estimate: float, low: float, high: float, n_min: float, n_max: float) -> str:
    """Where a predicted training size lies relative to the sizes measured, in words."""
    if estimate is None or (isinstance(estimate, float) and math.isnan(estimate)):
        return "no fit"
    if math.isinf(estimate):
        return "unreachable: at or below the fitted floor"
    if estimate > n_max:
        return f"extrapolated beyond {n_max:,.0f} images (the largest size measured)"
    if estimate < n_min:
        return f"extrapolated below {n_min:,.0f} images (the smallest size measured)"
    out = f"within the measured sizes ({n_min:,.0f}-{n_max:,.0f})"
    if np.isfinite(high) and high > n_max or (isinstance(high, float) and math.isinf(high)):
        out += f"; the upper limit is extrapolated beyond {n_max:,.0f}"
    return out


def size_for_target(a: float, b: float, c: float, target_error: float) -> float:
    """Training size at which ``a * n**-b + c`` reaches ``target_error``.

    ``n = (a / (target_error - c)) ** (1 / b)``. ``inf`` when the target is at or below the
    fitted floor ``c`` (more data of this kind never gets there) or the curve is flat (``b = 0``
    or ``a = 0`` with the target under ``c``); NaN for NaN parameters.

    >>> size_for_target(2.0, 0.5, 0.05, 0.15)
    400.0
    """
    if not all(np.isfinite([a, b, c, target_error])):
        return math.nan
    gap = target_error - c
    if gap <= 0 or b <= 0:
        return math.inf
    if a <= 0:
        return 1.0  # flat at c, already below the target
    return float((a / gap) ** (1.0 / b))


@dataclass(frozen=True)
class PowerLawBootstrap:
    """A fit, percentile intervals of its parameters, and training sizes for target errors.

    ``targets`` maps a target error to the CI of the size reaching it (estimate from the point
    fit); ``where`` to a sentence placing it against the measured sizes ("extrapolated beyond
    1,000 images"). ``interval_note`` says why there is no interval when there is none.
    ``c_at_bound_share`` is the share of bootstrap refits whose floor sits at 0.

    ``reliable``/``reasons`` judge the FIT (failed, poor R², no spare degrees of freedom, a
    parameter on a bound, no interval); ``target_reliable``/``target_reasons`` judge each
    target's size on its own (the fit's verdict, plus "unreachable" or "extrapolated more than
    ``max_extrapolation`` times the largest size"): one far target no longer condemns the
    others. ``notes`` are facts that are not verdicts (the floor at 0, :data:`FLOOR_AT_ZERO`).
    ``unit`` is what the evaluation noise was resampled by (``"image"`` or ``"patient"``).
    """

    fit: PowerLawFit
    a: CI
    b: CI
    c: CI
    targets: dict
    reliable: bool
    reasons: tuple[str, ...]
    curves: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False, compare=False)
    grid: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)
    where: dict = field(default_factory=dict)
    runs_per_size: dict = field(default_factory=dict)
    interval_note: str = ""
    c_at_bound_share: float = math.nan
    eval_noise: bool = False
    target_reliable: dict = field(default_factory=dict)
    target_reasons: dict = field(default_factory=dict)
    notes: tuple = ()
    unit: str = "image"


def quantiles_with_inf(x: np.ndarray, qs: Sequence[float]) -> list[float]:
    """``np.quantile(x, qs)`` (linear interpolation) for samples that may hold +inf.

    A bootstrap of "images needed to reach an error" gives +inf where a replicate's curve never
    gets there. numpy interpolates ``inf - inf`` to NaN (with a RuntimeWarning) and
    ``finite + inf * 0`` to NaN; here a quantile that touches an infinite sample with non-zero
    weight is +inf, and otherwise equals numpy's.
    """
    v = np.sort(np.asarray(x, dtype=np.float64))
    out = []
    for q in qs:
        pos = float(q) * (v.size - 1)
        i, frac = int(math.floor(pos)), pos - math.floor(pos)
        j = min(i + 1, v.size - 1)
        a, b = v[i], v[j]
        if frac == 0.0:
            out.append(float(a))
        elif math.isinf(a) or math.isinf(b):
            out.append(math.inf)
        else:
            out.append(float(a + (b - a) * frac))
    return out


def bootstrap_power_law(
    sizes: Sequence[float],
    errors: Sequence[float],
    *,
    correct: Optional[np.ndarray] = None,
    target_errors: Sequence[float] = (),
    n_boot: int = 400,
    level: float = 0.95,
    seed: int = 0,
    min_r2: float = 0.8,
    max_extrapolation: float = 2.0,
    grid: Optional[np.ndarray] = None,
    groups: Optional[Sequence] = None,
) -> PowerLawBootstrap:
    """Fit the power law, then refit on bootstrap replicates that carry both kinds of noise.

    ``sizes``/``errors``: one value per run. ``correct`` (optional, ``(n_runs, n_images)``):
    each run's per-image correct/wrong on the shared evaluation set. Each replicate

    1. resamples the evaluation images once, for every run (they share the images, so the
       image noise moves all points together: mostly the level and the floor of the curve),
       and recomputes each run's error on that resample; with ``groups`` (one patient label
       per image) it resamples patients, all images of a drawn patient together;
    2. resamples the runs within each size (every size stays in every replicate: a replicate
       missing the smallest size would fit a different curve, not a noisier one), with the
       deviations from the size's mean scaled by ``sqrt(S/(S-1))`` so that the replicates'
       spread of a size's mean equals ``s^2/S`` (a plain bootstrap of S runs gives ``(S-1)/S``
       of it: a third too little with 3 seeds);

    and refits (:func:`fit_power_law_batch`). Percentile intervals follow for ``a``, ``b``,
    ``c``, for the size reaching each target error, and, with ``grid``, bootstrap curves for
    the figure's band.

    No interval with fewer than 2 runs at some size: one run per size carries no information
    on how much a re-run would move that point, and resampling it gives a zero-width interval
    ("1,104 images [1,104, 1,104]") that looks certain and is not. The FIT is flagged
    unreliable (``reliable=False`` with ``reasons``) then, when it failed, when ``r2 < min_r2``,
    when only three sizes were fitted (three parameters through three means: nothing left to
    check the shape), or when a parameter other than the floor ends on a bound
    (:func:`bound_flags`). Each TARGET is judged apart (``target_reliable``): unreliable with
    the fit, or when its size lies more than ``max_extrapolation`` times beyond the largest
    size or is unreachable. ``tests/test_stats_simulation.py`` measures the coverage of the
    target-size interval and how often fits and targets are flagged.
    """
    n = np.asarray(sizes, dtype=np.float64).ravel()
    e = np.asarray(errors, dtype=np.float64).ravel()
    keep = np.isfinite(n) & np.isfinite(e) & (n > 0)
    if correct is not None:
        correct = np.asarray(correct, dtype=np.float64)
        if correct.ndim != 2 or correct.shape[0] != keep.size:
            raise ValueError(f"correct must be (n_runs={keep.size}, n_images), got shape {correct.shape}")
        correct = correct[keep]
    n, e = n[keep], e[keep]
    fit = fit_power_law(n, e)
    nan_ci = CI(math.nan, math.nan, math.nan, 0, level)
    grid = np.asarray(grid, dtype=np.float64) if grid is not None else np.zeros(0)
    uniq, counts = np.unique(n, return_counts=True)
    per_size = {int(u): int(k) for u, k in zip(uniq, counts)}
    n_min, n_max = (float(n.min()), float(n.max())) if n.size else (math.nan, math.nan)
    if not fit.ok:
        return PowerLawBootstrap(fit, nan_ci, nan_ci, nan_ci, {t: nan_ci for t in target_errors}, False,
                                 (fit.message,), grid=grid, where={t: "no fit" for t in target_errors},
                                 runs_per_size=per_size, target_reliable={t: False for t in target_errors},
                                 target_reasons={t: () for t in target_errors})
    reasons, notes = [], []
    if fit.r2 < min_r2:
        reasons.append(f"poor fit (R² = {fit.r2:.2f} < {min_r2})")
    if fit.n_sizes == 3:
        reasons.append("only 3 training sizes for 3 parameters: the fit cannot be checked")
    reasons += bound_flags(fit.a, fit.b, fit.c)
    if np.isfinite(fit.c) and fit.c <= 1e-9:
        notes.append(FLOOR_AT_ZERO)
    single = [int(u) for u, k in zip(uniq, counts) if k < 2]
    note = ""
    P = np.zeros((0, 3))
    if single:
        note = (f"no interval: only one run at {', '.join(f'{u:,}' for u in single)} images. One run per size "
                "says nothing about how far a re-run would move that point, so a bootstrap would print a "
                "zero-width interval; at least 2 seeds per size are needed")
        reasons.append(note)
    else:
        rng = np.random.default_rng(seed)
        e_rep = np.broadcast_to(e, (n_boot, e.size)).copy()
        if correct is not None and correct.shape[1] > 1:
            n_img = correct.shape[1]
            codes = unit_codes(groups, n_img) if groups is not None else None
            if codes is None:
                w = rng.multinomial(n_img, np.full(n_img, 1.0 / n_img), size=n_boot).astype(np.float64)
            else:
                g = int(codes.max()) + 1
                w = rng.multinomial(g, np.full(g, 1.0 / g), size=n_boot).astype(np.float64)[:, codes]
            e_rep = e[None, :] + (correct.mean(1)[None, :] - (w @ correct.T) / w.sum(1, keepdims=True))
        for u in uniq:
            idx = np.flatnonzero(n == u)
            sg = idx.size
            eg = e_rep[:, idx]
            mg = eg.mean(1, keepdims=True)
            pick = rng.integers(0, sg, size=(n_boot, sg))
            e_rep[:, idx] = mg + math.sqrt(sg / (sg - 1)) * (np.take_along_axis(eg, pick, axis=1) - mg)
        a_, b_, c_, _ = fit_power_law_batch(n, np.clip(e_rep, 0.0, 1.0))
        P = np.stack([a_, b_, c_], axis=1)
    alpha = (1.0 - level) / 2.0

    def _ci(est: float, col: np.ndarray) -> CI:
        col = col[np.isfinite(col)]
        if col.size < 2:
            return CI(est, math.nan, math.nan, int(col.size), level)
        lo, hi = np.quantile(col, [alpha, 1.0 - alpha])
        return CI(est, float(lo), float(hi), int(col.size), level)

    a_ci, b_ci, c_ci = (_ci(v, P[:, k]) for k, v in enumerate((fit.a, fit.b, fit.c)))
    targets, where, t_ok, t_why = {}, {}, {}, {}
    for t in target_errors:
        est = size_for_target(fit.a, fit.b, fit.c, t)
        boot_n = np.array([size_for_target(a, b, c, t) for a, b, c in P], dtype=np.float64)
        if boot_n.size >= 2:
            # inf (unreachable) sorts last, so quantiles of the finite+inf array are meaningful
            lo, hi = quantiles_with_inf(np.where(np.isnan(boot_n), np.inf, boot_n), [alpha, 1.0 - alpha])
            targets[t] = CI(est, float(lo), float(hi), int(boot_n.size), level)
        else:
            targets[t] = CI(est, math.nan, math.nan, int(boot_n.size), level)
        where[t] = target_where(est, targets[t].low, targets[t].high, n_min, n_max)
        why = []
        if not np.isfinite(est):
            why.append(f"error {t:.3g} is below the fitted floor c = {fit.c:.3g}: unreachable by more data")
        elif est > max_extrapolation * n_max:
            why.append(f"error {t:.3g} needs ~{est:,.0f} images, {est / n_max:.1f}x the largest size measured ({n_max:,.0f})")
        elif est > n_max and notes:
            where[t] += "; optimistic: no floor identified"
        t_ok[t], t_why[t] = not reasons and not why, tuple(why)
    curves = np.zeros((0, 0))
    if grid.size and P.shape[0]:
        curves = np.clip(power_law(grid[None, :], P[:, :1], P[:, 1:2], P[:, 2:3]), 0.0, 1.0)
    return PowerLawBootstrap(
        fit, a_ci, b_ci, c_ci, targets, not reasons, tuple(reasons), curves, grid,
        where=where, runs_per_size=per_size, interval_note=note,
        c_at_bound_share=float(np.mean(P[:, 2] <= 1e-9)) if P.shape[0] else math.nan,
        eval_noise=correct is not None, target_reliable=t_ok, target_reasons=t_why, notes=tuple(notes),
        unit="patient" if correct is not None and groups is not None and unit_codes(groups, correct.shape[1]) is not None else "image",
    )
