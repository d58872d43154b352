"""The report's statistical claims, MEASURED on synthetic sweeps with a known truth (issue 11).

Each test simulates the situation (seeded, vectorised: ``lungray.report._simulate``) and checks
the property the report promises: coverage of the cell interval, type-I error of the paired test
and of the combined McNemar, family-wise error / false discovery rate of the corrections, power
at the "smallest resolvable difference", coverage of the training-size-for-target interval, and
the pointing-game baselines. Bounds are computed from the number of replications: a rate r
measured on R replications has Monte Carlo standard error sqrt(r (1 - r) / R); a nominal 0.05 is
accepted up to 0.05 + 3.09 SE (one-sided, 1 in 1000). The heavier measurements are ``slow``;
``bench/bench_stats.py`` reruns all of them with more replications for bench/RESULTS.md.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from lungray.report import _simulate as Sim
from lungray.report import stats

Z = 3.09  # one-sided 0.001


def upper(rate: float, reps: int) -> float:
    return rate + Z * math.sqrt(rate * (1 - rate) / reps)


# -- item 2: the cell interval -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, sc, images",
    [
        ("evaluation images dominate", Sim.Crossed(1.2, 0.0, 1.5, 0.5), 200),
        ("seeds dominate", Sim.Crossed(1.2, 0.4, 1.0, 1.0), 1000),
    ],
)
def test_cell_interval_covers_with_eval_noise(name, sc, images):
    reps = 2000
    res = Sim.cell_coverage(sc, reps=reps, seeds=3, images=images, seed=1)
    se = math.sqrt(0.95 * 0.05 / reps)
    assert 0.95 - 3 * se <= res["two_level"] <= 0.95 + 5 * se, res  # [0.935, 0.975]
    if name == "evaluation images dominate":
        # the old seeds-only t-interval ignores the shared image noise and under-covers badly
        assert res["seeds_only"] < 0.8, res


@pytest.mark.slow
@pytest.mark.parametrize(
    "sc, images, seeds",
    [
        (Sim.Crossed(1.2, 0.15, 1.2, 0.8), 1000, 3),  # both comparable
        (Sim.Crossed(1.0, 0.1, 0.0, 1.0), 500, 3),  # no shared image term: interaction only
        (Sim.Crossed(1.5, 0.03, 1.5, 0.7), 3000, 3),  # 3000 images, tiny seed variance
        (Sim.Crossed(1.2, 0.15, 1.2, 0.8), 1000, 5),
        (Sim.Crossed(1.2, 0.15, 1.2, 0.8), 1000, 2),
    ],
)
def test_cell_interval_coverage_more_scenarios(sc, images, seeds):
    reps = 3000
    res = Sim.cell_coverage(sc, reps=reps, seeds=seeds, images=images, seed=2)
    assert 0.93 <= res["two_level"] <= 0.98, res


def test_runs_stuck_at_chance_are_caught_and_working_runs_are_not():
    res = Sim.cell_coverage_with_stuck(Sim.Crossed(1.2, 0.15, 1.2, 0.8), p_stuck=0.3, reps=80, seeds=3, images=400, seed=3)
    assert res["recall"] == 1.0 and res["false_flags"] == 0.0, res


@pytest.mark.slow
def test_interval_over_working_runs_covers_when_a_run_is_stuck():
    res = Sim.cell_coverage_with_stuck(Sim.Crossed(1.2, 0.15, 1.2, 0.8), p_stuck=0.5, reps=800, seeds=3, images=400, seed=4)
    n = res["reps_with_stuck"]
    se = math.sqrt(0.95 * 0.05 / n)
    assert res["coverage_working"] >= 0.95 - 3 * se, res


# -- item 3: paired test, McNemar, multiple comparisons --------------------------------------------


@pytest.mark.parametrize(
    "sc, sigma_g, images",
    [
        (Sim.Crossed(1.0, 0.2, 1.0, 0.8), 0.5, 1000),  # seeds and images both matter
        (Sim.Crossed(1.0, 0.05, 1.0, 0.8), 0.8, 2000),  # model-specific image effects dominate
    ],
)
def test_paired_test_size_with_three_seeds(sc, sigma_g, images):
    reps = 3000
    res = Sim.paired_size(sc, sigma_g=sigma_g, reps=reps, seeds=3, images=images, seed=5)
    assert res["paired_test"] <= upper(0.05, reps), res


def test_combined_mcnemar_holds_its_size_and_pooling_seeds_does_not():
    reps = 1000
    res = Sim.mcnemar_size(Sim.Crossed(1.0, 0.0, 1.0, 0.8), sigma_g=1.0, reps=reps, seeds=3, images=300, seed=6)
    assert res["clustered"] <= upper(0.05, reps), res
    # the same images in every seed's table: treating the pooled pairs as independent is anti-conservative
    assert res["pooled_as_independent"] > upper(0.05, reps), res


def test_holm_controls_fwer_and_bh_controls_fdr_on_dependent_tests():
    reps = 4000
    null = Sim.multiplicity(reps=reps, m=24, rho=0.5, seed=7)
    assert null["fwer_unadjusted"] > 0.3  # 24 comparisons unadjusted: a false "win" is likely
    assert null["fwer_holm"] <= upper(0.05, reps) and null["fwer_bh"] <= upper(0.05, reps)
    some = Sim.multiplicity(reps=reps, m=168, rho=0.3, n_true=20, seed=8)  # the transfer preset's family
    assert some["fwer_holm"] <= upper(0.05, reps), some
    assert some["fdr_bh"] <= upper(0.05, reps), some


# -- item 4: training size for a target --------------------------------------------------------------


@pytest.mark.slow
def test_size_for_target_interval_coverage():
    reps = 120
    res = Sim.target_coverage(Sim.Curve(), sizes=[100, 200, 500, 1000], seeds=3, images=1000, target_error=0.15,
                              reps=reps, n_boot=300, seed=9)
    assert res["defined"] == 1.0
    se = math.sqrt(0.95 * 0.05 / reps)
    assert res["coverage"] >= 0.95 - 3 * se, res


# -- item 7: the smallest resolvable difference ------------------------------------------------------


def test_mcnemar_has_the_promised_power_at_the_detectable_difference():
    reps = 4000
    res = Sim.mdd_power(n_images=3000, discordance=0.12, reps=reps, seed=10)
    se = math.sqrt(0.8 * 0.2 / reps)
    assert abs(res["power_asymptotic"] - 0.8) <= 3 * se, res
    assert res["power_exact"] >= 0.8 - 5 * se, res  # the exact test is slightly less powerful


# -- item 5: the pointing game's interval and baselines --------------------------------------------


@pytest.mark.parametrize("n", [20, 57, 200])
def test_clopper_pearson_never_below_its_level(n):
    for p in (0.02, 0.1, 0.3, 0.5, 0.8, 0.97):
        assert Sim.binom_coverage(n=n, p=p, method="clopper-pearson") >= 0.95


def _lesions(rng, n, side=32, centre=(10, 20), spread=3.0, radius=3):
    yy, xx = np.mgrid[:side, :side]
    cy = np.clip(rng.normal(centre[0], spread, n), 0, side - 1)
    cx = np.clip(rng.normal(centre[1], spread, n), 0, side - 1)
    masks = ((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2) <= radius**2
    return masks, np.stack([cy, cx], 1)


def test_pointing_baselines_on_synthetic_lesions():
    """Lesions cluster around one place: the fixed point of the training prior scores far above
    a uniform random map (the report's old only baseline), a map that points at each lesion beats
    the prior, and a map that IS the prior does not."""
    from lungray.report import gradcam as G

    rng = np.random.default_rng(11)
    train, _ = _lesions(rng, 300)
    test, centres = _lesions(rng, 400)
    point = G.prior_point(train)
    assert abs(point[0] - 10) <= 1 and abs(point[1] - 20) <= 1
    prior = G.fixed_point_pointing(point, test)
    # uniform random maps: their score matches the lesion share (the random-map baseline)
    cams = rng.random(test.shape)
    uniform = G.pointing_game(cams, test)
    ci = uniform.interval()
    assert ci.low <= uniform.baseline <= ci.high
    assert prior.score > 3 * uniform.baseline and prior.interval().low > uniform.interval().high
    # a "model" whose peak is the lesion centre 80 % of the time, elsewhere at random
    good = np.zeros(test.shape)
    for i, (cy, cx) in enumerate(centres):
        if rng.random() < 0.8:
            good[i, int(round(cy)), int(round(cx))] = 1
        else:
            good[i, rng.integers(32), rng.integers(32)] = 1
    model = G.pointing_game(good, test)
    comp = G.pointing_baselines(model, prior, uniform)
    assert model.score > prior.score and comp.p_vs_prior < 1e-6 and comp.p_vs_randomised < 1e-6
    # a map that always peaks at the prior point is no better than the prior: identical hits, p = 1
    same = G.pointing_baselines(G.fixed_point_pointing(point, test), prior)
    assert same.p_vs_prior == 1.0


def test_randomised_copy_keeps_the_architecture_and_changes_every_weight():
    torch = pytest.importorskip("torch")
    from lungray.config import ModelConfig
    from lungray.models import create_model
    from lungray.report.gradcam import randomised_copy

    torch.manual_seed(0)
    model = create_model(ModelConfig(name="simple_cnn", width=8), 2, in_chans=1, resolution=32)
    state = torch.get_rng_state()
    rnd = randomised_copy(model, seed=1)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    a, b = dict(model.named_parameters()), dict(rnd.named_parameters())
    assert a.keys() == b.keys()
    changed = [k for k in a if a[k].shape == b[k].shape and not torch.equal(a[k], b[k])]
    weights = [k for k in a if a[k].ndim > 1]
    assert set(weights) <= set(changed)  # every conv / linear weight re-drawn
    again = randomised_copy(model, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(rnd.parameters(), again.parameters()))  # seeded


def test_vectorised_measurement_is_the_report_function():
    """The simulations run stats.two_level_arrays on thousands of cells at once; per cell it is
    exactly stats.two_level_ci_scores / stats.paired_test, which the report calls."""
    rng = np.random.default_rng(12)
    sc = Sim.Crossed(1.0, 0.2, 1.0, 0.8)
    ca, cb = Sim.paired_null(rng, sc, 5, 3, 300, sigma_g=0.5)
    d = ca.astype(float) - cb.astype(float)
    est, vs, vi, df = stats.two_level_arrays(d)
    for r in range(5):
        one = stats.paired_test(ca[r].astype(float), cb[r].astype(float))
        assert (one.diff, one.var_seed, one.var_image, one.df) == pytest.approx(tuple(float(v[r]) for v in (est, vs, vi, df)), rel=1e-10)
        ci = stats.two_level_ci_scores(ca[r].astype(float))
        e2, v2, i2, f2 = stats.two_level_arrays(ca[r].astype(float))
        assert (ci.estimate, ci.var_seed, ci.var_image, ci.df) == pytest.approx(tuple(map(float, (e2, v2, i2, f2))), rel=1e-10)


@pytest.mark.slow
def test_bench_stats_quick_prints_the_table():
    """bench/bench_stats.py (the bench/RESULTS.md table) runs end to end."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(repo / "bench" / "bench_stats.py"), "--quick"], cwd=repo,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ") and "**" in line]
    assert len(rows) >= 20
    for prop in ("cell interval coverage", "paired test type-I error", "McNemar over seeds", "family-wise error, Holm",
                 "false discovery rate, BH", "size-for-target interval coverage", "Clopper-Pearson"):
        assert any(prop in line for line in rows), prop
