"""lungray.metrics: hand-worked cases (MONAI style) and agreement with scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lungray import metrics as M
from lungray.tracking import TEST_PREFIX, per_class_key

NAN = float("nan")


def assert_same(a, b, tol=1e-12):
    """Equal arrays where NaN == NaN."""
    np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=0, atol=tol, equal_nan=True)


# ---------------------------------------------------------------------------------------------
# hand-worked cases
# ---------------------------------------------------------------------------------------------

# Case A, binary. y = [0,0,1,1,1], P(class 1) = [.1,.6,.4,.8,.9] -> predictions [0,1,0,1,1].
A_Y = np.array([0, 0, 1, 1, 1])
A_P1 = np.array([0.1, 0.6, 0.4, 0.8, 0.9])
A_PROBS = np.stack([1 - A_P1, A_P1], axis=1)
A_PRED = np.array([0, 1, 0, 1, 1])

# Case B, 4 classes (the Kaggle folder order), Normal = index 2.
B_NAMES = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
B_Y = np.array([0, 0, 0, 1, 1, 2, 2, 3])
B_PRED = np.array([0, 2, 2, 1, 2, 2, 0, 3])

# Case C, 3 classes, class 2 absent from y_true and never predicted.
C_Y = np.array([0, 0, 1, 1])
C_PROBS = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.2, 0.55, 0.25], [0.1, 0.8, 0.1]])


def test_confusion_matrix_hand_cases():
    assert M.confusion_matrix(A_Y, A_PRED, 2).tolist() == [[1, 1], [1, 2]]
    assert M.confusion_matrix(B_Y, B_PRED, 4).tolist() == [[1, 0, 2, 0], [0, 1, 1, 0], [1, 0, 1, 0], [0, 0, 0, 1]]
    # fixed class order: a class absent everywhere still has its zero row and column
    assert M.confusion_matrix([0, 0], [0, 0], 3).tolist() == [[2, 0, 0], [0, 0, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="outside 0..1"):
        M.confusion_matrix([0, 2], [0, 1], 2)


def test_accuracy_and_balanced_accuracy_hand_cases():
    assert M.accuracy(A_Y, A_PRED) == 0.6
    assert M.balanced_accuracy(A_Y, A_PRED, 2) == pytest.approx((1 / 2 + 2 / 3) / 2, abs=1e-15)
    assert M.accuracy(B_Y, B_PRED) == 0.5
    assert M.balanced_accuracy(B_Y, B_PRED, 4) == pytest.approx((1 / 3 + 1 / 2 + 1 / 2 + 1) / 4, abs=1e-15)
    # always predicting the majority class: accuracy 0.75 but balanced accuracy 0.5
    assert M.accuracy([0, 0, 0, 1], [0, 0, 0, 0]) == 0.75
    assert M.balanced_accuracy([0, 0, 0, 1], [0, 0, 0, 0], 2) == 0.5
    # degenerate: empty set is undefined, a class absent from y_true is left out of the mean
    assert math.isnan(M.accuracy([], []))
    assert math.isnan(M.balanced_accuracy([], [], 2))
    assert M.balanced_accuracy([1, 1, 1], [1, 0, 1], 2) == pytest.approx(2 / 3, abs=1e-15)


def test_per_class_prf_hand_cases():
    p, r, f, s = M.per_class_prf(A_Y, A_PRED, 2)
    assert_same(p, [1 / 2, 2 / 3])
    assert_same(r, [1 / 2, 2 / 3])
    assert_same(f, [1 / 2, 2 / 3])
    assert s.tolist() == [2, 3]

    p, r, f, s = M.per_class_prf(B_Y, B_PRED, 4)
    assert_same(p, [1 / 2, 1.0, 1 / 4, 1.0])
    assert_same(r, [1 / 3, 1 / 2, 1 / 2, 1.0])
    assert_same(f, [2 / 5, 2 / 3, 1 / 3, 1.0])
    assert s.tolist() == [3, 2, 2, 1]

    # never-predicted class with support: precision 0 (not NaN), F1 0
    p, r, f, s = M.per_class_prf([0, 1, 1], [1, 1, 1], 2)
    assert_same(p, [0.0, 2 / 3])
    assert_same(r, [0.0, 1.0])
    assert_same(f, [0.0, 0.8])
    # class absent from y_true AND predictions: all NaN; absent but predicted: precision 0,
    # recall NaN, F1 0
    p, r, f, s = M.per_class_prf([0, 0], [0, 1], 3)
    assert_same(p, [1.0, 0.0, NAN])
    assert_same(r, [0.5, NAN, NAN])
    assert_same(f, [2 / 3, 0.0, NAN])
    assert s.tolist() == [2, 0, 0]


def test_macro_and_weighted_f1_hand_cases():
    assert M.macro_f1(A_Y, A_PRED, 2) == pytest.approx((1 / 2 + 2 / 3) / 2, abs=1e-15)
    assert M.weighted_f1(A_Y, A_PRED, 2) == pytest.approx((2 * 0.5 + 3 * 2 / 3) / 5, abs=1e-15)
    assert M.macro_f1(B_Y, B_PRED, 4) == pytest.approx((2 / 5 + 2 / 3 + 1 / 3 + 1) / 4, abs=1e-15)
    # macro over classes present in y_true: class 2 (absent, never predicted) does not count
    assert M.macro_f1(C_Y, C_PROBS.argmax(1), 3) == pytest.approx((2 / 3 + 0.8) / 2, abs=1e-15)
    assert math.isnan(M.macro_f1([], [], 2))
    assert math.isnan(M.weighted_f1([], [], 2))
    # a class only PREDICTED (never true) counts with F1 = 0, as in sklearn's f1_score(average="macro"):
    # y=[0,0,1,1], pred=[0,2,1,1]: F1 = 2/3 (class 0), 1 (class 1), 0 (class 2); class 3 absent
    assert M.macro_f1([0, 0, 1, 1], [0, 2, 1, 1], 4) == pytest.approx((2 / 3 + 1 + 0) / 3, abs=1e-15)


def test_macro_f1_equals_sklearn_on_many_small_four_class_cases():
    """Issue 11.6: 500 seeded random 4-class cases of 1-12 images, with classes missing from
    y_true, from y_pred or from both: lungray's macro F1 is sklearn's f1_score(average="macro")
    (default labels = the union of both arrays) for every zero_division, and equals the
    fixed-label form only with zero_division=nan."""
    import warnings

    from sklearn.metrics import f1_score

    rng = np.random.default_rng(11)
    n_true_only = n_pred_only = 0
    for _ in range(500):
        n = int(rng.integers(1, 13))
        y = rng.choice(4, size=n, p=rng.dirichlet(np.ones(4) * 0.5))
        pred = np.where(rng.random(n) < 0.5, y, rng.integers(0, 4, size=n))
        n_true_only += bool(set(y) - set(pred))
        n_pred_only += bool(set(pred) - set(y))
        ours = M.macro_f1(y, pred, 4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn's UndefinedMetricWarning
            for zd in ("warn", 0.0, 1.0, np.nan):
                assert ours == pytest.approx(f1_score(y, pred, average="macro", zero_division=zd), abs=1e-12), (y, pred, zd)
            assert ours == pytest.approx(f1_score(y, pred, average="macro", labels=[0, 1, 2, 3], zero_division=np.nan), abs=1e-12)
    # the random cases do exercise the cases the audit found (classes in only one of the arrays)
    assert n_true_only > 80 and n_pred_only > 80


def test_log_loss_hand_cases():
    expected = -(2 * math.log(0.9) + 2 * math.log(0.4) + math.log(0.8)) / 5
    assert M.log_loss(A_Y, A_PROBS) == pytest.approx(expected, abs=1e-15)
    assert M.log_loss([0, 1], [[0.5, 0.5], [0.2, 0.8]]) == pytest.approx(-(math.log(0.5) + math.log(0.8)) / 2)
    # a certain mistake is clipped to -log(eps), not infinite
    assert M.log_loss([0], [[0.0, 1.0]]) == pytest.approx(-math.log(np.finfo(np.float64).eps))
    assert M.log_loss([0], [[0.0, 1.0]], eps=1e-3) == pytest.approx(-math.log(1e-3))
    assert M.log_loss([1, 1], [[0.0, 1.0], [0.0, 1.0]]) == pytest.approx(-math.log(1 - np.finfo(np.float64).eps))
    assert math.isnan(M.log_loss([], np.zeros((0, 2))))
    with pytest.raises(ValueError, match="shape"):
        M.log_loss([0, 1], [[0.5, 0.5]])


def test_roc_auc_hand_cases():
    # 5 of the 6 (positive, negative) pairs are ordered correctly
    assert M.roc_auc_binary(A_Y, A_P1) == pytest.approx(5 / 6, abs=1e-15)
    # a tie counts one half: (0.5 + 1 + 2) / 4
    assert M.roc_auc_binary([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == 0.875
    assert M.roc_auc_binary([0, 1], [0.3, 0.3]) == 0.5
    assert M.roc_auc_binary([1, 0], [0.3, 0.7]) == 0.0
    # undefined with one class
    assert math.isnan(M.roc_auc_binary([1, 1, 1], [0.2, 0.5, 0.9]))
    # one-vs-rest over a fixed class set: class 2 absent -> NaN, macro over the 2 present
    per = M.roc_auc_ovr(C_Y, C_PROBS)
    assert_same(per, [1.0, 0.75, NAN])
    assert M.macro_auc(per) == (0.875, 2)
    mean, n = M.macro_auc([NAN, NAN])
    assert math.isnan(mean) and n == 0


def test_sensitivity_specificity_and_missed_as_normal_hand_cases():
    assert M.sensitivity_specificity(A_Y, A_PRED, positive=1) == (2 / 3, 1 / 2)
    assert M.sensitivity_specificity(A_Y, A_PRED, positive=0) == (1 / 2, 2 / 3)
    # abnormal (COVID, LO, VP) vs Normal: 3 of 6 abnormal detected, 1 of 2 Normal kept Normal
    assert M.sensitivity_specificity(B_Y, B_PRED, positive=[0, 1, 3]) == (0.5, 0.5)
    # COVID vs rest: 1 of 3 COVID found; 4 of the 5 others not called COVID
    assert M.sensitivity_specificity(B_Y, B_PRED, positive=0) == (1 / 3, 4 / 5)
    sens, spec = M.sensitivity_specificity([1, 1, 1], [1, 0, 1], positive=1)
    assert sens == pytest.approx(2 / 3) and math.isnan(spec)
    assert_same(M.missed_as_normal(B_Y, B_PRED, normal=2, n_classes=4), [2, 1, NAN, 0])
    assert_same(M.missed_as_normal([0, 1], [0, 1], normal=1, n_classes=2), [0, NAN])


def test_classification_report_four_class_hand_case():
    probs = np.eye(4)[B_PRED] * 0.7 + 0.075  # arg-max = B_PRED, rows sum to 1
    flat, per_class, cm = M.classification_report(B_Y, probs, B_NAMES)
    assert cm.tolist() == M.confusion_matrix(B_Y, B_PRED, 4).tolist()
    assert flat["accuracy"] == 0.5
    assert flat["sensitivity"] == 0.5 and flat["specificity"] == 0.5  # abnormal vs Normal
    assert flat["missed_as_normal__COVID"] == 2.0
    assert flat["missed_as_normal__Lung_Opacity"] == 1.0
    assert flat["missed_as_normal__Viral Pneumonia"] == 0.0
    assert "missed_as_normal__Normal" not in flat
    assert flat["precision__Normal"] == 0.25 and flat["recall__COVID"] == pytest.approx(1 / 3)
    assert flat["f1__COVID"] == pytest.approx(0.4)
    assert flat["auc_n_classes"] == 4.0 and flat["n"] == 8.0
    assert flat["log_loss"] == pytest.approx(-np.mean(np.log(probs[np.arange(8), B_Y])))
    assert list(per_class.columns) == ["class", "precision", "recall", "f1", "support", "auc", "missed_as_normal"]
    assert per_class["class"].tolist() == list(B_NAMES)
    assert per_class["support"].tolist() == [3, 2, 2, 1]
    assert_same(per_class["missed_as_normal"], [2, 1, NAN, 0])
    # explicit positive class by name or index
    flat_c, _, _ = M.classification_report(B_Y, probs, B_NAMES, positive="COVID")
    assert (flat_c["sensitivity"], flat_c["specificity"]) == (1 / 3, 4 / 5)
    flat_i, _, _ = M.classification_report(B_Y, probs, B_NAMES, positive=0)
    assert flat_i["sensitivity"] == flat_c["sensitivity"]
    with pytest.raises(ValueError, match="valid choices: COVID, Lung_Opacity, Normal, Viral Pneumonia"):
        M.classification_report(B_Y, probs, B_NAMES, positive="Covid")


def test_classification_report_binary_and_degenerate():
    flat, per_class, cm = M.classification_report(A_Y, A_PROBS, ("Normal", "COVID"))
    assert flat["auc"] == pytest.approx(5 / 6) and flat["auc_n_classes"] == 2.0
    # default positive = the non-Normal class (index 1 here)
    assert (flat["sensitivity"], flat["specificity"]) == (2 / 3, 1 / 2)
    assert flat["missed_as_normal__COVID"] == 1.0
    # no Normal class, binary: positive = class 1; no missed_as_normal keys
    flat2, _, _ = M.classification_report(A_Y, A_PROBS, ("rest", "COVID"), normal="Normal")
    assert (flat2["sensitivity"], flat2["specificity"]) == (2 / 3, 1 / 2)
    assert not any(k.startswith("missed_as_normal") for k in flat2)
    # a class absent from the held-out set: its AUC is NaN, macro over the present 2 of 3
    flat3, pc3, _ = M.classification_report(C_Y, C_PROBS, ("a", "b", "c"), normal=None)
    assert flat3["auc"] == 0.875 and flat3["auc_n_classes"] == 2.0
    assert math.isnan(flat3["auc__c"]) and math.isnan(flat3["recall__c"])
    assert math.isnan(flat3["sensitivity"])  # 3 classes, no Normal, no positive given
    # single-class held-out set: binary AUC undefined
    flat4, _, _ = M.classification_report([1, 1], [[0.2, 0.8], [0.6, 0.4]], ("Normal", "COVID"))
    assert math.isnan(flat4["auc"]) and flat4["auc_n_classes"] == 0.0
    assert flat4["sensitivity"] == 0.5 and math.isnan(flat4["specificity"])


def test_classification_report_keys_match_tracking_schema():
    names = ("Normal", "Viral Pneumonia", "a/b?")
    rng = np.random.default_rng(0)
    y = np.array([0, 1, 2, 0, 1, 2])
    probs = rng.dirichlet(np.ones(3), size=6)
    flat, _, _ = M.classification_report(y, probs, names)
    logged = {TEST_PREFIX + k for k in flat}  # what run_trial hands to MLflow
    for metric in ("precision", "recall", "f1"):
        for c in names:
            assert per_class_key(metric, c) in logged
    assert per_class_key("f1", "a/b?") == "test_f1__a/b_"
    assert "missed_as_normal__a/b_" in flat and "missed_as_normal__Viral Pneumonia" in flat
    for key in ("accuracy", "balanced_accuracy", "log_loss", "macro_f1", "weighted_f1", "auc", "sensitivity", "specificity"):
        assert key in flat and isinstance(flat[key], float)


# ---------------------------------------------------------------------------------------------
# agreement with scikit-learn on random predictions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k,seed,decimals", [(2, 0, None), (2, 1, 1), (4, 2, None), (4, 3, 1), (3, 4, 2)])
def test_agrees_with_sklearn_on_random_predictions(k, seed, decimals):
    from sklearn import metrics as skm

    rng = np.random.default_rng(seed)
    n = 150
    y = rng.integers(0, k, size=n)
    y[:k] = np.arange(k)  # every class present (sklearn's multi-class AUC requires it)
    probs = rng.dirichlet(np.ones(k), size=n)
    if decimals is not None:  # coarse probabilities: many ties in the AUC
        probs = np.round(probs, decimals)
        probs[:, -1] = 1.0 - probs[:, :-1].sum(axis=1)
        probs = np.clip(probs, 0.0, 1.0)
        probs = probs / probs.sum(axis=1, keepdims=True)
    pred = probs.argmax(1)
    labels = list(range(k))

    assert M.accuracy(y, pred) == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert M.balanced_accuracy(y, pred, k) == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-12)
    assert M.log_loss(y, probs) == pytest.approx(skm.log_loss(y, probs, labels=labels), abs=1e-12)
    np.testing.assert_array_equal(M.confusion_matrix(y, pred, k), skm.confusion_matrix(y, pred, labels=labels))
    p, r, f, s = M.per_class_prf(y, pred, k)
    sp, sr, sf, ss = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    assert_same(p, sp)
    assert_same(r, sr)
    assert_same(f, sf)
    np.testing.assert_array_equal(s, ss)
    assert M.macro_f1(y, pred, k) == pytest.approx(skm.f1_score(y, pred, average="macro", labels=labels), abs=1e-12)
    assert M.weighted_f1(y, pred, k) == pytest.approx(skm.f1_score(y, pred, average="weighted", labels=labels), abs=1e-12)
    per = M.roc_auc_ovr(y, probs)
    for j in range(k):
        assert per[j] == pytest.approx(skm.roc_auc_score(y == j, probs[:, j]), abs=1e-12)
    flat, _, _ = M.classification_report(y, probs, [f"c{j}" for j in range(k)], normal=None)
    if k == 2:
        assert flat["auc"] == pytest.approx(skm.roc_auc_score(y, probs[:, 1]), abs=1e-12)
        sens, spec = M.sensitivity_specificity(y, pred, 1)
        assert sens == pytest.approx(skm.recall_score(y, pred, pos_label=1), abs=1e-12)
        assert spec == pytest.approx(skm.recall_score(y, pred, pos_label=0), abs=1e-12)
    else:
        assert flat["auc"] == pytest.approx(
            skm.roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=labels), abs=1e-12
        )
