"""``build_report``: one self-contained HTML report (plus CSV tables) for a sweep in MLflow.

The nine sections follow issue 4: learning curves, the studies' tables, training dynamics,
per-class results, paired comparisons, learning-curve fit, Grad-CAM panels, heat-map sanity
(pointing game) and data & provenance. A sweep still running, or with failed trials, gives a
partial report whose header says how many trials are missing and which failed, and why.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from lungray import tracking as T
from lungray.errors import LungrayError
from lungray.report import budget as B
from lungray.report import figures as F
from lungray.report import html as H
from lungray.report import tables as TB
from lungray.report.explain import gradcam_sections
from lungray.report.findings import CELL_BOOT, Findings, compute_findings, eval_lacks, with_labels
from lungray.report.headline import Headline, make_headline
from lungray.report.load import Sweep, load_sweep, safe_uri
from lungray.report.provenance import provenance_section
from lungray.report.shortcut import has_probes, shortcut_section

log = logging.getLogger(__name__)

__all__ = ["build_report", "ReportParts", "report_parts", "ReportIncomplete"]

REPORT_HTML = "report.html"

#: What every "seeds+images" interval of the report estimates, and what it holds fixed.
INTERVAL_MEANING = (
    "Intervals are 95% intervals for the expected score of a NEW training run of that model at that size "
    "(a new subset draw and initialisation) on a NEW image from the population the evaluation set was drawn "
    "from. They carry both sources of noise: run to run (seeds) and which images happened to be in the "
    "evaluation set (variance components, t quantile with Satterthwaite degrees of freedom; the image part "
    "in closed form for accuracy and log loss, by a bootstrap of the evaluation images shared by all seeds "
    "for AUC, macro F1 and balanced accuracy). They are conditional on the fixed training pool the subsets "
    "are drawn from, the validation set and the hyper-parameters. When patients have several evaluation images "
    "the evaluation noise is resampled by patient (the table's unit column says which). Proportions (accuracy, "
    "AUC, F1, Dice) get their interval on the logit scale with half a pseudo-image right and half wrong, so it "
    "is never zero-width at 0 or 1. Validation loss has no per-image values: its interval is over seeds only, "
    "conditional on the validation images. A run whose output is degenerate (constant, or the same class "
    "for every evaluation image with scores that do not rank the classes) is left out of its cell, named in it, and left out of every other section too, as in "
    "the console summary; a weak but working run always counts. With one run there is no interval."
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

    The notebooks use :func:`report_parts` to get exactly the figures, tables and headline of
    the report (one :class:`~lungray.report.findings.Findings`, as the report reads).
    """

    def __init__(self, findings: Findings):
        self.findings = findings
        self.sweep = findings.sweep
        self.runs = findings.runs
        self.summary = findings.summary
        self.labels = findings.labels

    def study_table(self, metric: str = "accuracy") -> pd.DataFrame:
        """The model x size table of report section 2, as printed there."""
        return TB.study_table_wide(self.summary, metric, self.labels, self.sweep.sizes)

    def learning_curves(self):
        return F.learning_curves_figure(self.summary, labels=self.labels, runs=self.runs,
                                        budget=self.findings.budget_cells)

    def headline(self) -> Headline:
        """The report's "What this study found" (``.markdown()``, ``.lines()``)."""
        return make_headline(self.findings)


def _with_labels(sweep: Sweep, predictions: Optional[dict] = None) -> tuple[pd.DataFrame, list[str]]:
    return with_labels(sweep, predictions)


def report_parts(
    tracking_uri: Optional[str] = None,
    experiment: Optional[str] = None,
    parent_run_id: Optional[str] = None,
    *,
    sweep: Optional[Sweep] = None,
    seed: int = 0,
) -> ReportParts:
    """Load a sweep and compute its findings as the report does (the cell intervals over seeds
    and evaluation images, the paired tests behind section 2's marks, the fits, the budget flags)."""
    sweep = sweep or load_sweep(tracking_uri, experiment, parent_run_id)
    return ReportParts(compute_findings(sweep, seed=seed))


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
    figure_formats: Sequence[str] = (),
    findings: Optional[Findings] = None,
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
    the bootstrap intervals; the same seed gives the same report. ``figure_formats`` (e.g.
    :data:`lungray.report.figures.FIGURE_FORMATS`: 300-dpi PNG, SVG, PDF) also writes every
    figure at print size under ``figures/``; by default the figures are only in the page (the
    print files took a quarter of a report's time, issue 22.4). ``findings`` (what
    :func:`~lungray.report.findings.compute_findings` returned for this sweep, e.g. the sweep
    driver's, which also printed and logged them) are used as they are instead of reading
    MLflow again: the report then shows exactly those numbers.

    The page opens with "What this study found" (:mod:`lungray.report.headline`), also written
    as ``headline.md`` and ``headline.json`` beside the HTML.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    formats = F.check_formats(figure_formats)
    with tempfile.TemporaryDirectory(prefix="lungray-report-") as tmp:
        if findings is None:
            sweep = load_sweep(tracking_uri, experiment, parent_run_id, artifact_dir=Path(tmp) / "artifacts")
            findings = compute_findings(sweep, target_accuracies=target_accuracies, n_boot=n_boot, seed=seed)
        sweep = findings.sweep
        builder = _Builder(findings, out, Path(tmp), n_boot, seed, formats)
        sections = [
            builder.learning_curves(),
            builder.study_tables(),
            builder.dynamics(),
            builder.per_class(),
            builder.paired(),
            builder.fit(),
        ]
        if sweep.external_names:  # issue 24: the same runs on each external evaluation set
            from lungray.report.external import external_section

            sections.append(external_section(builder))
        if sweep.parent_tags.get(T.PROTOCOL):  # issue 24: an arm of "as published vs corrected"
            from lungray.report.inflation import inflation_section

            sections.append(inflation_section(builder))
        if sweep.spec.explanation == "overlay" and gradcam:  # segmentation: masks, no heat maps
            sections.append(builder.overlays(device))
        elif gradcam:
            sections += builder.gradcam(device, max_pointing_images)
        else:
            msg = "Grad-CAM panels were not requested (--no-gradcam)."
            sections += [H.Section("gradcam", "Grad-CAM panels", "", notes=[msg]),
                         H.Section("pointing", "Sanity of the heat maps", "", notes=[msg])]
        if has_probes(sweep):  # issue 24: does the model look at the lungs?
            sections.append(shortcut_section(builder))
        sections.append(builder.provenance())
        headline = make_headline(findings)
        write_headline(headline, out)
        html_text = H.page(f"lungray report: {sweep.study}", builder.subtitle(), builder.header(), sections,
                           lead=headline.html())
    path = out / REPORT_HTML
    path.write_text(html_text, encoding="utf-8")
    log.debug("wrote %s", path)  # the caller says it once (lungray report, the sweep's report step)
    if log_to_mlflow:
        sweep.client().log_artifacts(sweep.parent_id, str(out), artifact_path="report")
    failures = [f"{sec.title}: {e}" for sec in sections for e in sec.errors]
    if failures:
        raise ReportIncomplete(path, failures)
    return path


def write_headline(headline: Headline, out: Path) -> None:
    """``headline.md`` and ``headline.json`` (with the number of every cell) into ``out``."""
    import json

    from lungray import tracking as T

    (Path(out) / T.HEADLINE_MD).write_text(headline.markdown(), encoding="utf-8")
    (Path(out) / T.HEADLINE_JSON).write_text(json.dumps(headline.to_dict(), indent=1, default=str), encoding="utf-8")


class _Builder:
    def __init__(self, findings: Findings, out: Path, tmp: Path, n_boot: int, seed: int, formats: Sequence[str] = ()):
        self.findings = f = findings
        self.sweep = sweep = f.sweep
        self.formats = tuple(formats)
        self.out = out
        self.tmp = tmp
        self.targets = f.targets
        self.n_boot = n_boot
        self.seed = seed
        self.predictions = f.predictions
        self.runs, self.labels = f.runs, f.labels
        self.spec = sweep.spec  # what the task's trials report: the primary metric, the explanation panels
        self.primary = f.primary
        self.summary = f.summary
        self.sizes = sweep.sizes
        self.status = f.status
        self.csv(self.runs.drop(columns=["start_time"], errors="ignore"), "runs.csv")
        self.csv(self.summary, "summary.csv")
        self.csv(f.cells(), "cells.csv")

    # -- helpers ------------------------------------------------------------------------------
    def _primary_words(self) -> str:
        return "accuracy" if self.primary == "accuracy" else TB.METRICS[self.primary].label

    def _headline_words(self) -> str:
        if self.primary == "accuracy":
            return "accuracy, balanced accuracy, macro F1 and AUC"
        return ", ".join(TB.METRICS[m].label for m in self.spec.headline_metrics if m in TB.METRICS)

    def csv(self, df: pd.DataFrame, name: str) -> None:
        df.to_csv(self.out / name, index=False)

    def fig(self, fig, name: str, alt: str, caption: str = "") -> str:
        """Embed the figure in the page (a screen PNG) at the print width (180 mm); with print
        formats asked for, also write it under ``figures/`` (300-dpi PNG, SVG, PDF)."""
        F.at_print_width(fig)
        cap = caption
        if self.formats:
            files = F.save_figure(fig, self.out / "figures" / name, self.formats)
            cap += (" " if cap else "") + f"Print files: figures/{name}." + "/".join(p.suffix[1:] for p in files) + "."
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
        if s.config is not None and s.config.data.val_is_eval:
            parts.append(H.note(
                "AS PUBLISHED, WITH ITS FLAW: the evaluation set is also the validation set (data.val_is_eval). "
                "Early stopping and the selected checkpoint were chosen on the very images the held-out numbers "
                "are measured on, so those numbers are optimistic; compare with the corrected protocol "
                "(a separate validation set) before reading them as generalisation."))
        grid = (f"models: {', '.join(s.models)} · sizes: {', '.join(map(str, self.sizes))} · "
                f"optimizers: {', '.join(s.optimizers)} · seeds: {', '.join(map(str, s.seeds))}")
        parts.append(f'<p class="muted">{H.esc(grid)}</p>')
        if not self.formats:
            parts.append('<p class="muted">Figures are embedded at their print width (180 mm); for 300-dpi PNG, SVG and '
                         "PDF files under figures/ build the report with lungray report --print-figures (or set "
                         "tracking.print_figures: true for the sweep).</p>")
        return "".join(parts)

    def _eval_lacks(self) -> str:
        return eval_lacks(self.sweep)

    # -- 1 ----------------------------------------------------------------------------------------
    def learning_curves(self) -> H.Section:
        title = "Learning curves"
        if (empty := self._no_runs("curves", title)) is not None:
            return empty
        f = self.findings
        body = self.fig(
            F.learning_curves_figure(self.summary, labels=self.labels, runs=self.runs, budget=f.budget_cells),
            "learning_curves",
            "Learning curves: metrics against training size",
            "Mean over seeds (degenerate runs, marked x, are left out unless every run of the cell is); the band is "
            "the 95% interval over seeds and "
            "evaluation images (none with one seed). A ringed point may be limited by the training budget, not by the "
            "data (table below). Validation loss is taken at each trial's best epoch; held-out "
            "log loss on the evaluation set.",
        )
        body += self._budget_table()
        notes = [n for n in (B.flagged_sentence(f.budget_cells), TB.set_apart_sentence(self.runs)) if n]
        return H.Section(
            "curves",
            title,
            body,
            intro=f"Held-out {self._headline_words()} against the number of training images "
            "(log scale), one line per model, on the same fixed evaluation images for every size and seed. "
            "Each point is only a measure of the data if its runs trained until validation stopped improving: "
            "the table under the figure gives each point's budget and what its runs used.",
            notes=notes,
        )

    def _budget_table(self) -> str:
        """Pretrained or not, the budget and what the runs used, per model and size (issue 20.2)."""
        f = self.findings
        bc = f.budget_cells
        self.csv(f.budget_runs, "budget_runs.csv")
        self.csv(bc, "budget.csv")
        if bc.empty:
            return ""
        shown = bc.assign(
            stopped=[f"{r.n_stopped_early} of {r.n}" for r in bc.itertuples()],
            limited=[f"{'YES, ' if r.budget_limited else ''}{r.n_limited} of {r.n}" for r in bc.itertuples()],
        )
        sentence = B.schedule_sentence(self.sweep.config)
        return ("<h3>Training budget per point</h3>" + (f'<p class="intro">{H.esc(sentence)}</p>' if sentence else "")
                + H.table(shown, ["label", "train_size", "pretrained", "batch_size", "steps_per_epoch", "epochs_planned",
                                  "steps_planned", "epochs_run", "best_epoch", "steps_run", "passes", "stopped", "limited"],
                          headers={"label": "model", "train_size": "size", "batch_size": "batch",
                                   "steps_per_epoch": "steps / epoch", "epochs_planned": "epochs (budget)",
                                   "steps_planned": "steps (budget)", "epochs_run": "epochs run (median)",
                                   "best_epoch": "best epoch (median)", "steps_run": "steps run (median)",
                                   "passes": "passes over the images (median)", "stopped": "stopped early",
                                   "limited": f"budget-limited ({B.BUDGET_CAVEAT})"},
                          formats={c: (lambda v: H.fmt(v, 0)) for c in ("batch_size", "steps_per_epoch", "epochs_planned",
                                                                        "steps_planned", "epochs_run", "best_epoch", "steps_run")}
                          | {"passes": lambda v: H.fmt(v, 1)},
                          text_columns=["label", "pretrained", "stopped", "limited"],
                          cell_class=lambda r, c: "bad" if c == "limited" and r["budget_limited"] else ""))

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
            self.csv(tab, f"table_{name}.csv")
            body.append(f"<h3>{H.esc(TB.METRICS[name].label)}</h3>")
            body.append(H.study_table_html(TB.study_table_wide(self.summary, name, self.labels, self.sizes)))
        primary = TB.METRICS[self.primary].label
        notes = [n for n in (TB.set_apart_sentence(self.runs), B.flagged_sentence(self.findings.budget_cells)) if n]
        return H.Section(
            "tables",
            title,
            "".join(body),
            intro=f"Mean over seeds [95% interval]. Bold: the best mean at that size. On the {primary} table its mark is "
            "the verdict of the paired comparisons (section 5, Holm-adjusted): ★ significantly ahead of every model it "
            "was paired with, ☆ not shown to be ahead (within noise, or untested with one seed). The other metrics have "
            "no paired test: their best mean is marked ☆ and only the intervals guide. " + INTERVAL_MEANING + " "
            + TB.unit_sentence(self.summary),
            notes=notes,
        )

    # -- 3 ----------------------------------------------------------------------------------------
    def dynamics(self) -> H.Section:
        title = "Training dynamics"
        if (empty := self._no_runs("dynamics", title)) is not None:
            return empty
        if self.sweep.histories.empty:
            return H.Section("dynamics", title, "", notes=["No per-epoch metrics were logged."])
        body = self.fig(F.dynamics_figure(self.runs, self.sweep.histories, "loss", self.labels), "dynamics_loss",
                         "Per-epoch loss", "Loss per epoch: train solid, validation dashed, one line per seed.")
        what = TB.METRICS[self.primary].label
        body += self.fig(F.dynamics_figure(self.runs, self.sweep.histories, self.primary, self.labels), f"dynamics_{self.primary}",
                          f"Per-epoch {what.lower()}", f"{what} per epoch: train solid, validation dashed, one line per seed.")
        return H.Section("dynamics", title, body,
                         intro="One panel per model (rows) and training size (columns), seeds overlaid: over- and "
                         "under-fitting, and seeds that behave differently, are visible here.")

    # -- 4 ----------------------------------------------------------------------------------------
    def chosen_sizes(self) -> list[int]:
        return sorted({self.sizes[0], self.sizes[-1]}) if self.sizes else []

    def _seeds_at(self, size: int) -> str:
        """``simple_cnn: seeds 0,1,2; resnet18: seeds 1,2 (seed 0 set apart)``: the runs a pooled figure holds."""
        c = self.findings.cells()
        c = c[c["train_size"] == size]
        return "; ".join(f"{r.label}: seeds {r.seeds}" + (f" (seed {r.set_apart_seeds} set apart)" if r.n_set_apart and r.n_set_apart < r.n_runs else "")
                         for r in c.itertuples())

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
                                n_boot=min(self.n_boot, CELL_BOOT), seed=self.seed, groups=TB.eval_groups(sw))
        self.csv(pc, "per_class.csv")
        body = []
        if not pc.empty:
            shown = pc.assign(
                P=[H.fmt_ci(r.precision, r.precision_low, r.precision_high, r.n) for r in pc.itertuples()],
                R=[H.fmt_ci(r.recall, r.recall_low, r.recall_high, r.n) for r in pc.itertuples()],
                F1=[H.fmt_ci(r.f1, r.f1_low, r.f1_high, r.n) for r in pc.itertuples()],
            )
            body.append("<h3>Precision, recall and F1 (mean over seeds [95% interval over seeds and evaluation images])</h3>")
            body.append(H.table(shown, ["train_size", "label", "class", "P", "R", "F1", "n", "n_degenerate"],
                                headers={"train_size": "size", "label": "model", "n": "seeds counted",
                                         "n_degenerate": "set apart (degenerate)"},
                                text_columns=["label", "class"]))
        mn = TB.missed_as_normal_table(self.runs, sw.class_names, sizes)
        if not mn.empty:
            self.csv(mn, "missed_as_normal.csv")
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
                body.append(self.fig(F.confusion_figure(cms, sw.class_names, f"n = {n} training images"),
                                      f"confusion_n{n}", f"Confusion matrices at n={n}",
                                      "Rows: true class, normalised to 1; predictions pooled over the seeds that count "
                                      f"({self._seeds_at(n)})."))
        if sizes:
            curves = F.roc_curves(sw, sizes[-1])
            if curves:
                body.append(self.fig(F.roc_figure(curves, f"ROC at n = {sizes[-1]}"), "roc", "ROC curves",
                                      f"Predictions pooled over the seeds that count ({self._seeds_at(sizes[-1])}); "
                                      "one-vs-rest per class for more than two classes."))
        apart = TB.set_apart_sentence(self.runs, sizes)
        return H.Section("perclass", title, "".join(body),
                         intro=f"At the smallest and largest training sizes ({', '.join(map(str, sizes))}), over the runs "
                         "that count in sections 1-2 (the same runs in the tables, confusion matrices and ROC curves).",
                         notes=[apart] if apart else [])

    # -- 5 ----------------------------------------------------------------------------------------
    def paired(self) -> H.Section:
        title = "Paired comparisons"
        if (empty := self._no_runs("paired", title)) is not None:
            return empty
        pc = self.findings.paired
        self.paired_df = pc
        self.csv(pc, "paired.csv")
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
             "high_points", "p", "p_holm", "q_bh", "unit"],
            headers={"train_size": "size", "diff_points": "A-B (points)", "low_points": "low", "high_points": "high",
                     "p": "p", "p_holm": "p (Holm)", "q_bh": "q (BH)", "unit": "resampled by"},
            formats={**{c: (lambda v: H.fmt(v, 1)) for c in ("diff_points", "low_points", "high_points")},
                     **{c: H.fmt_p for c in ("p", "p_holm", "q_bh")}},
            text_columns=["optimizer", "model_a", "model_b", "unit"],
        )
        mc = TB.mcnemar_table(pc)
        if not mc.empty:  # not a verdict on the recipes: its own table, saying what it answers (issue 19)
            body += "<h3>These trained models (McNemar, not a verdict)</h3>" + f'<p class="intro">{H.esc(TB.MCNEMAR_MEANING)}</p>'
            body += H.table(mc, ["train_size", "optimizer", "model_a", "model_b", "mcnemar_b", "mcnemar_c", "mcnemar_p",
                                 "mcnemar_p_holm"],
                            headers={"train_size": "size", "mcnemar_b": "only A right (image-runs)", "mcnemar_c": "only B right",
                                     "mcnemar_p": "McNemar p (all seeds)", "mcnemar_p_holm": "McNemar p (Holm)"},
                            formats={c: H.fmt_p for c in ("mcnemar_p", "mcnemar_p_holm")},
                            text_columns=["optimizer", "model_a", "model_b"])
        body += adequacy
        apart = TB.set_apart_sentence(self.runs)
        return H.Section(
            "paired",
            title,
            body,
            notes=[apart + " A seed is paired only where both models' runs count."] if apart else [],
            intro=f"{TB.METRICS[self.primary].label} difference between models trained on the same subsets (seeds) and "
            "scored on the same evaluation images (points: 100 x the per-image difference). The test: the paired per-image "
            "differences, whose variance holds the seed-to-seed and the evaluation-image (or patient) term, referred to "
            "Fisher's fiducial distribution over the seed variance (it holds its level down to the small p-values Holm's "
            "correction needs, with 2-5 seeds): it asks whether the two training recipes differ on new runs and new "
            "images. It is the only verdict; the McNemar table below asks about these trained models and is not.",
        )

    def _adequacy(self, pc: pd.DataFrame) -> str:
        """The test-set adequacy table (Beleites et al. 2013) and one sentence per size."""
        ad = self.findings.adequacy
        self.csv(ad, "adequacy.csv")
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
        tab, fits = self.findings.fit_table, self.findings.fits
        self.csv(tab, "power_law.csv")
        body = self.fig(F.fit_figure(self.runs, fits, self.targets, self.labels, self.primary), "power_law", "Power-law fits",
                         "Dots: runs. Line: error(n) = a·n^-b + c fitted over all runs, solid over the measured sizes, "
                         "dotted where extrapolated (below the smallest and beyond the largest size); band: 95% "
                         "bootstrap (evaluation images resampled, runs resampled within each size); dashed: targets.")
        if not tab.empty:
            shown = tab.assign(
                a_=[H.fmt_ci(r.a, r.a_low, r.a_high, digits=3) for r in tab.itertuples()],
                b_=[H.fmt_ci(r.b, r.b_low, r.b_high, digits=3) for r in tab.itertuples()],
                c_=[H.fmt_ci(r.c, r.c_low, r.c_high, digits=3) for r in tab.itertuples()],
                verdict=[("reliable" if r.reliable else "UNRELIABLE: " + r.flags) + (f" (note: {r.notes})" if r.notes else "")
                         for r in tab.itertuples()],
            )
            cols = ["label", "n_sizes", "runs_per_size", "a_", "b_", "c_", "r2"]
            heads = {"label": "model", "n_sizes": "sizes", "runs_per_size": "size×runs", "a_": "a", "b_": "b",
                     "c_": "c (floor)", "r2": "R²"}
            for t in self.targets:
                col = TB.target_column(t)
                shown[col + "_"] = [H.fmt_n_ci(getattr(r, col), getattr(r, col + "_low"), getattr(r, col + "_high"))
                                    + (f" ({getattr(r, col + '_where')})" if getattr(r, col + "_where") else "")
                                    for r in tab.itertuples()]
                cols.append(col + "_")
                heads[col + "_"] = f"images for {t:.0%} {self._primary_words()} [95% CI]"
            cols.append("verdict")
            body += H.table(shown, cols, headers=heads, text_columns=["label", "verdict", "runs_per_size"] + cols[3:6],
                            cell_class=lambda r, c: "bad" if c == "verdict" and not r["reliable"] else "")
        notes = [n for n in (TB.set_apart_sentence(self.runs), B.flagged_sentence(self.findings.budget_cells)) if n]
        return H.Section("fit", title, body, notes=notes,
                         intro=f"How error (1 - {self._primary_words()}) falls with training size, and how many images a "
                         f"target {self._primary_words()} would take if "
                         "the trend held. A size beyond the largest one measured is an extrapolation and says so. No "
                         "interval without at least 2 runs at every size (one run per size says nothing about how far a "
                         "re-run would move a point). The fit is flagged unreliable when it is poor, has no spare degrees of "
                         "freedom or ends on a bound of a parameter; each target separately when it extrapolates far beyond "
                         "the sizes measured or is unreachable. A floor c at 0 is a note, not a verdict: the measured sizes "
                         "do not show the floor yet, which makes sizes beyond them optimistic.")

    # -- 7, 8 -------------------------------------------------------------------------------------
    def gradcam(self, device: Optional[str], max_pointing: int) -> list[H.Section]:
        t7, t8 = "Grad-CAM panels", "Sanity of the heat maps"
        try:
            panels, pointing = gradcam_sections(self, device, max_pointing)
        except Exception as e:  # noqa: BLE001 - a red box in the report and a non-zero exit, never silent
            log.debug("Grad-CAM sections failed", exc_info=True)
            msg = f"Grad-CAM could not be computed: {type(e).__name__}: {H.first_line(e)}"
            return [H.Section("gradcam", t7, "", errors=[msg]), H.Section("pointing", t8, "", notes=[msg])]
        return [panels, pointing]

    def overlays(self, device: Optional[str]) -> H.Section:
        from lungray.report.overlays import TITLE, overlay_section

        try:
            return overlay_section(self, device)
        except Exception as e:  # noqa: BLE001 - a red box in the report and a non-zero exit, never silent
            log.debug("mask panels failed", exc_info=True)
            return H.Section("overlays", TITLE, "", errors=[f"The mask panels could not be drawn: {type(e).__name__}: {H.first_line(e)}"])

    # -- 9 ----------------------------------------------------------------------------------------
    def provenance(self) -> H.Section:
        return provenance_section(self)
