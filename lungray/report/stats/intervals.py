"""Intervals for one cell: a mean over seeds, the two-level (seeds x evaluation images) interval
the report shows for every cell, and the binomial interval of a proportion.

* :func:`mean_ci` - mean over seeds with a Student-t 95% interval (few seeds, so not a normal
  interval); conditional on the evaluation images;
* :func:`two_level_ci_scores`, :func:`two_level_ci_boot` - the report's cell interval: the mean
  over runs with the run-to-run AND the evaluation-image noise (variance components, guarded
  Satterthwaite degrees of freedom);
* :func:`binom_ci` (Clopper-Pearson, Wilson) - the pointing game's interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

__all__ = ["CI", "mean_ci", "bootstrap_ci", "TwoLevelCI", "two_level_ci_scores", "two_level_ci_boot", "two_level_arrays", "seed_only_ci", "binom_ci", "DF_GUARD"]


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


# ---------------------------------------------------------------------------------------------
# Two-level intervals: training runs (seeds) x evaluation images
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TwoLevelCI:
    """A mean over runs with an interval that carries run-to-run AND eval-image sampling noise.

    ``var_seed`` is the run-to-run (training: subset draw + initialisation) part of the variance
    of the mean, ``var_image`` the part from which images happened to be in the evaluation set;
    ``df`` the Welch-Satterthwaite degrees of freedom of the t quantile. ``kind`` names what the
    interval carries: ``"seeds+images"``, ``"seeds only"`` (no per-image scores: a Student-t over
    runs, conditional on the evaluation images) or ``"none"`` (fewer than 2 runs).
    """

    estimate: float
    low: float
    high: float
    n: int
    level: float = 0.95
    var_seed: float = math.nan
    var_image: float = math.nan
    df: float = math.nan
    kind: str = "none"
    n_images: int = 0

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0

    @property
    def se(self) -> float:
        return math.sqrt(self.var_seed + self.var_image)

    def covers(self, value: float) -> bool:
        return bool(self.low <= value <= self.high)


def _two_level(theta: np.ndarray, v_shared: np.ndarray, v_each: np.ndarray, n_images: int):
    """Variance components of a mean over S runs scored on the same N images (vectorised over
    leading axes). Returns ``(estimate, var_seed, var_image, df)``.

    Model: run s on image i has score ``mu + a_s + b_i + e_si`` (a crossed design: every run
    sees every image). The mean over runs has variance ``sigma_a^2/S + sigma_b^2/N +
    sigma_e^2/(S N)``. From the data:

    * the between-run variance ``s^2`` of the runs' scores estimates ``sigma_a^2 +
      sigma_e^2/N``, so ``var_seed = s^2/S`` is the usual seeds-only variance (with ``S - 1``
      degrees of freedom) and already holds the run-image interaction (flooring it at the
      interaction's own estimate made the interval conservative: coverage 0.97-0.995);
    * ``v_shared``, the image-level (bootstrap) variance of the mean over runs, estimates
      ``sigma_b^2/N + sigma_e^2/(S N)``, and ``v_each``, that of each run's own score,
      ``(sigma_b^2 + sigma_e^2)/N``; so ``var_image = (S v_shared - mean(v_each))/(S - 1)``
      estimates ``sigma_b^2/N``, the noise of the evaluation set that every run shares and
      that more seeds cannot average away (set to 0 when negative, as in ANOVA).

    For accuracy ``var_seed + var_image`` is the two-way random-effects ANOVA estimate
    ``(MS_seed + MS_image - MS_resid)/(S N)`` (the decomposition of Owen 2007, "The pigeonhole
    bootstrap"). ``df`` is Satterthwaite's (1946) for the sum, from ``S - 1`` and ``N - 1``:
    ~2 with 3 seeds when runs differ more than the images make them (t = 4.30), large when
    the evaluation set is the main source of noise (t ~ 1.96); see ``DF_GUARD`` below. The image part is added to the
    seeds-only variance rather than the interaction being subtracted from it: estimating the
    seed part as a difference and clipping it at 0 made the degrees of freedom jump exactly
    when the seed variance was underestimated (measured coverage 0.90-0.92 instead of 0.95).
    """
    theta = np.asarray(theta, dtype=np.float64)
    s = theta.shape[-1]
    est = theta.mean(-1)
    var_seed = theta.var(-1, ddof=1) / s
    var_image = np.maximum(0.0, (s * np.asarray(v_shared, dtype=np.float64) - np.asarray(v_each).mean(-1)) / (s - 1))
    tot = var_seed + var_image
    # Satterthwaite's df from a 75 % upper confidence bound of the seed part (not the point
    # estimate): with 2 df the seed variance is often underestimated, and then the plain
    # formula also inflates df, shrinking t exactly when the interval is already too narrow
    # (normal-theory coverage 0.92 at S = 3; with the bound 0.95-0.965 for S = 2, 3, 5 and any
    # ratio of the two parts: tests/test_stats_simulation.py).
    from scipy.stats import chi2

    vs_df = var_seed * (s - 1) / chi2.ppf(DF_GUARD, s - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        df = (vs_df + var_image) ** 2 / (vs_df**2 / (s - 1) + var_image**2 / max(1, n_images - 1))
    df = np.where(tot > 0, df, np.inf)
    return est, var_seed, var_image, df


#: The lower chi-square quantile behind the guarded degrees of freedom of :func:`_two_level`.
DF_GUARD = 0.25


def _finish(est, var_seed, var_image, df, n, n_images, level, bounds, kind) -> TwoLevelCI:
    from scipy import stats as st

    half = float(st.t.ppf((1.0 + level) / 2.0, df)) * math.sqrt(var_seed + var_image) if np.isfinite(df) else (
        float(st.norm.ppf((1.0 + level) / 2.0)) * math.sqrt(var_seed + var_image))
    lo, hi = est - half, est + half
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return TwoLevelCI(float(est), float(lo), float(hi), n, level, float(var_seed), float(var_image), float(df), kind, n_images)


def two_level_ci_scores(
    scores: np.ndarray, level: float = 0.95, bounds: Optional[tuple[float, float]] = None
) -> TwoLevelCI:
    """Interval for the mean over runs of a PER-IMAGE score (accuracy: 1/0 correct; log loss:
    the per-image loss), ``scores`` of shape ``(n_runs, n_images)`` on the same images.

    What it estimates: the expected score of a NEW training run of this recipe (model,
    optimizer, training size), on a NEW image from the population the evaluation set was drawn
    from. It is conditional on the fixed training pool the subsets are drawn from, the
    validation set used for model selection, and the hyper-parameters; it treats the
    evaluation images as independent draws (images of one patient are not: with several
    images per patient the image term is too small). The image-level variances are the exact
    bootstrap ones (closed form, no resampling), so the interval is deterministic. See
    :func:`_two_level` for the decomposition; fewer than 2 runs give no interval (the
    training variance cannot be estimated from one run).
    """
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"scores must be (runs, images), got shape {x.shape}")
    n_s, n_i = x.shape
    if n_s == 0 or n_i == 0:
        return TwoLevelCI(math.nan, math.nan, math.nan, n_s, level, n_images=n_i)
    if n_s == 1 or n_i < 2:
        return TwoLevelCI(float(x.mean()), math.nan, math.nan, n_s, level, n_images=n_i)
    est, vs, vi, df = two_level_arrays(x)
    return _finish(est, vs, vi, df, n_s, n_i, level, bounds, "seeds+images")


def two_level_arrays(scores: np.ndarray):
    """:func:`_two_level` of per-image scores ``(..., runs, images)``, vectorised over the
    leading axes (the simulations run thousands of cells at once): ``(estimate, var_seed,
    var_image, df)``. The image-level variances are the exact bootstrap ones (``ddof=1``)."""
    x = np.asarray(scores)
    n_i = x.shape[-1]
    theta = x.mean(-1)
    v_each = x.var(-1, ddof=1) / n_i
    v_shared = x.mean(-2).var(-1, ddof=1) / n_i
    return _two_level(theta, v_shared, v_each, n_i)


def two_level_ci_boot(
    theta: Sequence[float] | np.ndarray,
    boot: np.ndarray,
    n_images: int,
    level: float = 0.95,
    bounds: Optional[tuple[float, float]] = None,
) -> TwoLevelCI:
    """The same interval for a metric that is not a mean over images (AUC, macro F1, balanced
    accuracy): ``theta`` the runs' metric values, ``boot`` ``(n_boot, n_runs)`` the metric on
    ``n_boot`` resamples of the evaluation images, the SAME resample for every run in a row
    (the images are shared, so their noise is common to all runs; see
    :mod:`lungray.report.resampling`). Rows with a NaN (a class absent from a resample) are
    dropped."""
    th = np.asarray(theta, dtype=np.float64).ravel()
    bt = np.asarray(boot, dtype=np.float64).reshape(-1, th.size)
    n_s = th.size
    if n_s == 0:
        return TwoLevelCI(math.nan, math.nan, math.nan, 0, level, n_images=n_images)
    bt = bt[np.isfinite(bt).all(1)]
    if n_s == 1 or bt.shape[0] < 2:
        return TwoLevelCI(float(th.mean()), math.nan, math.nan, n_s, level, n_images=n_images)
    v_each = bt.var(0, ddof=1)
    v_shared = bt.mean(1).var(ddof=1)
    est, vs, vi, df = _two_level(th, v_shared, v_each, n_images)
    return _finish(est, vs, vi, df, n_s, n_images, level, bounds, "seeds+images")


def seed_only_ci(values: Sequence[float] | np.ndarray, level: float = 0.95,
                 bounds: Optional[tuple[float, float]] = None) -> TwoLevelCI:
    """:func:`mean_ci` as a :class:`TwoLevelCI` of kind ``"seeds only"`` (no per-image scores:
    e.g. the validation loss). Conditional on the evaluation images: it misses their sampling
    noise, and says so in the table."""
    ci = mean_ci(values, level, bounds)
    x = _clean(values)
    vs = float(x.var(ddof=1) / x.size) if x.size > 1 else math.nan
    return TwoLevelCI(ci.estimate, ci.low, ci.high, ci.n, level, vs, 0.0 if x.size > 1 else math.nan,
                      float(x.size - 1) if x.size > 1 else math.nan, "seeds only" if x.size > 1 else "none")


def binom_ci(k: int, n: int, level: float = 0.95, method: str = "clopper-pearson") -> CI:
    """Interval for a proportion ``k / n``: exact Clopper-Pearson (never below its level) or
    Wilson. NaN for ``n = 0``.

    >>> ci = binom_ci(0, 10); round(ci.high, 4)
    0.3085
    """
    from scipy import stats as st

    if n <= 0:
        return CI(math.nan, math.nan, math.nan, 0, level)
    alpha = 1.0 - level
    est = k / n
    if method == "clopper-pearson":
        lo = float(st.beta.ppf(alpha / 2, k, n - k + 1)) if k > 0 else 0.0
        hi = float(st.beta.ppf(1 - alpha / 2, k + 1, n - k)) if k < n else 1.0
    elif method == "wilson":
        z = float(st.norm.ppf(1 - alpha / 2))
        centre = (est + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(est * (1 - est) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        lo, hi = centre - half, centre + half
    else:
        raise ValueError(f"unknown interval method '{method}'; valid: clopper-pearson, wilson")
    return CI(est, max(0.0, lo), min(1.0, hi), n, level)
