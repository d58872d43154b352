"""Paired comparisons of two recipes on the same subsets (seeds) and the same evaluation images.

* :func:`paired_test`, :func:`paired_arrays` - the difference in a per-image score with both
  noise terms (seeds and images, or patients), the report's verdict; its reference
  distribution is the fiducial (Fisher-Behrens) mixture of :func:`fiducial_sf`, whose tail
  holds down to the levels Holm's correction uses;
* :func:`mcnemar_exact`, :func:`mcnemar_clustered` - exact McNemar on one seed, and one test over
  all seeds with the image as the cluster;
* :func:`mcnemar_detectable_difference` - the test-set adequacy line (the smallest gap the
  evaluation set can resolve).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from lungray.report.stats.intervals import two_level_arrays, unit_codes

__all__ = ["PairedTest", "paired_test", "paired_arrays", "fiducial_sf", "fiducial_half", "mcnemar_exact", "McNemarResult",
           "mcnemar_clustered", "mcnemar_detectable_difference"]


@dataclass(frozen=True)
class PairedTest:
    """Mean difference A - B of a per-image score over paired runs and shared images.

    ``diff``/``low``/``high`` are in the units of the score (accuracy: a fraction). ``p`` is the
    two-sided p-value of the variance-components test (:func:`paired_test`), ``df`` the degrees
    of freedom of the Student t with the same 95 % multiplier (for reading only: the test uses
    the fiducial mixture), ``var_seed``/``var_image`` the two parts of the variance of ``diff``.
    ``unit`` is what the evaluation noise was resampled by (``"image"`` or ``"patient"``).
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
    unit: str = "image"
    n_units: int = 0

    @property
    def significant(self) -> bool:
        """Unadjusted: the interval excludes 0 (the report decides on the Holm-adjusted p)."""
        return bool(np.isfinite(self.low) and (self.low > 0 or self.high < 0))


_V, _W = np.polynomial.legendre.leggauss(96)
_NODES: dict = {}


def _chi2_nodes(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature over ``U ~ chi2_k / k``: nodes ``U_j`` and weights on the probability scale
    ``u``, Gauss-Legendre on ``[0.2, 1]`` and, with ``u = 0.2 v**8``, on ``[0, 0.2]``, so that the
    small-``U`` end (a seed variance far above its estimate: the tail of the test) is resolved
    down to ``u ~ 1e-30``; against Student's t the p-values agree to a relative 2e-6."""
    if k not in _NODES:
        from scipy.special import gammaincinv

        v = (_V + 1) / 2
        cut = 0.2
        u = np.r_[cut * v**8, cut + (1 - cut) * v]
        w = np.r_[_W / 2 * cut * 8 * v**7, _W / 2 * (1 - cut)]
        _NODES[k] = (2 * gammaincinv(k / 2, u) / k, w)  # the chi2_k quantile at u, accurate for tiny u
    return _NODES[k]


def fiducial_sf(h, var_seed, var_image, k: int) -> np.ndarray:
    """``P(|X| > h)`` for ``X = Z * sqrt(var_seed / U + var_image)``, ``Z ~ N(0, 1)``,
    ``U ~ chi2_k / k`` (vectorised): the two-sided p-value of an estimate ``h`` away from 0.

    The seed part of the variance is estimated from ``k = S - 1`` degrees of freedom, the image
    part from hundreds: this is Fisher's fiducial (Behrens-Fisher) distribution of the
    difference with the image part taken as known. With ``var_image = 0`` it is exactly
    Student's t with k degrees of freedom, with ``var_seed = 0`` the normal. Why not the
    Satterthwaite t the cell interval uses: with 3 seeds the seed variance is estimated at less
    than a tenth of its value 1 time in 10; Satterthwaite's degrees of freedom then jump (the
    image part looks dominant) and the t quantile shrinks exactly when the variance is already
    too small. At the 0.05 level that cost little, but Holm's correction over 15 comparisons
    tests at 0.0033, where it rejected 2.5-3.5 times too often (family-wise error 0.10 instead
    of 0.05, issue 19); the fiducial mixture integrates over the seed variance instead of
    plugging one value in, and holds its level at 0.05, 0.01, 0.0033 and 0.001 with 2-5 seeds
    (``tests/test_stats_simulation.py``).
    """
    u, w = _chi2_nodes(int(k))
    th = np.asarray(var_seed, dtype=np.float64)[..., None] / u + np.asarray(var_image, dtype=np.float64)[..., None]
    from scipy.special import ndtr

    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.asarray(h, dtype=np.float64)[..., None] / np.sqrt(th)
    tail = np.where(th > 0, 2 * ndtr(-np.abs(z)), np.where(np.asarray(h)[..., None] == 0, 1.0, 0.0))
    return np.where(np.asarray(h) == 0, 1.0, np.clip((tail * w).sum(-1), 0.0, 1.0))


def fiducial_half(var_seed, var_image, k: int, level: float = 0.95) -> np.ndarray:
    """Half-width ``h`` with ``fiducial_sf(h, ...) = 1 - level`` (vectorised bisection): the
    interval that agrees with the test (it excludes 0 exactly when ``p < 1 - level``)."""
    from scipy.special import ndtri, stdtrit

    vs = np.asarray(var_seed, dtype=np.float64)
    vi = np.asarray(var_image, dtype=np.float64)
    alpha = 1.0 - level
    hi = stdtrit(k, 1 - alpha / 2) * np.sqrt(vs) + ndtri(1 - alpha / 2) * np.sqrt(vi)
    lo = np.zeros(np.broadcast(vs, vi).shape)
    hi = np.broadcast_to(hi, lo.shape).copy()
    for _ in range(60):
        mid = (lo + hi) / 2
        wide = fiducial_sf(mid, vs, vi, k) > alpha
        lo, hi = np.where(wide, mid, lo), np.where(wide, hi, mid)
    return (lo + hi) / 2


def _equivalent_df(mult: np.ndarray, k: int, level: float) -> np.ndarray:
    """Degrees of freedom of the Student t whose ``level`` quantile is ``mult`` (for the table:
    the fiducial interval reads as a t interval with this many df)."""
    from scipy.special import ndtri, stdtrit

    q = (1 + level) / 2
    mult = np.asarray(mult, dtype=np.float64)
    lo, hi = np.full(mult.shape, math.log(k * 0.999)), np.full(mult.shape, math.log(1e7))
    for _ in range(50):
        mid = (lo + hi) / 2
        big = stdtrit(np.exp(mid), q) > mult
        lo, hi = np.where(big, mid, lo), np.where(big, hi, mid)
    df = np.exp((lo + hi) / 2)
    return np.where(mult <= ndtri(q) * (1 + 1e-9), np.inf, df)


def paired_arrays(diffs: np.ndarray, groups: Optional[np.ndarray] = None, level: float = 0.95,
                  discrete: Optional[bool] = None, interval: bool = True):
    """The paired test on per-image differences ``(..., seeds, images)``, vectorised over
    leading axes: ``(diff, low, high, p, var_seed, var_image, df)`` (what :func:`paired_test`
    returns for one comparison, and what the simulations measure).

    ``groups``: unit codes (:func:`~lungray.report.stats.intervals.unit_codes`; patients).
    ``discrete`` (auto: integer differences, i.e. right/wrong scores): the per-seed mean
    differences then lie on a grid of ``1/N``, and two seeds can tie EXACTLY, which a
    continuous score never does; a seed variance of exactly 0 would leave only the image part
    (with 2 seeds that happened in 1-3 % of null comparisons, all "significant"). The seed
    variance gets the grid's rounding variance ``1/(12 N^2)`` per seed mean (Sheppard 1898),
    which only matters at such ties. ``interval=False`` skips the interval and its df (NaN):
    the p-value alone, for simulations of thousands of families.
    """
    d = np.asarray(diffs, dtype=np.float64)
    n_s, n_i = d.shape[-2], d.shape[-1]
    est, vs, vi, _ = two_level_arrays(d, groups)
    if discrete is None:
        discrete = bool(np.all(d == np.round(d)))
    # two models identical on every image and seed differ by exactly 0: nothing to round
    vs_t = vs + np.where((d != 0).any((-1, -2)), 1.0 / (12.0 * n_i * n_i * n_s), 0.0) if discrete else vs
    k = n_s - 1
    p = fiducial_sf(np.abs(est), vs_t, vi, k)
    if not interval:
        nan = np.full(np.shape(est), np.nan)
        return est, nan, nan, p, vs, vi, nan
    half = fiducial_half(vs_t, vi, k, level)
    with np.errstate(invalid="ignore", divide="ignore"):
        mult = half / np.sqrt(vs_t + vi)
    df = _equivalent_df(np.where(np.isfinite(mult), mult, 0.0), k, level)
    return est, est - half, est + half, p, vs, vi, df


def paired_test(score_a: np.ndarray, score_b: np.ndarray, level: float = 0.95,
                bounds: Optional[tuple[float, float]] = None, groups: Optional[Sequence] = None) -> PairedTest:
    """Is recipe A better than recipe B? A test on the paired differences whose variance holds
    both the run-to-run and the evaluation-image term.

    ``score_a``/``score_b`` are ``(n_seeds, n_images)`` per-image scores (1/0 correct), row s of
    both from models trained on the SAME subset (seed), column i the same evaluation image.
    The per-image differences ``d_si`` go through the variance components of the cell interval
    (:func:`~lungray.report.stats.intervals.two_level_arrays`): the seed part (the paired
    t on per-seed differences) plus the image part (the evaluation set is a sample too: a gap
    between two models that comes from which images happened to be drawn is shared by every
    seed, so more seeds cannot average it away); ``groups`` (one patient label per image)
    resamples the image part by patient. The reference distribution is the fiducial mixture
    of :func:`fiducial_sf` (why: there), and the interval its inversion, so the interval
    excludes 0 exactly when ``p < 1 - level``. Why not the paired bootstrap this replaced: a
    bootstrap over 3 seeds sees at most 10 distinct resamples and a variance (S-1)/S too
    small; its measured type-I error was 0.08-0.13 at a nominal 0.05 (issue 11).
    ``tests/test_stats_simulation.py`` measures the size of this test, alone and as a Holm
    family. ``bounds`` clips the interval (not the test) to the range of a difference, e.g.
    ``(-1, 1)`` for accuracies.
    """
    a = np.asarray(score_a, dtype=np.float64)
    b = np.asarray(score_b, dtype=np.float64)
    if a.ndim == 1:
        a, b = a[None, :], b[None, :]
    if a.shape != b.shape:
        raise ValueError(f"paired scores must have the same (seeds, images) shape, got {a.shape} and {b.shape}")
    n_s, n_i = a.shape
    codes = unit_codes(groups, n_i) if groups is not None and n_i else None
    unit, n_units = ("patient", int(codes.max()) + 1) if codes is not None else ("image", n_i)
    if n_s < 2 or n_units < 2:
        est = float((a - b).mean()) if a.size else math.nan
        return PairedTest(est, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, n_s, n_i, level, unit, n_units)
    est, lo, hi, p, vs, vi, df = (float(v) for v in paired_arrays(a - b, codes, level))
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return PairedTest(est, lo, hi, p, df, vs, vi, n_s, n_i, level, unit, n_units)


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


def mcnemar_clustered(correct_a: np.ndarray, correct_b: np.ndarray, groups: Optional[Sequence] = None) -> McNemarResult:
    """ONE exact McNemar test over all seeds, with the evaluation image (or, with ``groups``,
    the patient: all its images) as the cluster.

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
    :func:`paired_test`, which is the report's only verdict. Under the recipes' null (A and B
    equally good on NEW runs) it rejects 0.46-0.59 of comparisons when seed noise dominates
    (issue 19): it answers a different question, and the report keeps it in a detail table.
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
    codes = unit_codes(groups, e.size) if groups is not None else None
    if codes is not None:  # one cluster per patient: the sum over its images
        e = np.bincount(codes, weights=e, minlength=int(codes.max()) + 1).astype(np.int64)
    absval = np.abs(e)
    m = np.bincount(absval, minlength=2)
    n_disc = int((absval > 0).sum())
    if n_disc == 0:
        return McNemarResult(b, c, 1.0, 0, n_s)
    # U = sum_k k * X_k, X_k ~ Bin(m_k, 1/2); T = 2 U - sum_k k m_k
    pmf = np.ones(1)
    for k in range(1, m.size):
        if m[k] == 0:
            continue
        part = np.zeros(k * m[k] + 1)
        part[::k] = st.binom.pmf(np.arange(m[k] + 1), m[k], 0.5)
        pmf = np.convolve(pmf, part)
    total = sum(k * m[k] for k in range(1, m.size))
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
