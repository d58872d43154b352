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


# ---------------------------------------------------------------------------------------------
# Measurements: each returns the rates it measured (and is what the tests assert on)
# ---------------------------------------------------------------------------------------------


def binomial_se(rate: float, reps: int) -> float:
    """Monte Carlo standard error of a measured rate."""
    return math.sqrt(max(rate * (1 - rate), 1e-12) / reps)


def _t_half(var_seed, var_image, df, level: float = 0.95):
    from scipy import stats as st

    return st.t.ppf((1 + level) / 2, df) * np.sqrt(var_seed + var_image)


def cell_coverage(sc: Crossed, *, reps: int, seeds: int, images: int, seed: int = 0, chunk: int = 250) -> dict:
    """Coverage of the cell interval (:func:`stats.two_level_ci_scores`, vectorised through
    :func:`stats.two_level_arrays`) and of the old seeds-only t-interval for the true expected
    accuracy, with a fresh evaluation set per rep."""
    from scipy import stats as st

    from lungray.report import stats

    rng = np.random.default_rng(seed)
    two = old = 0
    for start in range(0, reps, chunk):
        c = crossed_correct(rng, sc, min(chunk, reps - start), seeds, images).astype(np.float32)
        est, vs, vi, df = stats.two_level_arrays(c)
        two += int(np.sum(np.abs(est - sc.truth) <= _t_half(vs, vi, df)))
        half_old = st.t.ppf(0.975, seeds - 1) * np.sqrt(vs)
        old += int(np.sum(np.abs(est - sc.truth) <= half_old))
    return {"two_level": two / reps, "seeds_only": old / reps, "reps": reps}


def cell_coverage_with_stuck(sc: Crossed, *, p_stuck: float, reps: int, seeds: int, images: int, seed: int = 0) -> dict:
    """Runs collapse (a constant output, accuracy = the majority rate 0.5 on balanced labels)
    with probability ``p_stuck``. Measures how often the chance check flags a collapsed run
    (``recall``) and a working one (``false_flags``), and the coverage of the report's cell
    interval (working runs only) for the working runs' expected accuracy, next to that of the
    seeds-only t over all runs (the old table)."""
    from lungray.report import stats

    rng = np.random.default_rng(seed)
    c = crossed_correct(rng, sc, reps, seeds, images)
    y = np.arange(images) % 2
    stuck = rng.random((reps, seeds)) < p_stuck
    hits = flags_true = n_true = flags_false = n_false = 0
    cov_new = cov_old = n_cov = 0
    const = np.tile([0.55, 0.45], (images, 1))
    for r in range(reps):
        runs = np.where(stuck[r][:, None], (y == 0)[None, :], c[r])
        flagged = np.zeros(seeds, bool)
        for s in range(seeds):
            if stuck[r, s]:
                probs = const
            else:
                pt = np.where(runs[s], 0.75, 0.25)
                probs = np.stack([np.where(y == 0, pt, 1 - pt), np.where(y == 1, pt, 1 - pt)], 1)
            flagged[s] = stats.chance_check(y, probs).stuck
        flags_true += int((flagged & stuck[r]).sum())
        n_true += int(stuck[r].sum())
        flags_false += int((flagged & ~stuck[r]).sum())
        n_false += int((~stuck[r]).sum())
        if stuck[r].any():
            use = runs[~flagged] if (~flagged).sum() >= 2 else None
            if use is not None:
                n_cov += 1
                cov_new += stats.two_level_ci_scores(use.astype(np.float64)).covers(sc.truth)
                cov_old += stats.mean_ci(runs.mean(1)).covers(sc.truth)
    return {"recall": flags_true / max(1, n_true), "false_flags": flags_false / max(1, n_false),
            "coverage_working": cov_new / max(1, n_cov), "coverage_old_all_runs": cov_old / max(1, n_cov),
            "reps_with_stuck": n_cov}


def paired_size(sc: Crossed, *, sigma_g: float, reps: int, seeds: int, images: int, alpha: float = 0.05,
                seed: int = 0, chunk: int = 250) -> dict:
    """Type-I error at ``alpha`` of the report's paired test (:func:`stats.paired_test`,
    vectorised through :func:`stats.two_level_arrays`) and of the paired t on per-seed
    differences (seeds only), under the null of equal expected accuracy."""
    from scipy import stats as st

    from lungray.report import stats

    rng = np.random.default_rng(seed)
    new = old = 0
    for start in range(0, reps, chunk):
        ca, cb = paired_null(rng, sc, min(chunk, reps - start), seeds, images, sigma_g=sigma_g)
        d = ca.astype(np.float32) - cb.astype(np.float32)
        est, vs, vi, df = stats.two_level_arrays(d)
        with np.errstate(invalid="ignore", divide="ignore"):
            t = np.abs(est) / np.sqrt(vs + vi)
            t_old = np.abs(est) / np.sqrt(vs)
        new += int(np.sum(2 * st.t.sf(t, df) < alpha))
        old += int(np.sum(2 * st.t.sf(t_old, seeds - 1) < alpha))
    return {"paired_test": new / reps, "seeds_only_t": old / reps, "reps": reps}


def mcnemar_size(sc: Crossed, *, sigma_g: float, reps: int, seeds: int, images: int, alpha: float = 0.05,
                 seed: int = 0) -> dict:
    """Type-I error of the clustered McNemar and of pooling the seeds' tables as independent
    (one exact McNemar on all image-runs), under McNemar's null: A's and B's trained runs
    equally good (same run skills), images random."""
    from lungray.report import stats

    rng = np.random.default_rng(seed)
    ca, cb = paired_null(rng, sc, reps, seeds, images, sigma_g=sigma_g, same_runs=True)
    clus = pooled = 0
    for r in range(reps):
        clus += stats.mcnemar_clustered(ca[r], cb[r]).p < alpha
        pooled += stats.mcnemar_exact(ca[r].ravel(), cb[r].ravel())[2] < alpha
    return {"clustered": clus / reps, "pooled_as_independent": pooled / reps, "reps": reps}


def multiplicity(*, reps: int, m: int, rho: float, n_true: int = 0, effect: float = 3.0, alpha: float = 0.05,
                 seed: int = 0) -> dict:
    """Family-wise error (any false rejection) and false discovery rate of unadjusted, Holm and
    Benjamini-Hochberg decisions over ``m`` equicorrelated tests, ``n_true`` of them real."""
    from lungray.report import stats

    rng = np.random.default_rng(seed)
    eff = np.zeros(m)
    eff[:n_true] = effect
    p = correlated_pvalues(rng, reps, m, rho, eff)
    null = eff == 0
    out = {"reps": reps, "m": m}
    for name, adj in (("unadjusted", lambda x: x), ("holm", stats.holm), ("bh", stats.benjamini_hochberg)):
        rej = np.stack([adj(row) for row in p]) < alpha
        false = (rej & null[None, :]).sum(1)
        out[f"fwer_{name}"] = float(np.mean(false > 0))
        out[f"fdr_{name}"] = float(np.mean(false / np.maximum(1, rej.sum(1))))
    return out


def target_coverage(cv: Curve, *, sizes, seeds: int, images: int, target_error: float, reps: int,
                    n_boot: int = 300, eval_noise: bool = True, seed: int = 0) -> dict:
    """Coverage of the report's interval for the training size reaching ``target_error``
    (:func:`stats.bootstrap_power_law`) for the true size, and how often it is undefined."""
    from lungray.report import stats

    rng = np.random.default_rng(seed)
    truth = cv.size_for(target_error)
    cov = defined = 0
    widths = []
    for r in range(reps):
        n, correct = curve_runs(rng, cv, sizes, seeds, images)
        err = 1 - correct.mean(1)
        res = stats.bootstrap_power_law(n, err, correct=correct if eval_noise else None,
                                        target_errors=[target_error], n_boot=n_boot, seed=r)
        ci = res.targets[target_error]
        if np.isfinite(ci.low):
            defined += 1
            cov += ci.low <= truth <= ci.high
            widths.append(ci.high / max(ci.low, 1e-9))
    return {"coverage": cov / max(1, defined), "defined": defined / reps, "truth": truth,
            "median_high_over_low": float(np.median(widths)) if widths else math.nan, "reps": reps}


def mdd_power(*, n_images: int, discordance: float, reps: int, alpha: float = 0.05, power: float = 0.8,
              seed: int = 0) -> dict:
    """Measured power of McNemar's test at the difference :func:`stats.mcnemar_detectable_difference`
    says is detectable: paired outcomes with P(only A right) = (psi + d)/2, P(only B right) = (psi - d)/2."""
    from scipy import stats as st

    from lungray.report import stats

    rng = np.random.default_rng(seed)
    d = stats.mcnemar_detectable_difference(n_images, discordance, alpha, power)
    probs = [(discordance + d) / 2, (discordance - d) / 2, 1 - discordance]
    counts = rng.multinomial(n_images, probs, size=reps)
    b, c = counts[:, 0], counts[:, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        z2 = np.where(b + c > 0, (b - c) ** 2 / (b + c), 0.0)
    asym = float(np.mean(st.chi2.sf(z2, 1) < alpha))
    exact = float(np.mean([2 * st.binom.cdf(min(x, y), x + y, 0.5) < alpha if x + y else False for x, y in zip(b, c)]))
    return {"difference": d, "power_asymptotic": asym, "power_exact": exact, "reps": reps}


def binom_coverage(*, n: int, p: float, method: str, reps: int = 0) -> float:
    """Exact coverage of :func:`stats.binom_ci` at (n, p): the binomial probability of the k
    whose interval holds p (no simulation needed)."""
    from scipy import stats as st

    from lungray.report import stats

    ks = np.arange(n + 1)
    hold = np.array([stats.binom_ci(int(k), n, method=method).covers(p) for k in ks])
    return float(st.binom.pmf(ks, n, p)[hold].sum())
