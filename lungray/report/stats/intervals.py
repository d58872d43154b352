"""Intervals for one cell: a mean over seeds, the two-level (seeds x evaluation images) interval
the report shows for every cell, and the binomial interval of a proportion.

* :func:`mean_ci` - mean over seeds with a Student-t 95% interval (few seeds, so not a normal
  interval); conditional on the evaluation images;
* :func:`two_level_ci_scores`, :func:`two_level_ci_boot` - the report's cell interval: the mean
  over runs with the run-to-run AND the evaluation-image noise (variance components, guarded
  Satterthwaite degrees of freedom); the evaluation noise resampled by PATIENT when several
  images share one (:func:`unit_codes`), and a proportion's interval on the logit scale with
  half a pseudo-image right and half wrong, so that it is never zero-width at 0 or 1;
* :func:`binom_ci` (Clopper-Pearson, Wilson) - the pointing game's interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

__all__ = ["CI", "mean_ci", "bootstrap_ci", "TwoLevelCI", "two_level_ci_scores", "two_level_ci_boot", "two_level_arrays",
           "two_level_bounds", "unit_codes", "seed_only_ci", "binom_ci", "DF_GUARD", "PSEUDO"]


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
    runs, conditional on the evaluation images) or ``"none"`` (fewer than 2 runs). ``unit`` is
    what the evaluation noise was resampled by (``"image"``, or ``"patient"`` when images share
    a patient), ``n_units`` how many there were; ``scale`` is ``"logit"`` for a proportion (the
    variances are then those of the half-pseudo-image-adjusted mean, see
    :func:`two_level_bounds`) and ``"linear"`` otherwise.
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
    unit: str = "image"
    n_units: int = 0
    scale: str = "linear"

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
    leading axes). Returns ``(estimate, var_seed, var_image, df)``. With images clustered by
    patient, "image" below reads "patient" (the unit resampled) and ``n_images`` is the number
    of patients: the degrees of freedom of the image part are those of the patients.

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
    from scipy.special import chdtri

    vs_df = var_seed * (s - 1) / chdtri(s - 1, 1 - DF_GUARD)
    with np.errstate(invalid="ignore", divide="ignore"):
        df = (vs_df + var_image) ** 2 / (vs_df**2 / (s - 1) + var_image**2 / max(1, n_images - 1))
    df = np.where(tot > 0, df, np.inf)
    return est, var_seed, var_image, df


#: The lower chi-square quantile behind the guarded degrees of freedom of :func:`_two_level`.
DF_GUARD = 0.25


def _quantile(df, level: float):
    """The two-sided t quantile at ``level`` (normal where ``df`` is infinite), vectorised."""
    from scipy.special import ndtri, stdtrit

    df = np.asarray(df, dtype=np.float64)
    q = (1.0 + level) / 2.0
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(df), stdtrit(np.where(np.isfinite(df), df, 1.0), q), ndtri(q))


def _finish(est, var_seed, var_image, df, n, n_images, level, bounds, kind, unit="image", n_units=0) -> TwoLevelCI:
    half = float(_quantile(df, level)) * math.sqrt(var_seed + var_image)
    lo, hi = est - half, est + half
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return TwoLevelCI(float(est), float(lo), float(hi), n, level, float(var_seed), float(var_image), float(df), kind,
                      n_images, unit, int(n_units or n_images))


#: Pseudo-images added to a proportion's data before its interval: ``PSEUDO`` right and
#: ``PSEUDO`` wrong, seen by every run (the Haldane-Anscombe half: Gart & Zweifel 1967,
#: Biometrika 54:181; Agresti 2013, "Categorical data analysis", s. 3.1). Three runs that are
#: right on all 57 images have a seed variance of 0 and an image variance of 0, so the plain
#: interval is 1.000 [1.000, 1.000]; with the half pseudo-images the variance is that of 57.5
#: right out of 58, and the interval is built on the logit scale, where the run-to-run spread
#: near the ceiling (errors 1 % in one run, 3 % in the next) is symmetric.
PSEUDO = 0.5


def unit_codes(groups: Optional[Sequence] = None, n_images: Optional[int] = None) -> Optional[np.ndarray]:
    """Unit (patient) codes ``0..G-1`` per image, or None when every image is its own unit.

    ``groups`` is one label per evaluation image (a patient id or code; ``None`` or NaN: a
    patient of its own). Images of one patient share the patient's anatomy, acquisition and
    disease, so their scores are correlated; resampling images as if independent made the
    cell interval cover 0.88 (60 patients x 10 images) and 0.70 (30 x 20) instead of 0.95
    (issue 19). The unit resampled is then the patient (the cluster bootstrap of Field & Welsh
    2007, JRSS-B 69:369). Returns None when no group repeats, so the image formulas (and their
    numbers) stay exactly as they were.
    """
    if groups is None:
        return None
    g = np.asarray(groups, dtype=object).ravel()
    if n_images is not None and g.size != n_images:
        raise ValueError(f"groups has {g.size} entries for {n_images} images; give one group per image")
    key = [("\x00own", i) if (v is None or (isinstance(v, float) and math.isnan(v)) or v == "") else ("g", str(v))
           for i, v in enumerate(g)]
    seen: dict = {}
    codes = np.array([seen.setdefault(k, len(seen)) for k in key], dtype=np.int64)
    return None if len(seen) == codes.size else codes


def _unit_variance(x: np.ndarray, codes: Optional[np.ndarray], pseudo: float) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, variance of the mean)`` of per-image scores ``x (..., N)`` under resampling of
    the units (images, or the patients ``codes``), vectorised over leading axes.

    The variance is the linearised cluster-bootstrap one with the small-sample factor
    ``G/(G-1)``: ``G/(G-1) * sum_g (T_g - m n_g)^2 / N^2`` over the G units with score total
    ``T_g`` and ``n_g`` images; for single images this is ``var(x, ddof=1) / N``, the formula
    used before patients were known. ``pseudo`` adds that many images scored 1 and as many
    scored 0, each its own unit (:data:`PSEUDO`).
    """
    n = x.shape[-1]
    if codes is None:
        tot, size, g = x, None, n
    else:
        order = np.argsort(codes, kind="stable")
        sc = codes[order]
        starts = np.r_[0, np.flatnonzero(sc[1:] != sc[:-1]) + 1]
        tot = np.add.reduceat(x[..., order], starts, axis=-1)
        size = np.diff(np.r_[starts, n]).astype(np.float64)
        g = starts.size
    n_eff, g_eff = n + 2 * pseudo, g + 2 * pseudo
    m = (x.sum(-1) + pseudo) / n_eff
    resid = tot - m[..., None] * (1.0 if size is None else size)
    ss = (resid * resid).sum(-1) + pseudo * ((1 - m) ** 2 + m**2)
    return m, ss * g_eff / (g_eff - 1) / n_eff**2


def two_level_ci_scores(
    scores: np.ndarray, level: float = 0.95, bounds: Optional[tuple[float, float]] = None,
    groups: Optional[Sequence] = None,
) -> TwoLevelCI:
    """Interval for the mean over runs of a PER-IMAGE score (accuracy: 1/0 correct; log loss:
    the per-image loss; Dice), ``scores`` of shape ``(n_runs, n_images)`` on the same images.

    What it estimates: the expected score of a NEW training run of this recipe (model,
    optimizer, training size), on a NEW image from the population the evaluation set was drawn
    from. It is conditional on the fixed training pool the subsets are drawn from, the
    validation set used for model selection, and the hyper-parameters. ``groups`` (one patient
    label per image, :func:`unit_codes`): when a patient has several images the evaluation
    noise is resampled by patient, not by image (``unit = "patient"``). The image-level
    variances are the exact bootstrap ones (closed form, no resampling), so the interval is
    deterministic. See :func:`_two_level` for the decomposition and :func:`two_level_bounds`
    for a proportion's logit-scale interval (``bounds == (0, 1)`` and scores in [0, 1]); fewer
    than 2 runs give no interval (the training variance cannot be estimated from one run).

    Three runs right on all 57 images (the plain interval was 1.000 [1.000, 1.000]):

    >>> ci = two_level_ci_scores(np.ones((3, 57)), bounds=(0.0, 1.0))
    >>> round(ci.estimate, 3), round(ci.low, 3), ci.high
    (1.0, 0.867, 1.0)
    """
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"scores must be (runs, images), got shape {x.shape}")
    n_s, n_i = x.shape
    codes = unit_codes(groups, n_i) if groups is not None and n_i else None
    unit, n_units = ("patient", int(codes.max()) + 1) if codes is not None else ("image", n_i)
    if n_s == 0 or n_i == 0:
        return TwoLevelCI(math.nan, math.nan, math.nan, n_s, level, n_images=n_i, unit=unit, n_units=n_units)
    if n_s == 1 or n_units < 2:
        return TwoLevelCI(float(x.mean()), math.nan, math.nan, n_s, level, n_images=n_i, unit=unit, n_units=n_units)
    proportion = _is_proportion(x, bounds)
    est, lo, hi, vs, vi, df = two_level_bounds(x, codes, level, proportion)
    if bounds is not None:
        lo, hi = max(float(lo), bounds[0]), min(float(hi), bounds[1])
    return TwoLevelCI(float(est), float(lo), float(hi), n_s, level, float(vs), float(vi), float(df), "seeds+images",
                      n_i, unit, n_units, "logit" if proportion else "linear")


def _is_proportion(x: np.ndarray, bounds: Optional[tuple[float, float]]) -> bool:
    return bounds is not None and tuple(bounds) == (0.0, 1.0) and bool(np.all((x >= 0) & (x <= 1)))


def two_level_arrays(scores: np.ndarray, groups: Optional[np.ndarray] = None, pseudo: float = 0.0):
    """:func:`_two_level` of per-image scores ``(..., runs, images)``, vectorised over the
    leading axes (the simulations run thousands of cells at once): ``(estimate, var_seed,
    var_image, df)``. The image-level variances are the exact bootstrap ones (``ddof=1``);
    ``groups`` are unit codes from :func:`unit_codes` (None: every image its own unit), and
    ``pseudo`` adds pseudo-images right and wrong (:data:`PSEUDO`)."""
    x = np.asarray(scores)
    codes = None if groups is None else np.asarray(groups, dtype=np.int64)
    n_units = x.shape[-1] if codes is None else int(codes.max()) + 1
    theta, v_each = _unit_variance(x, codes, pseudo)
    _, v_shared = _unit_variance(x.mean(-2), codes, pseudo)
    return _two_level(theta, v_shared, v_each, n_units)


def two_level_bounds(scores: np.ndarray, groups: Optional[np.ndarray] = None, level: float = 0.95,
                     proportion: bool = False):
    """The cell interval, vectorised over leading axes: ``(estimate, low, high, var_seed,
    var_image, df)`` for per-image scores ``(..., runs, images)`` (what
    :func:`two_level_ci_scores` returns for one cell, and what the simulations measure).

    ``proportion`` (scores in [0, 1], e.g. right/wrong): the variance components are those of
    the mean with :data:`PSEUDO` pseudo-images right and wrong added, and the interval is
    ``expit(logit(m~) +- t * se / (m~ (1 - m~)))`` around that adjusted mean ``m~``, widened if
    needed to hold the observed mean (3 runs right on every image: ``[low, 1]``). Near the
    ceiling the plain interval had zero width whenever no run erred, and covered 0.87-0.92 at
    true accuracies 0.977-0.995; this one 0.94-0.98 (``bench/bench_stats.py``). Elsewhere the
    two agree (at accuracy 0.6-0.85 within 0.003 in coverage). The estimate is always the plain
    mean over runs and images.
    """
    x = np.asarray(scores, dtype=np.float64)
    raw = x.mean(-1).mean(-1)
    if not proportion:
        est, vs, vi, df = two_level_arrays(x, groups)
        half = _quantile(df, level) * np.sqrt(vs + vi)
        return est, est - half, est + half, vs, vi, df
    m, vs, vi, df = two_level_arrays(x, groups, PSEUDO)
    from scipy.special import expit, logit

    se = np.sqrt(vs + vi) / (m * (1 - m))
    q = _quantile(df, level)
    lo = np.minimum(expit(logit(m) - q * se), raw)
    hi = np.maximum(expit(logit(m) + q * se), raw)
    return raw, lo, hi, vs, vi, df


def two_level_ci_boot(
    theta: Sequence[float] | np.ndarray,
    boot: np.ndarray,
    n_images: int,
    level: float = 0.95,
    bounds: Optional[tuple[float, float]] = None,
    *,
    n_units: Optional[int] = None,
    logit: bool = False,
    estimate: Optional[float] = None,
) -> TwoLevelCI:
    """The same interval for a metric that is not a mean over images (AUC, macro F1, balanced
    accuracy): ``theta`` the runs' metric values, ``boot`` ``(n_boot, n_runs)`` the metric on
    ``n_boot`` resamples of the evaluation images, the SAME resample for every run in a row
    (the images are shared, so their noise is common to all runs; see
    :mod:`lungray.report.resampling`). Rows with a NaN (a class absent from a resample) are
    dropped. ``n_units``: the patients resampled when images were resampled by patient (the
    degrees of freedom of the image part).

    ``logit``: ``theta`` and ``boot`` are the metric with pseudo-images added
    (:func:`lungray.report.resampling.with_pseudo_images`, never exactly 0 or 1); the variance
    components are computed on the logit scale and the interval transformed back, widened if
    needed to hold ``estimate`` (the runs' plain mean, which is what the cell reports). An
    AUC of 1 on every run and resample otherwise gives 1.000 [1.000, 1.000].
    """
    th = np.asarray(theta, dtype=np.float64).ravel()
    bt = np.asarray(boot, dtype=np.float64).reshape(-1, th.size)
    n_s = th.size
    n_units = int(n_units or n_images)
    unit = "patient" if n_units < n_images else "image"
    est_raw = float(estimate) if estimate is not None else (float(th.mean()) if n_s else math.nan)
    if n_s == 0:
        return TwoLevelCI(math.nan, math.nan, math.nan, 0, level, n_images=n_images, unit=unit, n_units=n_units)
    bt = bt[np.isfinite(bt).all(1)]
    if n_s == 1 or bt.shape[0] < 2:
        return TwoLevelCI(est_raw, math.nan, math.nan, n_s, level, n_images=n_images, unit=unit, n_units=n_units)
    if not logit:
        v_each = bt.var(0, ddof=1)
        v_shared = bt.mean(1).var(ddof=1)
        est, vs, vi, df = _two_level(th, v_shared, v_each, n_units)
        return _finish(est, vs, vi, df, n_s, n_images, level, bounds, "seeds+images", unit, n_units)
    from scipy.special import expit
    from scipy.special import logit as lg

    eps = 1e-9
    lt, lb = lg(np.clip(th, eps, 1 - eps)), lg(np.clip(bt, eps, 1 - eps))
    est, vs, vi, df = _two_level(lt, lb.mean(1).var(ddof=1), lb.var(0, ddof=1), n_units)
    half = float(_quantile(df, level)) * math.sqrt(vs + vi)
    lo, hi = min(float(expit(est - half)), est_raw), max(float(expit(est + half)), est_raw)
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return TwoLevelCI(est_raw, lo, hi, n_s, level, float(vs), float(vi), float(df), "seeds+images", n_images, unit,
                      n_units, "logit")


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
