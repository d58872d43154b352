"""Paired comparisons of two recipes on the same subsets (seeds) and the same evaluation images.

* :func:`paired_test` - the difference in a per-image score with both noise terms (seeds and
  images), the report's verdict;
* :func:`mcnemar_exact`, :func:`mcnemar_clustered` - exact McNemar on one seed, and one test over
  all seeds with the image as the cluster;
* :func:`mcnemar_detectable_difference` - the test-set adequacy line (the smallest gap the
  evaluation set can resolve).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from lungray.report.stats.intervals import two_level_ci_scores

__all__ = ["PairedTest", "paired_test", "mcnemar_exact", "McNemarResult", "mcnemar_clustered", "mcnemar_detectable_difference"]


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
