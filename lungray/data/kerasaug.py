"""Keras ``ImageDataGenerator`` copies: the transform family of the augmented Kaggle sets.

Why: the public COVID-19 sets (COVID-19 X-ray & CT, the Radiography Database) hold copies made
with Keras' ``ImageDataGenerator`` (``shared/PROTOCOLS.md`` section 1): rotations up to 30
degrees, zoom 0.9-1.1 per axis, shifts, horizontal flips and brightness changes, the empty
border filled with the nearest pixel (the default) or black. :func:`keras_transform` is that
arithmetic (``keras.preprocessing.image.apply_affine_transform``), so the leakage audit is
measured on the copies it must find (``bench/bench_leakage.py``, the keypoint tests) and the
phantom can plant such copies itself (``data.phantom_copies``, :mod:`lungray.data.phantom`).
"""

from __future__ import annotations

import numpy as np


def keras_transform(
    img: np.ndarray,
    theta: float = 0.0,
    tx: float = 0.0,
    ty: float = 0.0,
    zx: float = 1.0,
    zy: float = 1.0,
    flip: bool = False,
    brightness: float = 1.0,
    fill: str = "nearest",
) -> np.ndarray:
    """A uint8 copy of a 2-D uint8 image as Keras' ``ImageDataGenerator`` makes it.

    Same arithmetic as ``keras.preprocessing.image.apply_affine_transform``: rotation by
    ``theta`` degrees, then a shift of ``tx`` rows and ``ty`` columns (pixels), then zoom
    ``zx``/``zy`` (> 1 zooms out), about the image centre, bilinear (``order=1``), border
    ``fill`` "nearest" (Keras' default) or "constant" (black); then the horizontal flip, then
    PIL's ``ImageEnhance.Brightness`` (a gain, clipped to 255).
    """
    from scipy import ndimage

    m = np.eye(3)
    if theta:
        t = np.deg2rad(theta)
        m = m @ np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])
    if tx or ty:
        m = m @ np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])
    if zx != 1 or zy != 1:
        m = m @ np.diag([zx, zy, 1.0])
    h, w = img.shape
    o = np.array([[1.0, 0.0, h / 2 + 0.5], [0.0, 1.0, w / 2 + 0.5], [0.0, 0.0, 1.0]])
    r = np.array([[1.0, 0.0, -(h / 2 + 0.5)], [0.0, 1.0, -(w / 2 + 0.5)], [0.0, 0.0, 1.0]])
    m = o @ m @ r
    if fill not in ("nearest", "constant"):
        raise ValueError(f"fill must be 'nearest' or 'constant', got {fill!r}")
    out = ndimage.affine_transform(img.astype(np.float64), m[:2, :2], m[:2, 2], order=1, mode=fill, cval=0.0)
    out = np.clip(np.rint(out), 0, 255)
    if flip:
        out = out[:, ::-1]
    if brightness != 1.0:
        out = np.clip(np.rint(out * brightness), 0, 255)
    return np.ascontiguousarray(out.astype(np.uint8))


def keras_random_params(
    rng: np.random.Generator,
    shape: tuple[int, int],
    rotation: float = 30.0,
    shift: float = 0.1,
    zoom: tuple[float, float] = (0.9, 1.1),
    brightness: tuple[float, float] = (0.7, 1.3),
    p_constant: float = 0.2,
) -> dict:
    """One random draw of :func:`keras_transform` parameters, as ``ImageDataGenerator`` draws them
    (``rotation_range``, ``width/height_shift_range`` as fractions, ``zoom_range`` with independent
    x and y, ``horizontal_flip``, ``brightness_range``), with fill "constant" in ``p_constant`` of draws."""
    h, w = shape
    zx, zy = rng.uniform(zoom[0], zoom[1], 2)
    return {
        "theta": float(rng.uniform(-rotation, rotation)),
        "tx": float(rng.uniform(-shift, shift) * h),
        "ty": float(rng.uniform(-shift, shift) * w),
        "zx": float(zx),
        "zy": float(zy),
        "flip": bool(rng.random() < 0.5),
        "brightness": float(rng.uniform(*brightness)),
        "fill": "constant" if rng.random() < p_constant else "nearest",
    }
