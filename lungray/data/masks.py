"""Segmentation masks for the prepared cache: one ``uint8`` class index per pixel, image-aligned.

``masks.npy`` (N, R, R) sits next to ``images.npy`` in the same row order, at the cache
resolution and through the SAME geometry as the image: the resize (``stretch`` or
``letterbox``, :func:`lungray.data.decode.resize`) and then every geometric preprocessing step
(``center_crop``: :data:`lungray.data.preprocess.GEOMETRY`); photometric steps (CLAHE,
equalisation) move no pixel. Values: ``0`` background, ``1`` foreground, and
:data:`IGNORE` (255) for a row whose mask is unknown (a lung-mask dataset where one image has no
mask file): losses and metrics skip those pixels (``ignore_index=255``, the torchvision /
mmseg convention), so such an image never counts as "no finding".

Where masks come from (``MASK_KINDS``; a dataset has one kind, recorded in ``meta.json``):

``lesion``        the phantom's lesion masks (:mod:`lungray.data.phantom`), generated at the
                  study resolution with the images.
``lesion_boxes``  RSNA Pneumonia Detection: the challenge's boxes filled, 1 inside and 0 out
                  (PROTOCOLS.md section 3, "masks made by filling the boxes"); a patient with
                  several boxes gets their union, a ``Target=0`` patient an empty mask. Box
                  coordinates are in the challenge's 1024 x 1024 pixel space
                  (:data:`RSNA_BOX_SPACE`: every challenge DICOM is 1024 x 1024); a DICOM of
                  another size (a resized copy) gets its boxes scaled by its own size per
                  axis (``x * columns / 1024``), never clipped into a corner, and ``data
                  check`` lists such files. Boxes are mapped exactly (rational arithmetic)
                  through the resize and crop geometry; a cache pixel is inside when its
                  CENTRE is inside the mapped box, so a box edge on a pixel centre counts on
                  its left/top side and not on its right/bottom side (half-open intervals: two
                  boxes that touch never overlap).
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
#: (2: masks follow ``center_crop``; RSNA boxes scaled from the 1024 px space to the DICOM's size)
MASK_RULES_VERSION = 2
#: the pixel space of the RSNA challenge's boxes, (height, width): all its DICOMs are 1024 x 1024
RSNA_BOX_SPACE = (1024, 1024)


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


def _through_windows(lo: Fraction, hi: Fraction, windows: Sequence[tuple[int, int]], r: int) -> tuple[Fraction, Fraction]:
    """``[lo, hi)`` in cache coordinates through crop windows ``(offset, length)`` on one axis,
    each resized back to ``r`` pixels (:class:`lungray.data.preprocess.Window`)."""
    for off, length in windows:
        lo, hi = (lo - off) * Fraction(r, length), (hi - off) * Fraction(r, length)
    return lo, hi


def box_mask(
    boxes: Sequence[Sequence[float]],
    height: int,
    width: int,
    resolution: int,
    mode: str = "stretch",
    *,
    box_space: Optional[tuple[int, int]] = None,
    preprocess: str = "none",
) -> np.ndarray:
    """Filled ``[x, y, w, h]`` boxes as an ``(R, R)`` uint8 0/1 mask of a ``height x width`` image.

    ``box_space`` ``(H0, W0)``: the pixel space the boxes are given in (RSNA: 1024 x 1024),
    scaled to the image's per axis; ``None``: the image's own. A box x maps to
    ``left + x * (width / W0) * nw / width`` (the resize's exact scale, ``nw`` after rounding),
    y likewise, clipped to the image's placement, then through the crop window of each
    geometric step of ``preprocess`` (``center_crop``); pixel ``(i, j)`` is set when its centre
    lies inside a mapped box (half-open). Empty or negative boxes set nothing.

    >>> int(box_mask([[100, 200, 300, 150]], 1024, 1024, 32).sum())  # columns 3..11, rows 6..10
    45
    >>> int(box_mask([[100, 200, 300, 150]], 64, 64, 32, box_space=(1024, 1024)).sum())  # a 64 px copy: the same
    45
    """
    from lungray.data.preprocess import geometry_windows

    r = int(resolution)
    nh, nw, top, left = placement(int(height), int(width), r, mode)
    out = np.zeros((r, r), dtype=np.uint8)
    h0, w0 = (int(height), int(width)) if box_space is None else (int(box_space[0]), int(box_space[1]))
    sx, sy = Fraction(nw, w0), Fraction(nh, h0)
    wins = geometry_windows(preprocess, r, r)
    cols, rows = [(w.left, w.width) for w in wins], [(w.top, w.height) for w in wins]
    for box in boxes:
        x, y, w, h = (Fraction(float(v)) for v in box)
        if w <= 0 or h <= 0:
            continue
        x0, x1 = max(left + x * sx, Fraction(left)), min(left + (x + w) * sx, Fraction(left + nw))
        y0, y1 = max(top + y * sy, Fraction(top)), min(top + (y + h) * sy, Fraction(top + nh))
        if x1 <= x0 or y1 <= y0:
            continue
        c0, c1 = _centre_span(*_through_windows(x0, x1, cols, r), 0, r)
        r0, r1 = _centre_span(*_through_windows(y0, y1, rows, r), 0, r)
        out[r0:r1, c0:c1] = 1
    return out


def preprocess_mask(mask: np.ndarray, preprocess: str) -> np.ndarray:
    """An ``(R, R)`` class-index mask (0, 1, :data:`IGNORE`) through the geometric steps of
    ``preprocess``, as the image goes: the same crop, the same bilinear resize of the
    foreground and of the unknown indicator, each thresholded at 0.5 (unknown wins), so the
    mask's edge lands where the image's half-way edge does. Photometric steps change nothing.

    >>> m = np.zeros((64, 64), np.uint8); m[28:36, 28:36] = 1  # center_crop keeps rows/cols 4..59
    >>> # 24..32 in the crop -> 27.43..36.57 after x 64/56: pixels 27..36, less the 4 corners
    >>> # (bilinear weights 0.57 x 0.57 < 1/2); a photometric step moves nothing
    >>> int(preprocess_mask(m, "center_crop").sum()), int(preprocess_mask(m, "clahe").sum())
    (96, 64)
    """
    from lungray.data.preprocess import crop_resize, geometry_windows

    out = np.asarray(mask, dtype=np.uint8)
    for win in geometry_windows(preprocess, *out.shape):
        fg = crop_resize((out == 1).astype(np.float32), win) >= 0.5
        unknown = crop_resize((out == IGNORE).astype(np.float32), win) >= 0.5
        out = np.where(unknown, IGNORE, fg).astype(np.uint8)
    return out


def fit_mask(mask: np.ndarray, height: int, width: int, resolution: int, mode: str = "stretch", preprocess: str = "none") -> np.ndarray:
    """A binary mask covering an ``height x width`` image's field of view -> ``(R, R)`` uint8 0/1.

    The mask may have another size than the image (the Radiography Database's 256 px masks for
    299 px images): it is resized to the image's placement (area averaging when shrinking,
    bilinear when enlarging, as the image) and thresholded at 0.5, i.e. a cache pixel is
    foreground when most of it is; then through ``preprocess``'s geometry (:func:`preprocess_mask`).
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
    return preprocess_mask(out, preprocess)


def read_mask_file(path: str) -> np.ndarray:
    """A mask image file -> bool (H, W) foreground (brighter than half scale), via the image decoder."""
    from lungray.data.decode import decode

    return decode(path) >= 0.5


def row_mask(kind: str, spec: str, height: int, width: int, resolution: int, mode: str, preprocess: str = "none") -> np.ndarray:
    """The cache mask of one decoded row, in the geometry of its cached image (resize ``mode``,
    then ``preprocess``'s crops): ``spec`` is the boxes JSON (``lesion_boxes``, in
    :data:`RSNA_BOX_SPACE`) or the mask file path (``lung``; empty = unknown -> all
    :data:`IGNORE`). Raises on an unreadable mask file (the caller records it and stores
    :data:`IGNORE`)."""
    if kind == "lesion_boxes":
        return box_mask(json.loads(spec or "[]"), height, width, resolution, mode, box_space=RSNA_BOX_SPACE, preprocess=preprocess)
    if kind == "lung":
        if not spec:
            return np.full((int(resolution),) * 2, IGNORE, dtype=np.uint8)
        return fit_mask(read_mask_file(spec), height, width, resolution, mode, preprocess)
    raise ValueError(f"mask kind '{kind}' is not decoded from files; valid: lesion_boxes, lung")


def box_space_note(ids: Sequence[str], widths: Sequence[int], heights: Sequence[int], space: tuple[int, int] = RSNA_BOX_SPACE) -> Optional[str]:
    """One line naming the images (by their hashed ids: RSNA file names are patient ids) whose
    size is not the boxes' pixel space, or ``None`` when every known size is. Sizes of 0 are
    unknown (not decoded) and skipped."""
    from collections import Counter

    h0, w0 = space
    odd = [(str(i), int(w), int(h)) for i, w, h in zip(ids, widths, heights) if int(w) > 0 and int(h) > 0 and (int(h), int(w)) != (h0, w0)]
    if not odd:
        return None
    sizes = Counter(f"{w} x {h}" for _, w, h in odd)
    by = ", ".join(f"{k}: {v}" for k, v in sizes.most_common(3)) + (", ..." if len(sizes) > 3 else "")
    ex = ", ".join(i for i, _, _ in odd[:3]) + (", ..." if len(odd) > 3 else "")
    return (
        f"{len(odd)} RSNA DICOM(s) are not {w0} x {h0} ({by}; {ex}): their boxes, given in the challenge's "
        f"{w0} x {h0} pixel space, are scaled to each file's size (this assumes a resized copy with the same field "
        "of view; a cropped copy needs boxes of its own)"
    )


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
