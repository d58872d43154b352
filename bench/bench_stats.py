"""Measured coverage and error rates of the report's statistics (issues 11 and 19), as a Markdown table.

Every row simulates the situation on synthetic sweeps with a known truth
(``lungray/report/_simulate.py``: seeds x evaluation images in a crossed design, as a sweep is)
and measures the property the report promises, on the report's own code path, next to what
the method it replaced gave:

1. cell interval (seeds + evaluation images) coverage, and the old seeds-only t's;
2. the same near the ceiling (true accuracy 0.977-0.995), two generators;
3. the same with several evaluation images per patient (resampled by patient), two generators;
4. which runs count: weak recipes and collapsed runs, through ``tables.summarise``;
5. paired test type-I error at 0.05 and in the tail Holm uses, 2-5 seeds;
6. family-wise error (Holm) and false discovery rate (BH) of the report's family
   (``tables.paired_comparisons``: 3 models x 5 sizes), 2, 3 and 5 seeds, and its power;
7. McNemar: under its own null, and under the recipes' null (why it is not the verdict);
8. training size for a target: coverage, and verdicts per target;
9. the pointing game's fixed-point baseline, McNemar power at the "smallest resolvable
   difference", Clopper-Pearson coverage.

    python bench/bench_stats.py            # ~15 min on 2 busy CPUs; the table in bench/RESULTS.md
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


def crossed_at(truth: float, tau: float, sigma_b: float, sigma_e: float) -> Sim.Crossed:
    from scipy.stats import norm

    tot = math.sqrt(tau**2 + sigma_b**2 + sigma_e**2)
    return Sim.Crossed(float(norm.ppf(truth)) * tot, tau, sigma_b, sigma_e)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few replications (CI smoke run)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every replication count")
    args = ap.parse_args(argv)
    k = 0.05 if args.quick else args.scale

    def n(reps: int, floor: int = 20) -> int:
        return max(floor, int(reps * k))

    t0 = time.time()
    print("# Statistics: measured coverage and error rates")
    print()
    print("| property | scenario | target | measured ± MC s.e. | the method it replaced | replications |")
    print("|---|---|---|---|---|---|")
    # -- 1. the cell interval -------------------------------------------------------------------
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
    # -- 2. near the ceiling --------------------------------------------------------------------
    for truth in (0.977, 0.985, 0.995):
        for images in (57, 200, 624):
            r = Sim.ceiling_coverage(crossed_at(truth, 0.3, 0.5, 0.8), reps=n(10000), seeds=3, images=images, seed=3)
            print(row("cell interval coverage near the ceiling", f"probit runs, true accuracy {truth}, N={images}, 3 seeds",
                      "≥ 0.93, no zero width", r["coverage"], r["reps"],
                      f"symmetric: {r['old_coverage']:.3f}, zero width {r['old_zero_width']:.3f} (now {r['zero_width']:.3f})"))
            r = Sim.ceiling_coverage(Sim.Ceiling(error=1 - truth), reps=n(10000), seeds=3, images=images, seed=3)
            print(row("cell interval coverage near the ceiling", f"error rates x runs, hard images, true {r['truth']:.3f}, N={images}",
                      "≥ 0.93, no zero width", r["coverage"], r["reps"],
                      f"symmetric: {r['old_coverage']:.3f}, zero width {r['old_zero_width']:.3f} (now {r['zero_width']:.3f})"))
    # -- 3. several images per patient ----------------------------------------------------------
    for heavy in (False, True):
        for pts, per in ((60, 10), (30, 20)):
            sc = Sim.Clustered(1.2, 0.1, 1.2, 0.2, 0.4, 0.6, heavy=heavy)
            r = Sim.clustered_coverage(sc, reps=n(5000), seeds=3, patients=pts, per_patient=per, seed=2)
            gen = "t4 patients, 1-" + str(2 * per - 1) + " images each" if heavy else f"{per} images each"
            print(row("cell interval, several images per patient", f"{pts} patients, {gen}, 3 seeds", "0.95", r["patient"],
                      r["reps"], f"images as independent: {r['image']:.3f} (interval {r['width_ratio']:.2f}x wider now)"))
    r = Sim.clustered_paired_size(Sim.Clustered(1.0, 0.1, 0.8, 0.2, 0.5, 0.7), sigma_g=0.6, reps=n(10000), seeds=3,
                                  patients=30, per_patient=20, seed=4)
    print(row("paired test type-I error, several images per patient", "30 patients x 20 images, 3 seeds", "≤ 0.05",
              r["patient"], r["reps"], f"images as independent: {r['image']:.3f}"))
    # -- 4. which runs count --------------------------------------------------------------------
    r = Sim.cell_coverage_with_stuck(Sim.Crossed(1.2, 0.15, 1.2, 0.8), p_stuck=0.5, reps=n(1500), seeds=3, images=400, seed=4)
    m = r["cells"]
    print(row("cell interval coverage, working runs", "a run collapsed (constant output, p=0.5 per run), N=400", "0.95",
              r["coverage_working"], m, f"chance test: {r['old_coverage']:.3f}"))
    print(row("collapsed runs flagged (recall)", "constant-output runs", "1", r["recall"], m, f"chance test: {r['old_recall']:.3f}"))
    print(row("working runs left out", "learning runs, accuracy ~0.8", "0", r["false_flags"], m,
              f"chance test: {r['old_false_flags']:.3f}"))
    for acc, images in ((0.56, 60), (0.56, 200), (0.59, 60), (0.59, 200)):
        r = Sim.cell_coverage_with_stuck(crossed_at(acc, 0.15, 1.0, 0.8), p_stuck=0.2, reps=n(500), seeds=3, images=images,
                                         seed=5)
        m = r["cells"]
        scen = f"weak recipe, accuracy {acc}, N={images}, 1 in 5 runs collapsed"
        print(row("weak recipe: working runs left out", scen, "0", r["false_flags"], m, f"chance test: {r['old_false_flags']:.3f}"))
        print(f"| weak recipe: bias of the cell mean | {scen} | 0 | **{r['bias']:+.4f}** | chance test: {r['old_bias']:+.4f} | {m:,} |")
        print(row("weak recipe: interval coverage", scen, "0.95", r["coverage_working"], m,
                  f"chance test: {r['old_coverage']:.3f}, no interval in {r['old_no_interval']:.2f} of cells (now {r['no_interval']:.2f})"))
    # -- 5. the paired test and its tail --------------------------------------------------------
    for name, sc, sg, images, seeds in [
        ("seeds and images, N=1000, 3 seeds", Sim.Crossed(1.0, 0.2, 1.0, 0.8), 0.5, 1000, 3),
        ("model-specific image effects dominate, N=3000, 3 seeds", Sim.Crossed(1.0, 0.05, 1.0, 0.8), 0.8, 3000, 3),
        ("seeds dominate, N=300, 3 seeds", Sim.Crossed(1.0, 0.3, 1.0, 0.8), 0.3, 300, 3),
        ("seeds dominate, N=300, 2 seeds", Sim.Crossed(1.0, 0.3, 1.0, 0.8), 0.3, 300, 2),
        ("comparable, N=200, 2 seeds (tied seeds)", Sim.Crossed(1.0, 0.15, 1.0, 0.8), 0.4, 200, 2),
        ("seeds and images, N=1000, 5 seeds", Sim.Crossed(1.0, 0.2, 1.0, 0.8), 0.5, 1000, 5),
    ]:
        r = Sim.paired_size(sc, sigma_g=sg, reps=n(20000), seeds=seeds, images=images, seed=5)
        print(row("paired test type-I error", name, "≤ 0.05", r["paired_test"], r["reps"],
                  f"paired t on seed differences: {r['seeds_only_t']:.3f}"))
        print(f"| paired test tail | {name} | P(p<0.0033) ≤ 0.0033, P(p<0.001) ≤ 0.001 | **{r['p<0.0033']:.4f}**, "
              f"**{r['p<0.001']:.4f}** ± {Sim.binomial_se(0.0033, r['reps']):.4f} | Satterthwaite t: "
              f"{r['satterthwaite p<0.0033']:.4f}, {r['satterthwaite p<0.001']:.4f} | {r['reps']:,} |")
    # -- 6. the report's family -----------------------------------------------------------------
    fams = [("comparable", Sim.Family()), ("seeds dominate", Sim.Family(tau=0.35, sigma_g=0.2)),
            ("images dominate", Sim.Family(tau=0.05, sigma_g=0.7))]
    for fname, fam in fams:
        for seeds in (2, 3, 5):
            r = Sim.family_rates(fam, reps=n(8000), seeds=seeds, images=300, seed=7)
            old_fwer, old_fdr = f"unadjusted: {r['fwer_unadjusted']:.3f}", ""
            if fname == "comparable":
                o = Sim.family_rates(fam, reps=n(8000), seeds=seeds, images=300, seed=7, method="satterthwaite")
                old_fwer, old_fdr = f"Satterthwaite t: {o['fwer_holm']:.3f}", f"Satterthwaite t: {o['fdr_bh']:.3f}"
            scen = f"3 models x 5 sizes = 15 null comparisons, {fname}, N=300, {seeds} seeds"
            print(row("family-wise error, Holm (report's family)", scen, "≤ 0.05", r["fwer_holm"], r["reps"], old_fwer))
            print(row("false discovery rate, BH (report's family)", scen, "≤ 0.05", r["fdr_bh"], r["reps"], old_fdr))
    for seeds in (2, 3, 5):
        r = Sim.family_end_to_end(Sim.Family(), reps=n(150, 4), seeds=seeds, images=300, seed=13)
        print(row("family-wise error, Holm, end to end", f"tables.paired_comparisons on in-memory sweeps, comparable, {seeds} seeds",
                  "≤ 0.05", r["fwer_holm"], r["reps"], f"BH FDR {r['fdr_bh']:.3f}; max |p - vectorised p| = {r['max_p_gap']:.1e}"))
    for seeds in (3, 5):
        for eff in (0.25, 0.5):
            fam = Sim.Family(effects=(eff, 0.0, 0.0))
            r = Sim.family_rates(fam, reps=n(4000), seeds=seeds, images=300, seed=8)
            o = Sim.family_rates(fam, reps=n(4000), seeds=seeds, images=300, seed=8, method="satterthwaite")
            scen = f"one model {eff} probit better (10 of 15 comparisons real), N=300, {seeds} seeds"
            print(row("power, Holm (report's family)", scen, "", r["power_holm"], r["reps"],
                      f"Satterthwaite t: {o['power_holm']:.3f} (its FWER {o['fwer_holm']:.3f}, now {r['fwer_holm']:.3f})"))
            print(row("power, unadjusted at 0.05", scen, "", r["power_unadjusted"], r["reps"],
                      f"Satterthwaite t: {o['power_unadjusted']:.3f}"))
    # -- 7. McNemar -----------------------------------------------------------------------------
    r = Sim.mcnemar_size(Sim.Crossed(1.0, 0.0, 1.0, 0.8), sigma_g=1.0, reps=n(4000), seeds=3, images=300, seed=6)
    print(row("McNemar over seeds type-I error", "same trained skill, model-specific image effects, N=300", "≤ 0.05",
              r["clustered"], r["reps"], f"seeds pooled as independent: {r['pooled_as_independent']:.3f}"))
    r = Sim.mcnemar_under_recipe_null(Sim.Crossed(1.0, 0.3, 1.0, 0.8), sigma_g=0.3, reps=n(4000), seeds=3, images=500, seed=3)
    print(row("recipes' null: verdict (paired test) rejects", "equally good recipes, seeds differ (tau 0.3), N=500", "≤ 0.05",
              r["paired_test"], r["reps"], f"McNemar over seeds: {r['mcnemar']:.3f} (hence a detail table, not the verdict)"))
    r = Sim.multiplicity(reps=n(20000), m=168, rho=0.3, n_true=20, seed=8)
    print(row("family-wise error, Holm (idealised z p-values)", "168 comparisons (transfer), 20 real, corr. 0.3", "≤ 0.05",
              r["fwer_holm"], r["reps"], f"unadjusted: {r['fwer_unadjusted']:.3f}; BH FDR {r['fdr_bh']:.3f}"))
    # -- 8. training size for a target ----------------------------------------------------------
    for seeds in (3, 2):
        r = Sim.target_coverage(Sim.Curve(), sizes=[100, 200, 500, 1000], seeds=seeds, images=1000, target_error=0.15,
                                reps=n(300), n_boot=300, seed=9)
        print(row("size-for-target interval coverage", f"sizes 100-1000 x {seeds} seeds, N=1000, true n=400", "0.95",
                  r["coverage"], r["reps"], f"median high/low {r['median_high_over_low']:.2f}"))
    r = Sim.target_coverage(Sim.Curve(), sizes=[100, 200, 500, 1000], seeds=3, images=1000, target_error=0.15,
                            reps=n(300), n_boot=300, eval_noise=False, seed=9)
    print(row("size-for-target interval coverage", "same, bootstrap without eval-image resampling", "0.95",
              r["coverage"], r["reps"]))
    targets = [0.2, 0.15, 0.1, 0.05]
    r = Sim.fit_verdicts(Sim.Curve(c=0.06), sizes=[50, 100, 200, 500, 1000], seeds=3, images=1000, target_errors=targets,
                         reps=n(200), n_boot=200, seed=9)
    scen = "true floor 0.06, sizes 50-1000 x 3 seeds, N=1000, targets error 0.20/0.15/0.10/0.05"
    print(row("fit called UNRELIABLE as a whole", scen, "small", r["fit_unreliable"], r["reps"],
              f"one verdict per fit: {r['old_fit_unreliable']:.3f} (floor at 0 in {r['floor_at_zero']:.3f})"))
    for t in targets:
        tr = r[f"target {t:g}"]
        where = "unreachable" if math.isinf(tr["true_size"]) else f"true n = {tr['true_size']:,.0f}, {tr['times_largest']:.1f}x the largest"
        cov = "" if math.isnan(tr["coverage_when_reliable"]) else f"coverage when called reliable {tr['coverage_when_reliable']:.3f}"
        print(row("target called unreliable (per target)", f"error {t:g}: {where}", "0 inside, 1 far/unreachable",
                  tr["unreliable"], r["reps"], cov))
    # -- 9. pointing game, adequacy, Clopper-Pearson --------------------------------------------
    for kind, what in (("two_sites", "lesions at two sites 6 px apart (tolerance 4.3 px at 64 px)"),
                       ("ring", "lesions anywhere on a ring")):
        r = Sim.pointing_prior_gap(reps=n(200), kind=kind, seed=1, n_eval=4000 if k >= 1 else 1000)
        print(f"| fixed-point baseline: best image-blind score minus the baseline's | {what}, 200 training masks | ~0 | "
              f"**{r['gap']:.3f}** (max {r['max_gap']:.3f}) | peak of the mean mask: {r['gap_old']:.3f} (max {r['max_gap_old']:.3f}) | {r['reps']:,} |")
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
