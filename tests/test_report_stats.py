"""Hand-computed cases for lungray.report.stats (the MONAI style: small inputs, worked answers).

t quantiles used below (from any t table): t(0.975, 1) = 12.7062, t(0.975, 2) = 4.30265,
t(0.975, 3) = 3.18245.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from lungray.report import stats

T2 = 4.302652729749464
T3 = 3.182446305284263
T1 = 12.706204736174694


# -- mean with a t interval ----------------------------------------------------------------------


def test_mean_ci_three_values_by_hand():
    # [1, 2, 3]: mean 2, s = 1, half-width = t(0.975, 2) * 1 / sqrt(3) = 2.484138
    ci = stats.mean_ci([1.0, 2.0, 3.0])
    assert ci.estimate == 2.0
    assert ci.n == 3
    assert ci.low == pytest.approx(2.0 - T2 / math.sqrt(3), abs=1e-9)
    assert ci.high == pytest.approx(2.0 + T2 / math.sqrt(3), abs=1e-9)
    assert ci.half_width == pytest.approx(2.484138, abs=1e-6)


def test_mean_ci_four_accuracies_by_hand():
    # deviations -0.06, -0.02, 0.02, 0.06 -> s^2 = 0.008 / 3; half = t(0.975,3) * s / 2 = 0.0821704
    ci = stats.mean_ci([0.80, 0.84, 0.88, 0.92])
    assert ci.estimate == pytest.approx(0.86)
    s = math.sqrt(0.008 / 3)
    assert ci.half_width == pytest.approx(T3 * s / 2, abs=1e-12)
    assert ci.half_width == pytest.approx(0.0821704, abs=1e-6)


def test_mean_ci_single_value_has_no_interval_and_nan_is_ignored():
    one = stats.mean_ci([0.7])
    assert one.estimate == 0.7 and one.n == 1
    assert math.isnan(one.low) and math.isnan(one.high)
    assert not one.covers(0.7)  # an undefined interval covers nothing
    none = stats.mean_ci([])
    assert math.isnan(none.estimate) and none.n == 0
    # a failed trial (NaN) is dropped: [0.5, 0.7] -> mean 0.6, half = t(0.975,1) * 0.141421 / sqrt(2) = 1.27062
    ci = stats.mean_ci([0.5, float("nan"), 0.7])
    assert ci.n == 2 and ci.estimate == pytest.approx(0.6)
    assert ci.half_width == pytest.approx(T1 * 0.1, abs=1e-9)
    clipped = stats.mean_ci([0.5, 0.7], bounds=(0.0, 1.0))
    assert (clipped.low, clipped.high) == (0.0, 1.0)


def test_bootstrap_ci_constant_and_deterministic():
    c = stats.bootstrap_ci([0.8] * 10, n_boot=200, seed=1)
    assert (c.estimate, c.low, c.high) == (0.8, 0.8, 0.8)
    x = np.random.default_rng(0).normal(10.0, 1.0, size=400)
    a = stats.bootstrap_ci(x, n_boot=500, seed=3)
    b = stats.bootstrap_ci(x, n_boot=500, seed=3)
    assert (a.low, a.high) == (b.low, b.high)
    # the standard error of a mean of 400 N(10, 1) draws is 0.05: a 95 % interval is about +-0.098
    assert a.low < x.mean() < a.high
    assert a.half_width == pytest.approx(1.96 * x.std(ddof=1) / 20, rel=0.2)
    assert math.isnan(stats.bootstrap_ci([1.0]).low)


# -- McNemar ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "b, c, p",
    [
        (9, 1, 2 * (1 + 10) / 2**10),  # 0.021484375
        (0, 5, 2 / 2**5),  # 0.0625
        (3, 3, 1.0),  # 2 * P(X <= 3 | 6) = 84/64 -> capped at 1
        (0, 0, 1.0),  # no discordant pairs
        (2, 8, 2 * (1 + 10 + 45) / 2**10),  # 0.109375
    ],
)
def test_mcnemar_exact_by_hand(b, c, p):
    both = 7
    a_right = np.array([1] * b + [0] * c + [1] * both + [0] * 4, dtype=bool)
    b_right = np.array([0] * b + [1] * c + [1] * both + [0] * 4, dtype=bool)
    got = stats.mcnemar_exact(a_right, b_right)
    assert got[:2] == (b, c)
    assert got[2] == pytest.approx(p, abs=1e-12)


# -- paired bootstrap ------------------------------------------------------------------------------


def test_paired_bootstrap_identical_models_report_no_difference():
    rng = np.random.default_rng(0)
    a = rng.random((3, 300)) < 0.8
    d = stats.paired_bootstrap_diff(a.astype(float), a.astype(float), n_boot=500, seed=0)
    assert d.diff == 0.0 and d.low == 0.0 and d.high == 0.0
    assert not d.significant


def test_paired_bootstrap_detects_a_planted_difference():
    # B is right on a subset of A's correct images: exactly 20 points worse on every seed
    n = 300
    a = np.zeros((3, n), bool)
    b = np.zeros((3, n), bool)
    for s in range(3):
        order = np.random.default_rng(s).permutation(n)
        a[s, order[:270]] = True  # 90 %
        b[s, order[:210]] = True  # 70 %
    d = stats.paired_bootstrap_diff(a, b, n_boot=1000, seed=0)
    assert d.diff == pytest.approx(0.20)
    assert d.significant and d.low > 0.1 and d.high < 0.3
    assert d.n_seeds == 3 and d.n_images == n


def test_paired_bootstrap_same_skill_different_errors_covers_zero():
    # two models with the same 80 % accuracy but independent errors: no real difference
    rng = np.random.default_rng(5)
    a = rng.random((3, 400)) < 0.8
    b = rng.random((3, 400)) < 0.8
    d = stats.paired_bootstrap_diff(a, b, n_boot=1000, seed=0)
    assert abs(d.diff) < 0.03
    assert d.low < 0 < d.high and not d.significant


def test_paired_bootstrap_shares_one_image_resample_across_seeds():
    # d = [[1, 0], [0, 0]]: a replicate equals w_seed0 * w_image0 / 4, with w ~ Multinomial(2, 1/2)
    # independently, so P(replicate = 1) = P(w_s0 = 2) * P(w_i0 = 2) = 1/4 * 1/4 = 1/16 and its
    # mean is E[w_s0] E[w_i0] / 4 = 1/4 (the point estimate).
    a = np.array([[1.0, 0.0], [0.0, 0.0]])
    d = stats.paired_bootstrap_diff(a, np.zeros_like(a), n_boot=40000, seed=0)
    assert d.diff == 0.25
    assert set(np.unique(d.boot)) <= {0.0, 0.25, 0.5, 1.0}
    assert np.mean(d.boot == 1.0) == pytest.approx(1 / 16, abs=0.005)
    assert np.mean(d.boot) == pytest.approx(0.25, abs=0.01)


def test_paired_bootstrap_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same"):
        stats.paired_bootstrap_diff(np.ones((2, 3)), np.ones((2, 4)))


# -- power law -------------------------------------------------------------------------------------


SIZES = np.array([50, 100, 200, 400, 800, 1600], dtype=float)


def test_power_law_recovers_exact_parameters():
    err = stats.power_law(SIZES, 2.0, 0.5, 0.05)
    fit = stats.fit_power_law(SIZES, err)
    assert fit.ok and fit.n_sizes == 6
    assert (fit.a, fit.b, fit.c) == pytest.approx((2.0, 0.5, 0.05), abs=1e-5)
    assert fit.r2 == pytest.approx(1.0, abs=1e-9)


def test_size_for_target_by_hand():
    # 2 * n^-0.5 + 0.05 = 0.15  <=>  n^-0.5 = 0.05  <=>  n = 400
    assert stats.size_for_target(2.0, 0.5, 0.05, 0.15) == pytest.approx(400.0)
    assert stats.size_for_target(2.0, 0.5, 0.05, 0.05) == math.inf  # at the floor: unreachable
    assert stats.size_for_target(2.0, 0.5, 0.05, 0.01) == math.inf
    assert math.isnan(stats.size_for_target(float("nan"), 0.5, 0.05, 0.1))


def test_power_law_needs_three_sizes():
    fit = stats.fit_power_law([100, 100, 200, 200], [0.3, 0.31, 0.2, 0.21])
    assert not fit.ok and "3 training sizes" in fit.message
    res = stats.bootstrap_power_law([100, 200], [0.3, 0.2], target_errors=[0.1])
    assert not res.reliable and math.isnan(res.targets[0.1].estimate)


def test_bootstrap_power_law_interval_and_reliability_flags():
    rng = np.random.default_rng(0)
    n = np.repeat(SIZES, 3)
    err = stats.power_law(n, 2.0, 0.5, 0.05) + rng.normal(0, 0.003, n.size)
    res = stats.bootstrap_power_law(n, err, target_errors=[0.15, 0.06], n_boot=100, seed=0)
    assert res.fit.ok and res.fit.r2 > 0.99
    assert res.b.low < 0.5 < res.b.high
    t = res.targets[0.15]
    assert t.estimate == pytest.approx(400, rel=0.15)
    assert t.low <= t.estimate <= t.high
    # 0.06 is 0.01 above the floor: 2 / 0.01 squared = 40,000 images, 25x the largest size
    assert not res.reliable
    assert any("largest size measured" in r for r in res.reasons)
    near = stats.bootstrap_power_law(n, err, target_errors=[0.15], n_boot=50, seed=0)
    assert near.reliable and near.reasons == ()


def test_bootstrap_power_law_flags_a_poor_fit():
    # accuracy that goes up and down with size is no power law
    n = np.repeat([50, 100, 200, 400], 3).astype(float)
    err = np.repeat([0.30, 0.10, 0.35, 0.12], 3) + np.tile([0.0, 0.01, -0.01], 4)
    res = stats.bootstrap_power_law(n, err, n_boot=30, seed=0)
    assert not res.reliable
    assert any("poor fit" in r for r in res.reasons)


def test_quantiles_with_inf_match_numpy_on_finite_and_stay_infinite():
    import warnings

    from lungray.report.stats import quantiles_with_inf

    x = np.array([5.0, 1.0, 3.0, 2.0, 4.0])
    np.testing.assert_allclose(quantiles_with_inf(x, [0.0, 0.1, 0.5, 0.975, 1.0]), np.quantile(x, [0.0, 0.1, 0.5, 0.975, 1.0]), rtol=1e-15)
    # 10 replicates, 3 never reach the target: the upper 97.5 % bound is unbounded, the lower one finite
    boot = np.array([100.0, 120.0, 90.0, np.inf, 110.0, np.inf, 95.0, 105.0, np.inf, 115.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's own quantile warns (inf - inf) and returns NaN here
        lo, hi = quantiles_with_inf(boot, [0.025, 0.975])
    assert lo == pytest.approx(90.0 + (95.0 - 90.0) * 0.225) and hi == np.inf
    # exactly on a finite sample next to an infinite one: that sample (numpy: NaN from inf * 0)
    assert quantiles_with_inf(np.array([1.0, 2.0, np.inf]), [0.5]) == [2.0]
