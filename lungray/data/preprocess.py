"""Contrast preprocessing applied once, before caching: ``PREPROCESSING`` registry.

Each entry is ``fn(img, resolution) -> img`` on a float32 ``(H, W)`` image in ``[0, 1]`` at the
study resolution (after :func:`lungray.data.decode.resize`), returning the same shape and range.
Running after the resize keeps neighbourhood sizes meaningful at any resolution and costs a
fraction of running at native 1024-3000 px. The result is what the cache stores, so a study
that changes preprocessing gets a different cache key and never mixes the two.

- ``none``: the decoded image.
- ``clahe``: OpenCV CLAHE, clip limit 2.0, 8x8 tiles (the 4-class study, PROTOCOLS.md section 4,
  tried it; it lowered AlexNet to 73.37 %, which is why it is not a default). Computed on 8 bits,
  as the study's PNGs were: OpenCV's clip limit is relative to the histogram size, so on 16 bits
  the same 2.0 would clip almost everything.
- ``hist_eq``: global histogram equalisation (scikit-image, 256 bins).
- ``local_eq``: scikit-image rank ``equalize`` with a disk; the CNN-from-scratch study
  (PROTOCOLS.md section 5) used radius 70 at about 299 px, so the radius is scaled to
  ``round(70 * resolution / 299)`` (at least 1) to cover the same fraction of the chest.

Heavy imports (cv2, scikit-image) happen inside the functions: the registry is imported by
config validation and must stay cheap.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from lungray.registry import Registry

PreprocessFn = Callable[[np.ndarray, int], np.ndarray]

PREPROCESSING: Registry[PreprocessFn] = Registry("preprocessing")

#: Local-equalisation disk radius of PROTOCOLS.md section 5, and the resolution it was used at.
LOCAL_EQ_RADIUS = 70
LOCAL_EQ_REFERENCE_RES = 299


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


@PREPROCESSING.register("none")
def no_preprocessing(img: np.ndarray, resolution: int) -> np.ndarray:
    """The decoded image, unchanged."""
    return np.asarray(img, dtype=np.float32)


@PREPROCESSING.register("clahe")
def clahe(img: np.ndarray, resolution: int, clip_limit: float = 2.0, tiles: int = 8) -> np.ndarray:
    """CLAHE, clip 2.0, 8x8 tiles on 8 bits (tried and dropped in PROTOCOLS.md section 4)."""
    import cv2

    op = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(tiles, tiles))
    return op.apply(_to_u8(img)).astype(np.float32) / 255.0


@PREPROCESSING.register("hist_eq")
def hist_eq(img: np.ndarray, resolution: int) -> np.ndarray:
    """Global histogram equalisation (256 bins)."""
    from skimage.exposure import equalize_hist

    x = np.asarray(img, dtype=np.float32)
    if float(x.max()) <= float(x.min()):
        return x.copy()
    return np.asarray(equalize_hist(x, nbins=256), dtype=np.float32)


def local_eq_radius(resolution: int) -> int:
    """Disk radius scaled from 70 px at 299 px (PROTOCOLS.md section 5).

    >>> local_eq_radius(299), local_eq_radius(64), local_eq_radius(8)
    (70, 15, 2)
    """
    return max(1, int(round(LOCAL_EQ_RADIUS * resolution / LOCAL_EQ_REFERENCE_RES)))


@PREPROCESSING.register("local_eq")
def local_eq(img: np.ndarray, resolution: int) -> np.ndarray:
    """Local (rank) histogram equalisation with a disk of radius 70 px per 299 px."""
    from skimage.filters.rank import equalize
    from skimage.morphology import disk

    out = equalize(_to_u8(img), footprint=disk(local_eq_radius(resolution)))
    return out.astype(np.float32) / 255.0


def apply_preprocessing(name: str, img: np.ndarray, resolution: int) -> np.ndarray:
    """Run the named preprocessing and check it kept shape and range."""
    out = PREPROCESSING.get(name)(img, resolution)
    assert out.shape == img.shape, (name, out.shape, img.shape)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)
