"""Measured coverage and error rates of the report's statistics (issue 11), as a Markdown table.

Every row simulates the situation on synthetic sweeps with a known truth
(``lungray/report/_simulate.py``: seeds x evaluation images in a crossed design, as a sweep is)
and measures the property the report promises, next to what the method it replaced gave:

1. cell interval (seeds + evaluation images) coverage, and the old seeds-only t's;
2. the same when runs get stuck at chance: flagged share of stuck / working runs, coverage;
3. paired test type-I error at 0.05 with 3 seeds (old: paired t on per-seed differences);
4. one McNemar over the seeds (images as clusters) vs pooling the seeds' tables;
5. family-wise error (Holm) and false discovery rate (Benjamini-Hochberg) over 24 / 168 tests;
6. coverage of the training size reaching a target error (power-law bootstrap);
7. power of McNemar at the "smallest resolvable difference" of the adequacy table;
8. Clopper-Pearson coverage (the pointing game's interval).

    python bench/bench_stats.py            # ~10 min on 2 busy CPUs; the table in bench/RESULTS.md
    python bench/bench_stats.py --quick    # a smoke run (CI): few replications

The tests (``tests/test_stats_simulation.py``) assert these properties with fewer replications.
"""

from __future__ import annotations

import argparse
import math
import time

import _common as C  # noqa: F401  (puts the repository on sys.path)

from lungray.report import _simulate as Sim


def row(prop: str, scenario: str, target: str, measured: float, reps: int, old: str = "") -> str:
    se = Sim.binomial_se(measured, reps)
    return f"| {prop} | {scenario} | {target} | **{measured:.3f}** ± {se:.3f} | {old} | {reps:,} |"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few replications (CI smoke run)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every replication count")
    args = ap.parse_args(argv)
    k = 0.05 if args.quick else args.scale

    def n(reps: int) -> int:
        return max(20, int(reps * k))

    t0 = time.time()
    print("# Statistics: measured coverage and error rates")
    print()
    print("| property | scenario | target | measured ± MC s.e. | the method it replaced | replications |")
    print("|---|---|---|---|---|---|")
    cells = [
        ("eval images dominate, N=200, 3 seeds", Sim.Crossed(1.2, 0.0, 1.5, 0.5), 200, 3),
        ("both comparable, N=1000, 3 seeds", Sim.Crossed(1.2, 0.15, 1.2, 0.8), 1000, 3),
        ("seeds dominate, N=3000, 3 seeds", Sim.Crossed(1.2, 0.4, 1.0, 1.0), 3000, 3),
        ("interaction only, N=500, 3 seeds", Sim.Crossed(1.0, 0.1, 0.0, 1.0), 500, 3),
        ("tiny seed variance, N=3000, 3 seeds", Sim.Crossed(1.5, 0.03, 1.5, 0.7), 3000, 3),
        ("both comparable, N=1000, 2 seeds", Sim.Crossed(1.2, 0.15, 1.2, 0.8), 1000, 2),
        ("both comparable, N=1000, 5 seeds", Sim.Crossed(1.2, 0.15, 1.2, 0.8), 1000, 5),
    ]
    for name, sc, images, seeds in cells:
        r = Sim.cell_coverage(sc, reps=n(10000), seeds=seeds, images=images, seed=1)
        print(row("cell interval coverage", name, "0.95", r["two_level"], r["reps"], f"seeds-only t: {r['seeds_only']:.3f}"))
    r = Sim.cell_coverage_with_stuck(Sim.Crossed(1.2, 0.15, 1.2, 0.8), p_stuck=0.5, reps=n(2000), seeds=3, images=400, seed=4)
    m = r["reps_with_stuck"]
    print(row("cell interval coverage, working runs", "a run stuck at chance (p=0.5 per run), N=400", "0.95",
              r["coverage_working"], m, f"t over all runs, stuck one included (far wider): {r['coverage_old_all_runs']:.3f}"))
    print(row("stuck runs flagged (recall)", "constant-output runs", "1", r["recall"], m))
    print(row("working runs flagged", "learning runs, accuracy ~0.8", "0", r["false_flags"], m))
    for name, sc, sg, images in [
        ("seeds and images, N=1000", Sim.Crossed(1.0, 0.2, 1.0, 0.8), 0.5, 1000),
        ("model-specific image effects dominate, N=3000", Sim.Crossed(1.0, 0.05, 1.0, 0.8), 0.8, 3000),
        ("seeds dominate, N=300", Sim.Crossed(1.0, 0.3, 1.0, 0.8), 0.3, 300),
    ]:
        r = Sim.paired_size(sc, sigma_g=sg, reps=n(20000), seeds=3, images=images, seed=5)
        print(row("paired test type-I error (3 seeds)", name, "≤ 0.05", r["paired_test"], r["reps"],
                  f"paired t on seed differences: {r['seeds_only_t']:.3f}"))
    r = Sim.mcnemar_size(Sim.Crossed(1.0, 0.0, 1.0, 0.8), sigma_g=1.0, reps=n(4000), seeds=3, images=300, seed=6)
    print(row("McNemar over seeds type-I error", "same trained skill, model-specific image effects, N=300", "≤ 0.05",
              r["clustered"], r["reps"], f"seeds pooled as independent: {r['pooled_as_independent']:.3f}"))
    r = Sim.multiplicity(reps=n(20000), m=24, rho=0.5, seed=7)
    print(row("family-wise error, Holm", "24 null comparisons, correlation 0.5", "≤ 0.05", r["fwer_holm"], r["reps"],
              f"unadjusted: {r['fwer_unadjusted']:.3f}"))
    r = Sim.multiplicity(reps=n(20000), m=168, rho=0.3, n_true=20, seed=8)
    print(row("family-wise error, Holm", "168 comparisons (transfer), 20 real, corr. 0.3", "≤ 0.05", r["fwer_holm"], r["reps"],
              f"unadjusted: {r['fwer_unadjusted']:.3f}"))
    print(row("false discovery rate, BH", "168 comparisons (transfer), 20 real, corr. 0.3", "≤ 0.05", r["fdr_bh"], r["reps"],
              f"unadjusted: {r['fdr_unadjusted']:.3f}"))
    for seeds in (3, 2):
        r = Sim.target_coverage(Sim.Curve(), sizes=[100, 200, 500, 1000], seeds=seeds, images=1000, target_error=0.15,
                                reps=n(300), n_boot=300, seed=9)
        print(row("size-for-target interval coverage", f"sizes 100-1000 x {seeds} seeds, N=1000, true n=400", "0.95",
                  r["coverage"], r["reps"], f"median high/low {r['median_high_over_low']:.2f}"))
    r = Sim.target_coverage(Sim.Curve(), sizes=[100, 200, 500, 1000], seeds=3, images=1000, target_error=0.15,
                            reps=n(300), n_boot=300, eval_noise=False, seed=9)
    print(row("size-for-target interval coverage", "same, bootstrap without eval-image resampling", "0.95",
              r["coverage"], r["reps"]))
    r = Sim.mdd_power(n_images=3000, discordance=0.12, reps=n(20000), seed=10)
    print(row("McNemar power at the smallest resolvable difference", f"N=3000, discordance 0.12 (d = {100 * r['difference']:.2f} points)",
              "0.80", r["power_asymptotic"], r["reps"], f"exact test: {r['power_exact']:.3f}"))
    worst = min(Sim.binom_coverage(n=nn, p=p, method="clopper-pearson") for nn in (20, 57, 200) for p in (0.02, 0.1, 0.3, 0.5, 0.8, 0.97))
    print(f"| Clopper-Pearson coverage (pointing game) | n = 20, 57, 200; p = 0.02-0.97 (exact, minimum) | ≥ 0.95 | **{worst:.3f}** | | exact |")
    print()
    print(f"({time.time() - t0:.0f} s; seeded: the same command prints the same table)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
