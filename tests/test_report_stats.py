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


# -- two-level intervals ---------------------------------------------------------------------------


def test_two_level_scores_by_hand():
    # 2 runs x 4 images. run means 0.75, 0.25 -> s^2 = 0.125, var_seed = s^2 / 2 = 0.0625.
    # image means [1, .5, .5, 0] -> var(ddof=1) = 1/6, v_shared = 1/24; each run's image variance
    # var(ddof=1) = 1/4, / 4 images = 1/16; var_image = (2 * 1/24 - 1/16) / (2 - 1) = 1/48.
    x = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=float)
    ci = stats.two_level_ci_scores(x)
    assert ci.estimate == 0.5 and ci.n == 2 and ci.kind == "seeds+images"
    assert ci.var_seed == pytest.approx(0.0625) and ci.var_image == pytest.approx(1 / 48)
    # df: seed part guarded by its 75 % chi-square bound (1 df), image part N - 1 = 3 df
    from scipy.stats import chi2, t

    vg = 0.0625 / chi2.ppf(0.25, 1)
    df = (vg + 1 / 48) ** 2 / (vg**2 + (1 / 48) ** 2 / 3)
    assert ci.df == pytest.approx(df)
    assert ci.half_width == pytest.approx(t.ppf(0.975, df) * math.sqrt(0.0625 + 1 / 48), abs=1e-9)
    # with the image part 0 the interval is the seeds-only t (df = 1): run means 0.75 and 0.25
    flat = stats.two_level_ci_scores(np.array([[1, 1, 1, 0], [0, 0, 0, 1]], dtype=float))
    assert flat.var_image == 0.0 and flat.df == pytest.approx(1.0) and flat.var_seed == pytest.approx(0.0625)
    assert flat.half_width == pytest.approx(T1 * 0.25, abs=1e-9)

    # the same image pattern in both runs: no run-to-run variance, all image variance
    y = np.array([[1, 1, 0, 0], [1, 1, 0, 0]], dtype=float)
    ci = stats.two_level_ci_scores(y)
    # image means [1,1,0,0]: var = 1/3, v_shared = 1/12; v_each = 1/12 -> var_image = 1/12
    assert ci.var_seed == 0.0 and ci.var_image == pytest.approx(1 / 12)
    assert ci.df == pytest.approx(3.0)  # all of it from the images: N - 1 = 3
    assert ci.half_width == pytest.approx(3.182446305284263 * math.sqrt(1 / 12), abs=1e-9)
    one = stats.two_level_ci_scores(x[:1])
    assert one.n == 1 and math.isnan(one.low) and one.kind == "none"


def test_two_level_boot_equals_closed_form_for_a_mean():
    """A bootstrap of the images shared by every run gives the closed-form components of a mean."""
    from lungray.report.resampling import multinomial_weights

    rng = np.random.default_rng(3)
    easy = rng.random(400) < 0.7
    x = (easy[None, :] ^ (rng.random((3, 400)) < 0.15)).astype(float)  # shared easiness + run noise
    closed = stats.two_level_ci_scores(x)
    w = multinomial_weights(400, 20000, seed=0)
    boot = w @ x.T / 400  # (B, runs)
    viaboot = stats.two_level_ci_boot(x.mean(1), boot, 400)
    assert closed.var_image > 0
    assert viaboot.var_image == pytest.approx(closed.var_image, rel=0.05)
    assert viaboot.var_seed == pytest.approx(closed.var_seed, rel=1e-12)
    assert (viaboot.low, viaboot.high) == pytest.approx((closed.low, closed.high), abs=0.003)


def test_chance_check_flags_a_constant_model_and_not_a_working_one():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 100)
    const = np.tile([0.6, 0.4], (200, 1))
    ch = stats.chance_check(y, const)
    assert ch.stuck and ch.accuracy == 0.5 and ch.majority_rate == 0.5
    good = np.where((rng.random(200) < 0.8)[:, None], np.eye(2)[y] * 0.6 + 0.2, np.eye(2)[1 - y] * 0.6 + 0.2)
    assert not stats.chance_check(y, good).stuck
    # ranks well but always predicts class 0 by argmax: accuracy at chance, AUC far above 0.5 -> not stuck
    ranks = np.stack([0.9 - 0.1 * y - rng.random(200) * 0.05, 0.1 + 0.1 * y + rng.random(200) * 0.05], 1)
    r = stats.chance_check(y, ranks)
    assert r.accuracy == 0.5 and r.p_auc < 1e-6 and not r.stuck


# -- paired test, multiple comparisons, McNemar ---------------------------------------------------------


def test_paired_test_identical_and_planted():
    rng = np.random.default_rng(0)
    a = (rng.random((3, 300)) < 0.8).astype(float)
    same = stats.paired_test(a, a)
    assert (same.diff, same.low, same.high, same.p) == (0.0, 0.0, 0.0, 1.0) and not same.significant
    # B right on a subset of A's correct images: exactly 20 points worse on every seed
    b = np.zeros_like(a)
    aa = np.zeros_like(a)
    for s in range(3):
        order = np.random.default_rng(s).permutation(300)
        aa[s, order[:270]] = 1
        b[s, order[:210]] = 1
    d = stats.paired_test(aa, b)
    # the three seeds tie exactly (20 points each): the seed variance is 0 but for the rounding of a
    # mean over 300 right/wrong images, 1/(12 * 300^2) per seed (issue 19.1), which bounds p below
    assert d.diff == pytest.approx(0.20) and d.var_seed == pytest.approx(0.0, abs=1e-20) and d.significant
    vs = 1 / (12 * 300**2 * 3)
    assert d.p == pytest.approx(float(stats.fiducial_sf(0.2, vs, d.var_image, 2)), rel=1e-9) and d.p < 1e-4
    with pytest.raises(ValueError, match="same"):
        stats.paired_test(np.ones((2, 3)), np.ones((2, 4)))
    assert math.isnan(stats.paired_test(a[:1], a[:1]).p)  # one seed: no test of the recipes


def test_holm_and_bh_equal_statsmodels():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(1)
    for m in (1, 2, 7, 24, 168):
        p = rng.random(m) ** 3
        np.testing.assert_allclose(stats.holm(p), multipletests(p, method="holm")[1], atol=1e-12)
        np.testing.assert_allclose(stats.benjamini_hochberg(p), multipletests(p, method="fdr_bh")[1], atol=1e-12)
    # NaN (a comparison with one seed) is not in the family
    np.testing.assert_allclose(stats.holm([0.01, np.nan, 0.02]), [0.02, np.nan, 0.02])


def test_clustered_mcnemar_one_seed_is_the_exact_mcnemar_and_by_hand():
    rng = np.random.default_rng(2)
    for _ in range(30):
        a, b = rng.random(40) < 0.7, rng.random(40) < 0.6
        bb, c, p = stats.mcnemar_exact(a, b)
        r = stats.mcnemar_clustered(a[None], b[None])
        assert (r.b, r.c) == (bb, c) and r.p == pytest.approx(p, abs=1e-12)
    # 2 seeds, 3 images: e = [+2, +1, 0] -> |e| counts m1 = 1, m2 = 1; T = 3.
    # sign flips: T in {3, 1, -1, -3} each 1/4 -> P(|T| >= 3) = 1/2
    a = np.array([[1, 1, 0], [1, 0, 0]], bool)
    b = np.array([[0, 0, 0], [0, 0, 0]], bool)
    r = stats.mcnemar_clustered(a, b)
    assert (r.b, r.c, r.n_discordant_images) == (3, 0, 2) and r.p == pytest.approx(0.5)
    # the statsmodels exact McNemar on one seed's table agrees
    from statsmodels.stats.contingency_tables import mcnemar

    a1, b1 = rng.random(60) < 0.8, rng.random(60) < 0.6
    tab = [[np.sum(a1 & b1), np.sum(a1 & ~b1)], [np.sum(~a1 & b1), np.sum(~a1 & ~b1)]]
    assert stats.mcnemar_clustered(a1[None], b1[None]).p == pytest.approx(mcnemar(tab, exact=True).pvalue, abs=1e-12)


def test_binom_ci_equals_statsmodels():
    from statsmodels.stats.proportion import proportion_confint

    for k, n in [(0, 10), (3, 10), (10, 10), (57, 200), (1, 1)]:
        for method, sm in (("clopper-pearson", "beta"), ("wilson", "wilson")):
            ci = stats.binom_ci(k, n, method=method)
            lo, hi = proportion_confint(k, n, alpha=0.05, method=sm)
            assert (ci.low, ci.high) == pytest.approx((lo, hi), abs=1e-10), (k, n, method)
    assert math.isnan(stats.binom_ci(0, 0).low)


def test_mcnemar_detectable_difference_solves_connors_formula():
    from scipy.stats import norm

    d = stats.mcnemar_detectable_difference(3000, 0.10, 0.05, 0.8)
    za, zb = norm.ppf(0.975), norm.ppf(0.8)
    n_back = (za * math.sqrt(0.10) + zb * math.sqrt(0.10 - d * d)) ** 2 / d**2
    assert n_back == pytest.approx(3000, rel=1e-9)
    # more images resolve smaller differences; too few resolve none
    assert stats.mcnemar_detectable_difference(12000, 0.10) < d < stats.mcnemar_detectable_difference(300, 0.10)
    assert stats.mcnemar_detectable_difference(10, 0.05) == math.inf


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


def test_bound_flags_and_target_words():
    n = np.repeat(SIZES, 2)
    err = stats.power_law(n, 0.7, 1.2, 0.0)  # no floor: c pins at 0
    res = stats.bootstrap_power_law(n, err, target_errors=[0.02], n_boot=50, seed=0)
    assert res.fit.c == pytest.approx(0.0, abs=1e-9)
    # issue 19.7: a floor the measured sizes cannot see is a note, not a verdict on the fit
    assert res.notes == (stats.FLOOR_AT_ZERO,) and res.reliable and res.reasons == ()
    assert res.c_at_bound_share > 0.5
    assert res.target_reliable == {0.02: True}
    assert stats.target_where(2500.0, 3000.0, 9000.0, 100, 1000) == "extrapolated beyond 1,000 images (the largest size measured)"
    assert stats.target_where(50.0, 30.0, 70.0, 100, 1000).startswith("extrapolated below 100 images")
    assert stats.target_where(500.0, 300.0, 1200.0, 100, 1000) == (
        "within the measured sizes (100-1,000); the upper limit is extrapolated beyond 1,000")
    assert stats.target_where(math.inf, math.inf, math.inf, 100, 1000).startswith("unreachable")


def test_no_interval_from_one_run_per_size():
    """Issue 11.4: one run per size printed "1,104 images [1,104, 1,104]"; now no interval, and why."""
    err = stats.power_law(SIZES, 2.0, 0.5, 0.05)
    res = stats.bootstrap_power_law(SIZES, err, target_errors=[0.15], n_boot=50, seed=0)
    t = res.targets[0.15]
    assert t.estimate == pytest.approx(400, rel=1e-6) and math.isnan(t.low) and math.isnan(t.high)
    assert "only one run at 50, 100, 200, 400, 800, 1,600 images" in res.interval_note
    assert not res.reliable and res.interval_note in res.reasons
    assert res.where[0.15] == "within the measured sizes (50-1,600)"


def test_power_law_batch_matches_scipy_least_squares():
    """The profiled grid + golden-section fitter finds the least-squares optimum: scipy's
    curve_fit started from it never finds a lower residual sum of squares."""
    from scipy.optimize import curve_fit

    rng = np.random.default_rng(4)
    E = stats.power_law(SIZES, 2.0, 0.5, 0.05)[None, :] + rng.normal(0, 0.01, (40, SIZES.size))
    a, b, c, sse = stats.fit_power_law_batch(SIZES, E)
    for i in range(40):
        po, _ = curve_fit(stats.power_law, SIZES, E[i], p0=[a[i] + 1e-3, b[i], c[i]],
                          bounds=([0, stats.B_MIN, 0], [np.inf, stats.B_MAX, 1]), maxfev=20000)
        assert ((stats.power_law(SIZES, *po) - E[i]) ** 2).sum() >= sse[i] - 1e-12


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
    # 0.06 is 0.01 above the floor: ~18,000 images on this fit, 11x the largest size. Issue 19.7:
    # that target alone is unreliable; the fit and the target inside the measured sizes are not
    assert res.reliable and res.reasons == ()
    assert res.target_reliable == {0.15: True, 0.06: False}
    assert res.target_reasons[0.15] == () and "largest size measured" in res.target_reasons[0.06][0]
    near = stats.bootstrap_power_law(n, err, target_errors=[0.15], n_boot=50, seed=0)
    assert near.reliable and near.reasons == () and near.target_reliable == {0.15: True}
    # a target below the fitted floor is unreachable, and only it is flagged
    low = stats.bootstrap_power_law(n, err, target_errors=[0.15, 0.01], n_boot=50, seed=0)
    assert low.reliable and low.target_reliable == {0.15: True, 0.01: False} and "unreachable" in low.target_reasons[0.01][0]


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


# -- issue 19: patients, the ceiling, the fiducial paired test, degenerate runs ---------------------


def test_unit_codes_only_when_a_patient_repeats():
    assert stats.unit_codes(None) is None
    assert stats.unit_codes(["p1", "p2", "p3"]) is None  # every image its own patient: images resampled
    assert stats.unit_codes(["b", "a", "b", None, float("nan"), "a"]).tolist() == [0, 1, 0, 2, 3, 1]
    with pytest.raises(ValueError, match="one group per image"):
        stats.unit_codes(["a", "a"], n_images=3)


def test_clustered_image_variance_by_hand():
    # one run, 2 patients: p0 has images [1, 1, 0] (total 2, 3 images), p1 has [1] (total 1, 1 image).
    # mean m = 3/4; residuals T_g - m n_g = 2 - 9/4 = -1/4 and 1 - 3/4 = 1/4; sum of squares 1/8;
    # variance of the mean = G/(G-1) * 1/8 / N^2 = 2 * 1/8 / 16 = 1/64
    x = np.array([[1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 1.0]])
    g = np.array([0, 0, 0, 1])
    est, vs, vi, df = stats.two_level_arrays(x, g)
    assert est == pytest.approx(0.75) and vs == 0.0 and vi == pytest.approx(1 / 64)
    assert df == pytest.approx(1.0)  # all image (patient) variance: G - 1 = 1
    # single-image units give the image formula, var(ddof=1) / N, exactly
    y = (np.random.default_rng(0).random((3, 50)) < 0.7).astype(float)
    a = stats.two_level_arrays(y)
    b = stats.two_level_arrays(y, np.arange(50))
    assert np.allclose(a, b, rtol=1e-12)
    ci = stats.two_level_ci_scores(y, groups=[f"p{i // 5}" for i in range(50)])
    assert ci.unit == "patient" and ci.n_units == 10 and ci.n_images == 50


def test_no_zero_width_interval_at_the_ceiling_by_hand():
    """Issue 19.3: three runs right on all 57 images gave 1.000 [1.000, 1.000]."""
    from scipy.special import expit, logit
    from scipy.stats import t

    ci = stats.two_level_ci_scores(np.ones((3, 57)), bounds=(0.0, 1.0))
    # half a pseudo-image right and half wrong: m = 57.5 / 58; the 57 real images and the two
    # pseudo-images (weight 1/2) give the variance of the mean ss * G'/(G'-1) / N'^2, G' = N' = 58
    m = 57.5 / 58
    ss = 57 * (1 - m) ** 2 + 0.5 * ((1 - m) ** 2 + m**2)
    v = ss * 58 / 57 / 58**2
    assert ci.var_seed == pytest.approx(0.0, abs=1e-30) and ci.var_image == pytest.approx(v, rel=1e-12)
    assert ci.df == pytest.approx(56.0)  # all from the images: 57 - 1
    low = expit(logit(m) - t.ppf(0.975, 56) * math.sqrt(v) / (m * (1 - m)))
    assert (ci.estimate, ci.high) == (1.0, 1.0) and ci.low == pytest.approx(low, rel=1e-12)
    assert 0.85 < ci.low < 0.95 and ci.scale == "logit"
    # log loss is not a proportion: the plain symmetric interval, unchanged
    ll = stats.two_level_ci_scores(np.full((3, 57), 0.2) + np.arange(57) / 570, bounds=(0.0, math.inf))
    assert ll.scale == "linear" and ll.low < ll.estimate < ll.high


def test_logit_boot_interval_keeps_a_width_at_auc_one():
    from lungray.report import resampling as R

    y = np.arange(60) % 2
    p1 = np.where(y == 1, 0.6 + np.arange(60) / 200, 0.4 - np.arange(60) / 200)  # every positive above every negative
    P = np.stack([1 - p1, p1], 1)
    w = R.multinomial_weights(60, 400, seed=0)
    plain = np.stack([R.metric_resamples("auc", y, P, w)] * 3, 1)
    assert np.all(plain[np.isfinite(plain[:, 0])] == 1.0)
    zero = stats.two_level_ci_boot([1.0] * 3, plain, 60, bounds=(0.0, 1.0))
    assert zero.low == zero.high == 1.0  # the old interval: zero width
    yy, pp, ww = R.with_pseudo_images(y, P, np.vstack([np.ones((1, 60)), w]))
    aug = np.stack([R.metric_resamples("auc", yy, pp, ww)] * 3, 1)
    # by hand on the unit row: 31 weighted positives and 31 negatives (30 real + two pseudo of weight
    # 1/2 each). The wrong pseudo-negative (score 1) is above the 30 real positives and the wrong
    # pseudo-positive (0.5 * 30 + 0.5 * 0.5) and ties the right one (0.5 * 0.5 / 2); the wrong
    # pseudo-positive (score 0) is below the 30 real negatives (0.5 * 30) and ties the right
    # pseudo-negative (0.5 * 0.5 / 2): 30.5 misranked out of 31 * 31 pairs
    assert aug[0, 0] == pytest.approx(1 - 30.5 / (31 * 31), rel=1e-12)
    ci = stats.two_level_ci_boot(aug[0], aug[1:], 60, bounds=(0.0, 1.0), logit=True, estimate=1.0)
    assert ci.estimate == 1.0 and ci.high == 1.0 and 0.8 < ci.low < 0.999 and ci.scale == "logit"


def test_fiducial_distribution_is_t_and_normal_at_its_ends():
    from scipy.stats import norm, t

    for k in (1, 2, 4):
        for h in (0.5, 2.0, 6.0, 40.0):
            assert float(stats.fiducial_sf(h, 1.0, 0.0, k)) == pytest.approx(2 * t.sf(h, k), rel=1e-5)
        assert float(stats.fiducial_half(1.0, 0.0, k)) == pytest.approx(t.ppf(0.975, k), rel=1e-6)
    assert float(stats.fiducial_sf(1.96, 0.0, 1.0, 2)) == pytest.approx(2 * norm.sf(1.96), rel=1e-9)
    # the interval and the test agree: p at the half-width is 1 - level
    h = float(stats.fiducial_half(0.3, 0.7, 2, 0.95))
    assert float(stats.fiducial_sf(h, 0.3, 0.7, 2)) == pytest.approx(0.05, rel=1e-6)
    # in between, a mixture: heavier-tailed than the normal, lighter than t with k df
    p = float(stats.fiducial_sf(3.0, 0.5, 0.5, 2))
    assert 2 * norm.sf(3.0) < p < 2 * t.sf(3.0, 2)


def test_paired_test_interval_excludes_zero_exactly_when_p_is_below_005():
    rng = np.random.default_rng(5)
    for _ in range(40):
        a = (rng.random((3, 200)) < 0.75).astype(float)
        b = (rng.random((3, 200)) < 0.70).astype(float)
        d = stats.paired_test(a, b)
        assert (d.p < 0.05) == d.significant
        assert d.df >= 2  # reads as a t interval with at least S - 1 degrees of freedom
    g = [f"p{i // 4}" for i in range(200)]
    dg = stats.paired_test(a, b, groups=g)
    assert dg.unit == "patient" and dg.n_units == 50 and dg.diff == d.diff


def test_clustered_mcnemar_sums_a_patients_images_by_hand():
    # 1 seed, 4 images of 2 patients: image differences e = [+1, +1, -1, 0] -> patients [+2, -1]
    # |e| counts m1 = 1 (patient 1), m2 = 1 (patient 0); T = +1. Sign flips: T in {3, 1, -1, -3}
    # each 1/4 -> P(|T| >= 1) = 1
    a = np.array([[1, 1, 0, 1]], bool)
    b = np.array([[0, 0, 1, 1]], bool)
    r = stats.mcnemar_clustered(a, b, groups=["p0", "p0", "p1", "p1"])
    assert (r.b, r.c, r.n_discordant_images) == (2, 1, 2) and r.p == pytest.approx(1.0)
    # three images of one patient all favouring A: one cluster with |e| = 3 -> p = 1 (one sign flip of 2)
    r = stats.mcnemar_clustered(np.array([[1, 1, 1]], bool), np.array([[0, 0, 0]], bool), groups=["x", "x", "x"])
    assert r.p == pytest.approx(1.0)
    assert stats.mcnemar_clustered(np.array([[1, 1, 1]], bool), np.array([[0, 0, 0]], bool)).p == pytest.approx(0.25)


def test_degenerate_output_and_the_rule_of_which_runs_count():
    y = np.array([0, 1, 0, 1])
    assert stats.degenerate_output(np.tile([0.6, 0.4], (4, 1)), y) == "constant output"
    # "Normal" for every image, and the class-1 scores of the positives (0.1, 0.2) are below the
    # negatives' (0.3, 0.4): AUC 0, no ranking -> collapsed
    one = np.array([[0.7, 0.3], [0.9, 0.1], [0.6, 0.4], [0.8, 0.2]])
    assert stats.degenerate_output(one, y) == "one class for every image, scores that do not rank"
    # the same class everywhere but scores that rank the images (positives 0.4, 0.3 above 0.1, 0.2):
    # AUC 1, undertrained but not degenerate
    ranks = np.array([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.7, 0.3]])
    assert stats.degenerate_output(ranks, y) == ""
    assert stats.degenerate_output(np.array([[0.9, 0.1], [0.4, 0.6], [0.8, 0.2], [0.7, 0.3]]), y) == ""  # weak but working
    # AUC exactly 0.5 (ties) with one class: no information in either the class or the ranking
    assert stats.degenerate_output(np.array([[0.9, 0.1], [0.9, 0.1], [0.8, 0.2], [0.8, 0.2]]), y) == stats.COLLAPSED
    assert stats.degenerate_output(np.array([[np.nan, 0.1], [0.4, 0.6]]), y[:2]) == "non-finite output"
    # an evaluation set of one class: predicting it everywhere is no evidence of collapse
    assert stats.degenerate_output(np.array([[0.9, 0.1], [0.6, 0.4]]), np.array([0, 0])) == ""
    cells = ["a", "a", "a", "b", "b", "c"]
    flags = ["", "constant output", "", stats.COLLAPSED, "constant output", None]
    # a degenerate run is left out of a cell that has a working run; a cell of degenerate runs keeps them all
    assert stats.counted_mask(cells, flags).tolist() == [True, False, True, True, True, True]
    with pytest.raises(ValueError):
        stats.counted_mask(["a"], ["", ""])


def test_cluster_weights_move_a_patients_images_together():
    from lungray.report import resampling as R

    codes = np.array([0, 0, 1, 2, 2, 2])
    w = R.cluster_weights(codes, 500, seed=1)
    assert w.shape == (500, 6)
    assert np.array_equal(w[:, 0], w[:, 1]) and np.array_equal(w[:, 3], w[:, 5])
    patients = w[:, [0, 2, 3]]
    assert np.all(patients.sum(1) == 3)  # 3 patients drawn per resample
    assert np.array_equal(R.cluster_weights(codes, 500, seed=1), w)


def test_prior_point_is_the_best_fixed_point_under_the_tolerance():
    from lungray.report import gradcam as G

    # lesions at two sites 8 px apart, 3 at (5, 4) and 2 at (5, 12): the mean mask peaks at the
    # left site; with a 5 px tolerance the point (5, 8) between them is within 4 px of both sites
    masks = np.zeros((5, 12, 16), bool)
    for i, x in enumerate([4, 4, 4, 12, 12]):
        masks[i, 5, x] = True
    assert G.prior_point(masks) == (5, 4)  # tolerance 0: the peak of the mean mask
    best = G.prior_point(masks, tolerance=5.0)
    assert G.fixed_point_pointing(best, masks, 5.0).score == 1.0
    assert G.fixed_point_pointing((5, 4), masks, 5.0).score == pytest.approx(0.6)
