"""Held-out splits and nested training subsets: pure functions of labels, groups and a seed.

Two decisions make a training-size study honest:

* **The evaluation set is fixed** (its own ``split_seed``, independent of the trial seeds) and
  patient-disjoint from everything else, so every model, size and seed is scored on the same
  images (paired comparisons) and no patient is on both sides (torchxrayvision's
  ``GroupShuffleSplit`` practice).
* **Subsets are nested prefixes of one ordering** (scikit-learn's ``learning_curve``): for a seed
  the pool is put in one seeded, stratified, group-aware order and ``subset(n)`` is its first ``n``
  rows, so ``subset(100) ⊂ subset(200) ⊂ subset(500)`` and the learning curve measures data, not
  the luck of a new draw at each size. Different seeds give different orders.

Groups (patients) stay together in the ordering: all images of a patient are adjacent, so a
prefix contains whole patients except possibly the last one, whose images are trimmed to hit
``n`` exactly. A partially included training patient leaks nothing (the pool is already
patient-disjoint from the evaluation set); exact sizes keep the x-axis of the curve exact.

Stratification of prefixes: units (patients, or single images) of class ``c`` are shuffled and
placed at fractional positions ``(k + 0.5) / n_c`` of the ordering, ties broken at random, so every
prefix holds each class in proportion to the pool, within one unit.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from lungray.errors import DataError

Size = Union[int, float]


def _as_groups(n: int, groups: Optional[np.ndarray]) -> np.ndarray:
    if groups is None:
        return np.arange(n)
    g = np.asarray(groups)
    if len(g) != n:
        raise ValueError(f"groups has {len(g)} entries for {n} labels")
    _, codes = np.unique(g.astype(str), return_inverse=True)
    return codes


def _count(size: Size, total: int, what: str) -> int:
    if isinstance(size, (bool, np.bool_)):
        raise DataError(f"{what} must be a count or a fraction, got {size!r}")
    if isinstance(size, (float, np.floating)) and 0 <= size < 1:
        return int(round(size * total))
    if float(size) != int(size) or size < 0:
        raise DataError(f"{what} must be a whole count >= 0 or a fraction in [0, 1), got {size}")
    n = int(size)
    if n > total:
        raise DataError(f"{what} = {n} is larger than the {total} images available")
    return n


def _units(idx: np.ndarray, labels: np.ndarray, codes: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Group rows of ``idx`` into units (patients); a unit's class is its majority label."""
    order = np.argsort(codes[idx], kind="stable")
    sorted_idx = idx[order]
    _, starts = np.unique(codes[sorted_idx], return_index=True)
    units = np.split(sorted_idx, starts[1:]) if len(sorted_idx) else []
    ulab = np.array([np.bincount(labels[u]).argmax() for u in units], dtype=np.int64)
    return units, ulab


def _stratified_take(
    idx: np.ndarray, labels: np.ndarray, codes: np.ndarray, n_take: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Take ~``n_take`` rows from ``idx`` by whole units, per class in proportion (largest remainder)."""
    if n_take == 0:
        return np.zeros(0, dtype=np.int64), np.sort(idx)
    units, ulab = _units(idx, labels, codes)
    classes, class_sizes = np.unique(labels[idx], return_counts=True)
    exact = n_take * class_sizes / class_sizes.sum()
    quota = np.floor(exact).astype(int)
    rest = n_take - quota.sum()
    if rest > 0:
        quota[np.argsort(-(exact - quota), kind="stable")[:rest]] += 1
    taken: list[np.ndarray] = []
    for c, q in zip(classes, quota):
        members = [units[i] for i in rng.permutation(np.flatnonzero(ulab == c))]
        got = 0
        for u in members:
            if got >= q:
                break
            # with groups, take a unit only while it brings us closer to the quota
            if got + len(u) > q and (got + len(u) - q) >= (q - got):
                continue
            taken.append(u)
            got += len(u)
    out = np.sort(np.concatenate(taken)) if taken else np.zeros(0, dtype=np.int64)
    remaining = np.setdiff1d(idx, out)
    return out.astype(np.int64), remaining.astype(np.int64)


def split_holdout(
    labels: Sequence[int],
    eval_size: Size,
    val_size: Size,
    seed: int,
    groups: Optional[Sequence] = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified, patient-disjoint (eval, val, pool) row indices, each sorted.

    ``eval_size`` is a count or a fraction of all rows; ``val_size`` a count or a fraction of what
    remains after the evaluation set. Without groups the counts are exact; with groups whole
    patients are assigned and counts are as close as patient sizes allow.

    >>> e, v, p = split_holdout([0, 0, 0, 0, 1, 1, 1, 1], eval_size=4, val_size=0, seed=0)
    >>> len(e), sorted(np.bincount(np.array([0, 0, 0, 0, 1, 1, 1, 1])[e]).tolist()), len(p)
    (4, [2, 2], 4)
    """
    y = np.asarray(labels, dtype=np.int64)
    n = len(y)
    codes = _as_groups(n, None if groups is None else np.asarray(groups))
    rng = np.random.default_rng([int(seed), 0x5EED])
    n_eval = _count(eval_size, n, "eval_size")
    eval_idx, rest = _stratified_take(np.arange(n), y, codes, n_eval, rng)
    n_val = _count(val_size, len(rest), "val_size")
    val_idx, pool_idx = _stratified_take(rest, y, codes, n_val, rng)
    return eval_idx, val_idx, pool_idx


def pool_order(
    labels: Sequence[int],
    pool_idx: Sequence[int],
    seed: int,
    groups: Optional[Sequence] = None,
    balanced: bool = False,
) -> np.ndarray:
    """The one seeded ordering of the pool whose prefixes are the nested subsets.

    Stratified: units of class ``c`` sit at fractional positions ``(k + 0.5) / n_c``. Balanced:
    classes take turns (round robin), so a prefix of ``n`` holds ``n / K`` of each class for as long
    as every class lasts.
    """
    y = np.asarray(labels, dtype=np.int64)
    pool = np.asarray(pool_idx, dtype=np.int64)
    codes = _as_groups(len(y), None if groups is None else np.asarray(groups))
    rng = np.random.default_rng([int(seed), 0xA11CE])
    units, ulab = _units(pool, y, codes)
    keys = np.empty(len(units))
    for c in np.unique(ulab):
        members = rng.permutation(np.flatnonzero(ulab == c))
        k = np.arange(len(members))
        keys[members] = k if balanced else (k + 0.5) / len(members)
    tiebreak = rng.random(len(units))
    order = np.lexsort((tiebreak, keys))
    # within a unit, images in a seeded order too
    return np.concatenate([rng.permutation(units[i]) for i in order]) if len(units) else pool[:0]


def nested_subsets(
    labels: Sequence[int],
    pool_idx: Sequence[int],
    sizes: Sequence[int],
    seed: int,
    groups: Optional[Sequence] = None,
    balanced: bool = False,
    class_names: Optional[Sequence[str]] = None,
) -> dict[int, np.ndarray]:
    """``{n: rows}`` for each training size: the first ``n`` rows of :func:`pool_order` (sorted).

    Raises :class:`DataError`, listing the pool per class, when a size exceeds the pool (or, with
    ``balanced``, when a class has fewer than ``ceil(n / K)`` images).
    """
    y = np.asarray(labels, dtype=np.int64)
    pool = np.asarray(pool_idx, dtype=np.int64)
    sizes = [int(s) for s in sizes]
    if any(s < 1 for s in sizes):
        raise DataError(f"training sizes must be positive counts, got {sizes}")
    k = int(y.max()) + 1 if len(y) else 0
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    counts = np.bincount(y[pool], minlength=len(names)) if len(pool) else np.zeros(len(names), int)
    per_class = ", ".join(f"{names[i]}: {int(counts[i])}" for i in range(len(names)))
    present = np.flatnonzero(counts)
    for s in sizes:
        if s > len(pool):
            raise DataError(
                f"training size {s} is larger than the training pool of {len(pool)} images "
                f"({per_class}); use smaller sizes, a smaller eval/val split, or more data"
            )
        if balanced:
            need = -(-s // max(len(present), 1))
            if counts[present].min() < need:
                raise DataError(
                    f"class-balanced training size {s} needs {need} images per class but the pool has "
                    f"{per_class}; use smaller sizes or data.class_balanced=false"
                )
    order = pool_order(y, pool, seed, groups=groups, balanced=balanced)
    return {s: np.sort(order[:s]) for s in sizes}
