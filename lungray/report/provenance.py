"""Section 9 of the report, data and provenance: what was trained on, how it was split, what the
leakage audit found, and where every number came from (versions, fingerprints, directories).

Called by :mod:`lungray.report.build` with its section builder ``b`` (``b.sweep``, ``b.fig``,
``b.csv``).
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd

from lungray import tracking as T
from lungray.redact import redact
from lungray.report import figures as F
from lungray.report import html as H
from lungray.report.load import safe_uri

__all__ = ["provenance_section", "leakage_html", "pair_figure", "subsets_table"]


def leakage_section(b) -> str:
    """The leakage audit, example pairs drawn from the prepared images when they are reachable."""
    root = b.sweep.parent_tags.get(T.DATA_ROOT, "")

    def thumbs(examples: list[dict]) -> str:
        if not root or not (Path(root) / "images.npy").exists():
            return ""
        images = np.load(Path(root) / "images.npy", mmap_mode="r")
        if any(max(int(e["row_a"]), int(e["row_b"])) >= len(images) for e in examples):
            return ""
        full = float(np.iinfo(images.dtype).max) if np.issubdtype(images.dtype, np.integer) else 1.0
        return b.fig(pair_figure(images, full, examples), "duplicate_pairs", "Example duplicate pairs",
                         "Example duplicate pairs: each column is one pair (top image, bottom copy) with the split and "
                         "the label of each image and the stage that found it; a pair whose images carry different "
                         "labels is marked in red (a label conflict or a false pair of the audit: not used to group "
                         "the split).")

    return leakage_html(b.sweep.leakage, thumbs)

def provenance_section(b) -> H.Section:
    """Section 9: class counts and balance, dataset summary, preprocessing, nested subsets, the
    leakage audit, provenance, failed and incomplete trials, the resolved config."""
    from lungray import __version__

    sw = b.sweep
    body = []
    ds = sw.data_summary or {}
    counts = ds.get("class_counts")
    if counts:
        df = pd.DataFrame(counts).T
        df.index.name = "split"
        df = df.reset_index()
        df["total"] = df[[c for c in df.columns if c != "split"]].sum(axis=1)
        b.csv(df, "class_counts.csv")
        body.append("<h3>Class counts per split</h3>" + H.table(df, text_columns=["split"]))
        body.append(b.fig(F.class_balance_figure(counts), "class_balance", "Class balance per split"))
    extra = {k: v for k, v in ds.items() if k not in ("class_counts", "info")}
    same = {"preprocessing": "preprocess"}  # the data layer's name for a key the summary already has
    for k, v in (ds.get("info") or {}).items():  # each key once: the summary's own value wins
        if k not in ("class_counts", "leakage") and same.get(k, k) not in extra:
            extra[k] = v
    if extra:
        body.append("<h3>Dataset summary</h3>" + H.kv({k: short_value(v) for k, v in extra.items()}))
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
            "eval_size / val_size": f"{cfg.data.eval_size} / {cfg.data.val_size} (split seed {cfg.data.split_seed})"
            + ("; the validation set IS the evaluation set (val_is_eval, as published)" if cfg.data.val_is_eval else ""),
            "training sizes": ", ".join(map(str, cfg.sizes)),
            "class-balanced subsets": cfg.data.class_balanced,
            "leakage policy": f"{cfg.data.leakage} (Hamming distance <= {cfg.data.leakage_max_distance})",
        }))
    sub = subsets_table(sw.splits)
    if not sub.empty:
        b.csv(sub, "subsets.csv")
        body.append("<h3>Training subsets</h3>" + H.table(
            sub, headers={"train_size": "size", "n_images": "images", "nested_in_next": "inside the next size's subset",
                          "in_eval": "images also in the evaluation set"}, text_columns=["nested_in_next"]))
    body.append("<h3>Leakage audit</h3>" + leakage_section(b))
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
    b.csv(failed[["trial_id", "model", "train_size", "optimizer", "seed", "status", "error", "run_id"]], "failed_trials.csv")
    body.append(f"<h3>Failed trials ({len(failed)})</h3>")
    body.append(H.table(failed, ["model", "train_size", "optimizer", "seed", "status", "error", "run_id"],
                        headers={"train_size": "size"}, text_columns=["model", "optimizer", "status", "error", "run_id"]))
    missing = sw.missing
    b.csv(missing, "missing_trials.csv")
    body.append(f"<h3>Trials not complete ({len(missing)})</h3>")
    body.append(H.table(missing, ["model", "train_size", "optimizer", "seed", "state", "error"],
                        headers={"train_size": "size"}, text_columns=["model", "optimizer", "state", "error"]))
    if sw.config_text:
        body.append(f"<h3>Resolved config</h3><pre>{H.esc(redact(sw.config_text))}</pre>")
    return H.Section("provenance", "Data and provenance", "".join(body))


def subsets_table(splits: Optional[dict]) -> pd.DataFrame:
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


def short_value(v, limit: int = 300) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return s if len(s) <= limit else s[:limit] + f"... ({len(s)} characters)"


_PAIR_STAGES = (
    ("sha256", "exact", "identical bytes (sha256)"),
    ("phash", "near", "perceptual hash: resized, re-encoded, flipped, quarter-turned"),
    ("keypoints", "near", "keypoints + affine RANSAC + photometric check: rotated, zoomed, shifted, flipped"),
)


def leakage_html(leak: Optional[dict], thumbs: Optional[Callable[[list[dict]], str]] = None) -> str:
    """The leakage audit as a reader wants it (issue 13.5): the policy and how the split was
    grouped in words, pairs per kind and stage (in the dataset and across splits), the duplicate
    clusters, what was dropped, and a few example pairs (thumbnails when ``thumbs`` can draw
    them, else a table). ``leak`` is the logged payload: ``{"summary": ..., "audit": ...}``
    (:func:`lungray.sweep.payloads.leakage_payload`; the audit is
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


def pair_figure(images: np.ndarray, max_value: float, examples: list[dict]):
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
