"""The report's tables, computed from a :class:`~lungray.report.load.Sweep` with :mod:`.stats`.

Each function returns a tidy :class:`pandas.DataFrame` (written as CSV next to the report) and
never formats numbers for display; :mod:`lungray.report.html` does that. The notebooks call the
same functions, so a number in a notebook and in the report cannot disagree.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from lungray import tracking as T
from lungray.report import stats
from lungray.report.load import COMPLETE, Sweep, prediction_matrix

__all__ = [
    "Metric",
    "METRICS",
    "add_derived",
    "summarise",
    "study_table",
    "study_table_wide",
    "per_class_table",
    "missed_as_normal_table",
    "confusion_matrices",
    "paired_comparisons",
    "per_image_scores",
    "learning_curve_fits",
    "grid_status",
    "normal_class",
    "positive_class",
]


@dataclass(frozen=True)
class Metric:
    """A headline metric: the ``runs`` column it lives in, its label, and which way is better."""

    name: str
    column: str
    label: str
    higher_is_better: bool = True
    bounds: tuple[float, float] = (0.0, 1.0)  # intervals are clipped to the metric's range


UNIT = (0.0, 1.0)
#: The learning-curve metrics of issue 4, section 1, plus the losses (lower is better).
METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("accuracy", "test_accuracy", "Accuracy"),
        Metric("balanced_accuracy", "test_balanced_accuracy", "Balanced accuracy"),
        Metric("macro_f1", "test_macro_f1", "Macro F1"),
        Metric("auc", "test_auc", "AUC"),
        Metric("log_loss", "test_log_loss", "Held-out log loss", False, (0.0, math.inf)),
        Metric("val_loss", "val_loss_best", "Validation loss (best epoch)", False, (0.0, math.inf)),
        # segmentation (lungray.train.tasks.SegmentationTask): per-image means over images with a finding
        # ("pos") and over all images, the study's pooled mean IoU, detection from the mask
        Metric("dice_pos", "test_dice_pos", "Dice (images with a finding)"),
        Metric("dice_all", "test_dice_all", "Dice (all images)"),
        Metric("iou_pos", "test_iou_pos", "IoU (images with a finding)"),
        Metric("iou_all", "test_iou_all", "IoU (all images)"),
        Metric("miou_global", "test_miou_global", "Global mean IoU (the study's, background included)"),
        Metric("det_auc", "test_det_auc", "Detection AUC (any foreground)"),
    )
}

#: per-image scores that pair two models image by image, by primary metric: the column of
#: ``predictions.csv`` and which images count (segmentation: lungray.train.tasks.SegmentationTask)
_PER_IMAGE = {"dice_pos": ("dice", "pos"), "iou_pos": ("iou", "pos"), "dice_all": ("dice", "known"), "iou_all": ("iou", "known")}


def normal_class(class_names: Sequence[str]) -> Optional[int]:
    """Index of the "Normal" class (the 4-class study's "missed as Normal" reference), if any."""
    for i, c in enumerate(class_names):
        if c.lower() == "normal":
            return i
    return None


def positive_class(class_names: Sequence[str]) -> int:
    """The class a binary ROC curve is drawn for: the one that is not "Normal" (else index 1)."""
    nrm = normal_class(class_names)
    if len(class_names) == 2 and nrm is not None:
        return 1 - nrm
    return 1 if len(class_names) > 1 else 0


def add_derived(sweep: Sweep) -> pd.DataFrame:
    """``runs`` plus ``val_loss_best``: the validation loss at the best epoch (PROTOCOLS.md s.1
    reports "validation loss" by size), from the per-epoch history; the minimum when no
    ``best_epoch`` was logged."""
    runs = sweep.runs.copy()
    if runs.empty:
        runs["val_loss_best"] = pd.Series(dtype=float)
        return runs
    h = sweep.histories
    vl = h[h["key"] == "val_loss"] if not h.empty else h
    out = []
    for _, r in runs.iterrows():
        hh = vl[vl["run_id"] == r["run_id"]] if not vl.empty else vl
        if hh.empty:
            out.append(math.nan)
            continue
        be = r.get("best_epoch")
        at = hh[hh["step"] == int(be)] if be is not None and pd.notna(be) else hh.iloc[0:0]
        out.append(float(at["value"].iloc[-1]) if not at.empty else float(hh["value"].min()))
    runs["val_loss_best"] = out
    return runs


def _group_label(model: str, optimizer: str, n_opt: int) -> str:
    return model if n_opt <= 1 else f"{model} / {optimizer}"


def summarise(runs: pd.DataFrame, metrics: Sequence[str] = tuple(METRICS), level: float = 0.95) -> pd.DataFrame:
    """Mean over seeds with a t-interval per (model, optimizer, size, metric); best per size.

    Only complete trials count. ``best`` marks, for each size and metric, the (model,
    optimizer) with the best mean; ``best_clear`` additionally requires its interval not to
    overlap the runner-up's (a rough screen; the paired comparisons are the real test).
    """
    done = runs[runs["state"] == COMPLETE] if "state" in runs else runs
    n_opt = done["optimizer"].nunique()
    rows = []
    for (m, o, n), g in done.groupby(["model", "optimizer", "train_size"], sort=True):
        for name in metrics:
            met = METRICS[name]
            if met.column not in g:
                continue
            vals = g[met.column].to_numpy(dtype=float)
            ci = stats.mean_ci(vals, level, met.bounds)
            rows.append(
                {
                    "model": m,
                    "optimizer": o,
                    "label": _group_label(m, o, n_opt),
                    "train_size": int(n),
                    "metric": name,
                    "n": ci.n,
                    "mean": ci.estimate,
                    "ci_low": ci.low,
                    "ci_high": ci.high,
                    "std": float(np.nanstd(vals, ddof=1)) if ci.n > 1 else math.nan,
                    "seeds": ",".join(str(int(s)) for s in g["seed"].dropna()),
                }
            )
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=["model", "optimizer", "label", "train_size", "metric", "n", "mean", "ci_low", "ci_high", "std", "seeds", "best", "best_clear"])
    df["best"] = False
    df["best_clear"] = False
    for (name, n), g in df.groupby(["metric", "train_size"]):
        g = g.dropna(subset=["mean"])
        if g.empty:
            continue
        hib = METRICS[name].higher_is_better
        g = g.sort_values("mean", ascending=not hib)
        top = g.index[0]
        df.loc[top, "best"] = True
        if len(g) > 1:
            r1, r2 = g.iloc[0], g.iloc[1]
            clear = (r1["ci_low"] > r2["ci_high"]) if hib else (r1["ci_high"] < r2["ci_low"])
            df.loc[top, "best_clear"] = bool(clear) if pd.notna(clear) else False
    return df


def study_table(summary: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Model (x optimizer) by training size for one metric: mean, interval, n and best flag.

    Long-form rows ``label, train_size, mean, ci_low, ci_high, n, best`` in the order of the
    summary; :func:`lungray.report.html.study_table_html` lays it out as a grid.
    """
    s = summary[summary["metric"] == metric]
    return s[["label", "model", "optimizer", "train_size", "mean", "ci_low", "ci_high", "n", "best", "best_clear"]].reset_index(drop=True)


def study_table_wide(summary: pd.DataFrame, metric: str, labels: Optional[Sequence[str]] = None,
                     sizes: Optional[Sequence[int]] = None, digits: int = 3) -> pd.DataFrame:
    """The studies' table as printed: rows model (x optimizer), columns ``n = <size>``, cells
    ``"mean [low, high]"`` with ``★`` on the best mean of each size whose interval clears the
    runner-up's, ``☆`` on a best mean whose interval overlaps, ``"missing"`` for an empty cell.
    """
    from lungray.report.html import fmt_ci

    tab = study_table(summary, metric)
    labels = list(labels) if labels is not None else list(pd.unique(tab["label"]))
    sizes = list(sizes) if sizes is not None else sorted(int(n) for n in tab["train_size"].unique())
    out = pd.DataFrame(index=pd.Index(labels, name="model"), columns=[f"n = {n}" for n in sizes], dtype=object)
    for lab in labels:
        for n in sizes:
            r = tab[(tab["label"] == lab) & (tab["train_size"] == n)]
            if r.empty:
                out.loc[lab, f"n = {n}"] = "missing"
                continue
            r = r.iloc[0]
            cell = fmt_ci(r["mean"], r["ci_low"], r["ci_high"], int(r["n"]), digits)
            if r["best"]:
                cell += " ★" if r["best_clear"] else " ☆"
            out.loc[lab, f"n = {n}"] = cell
    return out


def per_class_table(runs: pd.DataFrame, class_names: Sequence[str], sizes: Sequence[int], level: float = 0.95) -> pd.DataFrame:
    """Precision, recall and F1 per class and model at the chosen sizes, mean over seeds + CI."""
    done = runs[runs["state"] == COMPLETE]
    n_opt = done["optimizer"].nunique()
    rows = []
    for (m, o, n), g in done[done["train_size"].isin(list(sizes))].groupby(["model", "optimizer", "train_size"]):
        for c in class_names:
            row = {"model": m, "optimizer": o, "label": _group_label(m, o, n_opt), "train_size": int(n), "class": c}
            for met in ("precision", "recall", "f1"):
                col = T.per_class_key(met, c)
                ci = stats.mean_ci(g[col].to_numpy(dtype=float) if col in g else [], level, UNIT)
                row.update({met: ci.estimate, f"{met}_low": ci.low, f"{met}_high": ci.high})
            row["n"] = len(g)
            rows.append(row)
    return pd.DataFrame(rows)


def missed_as_normal_table(runs: pd.DataFrame, class_names: Sequence[str], sizes: Sequence[int]) -> pd.DataFrame:
    """Images of each non-Normal class predicted "Normal", mean over seeds (PROTOCOLS.md s.4:
    the 4-class study's clinically worst error). Empty when there is no Normal class."""
    nrm = normal_class(class_names)
    if nrm is None:
        return pd.DataFrame()
    done = runs[runs["state"] == COMPLETE]
    n_opt = done["optimizer"].nunique()
    rows = []
    for (m, o, n), g in done[done["train_size"].isin(list(sizes))].groupby(["model", "optimizer", "train_size"]):
        row = {"model": m, "optimizer": o, "label": _group_label(m, o, n_opt), "train_size": int(n), "n": len(g)}
        for i, c in enumerate(class_names):
            if i == nrm:
                continue
            col = T.per_class_key("missed_as_normal", c)
            row[c] = float(g[col].mean()) if col in g else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def confusion_matrices(sweep: Sweep, size: int) -> dict[str, np.ndarray]:
    """Row-normalised confusion matrices at one size, predictions pooled over seeds, per model
    (x optimizer) label. Rows are true classes and sum to 1 (rows with no images stay 0)."""
    k = len(sweep.class_names)
    done = sweep.complete
    n_opt = done["optimizer"].nunique()
    out = {}
    for (m, o), g in done[done["train_size"] == size].groupby(["model", "optimizer"], sort=False):
        cm = np.zeros((k, k))
        for rid in g["run_id"]:
            if rid not in sweep.predictions:
                continue
            _, y, p = prediction_matrix(sweep.predictions[rid], sweep.class_names)
            np.add.at(cm, (y, p.argmax(1)), 1)
        if cm.sum() == 0:
            continue
        rs = cm.sum(1, keepdims=True)
        out[_group_label(m, o, n_opt)] = np.divide(cm, rs, out=np.zeros_like(cm), where=rs > 0)
    return {lab: out[lab] for lab in sorted(out, key=lambda s: _order_key(sweep, s))}


def _order_key(sweep: Sweep, label: str) -> int:
    models = sweep.models
    m = label.split(" / ")[0]
    return models.index(m) if m in models else len(models)


def per_image_scores(df: pd.DataFrame, class_names: Sequence[str], metric: str = "accuracy") -> tuple[np.ndarray, np.ndarray]:
    """``(image_ids, scores)`` of one trial's ``predictions.csv`` for the primary ``metric``:
    right (1) or wrong (0) for ``accuracy``; the image's Dice or IoU for segmentation, over the
    images with a finding (``*_pos``, ``y_true == 1``) or with a known mask (``*_all``)."""
    if metric == "accuracy":
        ids, y, p = prediction_matrix(df, class_names)
        return ids, (p.argmax(1) == y).astype(float)
    if metric not in _PER_IMAGE:
        raise ValueError(f"no per-image score for metric '{metric}'; valid: accuracy, {', '.join(_PER_IMAGE)}")
    col, which = _PER_IMAGE[metric]
    y = df["y_true"].to_numpy()
    keep = (y == 1) if which == "pos" else (y != 255)
    keep &= df[col].notna().to_numpy()
    return df["image_id"].astype(str).to_numpy()[keep], df[col].to_numpy(dtype=float)[keep]


def paired_correct(sweep: Sweep, model_a: str, model_b: str, size: int, optimizer: str,
                   metric: str = "accuracy") -> tuple[np.ndarray, np.ndarray, list[int]]:
    """``(n_seeds, n_images)`` per-image scores of two models on the same subsets and images:
    correct/wrong for accuracy, Dice/IoU for segmentation (:func:`per_image_scores`).

    Seeds present (with predictions) for both models, images present in both prediction
    files, aligned by ``image_id``: the pairing of issue 4, section 5.
    """
    done = sweep.complete
    sel = done[(done["train_size"] == size) & (done["optimizer"] == optimizer)]
    ra = {int(r.seed): r.run_id for r in sel[sel["model"] == model_a].itertuples() if r.run_id in sweep.predictions}
    rb = {int(r.seed): r.run_id for r in sel[sel["model"] == model_b].itertuples() if r.run_id in sweep.predictions}
    seeds = sorted(set(ra) & set(rb))
    ca, cb = [], []
    for s in seeds:
        ia, sa = per_image_scores(sweep.predictions[ra[s]], sweep.class_names, metric)
        ib, sb = per_image_scores(sweep.predictions[rb[s]], sweep.class_names, metric)
        common, xa, xb = np.intersect1d(ia, ib, return_indices=True)
        if ca and common.size != ca[0].size:
            raise ValueError(f"seed {s}: evaluation images differ between seeds at n={size}; the held-out set must be fixed")
        ca.append(sa[xa])
        cb.append(sb[xb])
    if not seeds:
        return np.zeros((0, 0)), np.zeros((0, 0)), []
    return np.stack(ca), np.stack(cb), seeds


def paired_comparisons(sweep: Sweep, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0,
                       metric: str = "accuracy") -> pd.DataFrame:
    """Difference in ``metric`` (the task's primary: accuracy, Dice...) between every pair of
    models at each size (and optimizer).

    Paired bootstrap over seeds and evaluation images (:func:`stats.paired_bootstrap_diff`)
    plus, for accuracy (right/wrong per image), an exact McNemar test per seed. Pairs are
    ordered so the difference is "higher mean minus lower mean"; ``sentence`` is the line the
    report prints, e.g. ``"DenseNet121 - ResNet50 at 100 images: +2.3 points [-0.8, +5.4]"``.
    """
    rows = []
    done = sweep.complete
    for (n, o), g in done.groupby(["train_size", "optimizer"], sort=True):
        models = [m for m in sweep.models if m in set(g["model"])]
        for a, b in itertools.combinations(models, 2):
            ca, cb, seeds = paired_correct(sweep, a, b, int(n), o, metric)
            if not seeds:
                continue
            if ca.mean() < cb.mean():
                a, b, ca, cb = b, a, cb, ca
            d = stats.paired_bootstrap_diff(ca, cb, n_boot=n_boot, level=level, seed=seed)
            mc = [stats.mcnemar_exact(ca[i] > 0.5, cb[i] > 0.5) for i in range(len(seeds))] if metric == "accuracy" else []
            where = f"{int(n)} images" + (f" ({o})" if done["optimizer"].nunique() > 1 else "")
            verdict = "interval excludes 0" if d.significant else "within noise (interval covers 0)"
            rows.append(
                {
                    "train_size": int(n),
                    "optimizer": o,
                    "model_a": a,
                    "model_b": b,
                    "n_seeds": d.n_seeds,
                    "n_images": d.n_images,
                    "diff_points": 100 * d.diff,
                    "low_points": 100 * d.low,
                    "high_points": 100 * d.high,
                    "significant": d.significant,
                    "mcnemar_b": ";".join(str(x[0]) for x in mc),
                    "mcnemar_c": ";".join(str(x[1]) for x in mc),
                    "mcnemar_p": ";".join(f"{x[2]:.3g}" for x in mc),
                    "seeds": ",".join(map(str, seeds)),
                    "sentence": f"{a} - {b} at {where}: {100 * d.diff:+.1f} points [{100 * d.low:+.1f}, {100 * d.high:+.1f}]",
                    "verdict": verdict,
                }
            )
    return pd.DataFrame(rows)


def target_column(target_accuracy: float) -> str:
    """Column of the fit table holding the size predicted for a target accuracy (0.9 -> n_for_acc90)."""
    return f"n_for_acc{100 * target_accuracy:g}".replace(".", "_")


def learning_curve_fits(
    sweep: Sweep,
    *,
    target_accuracies: Sequence[float] = (0.90, 0.95),
    n_boot: int = 200,
    seed: int = 0,
    grid_points: int = 60,
    metric: str = "accuracy",
) -> tuple[pd.DataFrame, dict]:
    """Power-law fit of error = 1 - accuracy (or 1 - ``metric``, the task's primary: Dice...)
    against training size, per model (x optimizer); targets are values of ``metric``.

    Returns the table (parameters with bootstrap intervals, R², predicted size per target
    accuracy with its interval, reliability flags) and the fit objects keyed by label (for the
    figure). Default targets 90 % and 95 %: the training-size study's models reached 91.6-93.4 %
    at 1000 images (PROTOCOLS.md section 1), so the question "how many images for 95 %?" is
    the one a reader asks.
    """
    done = sweep.complete
    n_opt = done["optimizer"].nunique()
    rows, fits = [], {}
    sizes = np.asarray(sweep.sizes, dtype=float)
    grid = np.geomspace(max(1.0, sizes.min() / 2), sizes.max() * 8, grid_points) if sizes.size else np.zeros(0)
    for (m, o), g in done.groupby(["model", "optimizer"], sort=False):
        lab = _group_label(m, o, n_opt)
        err = 1.0 - g[f"{T.TEST_PREFIX}{metric}"].to_numpy(dtype=float)
        res = stats.bootstrap_power_law(
            g["train_size"].to_numpy(dtype=float),
            err,
            target_errors=[1.0 - t for t in target_accuracies],
            n_boot=n_boot,
            seed=seed,
            grid=grid,
        )
        fits[lab] = res
        row = {
            "model": m,
            "optimizer": o,
            "label": lab,
            "n_sizes": res.fit.n_sizes,
            "a": res.fit.a, "a_low": res.a.low, "a_high": res.a.high,
            "b": res.fit.b, "b_low": res.b.low, "b_high": res.b.high,
            "c": res.fit.c, "c_low": res.c.low, "c_high": res.c.high,
            "r2": res.fit.r2,
            "reliable": res.reliable,
            "flags": "; ".join(res.reasons),
        }
        for t in target_accuracies:
            ci = res.targets[1.0 - t]
            col = target_column(t)
            row[col] = ci.estimate
            row[f"{col}_low"] = ci.low
            row[f"{col}_high"] = ci.high
        rows.append(row)
    return pd.DataFrame(rows), fits


def grid_status(sweep: Sweep) -> dict:
    """Counts for the report's header: expected, complete, failed, running, missing trials."""
    exp = sweep.expected
    if exp.empty:
        return {
            "expected": None,
            "complete": int((sweep.runs["state"] == COMPLETE).sum()),
            "failed": int((sweep.runs["state"] == "failed").sum()),
            "running": int((sweep.runs["state"] == "running").sum()),
            "missing": None,
        }
    vc = exp["state"].value_counts()
    return {
        "expected": int(len(exp)),
        "complete": int(vc.get(COMPLETE, 0)),
        "failed": int(vc.get("failed", 0)),
        "running": int(vc.get("running", 0)),
        "missing": int(vc.get("missing", 0)),
    }
