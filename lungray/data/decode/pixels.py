"""Pixel arrays to lungray's one gray scale, float32 in [0, 1] (bright = dense), and the size
limits every container obeys (the rules: :mod:`lungray.data.decode`).

One subject of :mod:`lungray.data.decode` (issue 22.2): the arithmetic the raster and DICOM
decoders and the MedMNIST arrays share, so the same radiograph gives the same pixels whatever
its container.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from lungray.data.decode.problems import ImageError, PixelError
from lungray.errors import DataError

# ITU-R BT.601 luma weights (PIL "L", OpenCV cvtColor)
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)

#: Larger images are quarantined from their header, never decoded. Pillow's default
#: ``Image.MAX_IMAGE_PIXELS`` (its decompression-bomb *warning* threshold): a digital chest
#: radiograph is at most ~4300 x 3500 px (15 MP), so anything this big is an export error or a
#: bomb (a 30000 x 30000 PNG of zeros is 875 KB on disk and 900 MB decoded).
MAX_PIXELS = 89_478_485
#: Images with more pixels are decoded reduced by an integer factor (:mod:`lungray.data.decode`):
#: twice the largest study resolution (512 px) and more, so no study loses detail, while the
#: float pipeline's memory stays bounded.
WORK_PIXELS = 2048 * 2048
#: Images with a side shorter than this are quarantined (1x1 and icon-sized files are export
#: errors; MedMNIST's 28 px is the smallest real dataset lungray reads).
MIN_SIDE = 16


def _luma(rgb: np.ndarray, bgr: bool = False) -> np.ndarray:
    w = LUMA[::-1] if bgr else LUMA
    return rgb[..., :3].astype(np.float64) @ w


def array_to_unit(arr: np.ndarray, *, bgr: bool = False) -> np.ndarray:
    """A decoded pixel array (gray, RGB or RGBA; any integer or float dtype) -> float32 [0, 1].

    Used for raster files and for MedMNIST arrays, so both follow the same scaling rules.
    """
    a = np.asarray(arr)
    alpha = None
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[-1] in (2, 4):
        alpha = a[..., -1]
        a = a[..., :-1]
        if a.shape[-1] == 1:
            a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] != 3):
        raise DataError(f"expected a 2-D gray or (H, W, 3) colour image, got shape {a.shape}")
    dtype = a.dtype
    _check_finite(a)
    if a.ndim == 3:
        a = _luma(a, bgr=bgr)
    else:
        a = a.astype(np.float64)
    if dtype == np.bool_:
        x = a
    elif np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if info.min < 0:  # signed: min-max (no fixed full scale)
            x = _minmax(a)
        else:
            x = a / float(info.max) if info.max <= 65535 else _full_or_minmax(a)
    else:
        x = a if (a.size and a.min() >= 0 and a.max() <= 1) else _minmax(a)
    if alpha is not None:
        amax = float(np.iinfo(alpha.dtype).max) if np.issubdtype(alpha.dtype, np.integer) else 1.0
        x = x * (alpha.astype(np.float64) / amax)
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def _check_finite(a: np.ndarray) -> None:
    """NaN/inf pixels (float TIFF, float DICOM) have no gray value: min-max scaling would turn
    the whole image black or NaN, so the image is refused instead."""
    if np.issubdtype(a.dtype, np.floating):
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        if bad:
            raise PixelError(f"non-finite pixel values ({bad} NaN/inf pixel(s))")


def _full_or_minmax(a: np.ndarray) -> np.ndarray:
    # 32-bit integer images (PIL mode "I") that hold 16-bit data keep the 16-bit full scale
    if a.size and a.min() >= 0 and a.max() <= 65535:
        return a / 65535.0
    return _minmax(a)


def _minmax(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    if a.size == 0:
        return a
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if not hi > lo:
        return np.zeros_like(a)
    return (a - lo) / (hi - lo)


def _check_size(p: Path, width: int, height: int) -> None:
    pixels = int(width) * int(height)
    if pixels > MAX_PIXELS:
        raise ImageError(
            p, f"image too large ({width}x{height} px = {pixels / 1e6:.1f} megapixels; the limit is {MAX_PIXELS / 1e6:.1f})"
        )
    if min(int(width), int(height)) < MIN_SIDE:
        raise ImageError(p, f"image too small ({width}x{height} px; at least {MIN_SIDE} px per side)")


def _reduce_factor(width: int, height: int) -> int:
    """The smallest integer k with (w/k) * (h/k) <= WORK_PIXELS."""
    return max(1, math.ceil(math.sqrt(width * height / WORK_PIXELS)))


def block_mean(a: np.ndarray, k: int) -> np.ndarray:
    """Mean of ``k`` x ``k`` blocks (trailing rows/columns that do not fill a block are dropped),
    in the input dtype (rounded for integers, so a uint16 image keeps its 16-bit meaning).
    Computed band by band, so the float copy is never larger than a band."""
    if k <= 1:
        return a
    h, w = a.shape[:2]
    H, W = h // k, w // k
    tail = a.shape[2:]
    out = np.empty((H, W) + tail, dtype=a.dtype)
    band = max(1, 1024 // k)
    for r in range(0, H, band):
        rows = min(band, H - r)
        x = a[r * k : (r + rows) * k, : W * k].astype(np.float32)
        m = x.reshape((rows, k, W, k) + tail).mean(axis=(1, 3))
        out[r : r + rows] = np.rint(m) if np.issubdtype(a.dtype, np.integer) else m
    return out
