"""Classification metrics as pure NumPy functions (the MONAI ``metrics/rocauc.py`` style).

Every function takes plain arrays, returns plain numbers/arrays and touches no global state,
so the same code scores a validation epoch, the held-out evaluation and the report's
bootstrap resamples, and each one is tested against hand-worked cases and scikit-learn.

Conventions, chosen for small and degenerate held-out sets (the studies of
``shared/PROTOCOLS.md`` report single runs on test sets as small as 57 images, section 2):

* Classes are always the FIXED set ``0..n_classes-1`` of the study, never "whatever labels occur
  in this batch", so a per-class value always means the same class.
* Undefined values are ``NaN`` and never silently 0 or 1: the ROC-AUC of a class absent from
  ``y_true`` (no positives or no negatives), the recall of a class with no support, accuracy of
  an empty set. Balanced accuracy and macro AUC average over the classes PRESENT in ``y_true``;
  macro F1 over the classes in ``y_true`` or ``y_pred`` (exactly scikit-learn's
  ``f1_score(average="macro")``: a class only predicted scores F1 = 0);
  :func:`classification_report` reports how many classes entered the
  AUC macro (``auc_n_classes``) so a macro over 3 of 4 classes is visible, not hidden (the
  "averaging AUC over whichever classes happen to be present" anti-pattern of
  ``shared/STYLE.md``).
* Precision of a class that was never predicted (but has support) is 0, as scikit-learn's
  ``zero_division=0``: the model failed that class, it did not abstain.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence, Union

import numpy as np

__all__ = [
    "accuracy",
    "balanced_accuracy",
    "log_loss",
    "confusion_matrix",
    "per_class_prf",
    "macro_f1",
    "weighted_f1",
    "roc_auc_binary",
    "roc_auc_ovr",
    "macro_auc",
    "sensitivity_specificity",
    "missed_as_normal",
    "classification_report",
]


# ------------------------------------------------------------------------------------------
# input helpers
# ------------------------------------------------------------------------------------------


def _labels(y: Iterable[int], name: str = "y_true") -> np.ndarray:
    a = np.asarray(y)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class indices, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.equal(np.mod(a, 1), 0)):
            raise ValueError(f"{name} must hold integer class indices")
    return a.astype(np.int64, copy=False)


def _check_range(y: np.ndarray, n_classes: int, name: str) -> None:
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"{name} holds class indices outside 0..{n_classes - 1}")


def _probs(probs: np.ndarray, n: int) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != n:
        raise ValueError(f"probs must have shape (n_samples={n}, n_classes), got {p.shape}")
    return p


# ------------------------------------------------------------------------------------------
# label-based metrics
# ------------------------------------------------------------------------------------------


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Fraction of correct predictions; NaN for an empty set.

    >>> accuracy([0, 1, 1, 0], [0, 1, 0, 0])
    0.75
    """
    t, p = _labels(y_true), _labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length ({t.size} vs {p.size})")
    return float(np.mean(t == p)) if t.size else float("nan")


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) int64 counts, rows = true class, columns = predicted class.

    The class order is fixed (``0..n_classes-1``), so matrices of different trials add up and
    a class missing from a small test set still has its (zero) row.

    >>> confusion_matrix([0, 0, 1, 2], [0, 1, 1, 1], 3).tolist()
    [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    """
    t, p = _labels(y_true), _labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length ({t.size} vs {p.size})")
    _check_range(t, n_classes, "y_true")
    _check_range(p, n_classes, "y_pred")
    cm = np.bincount(t * n_classes + p, minlength=n_classes * n_classes)
    return cm.reshape(n_classes, n_classes).astype(np.int64)


def per_class_prf(
    y_true: Sequence[int], y_pred: Sequence[int], n_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall, F1 (float arrays) and support (int array).

    precision = TP / (TP + FP), 0 when the class was never predicted but has support, NaN when
    the class neither occurs nor is predicted; recall = TP / (TP + FN), NaN when the class has
    no support; F1 = 2 TP / (2 TP + FP + FN) (the harmonic mean, defined as 0 when precision
    and recall are both 0), NaN when the class neither occurs nor is predicted.

    >>> p, r, f, s = per_class_prf([0, 0, 1, 1], [0, 1, 1, 1], 3)
    >>> p.tolist(), r.tolist(), s.tolist()
    ([1.0, 0.6666666666666666, nan], [0.5, 1.0, nan], [2, 2, 0])
    """
    cm = confusion_matrix(y_true, y_pred, n_classes)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    fp = predicted - tp
    fn = support - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
        recall = np.where(support > 0, tp / np.maximum(support, 1), np.nan)
        denom = 2 * tp + fp + fn
        f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan)
    absent = (support == 0) & (predicted == 0)
    precision = np.where(absent, np.nan, precision)
    return precision, recall, f1, support.astype(np.int64)


def balanced_accuracy(y_true: Sequence[int], y_pred: Sequence[int], n_classes: Optional[int] = None) -> float:
    """Mean recall over the classes present in ``y_true`` (scikit-learn's definition).

    On the imbalanced 4-class set (PROTOCOLS.md section 4: 10,192 Normal vs 1,345 Viral
    Pneumonia) plain accuracy rewards predicting Normal; this does not.

    >>> balanced_accuracy([0, 0, 0, 1], [0, 0, 0, 0], 2)
    0.5
    """
    t, p = _labels(y_true), _labels(y_pred, "y_pred")
    if n_classes is None:
        n_classes = int(max(t.max(initial=-1), p.max(initial=-1)) + 1)
    if not t.size:
        return float("nan")
    _, recall, _, support = per_class_prf(t, p, n_classes)
    return float(np.mean(recall[support > 0]))


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> float:
    """Unweighted mean F1 over the classes present in ``y_true`` OR ``y_pred`` (NaN if none).

    This is exactly scikit-learn's ``f1_score(y_true, y_pred, average="macro")`` (whose default
    labels are the union of both arrays), for every ``zero_division`` setting: a class in the
    union has ``TP + FP + FN > 0``, so its F1 is defined, and a class only predicted (a false
    alarm class) counts with F1 = 0. It also equals ``f1_score(..., labels=range(n_classes),
    zero_division=np.nan)``. It differs from ``labels=range(n_classes)`` with
    ``zero_division=0`` (or 1), which adds a 0 (or 1) for each class absent from both arrays;
    lungray leaves such a class out (its F1 is undefined, not bad).

    >>> macro_f1([0, 0, 1, 1], [0, 2, 1, 1], 4)  # class 2 only predicted: F1 0; class 3 absent
    0.5555555555555555
    """
    _, _, f1, _ = per_class_prf(y_true, y_pred, n_classes)
    present = ~np.isnan(f1)  # TP + FP + FN > 0: in y_true or in y_pred
    return float(np.mean(f1[present])) if present.any() else float("nan")


def weighted_f1(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> float:
    """Support-weighted mean F1 (NaN for an empty set)."""
    _, _, f1, support = per_class_prf(y_true, y_pred, n_classes)
    if support.sum() == 0:
        return float("nan")
    present = support > 0
    return float(np.sum(f1[present] * support[present]) / support.sum())


def sensitivity_specificity(
    y_true: Sequence[int], y_pred: Sequence[int], positive: Union[int, Sequence[int]]
) -> tuple[float, float]:
    """Sensitivity and specificity of "positive" vs the rest.

    ``positive`` is one class index or a collection of indices (e.g. every abnormal class, for
    "abnormal vs Normal" screening on the 4-class set). A prediction counts as positive when it
    names ANY positive class, so a COVID image called Viral Pneumonia is still a detected
    abnormality. Sensitivity is NaN without positives, specificity NaN without negatives.

    >>> sensitivity_specificity([1, 1, 0, 0, 0], [1, 0, 0, 0, 1], positive=1)
    (0.5, 0.6666666666666666)
    """
    t, p = _labels(y_true), _labels(y_pred, "y_pred")
    pos = np.atleast_1d(np.asarray(positive, dtype=np.int64))
    tpos, ppos = np.isin(t, pos), np.isin(p, pos)
    n_pos, n_neg = int(tpos.sum()), int((~tpos).sum())
    sens = float(np.sum(tpos & ppos) / n_pos) if n_pos else float("nan")
    spec = float(np.sum(~tpos & ~ppos) / n_neg) if n_neg else float("nan")
    return sens, spec


def missed_as_normal(y_true: Sequence[int], y_pred: Sequence[int], normal: int, n_classes: int) -> np.ndarray:
    """Per class, how many images of that class were predicted as Normal.

    The 4-class study's clinical criterion (PROTOCOLS.md section 4: "images misclassified as
    Normal (COVID / Viral Pneumonia / Lung Opacity)": ResNet50 3/6/54, logistic regression
    214/25/197): a sick patient sent home. It is the ``normal`` column of the confusion matrix;
    the Normal class's own entry is NaN (a Normal image called Normal is no miss), so the result
    is a float array.

    >>> missed_as_normal([0, 0, 1, 2, 2], [2, 2, 1, 2, 0], normal=2, n_classes=3).tolist()
    [2.0, 0.0, nan]
    """
    cm = confusion_matrix(y_true, y_pred, n_classes)
    out = cm[:, normal].astype(np.float64)
    out[normal] = np.nan
    return out


# ------------------------------------------------------------------------------------------
# probability-based metrics
# ------------------------------------------------------------------------------------------


def log_loss(y_true: Sequence[int], probs: np.ndarray, eps: Optional[float] = None) -> float:
    """Mean negative log-likelihood of the true class (categorical cross-entropy).

    Probabilities are clipped to ``[eps, 1 - eps]`` (default: machine epsilon of float64, as
    scikit-learn) so one confident mistake costs ``-log(eps)`` ~ 36 rather than infinity; rows
    are NOT renormalised (pass softmax outputs). The training-size study reports validation
    loss as this quantity (PROTOCOLS.md section 1). NaN for an empty set.

    >>> round(log_loss([0, 1], [[0.5, 0.5], [0.2, 0.8]]), 6)
    0.458145
    """
    t = _labels(y_true)
    p = _probs(probs, t.size)
    _check_range(t, p.shape[1], "y_true")
    if not t.size:
        return float("nan")
    eps = float(np.finfo(np.float64).eps) if eps is None else float(eps)
    pt = np.clip(p[np.arange(t.size), t], eps, 1 - eps)
    return float(-np.mean(np.log(pt)))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (for the Mann-Whitney AUC)."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(x.size, dtype=np.float64)
    # boundaries of tie blocks in the sorted array
    starts = np.r_[0, np.flatnonzero(xs[1:] != xs[:-1]) + 1]
    ends = np.r_[starts[1:], x.size]
    avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def roc_auc_binary(y_true01: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve for binary labels; NaN unless both labels occur.

    Computed as the Mann-Whitney statistic with ties counted one half, which equals the
    trapezoidal area under scikit-learn's ROC curve.

    >>> roc_auc_binary([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    t = np.asarray(y_true01).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if t.shape != s.shape or t.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D of equal length, got {t.shape} and {s.shape}")
    n_pos = int(t.sum())
    n_neg = t.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    return float((ranks[t].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc_ovr(y_true: Sequence[int], probs: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC-AUC per class of the fixed class set (NaN for absent classes).

    A class absent from ``y_true`` (or the only class present) has no defined AUC and gets NaN
    instead of being dropped, so position k is always class k.
    """
    t = _labels(y_true)
    p = _probs(probs, t.size)
    _check_range(t, p.shape[1], "y_true")
    return np.array([roc_auc_binary(t == k, p[:, k]) for k in range(p.shape[1])], dtype=np.float64)


def macro_auc(per_class_auc: Sequence[float]) -> tuple[float, int]:
    """(mean of the defined per-class AUCs, how many classes entered the mean).

    >>> macro_auc([0.9, float("nan"), 0.7])
    (0.8, 2)
    """
    a = np.asarray(per_class_auc, dtype=np.float64)
    ok = ~np.isnan(a)
    n = int(ok.sum())
    return (float(np.mean(a[ok])) if n else float("nan")), n


# ------------------------------------------------------------------------------------------
# the report
# ------------------------------------------------------------------------------------------


def _class_index(value: Union[int, str], class_names: Sequence[str], what: str) -> int:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if not 0 <= int(value) < len(class_names):
            raise ValueError(f"{what} index {value} is outside 0..{len(class_names) - 1}")
        return int(value)
    if value in class_names:
        return list(class_names).index(value)
    raise ValueError(f"{what} '{value}' is not a class; valid choices: {', '.join(class_names)}")


def classification_report(
    y_true: Sequence[int],
    probs: np.ndarray,
    class_names: Sequence[str],
    positive: Optional[Union[int, str]] = None,
    normal: Optional[str] = "Normal",
):
    """Every metric of one evaluation: ``(flat dict, per-class DataFrame, confusion matrix)``.

    Predictions are the arg-max of ``probs``. Flat keys follow :mod:`lungray.tracking` without
    the ``test_`` prefix: ``accuracy``, ``balanced_accuracy``, ``log_loss``, ``macro_f1``,
    ``weighted_f1``, ``auc``, ``auc_n_classes``, ``sensitivity``, ``specificity``, ``n``, and
    per class ``precision__<c>``, ``recall__<c>``, ``f1__<c>``, ``auc__<c>`` and (for every
    class but Normal) ``missed_as_normal__<c>``, class names passed through
    :func:`lungray.tracking.metric_key`.

    ``auc``: with two classes the binary AUC of class 1's probability (scikit-learn's
    convention; it equals both one-vs-rest AUCs); with more, the macro of the one-vs-rest AUCs
    over the classes present in ``y_true`` (``auc_n_classes`` says how many).

    Sensitivity/specificity: for ``positive`` (a class name or index) vs the rest; by default
    "abnormal vs Normal" when a ``normal`` class exists (any non-Normal class is positive: the
    screening question behind the 4-class study's "missed as Normal"), else class 1 of a binary
    task, else NaN.
    """
    import pandas as pd

    from lungray.tracking import metric_key

    names = [str(c) for c in class_names]
    k = len(names)
    t = _labels(y_true)
    p = _probs(probs, t.size)
    if p.shape[1] != k:
        raise ValueError(f"probs has {p.shape[1]} columns but there are {k} class names")
    _check_range(t, k, "y_true")
    y_pred = np.argmax(p, axis=1) if t.size else np.zeros(0, dtype=np.int64)

    cm = confusion_matrix(t, y_pred, k)
    prec, rec, f1, support = per_class_prf(t, y_pred, k)
    aucs = roc_auc_ovr(t, p)
    if k == 2:
        auc = roc_auc_binary(t == 1, p[:, 1])
        n_auc = 0 if np.isnan(auc) else 2
    else:
        auc, n_auc = macro_auc(aucs)

    normal_idx = names.index(normal) if normal is not None and normal in names else None
    if positive is not None:
        pos: Optional[list[int]] = [_class_index(positive, names, "positive class")]
    elif normal_idx is not None and k >= 2:
        pos = [i for i in range(k) if i != normal_idx]
    elif k == 2:
        pos = [1]
    else:
        pos = None
    sens, spec = sensitivity_specificity(t, y_pred, pos) if pos is not None else (float("nan"), float("nan"))
    missed = (
        missed_as_normal(t, y_pred, normal_idx, k) if normal_idx is not None else np.full(k, np.nan)
    )

    flat: dict[str, float] = {
        "accuracy": accuracy(t, y_pred),
        "balanced_accuracy": balanced_accuracy(t, y_pred, k),
        "log_loss": log_loss(t, p),
        "macro_f1": macro_f1(t, y_pred, k),
        "weighted_f1": weighted_f1(t, y_pred, k),
        "auc": float(auc),
        "auc_n_classes": float(n_auc),
        "sensitivity": sens,
        "specificity": spec,
        "n": float(t.size),
    }
    for i, c in enumerate(names):
        key = metric_key(c)
        flat[f"precision__{key}"] = float(prec[i])
        flat[f"recall__{key}"] = float(rec[i])
        flat[f"f1__{key}"] = float(f1[i])
        flat[f"auc__{key}"] = float(aucs[i])
        if normal_idx is not None and i != normal_idx:
            flat[f"missed_as_normal__{key}"] = float(missed[i])

    per_class = pd.DataFrame(
        {
            "class": names,
            "precision": prec,
            "recall": rec,
            "f1": f1,
            "support": support,
            "auc": aucs,
            "missed_as_normal": missed,
        }
    )
    return flat, per_class, cm
