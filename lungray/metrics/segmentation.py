"""Segmentation metrics as pure NumPy functions (the :mod:`lungray.metrics.classification` / MONAI style).

Masks are integer class-index arrays ``(N, H, W)`` (``0`` background, ``1..K-1`` foreground
classes, ``IGNORE`` = 255 unknown pixels in the truth, skipped everywhere). Everything derives
from one per-image pixel confusion matrix ``(N, K, K)`` (:func:`image_confusion`), so batches can
be accumulated (:class:`SegmentationAccumulator`) and the held-out report never needs every
predicted mask in memory.

Conventions (stated, because box masks are background-dominated: the RSNA study's Dice 0.95 is
foreground-only but pooled over its whole batch, and only its mean IoU 0.9528 includes the
background, PROTOCOLS.md section 3, while a U-Net on the same box masks scores ~0.6 Dice
per positive image):

* Per-image Dice ``2TP / (2TP + FP + FN)`` and IoU ``TP / (TP + FP + FN)`` for each FOREGROUND
  class, over the image's valid pixels.
* Empty truth and empty prediction (``TP + FP + FN = 0``): Dice = IoU = **1** (the image was
  correctly left empty). Empty truth with any false-positive pixel: **0**. An image with no
  valid pixel (mask unknown): **NaN**, left out of every mean and counted in ``n_unknown``.
* Two means, reported separately: over POSITIVE images (the truth has the class: what the
  segmentation quality is) and over ALL images (includes the 1s and 0s of empty images: what
  the whole pipeline does). A mean over no image is NaN. With several foreground classes the
  headline numbers are the macro over foreground classes of the per-class means.
* ``miou_global``: Keras ``MeanIoU`` (what the study reported): IoU per class over all pixels of
  all images pooled, background included, averaged over classes present in truth or prediction.
* Image-level detection from the mask: an image is predicted positive when any pixel is
  predicted foreground, and its score is the maximum foreground probability over its pixels
  (``1 - p_background`` for softmax, ``sigmoid`` for one channel), both from the prediction
  alone; truth is "the ground truth has any foreground pixel". ROC-AUC of the score
  (:func:`lungray.metrics.roc_auc_binary`, NaN when all images are positive or all negative).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from lungray.metrics.classification import roc_auc_binary

#: Mask value of a pixel whose class is unknown (a lung-mask dataset where an image has no mask
#: file): excluded from every count, like ``ignore_index`` in PyTorch losses. The mask cache
#: (:mod:`lungray.data.masks`) writes it.
IGNORE = 255

__all__ = [
    "IGNORE",
    "image_confusion",
    "overlap_from_confusion",
    "overlap_ratios",
    "per_image_dice",
    "per_image_iou",
    "masks_from_probs",
    "image_scores",
    "miou_global",
    "segmentation_report",
    "report_from_confusion",
    "SegmentationAccumulator",
]


def _masks(a: Any, name: str) -> np.ndarray:
    m = np.asarray(a)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise ValueError(f"{name} must be (N, H, W) class-index masks, got shape {m.shape}")
    if m.size and not np.issubdtype(m.dtype, np.integer) and m.dtype != np.bool_:
        raise ValueError(f"{name} must hold integer class indices, got dtype {m.dtype}")
    return m.astype(np.int64, copy=False)


def image_confusion(pred: Any, truth: Any, num_classes: int, *, ignore_index: int = IGNORE) -> np.ndarray:
    """Per-image pixel confusion ``C[n, t, p]`` (truth class t, predicted class p), valid pixels only.

    ``pred`` and ``truth`` are ``(N, H, W)`` (or one ``(H, W)`` image); truth pixels equal to
    ``ignore_index`` are skipped. Returns int64 ``(N, K, K)``.
    """
    p, t = _masks(pred, "pred"), _masks(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred {p.shape} and truth {t.shape} masks differ in shape")
    k = int(num_classes)
    n = p.shape[0]
    valid = t != ignore_index
    if (t[valid] < 0).any() or (t[valid] >= k).any():
        raise ValueError(f"truth holds class indices outside 0..{k - 1} (and {ignore_index} = unknown)")
    if (p < 0).any() or (p >= k).any():
        raise ValueError(f"pred holds class indices outside 0..{k - 1}")
    img = np.broadcast_to(np.arange(n)[:, None, None], p.shape)
    flat = (img * k * k + t * k + p)[valid]
    return np.bincount(flat, minlength=n * k * k).reshape(n, k, k).astype(np.int64)


def overlap_from_confusion(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(tp, fp, fn)``, each ``(N, K)``, from per-image confusions ``(N, K, K)``."""
    conf = np.asarray(conf, dtype=np.int64)
    tp = np.diagonal(conf, axis1=1, axis2=2)
    fp = conf.sum(axis=1) - tp
    fn = conf.sum(axis=2) - tp
    return tp, fp, fn


def _ratio(conf: np.ndarray, dice: bool) -> np.ndarray:
    """Per-image, per-class Dice or IoU with the empty/unknown conventions, ``(N, K)`` float."""
    tp, fp, fn = overlap_from_confusion(conf)
    num = (2 * tp if dice else tp).astype(np.float64)
    den = (2 * tp + fp + fn if dice else tp + fp + fn).astype(np.float64)
    out = np.ones_like(num)  # empty truth and empty prediction: 1
    np.divide(num, den, out=out, where=den > 0)
    out[np.asarray(conf).sum(axis=(1, 2)) == 0] = np.nan  # no valid pixel: unknown
    return out


def overlap_ratios(conf: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-image, per-class ``(dice, iou)``, each ``(N, K)``, from per-image confusions ``(N, K, K)``
    (the module conventions: empty truth and prediction 1, no valid pixel NaN)."""
    c = np.asarray(conf, dtype=np.int64)
    return _ratio(c, dice=True), _ratio(c, dice=False)


def per_image_dice(pred: Any, truth: Any, num_classes: int, *, ignore_index: int = IGNORE) -> np.ndarray:
    """Dice of each image for each FOREGROUND class, ``(N, K-1)`` (see the module conventions).

    >>> per_image_dice([[[1, 1], [0, 0]]], [[[1, 0], [0, 0]]], 2).tolist()  # 2*1 / (2*1 + 1 + 0)
    [[0.6666666666666666]]
    """
    return _ratio(image_confusion(pred, truth, num_classes, ignore_index=ignore_index), dice=True)[:, 1:]


def per_image_iou(pred: Any, truth: Any, num_classes: int, *, ignore_index: int = IGNORE) -> np.ndarray:
    """IoU (Jaccard) of each image for each FOREGROUND class, ``(N, K-1)``."""
    return _ratio(image_confusion(pred, truth, num_classes, ignore_index=ignore_index), dice=False)[:, 1:]


def masks_from_probs(probs: Any) -> np.ndarray:
    """Predicted class-index masks ``(N, H, W)`` from probabilities ``(N, K, H, W)``.

    ``K >= 2``: argmax (softmax outputs); ``K == 1``: foreground where the sigmoid is >= 0.5.
    """
    p = np.asarray(probs)
    if p.ndim != 4:
        raise ValueError(f"probs must be (N, K, H, W), got shape {p.shape}")
    if p.shape[1] == 1:
        return (p[:, 0] >= 0.5).astype(np.int64)
    return p.argmax(axis=1).astype(np.int64)


def image_scores(probs: Any) -> np.ndarray:
    """Image-level detection score ``(N,)``: the maximum foreground probability over the pixels.

    Foreground probability is ``1 - p_background`` for ``K >= 2`` softmax outputs (any
    foreground class) and the sigmoid for ``K == 1``.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 4:
        raise ValueError(f"probs must be (N, K, H, W), got shape {p.shape}")
    fg = p[:, 0] if p.shape[1] == 1 else 1.0 - p[:, 0]
    return fg.reshape(len(fg), -1).max(axis=1) if fg.size else np.zeros(len(fg))


def miou_global(conf: np.ndarray) -> float:
    """Keras ``MeanIoU``: IoU per class over all pixels pooled, mean over classes that occur.

    ``conf`` is ``(K, K)`` or per-image ``(N, K, K)`` (summed). A class with no pixel in truth or
    prediction is left out of the mean (Keras divides by the classes with a non-zero
    denominator); NaN when there is no pixel at all.
    """
    c = np.asarray(conf, dtype=np.float64)
    if c.ndim == 3:
        c = c.sum(axis=0)
    tp = np.diag(c)
    den = c.sum(axis=0) + c.sum(axis=1) - tp
    ok = den > 0
    return float((tp[ok] / den[ok]).mean()) if ok.any() else float("nan")


def _mean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def report_from_confusion(
    conf: np.ndarray,
    *,
    scores: Optional[Any] = None,
    class_names: Optional[list[str]] = None,
) -> dict[str, Any]:
    """The segmentation summary from per-image confusions ``(N, K, K)`` (and detection scores).

    Keys (flat, MLflow-friendly): ``dice_pos``, ``dice_all``, ``iou_pos``, ``iou_all`` (macro over
    foreground classes), ``n_images`` (with a known mask), ``n_pos`` (with any foreground in
    truth), ``n_unknown``, ``miou_global``, ``pixel_accuracy``, ``det_sensitivity``,
    ``det_specificity``, ``det_accuracy`` (any-foreground predicted vs truth), ``det_auc`` (NaN
    without ``scores``), ``det_n_pos``, ``det_n_neg``; and ``per_class``: ``{name: {dice_pos,
    dice_all, iou_pos, iou_all, n_pos}}`` for each foreground class.
    """
    conf = np.asarray(conf, dtype=np.int64)
    n, k, _ = conf.shape
    names = list(class_names) if class_names is not None else [str(c) for c in range(k)]
    if len(names) != k:
        raise ValueError(f"class_names has {len(names)} names for {k} classes")
    known = conf.sum(axis=(1, 2)) > 0
    dice, iou = _ratio(conf, dice=True), _ratio(conf, dice=False)
    truth_has = conf.sum(axis=2) > 0  # (N, K): class present in the truth
    pred_has = conf.sum(axis=1) > 0
    per_class = {}
    for c in range(1, k):
        pos = truth_has[:, c]
        per_class[names[c]] = {
            "dice_pos": _mean(dice[pos, c]),
            "dice_all": _mean(dice[:, c]),
            "iou_pos": _mean(iou[pos, c]),
            "iou_all": _mean(iou[:, c]),
            "n_pos": int(pos.sum()),
        }
    fg = [per_class[names[c]] for c in range(1, k)]

    def macro(key: str) -> float:
        vals = np.array([d[key] for d in fg], dtype=np.float64)
        return _mean(vals)

    y_true = truth_has[:, 1:].any(axis=1)[known]
    y_pred = pred_has[:, 1:].any(axis=1)[known]
    n_p, n_n = int(y_true.sum()), int((~y_true).sum())
    total = conf.sum()
    out: dict[str, Any] = {
        "dice_pos": macro("dice_pos"),
        "dice_all": macro("dice_all"),
        "iou_pos": macro("iou_pos"),
        "iou_all": macro("iou_all"),
        "n_images": int(known.sum()),
        "n_pos": n_p,
        "n_unknown": int(n - known.sum()),
        "miou_global": miou_global(conf),
        "pixel_accuracy": float(np.trace(conf.sum(axis=0)) / total) if total else float("nan"),
        "det_sensitivity": float((y_pred & y_true).sum() / n_p) if n_p else float("nan"),
        "det_specificity": float((~y_pred & ~y_true).sum() / n_n) if n_n else float("nan"),
        "det_accuracy": float((y_pred == y_true).mean()) if y_true.size else float("nan"),
        "det_auc": float("nan"),
        "det_n_pos": n_p,
        "det_n_neg": n_n,
        "per_class": per_class,
    }
    if scores is not None:
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(s) != n:
            raise ValueError(f"scores has {len(s)} values for {n} images")
        out["det_auc"] = roc_auc_binary(y_true.astype(np.int64), s[known])
    return out


def segmentation_report(
    pred: Any,
    truth: Any,
    num_classes: int,
    *,
    scores: Optional[Any] = None,
    class_names: Optional[list[str]] = None,
    ignore_index: int = IGNORE,
) -> dict[str, Any]:
    """:func:`report_from_confusion` of predicted and true masks ``(N, H, W)``.

    ``scores`` ``(N,)`` are the image-level detection scores (:func:`image_scores`).
    """
    conf = image_confusion(pred, truth, num_classes, ignore_index=ignore_index)
    return report_from_confusion(conf, scores=scores, class_names=class_names)


class SegmentationAccumulator:
    """Batch-by-batch accumulation of per-image confusions and scores (MONAI's thin accumulator).

    >>> acc = SegmentationAccumulator(2)
    >>> _ = acc.update([[[1, 0]]], [[[1, 0]]], scores=[0.9])
    >>> _ = acc.update([[[0, 0]]], [[[0, 0]]], scores=[0.2])
    >>> r = acc.report(); (r["dice_pos"], r["dice_all"], r["det_auc"])
    (1.0, 1.0, 1.0)
    """

    def __init__(self, num_classes: int, *, ignore_index: int = IGNORE):
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self._conf: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []

    def update(self, pred: Any, truth: Any, scores: Optional[Any] = None) -> np.ndarray:
        """Add a batch; returns its per-image confusions ``(B, K, K)``."""
        conf = image_confusion(pred, truth, self.num_classes, ignore_index=self.ignore_index)
        self.add(conf, scores)
        return conf

    def add(self, conf: Any, scores: Optional[Any] = None) -> None:
        """Add per-image confusions ``(B, K, K)`` counted elsewhere (e.g. on the GPU by the
        segmentation task, which never brings the masks to the host)."""
        c = np.asarray(conf)
        k = self.num_classes
        if c.ndim != 3 or c.shape[1:] != (k, k):
            raise ValueError(f"per-image confusions must be (B, {k}, {k}), got shape {c.shape}")
        if c.size and (not np.allclose(c, np.round(c)) or (c < 0).any()):
            raise ValueError("per-image confusions must hold non-negative pixel counts")
        self._conf.append(np.round(c).astype(np.int64))
        if scores is not None:
            self._scores.append(np.asarray(scores, dtype=np.float64).reshape(-1))

    @property
    def confusion(self) -> np.ndarray:
        k = self.num_classes
        return np.concatenate(self._conf) if self._conf else np.zeros((0, k, k), dtype=np.int64)

    def report(self, class_names: Optional[list[str]] = None) -> dict[str, Any]:
        conf = self.confusion
        scores = np.concatenate(self._scores) if self._scores else None
        if scores is not None and len(scores) != len(conf):
            raise ValueError(f"scores were given for {len(scores)} of {len(conf)} images; pass them with every batch or never")
        return report_from_confusion(conf, scores=scores, class_names=class_names)
