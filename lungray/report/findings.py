"""What a sweep found, computed ONCE: the numbers every place shows (issue 20.3).

The report's sections 1, 2, 5 and 6, its headline, the sweep's console summary, its
``summary.csv`` and the MLflow parent run's metrics all read one :class:`Findings`: the same
runs (:func:`lungray.report.tables.counted_runs`), the same cell intervals
(:func:`~lungray.report.tables.summarise`), the same paired tests with Holm's correction
(:func:`~lungray.report.tables.paired_comparisons`), the same fits
(:func:`~lungray.report.tables.learning_curve_fits`) and the same budget flags
(:mod:`lungray.report.budget`). Nothing downstream recomputes a number, so a cell cannot read
0.685 in one place and 0.617 in another (issue 19.4's finding).

``extras`` is where later sections put what they find for the headline's caveats (issue 24:
the shortcut probes, per-evaluation-set results), see :mod:`lungray.report.headline`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import pandas as pd

from lungray import tracking as T
from lungray.report import budget as B
from lungray.report import tables as TB
from lungray.report.load import Sweep

__all__ = ["Findings", "compute_findings", "with_labels", "eval_lacks", "CELL_BOOT", "FIT_BOOT", "CELL_COLUMNS"]

#: Bootstrap resamples of the evaluation images behind the cell intervals of AUC, macro F1 and
#: balanced accuracy (accuracy and log loss need none: their image term is in closed form).
CELL_BOOT = 1000
#: Bootstrap resamples of the learning-curve fits.
FIT_BOOT = 400

#: The columns of :meth:`Findings.cells` (the sweep's ``summary.csv``).
CELL_COLUMNS = ["label", "model", "optimizer", "train_size", "metric", "mean", "ci_low", "ci_high", "n", "n_runs",
                "n_set_apart", "set_apart_seeds", "set_apart_why", "n_degenerate", "seeds", "interval", "unit", "n_images", "best",
                "best_verdict", "pretrained", "steps_run", "epochs_run", "budget_limited", "n_budget_limited",
                "mlflow_key"]


def with_labels(sweep: Sweep, predictions: Optional[dict] = None) -> tuple[pd.DataFrame, list[str]]:
    """The runs with their ``degenerate``/``counted`` flags and a display ``label`` (the model,
    or ``model / optimizer`` when the sweep compares optimizers), and the labels in grid order."""
    runs = TB.add_derived(sweep, predictions)
    n_opt = runs["optimizer"].nunique() if not runs.empty else 0
    runs["label"] = [m if n_opt <= 1 else f"{m} / {o}" for m, o in zip(runs["model"], runs["optimizer"])]
    labels = [m if n_opt <= 1 else f"{m} / {o}" for m in sweep.models for o in sweep.optimizers]
    labels = [lab for lab in labels if lab in set(runs["label"])]
    return runs, labels


def eval_lacks(sweep: Sweep) -> str:
    """Words for the classes an evaluation set lacks (``""`` when none does): from the prepared
    split's class counts and, per cell, from a finished trial whose per-class recall is missing
    (no image of the class was scored). Issue 18: a grid where every trial finished on such a
    set is not a complete evaluation; the report's banner and the headline both say so."""
    names = list(sweep.class_names)
    ev = ((sweep.data_summary or {}).get("class_counts") or {}).get("eval") or {}
    missing = [c for c in names if c in ev and int(ev[c]) == 0]
    if missing:
        return "the evaluation set holds no " + " and no ".join(f"'{c}'" for c in missing) + " image"
    done = sweep.complete
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


@dataclass
class Findings:
    """Everything a sweep's numbers are drawn from; see the module docstring."""

    sweep: Sweep
    predictions: dict
    runs: pd.DataFrame
    labels: list[str]
    primary: str
    targets: tuple[float, ...]
    summary: pd.DataFrame  # every metric, every cell (tables.summarise + best_verdict)
    paired: pd.DataFrame  # tables.paired_comparisons on the primary metric
    adequacy: pd.DataFrame
    fit_table: pd.DataFrame
    fits: dict
    budget_runs: pd.DataFrame
    budget_cells: pd.DataFrame
    status: dict
    extras: dict = field(default_factory=dict)

    @property
    def n_optimizers(self) -> int:
        done = self.runs[self.runs["state"] == "complete"] if "state" in self.runs else self.runs
        return int(done["optimizer"].nunique()) if not done.empty else 0

    def cells(self) -> pd.DataFrame:
        """One row per model (x optimizer) x size for the primary metric: THE number of each
        cell (mean over the counted runs, its interval, how many runs count and which were set
        apart, the budget flag) and the MLflow parent metric it is logged under."""
        s = self.summary[self.summary["metric"] == self.primary] if not self.summary.empty else self.summary
        if s.empty:
            return pd.DataFrame(columns=CELL_COLUMNS)
        bud = self.budget_cells.set_index(["label", "train_size"]) if not self.budget_cells.empty else None
        apart = TB.set_apart(self.runs)
        order = {lab: i for i, lab in enumerate(self.labels)}
        rows = []
        for _, r in s.iterrows():
            key = (r["label"], int(r["train_size"]))
            b = bud.loc[key] if bud is not None and key in bud.index else None
            off = apart[(apart["label"] == r["label"]) & (apart["train_size"] == int(r["train_size"]))] if len(apart) else apart
            rows.append({
                "label": r["label"], "model": r["model"], "optimizer": r["optimizer"], "train_size": int(r["train_size"]),
                "metric": self.primary, "mean": r["mean"], "ci_low": r["ci_low"], "ci_high": r["ci_high"], "n": int(r["n"]),
                "n_runs": int(r["n_runs"]), "n_set_apart": len(off),
                "set_apart_seeds": ",".join(str(int(x)) for x in off["seed"]) if len(off) else "",
                "set_apart_why": "; ".join(sorted(set(off["degenerate"].astype(str)))) if len(off) else "",
                "n_degenerate": int(r["n_degenerate"]), "seeds": r["seeds"], "interval": r["interval"], "unit": r["unit"],
                "n_images": r["n_images"], "best": bool(r["best"]), "best_verdict": r.get("best_verdict", ""),
                "pretrained": b["pretrained"] if b is not None else "",
                "steps_run": b["steps_run"] if b is not None else float("nan"),
                "epochs_run": b["epochs_run"] if b is not None else float("nan"),
                "budget_limited": bool(b["budget_limited"]) if b is not None else False,
                "n_budget_limited": int(b["n_limited"]) if b is not None else 0,
                "mlflow_key": T.cell_metric_key(r["model"], r["optimizer"] if self.n_optimizers > 1 else None,
                                                int(r["train_size"]), self.primary),
            })
        out = pd.DataFrame(rows, columns=CELL_COLUMNS)
        out["_o"] = out["label"].map(lambda x: order.get(x, len(order)))
        return out.sort_values(["_o", "train_size"], kind="stable").drop(columns="_o").reset_index(drop=True)


def compute_findings(
    sweep: Sweep,
    *,
    target_accuracies: Sequence[float] = (0.90, 0.95),
    n_boot: int = 2000,
    seed: int = 0,
    predictions: Optional[dict] = None,
) -> Findings:
    """Compute a sweep's :class:`Findings` with the report's own functions and settings.

    ``n_boot`` caps the bootstrap resamples (cells: :data:`CELL_BOOT`, fits: :data:`FIT_BOOT`)
    and ``seed`` fixes them: the same sweep, ``n_boot`` and ``seed`` give the same numbers, in
    the report and wherever else a :class:`Findings` is shown.
    """
    preds = predictions if predictions is not None else TB.prediction_arrays(sweep)
    runs, labels = with_labels(sweep, preds)
    primary = sweep.spec.primary_metric
    groups = TB.eval_groups(sweep)
    summary = TB.summarise(runs, predictions=preds, n_boot=min(n_boot, CELL_BOOT), seed=seed, frames=sweep.predictions,
                           groups=groups)
    paired = TB.paired_comparisons(sweep, metric=primary)
    summary = TB.mark_tested_best(summary, paired, primary)
    adequacy = TB.adequacy_table(summary, paired)
    fit_table, fits = TB.learning_curve_fits(sweep, target_accuracies=target_accuracies, n_boot=min(n_boot, FIT_BOOT),
                                             seed=seed, predictions=preds, metric=primary, frames=sweep.predictions)
    if not fit_table.empty:
        fit_table = (fit_table.set_index("label").reindex([lab for lab in labels if lab in set(fit_table["label"])])
                     .reset_index())
    budget_runs = B.run_budgets(sweep, runs)
    budget_cells = B.cell_budgets(budget_runs)
    if not budget_cells.empty:  # grid order, as every table of the report
        rank = {lab: i for i, lab in enumerate(labels)}
        budget_cells = (budget_cells.assign(_o=budget_cells["label"].map(lambda x: rank.get(x, len(rank))))
                        .sort_values(["_o", "train_size"], kind="stable").drop(columns="_o").reset_index(drop=True))
    return Findings(sweep=sweep, predictions=preds, runs=runs, labels=labels, primary=primary,
                    targets=tuple(target_accuracies), summary=summary, paired=paired, adequacy=adequacy,
                    fit_table=fit_table, fits=fits, budget_runs=budget_runs, budget_cells=budget_cells,
                    status=TB.grid_status(sweep))


def cell_metric_value(findings: Findings, model: str, size: int, optimizer: Optional[str] = None) -> Any:
    """The primary metric's row of one cell in :meth:`Findings.cells` (a ``pandas.Series``)."""
    c = findings.cells()
    sel = c[(c["model"] == model) & (c["train_size"] == int(size))]
    if optimizer is not None:
        sel = sel[sel["optimizer"] == optimizer]
    return sel.iloc[0] if len(sel) else None
