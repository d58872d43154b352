"""Held-out splits and nested training subsets: pure functions of labels, groups and a seed.

Two decisions make a training-size study honest:

* **The evaluation set is fixed** (its own ``data.split_seed``, independent of the trial
  seeds) and patient-disjoint from everything else, so every model, size and seed is scored on
  the same images (paired comparisons) and no patient is on both sides (torchxrayvision's
  ``GroupShuffleSplit`` practice). It is drawn first; the validation set is then drawn from the
  rest, so changing ``val_size`` never changes the evaluation set. The published studies used
  one random split each (80:20, 80/10/10, 70:30; ``shared/PROTOCOLS.md`` sections 2, 4, 5) and a
  3000-image validation set (section 1); lungray keeps that set fixed across seeds.
* **Subsets are nested prefixes of one ordering** (scikit-learn's ``learning_curve``): for a
  seed the pool is put in one seeded, stratified, group-aware order and ``subset(n)`` is its first
  ``n`` rows, so ``subset(100) ⊂ subset(200) ⊂ subset(500) ⊂ subset(1000)`` (the sizes of section
  1) and the curve measures data, not the luck of a fresh draw at each size. The ordering depends
  only on (labels, pool, groups, seed, balanced): every model and optimizer gets the same subset
  (paired comparisons); different seeds give different orders.

Units and group boundaries: a *unit* is a patient (all its images) when groups are given, else
a single image. A unit's class is the majority label of its images (ties: the lower class
index). Whole units are placed in the ordering, a patient's images adjacent and in ascending row
order, so a prefix holds whole patients except possibly the last one, whose images are trimmed
to reach ``n`` exactly. A trimmed training patient leaks nothing (the pool is already
patient-disjoint from the evaluation set) and exact sizes keep the curve's x-axis exact.

Stratification: within each class the units are shuffled; unit ``u`` of class ``c`` covering
images ``[a, a + s)`` of that class's ``T`` images gets the key ``(a + s / 2) / T`` (the midpoint
of its share), and units are sorted by key (random tie-break). Every prefix then holds each class
in proportion to the pool, within one image for single-image units and within one patient with
groups. ``balanced=True`` uses the un-normalised midpoint ``a + s / 2``, so classes advance at the
same image rate and prefixes are class-balanced for as long as the smallest class lasts.

Held-out sets are drawn per class by whole units too: each class's quota (largest remainder of
``size * class share``) is filled by walking its shuffled units and taking a unit whenever that
brings the class's count strictly closer to its quota. Without groups the counts are exact;
with groups they are within half a patient of the quota per class.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np

from lungray.errors import DataError

Size = Union[int, float]

# independent random streams per purpose: default_rng([seed, stream])
_S_EVAL, _S_VAL, _S_ORDER = 0x5EED, 0x7A1, 0xA11CE


def _rng(seed: int, stream: int) -> np.random.Generator:
    if isinstance(seed, (bool, np.bool_)) or int(seed) != seed or seed < 0:
        raise DataError(f"split seeds must be integers >= 0, got {seed!r}")
    return np.random.default_rng([int(seed), stream])


def _as_groups(n: int, groups: Optional[Sequence]) -> np.ndarray:
    """Integer group codes (one per row); every row its own group when ``groups`` is None."""
    if groups is None:
        return np.arange(n)
    g = np.asarray(groups)
    if g.shape != (n,):
        raise DataError(f"groups (patient ids) has shape {g.shape} for {n} labels; give one group per row")
    _, codes = np.unique(g.astype(str), return_inverse=True)
    return codes.reshape(-1)


def _labels(labels: Sequence[int]) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or (y.size and not np.issubdtype(y.dtype, np.integer)):
        raise DataError(f"labels must be a 1-D array of class indices, got dtype {y.dtype} shape {y.shape}")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise DataError(f"labels must be class indices >= 0, got {int(y.min())}")
    return y


def resolve_count(size: Size, total: int, what: str) -> int:
    """A count (int >= 0, or a whole float) or a fraction in [0, 1) of ``total``, as a count.

    Fractions round half up (``0.25`` of 10 is 3), so a fraction never yields an empty set
    by banker's rounding.
    """
    if isinstance(size, (bool, np.bool_)) or not isinstance(size, (int, float, np.integer, np.floating)):
        raise DataError(f"{what} must be a count or a fraction, got {size!r}")
    if not math.isfinite(size) or size < 0:
        raise DataError(f"{what} must be a count >= 0 or a fraction in [0, 1), got {size}")
    if isinstance(size, (float, np.floating)) and size < 1:
        return int(math.floor(size * total + 0.5))
    if float(size) != int(size):
        raise DataError(f"{what} must be a whole count or a fraction in [0, 1), got {size}")
    n = int(size)
    if n > total:
        raise DataError(f"{what} = {n} is larger than the {total} images available; use a smaller {what} or more data")
    return n


def _units(idx: np.ndarray, labels: np.ndarray, codes: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Rows of ``idx`` grouped into units (ascending rows within a unit, units by group code) and
    each unit's class (majority label, ties to the lower index)."""
    idx = np.sort(np.asarray(idx, dtype=np.int64))
    if not idx.size:
        return [], np.zeros(0, dtype=np.int64)
    order = np.argsort(codes[idx], kind="stable")
    sorted_idx = idx[order]
    _, starts = np.unique(codes[sorted_idx], return_index=True)
    units = np.split(sorted_idx, starts[1:])
    ulab = np.array([np.bincount(labels[u]).argmax() for u in units], dtype=np.int64)
    return units, ulab


def _quotas(n_take: int, class_sizes: np.ndarray) -> np.ndarray:
    """Largest-remainder apportionment of ``n_take`` over classes (ties to the lower index)."""
    exact = n_take * class_sizes / class_sizes.sum()
    quota = np.floor(exact).astype(np.int64)
    rest = n_take - int(quota.sum())
    if rest > 0:
        quota[np.argsort(-(exact - quota), kind="stable")[:rest]] += 1
    return quota


def _stratified_take(idx: np.ndarray, labels: np.ndarray, codes: np.ndarray, n_take: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(taken, remaining) rows: about ``n_take`` rows of ``idx`` by whole units, per class in proportion."""
    idx = np.sort(np.asarray(idx, dtype=np.int64))
    if n_take == 0:
        return np.zeros(0, dtype=np.int64), idx
    units, ulab = _units(idx, labels, codes)
    sizes = np.array([len(u) for u in units])
    classes = np.unique(ulab)
    quota = _quotas(n_take, np.array([sizes[ulab == c].sum() for c in classes]))
    taken: list[np.ndarray] = []
    for c, q in zip(classes, quota):
        got = 0
        for i in rng.permutation(np.flatnonzero(ulab == c)):
            if got == q:
                break
            if abs(got + sizes[i] - q) < abs(got - q):  # only if it brings the class closer to its quota
                taken.append(units[i])
                got += int(sizes[i])
    out = np.sort(np.concatenate(taken)) if taken else np.zeros(0, dtype=np.int64)
    return out, np.setdiff1d(idx, out)


def split_holdout(
    labels: Sequence[int],
    eval_size: Size,
    val_size: Size,
    seed: int,
    groups: Optional[Sequence] = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified, patient-disjoint ``(eval_idx, val_idx, pool_idx)`` row indices, each sorted.

    ``eval_size`` is a count or a fraction of all rows; ``val_size`` a count or a fraction of what
    remains after the evaluation set. The evaluation set depends only on (labels, eval_size,
    seed, groups). Without groups the counts are exact; with groups whole patients are assigned
    and each class lands within half a patient of its quota.

    >>> y = [0, 0, 0, 0, 1, 1, 1, 1]
    >>> e, v, p = split_holdout(y, eval_size=4, val_size=2, seed=0)
    >>> len(e), np.bincount(np.array(y)[e]).tolist(), len(v), len(p)
    (4, [2, 2], 2, 2)
    """
    y = _labels(labels)
    n = len(y)
    codes = _as_groups(n, groups)
    n_eval = resolve_count(eval_size, n, "eval_size")
    eval_idx, rest = _stratified_take(np.arange(n), y, codes, n_eval, _rng(seed, _S_EVAL))
    n_val = resolve_count(val_size, len(rest), "val_size")
    val_idx, pool_idx = _stratified_take(rest, y, codes, n_val, _rng(seed, _S_VAL))
    if n and not pool_idx.size:
        raise DataError(
            f"eval_size={eval_size} and val_size={val_size} leave no training pool out of {n} images; "
            "use smaller data.eval_size/data.val_size"
        )
    return eval_idx, val_idx, pool_idx


def pool_order(
    labels: Sequence[int],
    pool_idx: Sequence[int],
    seed: int,
    groups: Optional[Sequence] = None,
    balanced: bool = False,
) -> np.ndarray:
    """The one seeded ordering of the pool whose prefixes are the nested subsets.

    Patients stay adjacent (ascending rows inside a patient); units are ordered by the midpoint
    of their share of their class (see the module docstring), stratified by default,
    class-balanced with ``balanced=True``.
    """
    y = _labels(labels)
    pool = np.asarray(pool_idx, dtype=np.int64)
    codes = _as_groups(len(y), groups)
    rng = _rng(seed, _S_ORDER)
    units, ulab = _units(pool, y, codes)
    if not units:
        return pool[:0]
    sizes = np.array([len(u) for u in units], dtype=np.float64)
    keys = np.empty(len(units))
    for c in np.unique(ulab):
        members = rng.permutation(np.flatnonzero(ulab == c))
        start = np.cumsum(sizes[members]) - sizes[members]
        mid = start + sizes[members] / 2
        keys[members] = mid if balanced else mid / sizes[members].sum()
    order = np.lexsort((rng.random(len(units)), keys))
    return np.concatenate([units[i] for i in order])


def _pool_per_class(y: np.ndarray, pool: np.ndarray, class_names: Optional[Sequence[str]]) -> tuple[np.ndarray, str]:
    k = max(len(class_names) if class_names is not None else 0, int(y.max()) + 1 if y.size else 0)
    names = list(class_names) if class_names is not None else [f"class {i}" for i in range(k)]
    names += [f"class {i}" for i in range(len(names), k)]
    counts = np.bincount(y[pool], minlength=k) if pool.size else np.zeros(k, dtype=np.int64)
    return counts, ", ".join(f"{names[i]}: {int(counts[i])}" for i in range(k))


def nested_subsets(
    labels: Sequence[int],
    pool_idx: Sequence[int],
    sizes: Sequence[int],
    seed: int,
    groups: Optional[Sequence] = None,
    balanced: bool = False,
    class_names: Optional[Sequence[str]] = None,
) -> dict[int, np.ndarray]:
    """``{n: rows}`` for each training size: the first ``n`` rows of :func:`pool_order`, sorted.

    Sizes are validated first (positive whole counts, de-duplicated); a size larger than the
    pool, or with ``balanced`` larger than ``K x`` the smallest class of the pool, raises
    :class:`~lungray.errors.DataError` that prints the pool per class.

    >>> y = np.array([0] * 6 + [1] * 3)
    >>> s = nested_subsets(y, np.arange(9), [3, 6], seed=0)
    >>> set(s[3]) < set(s[6]), np.bincount(y[s[3]]).tolist(), np.bincount(y[s[6]]).tolist()
    (True, [2, 1], [4, 2])
    """
    y = _labels(labels)
    pool = np.asarray(pool_idx, dtype=np.int64)
    clean: list[int] = []
    for s in sizes:
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, float, np.integer, np.floating)) or float(s) != int(s) or s < 1:
            raise DataError(f"training sizes must be positive whole counts, got {list(sizes)}")
        if int(s) not in clean:
            clean.append(int(s))
    counts, per_class = _pool_per_class(y, pool, class_names)
    present = np.flatnonzero(counts)
    for s in clean:
        if s > len(pool):
            raise DataError(
                f"training size {s} is larger than the training pool of {len(pool)} images ({per_class}); "
                "use smaller sizes, a smaller data.eval_size/data.val_size, or more data"
            )
        if balanced:
            need = -(-s // max(len(present), 1))
            if counts[present].min() < need:
                raise DataError(
                    f"class-balanced training size {s} needs {need} images per class but the pool has {per_class} "
                    f"(largest balanced size {len(present) * int(counts[present].min())}); use smaller sizes or data.class_balanced=false"
                )
    order = pool_order(y, pool, seed, groups=groups, balanced=balanced)
    return {s: np.sort(order[:s]) for s in clean}
