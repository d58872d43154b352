"""The report's tables, computed from a :class:`~lungray.report.load.Sweep` with :mod:`.stats`.

Each function returns a tidy :class:`pandas.DataFrame` (written as CSV next to the report) and
never formats numbers for display; :mod:`lungray.report.html` does that. The notebooks call the
same functions, so a number in a notebook and in the report cannot disagree.

Which runs of a cell count is decided once, by :func:`counted_runs` (the rule of
:mod:`lungray.report.stats.degenerate`, which the console summary and the MLflow parent's
``summary.csv`` apply too): every table, confusion matrix, ROC curve, paired test and fit here
reads the runs it returns. When the sweep's ``splits.json`` maps evaluation images to patients
(``eval_groups``) and a patient has several images, the evaluation noise is resampled by
patient (:func:`eval_groups`), and the tables say so (``unit``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from lungray import tracking as T
from lungray.report import resampling, stats
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
    "adequacy_table",
    "mcnemar_table",
    "unit_sentence",
    "counted_runs",
    "eval_groups",
    "prediction_arrays",
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

#: segmentation metrics that are means of a per-image score, by name: the column of
#: ``predictions.csv`` and which images count (lungray.train.tasks.SegmentationTask)
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


#: Significance level of the per-run chance check (:func:`lungray.report.stats.chance_check`),
#: reported for information only (``chance_p_accuracy``, ``chance_p_auc``): it leaves no run out.
CHANCE_ALPHA = 0.05

Predictions = dict  # run id -> (image_ids, y_true, probs), from :func:`prediction_arrays`


def prediction_arrays(sweep: Sweep) -> Predictions:
    """Every complete run's ``predictions.csv`` as ``(image_ids, y_true, probs)`` arrays (runs
    whose file holds class probabilities: a segmentation trial's holds per-image Dice instead,
    :func:`per_image_scores`)."""
    return {rid: prediction_matrix(df, sweep.class_names) for rid, df in sweep.predictions.items()
            if any(str(c).startswith("prob_") for c in df.columns)}


def eval_groups(sweep: Sweep) -> Optional[dict]:
    """``image_id -> patient code`` of the evaluation images, from the parent's ``splits.json``
    (``eval_groups``, written by the sweep when the data know patients); None when absent."""
    g = (getattr(sweep, "splits", None) or {}).get("eval_groups")
    return {str(k): v for k, v in g.items()} if isinstance(g, dict) and g else None


def _labels_for(ids: Sequence[str], groups: Optional[dict]) -> Optional[list]:
    """The patient label of each image id (None for an image the mapping lacks: its own unit)."""
    return None if groups is None else [groups.get(str(i)) for i in ids]


def per_image_scores(df: pd.DataFrame, class_names: Sequence[str], metric: str = "accuracy") -> tuple[np.ndarray, np.ndarray]:
    """``(image_ids, scores)`` of one trial's ``predictions.csv`` whose mean is ``metric``: right
    (1) or wrong (0) for ``accuracy``; the image's Dice or IoU for segmentation, over the images
    with a finding (``*_pos``, ``y_true == 1``) or with a known mask (``*_all``)."""
    if metric == "accuracy":
        ids, y, p = prediction_matrix(df, class_names)
        return ids, (p.argmax(1) == y).astype(float)
    if metric not in _PER_IMAGE:
        raise ValueError(f"no per-image score for metric '{metric}'; valid: accuracy, {', '.join(_PER_IMAGE)}")
    col, which = _PER_IMAGE[metric]
    y = df["y_true"].to_numpy()
    keep = ((y == 1) if which == "pos" else (y != 255)) & df[col].notna().to_numpy()
    return df["image_id"].astype(str).to_numpy()[keep], df[col].to_numpy(dtype=float)[keep]


def _aligned_scores(run_ids: Sequence[str], frames: Optional[dict], metric: str, class_names: Sequence[str] = ()):
    """``((S, N) per-image scores, image ids)`` of runs on the images they all score, in image-id
    order (:func:`per_image_scores`); None when a run has no predictions."""
    if not run_ids or not frames or any(r not in frames for r in run_ids):
        return None
    got = [per_image_scores(frames[r], class_names, metric) for r in run_ids]
    ids = got[0][0]
    for i, _ in got[1:]:
        ids = np.intersect1d(ids, i)
    ids = np.sort(ids)
    rows = []
    for i, v in got:
        pos = {x: j for j, x in enumerate(i)}
        rows.append(v[[pos[x] for x in ids]])
    return np.stack(rows), ids


def _flag_runs(done: pd.DataFrame, preds: Predictions) -> pd.DataFrame:
    """``done`` (complete runs) with ``degenerate`` and ``counted`` (the rule of :func:`counted_runs`)."""
    done = done.copy()
    done["degenerate"] = [stats.degenerate_output(preds[r][2], preds[r][1]) if r in preds else ""
                          for r in done["run_id"]]
    done["counted"] = stats.counted_mask(list(zip(done["model"], done["optimizer"], done["train_size"])),
                                         list(done["degenerate"])) if len(done) else np.zeros(0, bool)
    return done


def counted_runs(sweep: Sweep, predictions: Optional[Predictions] = None) -> pd.DataFrame:
    """The complete runs with ``degenerate`` (why a run's output is degenerate, ``""`` when it is
    not, :func:`lungray.report.stats.degenerate_output` on its ``predictions.csv``) and
    ``counted`` (:func:`lungray.report.stats.counted_mask`): the ONE place that decides which
    runs of a cell count. Computed once per sweep object."""
    cache = getattr(sweep, "_lungray_counted", None)
    key = (id(sweep.runs), id(sweep.predictions), len(sweep.runs))
    if cache is not None and cache[0] == key:
        return cache[1].copy()
    done = _flag_runs(sweep.complete, predictions if predictions is not None else prediction_arrays(sweep))
    try:
        sweep._lungray_counted = (key, done)
    except AttributeError:  # a read-only stand-in
        pass
    return done.copy()


def add_derived(sweep: Sweep, predictions: Optional[Predictions] = None) -> pd.DataFrame:
    """``runs`` plus ``val_loss_best``: the validation loss at the best epoch (PROTOCOLS.md s.1
    reports "validation loss" by size), from the per-epoch history; the minimum when no
    ``best_epoch`` was logged. With ``predictions``, also ``degenerate``/``counted``
    (:func:`counted_runs`: which runs count in their cell) and, for information, the chance
    check of every run (:func:`lungray.report.stats.chance_check`: ``chance_p_accuracy``,
    ``chance_p_auc``, ``majority_rate``; a weak but working run may be "not distinguishable
    from chance" on a small evaluation set and still counts). Without predictions every
    complete run counts."""
    runs = sweep.runs.copy()
    runs["degenerate"] = ""
    runs["counted"] = runs["state"] == COMPLETE if "state" in runs else True
    for col in ("chance_p_accuracy", "chance_p_auc", "majority_rate"):
        runs[col] = math.nan
    if predictions:
        flags = _flag_runs(runs[runs["state"] == COMPLETE], predictions).set_index("run_id") if "state" in runs else None
        for i, rid in zip(runs.index, runs["run_id"]):
            if flags is not None and rid in flags.index:
                runs.loc[i, ["degenerate", "counted"]] = [flags.at[rid, "degenerate"], bool(flags.at[rid, "counted"])]
            if rid in predictions:
                _, y, p = predictions[rid]
                ch = stats.chance_check(y, p, CHANCE_ALPHA)
                runs.loc[i, ["chance_p_accuracy", "chance_p_auc", "majority_rate"]] = [ch.p_accuracy, ch.p_auc, ch.majority_rate]
    runs["counted"] = runs["counted"].astype(bool)
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


SUMMARY_COLUMNS = ["model", "optimizer", "label", "train_size", "metric", "n", "n_runs", "n_degenerate", "degenerate_seeds",
                   "degenerate_why", "mean", "ci_low", "ci_high", "mean_all", "std", "seeds", "interval", "var_seed", "var_image",
                   "df", "n_images", "unit", "n_units", "scale", "best", "best_clear"]


def _aligned(run_ids: Sequence[str], predictions: Predictions):
    """``(y (N,), probs (S, N, k), image ids (N,))`` of runs on the evaluation images they all
    have, in image-id order; None when a run has no predictions or the runs disagree on an
    image's label."""
    if not run_ids or any(r not in predictions for r in run_ids):
        return None
    ids = predictions[run_ids[0]][0]
    for r in run_ids[1:]:
        ids = np.intersect1d(ids, predictions[r][0])
    ids = np.sort(ids)
    ys, ps = [], []
    for r in run_ids:
        rid_ids, y, p = predictions[r]
        pos = {v: j for j, v in enumerate(rid_ids)}
        take = np.array([pos[v] for v in ids], dtype=np.int64)
        ys.append(y[take])
        ps.append(p[take])
    if any(not np.array_equal(ys[0], y) for y in ys[1:]):
        return None
    return ys[0], np.stack(ps), ids


class _Weights:
    """One set of bootstrap resample counts per evaluation set (its size and, with patients, its
    patient codes), shared by every cell (the same seed gives the same report)."""

    def __init__(self, n_boot: int, seed: int):
        self.n_boot, self.seed, self._w = n_boot, seed, {}

    def __call__(self, n_images: int, codes: Optional[np.ndarray] = None) -> np.ndarray:
        key = (n_images, None if codes is None else codes.tobytes())
        if key not in self._w:
            self._w[key] = (resampling.multinomial_weights(n_images, self.n_boot, self.seed) if codes is None
                            else resampling.cluster_weights(codes, self.n_boot, self.seed))
        return self._w[key]


def _cell_runs(g: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs that count in the cell, degenerate runs shown apart), by the ``counted`` column of
    :func:`counted_runs` (every run counts when the column is absent)."""
    use = g["counted"].astype(bool) if "counted" in g else pd.Series(True, index=g.index)
    return g[use], g[~use]


def _boot_ci(name: str, vals: np.ndarray, y: np.ndarray, P: np.ndarray, w: np.ndarray, level: float,
             bounds: tuple, codes: Optional[np.ndarray], per_class: Optional[tuple] = None) -> stats.TwoLevelCI:
    """The two-level interval of a resampled metric; for a metric in [0, 1] on the logit scale
    with pseudo-images (:func:`resampling.with_pseudo_images`), so that a metric at its bound
    (AUC 1) keeps a width. ``per_class=(met, j)`` picks class j of a per-class metric."""
    n_units = int(codes.max()) + 1 if codes is not None else y.size
    logit = tuple(bounds) == UNIT
    rows = np.vstack([np.ones((1, y.size)), w]) if logit else w
    out = []
    for s_ in range(P.shape[0]):
        yy, pp, ww = resampling.with_pseudo_images(y, P[s_], rows) if logit else (y, P[s_], rows)
        if per_class is None:
            out.append(resampling.metric_resamples(name, yy, pp, ww))
        else:
            out.append(resampling.per_class_resamples(yy, pp, ww)[per_class[0]][:, per_class[1]])
    res = np.stack(out, axis=1)  # (rows, S)
    if not logit:
        return stats.two_level_ci_boot(vals, res, y.size, level, bounds, n_units=n_units)
    return stats.two_level_ci_boot(res[0], res[1:], y.size, level, bounds, n_units=n_units, logit=True,
                                   estimate=float(np.mean(vals)))


def _metric_ci(met: Metric, use: pd.DataFrame, arrays, weights: _Weights, level: float,
               scores=None, groups: Optional[dict] = None) -> stats.TwoLevelCI:
    vals = use[met.column].to_numpy(dtype=float)
    if scores is not None and scores[0].size and np.isfinite(vals).all():  # a mean of per-image scores (Dice...)
        return stats.two_level_ci_scores(scores[0], level, met.bounds, groups=_labels_for(scores[1], groups))
    if arrays is None or met.name not in resampling.RESAMPLED_METRICS or not np.isfinite(vals).all():
        return stats.seed_only_ci(vals, level, met.bounds)
    y, P, ids = arrays
    labels = _labels_for(ids, groups)
    if met.name == "accuracy":
        return stats.two_level_ci_scores((P.argmax(2) == y[None]).astype(float), level, met.bounds, groups=labels)
    if met.name == "log_loss":
        eps = float(np.finfo(np.float64).eps)
        nll = -np.log(np.clip(np.take_along_axis(P, y[None, :, None], 2)[..., 0], eps, 1 - eps))
        return stats.two_level_ci_scores(nll, level, met.bounds, groups=labels)
    codes = stats.unit_codes(labels, y.size) if labels is not None else None
    return _boot_ci(met.name, vals, y, P, weights(y.size, codes), level, met.bounds, codes)


def summarise(
    runs: pd.DataFrame,
    metrics: Sequence[str] = tuple(METRICS),
    level: float = 0.95,
    *,
    predictions: Optional[Predictions] = None,
    n_boot: int = 1000,
    seed: int = 0,
    frames: Optional[dict] = None,
    groups: Optional[dict] = None,
) -> pd.DataFrame:
    """Mean over seeds with an interval per (model, optimizer, size, metric); best per size.

    With ``frames`` (run id -> ``predictions.csv``, ``Sweep.predictions``), a metric that is a
    mean of per-image scores (segmentation's Dice and IoU, :func:`per_image_scores`) gets the
    same two-level interval as accuracy (:func:`lungray.report.stats.two_level_ci_scores`).

    Only complete trials count. With ``predictions`` (:func:`prediction_arrays`), the interval
    of an evaluation-set metric carries the run-to-run AND the evaluation-image noise
    (:func:`lungray.report.stats.two_level_ci_scores` for accuracy and log loss, closed form;
    :func:`~lungray.report.stats.two_level_ci_boot` over ``n_boot`` resamples of the images
    for balanced accuracy, macro F1 and AUC): ``interval = "seeds+images"``. Without them, and
    for the validation loss (no per-image values), it is the Student-t over seeds,
    conditional on the evaluation images: ``"seeds only"``. ``groups`` (``image_id -> patient``,
    :func:`eval_groups`): the image noise is resampled by patient when a patient has several
    images (``unit = "patient"``, ``n_units`` patients).

    Runs with a degenerate output (``counted`` False, :func:`counted_runs`: constant, or one
    class for every image with scores that do not rank) are left out and counted apart (``n_degenerate``, ``degenerate_seeds``,
    ``degenerate_why``; ``mean_all`` is the mean with them): a collapsed run is a failure of the
    recipe, not a noisy draw of its accuracy. A weak but working run always counts. ``n`` is
    the number of runs in the interval. ``best`` marks, for each size and metric, the (model,
    optimizer) with the best mean; ``best_clear`` additionally requires its interval not to
    overlap the runner-up's (a rough screen; the paired comparisons are the real test).
    """
    done = runs[runs["state"] == COMPLETE] if "state" in runs else runs
    n_opt = done["optimizer"].nunique()
    weights = _Weights(n_boot, seed)
    rows = []
    for (m, o, n), g in done.groupby(["model", "optimizer", "train_size"], sort=True):
        use, _ = _cell_runs(g)
        stuck = g[g["degenerate"].fillna("").astype(str) != ""] if "degenerate" in g else g.iloc[0:0]
        arrays = _aligned(list(use["run_id"]), predictions) if predictions and "run_id" in use else None
        for name in metrics:
            met = METRICS[name]
            if met.column not in g:
                continue
            scores = _aligned_scores(list(use["run_id"]), frames, name) if name in _PER_IMAGE else None
            ci = _metric_ci(met, use, arrays, weights, level, scores, groups)
            vals = use[met.column].to_numpy(dtype=float)
            rows.append(
                {
                    "model": m,
                    "optimizer": o,
                    "label": _group_label(m, o, n_opt),
                    "train_size": int(n),
                    "metric": name,
                    "n": ci.n,
                    "n_runs": len(g),
                    "n_degenerate": len(stuck),
                    "degenerate_seeds": ",".join(str(int(x)) for x in stuck["seed"].dropna()),
                    "degenerate_why": "; ".join(sorted(set(stuck["degenerate"].astype(str)))) if "degenerate" in stuck else "",
                    "mean": ci.estimate,
                    "ci_low": ci.low,
                    "ci_high": ci.high,
                    "mean_all": float(np.nanmean(g[met.column].to_numpy(dtype=float))) if g[met.column].notna().any() else math.nan,
                    "std": float(np.nanstd(vals, ddof=1)) if ci.n > 1 else math.nan,
                    "seeds": ",".join(str(int(x)) for x in use["seed"].dropna()),
                    "interval": ci.kind,
                    "var_seed": ci.var_seed,
                    "var_image": ci.var_image,
                    "df": ci.df,
                    "n_images": ci.n_images,
                    "unit": ci.unit if ci.kind == "seeds+images" else "",
                    "n_units": ci.n_units if ci.kind == "seeds+images" else 0,
                    "scale": ci.scale,
                }
            )
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
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


def unit_sentence(summary: pd.DataFrame) -> str:
    """What the evaluation noise of the summary's intervals was resampled by, in one sentence."""
    if summary is None or summary.empty or "unit" not in summary:
        return ""
    pat = summary[summary["unit"] == "patient"]
    if not pat.empty:
        r = pat.iloc[0]
        return (f"Evaluation noise resampled by patient: {int(r.n_units):,} patients with {int(r.n_images):,} images "
                "(several images of a patient are not independent).")
    if (summary["unit"] == "image").any():
        return "Evaluation noise resampled by image (no patient has several evaluation images, or patients are unknown)."
    return ""


def study_table(summary: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Model (x optimizer) by training size for one metric: mean, interval, n and best flag.

    Long-form rows ``label, train_size, mean, ci_low, ci_high, n, best`` in the order of the
    summary; :func:`lungray.report.html.study_table_html` lays it out as a grid.
    """
    s = summary[summary["metric"] == metric]
    cols = ["label", "model", "optimizer", "train_size", "mean", "ci_low", "ci_high", "n", "n_runs", "n_degenerate",
            "degenerate_seeds", "degenerate_why", "mean_all", "interval", "var_seed", "var_image", "df", "n_images", "unit",
            "n_units", "scale", "best", "best_clear"]
    return s[[c for c in cols if c in s.columns]].reset_index(drop=True)


def study_table_wide(summary: pd.DataFrame, metric: str, labels: Optional[Sequence[str]] = None,
                     sizes: Optional[Sequence[int]] = None, digits: int = 3) -> pd.DataFrame:
    """The studies' table as printed: rows model (x optimizer), columns ``n = <size>``, cells
    ``"mean [low, high]"`` with ``★`` on the best mean of each size whose interval clears the
    runner-up's, ``☆`` on a best mean whose interval overlaps, ``"missing"`` for an empty cell,
    and the degenerate runs named after the interval (they are not in it).
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
            k = int(r.get("n_degenerate", 0) or 0)
            why = str(r.get("degenerate_why", "") or "")
            if k and k == int(r.get("n_runs", k)):
                cell += f" · all {k} runs degenerate ({why})"
            elif k:
                cell += f" · +{k} degenerate run{'s' if k > 1 else ''} (seed {r['degenerate_seeds']}: {why}), not in the mean"
            out.loc[lab, f"n = {n}"] = cell
    return out


def per_class_table(runs: pd.DataFrame, class_names: Sequence[str], sizes: Sequence[int], level: float = 0.95, *,
                    predictions: Optional[Predictions] = None, n_boot: int = 1000, seed: int = 0,
                    groups: Optional[dict] = None) -> pd.DataFrame:
    """Precision, recall and F1 per class and model at the chosen sizes: mean over seeds with the
    interval of :func:`summarise` (seeds + evaluation images, or patients, with ``predictions``;
    seeds only without; degenerate runs left out and counted in ``n_degenerate``)."""
    done = runs[runs["state"] == COMPLETE]
    n_opt = done["optimizer"].nunique()
    weights = _Weights(n_boot, seed)
    rows = []
    for (m, o, n), g in done[done["train_size"].isin(list(sizes))].groupby(["model", "optimizer", "train_size"]):
        use, _ = _cell_runs(g)
        n_flagged = int((g["degenerate"].fillna("").astype(str) != "").sum()) if "degenerate" in g else 0
        arrays = _aligned(list(use["run_id"]), predictions) if predictions else None
        w = codes = None
        if arrays is not None:
            y, P, ids = arrays
            labels = _labels_for(ids, groups)
            codes = stats.unit_codes(labels, y.size) if labels is not None else None
            w = weights(y.size, codes)
        row0 = {"model": m, "optimizer": o, "label": _group_label(m, o, n_opt), "train_size": int(n)}
        for j, c in enumerate(class_names):
            row = dict(row0, **{"class": c})
            kind, unit = "seeds only", ""
            for met in ("precision", "recall", "f1"):
                col = T.per_class_key(met, c)
                vals = use[col].to_numpy(dtype=float) if col in use else np.zeros(0)
                if arrays is not None and vals.size and np.isfinite(vals).all():
                    ci = _boot_ci(met, vals, arrays[0], arrays[1], w, level, UNIT, codes, per_class=(met, j))
                else:
                    ci = stats.seed_only_ci(vals, level, UNIT)
                kind, unit = ci.kind, ci.unit if ci.kind == "seeds+images" else ""
                row.update({met: ci.estimate, f"{met}_low": ci.low, f"{met}_high": ci.high})
            row.update({"n": len(use), "n_degenerate": n_flagged, "interval": kind, "unit": unit})
            rows.append(row)
    return pd.DataFrame(rows)


def missed_as_normal_table(runs: pd.DataFrame, class_names: Sequence[str], sizes: Sequence[int]) -> pd.DataFrame:
    """Images of each non-Normal class predicted "Normal", mean over the runs that count
    (:func:`counted_runs`; PROTOCOLS.md s.4: the 4-class study's clinically worst error).
    Empty when there is no Normal class."""
    nrm = normal_class(class_names)
    if nrm is None:
        return pd.DataFrame()
    done = runs[runs["state"] == COMPLETE]
    n_opt = done["optimizer"].nunique()
    rows = []
    for (m, o, n), g in done[done["train_size"].isin(list(sizes))].groupby(["model", "optimizer", "train_size"]):
        g, _ = _cell_runs(g)
        row = {"model": m, "optimizer": o, "label": _group_label(m, o, n_opt), "train_size": int(n), "n": len(g)}
        for i, c in enumerate(class_names):
            if i == nrm:
                continue
            col = T.per_class_key("missed_as_normal", c)
            row[c] = float(g[col].mean()) if col in g else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def confusion_matrices(sweep: Sweep, size: int) -> dict[str, np.ndarray]:
    """Row-normalised confusion matrices at one size, predictions pooled over the runs that count
    (:func:`counted_runs`: the runs of the tables above), per model (x optimizer) label. Rows are
    true classes and sum to 1 (rows with no images stay 0)."""
    k = len(sweep.class_names)
    done = counted_runs(sweep)
    done = done[done["counted"]]
    n_opt = sweep.complete["optimizer"].nunique()
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


def paired_correct(sweep: Sweep, model_a: str, model_b: str, size: int, optimizer: str,
                   metric: str = "accuracy", *, counted: Optional[pd.DataFrame] = None,
                   with_ids: bool = False, cache: Optional[dict] = None):
    """``(n_seeds, n_images)`` correct/wrong arrays of two models on the same subsets and images
    (for a segmentation ``metric``: their per-image Dice or IoU, :func:`per_image_scores`).

    Seeds where BOTH runs count (:func:`counted_runs`; ``counted`` is its result, computed when
    not given) and have predictions, images present in both prediction files, aligned by
    ``image_id``: the pairing of issue 4, section 5. ``with_ids`` also returns the image ids;
    ``cache`` (a dict kept by the caller) keeps each run's parsed scores across calls.
    """
    cache = {} if cache is None else cache

    def scores(rid: str):
        if (rid, metric) not in cache:
            cache[(rid, metric)] = per_image_scores(sweep.predictions[rid], sweep.class_names, metric)
        return cache[(rid, metric)]

    done = counted if counted is not None else counted_runs(sweep)
    sel = done[(done["train_size"] == size) & (done["optimizer"] == optimizer) & done["counted"]]
    ra = {int(r.seed): r.run_id for r in sel[sel["model"] == model_a].itertuples() if r.run_id in sweep.predictions}
    rb = {int(r.seed): r.run_id for r in sel[sel["model"] == model_b].itertuples() if r.run_id in sweep.predictions}
    seeds = sorted(set(ra) & set(rb))
    ca, cb, ids = [], [], np.zeros(0, dtype=object)
    for s in seeds:
        ia, sa = scores(ra[s])
        ib, sb = scores(rb[s])
        common, xa, xb = np.intersect1d(ia, ib, return_indices=True)
        if ca and common.size != ca[0].size:
            raise ValueError(f"seed {s}: evaluation images differ between seeds at n={size}; the held-out set must be fixed")
        ca.append(sa[xa])
        cb.append(sb[xb])
        ids = common
    kind = bool if metric == "accuracy" else float
    if not seeds:
        out = (np.zeros((0, 0), kind), np.zeros((0, 0), kind), [])
    else:
        out = (np.stack(ca).astype(kind), np.stack(cb).astype(kind), seeds)
    return out + (ids,) if with_ids else out


#: Significance level of the paired comparisons (after Holm's correction over the report's family).
PAIRED_ALPHA = 0.05


def paired_comparisons(sweep: Sweep, *, level: float = 0.95, alpha: float = PAIRED_ALPHA,
                       metric: str = "accuracy", groups: Optional[dict] = None) -> pd.DataFrame:
    """Difference in ``metric`` (the task's primary: accuracy, or segmentation's per-image Dice)
    between every pair of models at each size (and optimizer).

    The test is :func:`stats.paired_test` (the paired per-image differences, whose variance
    holds the run-to-run and the evaluation-image term, referred to the fiducial mixture of
    :func:`stats.fiducial_sf`), with its 95% interval and p-value. The FAMILY is every
    comparison in this table (sizes x optimizers x model pairs: 6 pairs x 4 sizes = 24 for the
    paper preset, 168 for ``transfer``); ``p_holm`` is Holm's adjusted p-value over it
    (family-wise error control under any dependence: the comparisons share models and
    images), ``q_bh`` the Benjamini-Hochberg q-value (false discovery rate), and
    ``significant`` means ``p_holm < alpha``: the only verdict. Measured on this function with
    planted nulls over 3 models x 5 sizes: family-wise error and false discovery rate <= 0.05
    with 2, 3 and 5 seeds (``bench/bench_stats.py``). Only runs that count
    (:func:`counted_runs`) are paired. ``groups`` (``image_id -> patient``, default from the
    sweep's ``splits.json``, :func:`eval_groups`): the image term is resampled by patient when a
    patient has several images (``unit``).

    One McNemar test per comparison combines the seeds with the image (or patient) as the
    cluster (:func:`stats.mcnemar_clustered`), with its own Holm adjustment: it asks whether
    THESE trained models differ, holding the runs fixed, and rejects about half the
    comparisons of two equally good recipes when seeds differ a lot (issue 19), so it is no
    part of the verdict (:func:`mcnemar_table` is its detail table). ``discordance`` is the
    share of image-runs on which exactly one of the two models is right (for
    :func:`adequacy_table`). With one seed there is no test of the recipes (``p`` NaN, out of the
    family): the interval is then over images only, for these two trained models
    (``interval = "images only (one seed)"``). Pairs are ordered so the difference is "higher
    mean minus lower mean"; ``sentence`` is the line the report prints. The McNemar test and
    ``discordance`` need right/wrong per image: NaN for a continuous per-image score (Dice).
    """
    rows = []
    done = counted_runs(sweep)
    groups = groups if groups is not None else eval_groups(sweep)
    multi_opt = done["optimizer"].nunique() > 1
    cache: dict = {}
    for (n, o), g in done.groupby(["train_size", "optimizer"], sort=True):
        models = [m for m in sweep.models if m in set(g["model"])]
        for a, b in itertools.combinations(models, 2):
            ca, cb, seeds, ids = paired_correct(sweep, a, b, int(n), o, metric, counted=done, with_ids=True, cache=cache)
            if not seeds:
                continue
            if ca.mean() < cb.mean():
                a, b, ca, cb = b, a, cb, ca
            labels = _labels_for(ids, groups)
            d = stats.paired_test(ca.astype(float), cb.astype(float), level, bounds=(-1.0, 1.0), groups=labels)
            binary = ca.dtype == bool
            mc = stats.mcnemar_clustered(ca, cb, groups=labels) if binary else None
            low, high, kind = d.low, d.high, "seeds+images"
            if d.n_seeds == 1:  # no recipe-level test: the interval of THESE two trained models, over images
                one = stats.mean_ci(ca[0].astype(float) - cb[0].astype(float), level, (-1.0, 1.0))
                low, high, kind = one.low, one.high, "images only (one seed)"
            rows.append(
                {
                    "train_size": int(n),
                    "optimizer": o,
                    "model_a": a,
                    "model_b": b,
                    "n_seeds": d.n_seeds,
                    "n_images": d.n_images,
                    "unit": d.unit,
                    "n_units": d.n_units,
                    "diff_points": 100 * d.diff,
                    "low_points": 100 * low,
                    "high_points": 100 * high,
                    "interval": kind,
                    "p": d.p,
                    "df": d.df,
                    "se_seed_points": 100 * math.sqrt(d.var_seed) if np.isfinite(d.var_seed) else math.nan,
                    "se_image_points": 100 * math.sqrt(d.var_image) if np.isfinite(d.var_image) else math.nan,
                    "mcnemar_b": mc.b if binary else math.nan,
                    "mcnemar_c": mc.c if binary else math.nan,
                    "mcnemar_p": mc.p if binary else math.nan,
                    "discordance": float(np.mean(ca != cb)) if binary else math.nan,
                    "seeds": ",".join(map(str, seeds)),
                    "where": f"{int(n)} images" + (f" ({o})" if multi_opt else ""),
                }
            )
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    return _family(out, alpha)


def _family(out: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Holm and BH over the family, the verdict and the sentence of each comparison."""
    from lungray.report.html import fmt_p as _p
    from lungray.report.html import fmt_p_eq

    out["p_holm"] = stats.holm(out["p"].to_numpy())
    out["q_bh"] = stats.benjamini_hochberg(out["p"].to_numpy())
    out["mcnemar_p_holm"] = stats.holm(out["mcnemar_p"].to_numpy())
    out["family_size"] = int(np.isfinite(out["p"]).sum())
    out["significant"] = out["p_holm"] < alpha

    def sentence(r) -> str:
        head = f"{r.model_a} - {r.model_b} at {r.where}: {r.diff_points:+.1f} points"
        head += f" [{r.low_points:+.1f}, {r.high_points:+.1f}]"
        if not np.isfinite(r.p):
            return head + " (one seed: these two trained models, over images; no test of the recipes)"
        return head + f", {fmt_p_eq(r.p)}, Holm-adjusted {_p(r.p_holm)}"

    out["sentence"] = [sentence(r) for r in out.itertuples()]
    out["verdict"] = ["difference (Holm-adjusted p < %g)" % alpha if s_ else "within noise" for s_ in out["significant"]]
    return out


#: What the McNemar detail table answers, for the report (it is not a verdict on the recipes).
MCNEMAR_MEANING = (
    "McNemar (one exact test per comparison over all seeds, the evaluation image, or patient, as the cluster) asks a "
    "different question from the verdict above: do THESE trained models differ on new images, holding the runs fixed? "
    "It ignores how much a re-run of the recipe would move the result, so two equally good recipes whose seeds differ "
    "a lot 'differ' by McNemar in about half the comparisons. Use it to compare the trained models you have; the "
    "verdict on the recipes is the paired test's."
)


def mcnemar_table(paired: pd.DataFrame) -> pd.DataFrame:
    """The McNemar detail table of :func:`paired_comparisons` (right/wrong scores only): what it
    answers is :data:`MCNEMAR_MEANING`; empty for a continuous per-image score."""
    cols = ["train_size", "optimizer", "model_a", "model_b", "n_seeds", "n_images", "unit", "mcnemar_b", "mcnemar_c",
            "mcnemar_p", "mcnemar_p_holm"]
    if paired is None or paired.empty or not np.isfinite(paired["mcnemar_p"].to_numpy(dtype=float)).any():
        return pd.DataFrame(columns=cols)
    return paired[cols].reset_index(drop=True)


def adequacy_table(summary: pd.DataFrame, paired: pd.DataFrame, *, alpha: float = 0.05, power: float = 0.8,
                   level: float = 0.95) -> pd.DataFrame:
    """Test-set adequacy per cell (Beleites et al. 2013): what the evaluation set can resolve.

    For each model x size (x optimizer) with accuracy ``p`` on ``n_images`` evaluation images:
    ``halfwidth_points``, the half-width of the 95% Wilson interval of ONE run's accuracy (the
    evaluation-set noise alone); and ``mdd_points``, the smallest accuracy difference between
    two models that a paired McNemar comparison on these images detects with ``power``,
    two-sided at ``alpha`` (:func:`stats.mcnemar_detectable_difference`). The latter needs
    the discordance (share of images exactly one model gets right): the mean observed against
    the other models at that size (``discordance_source = "observed"``), else ``2 p (1 - p)``,
    the value for two models of accuracy ``p`` whose errors are independent (``"independent
    errors"``; correlated errors disagree less and resolve smaller gaps).
    """
    acc = summary[summary["metric"] == "accuracy"] if not summary.empty else summary
    rows = []
    for r in acc.itertuples():
        n_img = int(r.n_images) if getattr(r, "n_images", 0) and np.isfinite(r.n_images) else 0
        if not n_img or not np.isfinite(r.mean):
            continue
        p = float(r.mean)
        psi, src = math.nan, ""
        if paired is not None and not paired.empty:
            sel = paired[(paired.train_size == r.train_size) & (paired.optimizer == r.optimizer)
                         & ((paired.model_a == r.model) | (paired.model_b == r.model))]
            if not sel.empty:
                psi, src = float(sel["discordance"].mean()), "observed"
        if not (np.isfinite(psi) and psi > 0):
            psi, src = 2 * p * (1 - p), "independent errors"
        wil = stats.binom_ci(round(p * n_img), n_img, level, "wilson")
        mdd = stats.mcnemar_detectable_difference(n_img, psi, alpha, power) if psi > 0 else math.nan
        rows.append({"label": r.label, "model": r.model, "optimizer": r.optimizer, "train_size": int(r.train_size),
                     "n_images": n_img, "accuracy": p, "halfwidth_points": 100 * wil.half_width,
                     "discordance": psi, "discordance_source": src, "mdd_points": 100 * mdd,
                     "alpha": alpha, "power": power})
    return pd.DataFrame(rows)


def target_column(target_accuracy: float) -> str:
    """Column of the fit table holding the size predicted for a target accuracy (0.9 -> n_for_acc90)."""
    return f"n_for_acc{100 * target_accuracy:g}".replace(".", "_")


def learning_curve_fits(
    sweep: Sweep,
    *,
    target_accuracies: Sequence[float] = (0.90, 0.95),
    n_boot: int = 400,
    seed: int = 0,
    grid_points: int = 80,
    predictions: Optional[Predictions] = None,
    metric: str = "accuracy",
    frames: Optional[dict] = None,
    groups: Optional[dict] = None,
) -> tuple[pd.DataFrame, dict]:
    """Power-law fit of error = 1 - accuracy against training size, per model (x optimizer);
    for another ``metric`` (the task's primary: segmentation's Dice) error = 1 - that metric, the
    targets are values of it, and ``frames`` (run id -> ``predictions.csv``) give the per-image
    scores the bootstrap resamples.

    Returns the table (parameters with bootstrap intervals, R², predicted size per target
    accuracy with its interval, where it lies against the measured sizes and its own verdict
    ``<target>_reliable``/``<target>_flags``; the fit's verdict ``reliable``/``flags`` and its
    ``notes``) and the fit objects keyed by label (for the figure). With ``predictions`` the
    bootstrap also resamples the evaluation images, by patient with ``groups`` (default: the
    sweep's :func:`eval_groups`; :func:`stats.bootstrap_power_law`). The runs fitted are the
    runs that count (:func:`counted_runs`), as in every table; a weak run is fitted (the curve
    is the recipe's expected error as measured). Default targets 90 % and 95 %: the
    training-size study's models reached 91.6-93.4 % at 1000 images (PROTOCOLS.md section 1), so
    the question "how many images for 95 %?" is the one a reader asks.
    """
    done = counted_runs(sweep, predictions)
    done = done[done["counted"]]
    groups = groups if groups is not None else eval_groups(sweep)
    n_opt = sweep.complete["optimizer"].nunique()
    rows, fits = [], {}
    sizes = np.asarray(sweep.sizes, dtype=float)
    # from a quarter of the smallest size to 8x the largest: the figure draws the measured range
    # solid and the rest dotted
    grid = np.geomspace(max(1.0, sizes.min() / 4), sizes.max() * 8, grid_points) if sizes.size else np.zeros(0)
    for (m, o), g in done.groupby(["model", "optimizer"], sort=False):
        lab = _group_label(m, o, n_opt)
        err = 1.0 - g[f"{T.TEST_PREFIX}{metric}"].to_numpy(dtype=float)
        correct = ids = None
        arrays = _aligned(list(g["run_id"]), predictions) if predictions and metric == "accuracy" else None
        if metric in _PER_IMAGE:
            got = _aligned_scores(list(g["run_id"]), frames, metric)
            correct, ids = got if got is not None else (None, None)
        elif arrays is not None:
            y, P, ids = arrays
            correct = (P.argmax(2) == y[None]).astype(float)
        res = stats.bootstrap_power_law(
            g["train_size"].to_numpy(dtype=float),
            err,
            correct=correct,
            target_errors=[1.0 - t for t in target_accuracies],
            n_boot=n_boot,
            seed=seed,
            grid=grid,
            groups=_labels_for(ids, groups) if ids is not None else None,
        )
        fits[lab] = res
        row = {
            "model": m,
            "optimizer": o,
            "label": lab,
            "n_sizes": res.fit.n_sizes,
            "runs_per_size": ", ".join(f"{k}×{v}" for k, v in res.runs_per_size.items()),
            "a": res.fit.a, "a_low": res.a.low, "a_high": res.a.high,
            "b": res.fit.b, "b_low": res.b.low, "b_high": res.b.high,
            "c": res.fit.c, "c_low": res.c.low, "c_high": res.c.high,
            "c_at_bound_share": res.c_at_bound_share,
            "r2": res.fit.r2,
            "eval_noise_in_bootstrap": res.eval_noise,
            "unit": res.unit,
            "reliable": res.reliable,
            "flags": "; ".join(res.reasons),
            "notes": "; ".join(res.notes),
            "interval_note": res.interval_note,
        }
        for t in target_accuracies:
            ci = res.targets[1.0 - t]
            col = target_column(t)
            row[col] = ci.estimate
            row[f"{col}_low"] = ci.low
            row[f"{col}_high"] = ci.high
            row[f"{col}_reliable"] = bool(res.target_reliable.get(1.0 - t, False))
            row[f"{col}_flags"] = "; ".join(res.target_reasons.get(1.0 - t, ()))
            where = res.where.get(1.0 - t, "")
            if res.reliable and not row[f"{col}_reliable"]:
                where += ("; " if where else "") + "UNRELIABLE: " + row[f"{col}_flags"]
            row[f"{col}_where"] = where
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
