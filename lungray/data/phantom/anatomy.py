"""The phantom's anatomy: fixed per synthetic patient, drawn in body coordinates.

Body and shoulders, two lung fields with diaphragm domes and costophrenic angles, the
cardiomediastinal silhouette (heart, aortic knob, trachea), hila, spine, clavicles, posterior and
anterior ribs (projected as hollow cylinders, so cortices are brighter), vascular lung markings,
and breast shadows in some patients (a normal finding that looks like basal haze, so "any extra
density" is not a shortcut). Every film of a patient shares this anatomy and its vascular
pattern, so image-level splits leak anatomy and patient-disjoint splits matter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lungray.data.phantom.fields import Frame, bump, ellipsoid, field, fourier, ridged, rng, sig, tube

S_ANATOMY = 12  # random stream of the per-patient anatomy

Geometry = list[tuple[float, float, float, float]]  # per lung: (side, top, base, width)


@dataclass(frozen=True)
class Anatomy:
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


def draw_anatomy(seed: int, patient: int) -> Anatomy:
    """The anatomy of synthetic patient ``patient`` (a function of ``(seed, patient)`` only)."""
    r = rng(seed, S_ANATOMY, patient)
    top = r.uniform(-0.80, -0.72)
    base = r.uniform(0.36, 0.48)
    lw = r.uniform(0.3, 0.34)
    return Anatomy(
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
        vessels=fourier(r, 16, 1.2, 3.5),
        vessel_amp=r.uniform(0.05, 0.08),
    )


def lungs(a: Anatomy, inspiration: float, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, Geometry]:
    """Soft lung-field membership in [0, 1] and each lung's (side, top, base, width)."""
    e = 0.012
    lung = np.zeros_like(x)
    geo = []
    for k, side in enumerate((-1.0, 1.0)):
        u = side * x
        top, base, w = a.lung_top[k], a.lung_base[k] + inspiration, a.lung_w[k]
        v = np.clip((y - top) / (base - top), 0.0, 1.2)
        apex_u = a.lung_med + 0.5 * w
        u_lat = apex_u + (a.lung_med + w * 2.0 - apex_u) * np.sin(0.5 * np.pi * np.minimum(v / 0.75, 1.0)) ** 0.6
        u_med = apex_u - (apex_u - a.lung_med) * np.sin(0.5 * np.pi * np.minimum(v / 0.25, 1.0))
        uc = a.lung_med + w
        rel = (u - uc) / w
        y_dia = base - a.dome * np.clip(1.0 - rel**2, 0.0, 1.0) + 0.08 * np.clip(rel, 0, 1) ** 2
        m = sig((u - u_med) / e) * sig((u_lat - u) / e) * sig((y_dia - y) / e) * sig((y - top) / e)
        lung = np.maximum(lung, m)
        geo.append((side, top, base, w))
    return lung, geo


def silhouette(a: Anatomy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
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
    return sig((right - x) / 0.012) * sig((x + left) / 0.012)


def body_density(a: Anatomy, fr: Frame, inspiration: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, Geometry]:
    """``(density, lung, body, geometry)`` of the patient seen through ``fr``: the attenuation
    line integral of the anatomy (no findings, no external objects), the soft lung membership,
    the soft body membership and each lung's geometry."""
    x, y = fr.x, fr.y
    ax = np.abs(x)

    # body: trunk, shoulders and neck; a cylinder-like thickness profile (brighter centre)
    trunk = sig((a.body_w * np.sqrt(np.clip(1.0 - ((y - 0.3) / 1.45) ** 2, 0, 1)) - ax) / 0.02)
    shoulders = sig((y - a.shoulder_y - 0.32 * ax**2) / 0.03) * sig((1.02 - ax) / 0.03)
    neck = sig((0.2 - ax) / 0.02)
    body = np.maximum(np.maximum(trunk, shoulders), neck)
    thick = 0.6 + 0.4 * np.sqrt(np.clip(1.0 - (x / (a.body_w + 0.1)) ** 2, 0, 1))
    lung, geo = lungs(a, inspiration, x, y)
    # cardiomediastinal silhouette: the heart, aortic knob and pulmonary trunk displace aerated
    # lung, so their borders are continuous with the mediastinum and the diaphragm
    sil = silhouette(a, x, y)
    aerated = lung * (1.0 - 0.85 * sil)
    A = a.tissue * body * thick * (1.0 - 0.75 * aerated)

    # mediastinum (denser than the chest wall), trachea, heart, aortic knob, hila
    A += 0.2 * sig((0.1 - np.abs(x - 0.02)) / 0.02) * sig((y + 0.8) / 0.03)
    A -= 0.22 * sig((0.03 - np.abs(x - 0.01)) / 0.006) * sig((-0.28 - y) / 0.02) * body
    hx, hy, hrx, hry, hang = a.heart
    A += a.heart_density * ellipsoid(x, y, hx, hy, hrx, hry, hang)
    for side in (-1.0, 1.0):
        A += 0.12 * bump(x, y, side * 0.17, -0.08, 0.09, 0.14)
    # vascular markings: ridges of the patient's own field, fading to the periphery
    hil_dist = np.sqrt((ax - 0.15) ** 2 + (y + 0.05) ** 2)
    A += a.vessel_amp * lung * ridged(field(fr, a.vessels), 0.35) * np.exp(-hil_dist / 0.45)
    # breast shadows: normal anatomy that mimics basal haze
    if a.breasts:
        for side, top, base, w in geo:
            A += a.breasts * bump(x, y, side * (a.lung_med + 1.4 * w), base - 0.05, 0.35, 0.25)

    # bones: spine, clavicles, posterior ribs (arched) and fainter anterior ribs (sloping)
    A += 0.5 * a.bone * tube(x, 0.055) * (0.85 + 0.15 * np.cos(2 * np.pi * y / 0.11))
    yc = -0.72 - 0.24 * ax + 0.06 * np.sin(np.pi * np.clip(ax / 0.6, 0, 1))
    A += a.bone * tube(y - yc, 0.032) * sig((ax - 0.05) / 0.01) * sig((0.62 - ax) / 0.02)
    t = (y - a.rib_y0 + 0.45 * ax - a.rib_curve * ax * ax) / a.rib_gap
    d = (t - np.clip(np.round(t), 0, 8)) * a.rib_gap
    below = sig((0.5 * (a.lung_base[0] + a.lung_base[1]) + 0.08 - y) / 0.04)  # lower ribs are lost in the abdomen
    A += a.bone * tube(d, a.rib_half) * sig((ax - 0.05) / 0.01) * sig((a.body_w - 0.04 - ax) / 0.02) * (0.35 + 0.65 * below)
    t = (y - a.rib_y0 - 0.3 - 0.4 * (0.85 - ax)) / (a.rib_gap * 1.05)
    d = (t - np.clip(np.round(t), 0, 5)) * a.rib_gap * 1.05
    A += 0.45 * a.bone * tube(d, a.rib_half * 1.2, wall=0.25) * sig((ax - 0.28) / 0.04) * sig((a.body_w - 0.06 - ax) / 0.02)
    return A, lung, body, geo
