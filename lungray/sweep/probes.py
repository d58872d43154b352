"""The lung probes of one trial: evaluation passes run after training, inside the trial (issue 24.3, 24.4).

Every classification trial of a study with ``probes.lungs`` (the default) re-reads its selected
model (``checkpoint/best.pt``, exactly what the report's Grad-CAM sections rebuild) and, on the
evaluation images whose lung mask is known:

1. predicts them intact, with the lung fields blanked and with everything outside the lungs
   blanked (:func:`lungray.data.ablation.blank_region`, fill ``probes.fill``). A model that
   still scores above chance with the lungs removed is reading something else: the site's
   markings, collimation or contrast (DeGrave et al. 2021, Nat Mach Intell);
2. computes Grad-CAM maps of its predicted class on the first ``probes.cam_images`` of them
   (:func:`lungray.report.gradcam.cam_pass`, the report's batched pass) and the share of each
   map's mass inside the lungs (:func:`lungray.metrics.saliency.lung_share`), beside the same
   architecture with randomised weights (:func:`lungray.report.gradcam.randomised_copy`,
   Adebayo et al. 2018) and the image-blind map "the mean lung mask of this trial's training
   subset" (:func:`lungray.metrics.saliency.prior_share`). Each network's map is of its own
   predicted class; a map with no mass (Grad-CAM's ReLU leaves nothing, frequent for a
   randomised network) has no share and is left out (NaN in ``probes.csv``).

The passes are part of the trial Ray Tune schedules (:func:`lungray.sweep.trainable.write_trial_outputs`
calls :func:`trial_probes`), on the trial's own device, so they need no separate script and no
second pass over MLflow. Their summary numbers become trial metrics (``probe_*``, :data:`METRICS`)
and the per-image values ``probes.csv`` (no image id: dataset rows only, which the report pairs
across trials of the same sweep), both read by :mod:`lungray.report.shortcut`. A probe that
fails does not fail the trial it probes: its error is recorded in ``result.json``
(``probe_error``) and shown by the report.

This lives in the sweep layer because it needs the report's Grad-CAM code (the training loop in
:mod:`lungray.train` may not import the report).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from lungray import tracking as T

log = logging.getLogger(__name__)

__all__ = ["PROBES_CSV", "METRICS", "trial_probes", "lung_probes"]

#: the per-image table of a trial's lung probes (an MLflow artifact beside predictions.csv)
PROBES_CSV = T.PROBES_CSV

#: the trial metrics the probes log (MLflow, result.json)
METRICS = (
    "probe_n_images",
    "probe_intact_accuracy",
    "probe_intact_auc",
    "probe_lungs_blanked_accuracy",
    "probe_lungs_blanked_auc",
    "probe_outside_blanked_accuracy",
    "probe_outside_blanked_auc",
    "probe_cam_images",
    "probe_cam_grid",
    "probe_cam_lung_share",
    "probe_cam_lung_share_randomised",
    "probe_cam_lung_share_blind",
    "probe_lung_area",
    "probe_seconds",
)

#: the three inputs of the ablation pass, in probes.csv column order
VIEWS = ("intact", "lungs_blanked", "outside_blanked")


def trial_probes(data: Any, trial: Any, art: Path, probes: Any) -> tuple[dict[str, float], dict[str, Any]]:
    """``(metrics, extra)`` of a finished trial whose artifacts are in ``art``; writes ``art/probes.csv``.

    Nothing runs for a source-probe or segmentation trial, with ``probes.lungs`` off, or when
    the prepared data has no lung masks (``extra["probe_note"]`` then says why). A failure is
    logged and returned as ``extra["probe_error"]``, never raised: the trial's own results stand.
    """
    if not getattr(probes, "lungs", False) or trial.train.task != "classification":
        return {}, {}
    data = data.for_preprocess(trial.variant.preprocess)
    if data.lung_masks is None:
        return {}, {"probe_note": "the prepared data has no lung masks: no lung ablation or saliency probe"}
    try:
        from lungray.train.device import select_device

        device = str(select_device(trial.train.device))
        metrics, table = lung_probes(
            data, trial, Path(art) / T.BEST_CHECKPOINT, fill=probes.fill, cam_images=int(probes.cam_images), device=device,
        )
    except Exception as e:  # noqa: BLE001 - recorded with the trial and shown by the report
        log.warning("trial %s: lung probes failed: %s", trial.name, e, exc_info=log.isEnabledFor(logging.DEBUG))
        return {}, {"probe_error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"}
    table.to_csv(Path(art) / PROBES_CSV, index=False)
    return metrics, {}


def lung_probes(
    data: Any,
    trial: Any,
    checkpoint: Path,
    *,
    fill: str = "kept_mean",
    cam_images: int = 200,
    device: Optional[str] = None,
    batch_size: int = 128,
):
    """The ablation and saliency passes of one trained model: ``(metrics, per-image DataFrame)``.

    ``data`` is the trial's prepared data (its variant's cache), ``checkpoint`` its
    ``best.pt``. The table has one row per evaluation image with a usable lung mask: ``row``,
    ``y_true``, ``<view>_prob_<k>`` for each view of :data:`VIEWS` and class index ``k``,
    ``cam_lung_share`` / ``cam_lung_share_randomised`` (NaN beyond ``cam_images``),
    ``blind_lung_share`` and ``lung_area``.
    """
    import pandas as pd

    from lungray.data.ablation import blank_region, known_masks
    from lungray.metrics import classification_report
    from lungray.metrics.saliency import area_share, mean_mask, prior_share
    from lungray.report.gradcam import load_checkpoint_model

    t0 = time.perf_counter()
    eval_idx = np.asarray(data.eval_idx, dtype=np.int64)
    lung_all = data.lung_masks
    masks = np.asarray(lung_all[eval_idx])
    known = known_masks(masks) if len(masks) else np.zeros(0, bool)
    rows, masks = eval_idx[known], masks[known]
    images = np.asarray(data.images[rows])
    y = np.asarray(data.labels[rows], dtype=np.int64)
    loaded = load_checkpoint_model(checkpoint, resolution=data.resolution, device=device)
    names = list(loaded.class_names)
    size = trial.model.input_size

    views = {
        "intact": images,
        "lungs_blanked": blank_region(images, masks, "lungs", fill)[0],
        "outside_blanked": blank_region(images, masks, "outside", fill)[0],
    }
    probs = {v: _predict(loaded, x, data.max_value, size, batch_size) for v, x in views.items()}

    metrics: dict[str, float] = {"probe_n_images": float(len(rows))}
    for v, p in probs.items():
        flat = classification_report(y, p, names)[0] if len(rows) else {"accuracy": np.nan, "auc": np.nan}
        metrics[f"probe_{v}_accuracy"] = float(flat["accuracy"])
        metrics[f"probe_{v}_auc"] = float(flat["auc"])

    # saliency: the model's maps, the randomised model's, the image-blind prior (training masks)
    n_cam = min(int(cam_images), len(rows))
    share = np.full(len(rows), np.nan)
    share_rnd = np.full(len(rows), np.nan)
    grid = float("nan")
    if n_cam:
        share[:n_cam], share_rnd[:n_cam], grid = _cam_shares(loaded, images[:n_cam], masks[:n_cam], probs["intact"][:n_cam].argmax(1),
                                                       data, size, seed=int(trial.seed))
    train_rows = np.sort(np.asarray(data.subset(trial.train_size, trial.seed), dtype=np.int64))
    prior = mean_mask(np.asarray(lung_all[train_rows]))
    blind = prior_share(prior, masks) if len(rows) else np.zeros(0)
    area = area_share(masks) if len(rows) else np.zeros(0)
    metrics.update({
        "probe_cam_images": float(n_cam),
        "probe_cam_grid": grid,
        "probe_cam_lung_share": _nanmean(share),
        "probe_cam_lung_share_randomised": _nanmean(share_rnd),
        "probe_cam_lung_share_blind": _nanmean(blind[:n_cam]) if n_cam else _nanmean(blind),
        "probe_lung_area": _nanmean(area),
        "probe_seconds": time.perf_counter() - t0,
    })

    table = {"row": rows, "y_true": y}
    for v, p in probs.items():
        for k in range(p.shape[1]):
            table[f"{v}_prob_{k}"] = p[:, k]
    table.update({"cam_lung_share": share, "cam_lung_share_randomised": share_rnd, "blind_lung_share": blind, "lung_area": area})
    return metrics, pd.DataFrame(table)


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def _predict(loaded: Any, images: np.ndarray, max_value: float, size: Optional[int], batch_size: int) -> np.ndarray:
    """Softmax probabilities ``(N, K)`` of the loaded model on cached-pixel ``images``."""
    import torch

    from lungray.report.gradcam import normalise_images

    k = len(loaded.class_names)
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = normalise_images(images[i : i + batch_size], max_value, loaded.norm, size=size).to(loaded.device)
            out.append(torch.softmax(loaded.model(x).float(), dim=1).cpu().numpy().astype(np.float64))
    return np.concatenate(out) if out else np.zeros((0, k))


def _cam_shares(loaded: Any, images: np.ndarray, masks: np.ndarray, targets: np.ndarray, data: Any,
                size: Optional[int], seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Lung shares of the trained model's Grad-CAM maps and of its randomised copy's (same images), and the
    cells per side of the map's grid (a 2 x 2 map cannot say whether it is on a lung)."""
    from lungray.metrics.saliency import lung_share
    from lungray.report.gradcam import cam_pass, normalise_images, randomised_copy, resize_maps

    import torch

    x = normalise_images(images, data.max_value, loaded.norm, size=size)
    res = int(data.resolution)
    cp = cam_pass(loaded.model, x, targets)
    maps = resize_maps(cp.maps, res)
    rnd = randomised_copy(loaded.model, seed=seed).to(loaded.device)
    # each model's map is of its OWN predicted class: a randomised network's map of the trained
    # model's class is often all zero after Grad-CAM's ReLU (no mass to place: NaN)
    with torch.inference_mode():
        rnd_targets = torch.cat([rnd(x[i : i + 256].to(loaded.device)).argmax(1).cpu() for i in range(0, len(x), 256)]).numpy()
    maps_rnd = resize_maps(cam_pass(rnd, x, rnd_targets).maps, res)
    return lung_share(maps, masks), lung_share(maps_rnd, masks), float(min(cp.grid) if all(cp.grid) else 0)
