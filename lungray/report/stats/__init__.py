"""Intervals, paired tests and learning-curve fits: pure functions on NumPy arrays.

The published studies this package reproduces report single runs with no error bars
(PROTOCOLS.md, "What the studies lack"): DenseNet121 beat ResNet50 by 1-2 points at every
training size in the training-size study (section 1), with one seed each. These functions are
what the report uses to say whether such a gap is larger than seed and test-set noise:

* :func:`mean_ci` - mean over seeds with a Student-t 95% interval (few seeds, so not a normal
  interval); conditional on the evaluation images;
* :func:`two_level_ci_scores`, :func:`two_level_ci_boot` - the report's cell interval: the mean
  over runs with the run-to-run AND the evaluation-image noise (variance components, guarded
  Satterthwaite degrees of freedom), resampled by patient when images share one
  (:func:`unit_codes`), on the logit scale for a proportion (never zero-width at 0 or 1);
* :func:`degenerate_output`, :func:`counted_mask` - which runs of a cell count (one rule for the
  console, MLflow and the report); :func:`chance_check` - is a run distinguishable from chance?
* :func:`paired_test` - the difference in accuracy between two models trained on the SAME
  subsets (seeds) and scored on the SAME evaluation images, with both noise terms (fiducial
  reference distribution, :func:`fiducial_sf`);
  :func:`holm`, :func:`benjamini_hochberg` - the corrections over the report's family;
* :func:`mcnemar_exact`, :func:`mcnemar_clustered` - exact McNemar on one seed, and one test
  over all seeds with the image as the cluster;
* :func:`binom_ci` (Clopper-Pearson, Wilson), :func:`mcnemar_detectable_difference` - the
  pointing game's interval and the test-set adequacy line;
* :func:`fit_power_law`, :func:`bootstrap_power_law`, :func:`size_for_target` - the learning
  curve ``error(n) = a * n**-b + c`` and the training size it predicts for a target.

One module per question: :mod:`~lungray.report.stats.intervals` (one cell),
:mod:`~lungray.report.stats.degenerate` (which runs count), :mod:`~lungray.report.stats.chance`
(runs indistinguishable from chance), :mod:`~lungray.report.stats.paired`
(two recipes), :mod:`~lungray.report.stats.multiplicity` (the family),
:mod:`~lungray.report.stats.fits` (learning curves); this package re-exports them all.

Everything is deterministic given its ``seed`` argument (``numpy.random.default_rng``), takes
and returns plain arrays/floats, and never reads files, so each is tested on hand-computed cases
(``tests/test_report_stats.py``); what each promises (coverage, type-I error) is measured by
simulation in ``tests/test_stats_simulation.py`` and ``bench/bench_stats.py``.
"""

from lungray.report.stats.chance import ChanceCheck, chance_check
from lungray.report.stats.degenerate import COLLAPSED, CONSTANT, counted_mask, degenerate_output
from lungray.report.stats.fits import (
    B_MAX,
    B_MIN,
    FLOOR_AT_ZERO,
    PowerLawBootstrap,
    PowerLawFit,
    bootstrap_power_law,
    bound_flags,
    fit_power_law,
    fit_power_law_batch,
    power_law,
    quantiles_with_inf,
    size_for_target,
    target_where,
)
from lungray.report.stats.gap import GapCI, set_gap
from lungray.report.stats.intervals import (
    CI,
    DF_GUARD,
    PSEUDO,
    TwoLevelCI,
    binom_ci,
    bootstrap_ci,
    mean_ci,
    seed_only_ci,
    two_level_arrays,
    two_level_bounds,
    two_level_ci_boot,
    two_level_ci_scores,
    unit_codes,
)
from lungray.report.stats.multiplicity import benjamini_hochberg, holm
from lungray.report.stats.paired import (
    McNemarResult,
    PairedTest,
    fiducial_half,
    fiducial_sf,
    mcnemar_clustered,
    mcnemar_detectable_difference,
    mcnemar_exact,
    paired_arrays,
    paired_test,
)

__all__ = [
    "CI",
    "GapCI",
    "set_gap",
    "mean_ci",
    "bootstrap_ci",
    "TwoLevelCI",
    "two_level_ci_scores",
    "two_level_ci_boot",
    "two_level_arrays",
    "two_level_bounds",
    "unit_codes",
    "seed_only_ci",
    "ChanceCheck",
    "chance_check",
    "degenerate_output",
    "counted_mask",
    "CONSTANT",
    "COLLAPSED",
    "PairedTest",
    "paired_test",
    "paired_arrays",
    "fiducial_sf",
    "fiducial_half",
    "holm",
    "benjamini_hochberg",
    "mcnemar_exact",
    "McNemarResult",
    "mcnemar_clustered",
    "binom_ci",
    "mcnemar_detectable_difference",
    "PowerLawFit",
    "power_law",
    "fit_power_law",
    "fit_power_law_batch",
    "bound_flags",
    "target_where",
    "bootstrap_power_law",
    "size_for_target",
    "PowerLawBootstrap",
    "quantiles_with_inf",
    "B_MIN",
    "B_MAX",
    "FLOOR_AT_ZERO",
    "DF_GUARD",
    "PSEUDO",
]
