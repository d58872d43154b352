"""``build_report``: one self-contained HTML report (plus CSV tables) for a sweep in MLflow.

The nine sections follow issue 4: learning curves, the studies' tables, training dynamics,
per-class results, paired comparisons, learning-curve fit, Grad-CAM panels, heat-map sanity
(pointing game) and data & provenance. A sweep still running, or with failed trials, gives a
partial report whose header says how many trials are missing and which failed, and why.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd

from lungray import tracking as T
from lungray.errors import LungrayError
from lungray.report import figures as F
from lungray.report import html as H
from lungray.report import tables as TB
from lungray.redact import redact
from lungray.report.load import Sweep, download, load_sweep, prediction_matrix, safe_uri

log = logging.getLogger(__name__)

__all__ = ["build_report", "ReportParts", "report_parts", "ReportIncomplete"]

REPORT_HTML = "report.html"

#: Bootstrap resamples of the evaluation images behind the cell intervals of AUC, macro F1 and
#: balanced accuracy (accuracy and log loss need none: their image term is in closed form).
CELL_BOOT = 1000

#: What every "seeds+images" interval of the report estimates, and what it holds fixed.
INTERVAL_MEANING = (
    "Intervals are 95% intervals for the expected score of a NEW training run of that model at that size "
    "(a new subset draw and initialisation) on a NEW image from the population the evaluation set was drawn "
    "from. They carry both sources of noise: run to run (seeds) and which images happened to be in the "
    "evaluation set (variance components, t quantile with Satterthwaite degrees of freedom; the image part "
    "in closed form for accuracy and log loss, by a bootstrap of the evaluation images shared by all seeds "
    "for AUC, macro F1 and balanced accuracy). They are conditional on the fixed training pool the subsets "
    "are drawn from, the validation set and the hyper-parameters, and treat evaluation images as independent "
    "(several images of one patient would make them too narrow). Validation loss has no per-image values: "
    "its interval is over seeds only, conditional on the validation images. Runs at chance (accuracy not "
    "above the majority-class rate AND AUC not above 0.5, one-sided tests at 0.05) are left out of the "
    "interval and named in the cell; with one run there is no interval."
)


class ReportIncomplete(LungrayError):
    """The report was written, but some of it failed (each failure is a red box in it).

    Raised by :func:`build_report` *after* the HTML is on disk, so a sweep's results and the
    rest of the report are kept while the caller (the sweep, ``lungray report``) exits non-zero
    with this one-line message instead of a logged traceback and exit 0.
    """

    def __init__(self, path: Path, failures: Sequence[str]):
        self.path = Path(path)
        self.failures = list(failures)
        first = self.failures[0] if self.failures else ""
        more = f" (+{len(self.failures) - 1} more)" if len(self.failures) > 1 else ""
        super().__init__(f"report {self.path} has {len(self.failures)} failed part(s): {first}{more}")


class ReportParts:
    """The computed pieces of a report (tables and figures) before they become HTML.

    The notebooks use :func:`report_parts` to get exactly the figures and tables of the report.
    """

    def __init__(self, sweep: Sweep, runs: pd.DataFrame, summary: pd.DataFrame, labels: list[str]):
        self.sweep = sweep
        self.runs = runs
        self.summary = summary
        self.labels = labels

    def study_table(self, metric: str = "accuracy") -> pd.DataFrame:
        """The model x size table of report section 2, as printed there."""
        return TB.study_table_wide(self.summary, metric, self.labels, self.sweep.sizes)

    def learning_curves(self):
        return F.learning_curves_figure(self.summary, labels=self.labels, runs=self.runs)


def _with_labels(sweep: Sweep, predictions: Optional[dict] = None) -> tuple[pd.DataFrame, list[str]]:
    runs = TB.add_derived(sweep, predictions)
    n_opt = runs["optimizer"].nunique() if not runs.empty else 0
    runs["label"] = [m if n_opt <= 1 else f"{m} / {o}" for m, o in zip(runs["model"], runs["optimizer"])]
    labels = [m if n_opt <= 1 else f"{m} / {o}" for m in sweep.models for o in sweep.optimizers]
    labels = [lab for lab in labels if lab in set(runs["label"])]
    return runs, labels


def report_parts(
    tracking_uri: Optional[str] = None,
    experiment: Optional[str] = None,
    parent_run_id: Optional[str] = None,
    *,
    sweep: Optional[Sweep] = None,
) -> ReportParts:
    """Load a sweep and compute the summary the report's section 1 and 2 are drawn from (with
    the per-image predictions, so the intervals are the report's: seeds + evaluation images)."""
    sweep = sweep or load_sweep(tracking_uri, experiment, parent_run_id)
    preds = TB.prediction_arrays(sweep)
    runs, labels = _with_labels(sweep, preds)
    return ReportParts(sweep, runs, TB.summarise(runs, predictions=preds, n_boot=CELL_BOOT, frames=sweep.predictions), labels)


# ---------------------------------------------------------------------------------------------


def build_report(
    tracking_uri: Optional[str] = None,
    experiment: Optional[str] = None,
    parent_run_id: Optional[str] = None,
    out_dir: str | Path = "report",
    gradcam: bool = True,
    *,
    target_accuracies: Sequence[float] = (0.90, 0.95),
    n_boot: int = 2000,
    seed: int = 0,
    device: Optional[str] = None,
    log_to_mlflow: bool = False,
    max_pointing_images: int = 200,
) -> Path:
    """Build ``<out_dir>/report.html`` (+ CSV tables and PNG figures) from MLflow; return its path.

    Give the experiment (its latest sweep is used) or the sweep's parent run id. The report
    embeds every image as a data URI and references nothing outside the file. Reading is all it
    does by default (a user with read-only access to a tracking server can build a report);
    with ``log_to_mlflow`` the output directory is also logged to the parent run under
    ``report/`` (:mod:`lungray.tracking`), as the sweep runner does at the end of a sweep. A part
    that fails (a Grad-CAM model that cannot be rebuilt...) is a red "FAILED" box in its section,
    and :class:`ReportIncomplete` is raised once the whole report is written. ``gradcam=False``
    skips sections 7-8 (no model is rebuilt, no torch import). ``n_boot`` and ``seed`` drive
    the bootstrap intervals; the same seed gives the same report.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lungray-report-") as tmp:
        sweep = load_sweep(tracking_uri, experiment, parent_run_id, artifact_dir=Path(tmp) / "artifacts")
        builder = _Builder(sweep, out, Path(tmp), target_accuracies, n_boot, seed)
        sections = [
            builder.learning_curves(),
            builder.study_tables(),
            builder.dynamics(),
            builder.per_class(),
            builder.paired(),
            builder.fit(),
        ]
        if sweep.spec.explanation == "overlay" and gradcam:  # segmentation: masks, no heat maps
            sections.append(builder.overlays(device))
        elif gradcam:
            sections += builder.gradcam(device, max_pointing_images)
        else:
            msg = "Grad-CAM panels were not requested (--no-gradcam)."
            sections += [H.Section("gradcam", "Grad-CAM panels", "", notes=[msg]),
                         H.Section("pointing", "Sanity of the heat maps", "", notes=[msg])]
        sections.append(builder.provenance())
        html_text = H.page(f"lungray report: {sweep.study}", builder.subtitle(), builder.header(), sections)
    path = out / REPORT_HTML
    path.write_text(html_text, encoding="utf-8")
    log.info("wrote %s", path)
    if log_to_mlflow:
        sweep.client().log_artifacts(sweep.parent_id, str(out), artifact_path="report")
    failures = [f"{sec.title}: {e}" for sec in sections for e in sec.errors]
    if failures:
        raise ReportIncomplete(path, failures)
    return path


class _Builder:
    def __init__(self, sweep: Sweep, out: Path, tmp: Path, targets: Sequence[float], n_boot: int, seed: int):
        self.sweep = sweep
        self.out = out
        self.tmp = tmp
        self.targets = tuple(targets)
        self.n_boot = n_boot
        self.seed = seed
        self.predictions = TB.prediction_arrays(sweep)
        self.runs, self.labels = _with_labels(sweep, self.predictions)
        self.spec = sweep.spec  # what the task's trials report: the primary metric, the explanation panels
        self.primary = self.spec.primary_metric
        self.summary = TB.summarise(self.runs, predictions=self.predictions, n_boot=min(n_boot, CELL_BOOT), seed=seed,
                                    frames=sweep.predictions)
        self.sizes = sweep.sizes
        self.status = TB.grid_status(sweep)
        self._csv(self.runs.drop(columns=["start_time"], errors="ignore"), "runs.csv")
        self._csv(self.summary, "summary.csv")

    # -- helpers ------------------------------------------------------------------------------
    def _primary_words(self) -> str:
        return "accuracy" if self.primary == "accuracy" else TB.METRICS[self.primary].label

    def _headline_words(self) -> str:
        if self.primary == "accuracy":
            return "accuracy, balanced accuracy, macro F1 and AUC"
        return ", ".join(TB.METRICS[m].label for m in self.spec.headline_metrics if m in TB.METRICS)

    def _csv(self, df: pd.DataFrame, name: str) -> None:
        df.to_csv(self.out / name, index=False)

    def _fig(self, fig, name: str, alt: str, caption: str = "") -> str:
        """Write the figure at print resolution (PNG, 300 dpi) and as vector files (SVG, PDF)
        under ``figures/``, and embed a lighter screen PNG in the page."""
        files = F.save_figure(fig, self.out / "figures" / name)
        cap = caption + (" " if caption else "") + f"Print files: figures/{name}." + "/".join(p.suffix[1:] for p in files) + "."
        return H.figure(F.data_uri(F.to_png(fig, F.SCREEN_DPI)), alt, cap)

    def _no_runs(self, sid: str, title: str) -> Optional[H.Section]:
        if self.sweep.complete.empty:
            return H.Section(sid, title, "", notes=["No trial of this sweep has finished yet; nothing to show."])
        return None

    # -- header -------------------------------------------------------------------------------
    def subtitle(self) -> str:
        s = self.sweep
        return f"experiment {s.experiment_name} · sweep run {s.parent_id} · {safe_uri(s.tracking_uri)}"

    def header(self) -> str:
        st = self.status
        s = self.sweep
        parts = []
        if st["expected"] is None:
            parts.append(H.note(f"{st['complete']} trial(s) complete, {st['failed']} failed, {st['running']} running; "
                                "the expected grid is unknown (no config.yaml)."))
        elif st["complete"] == st["expected"] and (lacking := self._eval_lacks()):
            # issue 18: every trial finished, but on an evaluation set without a class: not complete
            parts.append(H.note(
                f"NOT A COMPLETE EVALUATION: all {st['expected']} trials finished, but {lacking}, so accuracy, "
                "per-class metrics and curves miss that class. Re-split the data; `lungray data check` names the cause.",
                "error"))
        elif st["complete"] == st["expected"]:
            parts.append(H.note(f"Complete: all {st['expected']} trials of the grid finished.", "ok"))
        else:
            parts.append(
                H.note(
                    f"PARTIAL REPORT: {st['complete']} of {st['expected']} trials complete "
                    f"({st['failed']} failed, {st['running']} running, {st['missing']} not started). "
                    "Missing cells are marked 'missing' in the tables; the list is in section 9."
                )
            )
        for n in s.notes:
            parts.append(H.note(n))
        grid = (f"models: {', '.join(s.models)} · sizes: {', '.join(map(str, self.sizes))} · "
                f"optimizers: {', '.join(s.optimizers)} · seeds: {', '.join(map(str, s.seeds))}")
        parts.append(f'<p class="muted">{H.esc(grid)}</p>')
        return "".join(parts)

    def _eval_lacks(self) -> str:
        """Words for the classes an evaluation set lacks ('' when none does): from the prepared
        split's class counts and, per cell, from a finished trial whose per-class recall is
        missing (no image of the class was scored)."""
        names = list(self.sweep.class_names)
        ev = ((self.sweep.data_summary or {}).get("class_counts") or {}).get("eval") or {}
        missing = [c for c in names if c in ev and int(ev[c]) == 0]
        if missing:
            return "the evaluation set holds no " + " and no ".join(f"'{c}'" for c in missing) + " image"
        done = self.sweep.complete
        cells: dict[str, set] = {}
        for c in names:
            col = T.per_class_key("recall", c)
            if col in done.columns:
                for cell in done.loc[done[col].isna(), "cell"] if "cell" in done.columns else []:
                    cells.setdefault(str(cell), set()).add(c)
        if cells:
            lacked = sorted(set().union(*cells.values()))
            return (f"the evaluation of {len(cells)} cell(s) (e.g. {next(iter(sorted(cells)))}) scored no "
                    + " and no ".join(f"'{c}'" for c in lacked) + " image")
        return ""

    # -- 1 ----------------------------------------------------------------------------------------
    def learning_curves(self) -> H.Section:
        title = "Learning curves"
        if (empty := self._no_runs("curves", title)) is not None:
            return empty
        body = self._fig(
            F.learning_curves_figure(self.summary, labels=self.labels, runs=self.runs),
            "learning_curves",
            "Learning curves: metrics against training size",
            "Mean over seeds (runs at chance, marked x, are left out unless every run of the cell is); the band is "
            "the 95% interval over seeds and "
            "evaluation images (none with one seed). Validation loss is taken at each trial's best epoch; held-out "
            "log loss on the evaluation set.",
        )
        return H.Section(
            "curves",
            title,
            body,
            intro=f"Held-out {self._headline_words()} against the number of training images "
            "(log scale), one line per model, on the same fixed evaluation images for every size and seed.",
        )

    # -- 2 ----------------------------------------------------------------------------------------
    def study_tables(self) -> H.Section:
        title = "Model x training size tables"
        if (empty := self._no_runs("tables", title)) is not None:
            return empty
        body = []
        for name in (*self.spec.headline_metrics, "val_loss"):
            tab = TB.study_table(self.summary, name)
            if tab.empty:
                continue
            self._csv(tab, f"table_{name}.csv")
            body.append(f"<h3>{H.esc(TB.METRICS[name].label)}</h3>")
            body.append(H.study_table_html(TB.study_table_wide(self.summary, name, self.labels, self.sizes)))
        return H.Section(
            "tables",
            title,
            "".join(body),
            intro="Mean over seeds [95% interval]. Bold with ★: best mean at that size with an interval clear of "
            "the runner-up; ☆: best mean, but overlapping intervals (see the paired comparisons before calling it a "
            "win). " + INTERVAL_MEANING,
        )

    # -- 3 ----------------------------------------------------------------------------------------
    def dynamics(self) -> H.Section:
        title = "Training dynamics"
        if (empty := self._no_runs("dynamics", title)) is not None:
            return empty
        if self.sweep.histories.empty:
            return H.Section("dynamics", title, "", notes=["No per-epoch metrics were logged."])
        body = self._fig(F.dynamics_figure(self.runs, self.sweep.histories, "loss", self.labels), "dynamics_loss",
                         "Per-epoch loss", "Loss per epoch: train solid, validation dashed, one line per seed.")
        what = TB.METRICS[self.primary].label
        body += self._fig(F.dynamics_figure(self.runs, self.sweep.histories, self.primary, self.labels), f"dynamics_{self.primary}",
                          f"Per-epoch {what.lower()}", f"{what} per epoch: train solid, validation dashed, one line per seed.")
        return H.Section("dynamics", title, body,
                         intro="One panel per model (rows) and training size (columns), seeds overlaid: over- and "
                         "under-fitting, and seeds that behave differently, are visible here.")

    # -- 4 ----------------------------------------------------------------------------------------
    def chosen_sizes(self) -> list[int]:
        return sorted({self.sizes[0], self.sizes[-1]}) if self.sizes else []

    def per_class(self) -> H.Section:
        title = "Per-class results"
        if (empty := self._no_runs("perclass", title)) is not None:
            return empty
        sw = self.sweep
        sizes = self.chosen_sizes()
        if T.CONFUSION_CSV not in self.spec.artifacts:  # no image classes predicted (segmentation)
            return H.Section("perclass", title, "", notes=[
                "The masks have one foreground class, so its Dice and IoU are the tables above; each trial's "
                f"{T.PER_CLASS} and {T.PREDICTIONS} (per-image Dice, IoU and detection score) are in MLflow."])
        pc = TB.per_class_table(self.runs, sw.class_names, sizes, predictions=self.predictions,
                                n_boot=min(self.n_boot, CELL_BOOT), seed=self.seed)
        self._csv(pc, "per_class.csv")
        body = []
        if not pc.empty:
            shown = pc.assign(
                P=[H.fmt_ci(r.precision, r.precision_low, r.precision_high, r.n) for r in pc.itertuples()],
                R=[H.fmt_ci(r.recall, r.recall_low, r.recall_high, r.n) for r in pc.itertuples()],
                F1=[H.fmt_ci(r.f1, r.f1_low, r.f1_high, r.n) for r in pc.itertuples()],
            )
            body.append("<h3>Precision, recall and F1 (mean over seeds [95% interval over seeds and evaluation images])</h3>")
            body.append(H.table(shown, ["train_size", "label", "class", "P", "R", "F1", "n"],
                                headers={"train_size": "size", "label": "model", "n": "seeds"},
                                text_columns=["label", "class"]))
        mn = TB.missed_as_normal_table(self.runs, sw.class_names, sizes)
        if not mn.empty:
            self._csv(mn, "missed_as_normal.csv")
            body.append("<h3>Images missed as Normal (mean over seeds)</h3>")
            cols = ["train_size", "label"] + [c for c in sw.class_names if c in mn.columns] + ["n"]
            body.append(H.table(mn, cols, headers={"train_size": "size", "label": "model", "n": "seeds"},
                                formats={c: (lambda v: H.fmt(v, 1)) for c in sw.class_names}, text_columns=["label"]))
        for n in sizes:
            cms = TB.confusion_matrices(sw, n)
            if cms:
                pd.concat(
                    {lab: pd.DataFrame(cm, index=sw.class_names, columns=sw.class_names) for lab, cm in cms.items()},
                    names=["model", "true"],
                ).to_csv(self.out / f"confusion_n{n}.csv")
                body.append(self._fig(F.confusion_figure(cms, sw.class_names, f"n = {n} training images"),
                                      f"confusion_n{n}", f"Confusion matrices at n={n}",
                                      "Rows: true class, normalised to 1; predictions pooled over seeds."))
        if sizes:
            curves = F.roc_curves(sw, sizes[-1])
            if curves:
                body.append(self._fig(F.roc_figure(curves, f"ROC at n = {sizes[-1]}"), "roc", "ROC curves",
                                      "Predictions pooled over seeds; one-vs-rest per class for more than two classes."))
        return H.Section("perclass", title, "".join(body),
                         intro=f"At the smallest and largest training sizes ({', '.join(map(str, sizes))}).")

    # -- 5 ----------------------------------------------------------------------------------------
    def paired(self) -> H.Section:
        title = "Paired comparisons"
        if (empty := self._no_runs("paired", title)) is not None:
            return empty
        pc = TB.paired_comparisons(self.sweep, metric=self.primary)
        self.paired_df = pc
        self._csv(pc, "paired.csv")
        adequacy = self._adequacy(pc)
        if pc.empty:
            return H.Section("paired", title, adequacy, notes=["Needs at least two models with predictions.csv at a size."])
        items = []
        for r in pc.itertuples():
            mark = "" if r.significant else "  (within noise)"
            items.append(f"<li>{H.esc(r.sentence + mark)}</li>")
        m = int(pc["family_size"].iloc[0])
        family = (f"Family: the {m} comparison{'s' if m != 1 else ''} below (training sizes × optimizers × model pairs, "
                  f"{self._primary_words()}). Correction: Holm's step-down over the family (family-wise error ≤ {TB.PAIRED_ALPHA:g} "
                  "under any dependence between the comparisons, which share models and images); a difference is "
                  f"claimed when the Holm-adjusted p < {TB.PAIRED_ALPHA:g}. Benjamini-Hochberg q-values (false "
                  "discovery rate) are in paired.csv. The 95% intervals are per comparison, not adjusted.")
        body = f'<p class="intro">{H.esc(family)}</p><ul class="sentences">' + "".join(items) + "</ul>"
        body += "<h3>Details</h3>" + H.table(
            pc,
            ["train_size", "optimizer", "model_a", "model_b", "n_seeds", "n_images", "diff_points", "low_points",
             "high_points", "p", "p_holm", "q_bh",
             *(("mcnemar_b", "mcnemar_c", "mcnemar_p", "mcnemar_p_holm") if self.primary == "accuracy" else ())],
            headers={"train_size": "size", "diff_points": "A-B (points)", "low_points": "low", "high_points": "high",
                     "p": "p", "p_holm": "p (Holm)", "q_bh": "q (BH)", "mcnemar_b": "only A right (image-runs)",
                     "mcnemar_c": "only B right", "mcnemar_p": "McNemar p (all seeds)", "mcnemar_p_holm": "McNemar p (Holm)"},
            formats={**{c: (lambda v: H.fmt(v, 1)) for c in ("diff_points", "low_points", "high_points")},
                     **{c: H.fmt_p for c in ("p", "p_holm", "q_bh", "mcnemar_p", "mcnemar_p_holm")}},
            text_columns=["optimizer", "model_a", "model_b"],
        )
        body += adequacy
        return H.Section(
            "paired",
            title,
            body,
            intro=f"{TB.METRICS[self.primary].label} difference between models trained on the same subsets (seeds) and "
            "scored on the same evaluation images (points: 100 x the per-image difference). Primary test: a t test on the paired per-image differences whose variance holds the "
            "seed-to-seed and the evaluation-image term (Satterthwaite degrees of freedom): it asks whether the two "
            "training recipes differ on new runs and new images."
            + (" McNemar: one exact test per comparison over all "
               "seeds, the evaluation image as the cluster (the same images enter every seed, so seeds' tables cannot "
               "be pooled as independent); it asks whether these trained models differ, holding the runs fixed."
               if self.primary == "accuracy" else ""),
        )

    def _adequacy(self, pc: pd.DataFrame) -> str:
        """The test-set adequacy table (Beleites et al. 2013) and one sentence per size."""
        ad = TB.adequacy_table(self.summary, pc)
        self._csv(ad, "adequacy.csv")
        if ad.empty:
            return ""
        out = ["<h3>Test-set adequacy</h3>",
               '<p class="intro">' + H.esc(
                   "What the evaluation set can resolve at each cell (Beleites et al. 2013): the 95% half-width of ONE "
                   "run's accuracy (Wilson), and the smallest accuracy difference between two models a paired McNemar "
                   f"comparison on these images detects (two-sided α = {ad['alpha'].iloc[0]:g}, power "
                   f"{ad['power'].iloc[0]:g}), given the share of images exactly one model gets right (observed against "
                   "the other models at that size, or 2p(1-p) for independent errors when there is no other model). "
                   "Gaps smaller than that are out of reach of this evaluation set, whatever the number of seeds.") + "</p>"]
        items = []
        for (n, o), g in ad.groupby(["train_size", "optimizer"], sort=True):
            r = g.iloc[0]
            where = f"{int(n)} training images" + (f" ({o})" if ad["optimizer"].nunique() > 1 else "")
            lo, hi = f"{g.mdd_points.min():.1f}", f"{g.mdd_points.max():.1f}"
            mdd = lo if lo == hi else f"{lo}-{hi}"
            items.append(f"<li>{H.esc(f'At {where}: {int(r.n_images):,} evaluation images resolve a difference of ≥ {mdd} points between two models; one run is known to ±{g.halfwidth_points.max():.1f} points.')}</li>")
        out.append('<ul class="sentences">' + "".join(items) + "</ul>")
        out.append(H.table(ad, ["train_size", "label", "n_images", "accuracy", "halfwidth_points", "discordance",
                                "discordance_source", "mdd_points"],
                           headers={"train_size": "size", "label": "model", "n_images": "eval images",
                                    "halfwidth_points": "± one run (points)", "discordance": "discordance",
                                    "discordance_source": "discordance from", "mdd_points": "smallest resolvable difference (points)"},
                           formats={"halfwidth_points": lambda v: H.fmt(v, 1), "mdd_points": lambda v: H.fmt(v, 1)},
                           text_columns=["label", "discordance_source"]))
        return "".join(out)

    # -- 6 ----------------------------------------------------------------------------------------
    def fit(self) -> H.Section:
        title = "Learning-curve fit"
        if (empty := self._no_runs("fit", title)) is not None:
            return empty
        tab, fits = TB.learning_curve_fits(self.sweep, target_accuracies=self.targets, n_boot=min(self.n_boot, 400),
                                           seed=self.seed, predictions=self.predictions, metric=self.primary,
                                           frames=self.sweep.predictions)
        tab = tab.set_index("label").reindex([lab for lab in self.labels if lab in set(tab["label"])]).reset_index() if not tab.empty else tab
        self._csv(tab, "power_law.csv")
        body = self._fig(F.fit_figure(self.runs, fits, self.targets, self.labels, self.primary), "power_law", "Power-law fits",
                         "Dots: runs. Line: error(n) = a·n^-b + c fitted over all runs, solid over the measured sizes, "
                         "dotted where extrapolated (below the smallest and beyond the largest size); band: 95% "
                         "bootstrap (evaluation images resampled, runs resampled within each size); dashed: targets.")
        if not tab.empty:
            shown = tab.assign(
                a_=[H.fmt_ci(r.a, r.a_low, r.a_high, digits=3) for r in tab.itertuples()],
                b_=[H.fmt_ci(r.b, r.b_low, r.b_high, digits=3) for r in tab.itertuples()],
                c_=[H.fmt_ci(r.c, r.c_low, r.c_high, digits=3) for r in tab.itertuples()],
                verdict=["reliable" if r.reliable else "UNRELIABLE: " + r.flags for r in tab.itertuples()],
            )
            cols = ["label", "n_sizes", "runs_per_size", "a_", "b_", "c_", "r2"]
            heads = {"label": "model", "n_sizes": "sizes", "runs_per_size": "size×runs", "a_": "a", "b_": "b",
                     "c_": "c (floor)", "r2": "R²"}
            for t in self.targets:
                col = TB.target_column(t)
                shown[col + "_"] = [_n_ci(getattr(r, col), getattr(r, col + "_low"), getattr(r, col + "_high"))
                                    + (f" ({getattr(r, col + '_where')})" if getattr(r, col + "_where") else "")
                                    for r in tab.itertuples()]
                cols.append(col + "_")
                heads[col + "_"] = f"images for {t:.0%} {self._primary_words()} [95% CI]"
            cols.append("verdict")
            body += H.table(shown, cols, headers=heads, text_columns=["label", "verdict", "runs_per_size"] + cols[3:6],
                            cell_class=lambda r, c: "bad" if c == "verdict" and not r["reliable"] else "")
        return H.Section("fit", title, body,
                         intro=f"How error (1 - {self._primary_words()}) falls with training size, and how many images a "
                         f"target {self._primary_words()} would take if "
                         "the trend held. A size beyond the largest one measured is an extrapolation and says so. No "
                         "interval without at least 2 runs at every size (one run per size says nothing about how far a "
                         "re-run would move a point). Flagged unreliable when the fit is poor, has no spare degrees of "
                         "freedom, ends on a bound of a parameter (e.g. the floor c pinned at 0: no floor identified), or "
                         "extrapolates far beyond the sizes measured.")

    # -- 7, 8 -------------------------------------------------------------------------------------
    def gradcam(self, device: Optional[str], max_pointing: int) -> list[H.Section]:
        t7, t8 = "Grad-CAM panels", "Sanity of the heat maps"
        try:
            panels, pointing = _gradcam_sections(self, device, max_pointing)
        except Exception as e:  # noqa: BLE001 - a red box in the report and a non-zero exit, never silent
            log.debug("Grad-CAM sections failed", exc_info=True)
            msg = f"Grad-CAM could not be computed: {type(e).__name__}: {_first_line(e)}"
            return [H.Section("gradcam", t7, "", errors=[msg]), H.Section("pointing", t8, "", notes=[msg])]
        return [panels, pointing]

    def overlays(self, device: Optional[str]) -> H.Section:
        from lungray.report.overlays import TITLE, overlay_section

        try:
            return overlay_section(self, device)
        except Exception as e:  # noqa: BLE001 - a red box in the report and a non-zero exit, never silent
            log.debug("mask panels failed", exc_info=True)
            return H.Section("overlays", TITLE, "", errors=[f"The mask panels could not be drawn: {type(e).__name__}: {_first_line(e)}"])

    # -- 9 ----------------------------------------------------------------------------------------
    def _leakage(self) -> str:
        """The leakage audit, example pairs drawn from the prepared images when they are reachable."""
        root = self.sweep.parent_tags.get(T.DATA_ROOT, "")

        def thumbs(examples: list[dict]) -> str:
            if not root or not (Path(root) / "images.npy").exists():
                return ""
            images = np.load(Path(root) / "images.npy", mmap_mode="r")
            if any(max(int(e["row_a"]), int(e["row_b"])) >= len(images) for e in examples):
                return ""
            full = float(np.iinfo(images.dtype).max) if np.issubdtype(images.dtype, np.integer) else 1.0
            return self._fig(_pair_figure(images, full, examples), "duplicate_pairs", "Example duplicate pairs",
                             "Example duplicate pairs: each column is one pair (top image, bottom copy) with the split and "
                             "the label of each image and the stage that found it; a pair whose images carry different "
                             "labels is marked in red (a label conflict or a false pair of the audit: not used to group "
                             "the split).")

        return _leakage_html(self.sweep.leakage, thumbs)

    def provenance(self) -> H.Section:
        from lungray import __version__

        sw = self.sweep
        body = []
        ds = sw.data_summary or {}
        counts = ds.get("class_counts")
        if counts:
            df = pd.DataFrame(counts).T
            df.index.name = "split"
            df = df.reset_index()
            df["total"] = df[[c for c in df.columns if c != "split"]].sum(axis=1)
            self._csv(df, "class_counts.csv")
            body.append("<h3>Class counts per split</h3>" + H.table(df, text_columns=["split"]))
            body.append(self._fig(F.class_balance_figure(counts), "class_balance", "Class balance per split"))
        extra = {k: v for k, v in ds.items() if k not in ("class_counts", "info")}
        same = {"preprocessing": "preprocess"}  # the data layer's name for a key the summary already has
        for k, v in (ds.get("info") or {}).items():  # each key once: the summary's own value wins
            if k not in ("class_counts", "leakage") and same.get(k, k) not in extra:
                extra[k] = v
        if extra:
            body.append("<h3>Dataset summary</h3>" + H.kv({k: _short(v) for k, v in extra.items()}))
        cfg = sw.config
        if cfg is not None:
            body.append("<h3>Preprocessing and augmentation</h3>" + H.kv({
                "source": cfg.data.source,
                "resolution": cfg.data.resolution,
                "resize": cfg.data.resize,
                "preprocess": cfg.data.preprocess,
                "augmentation": cfg.train.augmentation,
                "normalization": cfg.train.normalization,
                **({"variants (paired arms <model>@<variant>)": "; ".join(
                    f"{v.key}: " + ", ".join(f"{k}={getattr(v, k)}" for k in ("preprocess", "normalization", "norm_mean", "norm_std")
                                             if getattr(v, k) is not None)
                    for v in cfg.variants)} if any(v.key for v in cfg.variants) else {}),
                "eval_size / val_size": f"{cfg.data.eval_size} / {cfg.data.val_size} (split seed {cfg.data.split_seed})",
                "training sizes": ", ".join(map(str, cfg.sizes)),
                "class-balanced subsets": cfg.data.class_balanced,
                "leakage policy": f"{cfg.data.leakage} (Hamming distance <= {cfg.data.leakage_max_distance})",
            }))
        sub = _subsets_table(sw.splits)
        if not sub.empty:
            self._csv(sub, "subsets.csv")
            body.append("<h3>Training subsets</h3>" + H.table(
                sub, headers={"train_size": "size", "n_images": "images", "nested_in_next": "inside the next size's subset",
                              "in_eval": "images also in the evaluation set"}, text_columns=["nested_in_next"]))
        body.append("<h3>Leakage audit</h3>" + self._leakage())
        body.append("<h3>Provenance</h3>" + H.kv({
            "study": sw.study,
            "sweep run": sw.parent_id,
            "sweep status": sw.parent_status,
            "experiment": f"{sw.experiment_name} ({sw.experiment_id})",
            "tracking URI": safe_uri(sw.tracking_uri),
            "lungray version (sweep)": sw.parent_tags.get(T.VERSION, "?"),
            "git commit": sw.parent_tags.get(T.GIT_COMMIT, "?"),
            "dataset fingerprint": sw.parent_tags.get(T.DATASET_FP, "?"),
            "config fingerprint": sw.parent_tags.get(T.CONFIG_FP, "?"),
            "Ray experiment directory": sw.parent_tags.get(T.STORAGE_PATH, "?"),
            "prepared data": sw.parent_tags.get(T.DATA_ROOT, "?"),
            "report built": f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M UTC} with lungray {__version__}",
        }))
        failed = sw.failed
        self._csv(failed[["trial_id", "model", "train_size", "optimizer", "seed", "status", "error", "run_id"]], "failed_trials.csv")
        body.append(f"<h3>Failed trials ({len(failed)})</h3>")
        body.append(H.table(failed, ["model", "train_size", "optimizer", "seed", "status", "error", "run_id"],
                            headers={"train_size": "size"}, text_columns=["model", "optimizer", "status", "error", "run_id"]))
        missing = sw.missing
        self._csv(missing, "missing_trials.csv")
        body.append(f"<h3>Trials not complete ({len(missing)})</h3>")
        body.append(H.table(missing, ["model", "train_size", "optimizer", "seed", "state", "error"],
                            headers={"train_size": "size"}, text_columns=["model", "optimizer", "state", "error"]))
        if sw.config_text:
            body.append(f"<h3>Resolved config</h3><pre>{H.esc(redact(sw.config_text))}</pre>")
        return H.Section("provenance", "Data and provenance", "".join(body))


def _subsets_table(splits: Optional[dict]) -> pd.DataFrame:
    """Per (size, seed): subset length, whether it lies inside the next larger size's subset
    of the same seed (nested subsets, STYLE.md practice 4) and its overlap with the evaluation
    set (must be 0), from the parent run's ``splits.json``."""
    if not splits or not isinstance(splits.get("subsets"), dict):
        return pd.DataFrame()
    ev = set(int(i) for i in splits.get("eval", []))
    subs = {int(n): {int(s): set(map(int, idx)) for s, idx in d.items()} for n, d in splits["subsets"].items()}
    sizes = sorted(subs)
    rows = []
    for i, n in enumerate(sizes):
        for s, idx in sorted(subs[n].items()):
            nxt = subs[sizes[i + 1]].get(s) if i + 1 < len(sizes) else None
            rows.append({"train_size": n, "seed": s, "n_images": len(idx),
                         "nested_in_next": "–" if nxt is None else ("yes" if idx <= nxt else "NO"),
                         "in_eval": len(idx & ev)})
    return pd.DataFrame(rows)


def _variant_data(sw: Sweep, data, preprocess: Optional[str]):
    """The prepared images of a variant's preprocessing (same rows), from the sweep's data summary."""
    roots = ((sw.data_summary or {}).get("info") or {}).get("preprocess_roots") or {}
    root = roots.get(preprocess) if preprocess else None
    if not root or Path(root).resolve() == Path(data.root).resolve():
        return data
    if not (Path(root) / "images.npy").exists():
        raise LungrayError(f"the '{preprocess}' images ({root}) are not reachable from here")
    from dataclasses import replace

    return replace(data, root=root)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def _n_ci(est: float, lo: float, hi: float) -> str:
    def f(x: float) -> str:
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return "?"
        return "∞" if math.isinf(x) else f"{x:,.0f}"

    if est is None or (isinstance(est, float) and math.isnan(est)):
        return "–"
    return f"{f(est)} [{f(lo)}, {f(hi)}]"


def _short(v, limit: int = 300) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return s if len(s) <= limit else s[:limit] + f"... ({len(s)} characters)"


_PAIR_STAGES = (
    ("sha256", "exact", "identical bytes (sha256)"),
    ("phash", "near", "perceptual hash: resized, re-encoded, flipped, quarter-turned"),
    ("keypoints", "near", "keypoints + affine RANSAC + photometric check: rotated, zoomed, shifted, flipped"),
)


def _leakage_html(leak: Optional[dict], thumbs: Optional[Callable[[list[dict]], str]] = None) -> str:
    """The leakage audit as a reader wants it (issue 13.5): the policy and how the split was
    grouped in words, pairs per kind and stage (in the dataset and across splits), the duplicate
    clusters, what was dropped, and a few example pairs (thumbnails when ``thumbs`` can draw
    them, else a table). ``leak`` is the logged payload: ``{"summary": ..., "audit": ...}``
    (:func:`lungray.sweep.runner.leakage_payload`; the audit is
    :func:`lungray.data.leakage.leakage_doc`)."""
    if not leak:
        return '<p class="muted">No leakage report was logged.</p>'
    summ = leak.get("summary") or {}
    audit = leak.get("audit") or {}
    mode = summ.get("mode", "unknown")
    out = []
    policy = {"drop": "copies across the split are dropped from the training side",
              "report": "copies across the split are only reported", "off": "no audit was run"}.get(mode, "")
    out.append(f"<p>Policy <b>{H.esc(mode)}</b>{': ' + H.esc(policy) if policy else ''}."
               + (f" Split: {H.esc(summ['grouping'])}." if summ.get("grouping") else "") + "</p>")
    if mode == "off" or not audit:
        return "".join(out)
    by_stage = audit.get("pairs_by_stage") or {}
    cross = audit.get("cross_split") or {}
    rows = []
    for key, kind, how in _PAIR_STAGES:
        row = {"kind": kind, "found by": how, "pairs in the dataset": int(by_stage.get(key, 0))}
        for combo, counts in cross.items():
            row[f"across {combo.replace('-', ' / ')}"] = int((counts or {}).get(key, 0))
        rows.append(row)
    out.append(H.table(pd.DataFrame(rows), text_columns=["kind", "found by"]))
    cl = audit.get("clusters") or {}
    if cl.get("n_clusters"):
        ex = "; ".join(", ".join(map(str, e["members"])) + (f" and {e['more']} more" if e.get("more") else "")
                       for e in cl.get("examples", [])[:3])
        out.append(f"<p>{cl['n_clusters']:,} duplicate cluster(s) holding {cl['n_images_in_clusters']:,} images; the largest has "
                   f"{cl['largest']:,} images. Each cluster is one group of the split, so it lies on one side only. "
                   f"Largest: {H.esc(ex)}.</p>")
    else:
        out.append("<p>No duplicate cluster was found.</p>")
    n_sus = int(audit.get("suspect_pairs", summ.get("suspect_pairs", 0)) or 0)
    if n_sus:
        out.append(H.note(f"{n_sus:,} duplicate pair(s) join images with different labels: each is a label conflict "
                          "(one image filed under two classes) or a false pair of the audit. They are not used to group "
                          "the split; the examples below show them first, marked in red."))
    n_pat = int(audit.get("pairs_across_patients", summ.get("pairs_across_patients", 0)) or 0)
    if n_pat:
        out.append(H.note(f"{n_pat:,} duplicate pair(s) join two different patient ids: a copy belongs to one patient, "
                          "so these are false pairs or patient-id errors."))
    n_cross = int(summ.get("cross_split_pairs", 0))
    if mode == "drop":
        out.append(f"<p>Dropped: {int(summ.get('pool_images_flagged', 0)):,} training-pool and "
                   f"{int(summ.get('val_images_flagged', 0)):,} validation image(s) with a copy on the evaluation side"
                   + ("" if n_cross else " (none: no copy crosses the split)") + ".</p>")
    elif n_cross:
        out.append(f"<p class=\"note\">{n_cross:,} pair(s) cross the split and were kept (policy report).</p>")
    ex = audit.get("examples") or []
    if ex:
        drawn = thumbs(ex[:6]) if thumbs is not None else ""
        if drawn:
            out.append(drawn)
        else:
            df = pd.DataFrame([{"image": f"{e['id_a']} ({e['split_a']}{', ' + str(e['label_a']) if 'label_a' in e else ''})",
                                "copy": f"{e['id_b']} ({e['split_b']}{', ' + str(e['label_b']) if 'label_b' in e else ''})",
                                "found by": e["stage"], "how": e["transform"],
                                "labels": "DIFFERENT: label conflict or false pair" if e.get("suspect") else "same"}
                               for e in ex[:6]])
            out.append("<p>Example pairs</p>" + H.table(df, text_columns=list(df.columns)))
    return "".join(out)


def _pair_figure(images: np.ndarray, max_value: float, examples: list[dict]):
    """Example duplicate pairs side by side, one pair per column, captioned with splits and how found."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(examples)
    fig, axes = plt.subplots(2, k, figsize=(1.9 * k, 4.4), squeeze=False)
    for c, e in enumerate(examples):
        bad = bool(e.get("suspect"))  # the two images carry different labels (issue 18)
        color = "#c0392b" if bad else "black"
        for r, (row, split, lab) in enumerate(((e["row_a"], e["split_a"], e.get("label_a")), (e["row_b"], e["split_b"], e.get("label_b")))):
            ax = axes[r][c]
            ax.imshow(np.asarray(images[int(row)], dtype=np.float32) / max_value, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"{split}" + (f" · {lab}" if lab is not None else ""), fontsize=8, color=color)
            if bad:
                for sp in ax.spines.values():
                    sp.set_edgecolor(color)
                    sp.set_linewidth(2)
        axes[1][c].set_xlabel(f"{e['stage']}\n{e['transform']}" + ("\nLABELS DIFFER" if bad else ""), fontsize=7, color=color)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Grad-CAM (sections 7 and 8)
# ---------------------------------------------------------------------------------------------


def _gradcam_sections(b: _Builder, device: Optional[str], max_pointing: int) -> tuple[H.Section, H.Section]:
    from lungray.report import gradcam as G

    sw = b.sweep
    t7, t8 = "Grad-CAM panels", "Sanity of the heat maps"
    done = sw.complete
    with_ckpt = done[done["run_id"].map(lambda r: sw.checkpoints.get(r, False))]
    if with_ckpt.empty:
        msg = "No trial logged checkpoint/best.pt (tracking.log_checkpoints is off, or no trial finished)."
        return H.Section("gradcam", t7, "", notes=[msg]), H.Section("pointing", t8, "", notes=[msg])
    root = sw.parent_tags.get(T.DATA_ROOT, "")
    if not root or not (Path(root) / "images.npy").exists():
        msg = (f"The prepared images ({T.DATA_ROOT} = '{root}') are not reachable from here; run the report where "
               "the sweep's data directory is mounted to get the panels.")
        return H.Section("gradcam", t7, "", notes=[msg]), H.Section("pointing", t8, "", notes=[msg])

    from lungray.data.prepared import PreparedData

    empty = np.zeros(0, dtype=np.int64)
    data = PreparedData(root=root, class_names=tuple(sw.class_names), eval_idx=empty, val_idx=empty, pool_idx=empty)
    row_of = {str(i): r for r, i in enumerate(data.ids)}
    size = int(with_ckpt["train_size"].max())
    at = with_ckpt[with_ckpt["train_size"] == size]
    seed = int(at["seed"].min())
    at = at[at["seed"] == seed]
    n_opt = done["optimizer"].nunique()
    chosen = []  # (label, run row)
    for m in sw.models:
        for o in sw.optimizers:
            r = at[(at["model"] == m) & (at["optimizer"] == o)]
            if not r.empty and r.iloc[0]["run_id"] in sw.predictions:
                chosen.append((m if n_opt <= 1 else f"{m} / {o}", r.iloc[0]))
    if not chosen:
        msg = f"No trial at n={size}, seed {seed} has both a checkpoint and predictions.csv."
        return H.Section("gradcam", t7, "", notes=[msg]), H.Section("pointing", t8, "", notes=[msg])

    # the same evaluation images for every model: ids present in every prediction file
    mats = [prediction_matrix(sw.predictions[r["run_id"]], sw.class_names) for _, r in chosen]
    ids = mats[0][0]
    for m in mats[1:]:
        ids = np.intersect1d(ids, m[0])
    ids = np.array([i for i in np.sort(ids) if i in row_of])
    notes7 = []
    if ids.size == 0:
        msg = "The evaluation image ids in predictions.csv are not in the prepared data's manifest."
        return H.Section("gradcam", t7, "", notes=[msg]), H.Section("pointing", t8, "", notes=[msg])
    pos = [{i: j for j, i in enumerate(m[0])} for m in mats]
    y = mats[0][1][[pos[0][i] for i in ids]]
    preds = np.stack([m[2][[p[i] for i in ids]].argmax(1) for m, p in zip(mats, pos)])
    correct = preds == y[None]
    picks = G.select_panel_images(ids, y, correct, sw.class_names, per_class=1)
    rows = np.array([row_of[ids[i]] for i, _ in picks], dtype=np.int64)
    imgs = np.asarray(data.images[rows])
    imgs01 = imgs.astype(np.float32) / data.max_value
    row_titles = [f"{sw.class_names[y[i]]} ({kind})\n{ids[i]}" for i, kind in picks]

    masks = data.masks if data.mask_kind in ("lesion", "lesion_boxes") else None  # lesion locations only, not lung masks
    nrm = TB.normal_class(sw.class_names)
    point_cols = [i for i in range(ids.size) if (nrm is None or y[i] != nrm)]
    point_rows = np.array([row_of[ids[i]] for i in point_cols], dtype=np.int64)
    if masks is not None and point_rows.size:
        has = np.asarray(masks[point_rows]).reshape(point_rows.size, -1).any(1)
        point_cols = [c for c, h in zip(point_cols, has) if h][:max_pointing]

    tol = G.POINTING_TOLERANCE * data.resolution
    prior, prior_note = _training_prior(sw, masks, size, seed)
    overlays, cell_titles, layer_info, point_rows_out, agree, shown, errors7 = [], [], [], [], [], [], []
    import torch

    from lungray.models import gradcam_target

    for k, (lab, r) in enumerate(chosen):
        try:
            ck_path = download(sw.client(), r["run_id"], T.BEST_CHECKPOINT, b.tmp / "ckpt")
            lm = G.load_checkpoint_model(ck_path, resolution=data.resolution, device=device)
            layers, _ = gradcam_target(lm.model)
            info = (lab, lm.trial.model.gradcam_layer, ", ".join(G.layer_names(lm.model, layers)), lm.epoch)
            # a variant with its own preprocessing (CLAHE...) is shown the images it was trained on
            vdata = _variant_data(sw, data, lm.trial.variant.preprocess)
            if rows.size:
                vimgs = imgs if vdata is data else np.asarray(vdata.images[rows])
                x = G.normalise_images(vimgs, data.max_value, lm.norm)
                with torch.no_grad():
                    own = lm.model(x.to(lm.device)).argmax(1).cpu().numpy()
                targets = [int(preds[k, i]) for i, _ in picks]
                cams = G.compute_cams(lm.model, x, targets)
                ov = [G.overlay(vimgs[j].astype(np.float32) / data.max_value, cams[j]) for j in range(len(picks))]
                titles = [f"{lab}\n→ {sw.class_names[preds[k, i]]} {'✓' if correct[k, i] else '✗'}" for i, _ in picks]
            point = None
            if masks is not None and point_cols:
                pr = np.array([row_of[ids[i]] for i in point_cols], dtype=np.int64)
                px = G.normalise_images(np.asarray(vdata.images[pr]), data.max_value, lm.norm)
                pc = G.compute_cams(lm.model, px, [int(y[i]) for i in point_cols])
                res = G.pointing_game(pc, np.asarray(masks[pr]), tolerance=tol)
                point = _pointing_row(G, lm.model, px, [int(y[i]) for i in point_cols], np.asarray(masks[pr]), tol,
                                      res, prior, seed)
                point.update({"model": lab, "run_id": r["run_id"], "train_size": size, "seed": seed})
            del lm
        except Exception as e:  # noqa: BLE001 - one model's failure is a red box, the others still shown
            log.debug("Grad-CAM failed for %s", lab, exc_info=True)
            errors7.append(f"{lab}: no Grad-CAM panel ({type(e).__name__}: {_first_line(e)})")
            continue
        layer_info.append(info)
        if rows.size:
            agree.append((lab, int((own == np.array(targets)).sum()), len(targets)))
            overlays.append(ov)
            cell_titles.append(titles)
            shown.append(lab)
        if point is not None:
            point_rows_out.append(point)

    body7 = ""
    if overlays:
        fig = G.panel_figure(imgs01, row_titles, shown, overlays, cell_titles)
        body7 = b._fig(fig, "gradcam_panels", "Grad-CAM panels",
                       "Each row is one evaluation image (its class, and whether most models got it right); each "
                       "column a model, with the Grad-CAM heat map for the class it predicted (✓ right, ✗ wrong).")
    lay = pd.DataFrame(layer_info, columns=["model", "gradcam_layer", "target layer", "checkpoint epoch"])
    body7 += ("<h3>Target layers</h3>"
              '<p class="muted">gradcam_layer: auto = the backbone family\'s layer, last_conv = the last convolution '
              "(the studies' choice), or a module path; target layer: the module the heat maps were read from.</p>"
              + H.table(lay, text_columns=["model", "gradcam_layer", "target layer"]))
    if agree:
        ag = pd.DataFrame(agree, columns=["model", "same prediction as predictions.csv", "images"])
        if (ag.iloc[:, 1] < ag.iloc[:, 2]).any():
            notes7.append("A rebuilt checkpoint does not reproduce some logged predictions: the checkpoint, its "
                          "normalisation or the image cache may not match the sweep's.")
        body7 += "<h3>Checkpoint check</h3>" + H.table(ag, text_columns=["model"])
    sec7 = H.Section("gradcam", t7, body7, notes=notes7, errors=errors7,
                     intro=f"The same evaluation images for every model, at the largest training size (n = {size}) and "
                     f"seed {seed}, from each trial's best checkpoint; computed with pytorch-grad-cam.")
    if masks is None:
        sec8 = H.Section("pointing", t8, "", notes=["This dataset has no lesion masks, so the pointing game cannot be "
                                                    "scored (it runs on the phantom, whose lesions are known)."])
        return sec7, sec8
    pt = pd.DataFrame(point_rows_out)
    b._csv(pt, "pointing_game.csv")
    shown = pt.copy()
    if not pt.empty:
        for col in ("score", "prior_score", "randomised_score"):
            shown[col + "_"] = [H.fmt_ci(r[col], r[col + "_low"], r[col + "_high"], digits=2) for _, r in pt.iterrows()]
    body8 = H.table(shown, ["model", "images", "hits", "score_", "prior_score_", "randomised_score_", "random_map_score",
                            "p_vs_prior", "p_vs_randomised", "train_size", "seed"],
                    headers={"score_": "pointing score [95% CI]", "prior_score_": "fixed point (training prior) [95% CI]",
                             "randomised_score_": "randomised weights [95% CI]",
                             "random_map_score": "uniform random map", "p_vs_prior": "p vs fixed point",
                             "p_vs_randomised": "p vs randomised", "train_size": "size"},
                    formats={"p_vs_prior": H.fmt_p, "p_vs_randomised": H.fmt_p},
                    text_columns=["model", "score_", "prior_score_", "randomised_score_"])
    notes8 = [prior_note] if prior_note else []
    for r in point_rows_out:
        if np.isfinite(r["prior_score"]) and not (r["p_vs_prior"] < 0.05 and r["score"] > r["prior_score"]):
            notes8.append(f"{r['model']}: pointing score {r['score']:.2f} is not significantly above a fixed point at "
                          f"the usual lesion position ({r['prior_score']:.2f}, exact McNemar {H.fmt_p_eq(r['p_vs_prior'])}): "
                          "its heat maps do not locate this image's lesion better than knowing where lesions usually are.")
        if np.isfinite(r["randomised_score"]) and not (r["p_vs_randomised"] < 0.05 and r["score"] > r["randomised_score"]):
            notes8.append(f"{r['model']}: pointing score {r['score']:.2f} is not significantly above the same architecture "
                          f"with random weights ({r['randomised_score']:.2f}, exact McNemar {H.fmt_p_eq(r['p_vs_randomised'])}): "
                          "the maps cannot be shown to depend on what the model learned.")
    sec8 = H.Section("pointing", t8, body8, notes=notes8,
                     intro="Pointing game on the positive evaluation images (lesion masks known): the share whose "
                     f"heat-map maximum falls within {tol:.1f} px of the lesion (15 px at 224 px, as in the original "
                     "pointing game), with an exact (Clopper-Pearson) 95% interval. Baselines on the same images: a fixed "
                     "point at the peak of the mean TRAINING lesion mask (where lesions usually are: a map that scores no "
                     "better only knows the prior), the same architecture with randomised weights (the sanity check of "
                     "Adebayo et al. 2018), and a uniformly random map (the share of the image within the tolerance of the "
                     "lesion). p: exact McNemar test on the paired per-image hits.")
    return sec7, sec8


def _training_prior(sw: Sweep, masks, size: int, seed: int) -> tuple[Optional[tuple[int, int]], str]:
    """The peak of the mean lesion mask over the TRAINING images of the shown runs (the subset of
    ``size`` for ``seed`` from ``splits.json``; the whole pool if the subsets are missing)."""
    from lungray.report import gradcam as G

    if masks is None:
        return None, ""
    sp = sw.splits or {}
    rows = (sp.get("subsets") or {}).get(str(size), {}).get(str(seed)) or sp.get("pool") or []
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return None, "No training rows in splits.json: the fixed-point baseline could not be computed."
    try:
        return G.prior_point(np.asarray(masks[np.sort(rows)])), ""
    except ValueError as e:
        return None, f"Fixed-point baseline not computed: {e}."


def _pointing_row(G, model, x, targets: list[int], masks: np.ndarray, tol: float, res, prior, seed: int) -> dict:
    """A model's pointing game with its baselines (fixed point, randomised weights) on the same
    images: scores, Clopper-Pearson intervals and exact paired p-values."""
    nan = float("nan")
    prior_res = G.fixed_point_pointing(prior, masks, tol) if prior is not None else None
    rnd_res = G.pointing_game(G.compute_cams(G.randomised_copy(model, seed), x, targets), masks, tol)
    comp = G.pointing_baselines(res, prior_res if prior_res is not None else res, rnd_res)
    row = {"images": res.n, "hits": res.hits, "random_map_score": res.baseline, "lift": res.lift,
           "prior_point": "" if prior is None else f"{prior[0]},{prior[1]}",
           "p_vs_prior": comp.p_vs_prior if prior_res is not None else nan, "p_vs_randomised": comp.p_vs_randomised}
    for key, r in (("score", res), ("prior_score", prior_res), ("randomised_score", rnd_res)):
        ci = r.interval() if r is not None else None
        row.update({key: r.score if r is not None else nan, f"{key}_low": ci.low if ci else nan,
                    f"{key}_high": ci.high if ci else nan})
    return row
