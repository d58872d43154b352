"""Synthetic sweeps with a known truth, for measuring what the report's statistics promise.

``tests/test_stats_simulation.py`` asserts the measured coverage and error rates;
``bench/bench_stats.py`` prints them at more replications for ``bench/RESULTS.md``. Every
generator takes a ``numpy.random.Generator`` and is vectorised over replications.

The data model is a crossed design, as in a sweep: S training runs (seeds: a subset draw and an
initialisation each) all scored on the same N evaluation images. Run s is right on image i when
a latent ``mu + a_s + b_i + e_si`` is positive (a probit model), with ``a_s ~ N(0, tau^2)`` the
run's skill, ``b_i ~ N(0, sigma_b^2)`` the image's easiness (shared by every run: the reason
image noise does not average out over seeds) and ``e_si ~ N(0, sigma_e^2)`` the run-image
interaction. The expected accuracy of a new run on a new image is then exactly
``Phi(mu / sqrt(tau^2 + sigma_b^2 + sigma_e^2))``, the estimand of the cell interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Crossed:
    """Variance components of one scenario (probit scale) and its true mean accuracy."""

    mu: float
    tau: float  # run-to-run (training) sd
    sigma_b: float  # image easiness sd (shared by all runs)
    sigma_e: float  # run x image interaction sd

    @property
    def truth(self) -> float:
        from scipy.stats import norm

        return float(norm.cdf(self.mu / math.sqrt(self.tau**2 + self.sigma_b**2 + self.sigma_e**2)))


def crossed_correct(rng: np.random.Generator, sc: Crossed, reps: int, seeds: int, images: int) -> np.ndarray:
    """``(reps, seeds, images)`` correct/wrong; a fresh evaluation set and fresh runs per rep."""
    a = rng.normal(0.0, sc.tau, size=(reps, seeds, 1))
    b = rng.normal(0.0, sc.sigma_b, size=(reps, 1, images))
    e = rng.normal(0.0, sc.sigma_e, size=(reps, seeds, images))
    return (sc.mu + a + b + e) > 0


def paired_null(rng: np.random.Generator, sc: Crossed, reps: int, seeds: int, images: int, *,
                sigma_g: float, rho_seed: float = 0.5, same_runs: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Two recipes A and B with EQUAL expected accuracy (the null of the paired test).

    Both see the same images (shared easiness ``b_i``) and pair on seeds (run skills correlated
    ``rho_seed``: same training subset); each also has its own per-image effect ``g_i ~ N(0,
    sigma_g^2)``, the same for all its seeds (which images a model finds hard): on a finite
    evaluation set that makes one model look better on every seed, a difference that is image
    noise. ``same_runs=True`` gives A and B the same run skills (the null of McNemar's test,
    which holds the trained models fixed).
    """
    shape_s = (reps, seeds, 1)
    z1 = rng.normal(size=shape_s)
    z2 = rng.normal(size=shape_s)
    a_a = sc.tau * z1
    a_b = a_a if same_runs else sc.tau * (rho_seed * z1 + math.sqrt(1 - rho_seed**2) * z2)
    b = rng.normal(0.0, sc.sigma_b, size=(reps, 1, images))
    g_a = rng.normal(0.0, sigma_g, size=(reps, 1, images))
    g_b = rng.normal(0.0, sigma_g, size=(reps, 1, images))
    ca = (sc.mu + a_a + b + g_a + rng.normal(0.0, sc.sigma_e, size=(reps, seeds, images))) > 0
    cb = (sc.mu + a_b + b + g_b + rng.normal(0.0, sc.sigma_e, size=(reps, seeds, images))) > 0
    return ca, cb


def correlated_pvalues(rng: np.random.Generator, reps: int, m: int, rho: float, effects: np.ndarray) -> np.ndarray:
    """Two-sided p-values of ``m`` z tests with equicorrelation ``rho`` and means ``effects`` (m,)."""
    from scipy.stats import norm

    common = rng.normal(size=(reps, 1))
    z = math.sqrt(rho) * common + math.sqrt(1 - rho) * rng.normal(size=(reps, m)) + np.asarray(effects)[None, :]
    return 2 * norm.sf(np.abs(z))


@dataclass(frozen=True)
class Curve:
    """A true learning curve ``error(n) = a n^-b + c`` and how runs scatter around it."""

    a: float = 2.0
    b: float = 0.5
    c: float = 0.05
    tau: float = 0.01  # run-to-run sd of a run's expected error
    rho: float = 0.6  # share of the per-image latent shared by all runs (image difficulty)

    def error(self, n):
        return self.a * np.power(np.asarray(n, dtype=np.float64), -self.b) + self.c

    def size_for(self, target_error: float) -> float:
        return float((self.a / (target_error - self.c)) ** (1.0 / self.b))


def curve_runs(rng: np.random.Generator, cv: Curve, sizes, seeds: int, images: int) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic sweep: ``(run sizes (R,), per-image correct (R, images))``.

    Run (n, s) has expected error ``e = error(n) + N(0, tau^2)`` over the image population; it
    is wrong on image i when ``sqrt(rho) u_i + sqrt(1 - rho) z_si < Phi^-1(e)``, with ``u_i``
    shared by every run (hard images are hard for all) and ``z_si`` its own, so its expected
    error over images is exactly ``e``.
    """
    from scipy.stats import norm

    sizes = np.repeat(np.asarray(sizes, dtype=np.float64), seeds)
    e = np.clip(cv.error(sizes) + rng.normal(0.0, cv.tau, size=sizes.size), 1e-4, 1 - 1e-4)
    u = rng.normal(size=(1, images))
    z = rng.normal(size=(sizes.size, images))
    wrong = math.sqrt(cv.rho) * u + math.sqrt(1 - cv.rho) * z < norm.ppf(e)[:, None]
    return sizes, ~wrong
