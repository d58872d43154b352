"""One film of the phantom: anatomy + finding + physical objects, through the site's detector,
then the burned-in graphics.

Returns the image and two masks: where the finding is (the lesion mask, for segmentation and the
Grad-CAM checks) and where the lungs are (for lung-region ablations and "how much of the heat map
falls in the lung" measures).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lungray.data.phantom.anatomy import Anatomy, body_density
from lungray.data.phantom.fields import Frame, field, fourier
from lungray.data.phantom.findings import finding
from lungray.data.phantom.markings import burn_in, physical_density
from lungray.data.phantom.sites import Acquisition, Site, detector


@dataclass(frozen=True)
class Film:
    """What is rendered: the acquisition, the finding's kind and severity, the burned-in text, and
    the random streams (``case``: finding, soft tissue, objects; ``noise``: quantum noise and jitter).
    The films of a CT-like series share ``case`` (so they differ only by drift and noise)."""

    q: Acquisition
    kind: str
    severity: float
    texts: tuple[str, ...]
    case_seed: tuple[int, ...]
    noise_seed: tuple[int, ...]


def render(a: Anatomy, site: Site, film: Film, resolution: int, difficulty: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image uint8, lesion mask uint8 0/1, lung mask uint8 0/1)`` of one film."""
    q = film.q
    fr = Frame(resolution, q.angle, q.shift, q.zoom)
    rc = np.random.default_rng(list(film.case_seed))
    rn = np.random.default_rng(list(film.noise_seed))
    A, lung, body, geo = body_density(a, fr, q.inspiration)
    # external objects in the beam: lead marker, ruler, ECG leads (site places, film jitter)
    A += physical_density(site.styles, fr, rc)
    # overlying soft tissue and scatter: a smooth random density field, different on every
    # film, so no two radiographs share their low-frequency content by chance
    A += 0.07 * body * field(fr, fourier(rc, 12, 0.8, 4.0))
    if film.kind == "none":
        mask = np.zeros((resolution, resolution), dtype=np.uint8)
    else:
        dens, support = finding(film.kind, a, geo, rc, fr, 1.0 / difficulty, film.severity)
        A += dens * lung
        mask = ((support > 1.0) & (lung > 0.5)).astype(np.uint8)
    img = detector(A, q, site, fr, rn)
    out = (img * 255 + 0.5).astype(np.uint8)
    burn_in(out, site.styles, film.texts, rn)
    return out, mask, (lung > 0.5).astype(np.uint8)
