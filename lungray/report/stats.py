"""Intervals, paired tests and learning-curve fits: pure functions on NumPy arrays.

The published studies this package reproduces report single runs with no error bars
(PROTOCOLS.md, "What the studies lack"): DenseNet121 beat ResNet50 by 1-2 points at every
training size in the training-size study (section 1), with one seed each. These functions are
what the report uses to say whether such a gap is larger than seed and test-set noise:

* :func:`mean_ci` - mean over seeds with a Student-t 95% interval (few seeds, so not a normal
  interval);
* :func:`bootstrap_ci` - a percentile bootstrap interval for any statistic;
* :func:`paired_bootstrap_diff` - the difference in accuracy between two models trained on the
  SAME subsets (seeds) and scored on the SAME evaluation images, resampling seeds and images;
* :func:`mcnemar_exact` - the exact (binomial) McNemar test on one seed's paired predictions;
* :func:`fit_power_law`, :func:`bootstrap_power_law`, :func:`size_for_target` - the learning
  curve ``error(n) = a * n**-b + c`` and the training size it predicts for a target.

Everything is deterministic given its ``seed`` argument (``numpy.random.default_rng``), takes
and returns plain arrays/floats, and never reads files, so each is tested on hand-computed cases
(``tests/test_report_stats.py``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

__all__ = [
    "CI",
    "mean_ci",
    "bootstrap_ci",
    "PairedDiff",
    "paired_bootstrap_diff",
    "mcnemar_exact",
    "PowerLawFit",
    "power_law",
    "fit_power_law",
    "bootstrap_power_law",
    "size_for_target",
]


@dataclass(frozen=True)
class CI:
    """A point estimate with a two-sided interval; ``low``/``high`` are NaN when undefined."""

    estimate: float
    low: float
    high: float
    n: int
    level: float = 0.95

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0

    def covers(self, value: float) -> bool:
        """True when ``value`` lies inside the interval (False when the interval is undefined)."""
        return bool(self.low <= value <= self.high)


def _clean(values: Sequence[float] | np.ndarray) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


def mean_ci(
    values: Sequence[float] | np.ndarray,
    level: float = 0.95,
    bounds: Optional[tuple[float, float]] = None,
) -> CI:
    """Mean with a Student-t confidence interval, ignoring NaN (failed trials).

    ``mean +- t_{(1+level)/2, n-1} * s / sqrt(n)`` with ``s`` the sample standard deviation
    (``ddof=1``). The t quantile, not 1.96, because a sweep has 3-5 seeds: with 3 seeds the
    95% multiplier is 4.30, and a normal interval would be less than half as wide as it should.

    With one value there is no spread to estimate, so the interval is NaN (``n=1`` is shown as
    "no interval", never as a zero-width one); with no values the estimate is NaN too.
    ``bounds`` clips the interval to a metric's range (accuracy, F1 and AUC live in [0, 1]; a
    symmetric t-interval of 3 seeds near 0.95 can otherwise reach past 1).

    >>> ci = mean_ci([1.0, 2.0, 3.0])
    >>> round(ci.estimate, 6), round(ci.low, 5), round(ci.high, 5)
    (2.0, -0.48414, 4.48414)
    >>> mean_ci([0.7]).low
    nan
    """
    from scipy import stats

    x = _clean(values)
    n = int(x.size)
    if n == 0:
        return CI(math.nan, math.nan, math.nan, 0, level)
    m = float(x.mean())
    if n == 1:
        return CI(m, math.nan, math.nan, 1, level)
    s = float(x.std(ddof=1))
    half = float(stats.t.ppf((1.0 + level) / 2.0, n - 1)) * s / math.sqrt(n)
    lo, hi = m - half, m + half
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return CI(m, lo, hi, n, level)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], float] = np.mean,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> CI:
    """Percentile bootstrap interval of ``statistic`` over resamples of ``values`` (NaN dropped).

    Used where a t interval's normality assumption is poor (proportions near 0 or 1, medians).
    One value gives a NaN interval, as in :func:`mean_ci`.
    """
    x = _clean(values)
    n = int(x.size)
    if n == 0:
        return CI(math.nan, math.nan, math.nan, 0, level)
    est = float(statistic(x))
    if n == 1:
        return CI(est, math.nan, math.nan, 1, level)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    stats_ = np.array([statistic(x[row]) for row in idx], dtype=np.float64)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats_, [alpha, 1.0 - alpha])
    return CI(est, float(lo), float(hi), n, level)


@dataclass(frozen=True)
class PairedDiff:
    """Mean difference A - B of a per-image score, with its paired-bootstrap interval.

    ``diff``/``low``/``high`` are in the units of the score (accuracy: a fraction; multiply by
    100 for points). ``n_seeds`` x ``n_images`` paired observations went in.
    """

    diff: float
    low: float
    high: float
    n_seeds: int
    n_images: int
    level: float = 0.95
    boot: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (a gap bigger than seed and test-set noise)."""
        return bool(np.isfinite(self.low) and (self.low > 0 or self.high < 0))


def paired_bootstrap_diff(
    score_a: np.ndarray,
    score_b: np.ndarray,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> PairedDiff:
    """Paired bootstrap of ``mean(score_a - score_b)`` over seeds and images.

    ``score_a``/``score_b`` are ``(n_seeds, n_images)`` arrays of a per-image score (1/0 for
    correct/wrong: the mean is accuracy), row ``s`` of both coming from models trained on the
    same subset (same seed), column ``i`` from the same evaluation image. Each bootstrap
    replicate draws seeds with replacement and, independently, one resample of the image set
    that is shared by every drawn seed - the evaluation set is fixed across seeds, so its
    sampling noise is common to all of them and must not be averaged away as if independent.
    Pairing removes the variation both models share (an image that is hard for both), which is
    why a 1-2 point gap can be detectable paired and invisible unpaired.

    Implemented with multinomial weights, so ``n_boot`` replicates over thousands of images take
    one matrix product. One seed gives an interval over images only.
    """
    a = np.asarray(score_a, dtype=np.float64)
    b = np.asarray(score_b, dtype=np.float64)
    if a.ndim == 1:
        a, b = a[None, :], b[None, :]
    if a.shape != b.shape:
        raise ValueError(f"paired scores must have the same (seeds, images) shape, got {a.shape} and {b.shape}")
    d = a - b
    n_s, n_i = d.shape
    if n_s == 0 or n_i == 0:
        return PairedDiff(math.nan, math.nan, math.nan, n_s, n_i, level)
    est = float(d.mean())
    rng = np.random.default_rng(seed)
    w_s = rng.multinomial(n_s, np.full(n_s, 1.0 / n_s), size=n_boot).astype(np.float64)
    w_i = rng.multinomial(n_i, np.full(n_i, 1.0 / n_i), size=n_boot).astype(np.float64)
    boot = ((w_s @ d) * w_i).sum(axis=1) / (n_s * n_i)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(boot, [alpha, 1.0 - alpha])
    return PairedDiff(est, float(lo), float(hi), n_s, n_i, level, boot)


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[int, int, float]:
    """Exact McNemar test on paired correct/wrong outcomes of two models on the same images.

    Returns ``(b, c, p)``: ``b`` images only A got right, ``c`` images only B got right, and
    the two-sided exact binomial p-value ``min(1, 2 * P[X <= min(b, c)])`` with
    ``X ~ Binomial(b + c, 1/2)``. No discordant pairs gives ``p = 1``. Exact rather than
    chi-square because small evaluation sets (57 test images in PROTOCOLS.md section 2) have
    few discordant pairs.

    >>> mcnemar_exact([1]*9 + [0], [0]*9 + [1])
    (9, 1, 0.021484375)
    """
    from scipy import stats

    a = np.asarray(correct_a, dtype=bool).ravel()
    bb = np.asarray(correct_b, dtype=bool).ravel()
    if a.shape != bb.shape:
        raise ValueError(f"paired outcomes must have the same length, got {a.size} and {bb.size}")
    b = int(np.sum(a & ~bb))
    c = int(np.sum(~a & bb))
    if b + c == 0:
        return b, c, 1.0
    p = min(1.0, 2.0 * float(stats.binom.cdf(min(b, c), b + c, 0.5)))
    return b, c, p


# ---------------------------------------------------------------------------------------------
# Learning-curve fit
# ---------------------------------------------------------------------------------------------


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


def fit_power_law(sizes: Sequence[float], errors: Sequence[float]) -> PowerLawFit:
    """Least-squares fit of ``error(n) = a * n**-b + c`` with ``scipy.optimize.curve_fit``.

    All points are fitted (every seed at every size), so sizes with more seeds weigh more.
    Bounds keep the fit physical: ``a >= 0``, ``0 <= b <= 3``, ``0 <= c <= 1`` for an error
    rate. Three parameters need at least three distinct sizes; with fewer, or when the optimiser
    does not converge, the result has ``ok=False`` and a message instead of raising, so a report
    of a 2-size smoke sweep still renders.
    """
    from scipy.optimize import curve_fit

    n = np.asarray(sizes, dtype=np.float64).ravel()
    e = np.asarray(errors, dtype=np.float64).ravel()
    keep = np.isfinite(n) & np.isfinite(e) & (n > 0)
    n, e = n[keep], e[keep]
    n_sizes = int(np.unique(n).size)
    if n_sizes < 3:
        return _failed_fit(int(n.size), n_sizes, f"needs at least 3 training sizes for 3 parameters, got {n_sizes}")
    # start: floor just under the best error, exponent 0.5, amplitude through the smallest size
    c0 = max(0.0, float(e.min()) * 0.5)
    b0 = 0.5
    n_min = float(n.min())
    a0 = max(1e-6, (float(e[n == n_min].mean()) - c0) * n_min**b0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # OptimizeWarning on degenerate covariance; judged by r2 below
            popt, _ = curve_fit(
                power_law,
                n,
                e,
                p0=[a0, b0, c0],
                bounds=([0.0, 0.0, 0.0], [np.inf, 3.0, 1.0]),
                maxfev=20000,
            )
    except (RuntimeError, ValueError) as exc:
        return _failed_fit(int(n.size), n_sizes, f"fit did not converge: {exc}")
    a, b, c = (float(v) for v in popt)
    pred = power_law(n, a, b, c)
    ss_res = float(np.sum((e - pred) ** 2))
    ss_tot = float(np.sum((e - e.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
    rmse = math.sqrt(ss_res / n.size)
    return PowerLawFit(a, b, c, r2, rmse, int(n.size), n_sizes)


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
    """A fit, percentile intervals of its parameters, and training sizes for target errors."""

    fit: PowerLawFit
    a: CI
    b: CI
    c: CI
    targets: dict  # target error -> CI of the size for it (estimate from the point fit)
    reliable: bool
    reasons: tuple[str, ...]
    curves: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False, compare=False)
    grid: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)


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
    target_errors: Sequence[float] = (),
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
    min_r2: float = 0.8,
    max_extrapolation: float = 2.0,
    grid: Optional[np.ndarray] = None,
) -> PowerLawBootstrap:
    """Fit the power law, then refit on bootstrap resamples of the seeds within each size.

    Resampling within each size keeps every size in every replicate (a replicate missing the
    smallest size would fit a different curve, not a noisier one). The result carries
    percentile intervals for ``a``, ``b``, ``c``, for the training size reaching each target
    error, and, if ``grid`` is given, bootstrap curves over it for a band in the figure.

    The fit is flagged unreliable (``reliable=False`` with ``reasons``) when it failed, when
    ``r2 < min_r2`` (a poor description of the points), when only three sizes were fitted
    (three parameters through three means: a perfect fit that proves nothing), or when a
    target's predicted size lies more than ``max_extrapolation`` times beyond the largest
    measured size or is unreachable. A learning curve extrapolated tenfold from 100-1000 images
    is a guess, and the report says so.
    """
    n = np.asarray(sizes, dtype=np.float64).ravel()
    e = np.asarray(errors, dtype=np.float64).ravel()
    keep = np.isfinite(n) & np.isfinite(e) & (n > 0)
    n, e = n[keep], e[keep]
    fit = fit_power_law(n, e)
    nan_ci = CI(math.nan, math.nan, math.nan, 0, level)
    grid = np.asarray(grid, dtype=np.float64) if grid is not None else np.zeros(0)
    if not fit.ok:
        return PowerLawBootstrap(
            fit, nan_ci, nan_ci, nan_ci, {t: nan_ci for t in target_errors}, False, (fit.message,), grid=grid
        )
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(n == u) for u in np.unique(n)]
    params = []
    curves = []
    for _ in range(n_boot):
        idx = np.concatenate([g[rng.integers(0, g.size, g.size)] for g in groups])
        f = fit_power_law(n[idx], e[idx])
        if f.ok:
            params.append((f.a, f.b, f.c))
            if grid.size:
                curves.append(f.predict(grid))
    P = np.asarray(params, dtype=np.float64).reshape(-1, 3)
    alpha = (1.0 - level) / 2.0

    def _ci(est: float, col: np.ndarray) -> CI:
        col = col[np.isfinite(col)]
        if col.size < 2:
            return CI(est, math.nan, math.nan, int(col.size), level)
        lo, hi = np.quantile(col, [alpha, 1.0 - alpha])
        return CI(est, float(lo), float(hi), int(col.size), level)

    a_ci, b_ci, c_ci = (_ci(v, P[:, k]) for k, v in enumerate((fit.a, fit.b, fit.c)))
    reasons = []
    if fit.r2 < min_r2:
        reasons.append(f"poor fit (R² = {fit.r2:.2f} < {min_r2})")
    if fit.n_sizes == 3:
        reasons.append("only 3 training sizes for 3 parameters: the fit cannot be checked")
    largest = float(n.max())
    targets = {}
    for t in target_errors:
        est = size_for_target(fit.a, fit.b, fit.c, t)
        boot_n = np.array([size_for_target(a, b, c, t) for a, b, c in P], dtype=np.float64)
        if boot_n.size >= 2:
            # inf (unreachable) sorts last, so quantiles of the finite+inf array are meaningful
            lo, hi = quantiles_with_inf(np.where(np.isnan(boot_n), np.inf, boot_n), [alpha, 1.0 - alpha])
            targets[t] = CI(est, float(lo), float(hi), int(boot_n.size), level)
        else:
            targets[t] = CI(est, math.nan, math.nan, int(boot_n.size), level)
        if not np.isfinite(est):
            reasons.append(f"error {t:.3g} is below the fitted floor c = {fit.c:.3g}: unreachable by more data")
        elif est > max_extrapolation * largest:
            reasons.append(
                f"error {t:.3g} needs ~{est:,.0f} images, {est / largest:.1f}x the largest size measured ({largest:,.0f})"
            )
    return PowerLawBootstrap(
        fit,
        a_ci,
        b_ci,
        c_ci,
        targets,
        not reasons,
        tuple(reasons),
        np.asarray(curves, dtype=np.float64).reshape(-1, grid.size) if grid.size else np.zeros((0, 0)),
        grid,
    )
