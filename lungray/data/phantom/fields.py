"""Smooth building blocks of the phantom, vectorised over the pixel grid (no per-pixel loops).

Everything is drawn analytically in continuous coordinates, so any resolution is a clean
rendering of the same case.
"""

from __future__ import annotations

import math

import numpy as np


def rng(seed: int, stream: int, *key: int) -> np.random.Generator:
    """An independent random stream ``default_rng([seed, stream, *key])``: a draw never depends on
    how many other draws were made, which is what makes image ``i`` independent of ``n``."""
    return np.random.default_rng([int(seed), stream, *map(int, key)])


class Frame:
    """The pixel grid of one image and its map to body coordinates.

    Image (detector) coordinates ``X`` (columns) and ``Y`` (rows, downwards) run over pixel
    centres in [-1, 1]; body coordinates ``x, y`` are an affine function of them (rotation,
    shift, zoom), which :func:`field` exploits to evaluate random fields as one small matrix
    product. Markings placed on the detector (side markers, rulers, burned-in text) use ``X, Y``;
    anatomy uses ``x, y``.
    """

    def __init__(self, resolution: int, angle: float = 0.0, shift: tuple[float, float] = (0.0, 0.0), zoom: float = 1.0):
        g = (np.arange(resolution, dtype=np.float64) + 0.5) / resolution * 2.0 - 1.0
        c, s = math.cos(angle), math.sin(angle)
        # x = (c (X - sx) + s (Y - sy)) / zoom ;  y = (-s (X - sx) + c (Y - sy)) / zoom
        self.resolution = resolution
        self.m = np.array([[c, s], [-s, c]]) / zoom  # rows: x, y ; columns: X, Y
        self.t = -self.m @ np.asarray(shift, dtype=np.float64)
        self.g = g
        self.X, self.Y = np.meshgrid(g, g)
        self.x = self.m[0, 0] * self.X + self.m[0, 1] * self.Y + self.t[0]
        self.y = self.m[1, 0] * self.X + self.m[1, 1] * self.Y + self.t[1]


def sig(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def fourier(r: np.random.Generator, k: int, fmin: float, fmax: float) -> tuple[np.ndarray, np.ndarray]:
    """Random Fourier components: frequencies (k, 2) in cycles per unit, phases (k,)."""
    rad = r.uniform(fmin, fmax, k)
    a = r.uniform(0, np.pi, k)
    f = np.stack([rad * np.cos(a), rad * np.sin(a)], axis=1)
    return f, r.uniform(0, 2 * np.pi, k)


def field(fr: Frame, comp: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Unit-variance smooth random field in body coordinates: a sum of cosines.

    Resolution independent, and separable on the pixel grid because body coordinates are
    affine in pixel coordinates: sum_k cos(a_k X + b_k Y + c_k) = Re(E_row @ E_col).
    """
    f, ph = comp
    fm = (2 * np.pi) * (f @ fr.m)  # (K, 2): coefficients of X and Y
    gamma = (2 * np.pi) * (f @ fr.t) + ph
    rows = np.exp(1j * (fr.g[:, None] * fm[None, :, 1] + gamma[None, :]))  # (R, K)
    cols = np.exp(1j * (fm[:, 0][:, None] * fr.g[None, :]))  # (K, R)
    # einsum, not @: a multithreaded BLAS call on tiny matrices thrashes a busy machine
    return np.einsum("rk,kc->rc", rows, cols).real * math.sqrt(2.0 / len(ph))


def ridged(f: np.ndarray, width: float) -> np.ndarray:
    """Thin lines along the zero set of a field (vessels, reticulation)."""
    return np.exp(-((f / width) ** 2))


def tube(d: np.ndarray, half: float, wall: float = 0.4) -> np.ndarray:
    """Projected thickness of a hollow cylinder at distance ``d`` from its axis (bright cortex)."""
    r2 = (d / half) ** 2
    outer = np.sqrt(np.clip(1.0 - r2, 0.0, None))
    inner = np.sqrt(np.clip((1.0 - wall) ** 2 - r2, 0.0, None))
    return outer - 0.75 * inner


def bump(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0) -> np.ndarray:
    """Smooth compact bump (1 - r^2)^2 on a rotated ellipse (soft-edged lesions)."""
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = x - cx, y - cy
    u = (c * dx + s * dy) / rx
    v = (-s * dx + c * dy) / ry
    return np.clip(1.0 - (u * u + v * v), 0.0, None) ** 2


def ellipsoid(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0) -> np.ndarray:
    """Projected thickness of an ellipsoid, sqrt(1 - r^2) (heart, aortic knob)."""
    return np.sqrt(np.sqrt(bump(x, y, cx, cy, rx, ry, angle)))
