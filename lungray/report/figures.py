"""Matplotlib figures for the report, drawn without pyplot (no global state, thread-safe).

Every function returns a :class:`matplotlib.figure.Figure`; :func:`to_png` and
:func:`data_uri` turn it into bytes / a ``data:image/png;base64,...`` URI, which is how the
report embeds images so it opens offline and fetches nothing (issue 4).
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from lungray.report.tables import METRICS, positive_class

__all__ = [
    "to_png",
    "save_figure",
    "check_formats",
    "at_print_width",
    "data_uri",
    "learning_curves_figure",
    "dynamics_figure",
    "confusion_figure",
    "roc_figure",
    "fit_figure",
    "class_balance_figure",
    "image_grid_figure",
]

_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


#: Print geometry (issue 13.6): a full-width figure is 180 mm wide (a two-column journal page),
#: PNGs are written at 300 dpi, and every figure also as SVG and PDF (vector) next to it.
FULL_WIDTH = 180 / 25.4
PRINT_DPI = 300
#: The PNG embedded in the HTML page: lighter than the print file, sharp on a screen.
SCREEN_DPI = 150
FIGURE_FORMATS = ("png", "svg", "pdf")

#: Many classes (issue 23): a figure's size and its number of drawn texts are bounded whatever the
#: class count K. Cell values are written up to ANNOTATED_CLASSES classes, class names up to
#: LABELLED_CLASSES (beyond: every n-th class index; the tables and CSVs have the names), ROC curves
#: are labelled up to MAX_CURVES, an image grid shows at most MAX_GRID_IMAGES.
ANNOTATED_CLASSES = 12
LABELLED_CLASSES = 30
MAX_CURVES = 10
MAX_GRID_IMAGES = 48


def class_ticks(k: int) -> tuple[list[int], bool]:
    """Tick positions for ``k`` classes and whether they carry the names (else class indices)."""
    if k <= LABELLED_CLASSES:
        return list(range(k)), True
    step = math.ceil(k / LABELLED_CLASSES)
    return list(range(0, k, step)), False


def check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    """The print formats asked for, validated (``png``, ``svg``, ``pdf``; none is fine)."""
    out = tuple(dict.fromkeys(str(f).lower().lstrip(".") for f in formats or ()))
    bad = [f for f in out if f not in FIGURE_FORMATS]
    if bad:
        from lungray.errors import ConfigError

        raise ConfigError(f"figure format(s) {', '.join(bad)} not supported; use {', '.join(FIGURE_FORMATS)}")
    return out


def at_print_width(fig):
    """Make ``fig`` exactly :data:`FULL_WIDTH` (180 mm) wide: every report figure is printed at
    the width the README states (issue 20.4).

    A figure drawn narrower (a strip of image thumbnails, whose natural width is its number of
    columns) keeps its height, its panels their size, and gets the rest as margin; a wider one
    is scaled down with its proportions."""
    w, h = fig.get_size_inches()
    if abs(w - FULL_WIDTH) > 1e-9:
        fig.set_size_inches(FULL_WIDTH, h if w < FULL_WIDTH else h * FULL_WIDTH / w)
    return fig


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def to_png(fig, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save_figure(fig, stem: str | Path, formats: Sequence[str] = FIGURE_FORMATS, dpi: int = PRINT_DPI) -> list[Path]:
    """Write ``<stem>.png`` (``dpi``), ``<stem>.svg`` and ``<stem>.pdf``; return the paths.

    ``svg.hashsalt`` is fixed so the same figure gives the same SVG bytes (reproducible reports).
    """
    import matplotlib

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    with matplotlib.rc_context({"svg.hashsalt": "lungray", "pdf.fonttype": 42}):
        for fmt in formats:
            path = stem.with_suffix("." + fmt)
            fig.savefig(path, format=fmt, dpi=dpi, metadata={"Date": None} if fmt == "svg" else None)
            out.append(path)
            # keep the axes where the first save's constrained layout put them: the layout is
            # solved in inches, the same at every dpi and format, but the engine would solve it
            # again on every savefig (a quarter of a report's figure time for identical answers)
            fig.set_layout_engine("none")
    return out


def data_uri(fig_or_png, dpi: int = 100) -> str:
    """``data:image/png;base64,...`` for a figure or PNG bytes (embedded, no file, no fetch)."""
    png = fig_or_png if isinstance(fig_or_png, (bytes, bytearray)) else to_png(fig_or_png, dpi)
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _colors(labels: Sequence[str]) -> dict[str, str]:
    return {lab: _PALETTE[i % len(_PALETTE)] for i, lab in enumerate(labels)}


def _size_axis(ax, sizes: Sequence[int]) -> None:
    ax.set_xscale("log")
    ax.set_xticks(list(sizes))
    ax.set_xticklabels([str(s) for s in sizes], fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel("training images (log scale)", fontsize=8)


def _shared_legend(fig, handles, labels, ncol: Optional[int] = None) -> None:
    """One legend for every panel, below them (issue 13.6: not only in the first panel)."""
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=ncol or min(4, len(labels)), fontsize=7, frameon=False)


def learning_curves_figure(
    summary: pd.DataFrame,
    metrics: Sequence[str] = ("dice_pos", "dice_all", "iou_pos", "iou_all", "miou_global", "det_auc",
                              "accuracy", "balanced_accuracy", "macro_f1", "auc", "val_loss", "log_loss"),
    labels: Optional[Sequence[str]] = None,
    runs: Optional[pd.DataFrame] = None,
):
    """Metric against training size, one line per model (x optimizer): mean over seeds with its
    95 % interval as a band (issue 4, section 1). Sizes with one seed show a point only. With
    ``runs``, degenerate runs (``counted`` False, left out of the mean) are drawn as crosses.
    Metrics the summary does not hold are left out (a classification sweep has no Dice, a
    segmentation sweep no accuracy)."""
    from matplotlib.lines import Line2D

    metrics = [m for m in metrics if m in set(summary["metric"])] if not summary.empty else []
    labels = list(labels) if labels else list(pd.unique(summary["label"])) if not summary.empty else []
    cols = 3 if len(metrics) > 4 else max(1, min(2, len(metrics)))
    rows = max(1, math.ceil(len(metrics) / cols))
    fig = _figure(FULL_WIDTH, 2.0 * rows + 0.5)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    colors = _colors(labels)
    sizes = sorted(summary["train_size"].unique()) if not summary.empty else []
    stuck = runs[~runs["counted"].astype(bool)] if runs is not None and "counted" in runs else None
    for ax, name in zip(axes, metrics):
        s = summary[summary["metric"] == name]
        for lab in labels:
            g = s[s["label"] == lab].sort_values("train_size")
            if g.empty:
                continue
            ax.plot(g["train_size"], g["mean"], "o-", color=colors[lab], label=lab, lw=1.4, ms=3)
            band = g.dropna(subset=["ci_low", "ci_high"])
            if len(band):
                ax.fill_between(band["train_size"], band["ci_low"], band["ci_high"], color=colors[lab], alpha=0.18, lw=0)
            if stuck is not None and METRICS[name].column in stuck:
                st_ = stuck[(stuck["label"] == lab) & (stuck["state"] == "complete")] if "label" in stuck else stuck.iloc[0:0]
                ax.plot(st_["train_size"], st_[METRICS[name].column], "x", color=colors[lab], ms=5, mew=1.2)
        _size_axis(ax, sizes)
        met = METRICS[name]
        ax.set_title(met.label + ("" if met.higher_is_better else " (lower is better)"), fontsize=8)
        ax.set_ylabel(met.label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=colors[lab], marker="o", ms=3, lw=1.4) for lab in labels]
    names = list(labels)
    if stuck is not None and len(stuck):
        handles.append(Line2D([], [], color="k", marker="x", ls="none", ms=5))
        names.append("degenerate run (left out of the mean unless all runs of the size are)")
    if metrics:
        _shared_legend(fig, handles, names)
    return fig


def dynamics_figure(runs: pd.DataFrame, histories: pd.DataFrame, kind: str = "loss", labels: Optional[Sequence[str]] = None):
    """Per-epoch train (solid) and validation (dashed) curves, one panel per cell (rows: model
    x optimizer, columns: training size), seeds overlaid (issue 4, section 3)."""
    keys = (f"train_{kind}", f"val_{kind}")  # loss, accuracy, dice_pos...
    done = runs[runs["state"] == "complete"]
    labels = list(labels) if labels else sorted(done["label"].unique()) if "label" in done else []
    sizes = sorted(done["train_size"].dropna().unique())
    fig = _figure(FULL_WIDTH, 1.45 * max(1, len(labels)) + 0.6)
    axes = fig.subplots(max(1, len(labels)), max(1, len(sizes)), squeeze=False, sharey=True)
    seeds = sorted(done["seed"].dropna().unique())
    seed_alpha = {s: 1.0 - 0.55 * i / max(1, len(seeds) - 1) for i, s in enumerate(seeds)}
    h = histories.set_index("run_id") if not histories.empty else histories
    for i, lab in enumerate(labels):
        for j, n in enumerate(sizes):
            ax = axes[i, j]
            cell = done[(done["label"] == lab) & (done["train_size"] == n)]
            for r in cell.itertuples():
                if histories.empty or r.run_id not in h.index:
                    continue
                hr = h.loc[[r.run_id]]
                for key, style, col in ((keys[0], "-", "#1f77b4"), (keys[1], "--", "#d62728")):
                    kk = hr[hr["key"] == key].sort_values("step")
                    if len(kk):
                        ax.plot(kk["step"], kk["value"], style, color=col, alpha=seed_alpha.get(r.seed, 1.0), lw=1.2,
                                label=f"{key} (seed {r.seed})")
            if i == 0:
                ax.set_title(f"n = {int(n)}", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{lab}\n{kind}", fontsize=7)
            if i == len(labels) - 1:
                ax.set_xlabel("epoch", fontsize=7)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    from matplotlib.lines import Line2D

    fig.legend(
        [Line2D([], [], color="#1f77b4"), Line2D([], [], color="#d62728", ls="--")],
        [keys[0].replace("_", " "), keys[1].replace("_", " ") + "  (darker = lower seed)"],
        loc="outside lower center",
        ncol=2,
        fontsize=7,
        frameon=False,
    )
    return fig


def _panel_grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = max(1, min(max_cols, n))
    return math.ceil(max(1, n) / cols), cols


def confusion_figure(cms: dict[str, np.ndarray], class_names: Sequence[str], title: str = ""):
    """Row-normalised confusion matrices, up to 4 per row (true class on rows, shares in cells)."""
    k = len(class_names)
    rows, cols = _panel_grid(len(cms))
    side = FULL_WIDTH / cols
    fig = _figure(FULL_WIDTH, rows * side * (0.75 if k <= 2 else 0.85) + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(cms):]:
        ax.set_visible(False)
    ticks, named = class_ticks(k)
    for ax, (lab, cm) in zip(axes, cms.items()):
        ax.imshow(cm, vmin=0, vmax=1, cmap="Blues", interpolation="nearest")
        if k <= ANNOTATED_CLASSES:
            for a in range(k):
                for b in range(k):
                    ax.text(b, a, f"{cm[a, b]:.2f}", ha="center", va="center", fontsize=7, color="white" if cm[a, b] > 0.6 else "black")
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
        size = 6 if k <= 12 else 4.5
        ax.set_xticklabels([class_names[i] if named else str(i) for i in ticks], rotation=45 if named else 0,
                           ha="right" if named else "center", fontsize=size)
        ax.set_yticklabels([class_names[i] if named else str(i) for i in ticks], fontsize=size)
        ax.set_xlabel("predicted class" + ("" if named else " (index; names in the per-class table)"), fontsize=7)
        ax.set_ylabel("true class", fontsize=7)
        ax.set_title(lab, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def roc_figure(curves: dict[str, list[tuple[str, np.ndarray, np.ndarray, float]]], title: str = ""):
    """ROC curves, one panel per model label (up to 4 per row), each with its legend;
    each entry ``(class, fpr, tpr, auc)``."""
    rows, cols = _panel_grid(len(curves))
    fig = _figure(FULL_WIDTH, rows * FULL_WIDTH / max(cols, 2) * 0.95 + 0.3)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(curves):]:
        ax.set_visible(False)
    for ax, (lab, cs) in zip(axes, curves.items()):
        for i, (cls, fpr, tpr, auc) in enumerate(cs):
            if i < MAX_CURVES:
                ax.plot(fpr, tpr, color=_PALETTE[i % len(_PALETTE)], lw=1.2, label=f"{cls} (AUC {auc:.3f})")
            else:  # many classes: one legend entry for the rest
                ax.plot(fpr, tpr, color="#bbbbbb", lw=0.5, label=f"{len(cs) - MAX_CURVES} more classes" if i == MAX_CURVES else None)
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=0.8, label="chance")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("false positive rate", fontsize=7)
        ax.set_ylabel("true positive rate", fontsize=7)
        ax.set_title(lab, fontsize=8)
        ax.legend(fontsize=6, loc="lower right")
        ax.tick_params(labelsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def roc_curves(sweep, size: int) -> dict[str, list[tuple[str, np.ndarray, np.ndarray, float]]]:
    """ROC curves per model label at one size, predictions pooled over seeds: the positive
    class for a binary study, one-vs-rest per class otherwise."""
    from sklearn.metrics import roc_auc_score, roc_curve

    from lungray.report.load import prediction_matrix
    from lungray.report.tables import counted_runs

    done = counted_runs(sweep)  # the runs every section counts
    n_opt = done["optimizer"].nunique()
    k = len(sweep.class_names)
    out = {}
    for m in sweep.models:
        for o in sweep.optimizers:
            g = done[(done["model"] == m) & (done["optimizer"] == o) & (done["train_size"] == size) & done["counted"]]
            ys, ps = [], []
            for rid in g["run_id"]:
                if rid in sweep.predictions:
                    _, y, p = prediction_matrix(sweep.predictions[rid], sweep.class_names)
                    ys.append(y)
                    ps.append(p)
            if not ys:
                continue
            y, p = np.concatenate(ys), np.concatenate(ps)
            classes = [positive_class(sweep.class_names)] if k == 2 else list(range(k))
            cs = []
            for c in classes:
                yb = y == c
                if yb.all() or not yb.any():
                    continue
                fpr, tpr, _ = roc_curve(yb, p[:, c])
                cs.append((sweep.class_names[c], fpr, tpr, float(roc_auc_score(yb, p[:, c]))))
            out[m if n_opt <= 1 else f"{m} / {o}"] = cs
    return out


def fit_figure(runs: pd.DataFrame, fits: dict, target_accuracies: Sequence[float] = (), labels: Optional[Sequence[str]] = None,
               metric: str = "accuracy"):
    """Error (1 - accuracy, or 1 - ``metric``: Dice...) against size per model: runs as dots, the fitted power law solid
    over the measured sizes and dotted where it extrapolates (to the left of the smallest and
    to the right of the largest size), its bootstrap band, everything clipped to [0, 1], and
    the targets as labelled dashed lines (issue 13.3)."""
    labels = list(labels) if labels else list(fits)
    colors = _colors(labels)
    fig = _figure(FULL_WIDTH, 3.6)
    ax = fig.subplots()
    done = runs[(runs["state"] == "complete") & (runs["counted"].astype(bool) if "counted" in runs else True)]
    sizes = sorted(done["train_size"].dropna().unique())
    nmin, nmax = (min(sizes), max(sizes)) if sizes else (1, 1)
    name = "accuracy" if metric == "accuracy" else METRICS[metric].label
    ymax = float(np.nanmax(1 - done[f"test_{metric}"])) if len(done) else 0.5
    if sizes:
        ax.axvspan(nmin, nmax, color="0.93", lw=0, zorder=0, label=f"measured sizes ({int(nmin):,}-{int(nmax):,})")
    for lab in labels:
        g = done[done["label"] == lab]
        ax.plot(g["train_size"], 1 - g[f"test_{metric}"], "o", color=colors[lab], alpha=0.6, ms=3.5, label=f"{lab}: runs")
        res = fits.get(lab)
        if res is None or not res.fit.ok:
            continue
        grid = res.grid
        pred = np.clip(res.fit.predict(grid), 0.0, 1.0)
        inside = (grid >= nmin) & (grid <= nmax)
        gi = np.r_[nmin, grid[inside], nmax]
        ax.plot(gi, np.clip(res.fit.predict(gi), 0, 1), "-", color=colors[lab], lw=1.5,
                label=f"{lab}: fit {res.fit.a:.2g}·n^-{res.fit.b:.2f} + {res.fit.c:.3f}")
        left, right = grid <= nmin, grid >= nmax
        ax.plot(np.r_[grid[left], nmin], np.r_[pred[left], np.clip(res.fit.predict(nmin), 0, 1)], ":", color=colors[lab], lw=1.3)
        ax.plot(np.r_[nmax, grid[right]], np.r_[np.clip(res.fit.predict(nmax), 0, 1), pred[right]], ":", color=colors[lab], lw=1.3)
        if res.curves.size:
            lo, hi = np.nanquantile(res.curves, [0.025, 0.975], axis=0)
            ax.fill_between(grid, np.clip(lo, 0, 1), np.clip(hi, 0, 1), color=colors[lab], alpha=0.12, lw=0)
    for i, t in enumerate(target_accuracies):
        ax.axhline(1 - t, color="0.35", ls=(0, (5, 2 + 2 * i)), lw=0.9, label=f"target: {t:.0%} {name} (error {1 - t:.2f})")
    tops = [ymax] + [1 - t for t in target_accuracies]
    ax.set_ylim(0.0, min(1.0, max(tops) * 1.25 + 0.02))
    ax.set_xscale("log")
    if sizes:
        ax.set_xlim(nmin / 4, nmax * 8)
    ax.set_xlabel("training images (log scale); solid: measured range, dotted: extrapolation", fontsize=8)
    ax.set_ylabel(f"error = 1 - {name}", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    h, l_ = ax.get_legend_handles_labels()
    if h:
        ax.legend(h, l_, fontsize=6.5, loc="upper right", framealpha=0.9)
    return fig


def class_balance_figure(counts: dict[str, dict[str, int]]):
    """Grouped bars: images per class in each split (eval / val / pool)."""
    splits = list(counts)
    classes = list(dict.fromkeys(c for s in splits for c in counts[s]))
    fig = _figure(FULL_WIDTH, 2.6)
    ax = fig.subplots()
    w = 0.8 / max(1, len(splits))
    for i, s in enumerate(splits):
        ax.bar(np.arange(len(classes)) + i * w - 0.4 + w / 2, [counts[s].get(c, 0) for c in classes], w, label=s, color=_PALETTE[i % 10])
    ticks, named = class_ticks(len(classes))
    ax.set_xticks(ticks)
    ax.set_xticklabels([classes[i] if named else str(i) for i in ticks], fontsize=7)
    ax.set_xlabel("class" if named else "class (index)", fontsize=8)
    ax.set_ylabel("images", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(title="split", fontsize=7, title_fontsize=7)
    return fig


def image_grid_figure(images: Sequence[np.ndarray], titles: Sequence[str], ncols: int = 6, cmap: str = "gray"):
    """A grid of grayscale (or RGB) images with titles (sample images per class), at most
    :data:`MAX_GRID_IMAGES` of them."""
    images, titles = list(images)[:MAX_GRID_IMAGES], list(titles)[:MAX_GRID_IMAGES]
    n = max(1, len(images))
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig = _figure(1.6 * ncols, 1.8 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, im, t in zip(axes, images, titles):
        ax.imshow(im, cmap=None if np.ndim(im) == 3 else cmap)
        ax.set_title(t, fontsize=7)
    return fig
