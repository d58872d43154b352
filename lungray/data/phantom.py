"""The phantom: lungray's built-in synthetic chest-radiograph dataset.

Why a phantom: lungray must run end to end (sweep, MLflow, report, Grad-CAM) on a laptop CPU
with no download, and its tests need images whose ground truth is known exactly, including
*where* the finding is (the lesion masks check Grad-CAM and feed a later segmentation task).
The studies it stands in for (``shared/PROTOCOLS.md``) use the Kaggle COVID-19 sets, so the
class names are the Kaggle folder names: 2-class ``("Normal", "COVID")`` (sections 2 and 5) and
4-class ``("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")`` (section 4, alphabetical as the
folders sort).

What is drawn (all analytic, in continuous body coordinates, so any resolution is a clean
rendering of the same case; no per-pixel Python loops):

* anatomy, fixed per synthetic patient: body and shoulders, two lung fields with diaphragm
  domes and costophrenic angles, the cardiomediastinal silhouette (heart, aortic knob, trachea),
  hila, spine, clavicles, posterior and anterior ribs (projected as hollow cylinders, so
  cortices are brighter), vascular lung markings, and breast shadows in some patients (a normal
  finding that looks like basal haze, so "any extra density" is not a shortcut);
* acquisition, drawn per image: exposure, window and gamma, inspiration depth, rotation (about
  5 degrees), shift and zoom (field of view), a heel-effect gradient, collimation margins,
  overlying soft tissue (a smooth random density field), ECG electrodes with leads and a lead
  side marker in some images, and quantum noise. Real collections vary this much, and without it
  every synthetic radiograph would share its large-scale content with every other one (the
  perceptual hashes of :mod:`lungray.data.hashing` would then call distinct patients copies);
* findings with masks, each case with a random severity that sets its extent and density (a
  class holds obvious and subtle cases, which is what makes learning curves rise gradually);
  the mask marks the lung pixels inside the finding's extent and does not depend on
  ``difficulty``; Normal masks are all zero:

  - ``COVID``: bilateral, peripheral, mid/lower-zone ground-glass patches (hazy, textured);
  - ``Lung_Opacity``: lobar consolidation of one lung (dense, sharp fissure border, air
    bronchograms);
  - ``Viral Pneumonia``: diffuse bilateral interstitial pattern (reticulation on a haze),
    perihilar-weighted.

Patients: images come in patients of 1-4 images (mean 2.15) that share anatomy, vascular
pattern and label, so image-level splits leak anatomy and patient-disjoint splits matter
(:mod:`lungray.data.splits`). Labels are a random permutation per block of ``n_classes``
consecutive patients, so patients are balanced across classes.

Determinism: image ``i`` depends only on ``(seed, i, resolution, difficulty, n_classes)``, never
on ``n``: every random draw comes from ``numpy.random.default_rng([seed, stream, key])``.

Difficulty: ``difficulty`` divides every finding's density and multiplies the quantum noise by
``sqrt(difficulty)``. The default, 1.0, was set so that a small CNN's accuracy is far from
saturated at 50 training images and still rising at 500. Measured on the 2-class phantom at
64 px: a 3-block CNN (16-32-64 channels, BatchNorm, global average pooling), Adam 1e-3,
batch 16, 20 epochs, random horizontal flips, nested patient-grouped subsets
(:func:`lungray.data.splits.nested_subsets`), scored on about 600 held-out images of other patients,
3 seeds (mean, and the range over seeds):

    =================  ===========  ===========  ===========  ===========
    training images        50           100          200          500
    =================  ===========  ===========  ===========  ===========
    accuracy, mean        0.52         0.63         0.64         0.77
    range over seeds    0.49-0.58    0.51-0.68    0.49-0.79    0.57-0.88
    =================  ===========  ===========  ===========  ===========

The spread is real: a subtle finding must first be discovered, and some runs stay on the
chance plateau for their whole budget (more often with fewer images, hence fewer steps), which
is why lungray runs several seeds per cell. At ``difficulty=0.5`` the same CNN
goes from 0.54 at 50 images to 0.94 at 500 (2 seeds); at 50 images 20 epochs are only 64 steps,
too few to fit the training set in most runs at either difficulty.

Generating 1000 images at 64 px takes about 2.5 s of CPU time.

Run ``python -m lungray.data.phantom --out sheet.png [--classes 4] [--resolution 256]`` to look
at it.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from lungray.errors import ConfigError

CLASS_NAMES: dict[int, tuple[str, ...]] = {
    2: ("Normal", "COVID"),
    4: ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"),
}
"""Class names per variant: the Kaggle COVID-19 Radiography Database folder names."""

FINDINGS: dict[str, str] = {
    "Normal": "none",
    "COVID": "ground_glass",
    "Lung_Opacity": "consolidation",
    "Viral Pneumonia": "interstitial",
}
"""Which finding each class draws."""

# images per synthetic patient: 1..4 with these probabilities (mean 2.15)
_PATIENT_SIZES = np.array([1, 2, 3, 4])
_PATIENT_SIZE_P = np.array([0.35, 0.30, 0.20, 0.15])

# peak density of each finding at severity 1 and difficulty 1 (calibrated: module docstring)
_AMPLITUDE = {"ground_glass": 1.2, "consolidation": 1.5, "interstitial": 0.9}

# independent random streams: rng([seed, stream, key])
_S_LAYOUT, _S_ANATOMY, _S_LABEL, _S_IMAGE = 11, 12, 13, 14


@dataclass(frozen=True)
class PhantomData:
    """A generated phantom: images, lesion masks, labels and ids, row-aligned.

    ``images`` uint8 (n, H, W), bone bright (MONOCHROME2); ``masks`` uint8 (n, H, W) 0/1 lesion
    masks (all 0 for Normal); ``labels`` int64 (n,) indices into ``class_names``; ``ids`` and
    ``patient_ids`` (n,) str.
    """

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    ids: np.ndarray
    patient_ids: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class PhantomCase:
    """One rendered image (what :func:`render_case` returns)."""

    image: np.ndarray
    mask: np.ndarray
    label: int
    class_name: str
    image_id: str
    patient_id: str


# --------------------------------------------------------------------------------------------
# validation and layout
# --------------------------------------------------------------------------------------------


def class_names_for(n_classes: int) -> tuple[str, ...]:
    """The phantom's class names for ``n_classes`` (2 or 4)."""
    if n_classes not in CLASS_NAMES:
        raise ConfigError(f"phantom n_classes must be 2 or 4, got {n_classes!r} (data.phantom_classes)")
    return CLASS_NAMES[n_classes]


def _check_args(n_classes: int, resolution: int, difficulty: float, seed: int) -> None:
    class_names_for(n_classes)
    if not isinstance(resolution, (int, np.integer)) or resolution < 8:
        raise ConfigError(f"phantom resolution must be an integer >= 8 pixels, got {resolution!r} (data.resolution)")
    if not (isinstance(difficulty, (int, float)) and math.isfinite(difficulty) and difficulty > 0):
        raise ConfigError(f"phantom difficulty must be a number > 0 (1.0 = default), got {difficulty!r} (data.phantom_difficulty)")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"phantom seed must be an integer >= 0, got {seed!r} (data.phantom_seed)")


def _rng(seed: int, stream: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream, *map(int, key)])


def _patient_of(n: int, seed: int) -> np.ndarray:
    """Patient index of images 0..n-1 (a prefix of one infinite, seed-defined layout)."""
    out = np.empty(n, dtype=np.int64)
    i = j = 0
    while i < n:
        k = int(_rng(seed, _S_LAYOUT, j).choice(_PATIENT_SIZES, p=_PATIENT_SIZE_P))
        out[i : i + k] = j
        i += k
        j += 1
    return out


def _patient_label(seed: int, n_classes: int, j: int) -> int:
    """Labels are a random permutation per block of ``n_classes`` patients (balanced patients)."""
    block, pos = divmod(int(j), n_classes)
    return int(_rng(seed, _S_LABEL, n_classes, block).permutation(n_classes)[pos])


def _image_id(seed: int, i: int) -> str:
    return f"phantom-s{seed}-{i:06d}"


def _patient_id(seed: int, j: int) -> str:
    return f"phantom-s{seed}-p{j:05d}"


# --------------------------------------------------------------------------------------------
# smooth building blocks (vectorised over the pixel grid)
# --------------------------------------------------------------------------------------------


class _Frame:
    """The pixel grid of one image and its map to body coordinates.

    Image coordinates ``X`` (columns) and ``Y`` (rows, downwards) run over pixel centres in
    [-1, 1]; body coordinates ``x, y`` are an affine function of them (rotation, shift, zoom),
    which :func:`_field` exploits to evaluate random fields as one small matrix product.
    """

    def __init__(self, resolution: int, angle: float = 0.0, shift: tuple[float, float] = (0.0, 0.0), zoom: float = 1.0):
        g = (np.arange(resolution, dtype=np.float64) + 0.5) / resolution * 2.0 - 1.0
        c, s = math.cos(angle), math.sin(angle)
        # x = (c (X - sx) + s (Y - sy)) / zoom ;  y = (-s (X - sx) + c (Y - sy)) / zoom
        self.m = np.array([[c, s], [-s, c]]) / zoom  # rows: x, y ; columns: X, Y
        self.t = -self.m @ np.asarray(shift, dtype=np.float64)
        self.g = g
        self.X, self.Y = np.meshgrid(g, g)
        self.x = self.m[0, 0] * self.X + self.m[0, 1] * self.Y + self.t[0]
        self.y = self.m[1, 0] * self.X + self.m[1, 1] * self.Y + self.t[1]


def _sig(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _fourier(rng: np.random.Generator, k: int, fmin: float, fmax: float) -> tuple[np.ndarray, np.ndarray]:
    """Random Fourier components: frequencies (k, 2) in cycles per unit, phases (k,)."""
    r = rng.uniform(fmin, fmax, k)
    a = rng.uniform(0, np.pi, k)
    f = np.stack([r * np.cos(a), r * np.sin(a)], axis=1)
    return f, rng.uniform(0, 2 * np.pi, k)


def _field(fr: _Frame, comp: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
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


def _ridged(field: np.ndarray, width: float) -> np.ndarray:
    """Thin lines along the zero set of a field (vessels, reticulation)."""
    return np.exp(-((field / width) ** 2))


def _tube(d: np.ndarray, half: float, wall: float = 0.4) -> np.ndarray:
    """Projected thickness of a hollow cylinder at distance ``d`` from its axis (bright cortex)."""
    r2 = (d / half) ** 2
    outer = np.sqrt(np.clip(1.0 - r2, 0.0, None))
    inner = np.sqrt(np.clip((1.0 - wall) ** 2 - r2, 0.0, None))
    return outer - 0.75 * inner


def _bump(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0) -> np.ndarray:
    """Smooth compact bump (1 - r^2)^2 on a rotated ellipse (soft-edged lesions)."""
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = x - cx, y - cy
    u = (c * dx + s * dy) / rx
    v = (-s * dx + c * dy) / ry
    return np.clip(1.0 - (u * u + v * v), 0.0, None) ** 2


def _ellipsoid(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0) -> np.ndarray:
    """Projected thickness of an ellipsoid, sqrt(1 - r^2) (heart, aortic knob)."""
    return np.sqrt(np.sqrt(_bump(x, y, cx, cy, rx, ry, angle)))


# --------------------------------------------------------------------------------------------
# anatomy (per patient), acquisition (per image), findings (per image)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Anatomy:
    body_w: float
    shoulder_y: float
    lung_top: tuple[float, float]  # per side: image left (patient right), image right
    lung_base: tuple[float, float]
    lung_w: tuple[float, float]
    lung_med: float
    dome: float
    heart: tuple[float, float, float, float, float]  # cx, cy, rx, ry, angle
    heart_density: float
    rib_y0: float
    rib_gap: float
    rib_curve: float
    rib_half: float
    tissue: float
    bone: float
    breasts: float  # 0 = none
    vessels: tuple[np.ndarray, np.ndarray]
    vessel_amp: float


def _anatomy(seed: int, j: int) -> _Anatomy:
    r = _rng(seed, _S_ANATOMY, j)
    top = r.uniform(-0.80, -0.72)
    base = r.uniform(0.36, 0.48)
    lw = r.uniform(0.3, 0.34)
    return _Anatomy(
        body_w=r.uniform(0.88, 0.97),
        shoulder_y=r.uniform(-1.0, -0.9),
        lung_top=(top + r.uniform(-0.02, 0.02), top + r.uniform(-0.02, 0.02)),
        # the right hemidiaphragm (image left) usually sits higher than the left
        lung_base=(base - r.uniform(0.0, 0.06), base + r.uniform(0.0, 0.03)),
        lung_w=(lw * r.uniform(1.0, 1.06), lw * r.uniform(0.93, 1.0)),
        lung_med=r.uniform(0.08, 0.11),
        dome=r.uniform(0.08, 0.15),
        heart=(r.uniform(0.05, 0.1), r.uniform(0.28, 0.34), r.uniform(0.26, 0.32), r.uniform(0.2, 0.25), r.uniform(-0.35, -0.1)),
        heart_density=r.uniform(0.08, 0.16),
        rib_y0=r.uniform(-0.86, -0.80),
        rib_gap=r.uniform(0.13, 0.155),
        rib_curve=r.uniform(0.85, 1.1),
        rib_half=r.uniform(0.026, 0.034),
        tissue=r.uniform(0.9, 1.1),
        bone=r.uniform(0.13, 0.19),
        breasts=float(r.uniform(0.06, 0.12)) if r.random() < 0.45 else 0.0,
        vessels=_fourier(r, 16, 1.2, 3.5),
        vessel_amp=r.uniform(0.05, 0.08),
    )


@dataclass(frozen=True)
class _Acquisition:
    angle: float
    shift: tuple[float, float]
    zoom: float
    inspiration: float
    gain: float
    lo: float
    hi: float
    gamma: float
    heel: tuple[float, float]
    noise: float


def _acquisition(r: np.random.Generator, difficulty: float) -> _Acquisition:
    return _Acquisition(
        angle=float(np.clip(r.normal(0, 5.0), -12, 12)) * math.pi / 180,
        shift=(float(r.normal(0, 0.08)), float(r.normal(0.03, 0.1))),
        zoom=r.uniform(0.75, 1.12),
        inspiration=r.uniform(-0.05, 0.05),
        gain=r.uniform(1.25, 1.6),
        lo=r.uniform(0.0, 0.08),
        hi=r.uniform(0.92, 1.0),
        gamma=r.uniform(0.85, 1.25),
        heel=(float(r.normal(0, 0.04)), float(r.normal(0, 0.04))),
        noise=0.025 * math.sqrt(difficulty) * r.uniform(0.7, 1.3),
    )


def _lungs(a: _Anatomy, q: _Acquisition, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
    """Soft lung-field membership in [0, 1] and each lung's (side, top, base, width)."""
    e = 0.012
    lung = np.zeros_like(x)
    geo = []
    for k, side in enumerate((-1.0, 1.0)):
        u = side * x
        top, base, w = a.lung_top[k], a.lung_base[k] + q.inspiration, a.lung_w[k]
        v = np.clip((y - top) / (base - top), 0.0, 1.2)
        apex_u = a.lung_med + 0.5 * w
        u_lat = apex_u + (a.lung_med + w * 2.0 - apex_u) * np.sin(0.5 * np.pi * np.minimum(v / 0.75, 1.0)) ** 0.6
        u_med = apex_u - (apex_u - a.lung_med) * np.sin(0.5 * np.pi * np.minimum(v / 0.25, 1.0))
        uc = a.lung_med + w
        rel = (u - uc) / w
        y_dia = base - a.dome * np.clip(1.0 - rel**2, 0.0, 1.0) + 0.08 * np.clip(rel, 0, 1) ** 2
        m = _sig((u - u_med) / e) * _sig((u_lat - u) / e) * _sig((y_dia - y) / e) * _sig((y - top) / e)
        lung = np.maximum(lung, m)
        geo.append((side, top, base, w))
    return lung, geo


def _devices(r: np.random.Generator, fr: _Frame) -> np.ndarray:
    """Density of external objects: ECG electrodes with leads (half the images) and a lead
    "L"/"R" side marker (most images), as in ICU and portable radiographs."""
    x, y = fr.x, fr.y
    out = np.zeros_like(x)
    if r.random() < 0.5:
        for _ in range(int(r.integers(1, 5))):
            ex, ey = r.uniform(-0.75, 0.75), r.uniform(-0.75, 0.55)
            rr = (x - ex) ** 2 + (y - ey) ** 2
            out += 0.5 * np.exp(-rr / (2 * 0.02**2)) + 0.25 * np.exp(-(((np.sqrt(rr) - 0.04) / 0.008) ** 2))
            th, kappa, amp, om, ph = r.uniform(0, 2 * np.pi), r.uniform(-0.6, 0.6), r.uniform(0, 0.08), r.uniform(3, 8), r.uniform(0, 2 * np.pi)
            c, s = math.cos(th), math.sin(th)
            along = (x - ex) * c + (y - ey) * s
            off = -(x - ex) * s + (y - ey) * c - (kappa * along**2 + amp * np.sin(om * along + ph))
            out += 0.3 * np.exp(-((off / 0.011) ** 2)) * _sig((along - 0.04) / 0.01)
    if r.random() < 0.75:
        # marker in detector (image) coordinates near a top corner: an L-shaped lead letter
        mx = r.choice([-1.0, 1.0]) * r.uniform(0.6, 0.85)
        my = r.uniform(-0.9, -0.55)
        h, w, t = r.uniform(0.07, 0.1), r.uniform(0.05, 0.07), 0.022
        X, Y = fr.X, fr.Y
        box = lambda x0, x1, y0, y1: _sig((X - x0) / 0.004) * _sig((x1 - X) / 0.004) * _sig((Y - y0) / 0.004) * _sig((y1 - Y) / 0.004)
        out += 2.0 * np.maximum(box(mx, mx + t, my, my + h), box(mx, mx + w, my + h - t, my + h))
    return out


def _silhouette(a: _Anatomy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Soft membership of the cardiomediastinal silhouette (heart + great vessels)."""
    hx, hy, hrx, hry, _ = a.heart
    ch = np.sqrt(np.clip(1.0 - ((y - hy) / hry) ** 2, 0, 1))
    top = hy - 0.6 * hry
    # left border (image right): aortic knob, then the pulmonary trunk sloping to the heart
    knob = 0.1 + 0.09 * np.sqrt(np.clip(1.0 - ((y + 0.34) / 0.075) ** 2, 0, 1))
    trunk = a.lung_med + 0.02 + (hx + 0.8 * hrx - a.lung_med - 0.02) * np.clip((y + 0.3) / (top + 0.3), 0, 1) ** 1.5
    right = np.maximum.reduce([np.full_like(y, a.lung_med), knob, np.where(y < top, trunk, hx + hrx * ch)])
    # right border (image left): superior vena cava, then the right atrium
    ramp = a.lung_med + 0.02 + (hrx - hx - a.lung_med - 0.02) * np.clip((y - hy + hry) / hry, 0, 1) ** 2
    left = np.maximum(a.lung_med, np.where(y < hy, ramp, hrx * ch - hx))
    return _sig((right - x) / 0.012) * _sig((x + left) / 0.012)


def _finding(kind: str, a: _Anatomy, geo, r: np.random.Generator, fr: _Frame, contrast: float) -> tuple[np.ndarray, np.ndarray]:
    """A finding's density (before restriction to the lungs) and its support (mask where > 1).

    Every case has a severity in [0, 1] that sets its extent and density, so a class holds
    obvious and subtle cases, as real ones do: a classifier learns the obvious ones from few
    images and needs more images for the subtle ones, which is what makes learning curves rise
    gradually instead of jumping.
    """
    x, y = fr.x, fr.y
    sev = r.random()
    strength = contrast * _AMPLITUDE[kind] * (0.35 + 0.65 * sev)
    if kind == "ground_glass":
        # bilateral, peripheral, mid/lower zones: the typical COVID-19 distribution
        n = int(r.integers(2, 3 + int(round(3 * sev))))
        sides = [0, 1] + [int(s) for s in r.integers(0, 2, n - 2)]
        bumps = np.zeros_like(x)
        for k in sides:
            side, top, base, w = geo[k]
            cx = side * (a.lung_med + w * r.uniform(1.2, 1.85))
            cy = top + (base - top) * r.uniform(0.35, 0.95)
            rx = r.uniform(0.08, 0.12 + 0.1 * sev)
            bumps = np.maximum(bumps, r.uniform(0.7, 1.0) * _bump(x, y, cx, cy, rx, rx * r.uniform(0.8, 1.7), r.uniform(0, np.pi)))
        tex = _field(fr, _fourier(r, 10, 2.0, 5.0))
        return strength * bumps * (0.7 + 0.3 * tex), bumps / 0.3
    if kind == "consolidation":
        # one lobe of one lung: sharp border along the fissure, air bronchograms inside
        side, top, base, w = geo[int(r.integers(0, 2))]
        u = side * x
        lower = r.random() < 0.6
        y_f = top + (base - top) * r.uniform(0.4, 0.6) + r.uniform(-0.25, 0.25) * (u - a.lung_med - w)
        lobe = _sig((y - y_f) / 0.02) if lower else _sig((y_f - y) / 0.02)
        cy = top + (base - top) * (r.uniform(0.7, 0.9) if lower else r.uniform(0.2, 0.4))
        rad = 0.2 + 0.2 * sev
        env = np.clip(1.6 * _bump(x, y, side * (a.lung_med + w * r.uniform(0.8, 1.2)), cy, rad * r.uniform(0.9, 1.2), rad * r.uniform(0.9, 1.2)), 0, 1)
        tex = _field(fr, _fourier(r, 8, 1.5, 4.0))
        bronch = _ridged(_field(fr, _fourier(r, 10, 2.0, 4.5)), 0.12)
        return strength * lobe * env * (0.9 + 0.1 * tex - 0.25 * bronch), lobe * env / 0.3
    if kind == "interstitial":
        # diffuse bilateral reticular pattern, perihilar-weighted
        perihilar = r.uniform(0.3, 1.0)
        env = np.zeros_like(x)
        for side, top, base, w in geo:
            hil = _bump(x, y, side * (a.lung_med + 0.5 * w), top + 0.55 * (base - top), 1.3 * w, 0.75 * (base - top))
            env = np.maximum(env, perihilar * np.clip(1.5 * hil, 0, 1) + (1 - perihilar) * 0.8)
        lines = _ridged(_field(fr, _fourier(r, 24, 5.0, 9.0)), 0.35)
        return strength * env * (0.5 + 0.5 * lines), env / 0.5
    raise AssertionError(kind)


def _render(a: _Anatomy, q: _Acquisition, kind: str, r: np.random.Generator, resolution: int, difficulty: float) -> tuple[np.ndarray, np.ndarray]:
    fr = _Frame(resolution, q.angle, q.shift, q.zoom)
    x, y = fr.x, fr.y
    ax = np.abs(x)

    # body: trunk, shoulders and neck; a cylinder-like thickness profile (brighter centre)
    trunk = _sig((a.body_w * np.sqrt(np.clip(1.0 - ((y - 0.3) / 1.45) ** 2, 0, 1)) - ax) / 0.02)
    shoulders = _sig((y - a.shoulder_y - 0.32 * ax**2) / 0.03) * _sig((1.02 - ax) / 0.03)
    neck = _sig((0.2 - ax) / 0.02)
    body = np.maximum(np.maximum(trunk, shoulders), neck)
    thick = 0.6 + 0.4 * np.sqrt(np.clip(1.0 - (x / (a.body_w + 0.1)) ** 2, 0, 1))
    lung, geo = _lungs(a, q, x, y)
    # cardiomediastinal silhouette: the heart, aortic knob and pulmonary trunk displace aerated
    # lung, so their borders are continuous with the mediastinum and the diaphragm
    sil = _silhouette(a, x, y)
    aerated = lung * (1.0 - 0.85 * sil)
    A = a.tissue * body * thick * (1.0 - 0.75 * aerated)

    # mediastinum (denser than the chest wall), trachea, heart, aortic knob, hila
    A += 0.2 * _sig((0.1 - np.abs(x - 0.02)) / 0.02) * _sig((y + 0.8) / 0.03)
    A -= 0.22 * _sig((0.03 - np.abs(x - 0.01)) / 0.006) * _sig((-0.28 - y) / 0.02) * body
    hx, hy, hrx, hry, hang = a.heart
    A += a.heart_density * _ellipsoid(x, y, hx, hy, hrx, hry, hang)
    for side in (-1.0, 1.0):
        A += 0.12 * _bump(x, y, side * 0.17, -0.08, 0.09, 0.14)
    # vascular markings: ridges of the patient's own field, fading to the periphery
    hil_dist = np.sqrt((ax - 0.15) ** 2 + (y + 0.05) ** 2)
    A += a.vessel_amp * lung * _ridged(_field(fr, a.vessels), 0.35) * np.exp(-hil_dist / 0.45)
    # breast shadows: normal anatomy that mimics basal haze
    if a.breasts:
        for side, top, base, w in geo:
            A += a.breasts * _bump(x, y, side * (a.lung_med + 1.4 * w), base - 0.05, 0.35, 0.25)

    # bones: spine, clavicles, posterior ribs (arched) and fainter anterior ribs (sloping)
    A += 0.5 * a.bone * _tube(x, 0.055) * (0.85 + 0.15 * np.cos(2 * np.pi * y / 0.11))
    yc = -0.72 - 0.24 * ax + 0.06 * np.sin(np.pi * np.clip(ax / 0.6, 0, 1))
    A += a.bone * _tube(y - yc, 0.032) * _sig((ax - 0.05) / 0.01) * _sig((0.62 - ax) / 0.02)
    t = (y - a.rib_y0 + 0.45 * ax - a.rib_curve * ax * ax) / a.rib_gap
    d = (t - np.clip(np.round(t), 0, 8)) * a.rib_gap
    below = _sig((0.5 * (a.lung_base[0] + a.lung_base[1]) + 0.08 - y) / 0.04)  # lower ribs are lost in the abdomen
    A += a.bone * _tube(d, a.rib_half) * _sig((ax - 0.05) / 0.01) * _sig((a.body_w - 0.04 - ax) / 0.02) * (0.35 + 0.65 * below)
    t = (y - a.rib_y0 - 0.3 - 0.4 * (0.85 - ax)) / (a.rib_gap * 1.05)
    d = (t - np.clip(np.round(t), 0, 5)) * a.rib_gap * 1.05
    A += 0.45 * a.bone * _tube(d, a.rib_half * 1.2, wall=0.25) * _sig((ax - 0.28) / 0.04) * _sig((a.body_w - 0.06 - ax) / 0.02)

    # external objects (per image, any class): ECG electrodes and their leads, a side marker
    A += _devices(r, fr)
    # overlying soft tissue and scatter: a smooth random density field, different on every
    # image, so no two radiographs share their low-frequency content by chance
    A += 0.07 * body * _field(fr, _fourier(r, 12, 0.8, 4.0))

    # the finding, restricted to the lungs
    if kind == "none":
        mask = np.zeros((resolution, resolution), dtype=np.uint8)
    else:
        dens, support = _finding(kind, a, geo, r, fr, 1.0 / difficulty)
        A += dens * lung
        mask = ((support > 1.0) & (lung > 0.5)).astype(np.uint8)

    # detector: exposure, window, gamma, heel effect, quantum noise
    img = 1.0 - np.exp(-q.gain * np.clip(A, 0, None))
    img = np.clip((img - q.lo) / (q.hi - q.lo), 0, 1) ** q.gamma
    img += q.heel[0] * fr.X + q.heel[1] * fr.Y
    # collimation: unexposed detector margins on some images are bright
    if r.random() < 0.35:
        col = np.zeros_like(img)
        for side in r.permutation(4)[: int(r.integers(1, 4))]:
            edge = 1.0 - r.uniform(0.03, 0.12)
            coord = (fr.X, -fr.X, fr.Y, -fr.Y)[side]
            col = np.maximum(col, _sig((coord - edge) / 0.006))
        img = img * (1 - col) + col * r.uniform(0.75, 0.95)
    img += r.normal(0.0, q.noise, img.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), mask


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def _case(i: int, j: int, n_classes: int, resolution: int, difficulty: float, seed: int, anatomy: Optional[_Anatomy] = None) -> PhantomCase:
    names = CLASS_NAMES[n_classes]
    label = _patient_label(seed, n_classes, j)
    r = _rng(seed, _S_IMAGE, i)
    q = _acquisition(r, difficulty)
    img, mask = _render(anatomy or _anatomy(seed, j), q, FINDINGS[names[label]], r, resolution, difficulty)
    return PhantomCase(img, mask, label, names[label], _image_id(seed, i), _patient_id(seed, j))


def render_case(i: int, n_classes: int = 2, resolution: int = 64, difficulty: float = 1.0, seed: int = 0) -> PhantomCase:
    """Render image ``i`` of the phantom alone (identical to ``generate_phantom(n)`` row ``i``)."""
    _check_args(n_classes, resolution, difficulty, seed)
    if i < 0:
        raise ConfigError(f"phantom image index must be >= 0, got {i}")
    j = int(_patient_of(i + 1, seed)[i])
    return _case(i, j, n_classes, resolution, difficulty, seed)


def generate_phantom(n: int, n_classes: int = 2, resolution: int = 64, difficulty: float = 1.0, seed: int = 0) -> PhantomData:
    """Generate ``n`` phantom images with masks, labels, ids and patient ids.

    Image ``i`` depends only on ``(seed, i, resolution, difficulty, n_classes)``, so a bigger
    ``n`` extends a smaller one. See the module docstring for what is drawn and how
    ``difficulty`` was calibrated.

    >>> d = generate_phantom(6, resolution=32)
    >>> d.images.shape, d.images.dtype, d.class_names
    ((6, 32, 32), dtype('uint8'), ('Normal', 'COVID'))
    """
    _check_args(n_classes, resolution, difficulty, seed)
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"phantom size must be a positive integer, got {n!r} (data.phantom_n)")
    patients = _patient_of(n, seed)
    images = np.empty((n, resolution, resolution), dtype=np.uint8)
    masks = np.empty((n, resolution, resolution), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    anatomy: dict[int, _Anatomy] = {}
    for i in range(n):
        j = int(patients[i])
        if j not in anatomy:
            anatomy = {j: _anatomy(seed, j)}  # images of one patient are consecutive
        c = _case(i, j, n_classes, resolution, difficulty, seed, anatomy[j])
        images[i], masks[i], labels[i] = c.image, c.mask, c.label
    return PhantomData(
        images=images,
        masks=masks,
        labels=labels,
        class_names=CLASS_NAMES[n_classes],
        ids=np.array([_image_id(seed, i) for i in range(n)]),
        patient_ids=np.array([_patient_id(seed, int(j)) for j in patients]),
    )


# --------------------------------------------------------------------------------------------
# DICOM output
# --------------------------------------------------------------------------------------------


def write_dicom(
    path: Union[str, Path],
    image: np.ndarray,
    *,
    bits: int = 8,
    photometric: str = "MONOCHROME2",
    patient_id: str = "PHANTOM",
    image_id: str = "phantom",
    class_name: Optional[str] = None,
) -> Path:
    """Write one uint8 phantom image as an uncompressed CR DICOM file.

    ``bits`` 8 stores the bytes as they are; 12 or 16 rescales to that many stored bits in
    16-bit words (as CR detectors do). ``MONOCHROME1`` stores inverted values (bone dark in the
    raw pixels), which the data layer must invert back. No real identifiers: the PatientID is the
    synthetic patient id and the name is a fixed placeholder. UIDs are derived from the image id,
    so the same call writes the same bytes.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

    if bits not in (8, 12, 16):
        raise ConfigError(f"DICOM bits must be 8, 12 or 16, got {bits}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ConfigError(f"DICOM photometric must be MONOCHROME1 or MONOCHROME2, got {photometric}")
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ConfigError(f"write_dicom expects a 2-D uint8 image, got {image.dtype} {image.shape}")
    top = (1 << bits) - 1
    if bits == 8:
        px = image.copy()
    else:
        px = np.round(image.astype(np.float64) * (top / 255.0)).astype(np.uint16)
    if photometric == "MONOCHROME1":
        px = (top - px.astype(np.int64)).astype(px.dtype)

    sop = generate_uid(entropy_srcs=["lungray-phantom", image_id, "sop"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["lungray-phantom", patient_id, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["lungray-phantom", image_id, "series"])
    ds.Modality = "CR"
    ds.PatientName = "Phantom^Synthetic"
    ds.PatientID = patient_id
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.SeriesDescription = "lungray phantom"
    if class_name is not None:
        ds.ImageComments = f"lungray phantom class={class_name}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = int(image.shape[0]), int(image.shape[1])
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(px).tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_phantom_dicoms(out_dir: Union[str, Path], data: PhantomData, *, bits: int = 8, photometric: str = "MONOCHROME2") -> list[Path]:
    """Write every image of ``data`` as ``<out_dir>/<image_id>.dcm`` (an RSNA-like folder)."""
    out = Path(out_dir)
    return [
        write_dicom(
            out / f"{data.ids[i]}.dcm",
            data.images[i],
            bits=bits,
            photometric=photometric,
            patient_id=str(data.patient_ids[i]),
            image_id=str(data.ids[i]),
            class_name=data.class_names[int(data.labels[i])],
        )
        for i in range(len(data))
    ]


# --------------------------------------------------------------------------------------------
# sample sheet
# --------------------------------------------------------------------------------------------


def write_sample_sheet(
    path: Union[str, Path],
    n_classes: int = 4,
    per_class: int = 4,
    resolution: int = 256,
    difficulty: float = 1.0,
    seed: int = 0,
    dicom_dir: Optional[Union[str, Path]] = None,
    *,
    outline: bool = True,
) -> Path:
    """Write a labelled grid PNG: one row per class, ``per_class`` cases each.

    The first ``per_class`` images of each class (in phantom order) are shown; ``outline``
    draws the lesion-mask contour so a reader can see what the finding is. With ``dicom_dir``
    the shown cases are also written there as DICOM files.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = class_names_for(n_classes)
    if per_class < 1:
        raise ConfigError(f"per_class must be >= 1, got {per_class}")
    _check_args(n_classes, resolution, difficulty, seed)
    chosen: dict[int, list[PhantomCase]] = {k: [] for k in range(n_classes)}
    limit, i = per_class * n_classes * 4, 0
    while not all(len(v) == per_class for v in chosen.values()):
        limit *= 2  # labels are balanced per patient block, so this ends after a few rounds
        patients = _patient_of(limit, seed)
        for i in range(i, limit):
            j = int(patients[i])
            lab = _patient_label(seed, n_classes, j)
            if len(chosen[lab]) < per_class:
                chosen[lab].append(_case(i, j, n_classes, resolution, difficulty, seed))
        i = limit

    tile = 2.3
    fig = Figure(figsize=(tile * per_class, tile * n_classes + 0.5), dpi=max(100, min(200, resolution // 2)))
    FigureCanvasAgg(fig)
    fig.suptitle(f"lungray phantom  ({n_classes} classes, {resolution} px, difficulty {difficulty:g}, seed {seed})", fontsize=10)
    for row, cname in enumerate(names):
        for col, case in enumerate(chosen[row]):
            ax = fig.add_subplot(n_classes, per_class, row * per_class + col + 1)
            ax.imshow(case.image, cmap="gray", vmin=0, vmax=255, interpolation="nearest" if resolution < 128 else "antialiased")
            if outline and case.mask.any():
                ax.contour(case.mask, levels=[0.5], colors=["#ff6a00"], linewidths=0.8, alpha=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{cname}\n{case.image_id[-6:]} · {case.patient_id.split('-')[-1]}", fontsize=7)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    if dicom_dir is not None:
        for cases in chosen.values():
            for c in cases:
                write_dicom(Path(dicom_dir) / f"{c.image_id}.dcm", c.image, patient_id=c.patient_id, image_id=c.image_id, class_name=c.class_name)
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lungray.data.phantom", description="Write a sample sheet of the lungray phantom.")
    p.add_argument("--out", default="phantom_sheet.png", help="PNG to write")
    p.add_argument("--classes", type=int, default=4, choices=[2, 4])
    p.add_argument("--per-class", type=int, default=4)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--difficulty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dicom-dir", default=None, help="also write the shown cases as DICOM files here")
    p.add_argument("--no-outline", action="store_true", help="do not draw the lesion-mask contours")
    a = p.parse_args(argv)
    try:
        out = write_sample_sheet(a.out, a.classes, a.per_class, a.resolution, a.difficulty, a.seed, a.dicom_dir, outline=not a.no_outline)
    except ConfigError as e:
        print(f"lungray: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
