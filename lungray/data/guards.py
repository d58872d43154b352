"""Refusals: splits that would make a study meaningless, found before anything trains.

Why (issue 18): 120 films of distinct patients sharing a label box were chained by the leakage
audit into one duplicate cluster; the cluster became one split group, ``prepare_data`` returned
an evaluation set of 0 images and a validation set of 0 with no error, ``lungray data check``
exited 0, every trial scored 0.000 and the report said "Complete". Each rule here turns such a
state into one line that names the cause and what to do, raised before Ray starts (by
``prepare_data``) and printed by ``data check`` (exit 1):

* every class must keep at least ``data.min_eval_per_class`` evaluation images (default 10: an
  accuracy on 10 images has a 95 % interval of about +-0.3, so a per-class number on fewer is
  noise) and, when a validation set is asked for, ``data.min_val_per_class`` validation images
  (default 3: model selection and early stopping need each class); the training pool must hold
  every class;
* no duplicate cluster may hold more than ``data.max_cluster_share`` of the images (default 5 %;
  never more than 10 images when that share is smaller): copies of one film are a handful, while
  a cluster that large is the audit chaining distinct images, or a dataset made of copies of few
  films; and none may join more than ``data.max_cluster_patients`` distinct patient ids (a copy
  belongs to one patient).

These are pure functions of labels, index arrays and pairs, so they are tested with exact cases.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np

#: a cluster may always hold this many images, whatever ``max_cluster_share`` says of a small set
MIN_CLUSTER_LIMIT = 10


def _names(class_names: Sequence[str], k: int) -> list[str]:
    names = [str(c) for c in class_names]
    return names + [f"class {i}" for i in range(len(names), k)]


def _counts(labels: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    idx = np.asarray(idx, dtype=np.int64)
    return np.bincount(labels[idx], minlength=k) if idx.size else np.zeros(k, dtype=np.int64)


def _listing(names: Sequence[str], counts: np.ndarray, which: Sequence[int]) -> str:
    return ", ".join(f"{int(counts[c])} '{names[c]}'" for c in which)


def split_problems(
    labels: Sequence[int],
    eval_idx: Sequence[int],
    val_idx: Sequence[int],
    pool_idx: Sequence[int],
    class_names: Sequence[str],
    cfg: Any,
    *,
    cause: str = "",
) -> list[str]:
    """One line per split that loses a class or falls below its minimum per class.

    ``cfg``: a :class:`~lungray.config.DataConfig` (``min_eval_per_class``,
    ``min_val_per_class``, ``val_size``). ``cause``: a clause appended to every line (e.g. the
    duplicate cluster that forced the split), so the line names why.

    >>> from types import SimpleNamespace as NS
    >>> cfg = NS(min_eval_per_class=10, min_val_per_class=3, val_size=0.1)
    >>> y = np.array([0] * 30 + [1] * 30)
    >>> split_problems(y, list(range(5)) + list(range(30, 35)), [10, 11, 12, 40, 41, 42], list(range(13, 30)) + list(range(43, 60)), ["Normal", "COVID"], cfg)
    ["the evaluation set would hold only 5 'Normal', 5 'COVID' image(s), fewer than data.min_eval_per_class = 10 per class: a metric on so few is noise; use more data, a larger data.eval_size, or lower data.min_eval_per_class"]
    """
    y = np.asarray(labels, dtype=np.int64)
    k = max(len(class_names), int(y.max()) + 1 if y.size else 0)
    names = _names(class_names, k)
    tail = f" ({cause})" if cause else ""
    out = []
    ev, va, po = (_counts(y, ix, k) for ix in (eval_idx, val_idx, pool_idx))
    present = np.flatnonzero(np.bincount(y, minlength=k) > 0) if y.size else np.arange(0)
    min_ev, min_va = int(cfg.min_eval_per_class), int(cfg.min_val_per_class)
    lost = [c for c in present if ev[c] == 0]
    if lost:
        out.append(f"the evaluation set would hold no {' and no '.join(repr(names[c]) for c in lost)} image{tail}: "
                   "its metrics would miss the class; use more data or a larger data.eval_size, or drop the class with "
                   "data.class_map")
    else:
        low = [c for c in present if ev[c] < min_ev]
        if low:
            out.append(f"the evaluation set would hold only {_listing(names, ev, low)} image(s), fewer than "
                       f"data.min_eval_per_class = {min_ev} per class{tail}: a metric on so few is noise; use more data, "
                       "a larger data.eval_size, or lower data.min_eval_per_class")
    wants_val = len(np.asarray(val_idx)) > 0 or float(getattr(cfg, "val_size", 0) or 0) > 0
    if wants_val:
        lost = [c for c in present if va[c] == 0]
        low = [c for c in present if 0 < va[c] < min_va]
        if lost:
            out.append(f"the validation set would hold no {' and no '.join(repr(names[c]) for c in lost)} image{tail}: "
                       "model selection and early stopping would ignore the class; use more data, a larger data.val_size, "
                       "or data.val_size=0 for no validation set")
        elif low:
            out.append(f"the validation set would hold only {_listing(names, va, low)} image(s), fewer than "
                       f"data.min_val_per_class = {min_va} per class{tail}; use more data, a larger data.val_size, "
                       "or lower data.min_val_per_class")
    lost = [c for c in present if po[c] == 0]
    if lost:
        out.append(f"the training pool would hold no {' and no '.join(repr(names[c]) for c in lost)} image{tail}: "
                   "no model could learn the class; use more data or smaller data.eval_size/data.val_size")
    return out


def cluster_limit(n: int, cfg: Any) -> int:
    """The most images one duplicate cluster may hold in a dataset of ``n`` images."""
    return max(MIN_CLUSTER_LIMIT, math.ceil(float(cfg.max_cluster_share) * n))


def cluster_problems(
    edges: Any,
    n: int,
    labels: Sequence[int],
    class_names: Sequence[str],
    cfg: Any,
    patients: Optional[Sequence[int]] = None,
) -> list[str]:
    """One line for the largest implausible duplicate cluster (too many images or too many
    patients), counting how many more there are. ``edges``: the pairs used for grouping
    (:func:`lungray.data.split_plan.grouping_pairs`); ``patients``: patient codes (``None`` or
    negative for unknown)."""
    from lungray.data.leakage import connected_groups

    if edges is None or not len(edges):
        return []
    y = np.asarray(labels, dtype=np.int64)
    lab = connected_groups(n, edges)
    sizes = np.bincount(lab)
    limit = cluster_limit(n, cfg)
    max_p = int(cfg.max_cluster_patients)
    names = _names(class_names, max(len(class_names), int(y.max()) + 1 if y.size else 0))
    bad: list[tuple[int, int, int]] = []  # (size, patients, cluster)
    for c in np.flatnonzero(sizes > 1):
        rows = np.flatnonzero(lab == c)
        n_pat = 0
        if patients is not None:
            p = np.asarray(patients)[rows]
            n_pat = len(set(p[p >= 0].tolist()))
        if sizes[c] > limit or n_pat > max_p:
            bad.append((int(sizes[c]), n_pat, int(c)))
    if not bad:
        return []
    bad.sort(reverse=True)
    size, n_pat, c = bad[0]
    rows = np.flatnonzero(lab == c)
    per = np.bincount(y[rows], minlength=len(names))
    by = ", ".join(f"{names[i]} {int(per[i])}" for i in np.flatnonzero(per))
    what = []
    if size > limit:
        what.append(f"{size} of {n} images ({100.0 * size / max(n, 1):.0f} %, more than data.max_cluster_share = "
                    f"{float(cfg.max_cluster_share):g} allows: {limit})")
    if n_pat > max_p:
        what.append(f"{n_pat} different patient ids (more than data.max_cluster_patients = {max_p})")
    more = f"; {len(bad) - 1} more such cluster(s)" if len(bad) > 1 else ""
    return [f"one duplicate cluster of the leakage audit holds {' and '.join(what)} [{by}]{more}: copies of one film are "
            "a handful, so the audit has chained distinct images (shared burned-in markings, borders or blank films?) and "
            "the split would have to keep them on one side; look at the pairs with `lungray data check`, remove real copies "
            "from the data, or set data.leakage=off to split by patient only"]


def suspect_line(suspects: Any, labels: Sequence[int], class_names: Sequence[str], ids: Optional[Sequence[str]] = None) -> Optional[str]:
    """One warning line for the duplicate pairs whose images carry different labels (``None`` when none)."""
    if suspects is None or not len(suspects):
        return None
    y = np.asarray(labels, dtype=np.int64)
    names = _names(class_names, max(len(class_names), int(y.max()) + 1 if y.size else 0))
    r = suspects.iloc[0]
    a, b = int(r["row_a"]), int(r["row_b"])
    ida = str(ids[a]) if ids is not None else f"row {a}"
    idb = str(ids[b]) if ids is not None else f"row {b}"
    return (f"warning: {len(suspects)} duplicate pair(s) join images with different labels (e.g. {ida} '{names[y[a]]}' ~ "
            f"{idb} '{names[y[b]]}', found by {r['stage']}): each is a label conflict or a false pair of the audit; they "
            "are not used to group the split, and with data.leakage=drop the training-side image of a pair that crosses "
            "the split is dropped")
