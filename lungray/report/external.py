"""Report section: the same runs on each external evaluation set (issue 24, point 1).

Why: a model that learned the hospital (its scanner, its markings) scores as well on a held-out
set of its own sources as one that learned the disease; only a source it never saw shows the
difference (Roberts et al. 2021; DeGrave et al. 2021, Nat Mach Intell: internal AUC ~0.99,
external far lower). For every set named in ``data.external`` this section gives what sections
1, 2, 5 and 6 give for the internal set (cell metrics with intervals, learning curves, paired
comparisons, the power-law fit), and the internal-external gap per model and size with an
interval, the runs paired (:func:`lungray.report.stats.set_gap`).

It reads a *view* of the sweep per set (:func:`external_view`): the runs' ``ext.<name>.<key>``
metrics as ``test_<key>`` and that set's ``predictions.ext.<name>.csv`` as the predictions, so
the internal set's code computes every number, with no second implementation to drift.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pandas as pd

from lungray import tracking as T
from lungray.report import html as H
from lungray.report import tables as TB
from lungray.report.load import COMPLETE, Sweep
from lungray.report.stats import set_gap

__all__ = ["external_view", "gap_table", "external_section", "TITLE"]

TITLE = "External evaluation sets"


def external_view(sweep: Sweep, name: str) -> Sweep:
    """``sweep`` as if set ``name`` were its evaluation set: ``ext.<name>.<key>`` metrics as
    ``test_<key>``, that set's predictions, no patient groups (``splits``) and no per-epoch
    history (validation is the internal set's). A complete run without the set's primary
    metric (trained before the set was added, or its scoring failed) is not complete here."""
    prefix = T.ext_key(name, "")
    runs = sweep.runs.drop(columns=[c for c in sweep.runs.columns if str(c).startswith(T.TEST_PREFIX)])
    renamed = {c: T.TEST_PREFIX + c[len(prefix):] for c in runs.columns if str(c).startswith(prefix)}
    runs = runs.rename(columns=renamed)
    runs = runs.drop(columns=[c for c in runs.columns if str(c).startswith(T.EXT_PREFIX)])
    primary = T.TEST_PREFIX + sweep.spec.primary_metric
    if primary in runs.columns:
        runs.loc[(runs["state"] == COMPLETE) & runs[primary].isna(), "state"] = "no external result"
    else:
        runs.loc[runs["state"] == COMPLETE, "state"] = "no external result"
    view = dataclasses.replace(
        sweep, runs=runs.reset_index(drop=True), predictions=dict(sweep.external_predictions.get(name, {})),
        splits=None, histories=sweep.histories.iloc[0:0], notes=[],
    )
    # which runs count is decided on the INTERNAL set (TB.counted_runs' one rule): a run that calls
    # every external image one class has not collapsed as a recipe, it is the shortcut this section
    # looks for, so it stays in every external number (left out, it would hide the drop)
    internal = TB.counted_runs(sweep).set_index("run_id")
    done = view.complete.copy()
    done["degenerate"] = [internal.at[r, "degenerate"] if r in internal.index else "" for r in done["run_id"]]
    done["counted"] = [bool(internal.at[r, "counted"]) if r in internal.index else False for r in done["run_id"]]
    view._lungray_counted = ((id(view.runs), id(view.predictions), len(view.runs)), done)
    return view


def _with_internal_counting(view: Sweep, runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` (:func:`lungray.report.tables.add_derived` of the view) with ``degenerate`` and
    ``counted`` as decided on the internal set (see :func:`external_view`)."""
    done = view._lungray_counted[1].set_index("run_id")
    runs = runs.copy()
    inside = runs["run_id"].isin(done.index)
    runs.loc[inside, "degenerate"] = [done.at[r, "degenerate"] for r in runs.loc[inside, "run_id"]]
    runs.loc[inside, "counted"] = [bool(done.at[r, "counted"]) for r in runs.loc[inside, "run_id"]]
    runs["counted"] = runs["counted"].astype(bool)
    return runs


def gap_table(sweep: Sweep, name: str, metric: str = "accuracy", level: float = 0.95) -> pd.DataFrame:
    """Internal minus external ``metric`` per (model, optimizer, size), runs paired.

    A run counts when it counts internally (:func:`lungray.report.tables.counted_runs`) and has
    predictions on both sets; each run's per-image scores (:func:`lungray.report.tables.per_image_scores`)
    on the images all its cell's runs scored. Columns: ``label, model, optimizer, train_size,
    n_runs, internal, external, gap, gap_low, gap_high, p, n_internal, n_external``.
    """
    cols = ["label", "model", "optimizer", "train_size", "n_runs", "internal", "external", "gap", "gap_low", "gap_high", "p",
            "n_internal", "n_external"]
    done = TB.counted_runs(sweep)
    done = done[done["counted"]] if len(done) else done
    ext = sweep.external_predictions.get(name, {})
    n_opt = sweep.complete["optimizer"].nunique() if len(sweep.complete) else 0
    rows = []
    for (m, o, n), g in done.groupby(["model", "optimizer", "train_size"], sort=True):
        rids = [r for r in g["run_id"] if r in sweep.predictions and r in ext]
        if not rids:
            continue
        a = TB._aligned_scores(rids, sweep.predictions, metric, sweep.class_names)
        b = TB._aligned_scores(rids, ext, metric, sweep.class_names)
        if a is None or b is None:
            continue
        ci = set_gap(a[0], b[0], paired_runs=True, level=level)
        rows.append({"label": m if n_opt <= 1 else f"{m} / {o}", "model": m, "optimizer": o, "train_size": int(n),
                     "n_runs": len(rids), "internal": float(a[0].mean()), "external": float(b[0].mean()),
                     "gap": ci.estimate, "gap_low": ci.low, "gap_high": ci.high, "p": ci.p,
                     "n_internal": a[0].shape[1], "n_external": b[0].shape[1]})
    return pd.DataFrame(rows, columns=cols)


def _sentence(r: Any, name: str, what: str) -> str:
    where = f"At {int(r.train_size)} training images, {r.label}"
    pts = 100 * r.gap
    if not math.isfinite(r.gap_low):
        return f"{where}: {what} {r.internal:.3f} internal vs {r.external:.3f} on {name} (no interval: one run and one image unit)."
    span = f"{100 * r.gap_low:+.1f} to {100 * r.gap_high:+.1f}"
    if r.gap_low > 0:
        verdict = f"scores {pts:.1f} points LOWER on {name} than internally (95% interval {span}, {H.fmt_p_eq(r.p)})"
    elif r.gap_high < 0:
        verdict = f"scores {-pts:.1f} points HIGHER on {name} than internally (95% interval {span}, {H.fmt_p_eq(r.p)})"
    else:
        verdict = f"shows no gap larger than the noise between internal and {name} ({pts:+.1f} points, 95% interval {span})"
    return f"{where} {verdict}."


def _curves_figure(internal: pd.DataFrame, external: pd.DataFrame, labels: list[str], name: str, metrics: list[str]):
    from lungray.report import figures as F

    metrics = [m for m in metrics if m in set(internal["metric"]) | set(external["metric"])]
    fig = F._figure(F.FULL_WIDTH, 2.4)
    axes = fig.subplots(1, max(1, len(metrics)), squeeze=False).ravel()
    colors = F._colors(labels)
    sizes = sorted(set(internal["train_size"]) | set(external["train_size"]))
    for ax, met in zip(axes, metrics):
        for summary, style, tag in ((internal, "o-", "internal"), (external, "s--", name)):
            s = summary[summary["metric"] == met]
            for lab in labels:
                g = s[s["label"] == lab].sort_values("train_size")
                if g.empty:
                    continue
                ax.plot(g["train_size"], g["mean"], style, color=colors[lab], label=f"{lab} · {tag}", lw=1.3, ms=3)
                band = g.dropna(subset=["ci_low", "ci_high"])
                if len(band):
                    ax.fill_between(band["train_size"], band["ci_low"], band["ci_high"], color=colors[lab], alpha=0.12, lw=0)
        F._size_axis(ax, sizes)
        ax.set_title(TB.METRICS[met].label, fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=6, frameon=False)
    return fig


def external_section(b: Any) -> H.Section:
    """The section for builder ``b`` (:class:`lungray.report.build._Builder`): one part per set."""
    sw: Sweep = b.sweep
    names = sw.external_names
    if not names:
        return H.Section("external", TITLE, "", notes=[
            "This sweep has no external evaluation set: every number above is on held-out images of the training "
            "sources, which cannot show a model that learned the source instead of the disease. Add one with "
            "data.external (a held-out site, or another source)."])
    if sw.complete.empty:
        return H.Section("external", TITLE, "", notes=["No trial of this sweep has finished yet; nothing to show."])
    primary = b.primary
    infos = {d.get("name"): d for d in ((sw.data_summary or {}).get("info", {}).get("external") or [])}
    body: list[str] = []
    gaps = []
    for name in names:
        view = external_view(sw, name)
        info = infos.get(name, {})
        what = (f"site {info['site']} of the study's data, held out of every split" if info.get("kind") == "site"
                else f"another source ({info.get('source', '?')})" if info else "")
        counts = ", ".join(f"{c} {k}" for c, k in (info.get("class_counts") or {}).items())
        body.append(f"<h3>{H.esc(name)}</h3>")
        if info:
            out = f"; {info['taken_out_of_study']} image(s) taken out of the study with it" if info.get("taken_out_of_study") else ""
            line = f"{what}: {info.get('n_images', '?')} images ({counts}){out}."
            body.append(f'<p class="intro">{H.esc(line)}</p>')
        if view.complete.empty:
            body.append(H.note(f"No finished trial has a result on {name}."))
            continue
        preds = TB.prediction_arrays(view)
        runs, labels = _view_labels(view, preds)
        summary = TB.summarise(runs, predictions=preds, n_boot=min(b.n_boot, 1000), seed=b.seed, frames=view.predictions)
        b.csv(summary, f"external_{name}_summary.csv")
        body.append(b.fig(_curves_figure(b.summary, summary, labels, name, [primary, "auc"] if primary == "accuracy" else [primary]),
                          f"external_{name}_curves", f"Internal and {name} learning curves",
                          f"Solid: the internal held-out set; dashed: {name}. Mean over seeds with the 95% interval over "
                          "seeds and evaluation images."))
        for met in (*sw.spec.headline_metrics,):
            if met not in TB.METRICS or (summary["metric"] == met).sum() == 0:
                continue
            body.append(f"<h4>{H.esc(TB.METRICS[met].label)} on {H.esc(name)}</h4>")
            body.append(H.study_table_html(TB.study_table_wide(summary, met, labels, sw.sizes)))
        gap = gap_table(sw, name, metric="accuracy" if primary == "accuracy" else primary)
        if not gap.empty:
            gap.insert(0, "set", name)
            gaps.append(gap)
            body.append(f"<h4>Internal minus {H.esc(name)} ({H.esc(TB.METRICS[primary].label.lower())}, runs paired)</h4>")
            body.append('<ul class="sentences">' + "".join(
                f"<li>{H.esc(_sentence(r, name, TB.METRICS[primary].label.lower()))}</li>" for r in gap.itertuples()) + "</ul>")
            shown = gap.assign(gap_ci=[H.fmt_ci(100 * r.gap, 100 * r.gap_low, 100 * r.gap_high, r.n_runs, digits=1)
                                       for r in gap.itertuples()])
            body.append(H.table(shown, ["train_size", "label", "n_runs", "internal", "external", "gap_ci", "p", "n_internal", "n_external"],
                                headers={"train_size": "size", "label": "model", "n_runs": "runs", "gap_ci": "gap (points) [95%]",
                                         "n_internal": "internal images", "n_external": f"{name} images"},
                                formats={"p": H.fmt_p}, text_columns=["label", "gap_ci"]))
        body.append(_paired(b, view, name))
        body.append(_fit(b, view, name, preds))
    if gaps:
        b.csv(pd.concat(gaps, ignore_index=True), "external_gap.csv")
    return H.Section(
        "external", TITLE, "".join(body),
        intro="Every trial's selected model scored on each external set: its metrics with the internal set's intervals "
        "(seeds and evaluation images), the learning curves beside the internal ones (does more data help on a "
        "source the model never saw?), the paired comparisons and the power-law fit on that set, and the gap "
        "internal minus external per model and size. The gap's interval pairs each run's two scores and carries the "
        "run-to-run noise and both sets' image noise (Student-t, Satterthwaite df); external images are resampled by "
        "image. A run counts here exactly when it counts internally: a model that calls every external image one class is the finding, not a collapsed run. A gap clear of zero is the signature of a model that learned its sources rather than the disease "
        "(DeGrave et al. 2021), or of a real shift between populations: the sections on the lungs say which.")


def _view_labels(view: Sweep, preds: dict) -> tuple[pd.DataFrame, list[str]]:
    runs = _with_internal_counting(view, TB.add_derived(view, preds))
    n_opt = runs["optimizer"].nunique() if not runs.empty else 0
    runs["label"] = [m if n_opt <= 1 else f"{m} / {o}" for m, o in zip(runs["model"], runs["optimizer"])]
    labels = [m if n_opt <= 1 else f"{m} / {o}" for m in view.models for o in view.optimizers]
    return runs, [lab for lab in labels if lab in set(runs["label"])]


def _paired(b: Any, view: Sweep, name: str) -> str:
    try:
        pc = TB.paired_comparisons(view, metric=b.primary)
    except Exception as e:  # noqa: BLE001 - said in the page; the rest of the section stands
        return H.note(f"Paired comparisons on {name} could not be computed: {type(e).__name__}: {H.first_line(e)}", "error")
    if pc.empty:
        return ""
    b.csv(pc, f"external_{name}_paired.csv")
    items = "".join(f"<li>{H.esc(r.sentence + ('' if r.significant else '  (within noise)'))}</li>" for r in pc.itertuples())
    return (f"<h4>Paired comparisons on {H.esc(name)}</h4>"
            '<p class="muted">The same test and Holm family rule as the internal comparisons, on this set\'s images.</p>'
            f'<ul class="sentences">{items}</ul>')


def _fit(b: Any, view: Sweep, name: str, preds: dict) -> str:
    if len(view.sizes) < 3:
        return H.note(f"No learning-curve fit on {name}: it needs at least 3 training sizes (this sweep has {len(view.sizes)}).")
    try:
        tab, _ = TB.learning_curve_fits(view, target_accuracies=b.targets, n_boot=min(b.n_boot, 400), seed=b.seed,
                                        predictions=preds, metric=b.primary, frames=view.predictions)
    except Exception as e:  # noqa: BLE001 - said in the page; the rest of the section stands
        return H.note(f"The learning-curve fit on {name} could not be computed: {type(e).__name__}: {H.first_line(e)}", "error")
    if tab.empty:
        return ""
    b.csv(tab, f"external_{name}_power_law.csv")
    shown = tab.assign(
        a_=[H.fmt_ci(r.a, r.a_low, r.a_high, digits=3) for r in tab.itertuples()],
        b_=[H.fmt_ci(r.b, r.b_low, r.b_high, digits=3) for r in tab.itertuples()],
        c_=[H.fmt_ci(r.c, r.c_low, r.c_high, digits=3) for r in tab.itertuples()],
        verdict=[("reliable" if r.reliable else "UNRELIABLE: " + r.flags) for r in tab.itertuples()],
    )
    return (f"<h4>Learning-curve fit on {H.esc(name)}</h4>"
            + H.table(shown, ["label", "n_sizes", "a_", "b_", "c_", "r2", "verdict"],
                      headers={"label": "model", "n_sizes": "sizes", "a_": "a", "b_": "b", "c_": "c (floor)", "r2": "R²"},
                      text_columns=["label", "a_", "b_", "c_", "verdict"]))
