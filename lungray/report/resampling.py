"""Classification metrics on many bootstrap resamples of the evaluation images at once.

The report's cell intervals (:func:`lungray.report.stats.two_level_ci_boot`) need each run's
metric on the SAME resample of the evaluation images, for a thousand resamples. A resample is
a vector of multinomial counts ``w`` (image i drawn ``w_i`` times), and every metric here is
the metric of the resampled set computed from those counts: a weighted confusion matrix for
the label metrics, weighted rank sums for the AUC. So ``metric_resamples(name, y, p, W)[r]``
equals ``lungray.metrics`` on the images repeated ``W[r]`` times, exactly (tested in
``tests/test_report_resampling.py``), with the same conventions (fixed class set, NaN for an
undefined value, macro F1 over the classes in ``y_true`` or ``y_pred``, macro AUC over the
classes present).

Two additions of issue 19: :func:`cluster_weights` resamples PATIENTS (all images of a drawn
patient together) when several evaluation images share one, and :func:`with_pseudo_images`
adds half an image right and half wrong per class, so that a metric at its bound (AUC 1 on
every resample) still has a variance: the interval's logit-scale form in
:func:`lungray.report.stats.two_level_ci_boot`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["multinomial_weights", "cluster_weights", "with_pseudo_images", "weighted_confusion", "metric_resamples",
           "per_class_resamples", "RESAMPLED_METRICS", "PSEUDO_WEIGHT"]


def multinomial_weights(n_images: int, n_boot: int, seed: int) -> np.ndarray:
    """``(n_boot, n_images)`` resample counts, each row summing to ``n_images``."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=n_boot).astype(np.float64)


def cluster_weights(codes: np.ndarray | None, n_boot: int, seed: int) -> np.ndarray:
    """``(n_boot, n_images)`` resample counts by unit: ``codes`` (unit code ``0..G-1`` per image,
    :func:`lungray.report.stats.unit_codes`) draws G patients with replacement and gives every
    image of a patient drawn m times the count m. ``None``: :func:`multinomial_weights`."""
    if codes is None:
        raise ValueError("cluster_weights needs unit codes; use multinomial_weights for independent images")
    codes = np.asarray(codes, dtype=np.int64)
    g = int(codes.max()) + 1
    rng = np.random.default_rng(seed)
    return rng.multinomial(g, np.full(g, 1.0 / g), size=n_boot).astype(np.float64)[:, codes]


#: Weight of each pseudo-image of :func:`with_pseudo_images` (the Haldane-Anscombe half, as
#: :data:`lungray.report.stats.PSEUDO` for a proportion).
PSEUDO_WEIGHT = 0.5


def with_pseudo_images(y: np.ndarray, probs: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(y, probs, w)`` with two pseudo-images per class appended, each of weight
    :data:`PSEUDO_WEIGHT` in every row of ``w``: one of class c predicted c with certainty
    (right) and one of class c predicted c+1 (wrong; ranked below every real image of class c
    and above every real image of class c+1). A metric computed on them is never exactly 0 or
    1, so its logit exists; their share of the data is 2k/N halves (N = 200 images, 2 classes:
    1 %)."""
    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    k = p.shape[1]
    cls = np.repeat(np.arange(k), 2)
    pred = np.where(np.arange(2 * k) % 2 == 0, cls, (cls + 1) % k)
    pp = np.zeros((2 * k, k))
    pp[np.arange(2 * k), pred] = 1.0
    w = np.atleast_2d(np.asarray(w, dtype=np.float64))
    extra = np.full((w.shape[0], 2 * k), PSEUDO_WEIGHT)
    return np.concatenate([y, cls]), np.concatenate([p, pp]), np.concatenate([w, extra], axis=1)


def weighted_confusion(y: np.ndarray, pred: np.ndarray, k: int, w: np.ndarray) -> np.ndarray:
    """``(B, k, k)`` confusion matrices (rows true, columns predicted) of the resamples ``w``."""
    cell = np.asarray(y, dtype=np.int64) * k + np.asarray(pred, dtype=np.int64)
    onehot = np.zeros((cell.size, k * k))
    onehot[np.arange(cell.size), cell] = 1.0
    return (np.atleast_2d(w) @ onehot).reshape(-1, k, k)


def _prf(cm: np.ndarray):
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support = cm.sum(2)
    predicted = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / np.maximum(predicted, 1e-300), 0.0)
        precision = np.where((support == 0) & (predicted == 0), np.nan, precision)
        recall = np.where(support > 0, tp / np.maximum(support, 1e-300), np.nan)
        denom = 2 * tp + (predicted - tp) + (support - tp)
        f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1e-300), np.nan)
    return precision, recall, f1, support


def _nanmean(x: np.ndarray) -> np.ndarray:
    ok = ~np.isnan(x)
    cnt = ok.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, np.where(ok, x, 0.0).sum(1) / np.maximum(cnt, 1), np.nan)


def _auc_weighted(pos: np.ndarray, score: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted Mann-Whitney AUC (ties count one half) of ``score`` for ``pos`` vs the rest, per
    row of ``w``; NaN where a resample has no positive or no negative."""
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    starts = np.r_[0, np.flatnonzero(s[1:] != s[:-1]) + 1]
    ws = w[:, order]
    p = pos[order].astype(np.float64)
    wp = np.add.reduceat(ws * p, starts, axis=1)  # positive weight per tie block
    wn = np.add.reduceat(ws * (1.0 - p), starts, axis=1)
    below = np.cumsum(wn, axis=1) - wn  # negative weight strictly below each block
    num = (wp * (below + 0.5 * wn)).sum(1)
    tp, tn = wp.sum(1), wn.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((tp > 0) & (tn > 0), num / (tp * tn), np.nan)


def metric_resamples(name: str, y: np.ndarray, probs: np.ndarray, w: np.ndarray) -> np.ndarray:
    """One metric of one run on every resample: ``(B,)``.

    ``name`` is one of :data:`RESAMPLED_METRICS` (the ``test_*`` metrics of
    :func:`lungray.metrics.classification_report`). ``y`` (N,), ``probs`` (N, k), ``w`` (B, N).
    """
    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    w = np.atleast_2d(np.asarray(w, dtype=np.float64))
    k = p.shape[1]
    tot = w.sum(1)
    if name == "accuracy":
        return w @ (p.argmax(1) == y).astype(np.float64) / tot
    if name == "log_loss":
        eps = float(np.finfo(np.float64).eps)
        return w @ (-np.log(np.clip(p[np.arange(y.size), y], eps, 1 - eps))) / tot
    if name in ("balanced_accuracy", "macro_f1"):
        _, recall, f1, _ = _prf(weighted_confusion(y, p.argmax(1), k, w))
        return _nanmean(recall if name == "balanced_accuracy" else f1)
    if name == "auc":
        if k == 2:
            return _auc_weighted(y == 1, p[:, 1], w)
        return _nanmean(np.stack([_auc_weighted(y == c, p[:, c], w) for c in range(k)], axis=1))
    raise ValueError(f"no resampled form of metric '{name}'; valid: {', '.join(RESAMPLED_METRICS)}")


def per_class_resamples(y: np.ndarray, probs: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, recall and F1 on every resample: ``{"precision": (B, k), ...}``."""
    p = np.asarray(probs, dtype=np.float64)
    precision, recall, f1, _ = _prf(weighted_confusion(y, p.argmax(1), p.shape[1], np.atleast_2d(w)))
    return {"precision": precision, "recall": recall, "f1": f1}


#: Metrics with a resampled form (the report's eval-set metrics; the validation loss has no
#: per-image values on the evaluation set and keeps a seeds-only interval).
RESAMPLED_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auc", "log_loss")
