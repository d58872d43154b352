"""Segmentation masks for the prepared cache: one ``uint8`` class index per pixel, image-aligned.

``masks.npy`` (N, R, R) sits next to ``images.npy`` in the same row order, at the cache
resolution and through the SAME geometry as the image (``stretch`` or ``letterbox``,
:func:`lungray.data.decode.resize`). Values: ``0`` background, ``1`` foreground, and
:data:`IGNORE` (255) for a row whose mask is unknown (a lung-mask dataset where one image has no
mask file): losses and metrics skip those pixels (``ignore_index=255``, the torchvision /
mmseg convention), so such an image never counts as "no finding".

Where masks come from (``MASK_KINDS``; a dataset has one kind, recorded in ``meta.json``):

``lesion``        the phantom's lesion masks (:mod:`lungray.data.phantom`), generated at the
                  study resolution with the images.
``lesion_boxes``  RSNA Pneumonia Detection: the challenge's boxes filled, 1 inside and 0 out
                  (PROTOCOLS.md section 3, "masks made by filling the boxes"); a patient with
                  several boxes gets their union, a ``Target=0`` patient an empty mask. Box
                  coordinates are in the DICOM's own pixel space (1024 x 1024 in the challenge)
                  and are mapped exactly (rational arithmetic) through the resize geometry; a
                  cache pixel is inside when its CENTRE is inside the mapped box, so a box
                  edge on a pixel centre counts on its left/top side and not on its right/bottom
                  side (half-open intervals: two boxes that touch never overlap).
``lung``          COVID-19 Radiography Database: ``<Class>/masks/<name>.png`` next to
                  ``<Class>/images/<name>.png`` (lung masks, 256 x 256 for 299 x 299 images in
                  the release: the mask covers the image's field of view at another size, so it
                  is resized to the image's placement, area-averaged and thresholded at 0.5).

Old caches: the mask rules enter the cache key (:func:`mask_fingerprint`), so a cache written
before masks existed, or with other boxes or mask files, is never reused for a dataset that has
masks. Datasets without masks keep their key.
"""

from __future__ import annotations

import hashlib
import json
import os
from fractions import Fraction
from math import ceil
from typing import Any, Optional, Sequence

import numpy as np

from lungray.metrics.segmentation import IGNORE  # "unknown" pixels, skipped by losses and metrics

#: the mask kinds a prepared dataset can have
MASK_KINDS = ("lesion", "lesion_boxes", "lung")
#: the data source that provides each kind (``None``: the source has no masks)
SOURCE_MASK_KIND = {"phantom": "lesion", "rsna": "lesion_boxes", "covid_radiography": "lung"}
#: bump when a rasterisation rule below changes, so caches with masks are rebuilt
MASK_RULES_VERSION = 1


def placement(height: int, width: int, resolution: int, mode: str) -> tuple[int, int, int, int]:
    """``(nh, nw, top, left)``: where an ``height x width`` image lands in the ``R x R`` cache image.

    The same arithmetic as :func:`lungray.data.decode.resize` (a test holds the two together):
    ``stretch`` fills the square; ``letterbox`` scales the long side to ``R`` and centres the
    short side.
    """
    r = int(resolution)
    if mode == "stretch":
        return r, r, 0, 0
    if mode != "letterbox":
        from lungray.errors import DataError

        raise DataError(f"resize mode '{mode}' is not valid; valid choices: stretch, letterbox")
    s = r / max(height, width)
    nh, nw = max(1, round(height * s)), max(1, round(width * s))
    return nh, nw, (r - nh) // 2, (r - nw) // 2


def _centre_span(lo: Fraction, hi: Fraction, start: int, stop: int) -> tuple[int, int]:
    """Pixel indices ``j`` in ``[start, stop)`` whose centre ``j + 1/2`` lies in ``[lo, hi)``."""
    half = Fraction(1, 2)
    a = max(start, ceil(lo - half))
    b = min(stop, ceil(hi - half))
    return a, max(a, b)


def box_mask(
    boxes: Sequence[Sequence[float]],
    height: int,
    width: int,
    resolution: int,
    mode: str = "stretch",
) -> np.ndarray:
    """Filled ``[x, y, w, h]`` boxes (native pixel space) as an ``(R, R)`` uint8 0/1 mask.

    A native x maps to ``left + x * nw / width`` (the resize's exact scale, ``nw`` after
    rounding), y likewise; pixel ``(i, j)`` is set when its centre lies inside a mapped box
    (half-open). Boxes are clipped to the image; empty or negative boxes set nothing.

    >>> int(box_mask([[100, 200, 300, 150]], 1024, 1024, 32).sum())  # columns 3..11, rows 6..10
    45
    """
    r = int(resolution)
    nh, nw, top, left = placement(int(height), int(width), r, mode)
    out = np.zeros((r, r), dtype=np.uint8)
    sx, sy = Fraction(nw, int(width)), Fraction(nh, int(height))
    for box in boxes:
        x, y, w, h = (Fraction(float(v)) for v in box)
        if w <= 0 or h <= 0:
            continue
        c0, c1 = _centre_span(left + x * sx, left + (x + w) * sx, left, left + nw)
        r0, r1 = _centre_span(top + y * sy, top + (y + h) * sy, top, top + nh)
        out[r0:r1, c0:c1] = 1
    return out


def fit_mask(mask: np.ndarray, height: int, width: int, resolution: int, mode: str = "stretch") -> np.ndarray:
    """A binary mask covering an ``height x width`` image's field of view -> ``(R, R)`` uint8 0/1.

    The mask may have another size than the image (the Radiography Database's 256 px masks for
    299 px images): it is resized to the image's placement (area averaging when shrinking,
    bilinear when enlarging, as the image) and thresholded at 0.5, i.e. a cache pixel is
    foreground when most of it is.
    """
    import cv2

    r = int(resolution)
    nh, nw, top, left = placement(int(height), int(width), r, mode)
    m = np.ascontiguousarray(np.asarray(mask) > 0, dtype=np.float32)
    if m.shape != (nh, nw):
        interp = cv2.INTER_AREA if (m.shape[0] > nh or m.shape[1] > nw) else cv2.INTER_LINEAR
        m = cv2.resize(m, (nw, nh), interpolation=interp)
    out = np.zeros((r, r), dtype=np.uint8)
    out[top : top + nh, left : left + nw] = m >= 0.5
    return out


def read_mask_file(path: str) -> np.ndarray:
    """A mask image file -> bool (H, W) foreground (brighter than half scale), via the image decoder."""
    from lungray.data.decode import decode

    return decode(path) >= 0.5


def row_mask(kind: str, spec: str, height: int, width: int, resolution: int, mode: str) -> np.ndarray:
    """The cache mask of one decoded row: ``spec`` is the boxes JSON (``lesion_boxes``) or the
    mask file path (``lung``; empty = unknown -> all :data:`IGNORE`). Raises on an unreadable
    mask file (the caller records it and stores :data:`IGNORE`)."""
    if kind == "lesion_boxes":
        return box_mask(json.loads(spec or "[]"), height, width, resolution, mode)
    if kind == "lung":
        if not spec:
            return np.full((int(resolution),) * 2, IGNORE, dtype=np.uint8)
        return fit_mask(read_mask_file(spec), height, width, resolution, mode)
    raise ValueError(f"mask kind '{kind}' is not decoded from files; valid: lesion_boxes, lung")


def mask_kind_of(manifest: Any) -> Optional[str]:
    """The mask kind of a manifest's dataset, or ``None`` when it has no masks.

    Decided by the source (``SOURCE_MASK_KIND``); a ``lung`` source needs at least one row with
    a ``mask_path`` (the Radiography Database's older release has no ``masks/`` folders).
    """
    good = manifest[manifest["problem"] == ""]
    if len(good) == 0:
        return None
    sources = set(good["source"].astype(str))
    kinds = {SOURCE_MASK_KIND.get(s) for s in sources}
    if len(kinds) != 1:
        return None
    kind = kinds.pop()
    if kind == "lung" and not (good["mask_path"].astype(str) != "").any():
        return None
    return kind


def mask_fingerprint(manifest: Any, kind: Optional[str]) -> str:
    """What determines the masks beyond the image manifest: kind, rules, boxes, mask files.

    ``""`` when there are no masks (the cache key of mask-less datasets is unchanged). Mask
    files enter by size and modification time, as images do in ``manifest_fingerprint``.
    """
    if kind is None:
        return ""
    h = hashlib.sha256(json.dumps(["masks", MASK_RULES_VERSION, kind]).encode())
    if kind in ("lesion_boxes", "lung"):
        good = manifest[manifest["problem"] == ""]
        for boxes, mpath in zip(good["boxes"].astype(str), good["mask_path"].astype(str)):
            stamp = ""
            if mpath:
                try:
                    st = os.stat(mpath)
                    stamp = f"{st.st_size}:{st.st_mtime_ns}"
                except OSError:
                    stamp = "missing"
            h.update(f"{boxes}\x00{mpath}\x00{stamp}\n".encode())
    return h.hexdigest()[:16]
