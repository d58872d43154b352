"""Splits and nested subsets: nested, stratified, per-seed deterministic, disjoint, patient-disjoint."""

from __future__ import annotations

import numpy as np
import pytest

from lungray.data.splits import nested_subsets, pool_order, split_holdout
from lungray.errors import DataError


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(42)
    y = np.repeat([0, 1, 2], [300, 200, 100])
    rng.shuffle(y)
    return y


def test_holdout_counts_are_exact_and_stratified(data):
    e, v, p = split_holdout(data, eval_size=120, val_size=0.1, seed=0)
    assert len(e) == 120 and len(v) == 48 and len(p) == 600 - 120 - 48
    # 300/200/100 of 600 -> exactly 60/40/20 of 120
    assert np.bincount(data[e]).tolist() == [60, 40, 20]
    assert np.bincount(data[v]).tolist() == [24, 16, 8]
    assert len(np.intersect1d(e, v)) == len(np.intersect1d(e, p)) == len(np.intersect1d(v, p)) == 0
    assert np.array_equal(np.sort(np.concatenate([e, v, p])), np.arange(600))


def test_holdout_fraction_and_determinism(data):
    a = split_holdout(data, eval_size=0.25, val_size=0, seed=3)
    b = split_holdout(data, eval_size=0.25, val_size=0, seed=3)
    c = split_holdout(data, eval_size=0.25, val_size=0, seed=4)
    assert len(a[0]) == 150 and len(a[1]) == 0
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_holdout_hand_worked_case():
    # two classes, 4 images each, eval 2 + val 2: exactly one of each class per split
    y = [0, 0, 0, 0, 1, 1, 1, 1]
    e, v, p = split_holdout(y, eval_size=2, val_size=2, seed=0)
    assert sorted(np.array(y)[e].tolist()) == [0, 1]
    assert sorted(np.array(y)[v].tolist()) == [0, 1]
    assert sorted(np.array(y)[p].tolist()) == [0, 0, 1, 1]


def test_patient_disjoint_splits_and_subsets():
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(150), 4)  # 4 images per patient
    y = np.repeat(rng.integers(0, 2, 150), 4)  # a patient has one label
    e, v, p = split_holdout(y, eval_size=100, val_size=40, seed=0, groups=patients)
    pe, pv, pp = set(patients[e]), set(patients[v]), set(patients[p])
    assert not (pe & pv) and not (pe & pp) and not (pv & pp)
    # whole patients: counts are as close as 4-image patients allow (within one patient per class)
    assert abs(len(e) - 100) <= 8 and abs(len(v) - 40) <= 8
    subs = nested_subsets(y, p, [10, 40], seed=1, groups=patients)
    assert len(subs[10]) == 10 and len(subs[40]) == 40
    # whole patients except at most the last, trimmed one
    counts = np.unique(patients[subs[40]], return_counts=True)[1]
    assert (counts == 4).sum() >= len(counts) - 1


def test_nested_stratified_deterministic(data):
    _, _, pool = split_holdout(data, eval_size=120, val_size=0, seed=0)
    sizes = [30, 60, 150, 480]
    s = nested_subsets(data, pool, sizes, seed=7)
    again = nested_subsets(data, pool, list(reversed(sizes)), seed=7)
    other = nested_subsets(data, pool, sizes, seed=8)
    for small, big in zip(sizes, sizes[1:]):
        assert set(s[small]) < set(s[big])
    for n in sizes:
        assert len(s[n]) == n
        assert np.array_equal(s[n], again[n])  # independent of which sizes were asked for
        assert set(s[n]) <= set(pool)
        expected = n * np.bincount(data[pool]) / len(pool)
        assert np.all(np.abs(np.bincount(data[s[n]], minlength=3) - expected) <= 1)
    assert not np.array_equal(s[30], other[30])


def test_single_size_call_equals_prefix_of_order(data):
    pool = np.arange(600)
    order = pool_order(data, pool, seed=5)
    assert np.array_equal(np.sort(order), pool)
    assert np.array_equal(nested_subsets(data, pool, [77], seed=5)[77], np.sort(order[:77]))


def test_balanced_subsets(data):
    pool = np.arange(600)
    s = nested_subsets(data, pool, [30, 90], seed=0, balanced=True)
    assert np.bincount(data[s[30]]).tolist() == [10, 10, 10]
    assert np.bincount(data[s[90]]).tolist() == [30, 30, 30]
    with pytest.raises(DataError, match="needs 134 images per class"):
        nested_subsets(data, pool, [400], seed=0, balanced=True, class_names=["a", "b", "c"])


def test_too_large_size_prints_pool_per_class(data):
    with pytest.raises(DataError) as e:
        nested_subsets(data, np.arange(100), [500], seed=0, class_names=["Normal", "COVID", "VP"])
    msg = str(e.value)
    assert "500" in msg and "100 images" in msg
    counts = np.bincount(data[:100], minlength=3)
    assert f"Normal: {counts[0]}, COVID: {counts[1]}, VP: {counts[2]}" in msg


def test_bad_sizes():
    with pytest.raises(DataError, match="positive"):
        nested_subsets([0, 1], [0, 1], [0], seed=0)
    with pytest.raises(DataError, match="larger than the 4 images"):
        split_holdout([0, 1, 0, 1], eval_size=10, val_size=0, seed=0)
