"""Segmentation in lungray: the building blocks, and how a training task uses them.

The RSNA pneumonia study (PROTOCOLS.md section 3) trains a U-Net on masks made by filling the
challenge's boxes and reports Dice and mean IoU. This module is the map: each name below is
re-exported lazily from where it lives (importing this module imports neither torch nor smp).

Data (:mod:`lungray.data.masks`, :mod:`lungray.data.prepared`, :mod:`lungray.data.dataset`)
    ``prepare_data(cfg)`` writes ``masks.npy`` next to ``images.npy`` whenever the source has
    masks: ``phantom`` (``lesion``), ``rsna`` (``lesion_boxes``: boxes filled),
    ``covid_radiography`` with ``masks/`` folders (``lung``). Nothing to configure.

    - ``data.mask_kind``: ``"lesion" | "lesion_boxes" | "lung" | None`` (``None``: no masks;
      a segmentation task must refuse such data before training).
    - ``data.masks``: ``(N, R, R)`` uint8 memmap, row-aligned with ``data.images`` /
      ``data.labels``, same resize geometry; values ``0`` background, ``1`` foreground,
      ``IGNORE`` = 255 unknown (a lung-mask image without a mask file). ``K = 2`` classes.
    - ``ImageDataset(data, idx, augmentation=..., mean=..., std=..., seed=..., target="mask")``
      yields ``(x float32 (1, R, R), y int64 (R, R), row)``; the geometric augmentation moves
      image and mask together. Subsets (``data.subset(n, seed)``), splits and the leakage audit
      are the classification ones, unchanged (subsets stay stratified by the image's class
      label, e.g. RSNA Target).

Models (:mod:`lungray.models.segmentation`, :mod:`lungray.models.unet`)
    - ``create_segmentation_model(model_cfg, num_classes=K, in_chans=1, resolution=R)`` ->
      :class:`~lungray.models.unet.SegNet`: ``forward(x (B, C, R, R)) -> logits (B, K, R, R)``;
      attributes ``task == "segmentation"``, ``num_classes``, ``in_chans``, ``resolution``,
      ``freeze``, ``frozen_norms``. Names: ``unet_keras`` (the study's U-Net, ``R % 16 == 0``),
      ``unet:<timm name>`` (smp U-Net, ``R % 32 == 0``; ``pretrained: true | false | <path>``
      as for classification; ``freeze: none | backbone``). ``model.width`` shrinks either for
      CPU smoke runs.
    - ``check_segmentation_model_config(model_cfg, where="model", resolution=R)`` at config
      time; ``is_segmentation_model(name)`` tells a segmentation name from a classifier's.

Losses (:mod:`lungray.train.losses`)
    ``build_loss(name, **kw) -> criterion(logits (B, K, H, W), target int64 (B, H, W))``,
    ``name`` in ``LOSSES``: ``dice`` (soft Dice, batch-global, smooth 1, background included by
    default: lungray's default), ``dice_rsna`` (the RSNA study's exact loss: foreground channel
    only, smooth 1e-6 doubled in the numerator; the ``segmentation`` preset's), ``dice_ce``
    (K >= 2), ``dice_bce`` (K == 1), ``ce``. 255 is ignored.

Metrics (:mod:`lungray.seg_metrics`, NumPy)
    - per batch: ``probs = softmax(logits)``; ``pred = masks_from_probs(probs)`` (N, H, W);
      ``scores = image_scores(probs)`` (N,) (max foreground probability);
      ``acc.update(pred, truth, scores)`` on a ``SegmentationAccumulator(K)``.
    - at the end: ``acc.report(class_names)`` -> flat dict: ``dice_pos``, ``dice_all``,
      ``iou_pos``, ``iou_all``, ``n_images``, ``n_pos``, ``n_unknown``, ``miou_global`` (the
      study's Keras MeanIoU, background-dominated), ``pixel_accuracy``, ``det_auc``,
      ``det_sensitivity``, ``det_specificity``, ``det_accuracy``, ``det_n_pos``, ``det_n_neg``,
      plus ``per_class``. Per-image values for paired comparisons:
      ``per_image_dice(pred, truth, K)`` / ``per_image_iou`` -> (N, K-1), NaN for unknown masks.
    - Conventions: empty truth and empty prediction score 1, empty truth with a false
      positive 0; the means over positive images and over all images are reported separately.

The task (:class:`lungray.train.tasks.SegmentationTask`, ``train.task: segmentation``)
    puts these together in the training loop, the sweep and the report: ``train.loss`` picks
    the loss (``dice`` by default, ``dice_rsna`` in the study's preset); validation and the held-out evaluation keep per image the
    pixel confusion, the detection score and :func:`lungray.train.losses.loss_stats`, counted
    on the device; MLflow gets ``test_dice_pos`` (the primary metric), ``test_dice_all``,
    ``test_iou_*``, ``test_miou_global``, ``test_det_*``; the report draws masks instead of
    Grad-CAM (:mod:`lungray.report.overlays`). Presets ``segmentation`` (RSNA) and
    ``segmentation_smoke`` (phantom); ``sweeps/segmentation_study.py``.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "IGNORE": "lungray.data.masks",
    "MASK_KINDS": "lungray.data.masks",
    "ImageDataset": "lungray.data.dataset",
    "SEG_MODELS": "lungray.models.segmentation",
    "create_segmentation_model": "lungray.models.segmentation",
    "check_segmentation_model_config": "lungray.models.segmentation",
    "is_segmentation_model": "lungray.models.segmentation",
    "parse_segmentation_name": "lungray.models.segmentation",
    "SegNet": "lungray.models.unet",
    "LOSSES": "lungray.train.losses",
    "build_loss": "lungray.train.losses",
    "loss_stats": "lungray.train.losses",
    "loss_from_stats": "lungray.train.losses",
    "SegmentationTask": "lungray.train.tasks",
    "SegmentationAccumulator": "lungray.seg_metrics",
    "segmentation_report": "lungray.seg_metrics",
    "report_from_confusion": "lungray.seg_metrics",
    "per_image_dice": "lungray.seg_metrics",
    "per_image_iou": "lungray.seg_metrics",
    "masks_from_probs": "lungray.seg_metrics",
    "image_scores": "lungray.seg_metrics",
    "overlap_ratios": "lungray.seg_metrics",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'lungray.segmentation' has no attribute {name!r}")
