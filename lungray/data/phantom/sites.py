"""Acquisition sites: the detector, exposure and collimation habits of one hospital, and one film's acquisition.

Why sites: public chest sets pool films from several hospitals, and a site differs in more than
its patients: detector response (contrast, gamma, noise), collimation (bright unexposed margins or
black digital shutters) and where it puts its markings (:mod:`lungray.data.phantom.markings`). When
the share of a class differs between sites, a classifier can score by recognising the site: the
shortcut of DeGrave et al. (2021, "AI for radiographic COVID-19 detection selects shortcuts over
signal", Nat. Mach. Intell.). The phantom plants it on request (``data.phantom_site_label_correlation``)
and records every film's site, so a study can probe it (a site classifier on the features, a
held-out site).

A site's profile is a function of ``(seed, site)`` only; a film's acquisition jitters around it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lungray.data.phantom.fields import Frame, rng, sig
from lungray.data.phantom.markings import Styles, draw_styles

S_SITE = 15  # random stream of the site profiles


@dataclass(frozen=True)
class Site:
    """One site's detector and collimation habits and its marking styles."""

    index: int
    gain: float  # exposure: signal = 1 - exp(-gain * attenuation)
    lo: float  # display window on the signal
    hi: float
    gamma: float
    noise: float  # quantum-noise multiplier
    heel: tuple[float, float]  # heel-effect gradient along X and Y
    collimation: float  # share of films with collimation margins
    border: float  # signal of the unexposed margins; < 0: a black digital shutter instead
    styles: Styles


def site_profile(seed: int, site: int, kinds: tuple[str, ...]) -> Site:
    """The profile of site ``site`` with the marking kinds ``kinds`` allowed."""
    r = rng(seed, S_SITE, site)
    ang, amp = r.uniform(0, 2 * np.pi), r.uniform(0.02, 0.06)
    return Site(
        index=site,
        gain=float(r.uniform(1.2, 1.75)),
        lo=float(r.uniform(0.0, 0.1)),
        hi=float(r.uniform(0.9, 1.0)),
        gamma=float(r.uniform(0.75, 1.35)),
        noise=float(r.uniform(0.7, 1.4)),
        heel=(float(amp * math.cos(ang)), float(amp * math.sin(ang))),
        collimation=float(r.uniform(0.1, 0.8)),
        border=float(r.uniform(0.9, 1.05)) if r.random() < 0.6 else -1.0,
        styles=draw_styles(r, site, kinds),
    )


@dataclass(frozen=True)
class Acquisition:
    """One film: patient positioning (rotation, shift, field of view, inspiration) and exposure."""

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


def acquisition(r: np.random.Generator, site: Site, difficulty: float) -> Acquisition:
    """A film's acquisition at ``site``: positioning varies freely, exposure jitters around the site's."""
    return Acquisition(
        angle=float(np.clip(r.normal(0, 5.0), -12, 12)) * math.pi / 180,
        shift=(float(r.normal(0, 0.08)), float(r.normal(0.03, 0.1))),
        zoom=float(r.uniform(0.75, 1.12)),
        inspiration=float(r.uniform(-0.05, 0.05)),
        gain=site.gain * float(r.uniform(0.93, 1.07)),
        lo=site.lo + float(r.normal(0, 0.01)),
        hi=site.hi + float(r.normal(0, 0.01)),
        gamma=site.gamma * float(r.uniform(0.95, 1.05)),
        heel=(site.heel[0] * float(r.uniform(0.7, 1.3)), site.heel[1] * float(r.uniform(0.7, 1.3))),
        noise=0.022 * math.sqrt(difficulty) * site.noise * float(r.uniform(0.85, 1.15)),
    )


def detector(A: np.ndarray, q: Acquisition, site: Site, fr: Frame, r: np.random.Generator) -> np.ndarray:
    """Attenuation -> displayed image in [0, 1]: exposure, heel effect, collimation margins,
    quantum noise, then the display window and gamma (so saturated lead and unexposed margins
    come out flat white, as on a real film)."""
    s = 1.0 - np.exp(-q.gain * np.clip(A, 0, None))
    s += q.heel[0] * fr.X + q.heel[1] * fr.Y
    shutter = None
    if r.random() < site.collimation:
        col = np.zeros_like(s)
        for side in r.permutation(4)[: int(r.integers(1, 4))]:
            edge = 1.0 - r.uniform(0.03, 0.12)
            coord = (fr.X, -fr.X, fr.Y, -fr.Y)[side]
            col = np.maximum(col, sig((coord - edge) / 0.006))
        if site.border >= 0:
            s = s * (1 - col) + col * site.border
        else:
            shutter = col
    s += r.normal(0.0, q.noise, s.shape)
    img = np.clip((s - q.lo) / (q.hi - q.lo), 0, 1) ** q.gamma
    if shutter is not None:  # a digital shutter blacks out the margins after the fact
        img = img * (shutter < 0.5)
    return img
