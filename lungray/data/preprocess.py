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

- ``center_crop``: the central 224/256 of the image, resized back to the study resolution:
  torchvision's ``Resize(256)`` + ``CenterCrop(224)`` of the RSNA study (PROTOCOLS.md section 3)
  on the already square cached image.

Names combine with ``+`` and run left to right (``center_crop+clahe``).

Geometry: every step but ``center_crop`` is photometric (no pixel moves). A geometric step is
registered in :data:`GEOMETRY` with the crop :class:`Window` it takes, so masks follow the image
(:func:`lungray.data.masks.preprocess_mask` and the exact box mapping of
:func:`lungray.data.masks.box_mask`): a segmentation mask is always in the geometry of the image
it belongs to. A new geometric step must register its window (a test checks every registered
step on a planted bright box).

Heavy imports (cv2, scikit-image) happen inside the functions: the registry is imported by
config validation and must stay cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
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


#: torchvision's Resize(256) + CenterCrop(224): the share of the image side that is kept
CENTER_CROP_FRACTION = 224 / 256


@dataclass(frozen=True)
class Window:
    """Rows ``top..top+height`` and columns ``left..left+width`` of an ``H x W`` image, resized
    back to ``H x W`` (bilinear, OpenCV's pixel-centre convention): a continuous coordinate
    ``u`` (pixel edges at integers) maps to ``(u - left) * W / width``, rows likewise."""

    top: int
    left: int
    height: int
    width: int


def center_crop_window(height: int, width: int) -> Window:
    """The central 224/256 of an ``height x width`` image (at least one pixel per side)."""
    ch, cw = max(1, int(round(height * CENTER_CROP_FRACTION))), max(1, int(round(width * CENTER_CROP_FRACTION)))
    return Window((height - ch) // 2, (width - cw) // 2, ch, cw)


def crop_resize(img: np.ndarray, win: Window) -> np.ndarray:
    """``img`` cropped to ``win`` and resized back to its own size (bilinear)."""
    import cv2

    x = np.asarray(img, dtype=np.float32)
    h, w = x.shape
    crop = np.ascontiguousarray(x[win.top : win.top + win.height, win.left : win.left + win.width])
    return cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)


@PREPROCESSING.register("center_crop")
def center_crop(img: np.ndarray, resolution: int) -> np.ndarray:
    """The central 224/256 of the image, resized back (torchvision Resize(256)+CenterCrop(224), section 3)."""
    x = np.asarray(img, dtype=np.float32)
    return crop_resize(x, center_crop_window(*x.shape))


#: the geometric steps and the crop window each takes of an ``(H, W)`` image; every other
#: registered step is photometric (see the module docstring)
GEOMETRY: dict[str, Callable[[int, int], Window]] = {"center_crop": center_crop_window}


def geometry_windows(name: str, height: int, width: int) -> list[Window]:
    """The crop windows of ``name``'s geometric steps, in order (``[]``: no pixel moves)."""
    return [GEOMETRY[step](height, width) for step in preprocessing_steps(name) if step in GEOMETRY]


def preprocessing_steps(name: str) -> list[str]:
    """``"center_crop+clahe"`` -> ``["center_crop", "clahe"]`` (``none`` steps dropped)."""
    return [p.strip() for p in str(name).split("+") if p.strip() and p.strip() != "none"]


def check_preprocessing(name: str, where: str = "data.preprocess") -> str:
    """Raise a ConfigError naming ``where`` unless every ``+``-joined step is registered."""
    from lungray.errors import ConfigError

    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: expected a preprocessing name, got {name!r}; valid choices: {', '.join(PREPROCESSING.names())}")
    for step in [p.strip() for p in name.split("+")]:
        if step not in PREPROCESSING:
            raise ConfigError(f"{where}: {PREPROCESSING.unknown_message(step)} (combine steps with '+')")
    return name


def apply_preprocessing(name: str, img: np.ndarray, resolution: int) -> np.ndarray:
    """Run the named preprocessing (``+``-joined steps in order) and check it kept shape and range."""
    out = np.asarray(img, dtype=np.float32)
    for step in preprocessing_steps(name) or ["none"]:
        out = np.clip(PREPROCESSING.get(step)(out, resolution), 0.0, 1.0)
        assert out.shape == img.shape, (name, out.shape, img.shape)
    return out.astype(np.float32, copy=False)
