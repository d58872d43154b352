"""Synthetic sweeps with a known truth, for measuring what the report's statistics promise.

``tests/test_stats_simulation.py`` asserts the measured coverage and error rates;
``bench/bench_stats.py`` prints them at more replications for ``bench/RESULTS.md``. Every
generator takes a ``numpy.random.Generator`` and is vectorised over replications. Every
measurement calls the report's own functions: the vectorised forms the report's per-cell
functions are built on (:func:`lungray.report.stats.two_level_bounds`,
:func:`~lungray.report.stats.paired_arrays`), and, for the family of paired comparisons and
the runs that count, :mod:`lungray.report.tables` itself on in-memory sweeps
(:func:`sweep_of`).

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
from typing import Optional

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
    """Coverage of the cell interval of accuracy (:func:`stats.two_level_ci_scores`, vectorised
    as :func:`stats.two_level_bounds`, logit scale) and of the old seeds-only t-interval for the
    true expected accuracy, with a fresh evaluation set per rep; ``zero_width``: the share of
    intervals of width 0."""
    from scipy import stats as st

    from lungray.report import stats

    rng = np.random.default_rng(seed)
    two = old = zero = 0
    for start in range(0, reps, chunk):
        c = crossed_correct(rng, sc, min(chunk, reps - start), seeds, images).astype(np.float64)
        est, lo, hi, vs, vi, df = stats.two_level_bounds(c, proportion=True)
        two += int(np.sum((lo <= sc.truth) & (sc.truth <= hi)))
        zero += int(np.sum(hi - lo <= 0))
        half_old = st.t.ppf(0.975, seeds - 1) * np.sqrt(c.mean(-1).var(-1, ddof=1) / seeds)
        old += int(np.sum(np.abs(est - sc.truth) <= half_old))
    return {"two_level": two / reps, "seeds_only": old / reps, "zero_width": zero / reps, "reps": reps}


def _probs_of(correct: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two-class probabilities whose argmax is right exactly where ``correct`` is, with a random
    confidence per image (so that scores rank and vary as a real model's do)."""
    conf = rng.uniform(0.55, 0.95, size=correct.shape)
    pt = np.where(correct, conf, 1 - conf)
    return np.stack([np.where(y == 0, pt, 1 - pt), np.where(y == 1, pt, 1 - pt)], -1)


def cell_coverage_with_stuck(sc: Crossed, *, p_stuck: float, reps: int, seeds: int, images: int, seed: int = 0,
                             old_rule: bool = True) -> dict:
    """Runs collapse (a constant output, accuracy = the majority rate 0.5 on balanced labels)
    with probability ``p_stuck``. Measures, through the report's own tables
    (:func:`lungray.report.tables.add_derived` and :func:`~lungray.report.tables.summarise` on
    each simulated cell), how often a collapsed run is flagged degenerate (``recall``) and a
    working one flagged or left out (``false_flags``), and over the ``cells`` with at least two
    working runs the bias of the cell mean for the working runs' expected accuracy, the
    coverage of its interval and the share of cells with no interval; ``old_*`` the same for
    the chance test the rule replaced (:func:`stats.chance_check`)."""
    import pandas as pd

    from lungray.report import stats, tables

    rng = np.random.default_rng(seed)
    c = crossed_correct(rng, sc, reps, seeds, images)
    y = np.arange(images) % 2
    stuck = rng.random((reps, seeds)) < p_stuck
    const = np.tile([0.55, 0.45], (images, 1))
    ids = np.array([f"img{i:05d}" for i in range(images)])
    tp = fp = n_t = n_f = 0
    old_tp = old_fp = 0
    cov = n_cov = no_ci = 0
    bias, old_bias, old_cov, old_no = [], [], 0, 0
    for r in range(reps):
        preds, rows = {}, []
        for s_ in range(seeds):
            probs = const if stuck[r, s_] else _probs_of(c[r, s_], y, rng)
            rid = f"r{s_}"
            preds[rid] = (ids, y, probs)
            rows.append({"run_id": rid, "state": "complete", "model": "m", "optimizer": "adam", "train_size": 100,
                         "seed": s_, "test_accuracy": float(np.mean(probs.argmax(1) == y))})
        runs = tables.add_derived(_RunsOnly(pd.DataFrame(rows)), preds)
        summ = tables.summarise(runs, ("accuracy",), predictions=preds)
        row = summ.iloc[0]
        flagged = runs["degenerate"].to_numpy() != ""
        left_out = ~runs["counted"].to_numpy()
        tp += int((flagged & stuck[r]).sum())
        fp += int(((flagged | left_out) & ~stuck[r]).sum())
        n_t += int(stuck[r].sum())
        n_f += int((~stuck[r]).sum())
        old = np.array([stats.chance_check(y, preds[f"r{s_}"][2]).stuck for s_ in range(seeds)])
        old_tp += int((old & stuck[r]).sum())
        old_fp += int((old & ~stuck[r]).sum())
        if (~stuck[r]).sum() >= 2:
            n_cov += 1
            if np.isfinite(row["ci_low"]):
                cov += bool(row["ci_low"] <= sc.truth <= row["ci_high"])
            else:
                no_ci += 1
            bias.append(row["mean"] - sc.truth)
            use = ~old if (~old).any() else np.ones(seeds, bool)  # the old rule: chance-flagged runs left out
            if use.sum() >= 2:
                right = np.stack([preds[f"r{s_}"][2].argmax(1) == y for s_ in np.flatnonzero(use)]).astype(float)
                ci = stats.two_level_ci_scores(right, bounds=(0.0, 1.0))
                old_cov += bool(ci.covers(sc.truth))
                old_bias.append(ci.estimate - sc.truth)
            else:
                old_no += 1
    return {"recall": tp / max(1, n_t), "false_flags": fp / max(1, n_f),
            "old_recall": old_tp / max(1, n_t), "old_false_flags": old_fp / max(1, n_f),
            "coverage_working": cov / max(1, n_cov), "no_interval": no_ci / max(1, n_cov),
            "bias": float(np.mean(bias)) if bias else math.nan,
            "old_coverage": old_cov / max(1, n_cov), "old_no_interval": old_no / max(1, n_cov),
            "old_bias": float(np.mean(old_bias)) if old_bias else math.nan,
            "cells": n_cov}


class _RunsOnly:
    """The attributes of a Sweep that :func:`lungray.report.tables.add_derived` reads."""

    def __init__(self, runs):
        import pandas as pd

        self.runs = runs
        self.histories = pd.DataFrame(columns=["run_id", "key", "step", "value"])


def paired_size(sc: Crossed, *, sigma_g: float, reps: int, seeds: int, images: int, alpha: float = 0.05,
                seed: int = 0, chunk: int = 250, levels=(0.01, 0.05 / 15, 0.001)) -> dict:
    """Type-I error at ``alpha`` of the report's paired test (:func:`stats.paired_test`,
    vectorised as :func:`stats.paired_arrays`) and of the paired t on per-seed differences
    (seeds only), under the null of equal expected accuracy; ``p<x``: the share of p-values
    below each of ``levels`` (the tail Holm's correction uses), ``satterthwaite p<x`` the same for
    the test before issue 19 (guarded Satterthwaite t)."""
    from scipy import stats as st

    from lungray.report import stats

    rng = np.random.default_rng(seed)
    new = old = 0
    tail = dict.fromkeys(levels, 0)
    old_tail = dict.fromkeys(levels, 0)
    for start in range(0, reps, chunk):
        ca, cb = paired_null(rng, sc, min(chunk, reps - start), seeds, images, sigma_g=sigma_g)
        d = ca.astype(np.float64) - cb.astype(np.float64)
        p = stats.paired_arrays(d, interval=False)[3]
        new += int(np.sum(p < alpha))
        est, vs, vi, df = stats.two_level_arrays(d)  # the test before issue 19: guarded Satterthwaite t
        with np.errstate(invalid="ignore", divide="ignore"):
            p_sat = np.where(vs + vi > 0, 2 * st.t.sf(np.abs(est) / np.sqrt(vs + vi), df), np.where(est == 0, 1.0, 0.0))
        for a in levels:
            tail[a] += int(np.sum(p < a))
            old_tail[a] += int(np.sum(p_sat < a))
        dm = d.mean(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            t_old = np.abs(dm.mean(-1)) / np.sqrt(dm.var(-1, ddof=1) / seeds)
        old += int(np.sum(2 * st.t.sf(t_old, seeds - 1) < alpha))
    return {"paired_test": new / reps, "seeds_only_t": old / reps, "reps": reps, **{f"p<{a:.2g}": v / reps for a, v in tail.items()},
            **{f"satterthwaite p<{a:.2g}": v / reps for a, v in old_tail.items()}}


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


# ---------------------------------------------------------------------------------------------
# Issue 19: patients with several images, the report's own family of paired tests, the ceiling,
# the pointing game's best fixed point, verdicts per target
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clustered:
    """The crossed design with the evaluation images grouped by patient: run s on image i of
    patient g is right when ``mu + a_s + p_g + q_sg + b_i + e_si > 0``, with ``p_g ~ N(0,
    sigma_p^2)`` the patient (shared by all his images and all runs) and ``q_sg ~ N(0,
    sigma_q^2)`` a run x patient interaction. ``heavy``: the patient effect is Student t with 4
    degrees of freedom (scaled to the same sd) and patients have 1 to 2m-1 images, a second
    generator the clustered interval was not tuned on."""

    mu: float
    tau: float
    sigma_p: float
    sigma_q: float
    sigma_b: float
    sigma_e: float
    heavy: bool = False

    @property
    def truth(self) -> float:
        from scipy import integrate
        from scipy.stats import norm, t

        rest = math.sqrt(self.tau**2 + self.sigma_q**2 + self.sigma_b**2 + self.sigma_e**2)
        if not self.heavy:
            return float(norm.cdf(self.mu / math.sqrt(rest**2 + self.sigma_p**2)))
        sc = self.sigma_p / math.sqrt(2.0)  # t_4 has variance 2
        f = lambda u: norm.cdf((self.mu + sc * u) / rest) * t.pdf(u, 4)  # noqa: E731
        return float(integrate.quad(f, -np.inf, np.inf)[0])


def patient_sizes(rng: np.random.Generator, patients: int, per_patient: int, heavy: bool) -> np.ndarray:
    """Images per patient: all ``per_patient``, or (``heavy``) 1 to ``2 per_patient - 1``."""
    if not heavy:
        return np.full(patients, per_patient)
    return rng.integers(1, 2 * per_patient, size=patients)


def clustered_correct(rng: np.random.Generator, sc: Clustered, reps: int, seeds: int, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``((reps, seeds, images) correct, (images,) patient codes)``: fresh patients, images and
    runs per rep; ``sizes`` images per patient (the same layout every rep)."""
    codes = np.repeat(np.arange(sizes.size), sizes)
    g = sizes.size
    a = rng.normal(0.0, sc.tau, size=(reps, seeds, 1))
    if sc.heavy:
        pg = rng.standard_t(4, size=(reps, 1, g)) * sc.sigma_p / math.sqrt(2.0)
    else:
        pg = rng.normal(0.0, sc.sigma_p, size=(reps, 1, g))
    q = rng.normal(0.0, sc.sigma_q, size=(reps, seeds, g))
    b = rng.normal(0.0, sc.sigma_b, size=(reps, 1, codes.size))
    e = rng.normal(0.0, sc.sigma_e, size=(reps, seeds, codes.size))
    return (sc.mu + a + (pg + q)[..., codes] + b + e) > 0, codes


def clustered_coverage(sc: Clustered, *, reps: int, seeds: int, patients: int, per_patient: int, seed: int = 0,
                       chunk: int = 200) -> dict:
    """Coverage of the cell interval of accuracy resampled by patient (``patient``) and by image
    as if independent (``image``, the interval before issue 19), both through the report's
    :func:`stats.two_level_bounds`."""
    from lungray.report import stats

    rng = np.random.default_rng(seed)
    sizes = patient_sizes(rng, patients, per_patient, sc.heavy)
    truth = sc.truth
    hit = {"patient": 0, "image": 0}
    width = {"patient": 0.0, "image": 0.0}
    for start in range(0, reps, chunk):
        c, codes = clustered_correct(rng, sc, min(chunk, reps - start), seeds, sizes)
        c = c.astype(np.float64)
        for name, g in (("patient", codes), ("image", None)):
            _, lo, hi, *_ = stats.two_level_bounds(c, g, proportion=True)
            hit[name] += int(np.sum((lo <= truth) & (truth <= hi)))
            width[name] += float(np.sum(hi - lo))
    return {"patient": hit["patient"] / reps, "image": hit["image"] / reps, "truth": truth,
            "width_ratio": width["patient"] / max(width["image"], 1e-12), "reps": reps, "images": int(sizes.sum())}


def clustered_paired_size(sc: Clustered, *, sigma_g: float, reps: int, seeds: int, patients: int, per_patient: int,
                          alpha: float = 0.05, seed: int = 0, chunk: int = 200) -> dict:
    """Type-I error of the paired test (:func:`stats.paired_arrays`) with the image term by
    patient and by image, for two equally good recipes on patients with several images: each
    recipe has its own per-patient effect (``sigma_g``: which patients a model finds hard)."""
    from lungray.report import stats

    rng = np.random.default_rng(seed)
    sizes = patient_sizes(rng, patients, per_patient, sc.heavy)
    rej = {"patient": 0, "image": 0}
    for start in range(0, reps, chunk):
        r = min(chunk, reps - start)
        codes = np.repeat(np.arange(sizes.size), sizes)
        a = rng.normal(0.0, sc.tau, size=(r, seeds, 1))
        gA = rng.normal(0.0, sigma_g, size=(r, 1, sizes.size))[..., codes]
        gB = rng.normal(0.0, sigma_g, size=(r, 1, sizes.size))[..., codes]
        base = rng.normal(0.0, sc.sigma_p, size=(r, 1, sizes.size))[..., codes] + rng.normal(0.0, sc.sigma_b, size=(r, 1, codes.size))
        ca = (sc.mu + a + base + gA + rng.normal(0.0, sc.sigma_e, size=(r, seeds, codes.size))) > 0
        cb = (sc.mu + rng.normal(0.0, sc.tau, size=(r, seeds, 1)) + base + gB
              + rng.normal(0.0, sc.sigma_e, size=(r, seeds, codes.size))) > 0
        d = ca.astype(np.float64) - cb.astype(np.float64)
        for name, g in (("patient", codes), ("image", None)):
            rej[name] += int(np.sum(stats.paired_arrays(d, g, interval=False)[3] < alpha))
    return {k: v / reps for k, v in rej.items()} | {"reps": reps}


@dataclass(frozen=True)
class Family:
    """A sweep's family of paired comparisons under planted truth: ``models`` x ``sizes`` cells,
    ``seeds`` runs each, all scored on ONE evaluation set (as in a sweep). Run s of model m at
    size z is right on image i when ``mu_z + delta_mz + a_mzs + b_i + g_mi + e_mzsi > 0``:
    ``a`` the run's skill (``tau``; correlated ``rho_seed`` across models, which train on the
    same subset), ``b_i`` the image's easiness (shared by everything), ``g_mi`` model m's own
    image effects (``sigma_g``; the same at every size: an architecture finds the same images
    hard), ``e`` the interaction. ``effects`` (models,) planted differences ``delta_m`` in
    probit units (all 0: the global null)."""

    models: int = 3
    sizes: int = 5
    tau: float = 0.15
    sigma_b: float = 1.0
    sigma_g: float = 0.4
    sigma_e: float = 0.8
    rho_seed: float = 0.5
    effects: tuple = ()

    def mu(self) -> np.ndarray:
        return np.linspace(0.4, 1.3, self.sizes)


def family_correct(rng: np.random.Generator, fam: Family, reps: int, seeds: int, images: int) -> np.ndarray:
    """``(reps, models, sizes, seeds, images)`` right/wrong of one family per rep."""
    m, z = fam.models, fam.sizes
    shared = rng.normal(size=(reps, 1, z, seeds, 1))
    own = rng.normal(size=(reps, m, z, seeds, 1))
    a = fam.tau * (math.sqrt(fam.rho_seed) * shared + math.sqrt(1 - fam.rho_seed) * own)
    b = rng.normal(0.0, fam.sigma_b, size=(reps, 1, 1, 1, images))
    g = rng.normal(0.0, fam.sigma_g, size=(reps, m, 1, 1, images))
    e = rng.normal(0.0, fam.sigma_e, size=(reps, m, z, seeds, images))
    delta = np.zeros(m) if not fam.effects else np.asarray(fam.effects, dtype=np.float64)
    lat = fam.mu()[None, None, :, None, None] + delta[None, :, None, None, None] + a + b + g + e
    return lat > 0


def _family_decisions(p: np.ndarray, true_diff: np.ndarray, alpha: float = 0.05) -> dict:
    """FWER, FDR and power of Holm and BH over each row of p-values ``(reps, m)``."""
    from lungray.report import stats

    out = {}
    for name, adj in (("holm", stats.holm), ("bh", stats.benjamini_hochberg), ("unadjusted", lambda x: np.asarray(x))):
        rej = np.stack([adj(row) for row in p]) < alpha
        false = (rej & ~true_diff[None, :]).sum(1)
        out[f"fwer_{name}"] = float(np.mean(false > 0))
        out[f"fdr_{name}"] = float(np.mean(false / np.maximum(1, rej.sum(1))))
        out[f"power_{name}"] = float(rej[:, true_diff].mean()) if true_diff.any() else math.nan
    return out


def family_rates(fam: Family, *, reps: int, seeds: int, images: int, seed: int = 0, chunk: int = 100,
                 method: str = "report") -> dict:
    """The family's error rates, vectorised: for each rep every pair of models at every size is
    tested with :func:`stats.paired_arrays` (what :func:`tables.paired_comparisons` calls per
    comparison, identical numbers: ``tests/test_stats_simulation.py``), then Holm and BH over the
    family. ``method="satterthwaite"``: the p-values of the test before issue 19 (guarded
    Satterthwaite t), for the comparison of power and error."""
    from scipy import stats as st

    from lungray.report import stats

    rng = np.random.default_rng(seed)
    pairs = [(i, j) for i in range(fam.models) for j in range(i + 1, fam.models)]
    delta = np.zeros(fam.models) if not fam.effects else np.asarray(fam.effects, dtype=np.float64)
    true_diff = np.array([delta[i] != delta[j] for _z in range(fam.sizes) for i, j in pairs])
    ps = []
    for start in range(0, reps, chunk):
        c = family_correct(rng, fam, min(chunk, reps - start), seeds, images).astype(np.float64)
        cols = []
        for z in range(fam.sizes):
            for i, j in pairs:
                d = c[:, i, z] - c[:, j, z]
                if method == "report":
                    cols.append(stats.paired_arrays(d, interval=False)[3])
                else:
                    est, vs, vi, df = stats.two_level_arrays(d)
                    with np.errstate(invalid="ignore", divide="ignore"):
                        t = np.abs(est) / np.sqrt(vs + vi)
                    cols.append(np.where(vs + vi > 0, 2 * st.t.sf(t, df), np.where(est == 0, 1.0, 0.0)))
        ps.append(np.stack(cols, 1))
    p = np.concatenate(ps)
    out = _family_decisions(p, true_diff)
    out.update({"reps": reps, "m": int(true_diff.size), "tail_0.0033": float(np.mean(p[:, ~true_diff] < 0.05 / true_diff.size))})
    return out


def sweep_of(correct: np.ndarray, y: np.ndarray, *, models=None, sizes=None, seeds=None, groups=None,
             probs: Optional[np.ndarray] = None, class_names=("Normal", "COVID"), rng=None):
    """An in-memory :class:`lungray.report.load.Sweep` whose runs are right exactly where
    ``correct`` ``(models, sizes, seeds, images)`` says (class probabilities from
    :func:`_probs_of`, or ``probs`` ``(models, sizes, seeds, images, 2)``); ``groups`` (images,)
    patient labels go to ``splits.json``'s ``eval_groups``. What :mod:`lungray.report.tables`
    reads, without MLflow."""
    import pandas as pd

    from lungray.report.load import COMPLETE, Sweep

    rng = rng or np.random.default_rng(0)
    nm, nz, ns, ni = correct.shape
    models = list(models or [f"m{i}" for i in range(nm)])
    sizes = list(sizes or [50 * 2**z for z in range(nz)])
    seeds = list(seeds or range(ns))
    ids = np.array([f"img{i:05d}" for i in range(ni)])
    rows, preds = [], {}
    for mi, m in enumerate(models):
        for zi, n in enumerate(sizes):
            for si, s_ in enumerate(seeds):
                rid = f"{m}-{n}-{s_}"
                pr = probs[mi, zi, si] if probs is not None else _probs_of(correct[mi, zi, si], y, rng)
                preds[rid] = pd.DataFrame({"image_id": ids, "y_true": y, f"prob_{class_names[0]}": pr[:, 0],
                                           f"prob_{class_names[1]}": pr[:, 1]})
                rows.append({"run_id": rid, "state": COMPLETE, "status": "FINISHED", "trial_id": rid, "model": m,
                             "train_size": int(n), "optimizer": "adam", "seed": int(s_), "cell": f"{m}|{n}",
                             "error": "", "test_accuracy": float(np.mean(pr.argmax(1) == y))})
    splits = {"eval_groups": {str(i): (None if g is None else str(g)) for i, g in zip(ids, groups)}} if groups is not None else {}
    return Sweep(tracking_uri="memory", experiment_id="0", experiment_name="sim", parent_id="p", parent_name="sim",
                 parent_status="FINISHED", parent_tags={}, parent_params={}, config=None, config_text="", leakage=None,
                 data_summary=None, splits=splits, runs=pd.DataFrame(rows),
                 histories=pd.DataFrame(columns=["run_id", "key", "step", "value"]), predictions=preds,
                 class_names=tuple(class_names), expected=pd.DataFrame())


def family_end_to_end(fam: Family, *, reps: int, seeds: int, images: int, seed: int = 0) -> dict:
    """The family's error rates measured on :func:`lungray.report.tables.paired_comparisons`
    itself (``p_holm``, ``q_bh``, ``significant``) over in-memory sweeps, plus the largest
    difference between its p-values and the vectorised ones of :func:`family_rates` on the same
    data (``max_p_gap``: 0 up to rounding)."""
    from lungray.report import stats, tables

    rng = np.random.default_rng(seed)
    y = np.arange(images) % 2
    delta = np.zeros(fam.models) if not fam.effects else np.asarray(fam.effects, dtype=np.float64)
    fw_h = fd_b = any_sig = 0
    gap = 0.0
    for _ in range(reps):
        c = family_correct(rng, fam, 1, seeds, images)[0]
        sw = sweep_of(c, y, rng=rng)
        pc = tables.paired_comparisons(sw)
        mi = {f"m{i}": i for i in range(fam.models)}
        true = np.array([delta[mi[a]] != delta[mi[b]] for a, b in zip(pc.model_a, pc.model_b)])
        fw_h += bool((pc["significant"].to_numpy() & ~true).any())
        rej_b = pc["q_bh"].to_numpy() < 0.05
        fd_b += (rej_b & ~true).sum() / max(1, rej_b.sum())
        any_sig += bool(pc["significant"].any())
        sizes = sorted(set(pc.train_size))
        for r in pc.itertuples():
            z = sizes.index(r.train_size)
            d = c[mi[r.model_a], z].astype(float) - c[mi[r.model_b], z].astype(float)
            gap = max(gap, abs(float(stats.paired_arrays(d[None], interval=False)[3][0]) - r.p))
    return {"fwer_holm": fw_h / reps, "fdr_bh": fd_b / reps, "any_significant": any_sig / reps, "max_p_gap": gap,
            "reps": reps}


@dataclass(frozen=True)
class Ceiling:
    """Near-perfect runs, the second generator of the ceiling interval: run s has error rate
    ``r_s = expit(logit(1 - truth_mean_run) + tau z_s)`` around a target, image i a difficulty
    ``h_i ~ Gamma(shape, 1/shape)`` (mean 1) shared by every run, and run s errs on image i with
    probability ``min(1, r_s h_i)``: rare errors concentrated on hard images, with runs whose
    error rates differ by a factor, not a constant. ``truth`` (the expected accuracy of a new
    run on a new image) by numerical integration."""

    error: float = 0.015
    tau: float = 0.4
    shape: float = 0.5

    @property
    def truth(self) -> float:
        from scipy import integrate
        from scipy.special import expit, logit
        from scipy.stats import gamma, norm

        def err(z):
            r = expit(logit(self.error) + self.tau * z)
            # E[min(1, r h)] over h ~ Gamma(shape, scale 1/shape)
            k, th = self.shape, 1.0 / self.shape
            cut = 1.0 / r
            below = r * k * th * gamma.cdf(cut, k + 1, scale=th)
            return below + gamma.sf(cut, k, scale=th)

        return float(1.0 - integrate.quad(lambda z: err(z) * norm.pdf(z), -8, 8)[0])


def ceiling_correct(rng: np.random.Generator, ce: Ceiling, reps: int, seeds: int, images: int) -> np.ndarray:
    from scipy.special import expit, logit

    r = expit(logit(ce.error) + ce.tau * rng.normal(size=(reps, seeds, 1)))
    h = rng.gamma(ce.shape, 1.0 / ce.shape, size=(reps, 1, images))
    return rng.random((reps, seeds, images)) >= np.minimum(1.0, r * h)


def ceiling_coverage(gen, *, reps: int, seeds: int, images: int, seed: int = 0, chunk: int = 500) -> dict:
    """Coverage and zero-width share of the report's accuracy interval (logit scale,
    :func:`stats.two_level_bounds`) next to the plain symmetric interval it replaced, for a
    :class:`Crossed` or :class:`Ceiling` generator."""
    from lungray.report import stats

    rng = np.random.default_rng(seed)
    truth = gen.truth
    new = old = zero_new = zero_old = 0
    for start in range(0, reps, chunk):
        r = min(chunk, reps - start)
        c = (crossed_correct(rng, gen, r, seeds, images) if isinstance(gen, Crossed)
             else ceiling_correct(rng, gen, r, seeds, images)).astype(np.float64)
        _, lo, hi, *_ = stats.two_level_bounds(c, proportion=True)
        new += int(np.sum((lo <= truth) & (truth <= hi)))
        zero_new += int(np.sum(hi - lo <= 0))
        est, lo0, hi0, *_ = stats.two_level_bounds(c, proportion=False)
        lo0, hi0 = np.maximum(lo0, 0), np.minimum(hi0, 1)
        old += int(np.sum((lo0 <= truth) & (truth <= hi0)))
        zero_old += int(np.sum(hi0 - lo0 <= 0))
    return {"coverage": new / reps, "zero_width": zero_new / reps, "old_coverage": old / reps,
            "old_zero_width": zero_old / reps, "truth": truth, "reps": reps}


def lesion_masks(rng: np.random.Generator, n: int, side: int = 64, kind: str = "two_sites") -> np.ndarray:
    """``(n, side, side)`` lesion masks with a planted spatial prior. ``two_sites``: a small disc
    at one of two sites 10 % of the side apart (the left one 60 % of the time), so that a point
    between them is within the pointing game's tolerance of both; ``ring``: a disc anywhere on a
    ring around the centre (no single usual place), radius 2-5 % of the side. Two generators
    with different best fixed points."""
    yy, xx = np.mgrid[:side, :side]
    if kind == "two_sites":
        left = rng.random(n) < 0.6
        cy = rng.normal(0.6 * side, 0.02 * side, n)
        cx = np.where(left, rng.normal(0.45 * side, 0.02 * side, n), rng.normal(0.55 * side, 0.02 * side, n))
        rad = np.full(n, 0.03 * side)
    elif kind == "ring":
        ang = rng.uniform(0, 2 * np.pi, n)
        rr = rng.normal(0.28 * side, 0.03 * side, n)
        cy, cx = side / 2 + rr * np.sin(ang), side / 2 + rr * np.cos(ang)
        rad = rng.uniform(0.02, 0.05, n) * side
    else:
        raise ValueError(f"unknown lesion layout '{kind}'; valid: two_sites, ring")
    return ((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2) <= rad[:, None, None] ** 2


def pointing_prior_gap(*, reps: int, kind: str, n_train: int = 200, n_eval: int = 4000, side: int = 64, seed: int = 0) -> dict:
    """How far the report's fixed-point baseline (:func:`lungray.report.gradcam.prior_point` on
    ``n_train`` TRAINING masks, with the pointing game's tolerance) scores below the best
    image-blind point, both scored on ``n_eval`` fresh masks (the population); ``gap_old`` the
    same for the peak of the mean training mask (the baseline before issue 19)."""
    from lungray.report import gradcam as G

    from scipy.ndimage import distance_transform_edt

    rng = np.random.default_rng(seed)
    tol = G.POINTING_TOLERANCE * side
    pop = lesion_masks(rng, n_eval, side, kind)
    near = np.stack([distance_transform_edt(~m) <= tol for m in pop])  # where a fixed point hits each lesion
    top = G.prior_point(pop, tol)
    best = G.fixed_point_pointing(top, pop, tol).score
    assert best == near[:, top[0], top[1]].mean()  # the pointing game of a fixed point, computed once per mask

    def score(pt):
        return float(near[:, pt[0], pt[1]].mean())

    gap_new, gap_old = [], []
    for _ in range(reps):
        train = lesion_masks(rng, n_train, side, kind)
        gap_new.append(best - score(G.prior_point(train, tol)))
        gap_old.append(best - score(G.prior_point(train)))
    return {"gap": float(np.mean(gap_new)), "gap_old": float(np.mean(gap_old)), "max_gap": float(np.max(gap_new)),
            "max_gap_old": float(np.max(gap_old)), "best_fixed_point_score": best, "reps": reps}


def fit_verdicts(cv: Curve, *, sizes, seeds: int, images: int, target_errors, reps: int, n_boot: int = 200,
                 seed: int = 0) -> dict:
    """How the report judges learning-curve fits (:func:`stats.bootstrap_power_law`) on sweeps
    from a known curve: the share of fits called UNRELIABLE as a whole, of fits whose floor ends
    at 0, and per target the share called unreliable, how far it is extrapolated, and the
    coverage of the intervals the report calls reliable (``nan`` for an unreachable truth)."""
    from lungray.report import stats

    rng = np.random.default_rng(seed)
    n_max = float(max(sizes))
    fit_bad = floor0 = old_bad = 0
    t_bad = dict.fromkeys(target_errors, 0)
    t_cov = dict.fromkeys(target_errors, 0)
    t_rel = dict.fromkeys(target_errors, 0)
    for r in range(reps):
        n, correct = curve_runs(rng, cv, sizes, seeds, images)
        res = stats.bootstrap_power_law(n, 1 - correct.mean(1), correct=correct, target_errors=list(target_errors),
                                        n_boot=n_boot, seed=r)
        fit_bad += not res.reliable
        floor0 += bool(res.notes)
        # the old verdict: any far/unreachable target or the floor at 0 condemned the whole fit
        old_bad += (not res.reliable) or bool(res.notes) or not all(res.target_reliable.values())
        for t in target_errors:
            ok = res.target_reliable[t]
            t_bad[t] += not ok
            if ok:
                t_rel[t] += 1
                truth = cv.size_for(t) if t > cv.c else math.inf
                ci = res.targets[t]
                t_cov[t] += bool(ci.low <= truth <= ci.high)
    out = {"fit_unreliable": fit_bad / reps, "floor_at_zero": floor0 / reps, "old_fit_unreliable": old_bad / reps,
           "reps": reps}
    for t in target_errors:
        truth = cv.size_for(t) if t > cv.c else math.inf
        out[f"target {t:g}"] = {"true_size": truth, "times_largest": truth / n_max, "unreliable": t_bad[t] / reps,
                                "coverage_when_reliable": t_cov[t] / t_rel[t] if t_rel[t] else math.nan}
    return out


def mcnemar_under_recipe_null(sc: Crossed, *, sigma_g: float, reps: int, seeds: int, images: int, alpha: float = 0.05,
                              seed: int = 0) -> dict:
    """Two equally good RECIPES whose runs differ (``sc.tau``): how often the report's verdict
    (the paired test, :func:`stats.paired_test`) and the clustered McNemar
    (:func:`stats.mcnemar_clustered`) call them different at ``alpha`` (issue 19.6: McNemar holds
    the trained runs fixed, so seed noise reads to it as a difference)."""
    from lungray.report import stats

    rng = np.random.default_rng(seed)
    ca, cb = paired_null(rng, sc, reps, seeds, images, sigma_g=sigma_g)
    verdict = stats.paired_arrays(ca.astype(np.float64) - cb.astype(np.float64), interval=False)[3] < alpha
    mc = np.array([stats.mcnemar_clustered(ca[r], cb[r]).p < alpha for r in range(reps)])
    return {"paired_test": float(verdict.mean()), "mcnemar": float(mc.mean()), "reps": reps}
