"""Intervals, paired tests and learning-curve fits: pure functions on NumPy arrays.

The published studies this package reproduces report single runs with no error bars
(PROTOCOLS.md, "What the studies lack"): DenseNet121 beat ResNet50 by 1-2 points at every
training size in the training-size study (section 1), with one seed each. These functions are
what the report uses to say whether such a gap is larger than seed and test-set noise:

* :func:`mean_ci` - mean over seeds with a Student-t 95% interval (few seeds, so not a normal
  interval); conditional on the evaluation images;
* :func:`two_level_ci_scores`, :func:`two_level_ci_boot` - the report's cell interval: the mean
  over runs with the run-to-run AND the evaluation-image noise (variance components, guarded
  Satterthwaite degrees of freedom); :func:`chance_check` - is a run distinguishable from chance?
* :func:`paired_test` - the difference in accuracy between two models trained on the SAME
  subsets (seeds) and scored on the SAME evaluation images, with both noise terms;
  :func:`holm`, :func:`benjamini_hochberg` - the corrections over the report's family;
* :func:`mcnemar_exact`, :func:`mcnemar_clustered` - exact McNemar on one seed, and one test
  over all seeds with the image as the cluster;
* :func:`binom_ci` (Clopper-Pearson, Wilson), :func:`mcnemar_detectable_difference` - the
  pointing game's interval and the test-set adequacy line;
* :func:`fit_power_law`, :func:`bootstrap_power_law`, :func:`size_for_target` - the learning
  curve ``error(n) = a * n**-b + c`` and the training size it predicts for a target.

Everything is deterministic given its ``seed`` argument (``numpy.random.default_rng``), takes
and returns plain arrays/floats, and never reads files, so each is tested on hand-computed cases
(``tests/test_report_stats.py``); what each promises (coverage, type-I error) is measured by
simulation in ``tests/test_stats_simulation.py`` and ``bench/bench_stats.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

__all__ = [
    "CI",
    "mean_ci",
    "bootstrap_ci",
    "TwoLevelCI",
    "two_level_ci_scores",
    "two_level_ci_boot",
    "two_level_arrays",
    "seed_only_ci",
    "ChanceCheck",
    "chance_check",
    "PairedTest",
    "paired_test",
    "holm",
    "benjamini_hochberg",
    "mcnemar_exact",
    "McNemarResult",
    "mcnemar_clustered",
    "binom_ci",
    "mcnemar_detectable_difference",
    "PowerLawFit",
    "power_law",
    "fit_power_law",
    "fit_power_law_batch",
    "bound_flags",
    "target_where",
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


# ---------------------------------------------------------------------------------------------
# Runs stuck at chance
# ---------------------------------------------------------------------------------------------


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
    on a small evaluation set may also be flagged: the flag says "not distinguishable from
    chance at this n", which the report shows next to the cell rather than hiding.
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


# ---------------------------------------------------------------------------------------------
# Paired comparisons
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairedTest:
    """Mean difference A - B of a per-image score over paired runs and shared images.

    ``diff``/``low``/``high`` are in the units of the score (accuracy: a fraction). ``p`` is the
    two-sided p-value of the variance-components t test (:func:`paired_test`), ``df`` its
    degrees of freedom, ``var_seed``/``var_image`` the two parts of the variance of ``diff``.
    """

    diff: float
    low: float
    high: float
    p: float
    df: float
    var_seed: float
    var_image: float
    n_seeds: int
    n_images: int
    level: float = 0.95

    @property
    def significant(self) -> bool:
        """Unadjusted: the interval excludes 0 (the report decides on the Holm-adjusted p)."""
        return bool(np.isfinite(self.low) and (self.low > 0 or self.high < 0))


def paired_test(score_a: np.ndarray, score_b: np.ndarray, level: float = 0.95,
                bounds: Optional[tuple[float, float]] = None) -> PairedTest:
    """Is recipe A better than recipe B? A t test on the paired differences whose variance
    holds both the run-to-run and the evaluation-image term.

    ``score_a``/``score_b`` are ``(n_seeds, n_images)`` per-image scores (1/0 correct), row s of
    both from models trained on the SAME subset (seed), column i the same evaluation image.
    The per-image differences ``d_si`` go through :func:`_two_level`: the seed part (the paired
    t on per-seed differences, which holds its size with 3 seeds) plus the image part (the
    evaluation set is a sample too: a gap between two models that comes from which images
    happened to be drawn is shared by every seed, so more seeds cannot average it away),
    with Satterthwaite degrees of freedom. Why not the paired bootstrap this replaced: a
    bootstrap over 3 seeds sees at most 10 distinct resamples and a variance (S-1)/S too
    small; its measured type-I error was 0.08-0.13 at a nominal 0.05 (issue 11).
    ``tests/test_stats_simulation.py`` measures the size of this test. ``bounds`` clips the
    interval (not the test) to the range of a difference, e.g. ``(-1, 1)`` for accuracies.
    """
    from scipy import stats as st

    a = np.asarray(score_a, dtype=np.float64)
    b = np.asarray(score_b, dtype=np.float64)
    if a.ndim == 1:
        a, b = a[None, :], b[None, :]
    if a.shape != b.shape:
        raise ValueError(f"paired scores must have the same (seeds, images) shape, got {a.shape} and {b.shape}")
    n_s, n_i = a.shape
    if n_s < 2 or n_i < 2:
        est = float((a - b).mean()) if a.size else math.nan
        return PairedTest(est, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, n_s, n_i, level)
    ci = two_level_ci_scores(a - b, level)
    se = ci.se
    lo, hi = (max(ci.low, bounds[0]), min(ci.high, bounds[1])) if bounds is not None else (ci.low, ci.high)
    if se == 0:
        p = 1.0 if ci.estimate == 0 else 0.0
    else:
        tstat = ci.estimate / se
        p = float(2 * st.t.sf(abs(tstat), ci.df)) if np.isfinite(ci.df) else float(2 * st.norm.sf(abs(tstat)))
    return PairedTest(ci.estimate, lo, hi, p, ci.df, ci.var_seed, ci.var_image, n_s, n_i, level)


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


@dataclass(frozen=True)
class McNemarResult:
    """One McNemar-type test over all seeds: ``b`` image-runs only A got right, ``c`` only B,
    ``p`` two-sided, ``n_discordant_images`` images with any discordant run."""

    b: int
    c: int
    p: float
    n_discordant_images: int
    n_seeds: int


def mcnemar_clustered(correct_a: np.ndarray, correct_b: np.ndarray) -> McNemarResult:
    """ONE exact McNemar test over all seeds, with the evaluation image as the cluster.

    ``correct_a``/``correct_b``: ``(n_seeds, n_images)`` correct/wrong of two models (row s:
    trained on the same subset). Per image, ``e_i = sum_s (a_si - b_si)`` counts how often
    over the seeds A alone was right minus B alone; the statistic is ``T = sum_i e_i = b - c``.
    Under the null (on every image the two models' roles are exchangeable) each ``e_i`` is
    symmetric about 0 and independent across images, so ``T`` is referred to its exact
    conditional (sign-flip) distribution given the ``|e_i|``: a sum of independent
    ``k * (2 Bin(m_k, 1/2) - m_k)`` over the ``m_k`` images with ``|e_i| = k``. With one seed
    this IS the exact McNemar test (:func:`mcnemar_exact`).

    Why not pool the seeds' 2x2 tables (Mantel-Haenszel style, ``sum b`` vs ``sum c`` as one
    binomial): the same images enter every seed's table, and an image that favours A in one
    seed tends to favour it in the others, so the pooled discordant pairs are not independent
    and that test is anti-conservative (``tests/test_stats_simulation.py`` measures it). Taking
    the image as the cluster is the clustered matched-pair test of Durkalski et al. (2003,
    Stat Med 22:2417), here in its exact form.

    What it answers: do THESE trained models of A and of B differ in accuracy on the image
    population? It holds the trained runs fixed; the run-to-run variation of training is in
    :func:`paired_test`, which is the report's primary test.
    """
    from scipy import stats as st

    a = np.asarray(correct_a, dtype=bool)
    bb = np.asarray(correct_b, dtype=bool)
    if a.ndim == 1:
        a, bb = a[None, :], bb[None, :]
    if a.shape != bb.shape:
        raise ValueError(f"paired outcomes must have the same (seeds, images) shape, got {a.shape} and {bb.shape}")
    n_s = a.shape[0]
    b = int(np.sum(a & ~bb))
    c = int(np.sum(~a & bb))
    e = (a.astype(np.int64) - bb.astype(np.int64)).sum(0)
    absval = np.abs(e)
    m = np.bincount(absval, minlength=n_s + 1)
    n_disc = int((absval > 0).sum())
    if n_disc == 0:
        return McNemarResult(b, c, 1.0, 0, n_s)
    # U = sum_k k * X_k, X_k ~ Bin(m_k, 1/2); T = 2 U - sum_k k m_k
    pmf = np.ones(1)
    for k in range(1, n_s + 1):
        if m[k] == 0:
            continue
        part = np.zeros(k * m[k] + 1)
        part[::k] = st.binom.pmf(np.arange(m[k] + 1), m[k], 0.5)
        pmf = np.convolve(pmf, part)
    total = sum(k * m[k] for k in range(1, n_s + 1))
    t_vals = 2 * np.arange(pmf.size) - total
    t_obs = int(e.sum())
    p = float(pmf[np.abs(t_vals) >= abs(t_obs)].sum())
    return McNemarResult(b, c, min(1.0, p), n_disc, n_s)


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


def mcnemar_detectable_difference(n_images: int, discordance: float, alpha: float = 0.05,
                                  power: float = 0.8) -> float:
    """Smallest accuracy difference between two models that a paired (McNemar) comparison on
    ``n_images`` evaluation images detects with ``power``, two-sided at ``alpha``.

    Test-set adequacy in the sense of Beleites et al. (2013, "Sample size planning for
    classification models", Anal Chim Acta 760:25): the evaluation set, not the training set,
    limits what a comparison can show. ``discordance`` is the share of images on which exactly
    one of the two models is right (``p10 + p01``); the difference is ``p10 - p01``. Connor's
    (1987, Biometrics 43:207) sample size ``n = (z_{a/2} sqrt(psi) + z_b sqrt(psi - d^2))^2 / d^2``
    is solved for ``d``. ``inf`` when no difference (not even ``d = psi``, every discordant image
    favouring one model) is detectable at this n.

    >>> round(mcnemar_detectable_difference(3000, 0.10), 4)
    0.0162
    """
    from scipy import stats as st
    from scipy.optimize import brentq

    psi = float(discordance)
    if not (n_images > 0 and 0 < psi <= 1):
        return math.nan
    za = float(st.norm.ppf(1 - alpha / 2))
    zb = float(st.norm.ppf(power))

    def need(d: float) -> float:
        return (za * math.sqrt(psi) + zb * math.sqrt(max(0.0, psi - d * d))) ** 2 / (d * d) - n_images

    if need(psi) > 0:
        return math.inf
    return float(brentq(need, 1e-9, psi, xtol=1e-12))


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


def bound_flags(a: float, b: float, c: float) -> list[str]:
    """Plain-language flags for fitted parameters that ended on a bound of the fit.

    A floor ``c`` pinned at 0 means the points give no evidence of a floor (the fit wanted a
    negative one): the size for a target is then set by the exponent alone and is optimistic.
    """
    out = []
    if np.isfinite(c) and c <= 1e-9:
        out.append("floor c pinned at its lower bound 0 (no floor identified: sizes for a target are optimistic)")
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
) -> PowerLawBootstrap:
    """Fit the power law, then refit on bootstrap replicates that carry both kinds of noise.

    ``sizes``/``errors``: one value per run. ``correct`` (optional, ``(n_runs, n_images)``):
    each run's per-image correct/wrong on the shared evaluation set. Each replicate

    1. resamples the evaluation images once, for every run (they share the images, so the
       image noise moves all points together: mostly the level and the floor of the curve),
       and recomputes each run's error on that resample;
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
    ("1,104 images [1,104, 1,104]") that looks certain and is not. The fit is flagged
    unreliable (``reliable=False`` with ``reasons``) then, when it failed, when ``r2 < min_r2``,
    when only three sizes were fitted (three parameters through three means: nothing left to
    check the shape), when a parameter ends on a bound (:func:`bound_flags`), or when a
    target's size lies more than ``max_extrapolation`` times beyond the largest size or is
    unreachable. ``tests/test_stats_simulation.py`` measures the coverage of the target-size
    interval.
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
                                 runs_per_size=per_size)
    reasons = []
    if fit.r2 < min_r2:
        reasons.append(f"poor fit (R² = {fit.r2:.2f} < {min_r2})")
    if fit.n_sizes == 3:
        reasons.append("only 3 training sizes for 3 parameters: the fit cannot be checked")
    reasons += bound_flags(fit.a, fit.b, fit.c)
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
            w = rng.multinomial(n_img, np.full(n_img, 1.0 / n_img), size=n_boot).astype(np.float64)
            e_rep = e[None, :] + (correct.mean(1)[None, :] - w @ correct.T / n_img)
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
    targets, where = {}, {}
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
        if not np.isfinite(est):
            reasons.append(f"error {t:.3g} is below the fitted floor c = {fit.c:.3g}: unreachable by more data")
        elif est > max_extrapolation * n_max:
            reasons.append(
                f"error {t:.3g} needs ~{est:,.0f} images, {est / n_max:.1f}x the largest size measured ({n_max:,.0f})"
            )
    curves = np.zeros((0, 0))
    if grid.size and P.shape[0]:
        curves = np.clip(power_law(grid[None, :], P[:, :1], P[:, 1:2], P[:, 2:3]), 0.0, 1.0)
    return PowerLawBootstrap(
        fit, a_ci, b_ci, c_ci, targets, not reasons, tuple(reasons), curves, grid,
        where=where, runs_per_size=per_size, interval_note=note,
        c_at_bound_share=float(np.mean(P[:, 2] <= 1e-9)) if P.shape[0] else math.nan,
        eval_noise=correct is not None,
    )
