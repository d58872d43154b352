"""``prepare_data``: from a dataset config to a validated, de-duplicated, cached, split dataset.

The steps, each of which can stop the study *before* anything trains:

1. the adapter builds the manifest (:mod:`lungray.data.adapters`);
2. :func:`~lungray.data.check.check_dataset` quarantines bad rows (``data.strict`` fails);
3. :func:`~lungray.data.cache.build_cache` decodes the good rows once (Ray tasks for large
   datasets, a progress bar, reused on the next run); decode failures are quarantined too;
4. the duplicate search over the whole dataset (:func:`~lungray.data.duplicates.find_dataset_duplicates`,
   stored in the cache as ``duplicates-<key>.parquet``): exact copies (sha256), near copies by
   perceptual hash and by keypoints with geometric and photometric verification, burned-in
   annotations masked (:mod:`lungray.data.leakage`, :mod:`lungray.data.keypoints`,
   :mod:`lungray.data.burnin`). The public Kaggle sets hold re-encoded, flipped, rotated,
   zoomed and shifted copies (PROTOCOLS.md section 1). Duplicate clusters (union-find over the
   pairs whose images share a label) are merged with patient ids into the split *groups*
   (:mod:`lungray.data.split_plan`); a pair across labels is a label conflict or a false pair,
   printed as a warning and never a grouping edge;
5. the fixed held-out evaluation set, the validation set and the training pool
   (:func:`lungray.data.splits.split_holdout`: stratified, group-disjoint, seeded by
   ``data.split_seed`` so every seed of the study shares one test set). Because clusters are
   groups, no found copy straddles pool/val/eval, and the nested subsets keep a cluster
   together. A source with predefined splits for every row (MedMNIST, a CSV ``split`` column, a
   ``train/val/test`` folder tree) keeps them (``test`` is the evaluation set); there copies can
   cross the source's own split, and ``data.leakage: drop`` (the default) drops pool images
   with a copy in val or eval and val images with a copy in eval; ``report`` only records
   them. For holdout splits the audit of pool/val/eval then finds nothing to drop by
   construction. ``off`` skips the search: patient groups only, as before the audit;
6. the refusals (:mod:`lungray.data.guards`, issue 18): a duplicate cluster too large to be
   copies of one film, or joining many patients, and an evaluation / validation set that would
   lose a class or hold fewer than ``data.min_eval_per_class`` / ``data.min_val_per_class``
   images of one, stop here with one line naming the cause;
7. every requested training size is checked against the pool for every seed
   (:func:`lungray.data.splits.nested_subsets` raises with the pool per class).

Outputs next to the cache: ``splits-<key>.json`` (eval/val/pool/dropped rows) and
``leakage-<key>.json`` (counts and example pairs); both are reused when the same split settings
come again. The returned :class:`~lungray.data.prepared.PreparedData` holds index arrays and the
cache path, nothing else, so it is cheap to ship to every trial.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd

from lungray.data.duplicates import find_dataset_duplicates
from lungray.data.prepared import PreparedData
from lungray.data.split_plan import groups_of, make_splits, split_groups
from lungray.errors import DataError

__all__ = ["prepare_data", "validate_sizes", "find_dataset_duplicates", "groups_of", "make_splits"]

log = logging.getLogger(__name__)


def _split_key(cache_key: str, cfg: Any) -> str:
    from lungray.data.leakage import AUDIT_VERSION

    parts = [cache_key, AUDIT_VERSION, cfg.eval_size, cfg.val_size, cfg.split_seed, cfg.leakage, cfg.leakage_max_distance]
    held = sorted(e.hold_out_site for e in getattr(cfg, "external", ()) if e.hold_out_site is not None)
    if held or getattr(cfg, "split_unit", "group") != "group":  # keys of earlier splits stay as they were
        parts += [held, cfg.split_unit]
    s = json.dumps(parts)
    return hashlib.sha256(s.encode()).hexdigest()[:12]


def _audit_line(pairs: pd.DataFrame, n: int, patients: Optional[np.ndarray], suspects: Any) -> str:
    """One console line: what the duplicate search found (each stage, clusters, pairs across patients and labels)."""
    from lungray.data.leakage import cluster_summary

    by = {k: int((pairs["stage"] == k).sum()) for k in ("sha256", "phash", "keypoints")}
    cl = cluster_summary(pairs, n)
    across = 0
    if patients is not None and len(pairs):
        a, b = patients[pairs["row_a"].to_numpy()], patients[pairs["row_b"].to_numpy()]
        across = int((a != b).sum())
    return (f"leakage audit: {by['sha256']} exact and {by['phash'] + by['keypoints']} near-duplicate pair(s) "
            f"({by['phash']} by perceptual hash, {by['keypoints']} by keypoints); {cl['n_clusters']} cluster(s), the largest "
            f"{cl['largest']}; {across} pair(s) across patients, {0 if suspects is None else len(suspects)} across labels")


def _grouping_note(source: str, patient_grouped: bool, how: str, mode: str) -> str:
    """One sentence for the report: what keeps copies and patients on one side of the split."""
    if how == "predefined":
        return (f"the source's own train/val/test split (predefined), kept as it is; duplicate clusters cannot regroup it, "
                f"so copies across it are {'dropped from the training side' if mode == 'drop' else 'only reported'}")
    if mode == "off":
        return "grouped by patient id (leakage audit off)" if patient_grouped else "image-level split (no patient ids; leakage audit off)"
    if patient_grouped:
        return "grouped by patient id and by the audit's duplicate clusters"
    return (f"image-level split: {source} has no patient ids, so the split is grouped only by the audit's duplicate "
            "clusters (two films of one patient can still land on both sides)")


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_json_default))
    tmp.replace(path)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, pd.DataFrame):
        return o.to_dict(orient="records")
    return str(o)


def _ints(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.int64).reshape(-1)


def prepare_data(
    cfg: Any,
    *,
    output_dir: str | Path,
    sizes: Sequence[int] = (),
    seeds: Sequence[int] = (),
    progress: bool = True,
    parallel: Optional[bool] = None,
    echo: Optional[Callable[[str], Any]] = None,
    preprocess_variants: Sequence[str] = (),
) -> PreparedData:
    """Prepare ``cfg`` (a :class:`~lungray.config.DataConfig`) for training; see the module doc.

    ``sizes``/``seeds`` are the study's training sizes and seeds: every (size, seed) subset is
    drawn once here so an impossible size fails now, with the pool per class in the message.
    ``parallel`` forces (``True``) or forbids (``False``) Ray decoding; ``None`` decides by size.
    ``echo`` receives the check's problem lines (default: the ``lungray.data`` logger).
    ``preprocess_variants`` are further preprocessings (the study's ``variants``): each is
    decoded into its own cache with the same rows, and the splits, subsets and leakage audit
    are those of ``cfg.preprocess``, so the variants' results are paired
    (:meth:`PreparedData.for_preprocess`).
    """
    from lungray.data.cache import build_cache
    from lungray.data.check import check_dataset

    say = echo or (lambda s: log.info("%s", s))
    output_dir = Path(output_dir)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else output_dir / "cache"

    # the sweep's console, MLflow and the report name images by hashed id only (issue 23, point 6)
    report = check_dataset(cfg, sizes=(), strict=bool(cfg.strict), echo=say, name_files=False)
    if report.dataset_problems:  # e.g. an empty class: fail before decoding anything
        raise DataError(f"{cfg.source} data cannot be used: " + "; ".join(report.dataset_problems))
    manifest = report.manifest
    root = build_cache(manifest, cfg, cache_dir, progress=progress, parallel=parallel)

    meta = json.loads((root / "meta.json").read_text())
    class_names = tuple(meta["class_names"])
    cached = pd.read_parquet(root / "manifest.parquet")
    from lungray.data.cache import load_quarantined

    quarantined = load_quarantined(root)
    from lungray.data.check import quarantine_report

    quarantine_report(quarantined, report, int(meta["n_images"]), say, cfg=cfg, name_files=False)  # always shown
    if cfg.strict and len(quarantined):
        first = "; ".join(f"{r.image_id}: {r.problem}" for r in quarantined.head(3).itertuples())
        raise DataError(f"data check failed (strict): {len(quarantined)} image(s) could not be used: {first}")
    labels = np.load(root / "labels.npy")
    counts = np.bincount(labels, minlength=len(class_names))
    empty = [c for c, k in zip(class_names, counts) if k == 0]
    if empty:
        raise DataError(
            f"class(es) {', '.join(repr(c) for c in empty)} have no usable images in {cfg.source} data "
            f"(per class: {dict(zip(class_names, map(int, counts)))}); fix the data or drop them with data.class_map"
        )
    pairs = None
    if cfg.leakage != "off":
        pairs = find_dataset_duplicates(root, int(cfg.leakage_max_distance), progress=progress)
    # patients + the audit's same-label duplicate clusters; pairs across labels are set aside
    groups, patients, edges, suspects = split_groups(labels, cached["patient_id"].to_numpy(), pairs)
    patient_grouped = patients is not None
    from lungray.data.guards import cluster_problems, split_problems, suspect_line

    refusals = cluster_problems(edges, len(labels), labels, class_names, cfg, patients)
    if pairs is not None:
        say(_audit_line(pairs, len(labels), patients, suspects))
    note = suspect_line(suspects, labels, class_names, cached["image_id"].to_numpy())
    if note:
        say(note)

    # external sets (issue 24, point 1): a held-out site leaves the study, with every row sharing a
    # patient or a duplicate cluster with it, before anything is split
    site_col = cached["site"].astype(str).to_numpy() if "site" in cached.columns else np.full(len(labels), "", dtype=object)
    held_sets = [e for e in cfg.external if e.hold_out_site is not None]
    held_rows, taken_out = {}, np.zeros(0, dtype=np.int64)
    if held_sets:
        from lungray.data.external import hold_out_sites

        held_rows, taken_out = hold_out_sites(site_col, groups, held_sets, cfg.source)
    split_groups_ = None if cfg.split_unit == "image" else groups  # "image": the papers' split (point 5)

    skey = _split_key(meta["key"], cfg)
    splits_path = root / f"splits-{skey}.json"
    leak_path = root / f"leakage-{skey}.json"
    if splits_path.is_file() and (leak_path.is_file() or cfg.leakage == "off"):
        sp = json.loads(splits_path.read_text())
        eval_idx, val_idx, pool_idx = _ints(sp["eval"]), _ints(sp["val"]), _ints(sp["pool"])
        dropped = _ints(sp["dropped"])
        how = sp["how"]
        leak_summary = sp.get("leakage_summary", {})
    else:
        keep = np.setdiff1d(np.arange(len(labels)), taken_out)
        ev, va, po, how = make_splits(labels[keep], split_groups_[keep] if split_groups_ is not None else None,
                                      cached["split"].to_numpy()[keep], cfg)
        eval_idx, val_idx, pool_idx = keep[ev], keep[va], keep[po]
        dropped = np.zeros(0, dtype=np.int64)
        leak_summary: dict[str, Any] = {"mode": "off", "grouping": _grouping_note(cfg.source, patient_grouped, how, "off")}
        if pairs is not None:
            from lungray.data.leakage import cross_split_pairs, leakage_doc

            splits = {"pool": pool_idx, "val": val_idx, "eval": eval_idx}
            cross = cross_split_pairs(pairs, splits)
            # the training side of each crossing pair: pool rows with a copy in val/eval, val rows with one in eval
            flagged: dict[str, set] = {"pool": set(), "val": set()}
            members = {k: set(v.tolist()) for k, v in splits.items()}
            for r in cross.itertuples():
                side = "pool" if r.splits.startswith("pool") else "val"
                flagged[side] |= {x for x in (int(r.row_a), int(r.row_b)) if x in members[side]}
            doc = leakage_doc(pairs, len(labels), splits, ids=cached["image_id"].to_numpy(), labels=labels,
                              class_names=class_names, patients=patients)
            stage = doc["pairs_by_stage"]
            leak_summary = {
                "mode": cfg.leakage,
                "max_distance": int(cfg.leakage_max_distance),
                "grouping": _grouping_note(cfg.source, patient_grouped, how, cfg.leakage),
                "exact_pairs": stage["sha256"],
                "near_pairs": stage["phash"] + stage["keypoints"],
                "clusters": doc["clusters"]["n_clusters"],
                "largest_cluster": doc["clusters"]["largest"],
                "cross_split_pairs": int(len(cross)),
                "suspect_pairs": int(len(suspects)) if suspects is not None else 0,
                "pairs_across_patients": doc["pairs_across_patients"],
                "pool_images_flagged": len(flagged["pool"]),
                "val_images_flagged": len(flagged["val"]),
                "dropped": len(flagged["pool"]) + len(flagged["val"]) if cfg.leakage == "drop" else 0,
            }
            doc["settings"] = leak_summary
            _write_json(leak_path, doc)
            if cfg.leakage == "drop":
                dropped = np.array(sorted(flagged["pool"] | flagged["val"]), dtype=np.int64)
                pool_idx = np.setdiff1d(pool_idx, dropped)
                val_idx = np.setdiff1d(val_idx, dropped)
        _write_json(
            splits_path,
            {
                "how": how,
                "settings": {
                    "eval_size": cfg.eval_size,
                    "val_size": cfg.val_size,
                    "split_seed": cfg.split_seed,
                    "leakage": cfg.leakage,
                    "leakage_max_distance": cfg.leakage_max_distance,
                },
                "eval": eval_idx,
                "val": val_idx,
                "pool": pool_idx,
                "dropped": dropped,
                "leakage_summary": leak_summary,
            },
        )

    # refusals (issue 18): a split that loses a class or starves it, or a cluster no copy set can be
    refuse = refusals + split_problems(labels, eval_idx, val_idx, pool_idx, class_names, cfg)
    if refuse:
        raise DataError(f"{cfg.source} data cannot be split for a study: " + "; ".join(refuse))

    n_quar_by_kind: dict[str, int] = {}
    if len(quarantined):
        from lungray.data.check import problem_kind

        for p in quarantined["problem"]:
            k = problem_kind(str(p))
            n_quar_by_kind[k] = n_quar_by_kind.get(k, 0) + 1
    info = {
        "source": cfg.source,
        "resolution": int(meta["resolution"]),
        "resize": meta["resize"],
        "preprocessing": meta["preprocess"],
        "dtype": meta["dtype"],
        "n_images": int(meta["n_images"]),
        "n_quarantined": int(len(quarantined)),
        "quarantined_by_kind": n_quar_by_kind,
        "splits": how,
        "split_key": skey,
        "cache_key": meta["key"],
        "patient_grouped": patient_grouped,
        "mask_kind": meta.get("mask_kind"),
        "lung_masks": bool(meta.get("lung_masks")) or meta.get("mask_kind") == "lung",
        "leakage": leak_summary,
    }
    if cfg.val_is_eval:  # study 5 as published: the test set doubles as the validation set
        val_idx = eval_idx
        info["val_is_eval"] = True
    if cfg.split_unit == "image":
        info["split_unit"] = "image"
        info["leakage"] = {**info["leakage"], "grouping": "image-level split (data.split_unit: image, as the papers split): "
                           "copies and films of one patient may sit on both sides"}
    external: list = []
    if held_sets:
        from lungray.data.external import check_external_counts, site_set

        problems = []
        for e in held_sets:
            problems += check_external_counts(e.name, labels[held_rows[e.name]], class_names, int(cfg.min_eval_per_class))
            external.append(site_set(e.name, e.hold_out_site, held_rows[e.name], labels, class_names, len(taken_out)))
        if problems:
            raise DataError("; ".join(problems))
    sites = groups_of(site_col) if (site_col != "").all() else None  # a site probe needs every row's site
    if sites is not None:
        info["site_names"] = list(dict.fromkeys(site_col.tolist()))  # code k -> name, in first-seen order
    data = PreparedData(
        root=str(root),
        class_names=class_names,
        eval_idx=np.sort(eval_idx),
        val_idx=np.sort(val_idx),
        pool_idx=np.sort(pool_idx),
        fingerprint=meta["key"],
        groups=split_groups_,  # None for an image-level split: subsets by image too
        class_balanced=bool(cfg.class_balanced),
        dropped_idx=np.sort(dropped),
        info=info,
        patients=patients,
        sites=sites,
    )
    info["class_counts"] = data.class_counts()
    pre_variants = list(preprocess_variants)
    for e in cfg.external:
        if e.source is None:
            continue
        from lungray.data.external import prepare_source_set

        external.append(prepare_source_set(e, cfg, class_names, cache_dir, preprocess_variants=pre_variants,
                                           progress=progress, parallel=parallel, echo=say))
    if external:
        import dataclasses as _dc

        order = [e.name for e in cfg.external]
        external.sort(key=lambda x: order.index(x.name))
        info["external"] = [x.info for x in external]
        data = _dc.replace(data, external=tuple(external))
        say("external evaluation set(s): " + "; ".join(
            f"{x.name} ({x.info.get('site') or x.info.get('source')}, {x.info['n_images']} images)" for x in external))
    roots = _variant_caches(manifest, cfg, cache_dir, root, preprocess_variants, progress=progress, parallel=parallel)
    if roots:
        import dataclasses

        info["preprocess_roots"] = {**roots, cfg.preprocess: str(root)}
        data = dataclasses.replace(data, variant_roots={**roots, cfg.preprocess: str(data.root)})
    if sizes:
        validate_sizes(data, sizes, seeds or (0,))
    return data


def _variant_caches(
    manifest: pd.DataFrame, cfg: Any, cache_dir: Path, root: Path, preprocessings: Sequence[str], *, progress: bool, parallel: Optional[bool]
) -> dict[str, str]:
    """One decoded cache per further preprocessing, checked to hold the base cache's rows in order."""
    import dataclasses

    from lungray.data.cache import build_cache

    out: dict[str, str] = {}
    base_ids = pd.read_parquet(root / "manifest.parquet", columns=["image_id"])["image_id"].to_numpy()
    for name in dict.fromkeys(p for p in preprocessings if p and p != cfg.preprocess):
        vroot = build_cache(manifest, dataclasses.replace(cfg, preprocess=name), cache_dir, progress=progress, parallel=parallel)
        ids = pd.read_parquet(vroot / "manifest.parquet", columns=["image_id"])["image_id"].to_numpy()
        if len(ids) != len(base_ids) or (ids != base_ids).any():
            extra = sorted(set(map(str, base_ids)) ^ set(map(str, ids)))[:3]
            raise DataError(
                f"preprocessing '{name}' left other images usable than '{cfg.preprocess}' ({len(ids)} vs {len(base_ids)}; "
                f"e.g. {', '.join(extra)}): the variants would not be paired; fix or remove those images"
            )
        out[name] = str(vroot)
    return out


def validate_sizes(data: PreparedData, sizes: Sequence[int], seeds: Sequence[int]) -> None:
    """Draw every (size, seed) subset once; an impossible size raises with the pool per class."""
    from lungray.data.splits import nested_subsets

    for seed in seeds:
        nested_subsets(
            data.labels,
            data.pool_idx,
            sorted(set(int(s) for s in sizes)),
            seed=int(seed),
            groups=data.groups,
            balanced=data.class_balanced,
            class_names=data.class_names,
        )
