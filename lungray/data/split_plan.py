"""From labelled rows (and the leakage audit's duplicate pairs) to the held-out split: what stays together.

Shared by ``prepare_data`` (the sweep) and ``lungray data check``, so both make the same split
and refuse the same degenerate ones (:mod:`lungray.data.guards`). It sits below both: neither
imports the other (issue 22 broke the ``check`` <-> ``prepare`` cycle here).

What is kept on one side of the split (a *group*):

* the images of one patient (``patient_id``; rows without one are their own group);
* the images the audit found to be copies of each other (union-find over the pairs,
  :func:`lungray.data.leakage.connected_groups`), EXCEPT pairs whose two images carry different
  labels: a copy filed under two labels is a label conflict, and two different patients paired
  by mistake (issue 18: a shared label box) are a false pair; either way the pair is reported
  (:attr:`SplitPlan.suspects`), never silently used to merge groups, because one such edge
  chains clusters of both classes into one group that the split must put on one side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

__all__ = ["SplitPlan", "groups_of", "grouping_pairs", "make_splits", "plan_split", "split_groups"]


def groups_of(patient_ids: Sequence[str]) -> Optional[np.ndarray]:
    """Integer patient-group codes per row, or ``None`` when no row has a patient id.

    Rows without an id (when others have one) get a group of their own: an unknown patient is
    treated as a distinct patient rather than merged with other unknowns.
    """
    pids = np.asarray(patient_ids, dtype=object)
    if len(pids) == 0 or all(p == "" for p in pids):
        return None
    codes = np.empty(len(pids), dtype=np.int64)
    seen: dict[str, int] = {}
    for i, p in enumerate(pids):
        key = p if p != "" else f"\x00row{i}"
        codes[i] = seen.setdefault(key, len(seen))
    return codes


def make_splits(
    labels: np.ndarray,
    groups: Optional[np.ndarray],
    split_col: Sequence[str],
    cfg: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(eval_idx, val_idx, pool_idx, how): predefined splits when every row has one, else a holdout.

    ``how`` is ``"predefined"`` or ``"holdout"``. With predefined splits and no ``val`` rows the
    validation set is carved out of ``train`` with ``data.val_size`` (stratified, grouped).
    """
    from lungray.data.splits import split_holdout

    split_col = np.asarray(split_col, dtype=object)
    labels = np.asarray(labels, dtype=np.int64)
    if len(split_col) and all(s in ("train", "val", "test") for s in split_col) and (split_col == "test").any():
        ev = np.flatnonzero(split_col == "test")
        va = np.flatnonzero(split_col == "val")
        tr = np.flatnonzero(split_col == "train")
        if len(va) == 0 and len(tr):
            sub_groups = groups[tr] if groups is not None else None
            _, v_rel, p_rel = split_holdout(labels[tr], 0, cfg.val_size, seed=cfg.split_seed, groups=sub_groups)
            va, tr = tr[np.asarray(v_rel, dtype=np.int64)], tr[np.asarray(p_rel, dtype=np.int64)]
        return ev, np.sort(va), np.sort(tr), "predefined"
    ev, va, po = split_holdout(labels, cfg.eval_size, cfg.val_size, seed=cfg.split_seed, groups=groups)
    return (np.asarray(ev, dtype=np.int64), np.asarray(va, dtype=np.int64), np.asarray(po, dtype=np.int64), "holdout")


def grouping_pairs(pairs: Any, labels: np.ndarray) -> tuple[Any, Any]:
    """``(edges, suspects)``: the duplicate pairs whose images share a label (grouping edges) and
    those whose labels differ (label conflicts or false pairs: reported, never grouped)."""
    if pairs is None or not len(pairs):
        return pairs, (pairs.iloc[:0] if pairs is not None else None)
    y = np.asarray(labels, dtype=np.int64)
    same = y[pairs["row_a"].to_numpy()] == y[pairs["row_b"].to_numpy()]
    return pairs[same].reset_index(drop=True), pairs[~same].reset_index(drop=True)


@dataclass(frozen=True)
class SplitPlan:
    """A held-out split and what it kept together.

    ``groups`` (n,) int64 split groups (patients + duplicate clusters; ``None`` when there is
    neither); ``patients`` (n,) int64 patient codes (``None`` without patient ids); ``edges``
    and ``suspects`` the audit's pairs used for grouping and those set aside (different labels);
    ``how`` ``"holdout"`` or ``"predefined"``.
    """

    eval_idx: np.ndarray
    val_idx: np.ndarray
    pool_idx: np.ndarray
    how: str
    groups: Optional[np.ndarray]
    patients: Optional[np.ndarray]
    edges: Any = None
    suspects: Any = None


def split_groups(labels: np.ndarray, patient_ids: Sequence[str], pairs: Any = None) -> tuple[Optional[np.ndarray], Optional[np.ndarray], Any, Any]:
    """``(groups, patients, edges, suspects)``: patients and the audit's same-label duplicate
    clusters as split groups (``pairs``: :func:`lungray.data.leakage.find_duplicates` over all
    rows, ``None`` with the audit off)."""
    from lungray.data.leakage import connected_groups

    y = np.asarray(labels, dtype=np.int64)
    patients = groups_of(patient_ids)
    edges, suspects = grouping_pairs(pairs, y)
    groups = connected_groups(len(y), edges, patients) if pairs is not None else patients
    return groups, patients, edges, suspects


def plan_split(labels: np.ndarray, patient_ids: Sequence[str], split_col: Sequence[str], cfg: Any, pairs: Any = None) -> SplitPlan:
    """The split of ``prepare_data`` and ``data check``: :func:`split_groups`, then :func:`make_splits`."""
    y = np.asarray(labels, dtype=np.int64)
    groups, patients, edges, suspects = split_groups(y, patient_ids, pairs)
    ev, va, po, how = make_splits(y, groups, split_col, cfg)
    return SplitPlan(eval_idx=ev, val_idx=va, pool_idx=po, how=how, groups=groups, patients=patients, edges=edges, suspects=suspects)
