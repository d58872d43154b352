"""The phantom's findings, with the masks that say where they are.

Each case has a severity in [0, 1] that sets its extent and density, so a class holds obvious
and subtle cases, as real ones do: a classifier learns the obvious ones from few images and needs
more images for the subtle ones, which is what makes learning curves rise gradually instead of
jumping. The mask marks the lung pixels inside the finding's extent and does not depend on
``difficulty``; Normal masks are all zero.

- ``COVID``: bilateral, peripheral, mid/lower-zone ground-glass patches (hazy, textured);
- ``Lung_Opacity``: lobar consolidation of one lung (dense, sharp fissure border, air
  bronchograms);
- ``Viral Pneumonia``: diffuse bilateral interstitial pattern (reticulation on a haze),
  perihilar-weighted.
"""

from __future__ import annotations

import numpy as np

from lungray.data.phantom.anatomy import Anatomy, Geometry
from lungray.data.phantom.fields import Frame, bump, field, fourier, ridged, sig

FINDINGS: dict[str, str] = {
    "Normal": "none",
    "COVID": "ground_glass",
    "Lung_Opacity": "consolidation",
    "Viral Pneumonia": "interstitial",
}
"""Which finding each class draws."""

# peak density of each finding at severity 1 and difficulty 1 (calibrated: the package docstring)
AMPLITUDE = {"ground_glass": 1.2, "consolidation": 1.5, "interstitial": 0.9}


def finding(kind: str, a: Anatomy, geo: Geometry, r: np.random.Generator, fr: Frame, contrast: float, severity: float) -> tuple[np.ndarray, np.ndarray]:
    """A finding's density (before restriction to the lungs) and its support (mask where > 1)."""
    x, y = fr.x, fr.y
    sev = float(severity)
    strength = contrast * AMPLITUDE[kind] * (0.35 + 0.65 * sev)
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
            bumps = np.maximum(bumps, r.uniform(0.7, 1.0) * bump(x, y, cx, cy, rx, rx * r.uniform(0.8, 1.7), r.uniform(0, np.pi)))
        tex = field(fr, fourier(r, 10, 2.0, 5.0))
        return strength * bumps * (0.7 + 0.3 * tex), bumps / 0.3
    if kind == "consolidation":
        # one lobe of one lung: sharp border along the fissure, air bronchograms inside
        side, top, base, w = geo[int(r.integers(0, 2))]
        u = side * x
        lower = r.random() < 0.6
        y_f = top + (base - top) * r.uniform(0.4, 0.6) + r.uniform(-0.25, 0.25) * (u - a.lung_med - w)
        lobe = sig((y - y_f) / 0.02) if lower else sig((y_f - y) / 0.02)
        cy = top + (base - top) * (r.uniform(0.7, 0.9) if lower else r.uniform(0.2, 0.4))
        rad = 0.2 + 0.2 * sev
        env = np.clip(1.6 * bump(x, y, side * (a.lung_med + w * r.uniform(0.8, 1.2)), cy, rad * r.uniform(0.9, 1.2), rad * r.uniform(0.9, 1.2)), 0, 1)
        tex = field(fr, fourier(r, 8, 1.5, 4.0))
        bronch = ridged(field(fr, fourier(r, 10, 2.0, 4.5)), 0.12)
        return strength * lobe * env * (0.9 + 0.1 * tex - 0.25 * bronch), lobe * env / 0.3
    if kind == "interstitial":
        # diffuse bilateral reticular pattern, perihilar-weighted
        perihilar = r.uniform(0.3, 1.0)
        env = np.zeros_like(x)
        for side, top, base, w in geo:
            hil = bump(x, y, side * (a.lung_med + 0.5 * w), top + 0.55 * (base - top), 1.3 * w, 0.75 * (base - top))
            env = np.maximum(env, perihilar * np.clip(1.5 * hil, 0, 1) + (1 - perihilar) * 0.8)
        lines = ridged(field(fr, fourier(r, 24, 5.0, 9.0)), 0.35)
        return strength * env * (0.5 + 0.5 * lines), env / 0.5
    raise AssertionError(kind)
