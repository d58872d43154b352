"""External evaluation sets (issue 24, point 1): a site held out of every split, or another source.

Why: an internal held-out set shares its sources with the training images, so a model that
learned the hospital (its scanner's contrast, its burned-in markers) scores as well on it as one
that learned the disease. Roberts et al. (2021) and DeGrave et al. (2021, Nat Mach Intell) found
the COVID-19 radiograph models of 2020 near AUC 0.99 internally and far lower on a source they
had not seen. lungray scores every trial's model on each named set, so the report can show the
internal-external gap per training size with an interval.

Two kinds (:class:`lungray.config.ExternalSetConfig`):

* ``hold_out_site``: :func:`hold_out_sites` takes a site's rows out of the study's data BEFORE
  the split, and with them every other row that shares a patient or a duplicate cluster with
  one of them (else a follow-up film or an augmented copy of an external image would train);
* ``source``: :func:`prepare_source_set` decodes another adapter's dataset with the study's decode
  settings (resolution, resize, preprocessing, dtype; each variant's preprocessing too) and maps
  its classes onto the study's.

Every refusal is one line naming the set, raised while the data is prepared, before Ray starts.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd

from lungray.data.prepared import ExternalSet, PreparedData
from lungray.errors import DataError

__all__ = ["hold_out_sites", "prepare_source_set", "check_external_counts"]

log = logging.getLogger(__name__)


def hold_out_sites(
    site_col: Sequence[str], groups: Optional[np.ndarray], sets: Sequence[Any], source: str
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``({name: rows of the held-out site}, rows taken out of the study)`` for the ``hold_out_site`` sets.

    The rows taken out are each held-out site's rows plus every row in a split group (patient or
    duplicate cluster, ``groups``) that touches one of them: those stay out of the pool, the
    validation and the internal evaluation set alike, and are in no external set either (they
    belong to another site).

    >>> rows, out = hold_out_sites(["a", "b", "b", "a"], np.array([0, 1, 0, 2]), [type("E", (), {"name": "B", "hold_out_site": "b"})()], "csv")
    >>> rows["B"].tolist(), out.tolist()
    ([1, 2], [0, 1, 2])
    """
    site_col = np.asarray(site_col, dtype=object)
    present = [s for s in dict.fromkeys(site_col.tolist()) if s != ""]
    held: dict[str, np.ndarray] = {}
    for e in sets:
        if not present:
            raise DataError(
                f"data.external '{e.name}': hold_out_site '{e.hold_out_site}' needs each image's site, and {source} data has "
                "none (the phantom has sites; a CSV needs a site column); use a source set instead"
            )
        rows = np.flatnonzero(site_col == e.hold_out_site)
        if len(rows) == 0:
            raise DataError(
                f"data.external '{e.name}': site '{e.hold_out_site}' has no usable image in {source} data; "
                f"sites present: {', '.join(sorted(map(str, present)))}"
            )
        held[e.name] = rows
    out = np.unique(np.concatenate(list(held.values()))) if held else np.zeros(0, dtype=np.int64)
    if groups is not None and len(out):
        g = np.asarray(groups)
        out = np.flatnonzero(np.isin(g, g[out]))
    return held, out.astype(np.int64)


def check_external_counts(name: str, labels: np.ndarray, class_names: Sequence[str], min_per_class: int) -> list[str]:
    """Refusal lines for an external set: empty, or a class it holds with fewer than
    ``data.min_eval_per_class`` images (an accuracy on fewer has a 95 % interval wider than
    +-0.3). A class it does not hold at all is allowed (a single-hospital COVID-only set is a
    real external set: its accuracy is a sensitivity) and said in ``info``."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
    if counts.sum() == 0:
        return [f"data.external '{name}' has no usable image"]
    low = [f"{c} {int(k)}" for c, k in zip(class_names, counts) if 0 < k < min_per_class]
    if low:
        return [f"data.external '{name}' holds too few images of a class to score ({', '.join(low)}; "
                f"data.min_eval_per_class is {min_per_class})"]
    return []


def prepare_source_set(
    e: Any,
    base_cfg: Any,
    class_names: Sequence[str],
    cache_dir: Path,
    *,
    preprocess_variants: Sequence[str] = (),
    progress: bool = True,
    parallel: Optional[bool] = None,
    echo: Optional[Callable[[str], Any]] = None,
) -> ExternalSet:
    """Decode another source (``e.source``) into its own cache with the study's decode settings;
    every usable image is the set. Its class names (after ``e.class_map``) must be among the
    study's ``class_names``; labels are stored as the study's class indices."""
    from lungray.data.cache import build_cache, load_quarantined
    from lungray.data.check import check_dataset, quarantine_report

    say = echo or (lambda s: log.info("%s", s))
    cfg = e.data_config(base_cfg)
    say(f"external set '{e.name}': preparing {cfg.source} data ...")
    report = check_dataset(cfg, sizes=(), strict=bool(cfg.strict), echo=say, name_files=False)
    # one class is a valid external set (a COVID-only hospital: its accuracy is a sensitivity); the
    # check's "a classifier needs at least two" is about training, which never happens here
    problems = [p for p in report.dataset_problems if not p.startswith("fewer than 2 classes with usable images")]
    if problems:
        raise DataError(f"data.external '{e.name}' ({cfg.source}) cannot be used: " + "; ".join(problems))
    root = build_cache(report.manifest, cfg, cache_dir, progress=progress, parallel=parallel)
    import json

    meta = json.loads((root / "meta.json").read_text())
    quarantine_report(load_quarantined(root), report, int(meta["n_images"]), say, cfg=cfg, name_files=False)
    own = tuple(meta["class_names"])
    unknown = [c for c in own if c not in class_names]
    if unknown:
        raise DataError(
            f"data.external '{e.name}': class(es) {', '.join(repr(c) for c in unknown)} are not classes of the study "
            f"({', '.join(class_names)}); map or drop them with data.external[...].class_map"
        )
    remap = None if own == tuple(class_names) else np.array([list(class_names).index(c) for c in own], dtype=np.int64)
    roots: dict[str, str] = {}
    base_ids = pd.read_parquet(root / "manifest.parquet", columns=["image_id"])["image_id"].to_numpy()
    for name in dict.fromkeys(p for p in preprocess_variants if p and p != cfg.preprocess):
        vroot = build_cache(report.manifest, dataclasses.replace(cfg, preprocess=name), cache_dir, progress=progress, parallel=parallel)
        ids = pd.read_parquet(vroot / "manifest.parquet", columns=["image_id"])["image_id"].to_numpy()
        if len(ids) != len(base_ids) or (ids != base_ids).any():
            raise DataError(
                f"data.external '{e.name}': preprocessing '{name}' left other images usable than '{cfg.preprocess}' "
                f"({len(ids)} vs {len(base_ids)}); the variants would be scored on different images"
            )
        roots[name] = str(vroot)
    if roots:
        roots[cfg.preprocess] = str(root)
    n = int(meta["n_images"])
    idx = np.arange(n, dtype=np.int64)
    data = PreparedData(
        root=str(root), class_names=tuple(class_names), eval_idx=idx, val_idx=np.zeros(0, dtype=np.int64),
        pool_idx=np.zeros(0, dtype=np.int64), fingerprint=meta["key"], info={"source": cfg.source, "preprocessing": cfg.preprocess},
        variant_roots=roots, label_remap=remap,
    )
    problems = check_external_counts(e.name, data.labels, class_names, int(base_cfg.min_eval_per_class))
    if problems:
        raise DataError("; ".join(problems))
    info = {"name": e.name, "kind": "source", "source": cfg.source, "n_images": n, "fingerprint": meta["key"],
            "class_counts": _counts(data.labels, class_names)}
    return ExternalSet(name=e.name, kind="source", idx=idx, data=data, info=info)


def _counts(labels: np.ndarray, class_names: Sequence[str]) -> dict[str, int]:
    k = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
    return {c: int(v) for c, v in zip(class_names, k)}


def site_set(name: str, site: str, rows: np.ndarray, labels: np.ndarray, class_names: Sequence[str], n_excluded: int) -> ExternalSet:
    """The :class:`ExternalSet` of a held-out site (rows of the study's own cache)."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    info = {"name": name, "kind": "site", "site": site, "n_images": int(len(rows)),
            "class_counts": _counts(labels[rows], class_names), "taken_out_of_study": int(n_excluded)}
    return ExternalSet(name=name, kind="site", idx=rows, data=None, info=info)
