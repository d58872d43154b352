"""Where a heat map's mass lies: the share of a saliency map inside the lung fields.

Issue 24.4 (DeGrave et al. 2021, Nat Mach Intell: saliency of COVID classifiers on the
diaphragm, the shoulders and the text markers, not the lungs). A map's *lung share* is
``sum(map * lung) / sum(map)``, per image. It means something only beside baselines on the same
images:

* the **image-blind** baseline (:func:`prior_share`): a map that ignores the image and always
  equals the mean training lung mask (where lungs usually are) scores the share of that mean
  mask inside each image's own lungs. A model whose maps fall in the lungs LESS often than this
  looks somewhere else on purpose;
* the **randomised-weights** model (Adebayo et al. 2018): the same architecture re-initialised
  (computed by the caller, :func:`lungray.report.gradcam.randomised_copy`); a share that equals
  it does not depend on what the model learned;
* the lungs' own area share (:func:`area_share`): what a uniform map scores.

Pure NumPy on ``(N, H, W)`` arrays; masks are 1 lung, 0 not, 255 unknown (an image with an
unknown pixel scores NaN, as does an all-zero map, which has no mass to place).
"""

from __future__ import annotations

import numpy as np

__all__ = ["lung_share", "prior_share", "mean_mask", "area_share"]

UNKNOWN = 255


def _check(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = np.asarray(maps, dtype=np.float64)
    m = np.asarray(masks)
    if a.ndim == 2:
        a = np.broadcast_to(a, m.shape)
    if a.shape != m.shape or m.ndim != 3:
        raise ValueError(f"maps {a.shape} and masks {m.shape} must both be (N, H, W) of the same shape")
    if (a < 0).any():
        raise ValueError("saliency maps must be non-negative (Grad-CAM maps are, after their ReLU)")
    flat_m = m.reshape(len(m), -1)
    known = ~(flat_m == UNKNOWN).any(1)
    return a.reshape(len(a), -1), (flat_m == 1), known


def lung_share(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """``(N,)`` share of each map's mass inside its image's lung mask, in [0, 1]; NaN where the
    mask has an unknown pixel or the map is all zero.

    >>> maps = np.array([[[1.0, 3.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    >>> lung = np.array([[[1, 0], [0, 0]], [[1, 1], [0, 0]]], dtype=np.uint8)
    >>> lung_share(maps, lung).tolist()  # 1 / (1 + 3); an empty map has no share
    [0.25, nan]
    """
    a, lung, known = _check(maps, masks)
    total = a.sum(1)
    inside = (a * lung).sum(1)
    out = np.full(len(a), np.nan)
    ok = known & (total > 0)
    out[ok] = inside[ok] / total[ok]
    return out


def mean_mask(masks: np.ndarray) -> np.ndarray:
    """``(H, W)`` the mean of the usable lung masks (no unknown pixel): the image-blind map
    "where lungs usually are". All zero when none is usable."""
    m = np.asarray(masks)
    known = ~(m.reshape(len(m), -1) == UNKNOWN).any(1) if len(m) else np.zeros(0, bool)
    if not known.any():
        return np.zeros(m.shape[1:], dtype=np.float64)
    return (m[known] == 1).mean(0, dtype=np.float64)


def prior_share(prior: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """``(N,)`` the lung share of the image-blind map ``prior`` (``(H, W)``, e.g. :func:`mean_mask`
    of the TRAINING masks) on each evaluation mask.

    >>> prior = np.array([[0.5, 0.5], [0.0, 0.0]])
    >>> prior_share(prior, np.array([[[1, 0], [0, 0]]], dtype=np.uint8)).tolist()
    [0.5]
    """
    m = np.asarray(masks)
    return lung_share(np.broadcast_to(np.asarray(prior, dtype=np.float64), m.shape), m)


def area_share(masks: np.ndarray) -> np.ndarray:
    """``(N,)`` the lungs' share of the image: what a uniform map scores (NaN for unknown masks)."""
    m = np.asarray(masks)
    return lung_share(np.ones(m.shape), m)
