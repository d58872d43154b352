"""Segmentation panels: image, true mask and each model's predicted mask on fixed evaluation images.

A segmentation model's prediction is its own explanation (where it marks the finding is what it
"looked at"), so a segmentation sweep's report shows masks instead of Grad-CAM heat maps. The
images are chosen from the ground truth alone (:func:`select_mask_images`), so every model and
every rebuild of the report shows the same ones; each model's mask comes from its best
checkpoint (``checkpoint/best.pt``) at the largest training size, the seed with the highest
held-out primary metric, rebuilt through the trial's task and checked against the Dice logged
in its ``predictions.csv``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from lungray import tracking as T

log = logging.getLogger(__name__)

__all__ = ["select_mask_images", "load_segmentation_checkpoint", "mask_panel_figure", "overlay_section"]

TITLE = "Predicted masks"


def select_mask_images(frame: pd.DataFrame, n_pos: int = 4, n_neg: int = 2) -> list[str]:
    """Image ids to show, from one ``predictions.csv`` (its truth columns only): ``n_pos``
    images with a finding spread over the sizes of their true masks (largest to smallest, by
    quantile) and ``n_neg`` without, ties broken by image id. The same truth gives the same ids.

    >>> f = pd.DataFrame({"image_id": list("abcdef"), "y_true": [1, 1, 0, 1, 0, 255], "fg_true": [5, 9, 0, 1, 0, 0]})
    >>> select_mask_images(f, n_pos=2, n_neg=1)
    ['b', 'd', 'c']
    """
    f = frame.sort_values("image_id", kind="stable")
    pos = f[f["y_true"] == 1].sort_values("fg_true", ascending=False, kind="stable")
    neg = f[f["y_true"] == 0]
    picks: list[str] = []
    if len(pos) and n_pos:
        at = np.unique(np.round(np.linspace(0, len(pos) - 1, min(n_pos, len(pos)))).astype(int))
        picks += pos["image_id"].iloc[at].astype(str).tolist()
    picks += neg["image_id"].head(n_neg).astype(str).tolist()
    return picks


def load_segmentation_checkpoint(path: str | Path, *, resolution: int, device: str = "cpu") -> tuple[Any, Any, tuple[float, float], int]:
    """``(model in eval mode, task for its trial, norm, epoch)`` rebuilt from ``best.pt``: the
    architecture and loss (one sigmoid channel for ``dice_bce``) come from its own trial config."""
    import torch

    from lungray.config import TrialConfig
    from lungray.report.gradcam import _strip_prefixes
    from lungray.train.tasks import TASKS

    ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    trial = TrialConfig.from_dict(ckpt["trial"])
    task = TASKS.get(trial.train.task).for_trial(trial)
    model = task.build_model(trial, list(ckpt["class_names"]), in_chans=1, resolution=resolution)
    model.load_state_dict(_strip_prefixes(ckpt["model"]))
    model.to(device).eval()
    norm = ckpt.get("norm", (0.0, 1.0))
    return model, task, (float(np.mean(norm[0])), float(np.mean(norm[1]))), int(ckpt.get("epoch", -1))


def mask_panel_figure(images01: np.ndarray, truths: np.ndarray, row_titles: Sequence[str],
                      preds: dict[str, np.ndarray], cell_titles: dict[str, list[str]]):
    """Rows: images; columns: the image, its true mask, then each model's predicted mask, masks
    drawn in red over the image (unknown pixels, 255, in grey)."""
    from lungray.report.figures import _figure

    cols = 2 + len(preds)
    fig = _figure(1.9 * cols, 2.0 * max(1, len(images01)) + 0.3)
    axes = fig.subplots(max(1, len(images01)), cols, squeeze=False)

    def show(ax, img, mask=None, title=""):
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        if mask is not None:
            rgba = np.zeros(mask.shape + (4,), dtype=np.float32)
            rgba[mask == 1] = (1.0, 0.1, 0.1, 0.45)
            rgba[mask == 255] = (0.6, 0.6, 0.6, 0.45)
            ax.imshow(rgba)
        ax.set_title(title, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])

    for i in range(len(images01)):
        show(axes[i, 0], images01[i], None, row_titles[i])
        show(axes[i, 1], images01[i], truths[i], "true mask")
        for j, (lab, p) in enumerate(preds.items()):
            show(axes[i, 2 + j], images01[i], p[i], cell_titles[lab][i])
    return fig


def overlay_section(b: Any, device: Optional[str] = None):
    """The report's section 7 for a segmentation sweep (``ReportSpec.explanation == "overlay"``)."""
    import torch

    from lungray.report import html as H
    from lungray.report.load import download
    from lungray.metrics.segmentation import masks_from_probs, overlap_ratios
    from lungray.train.tasks import image_confusion_torch

    sw = b.sweep
    why = "No Grad-CAM for segmentation: the predicted mask is itself where the model found the finding."
    done = sw.complete
    with_ckpt = done[done["run_id"].map(lambda r: sw.checkpoints.get(r, False) and r in sw.predictions)]
    if with_ckpt.empty:
        return H.Section("overlays", TITLE, "", notes=[why, "No trial logged both checkpoint/best.pt and predictions.csv."])
    root = sw.parent_tags.get(T.DATA_ROOT, "")
    if not root or not (Path(root) / "masks.npy").exists():
        return H.Section("overlays", TITLE, "", notes=[why, f"The prepared images and masks ({T.DATA_ROOT} = '{root}') are not "
                                                       "reachable from here; run the report where the data directory is mounted."])
    from lungray.data.prepared import PreparedData

    empty = np.zeros(0, dtype=np.int64)
    data = PreparedData(root=root, class_names=tuple(sw.class_names), eval_idx=empty, val_idx=empty, pool_idx=empty)
    row_of = {str(i): r for r, i in enumerate(data.ids)}
    size = int(with_ckpt["train_size"].max())
    at = with_ckpt[with_ckpt["train_size"] == size]
    metric = f"{T.TEST_PREFIX}{b.primary}"
    n_opt = done["optimizer"].nunique()
    chosen = []  # (label, run row): per model, the seed with the best held-out primary metric
    for m in sw.models:
        for o in sw.optimizers:
            r = at[(at["model"] == m) & (at["optimizer"] == o)]
            if not r.empty:
                best = r.sort_values([metric, "seed"], ascending=[False, True], na_position="last").iloc[0]
                chosen.append((m if n_opt <= 1 else f"{m} / {o}", best))
    ids = [i for i in select_mask_images(sw.predictions[chosen[0][1]["run_id"]]) if i in row_of]
    if not ids:
        return H.Section("overlays", TITLE, "", notes=[why, "The evaluation image ids are not in the prepared data's manifest."])
    rows = np.array([row_of[i] for i in ids], dtype=np.int64)
    imgs = np.asarray(data.images[rows])
    truths = np.asarray(data.masks[rows]).astype(np.int64)
    imgs01 = imgs.astype(np.float32) / data.max_value
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    preds, titles, checks, notes = {}, {}, [], [why]
    for lab, r in chosen:
        try:
            path = download(sw.client(), r["run_id"], T.BEST_CHECKPOINT, b.tmp / "ckpt" / r["run_id"])
            model, task, norm, epoch = load_segmentation_checkpoint(path, resolution=data.resolution, device=device)
            from lungray.report.gradcam import normalise_images

            x = normalise_images(imgs, data.max_value, norm).to(device)
            with torch.no_grad():
                logits = model(x).float()
            p = masks_from_probs(task.outputs(logits).cpu().numpy())
            conf = image_confusion_torch(torch.from_numpy(p), torch.from_numpy(truths)).numpy()
            dice = overlap_ratios(conf)[0][:, 1]
            del model
        except Exception as e:  # noqa: BLE001 - one model's failure is reported, the others still shown
            log.exception("mask panels failed for %s", lab)
            notes.append(f"{lab}: its checkpoint could not be rebuilt ({type(e).__name__}: {e})")
            continue
        logged = sw.predictions[r["run_id"]].set_index("image_id")["dice"].reindex(ids).to_numpy(dtype=float)
        same = np.isclose(dice, logged, equal_nan=True)
        checks.append({"model": lab, "seed": int(r["seed"]), "checkpoint epoch": epoch, b.primary: float(r[metric]),
                       "same Dice as predictions.csv": int(same.sum()), "images": len(ids)})
        preds[lab] = p
        titles[lab] = [f"{lab} (seed {int(r['seed'])})\nDice {d:.2f}" if d == d else f"{lab}\nDice n/a" for d in dice]
    if not preds:
        return H.Section("overlays", TITLE, "", notes=notes)
    if any(c["same Dice as predictions.csv"] < c["images"] for c in checks):
        notes.append("A rebuilt checkpoint does not reproduce the logged per-image Dice: the checkpoint, its "
                     "normalisation or the image cache may not match the sweep's.")
    kind = {1: "with a finding", 0: "without a finding"}
    y = sw.predictions[chosen[0][1]["run_id"]].set_index("image_id")["y_true"].reindex(ids).to_numpy()
    row_titles = [f"{kind.get(int(v), 'mask unknown')}\n{i}" for v, i in zip(y, ids)]
    body = b.fig(mask_panel_figure(imgs01, truths, row_titles, preds, titles), "mask_panels", "Predicted masks",
                  "Each row is one evaluation image (chosen from the ground truth: findings of decreasing size, then "
                  "images without one); red marks the true mask and each model's predicted mask, with its Dice.")
    body += "<h3>Checkpoint check</h3>" + H.table(pd.DataFrame(checks), text_columns=["model"])
    return H.Section("overlays", TITLE, body, notes=notes,
                     intro=f"The same evaluation images for every model, at the largest training size (n = {size}), "
                     "from the best checkpoint of the seed with the highest held-out "
                     f"{b._primary_words()}.")
