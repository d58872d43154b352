"""Report section: the same study as published and corrected, and what the protocol inflated (issue 24, point 5).

Why: the COVID-19 imaging papers split by image with augmented copies on both sides, stopped
early on their test set and ran one seed (PROTOCOLS.md sections 1 and 5; Roberts et al. 2021,
Nat Mach Intell). Their numbers cannot be compared with a corrected run by eye: the two protocols
score different test sets, and the published arm has one run. This section puts both arms of one
invocation (:mod:`lungray.sweep.protocols`: parent runs tagged with a shared
:data:`lungray.tracking.PROTOCOL_GROUP`) side by side and gives the inflation, as-published minus
corrected, per model and size, with an interval over both arms' runs and both test sets' images
(:func:`lungray.report.stats.set_gap`, runs independent, the single published run borrowing the
corrected arm's run-to-run variance).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import pandas as pd

from lungray import tracking as T
from lungray.report import html as H
from lungray.report import tables as TB
from lungray.report.load import Sweep, load_sweep
from lungray.report.stats import set_gap

__all__ = ["sibling_arm", "inflation_table", "inflation_section", "TITLE"]

TITLE = "As published vs corrected"


def sibling_arm(sweep: Sweep) -> Optional[str]:
    """The parent run id of the other protocol arm of ``sweep``'s group (the newest), or None."""
    group, mine = sweep.parent_tags.get(T.PROTOCOL_GROUP), sweep.parent_tags.get(T.PROTOCOL)
    if not group:
        return None
    c = sweep.client()
    runs = c.search_runs([sweep.experiment_id], f"tags.`{T.PROTOCOL_GROUP}` = '{group}' and tags.`{T.ROLE}` = '{T.ROLE_SWEEP}'",
                         order_by=["attributes.start_time DESC"])
    for r in runs:
        if r.info.run_id != sweep.parent_id and r.data.tags.get(T.PROTOCOL) != mine:
            return r.info.run_id
    return None


def inflation_table(published: Sweep, corrected: Sweep, metric: str = "accuracy", level: float = 0.95) -> pd.DataFrame:
    """As-published minus corrected ``metric`` per (model, optimizer, size) both arms ran.

    Each arm's counted runs (:func:`lungray.report.tables.counted_runs`) and their per-image
    scores (:func:`lungray.report.tables.per_image_scores`) on that arm's own test set; the two
    arms' runs and images are independent. Columns: ``model, optimizer, train_size, published,
    corrected, inflation, low, high, p, runs_published, runs_corrected, images_published, images_corrected``.
    """
    cols = ["model", "optimizer", "train_size", "published", "corrected", "inflation", "low", "high", "p",
            "runs_published", "runs_corrected", "images_published", "images_corrected"]
    rows = []
    arms = []
    for sw in (published, corrected):
        done = TB.counted_runs(sw)
        arms.append(done[done["counted"]] if len(done) else done)
    pub, cor = arms
    for (m, o, n), g in pub.groupby(["model", "optimizer", "train_size"], sort=True):
        h = cor[(cor["model"] == m) & (cor["optimizer"] == o) & (cor["train_size"] == n)]
        a = TB._aligned_scores([r for r in g["run_id"] if r in published.predictions], published.predictions, metric, published.class_names)
        b = TB._aligned_scores([r for r in h["run_id"] if r in corrected.predictions], corrected.predictions, metric, corrected.class_names)
        if a is None or b is None:
            continue
        ci = set_gap(a[0], b[0], paired_runs=False, level=level)
        rows.append({"model": m, "optimizer": o, "train_size": int(n), "published": float(a[0].mean()), "corrected": float(b[0].mean()),
                     "inflation": ci.estimate, "low": ci.low, "high": ci.high, "p": ci.p,
                     "runs_published": a[0].shape[0], "runs_corrected": b[0].shape[0],
                     "images_published": a[0].shape[1], "images_corrected": b[0].shape[1]})
    return pd.DataFrame(rows, columns=cols)


def _sentence(r: Any, what: str) -> str:
    head = f"At {int(r.train_size)} training images, {r.model}: {what} {r.published:.3f} as published vs {r.corrected:.3f} corrected"
    if not math.isfinite(r.low):
        return f"{head} (no interval)."
    span = f"95% interval {100 * r.low:+.1f} to {100 * r.high:+.1f} points, {H.fmt_p_eq(r.p)}"
    if r.low > 0:
        return f"{head}: the published protocol INFLATES it by {100 * r.inflation:.1f} points ({span})."
    if r.high < 0:
        return f"{head}: the published protocol scores {-100 * r.inflation:.1f} points LOWER ({span})."
    return f"{head}: no inflation larger than the noise ({100 * r.inflation:+.1f} points, {span})."


def inflation_section(b: Any) -> H.Section:
    """The section for builder ``b``: this arm and its sibling, whichever is which."""
    sw: Sweep = b.sweep
    mine = sw.parent_tags.get(T.PROTOCOL)
    sid = sibling_arm(sw)
    if sid is None:
        return H.Section("protocols", TITLE, "", notes=[
            f"This sweep is the {mine} arm of a protocol comparison, but the other arm is not in this experiment (yet): "
            "run the study with protocols: [corrected, as_published] to see the inflation."])
    other = load_sweep(sw.tracking_uri, parent_run_id=sid, histories=False)
    published, corrected = (sw, other) if mine == "as_published" else (other, sw)
    metric = "accuracy" if b.primary == "accuracy" else b.primary
    tab = inflation_table(published, corrected, metric)
    b.csv(tab, "inflation.csv")
    what = TB.METRICS[metric].label.lower()
    leak = ((published.leakage or {}).get("summary") or {})
    crossing = leak.get("cross_split_pairs")
    body = []
    facts = [f"as published: sweep {published.parent_id} ({published.study}), one seed, image-level split, the test set is also "
             f"the early-stopping set" + (f"; {crossing} duplicate pair(s) of the audit cross its split" if crossing is not None else ""),
             f"corrected: sweep {corrected.parent_id} ({corrected.study}), seeds {', '.join(map(str, corrected.seeds))}, split by patient "
             "and duplicate cluster, copies of held-out images dropped from training, a separate validation set"]
    body.append('<ul class="sentences">' + "".join(f"<li>{H.esc(f)}</li>" for f in facts) + "</ul>")
    if tab.empty:
        body.append(H.note("No model and size finished in both arms yet."))
    else:
        body.append('<ul class="sentences">' + "".join(f"<li>{H.esc(_sentence(r, what))}</li>" for r in tab.itertuples()) + "</ul>")
        shown = tab.assign(infl=[H.fmt_ci(100 * r.inflation, 100 * r.low, 100 * r.high, digits=1) for r in tab.itertuples()])
        body.append(H.table(shown, ["train_size", "model", "published", "corrected", "infl", "p", "runs_published", "runs_corrected",
                                    "images_published", "images_corrected"],
                            headers={"train_size": "size", "infl": "inflation (points) [95%]", "runs_published": "runs (published)",
                                     "runs_corrected": "runs (corrected)", "images_published": "test images (published)",
                                     "images_corrected": "test images (corrected)"},
                            formats={"p": H.fmt_p}, text_columns=["model", "infl"]))
    return H.Section(
        "protocols", TITLE, "".join(body),
        intro=f"The same study on the same data under two protocols: as its paper ran it and as lungray runs it. Inflation = "
        f"{what} as published minus corrected. The two arms score different test sets with independent runs: the interval "
        "carries both arms' run-to-run noise (the single published run borrows the corrected arm's seed variance) and both "
        "test sets' image noise (Student-t, Satterthwaite df). A positive inflation clear of zero is what the published "
        "protocol added to the number a paper would have printed.")
