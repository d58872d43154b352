"""Lung-region ablations: an image with its lung fields, or everything outside them, blanked.

Why (issue 24.3; DeGrave et al. 2021, "AI for radiographic COVID-19 detection selects shortcuts
over signal", Nat Mach Intell): a chest-film classifier that still scores above chance when the
lungs are removed from its input is reading something other than the lungs (the hospital's
markings, collimation, contrast). Evaluating every trained model on both ablations says how much
of its score survives without the lungs and how much survives with the lungs alone.

The fill value is a documented choice, :data:`FILLS`:

* ``kept_mean`` (the default): the blanked region is set to the mean of the pixels that are KEPT
  in the same image (lungs blanked: the mean outside the lungs; outside blanked: the mean inside
  them). A constant computed from the kept pixels adds no information the kept pixels do not
  already carry, and keeps the image's overall brightness, so the model does not meet a black
  hole it never saw in training (zero fill is out of distribution for a network trained on
  radiographs and can push every image to one class, which reads as "at chance" for the wrong
  reason).
* ``zero``: black, as most published lung-masking experiments did; offered for comparison.

What the ablation cannot remove: the outline of the blanked region itself (the lung silhouette
stays visible as an edge). A finding that changes the lungs' shape (an effusion) can still be
read from it; the report states this next to the table.

Pure NumPy; masks follow :mod:`lungray.data.masks` (1 lung, 0 not, 255 unknown).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from lungray.errors import ConfigError

__all__ = ["REGIONS", "FILLS", "known_masks", "blank_region"]

#: what an ablation removes: the lung fields, or everything outside them
REGIONS = ("lungs", "outside")
#: the value the removed pixels get (module docstring)
FILLS = ("kept_mean", "zero")

UNKNOWN = 255


def known_masks(masks: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: the rows whose mask is usable for an ablation, i.e. it has no unknown
    (255) pixel and both a lung and a non-lung pixel (an all-lung or lung-less mask would make
    one of the two ablations blank the whole image)."""
    m = np.asarray(masks)
    if m.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {m.shape}")
    flat = m.reshape(len(m), -1)
    unknown = (flat == UNKNOWN).any(1)
    lung = (flat == 1).any(1)
    other = (flat == 0).any(1)
    return ~unknown & lung & other


def blank_region(images: np.ndarray, masks: np.ndarray, region: str, fill: str = "kept_mean") -> Tuple[np.ndarray, np.ndarray]:
    """``(ablated images, known)``: ``images`` with ``region`` set to the fill value.

    ``images`` ``(N, H, W)`` in any numeric dtype (the cache's uint8/uint16 are kept: the
    fill is rounded to the dtype); ``masks`` ``(N, H, W)`` 0/1/255 at the same geometry.
    Rows whose mask is not usable (:func:`known_masks`) are returned unchanged and marked
    ``False`` in ``known``: leave them out of any score.

    >>> img = np.array([[[10, 20], [30, 40]]], dtype=np.uint8)
    >>> lung = np.array([[[1, 1], [0, 0]]], dtype=np.uint8)
    >>> blank_region(img, lung, "lungs")[0][0].tolist()  # lungs -> mean(30, 40) = 35
    [[35, 35], [30, 40]]
    >>> blank_region(img, lung, "outside")[0][0].tolist()  # outside -> mean(10, 20) = 15
    [[10, 20], [15, 15]]
    """
    if region not in REGIONS:
        raise ConfigError(f"ablation region '{region}' is not valid; valid choices: {', '.join(REGIONS)}")
    if fill not in FILLS:
        raise ConfigError(f"ablation fill '{fill}' is not valid; valid choices: {', '.join(FILLS)}")
    x = np.asarray(images)
    m = np.asarray(masks)
    if x.shape != m.shape:
        raise ValueError(f"images {x.shape} and masks {m.shape} must have the same shape")
    known = known_masks(m)
    out = np.array(x, copy=True)
    removed = (m == 1) if region == "lungs" else (m == 0)
    kept = (m == 0) if region == "lungs" else (m == 1)
    for i in np.flatnonzero(known):
        if fill == "zero":
            value = 0.0
        else:
            value = float(x[i][kept[i]].astype(np.float64).mean())
        if np.issubdtype(out.dtype, np.integer):
            info = np.iinfo(out.dtype)
            value = float(np.clip(np.rint(value), info.min, info.max))
        out[i][removed[i]] = value
    return out, known
