"""Splits and nested subsets: exact counts, nested, stratified, per-seed deterministic, disjoint
from the evaluation set, patient-disjoint, hand-worked indices, and the too-large-size errors."""

from __future__ import annotations

import numpy as np
import pytest

from lungray.data.splits import nested_subsets, pool_order, resolve_count, split_holdout
from lungray.errors import DataError


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(42)
    y = np.repeat([0, 1, 2], [300, 200, 100])
    rng.shuffle(y)
    return y


@pytest.fixture(scope="module")
def grouped():
    """150 patients with 1-5 images each; a patient has one label."""
    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 6, 150)
    patients = np.repeat(np.arange(150), sizes)
    y = np.repeat(rng.integers(0, 2, 150), sizes)
    return y, patients


# -- held-out splits ---------------------------------------------------------------------------


def test_holdout_counts_are_exact_and_stratified(data):
    e, v, p = split_holdout(data, eval_size=120, val_size=0.1, seed=0)
    assert len(e) == 120 and len(v) == 48 and len(p) == 600 - 120 - 48
    # 300/200/100 of 600 -> exactly 60/40/20 of 120; val 10% of the remaining 480 -> 24/16/8
    assert np.bincount(data[e]).tolist() == [60, 40, 20]
    assert np.bincount(data[v]).tolist() == [24, 16, 8]
    assert len(np.intersect1d(e, v)) == len(np.intersect1d(e, p)) == len(np.intersect1d(v, p)) == 0
    assert np.array_equal(np.sort(np.concatenate([e, v, p])), np.arange(600))
    for a in (e, v, p):
        assert np.array_equal(a, np.sort(a)) and a.dtype == np.int64


def test_holdout_largest_remainder_quotas():
    # 7 / 2 / 1 images, eval 5: exact shares 3.5 / 1.0 / 0.5 -> floors 3/1/0, the remaining one to
    # the largest remainder (class 0 wins the 0.5 tie by index) -> 4 / 1 / 0
    y = np.array([0] * 7 + [1] * 2 + [2])
    for seed in range(5):
        e, _, _ = split_holdout(y, eval_size=5, val_size=0, seed=seed)
        assert np.bincount(y[e], minlength=3).tolist() == [4, 1, 0]


def test_holdout_fraction_rounding_and_determinism(data):
    a = split_holdout(data, eval_size=0.25, val_size=0, seed=3)
    b = split_holdout(data, eval_size=0.25, val_size=0, seed=3)
    c = split_holdout(data, eval_size=0.25, val_size=0, seed=4)
    assert len(a[0]) == 150 and len(a[1]) == 0
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    # fractions round half up: 0.25 of 10 is 2.5 -> 3 (banker's rounding would give 2)
    assert resolve_count(0.25, 10, "eval_size") == 3
    assert resolve_count(0.05, 10, "eval_size") == 1
    assert resolve_count(7.0, 10, "eval_size") == 7


def test_eval_set_does_not_depend_on_val_size(data):
    e1, v1, _ = split_holdout(data, eval_size=100, val_size=0, seed=9)
    e2, v2, _ = split_holdout(data, eval_size=100, val_size=60, seed=9)
    assert np.array_equal(e1, e2)
    assert len(v1) == 0 and len(v2) == 60 and not np.intersect1d(v2, e2).size


def test_holdout_hand_worked_case():
    # two classes, 4 images each, eval 2 + val 2: exactly one of each class per split
    y = [0, 0, 0, 0, 1, 1, 1, 1]
    e, v, p = split_holdout(y, eval_size=2, val_size=2, seed=0)
    assert sorted(np.array(y)[e].tolist()) == [0, 1]
    assert sorted(np.array(y)[v].tolist()) == [0, 1]
    assert sorted(np.array(y)[p].tolist()) == [0, 0, 1, 1]


def test_holdout_hand_worked_groups_exact_indices():
    # class 0: patient A = rows 0-3, patient B = rows 4-5; class 1: C = rows 6-7, D = rows 8-9.
    # eval 3 of 10: shares 1.8 / 1.2 -> quotas 2 / 1. Class 0: A (4 images) would leave the
    # count 2 away from the quota (no better than 0), B (2 images) hits it -> B. Class 1: a
    # 2-image patient is 1 away from the quota, as far as taking none -> nobody. So whatever the
    # seed, the evaluation set is exactly patient B.
    y = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    g = ["A", "A", "A", "A", "B", "B", "C", "C", "D", "D"]
    for seed in range(8):
        e, v, p = split_holdout(y, eval_size=3, val_size=0, seed=seed, groups=g)
        assert e.tolist() == [4, 5]
        assert v.tolist() == []
        assert p.tolist() == [0, 1, 2, 3, 6, 7, 8, 9]


def test_patient_disjoint_and_close_to_quota(grouped):
    y, patients = grouped
    e, v, p = split_holdout(y, eval_size=100, val_size=40, seed=0, groups=patients)
    pe, pv, pp = set(patients[e]), set(patients[v]), set(patients[p])
    assert not (pe & pv) and not (pe & pp) and not (pv & pp)
    assert len(pe | pv | pp) == 150
    # each class within half a patient (2.5 images for patients of <= 5) of its integer quota,
    # which is itself within 1 of the exact share
    share = np.bincount(y) / len(y)
    for idx, n in ((e, 100), (v, 40)):
        got = np.bincount(y[idx], minlength=2)
        assert np.all(np.abs(got - n * share) <= 3.5), (got, n * share)


def test_too_large_holdout_and_empty_pool():
    with pytest.raises(DataError, match="eval_size = 10 is larger than the 4 images"):
        split_holdout([0, 1, 0, 1], eval_size=10, val_size=0, seed=0)
    with pytest.raises(DataError, match="leave no training pool out of 4 images"):
        split_holdout([0, 1, 0, 1], eval_size=2, val_size=2, seed=0)
    with pytest.raises(DataError, match="count >= 0 or a fraction"):
        split_holdout([0, 1, 0, 1], eval_size=-1, val_size=0, seed=0)
    with pytest.raises(DataError, match="one group per row"):
        split_holdout([0, 1, 0, 1], eval_size=1, val_size=0, seed=0, groups=["a", "b"])


# -- nested subsets ----------------------------------------------------------------------------


def test_nested_stratified_deterministic(data):
    e, _, pool = split_holdout(data, eval_size=120, val_size=0, seed=0)
    sizes = [30, 60, 150, 480]
    s = nested_subsets(data, pool, sizes, seed=7)
    again = nested_subsets(data, pool, list(reversed(sizes)), seed=7)
    other = nested_subsets(data, pool, sizes, seed=8)
    for small, big in zip(sizes, sizes[1:]):
        assert set(s[small]) < set(s[big])
    for n in sizes:
        assert len(s[n]) == n
        assert np.array_equal(s[n], again[n])  # independent of which sizes were asked for
        assert set(s[n]) <= set(pool) and not np.intersect1d(s[n], e).size
        expected = n * np.bincount(data[pool]) / len(pool)
        assert np.all(np.abs(np.bincount(data[s[n]], minlength=3) - expected) <= 1)
        assert not np.array_equal(s[n], other[n]) or n == len(pool)
    assert len(np.intersect1d(s[30], other[30])) < 30


def test_every_prefix_is_stratified(data):
    pool = np.arange(0, 600, 2)
    order = pool_order(data, pool, seed=11)
    assert np.array_equal(np.sort(order), pool)
    share = np.bincount(data[pool], minlength=3) / len(pool)
    counts = np.cumsum(np.eye(3, dtype=int)[data[order]], axis=0)
    n = np.arange(1, len(order) + 1)[:, None]
    assert np.all(np.abs(counts - n * share) <= 1)


def test_single_size_call_equals_prefix_of_order(data):
    pool = np.arange(600)
    order = pool_order(data, pool, seed=5)
    assert np.array_equal(np.sort(order), pool)
    assert np.array_equal(nested_subsets(data, pool, [77], seed=5)[77], np.sort(order[:77]))


def test_nested_hand_worked_groups_exact_indices():
    # pool: class 0 = patient A (rows 0, 1, 2) + patient B (row 3); class 1 = patient C (4, 5).
    # Class 0's patients are shuffled; keys are the midpoints of each patient's share of its class:
    #   A first: A 1.5/4 = .375, B 3.5/4 = .875, C 1/2 = .5 -> order A C B = rows 0 1 2 4 5 3
    #   B first: B 0.5/4 = .125, A 2.5/4 = .625, C .5      -> order B C A = rows 3 4 5 0 1 2
    # and a size-n subset is the first n rows (the last patient trimmed, in row order).
    y = [0, 0, 0, 0, 1, 1]
    g = ["A", "A", "A", "B", "C", "C"]
    expected = {
        "ACB": {1: [0], 2: [0, 1], 4: [0, 1, 2, 4], 5: [0, 1, 2, 4, 5]},
        "BCA": {1: [3], 2: [3, 4], 4: [0, 3, 4, 5], 5: [0, 1, 3, 4, 5]},
    }
    seen = set()
    for seed in range(12):
        order = pool_order(y, np.arange(6), seed=seed, groups=g).tolist()
        which = {(0, 1, 2, 4, 5, 3): "ACB", (3, 4, 5, 0, 1, 2): "BCA"}[tuple(order)]
        seen.add(which)
        got = nested_subsets(y, np.arange(6), [1, 2, 4, 5], seed=seed, groups=g)
        assert {k: v.tolist() for k, v in got.items()} == expected[which]
    assert seen == {"ACB", "BCA"}  # the seed really matters


def test_group_subsets_exact_counts_and_whole_patients(grouped):
    y, patients = grouped
    _, _, pool = split_holdout(y, eval_size=100, val_size=0, seed=0, groups=patients)
    sizes = [10, 37, 100, 250]
    subs = nested_subsets(y, pool, sizes, seed=3, groups=patients)
    order = pool_order(y, pool, seed=3, groups=patients)
    full = np.bincount(patients, minlength=150)
    share = np.bincount(y[pool], minlength=2) / len(pool)
    for n in sizes:
        s = subs[n]
        assert len(s) == n
        pids, cnt = np.unique(patients[s], return_counts=True)
        partial = pids[cnt < full[pids]]
        # whole patients, except at most one: the last patient of the prefix, trimmed
        assert len(partial) <= 1
        if len(partial):
            assert partial[0] == patients[order[n - 1]]
        # stratified within one patient (<= 5 images)
        assert np.all(np.abs(np.bincount(y[s], minlength=2) - n * share) <= 5)
    # patients adjacent in the ordering: each patient's rows form one contiguous run
    runs = patients[order][np.r_[True, np.diff(patients[order]) != 0]]
    assert len(runs) == len(set(runs.tolist()))


def test_balanced_subsets(data):
    pool = np.arange(600)
    s = nested_subsets(data, pool, [30, 90, 31], seed=0, balanced=True)
    assert np.bincount(data[s[30]]).tolist() == [10, 10, 10]
    assert np.bincount(data[s[90]]).tolist() == [30, 30, 30]
    assert sorted(np.bincount(data[s[31]]).tolist()) == [10, 10, 11]
    # the largest balanced size is 3 x the smallest class (100)
    assert np.bincount(data[nested_subsets(data, pool, [300], seed=0, balanced=True)[300]]).tolist() == [100, 100, 100]
    with pytest.raises(DataError, match=r"needs 134 images per class but the pool has a: 300, b: 200, c: 100 \(largest balanced size 300\)"):
        nested_subsets(data, pool, [400], seed=0, balanced=True, class_names=["a", "b", "c"])


def test_balanced_with_groups(grouped):
    y, patients = grouped
    pool = np.arange(len(y))
    s = nested_subsets(y, pool, [60], seed=2, groups=patients, balanced=True)[60]
    c = np.bincount(y[s], minlength=2)
    assert abs(int(c[0]) - int(c[1])) <= 5  # balanced within one patient


def test_too_large_size_prints_pool_per_class(data):
    with pytest.raises(DataError) as e:
        nested_subsets(data, np.arange(100), [50, 500], seed=0, class_names=["Normal", "COVID", "VP"])
    msg = str(e.value)
    counts = np.bincount(data[:100], minlength=3)
    assert msg.startswith("training size 500 is larger than the training pool of 100 images")
    assert f"(Normal: {counts[0]}, COVID: {counts[1]}, VP: {counts[2]})" in msg
    assert "data.eval_size" in msg
    # without class names, the classes are numbered
    with pytest.raises(DataError, match=r"class 0: \d+, class 1: \d+, class 2: \d+"):
        nested_subsets(data, np.arange(10), [11], seed=0)


def test_bad_sizes_and_duplicates():
    with pytest.raises(DataError, match="positive whole counts"):
        nested_subsets([0, 1], [0, 1], [0], seed=0)
    with pytest.raises(DataError, match="positive whole counts"):
        nested_subsets([0, 1], [0, 1], [1.5], seed=0)
    with pytest.raises(DataError, match="positive whole counts"):
        nested_subsets([0, 1], [0, 1], [True], seed=0)
    with pytest.raises(DataError, match="seeds must be integers >= 0"):
        nested_subsets([0, 1], [0, 1], [1], seed=-1)
    assert list(nested_subsets([0, 1, 0, 1], [0, 1, 2, 3], [2, 2, 1], seed=0)) == [2, 1]


def test_phantom_patients_are_split_disjointly():
    from lungray.data.phantom import generate_phantom

    ph = generate_phantom(90, resolution=8)
    e, v, p = split_holdout(ph.labels, eval_size=30, val_size=10, seed=0, groups=ph.patient_ids)
    assert not set(ph.patient_ids[e]) & set(ph.patient_ids[np.r_[v, p]])
    assert not set(ph.patient_ids[v]) & set(ph.patient_ids[p])
    sub = nested_subsets(ph.labels, p, [20], seed=0, groups=ph.patient_ids, class_names=ph.class_names)[20]
    assert len(sub) == 20 and set(sub) <= set(p)


def test_duplicate_clusters_are_groups_of_every_split():
    """Issue 11.1: duplicate clusters (union-find over near-duplicate pairs) merged with patient
    ids are the split groups, so no cluster or patient straddles eval/val/pool, and the nested
    subsets stay nested, stratified and keep each cluster whole except the last one cut."""
    import pandas as pd

    from lungray.data.leakage import connected_groups

    rng = np.random.default_rng(7)
    n = 400
    patients = np.where(rng.random(n) < 0.5, np.arange(n) // 2, -1 - np.arange(n))  # half the rows in 2-image patients
    # 40 clusters of copies: chains (a, b), (b, c), ..., some linking two patients
    pairs, used = [], set()
    for _ in range(40):
        k = int(rng.integers(2, 5))
        members = [int(r) for r in rng.choice(n, k, replace=False) if int(r) not in used]
        used |= set(members)
        pairs += list(zip(members[:-1], members[1:]))
    p = pd.DataFrame({"row_a": [min(a, b) for a, b in pairs], "row_b": [max(a, b) for a, b in pairs]})
    groups = connected_groups(n, p, patients.astype(str))
    # labels constant within a final group (a patient and its copies share the finding)
    _, inv = np.unique(groups, return_inverse=True)
    y = rng.integers(0, 2, inv.max() + 1)[inv]
    e, v, pool = split_holdout(y, eval_size=100, val_size=40, seed=3, groups=groups)
    side = np.empty(n, dtype=object)
    side[e], side[v], side[pool] = "eval", "val", "pool"
    for a, b in pairs:
        assert side[a] == side[b], (a, b)
    for pid in np.unique(patients):
        assert len(set(side[patients == pid])) == 1
    subs = nested_subsets(y, pool, [40, 80, 160], seed=1, groups=groups)
    assert set(subs[40]) <= set(subs[80]) <= set(subs[160])
    for s, rows in subs.items():
        share = np.bincount(y[rows], minlength=2)[1] / s
        assert abs(share - np.bincount(y[pool], minlength=2)[1] / len(pool)) < 0.08
        cut = [g for g in np.unique(groups[rows]) if (groups[pool] == g).sum() != (groups[rows] == g).sum()]
        assert len(cut) <= 1  # whole groups, except possibly the last one trimmed to hit s exactly
