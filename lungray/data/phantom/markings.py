"""What real chest films carry besides anatomy, at the places a site puts it.

Two kinds, drawn at two different stages of :func:`lungray.data.phantom.render.render`:

* **physical objects** in the beam, added to the attenuation before the detector (so they are
  blurred by nothing, saturate where dense, and carry quantum noise where they do not):
  the lead side marker (``marker``: an ``L`` or ``R``, boxed at some sites), a lead ruler along
  one edge (``ruler``), ECG electrodes with their leads (``ecg``, at a random place on the chest,
  in a share of a site's films: the ICU and portable films);
* **burned-in graphics** written on the finished image (flat, noise-free, white): 1-4 lines of
  text (``text``: the site's name, the view, a date and an accession number that change per
  film) and a white label box with black text (``label_box``).

Markers, rulers, text and boxes sit at the same detector place on every film of a site (with a
pixel or two of jitter), so two different patients of one site share them: exactly what made the
leakage audit of issue 18 pair distinct patients. Each style is drawn once per site by
:func:`draw_styles`; the positions are in detector coordinates (``X`` right, ``Y`` down, both in
[-1, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from lungray.data.phantom.fields import Frame, sig

MARKINGS = ("marker", "text", "label_box", "ruler", "ecg")
"""The marking kinds a site may use (``data.phantom_markings``)."""

CORNERS = ((-1, -1), (1, -1), (-1, 1), (1, 1))  # top-left, top-right, bottom-left, bottom-right

_SITE_NAMES = ("ST ANNE HOSP", "CITY GENERAL", "NORTH CLINIC", "MERCY MED CTR", "VALLEY RAD", "UNIV HOSPITAL",
               "HARBOR VIEW", "RIVERSIDE", "LAKESIDE MC", "PINE RIDGE")
_VIEWS = ("PA ERECT", "AP PORTABLE", "AP SUPINE", "PA CHEST", "CHEST 1V")


@dataclass(frozen=True)
class MarkerStyle:
    x: float  # centre, detector coordinates
    y: float
    letter: str
    size: float  # letter height, fraction of the image side
    boxed: bool


@dataclass(frozen=True)
class TextStyle:
    x: float  # anchor corner of the block (left or right aligned by the corner's side)
    y: float
    right: bool
    bottom: bool
    lines: int  # 1-4
    height: float  # line height, fraction of the image side
    view: str
    name: str


@dataclass(frozen=True)
class BoxStyle:
    x0: float
    y0: float
    w: float
    h: float


@dataclass(frozen=True)
class RulerStyle:
    x: float
    y0: float
    y1: float


@dataclass(frozen=True)
class Styles:
    """The markings a site uses (``None``: not used) and how often its films carry ECG leads."""

    marker: Optional[MarkerStyle]
    text: Optional[TextStyle]
    label_box: Optional[BoxStyle]
    ruler: Optional[RulerStyle]
    ecg: float

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k in MARKINGS if (getattr(self, k) if k != "ecg" else self.ecg > 0))


def draw_styles(r: np.random.Generator, site: int, kinds: tuple[str, ...]) -> Styles:
    """The marking styles of site ``site`` among the allowed ``kinds``.

    Every site uses a side marker and text lines; label boxes are used by the even sites, rulers
    by sites 1, 4, 7...; so any two sites differ and, from two sites on, every kind is in the
    data. Corners are a per-site permutation: the marker, the text block and the label box never
    share one.
    """
    corners = [CORNERS[k] for k in r.permutation(4)]
    m_c, t_c, b_c = corners[0], corners[1], corners[2]
    marker = text = box = ruler = None
    if "marker" in kinds:
        size = float(r.uniform(0.12, 0.17))  # a lead letter is 2-3 cm on a 35-43 cm film
        marker = MarkerStyle(x=m_c[0] * float(r.uniform(0.72, 0.86)), y=m_c[1] * float(r.uniform(0.72, 0.86)),
                             letter="R" if r.random() < 0.7 else "L", size=size, boxed=bool(r.random() < 0.5))
    if "text" in kinds:
        text = TextStyle(x=t_c[0] * 0.94, y=t_c[1] * 0.94, right=t_c[0] > 0, bottom=t_c[1] > 0,
                         lines=int(r.integers(1, 5)), height=float(r.uniform(0.035, 0.05)),
                         view=str(r.choice(_VIEWS)), name=_SITE_NAMES[site % len(_SITE_NAMES)])
    if "label_box" in kinds and site % 2 == 0:
        w, h = float(r.uniform(0.3, 0.45)), float(r.uniform(0.1, 0.16))
        x0 = 0.94 - w if b_c[0] > 0 else -0.94
        y0 = 0.94 - h if b_c[1] > 0 else -0.94
        box = BoxStyle(x0=x0, y0=y0, w=w, h=h)
    if "ruler" in kinds and site % 3 == 1:
        side = -1.0 if r.random() < 0.5 else 1.0
        y0 = float(r.uniform(-0.6, -0.2))
        ruler = RulerStyle(x=side * 0.92, y0=y0, y1=y0 + float(r.uniform(0.8, 1.1)))
    ecg = float(r.uniform(0.15, 0.7)) if "ecg" in kinds else 0.0
    return Styles(marker=marker, text=text, label_box=box, ruler=ruler, ecg=ecg)


def _px(v: float, res: int) -> int:
    return int(round((v + 1.0) / 2.0 * res - 0.5))


def _font(height_px: float) -> tuple[float, int]:
    """OpenCV Hershey simplex scale and stroke thickness for letters ``height_px`` tall."""
    return max(height_px, 1.0) / 22.0, max(1, int(round(height_px / 8.0)))


def _put(img: np.ndarray, text: str, x: float, y: float, height_px: float, value: float, *, right: bool = False, bold: bool = False) -> None:
    """Text with its baseline at detector point (x, y), left or right aligned (``bold``: a lead letter's strokes)."""
    import cv2

    res = img.shape[0]
    scale, th = _font(height_px)
    if bold:
        th = max(2, th, int(round(height_px / 5.0)))
    (w, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, th)
    px, py = _px(x, res), _px(y, res)
    if right:
        px -= w
    if bold:  # a lead letter is an object in the beam: anti-aliased, partial volume at its rims
        cv2.putText(img, text, (px, py), cv2.FONT_HERSHEY_SIMPLEX, scale, value, th, cv2.LINE_AA)
        return
    # burned-in text is written on the pixel grid at the film's own resolution: crisp and flat
    # (OpenCV 5 renders text anti-aliased whatever the line type, so threshold its coverage)
    cover = np.zeros_like(img, dtype=np.uint8)
    cv2.putText(cover, text, (px, py), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, th, cv2.LINE_AA)
    img[cover >= 128] = value


def physical_density(st: Styles, fr: Frame, r: np.random.Generator) -> np.ndarray:
    """Attenuation of the physical objects of one film: lead marker, lead ruler (both dense
    enough to saturate the detector) and, in a share of the films, ECG electrodes and leads."""
    import cv2

    res = fr.resolution
    canvas = np.zeros((res, res), np.uint8)  # OpenCV draws anti-aliased text on 8-bit images only
    jx, jy = r.normal(0, 0.006, 2)  # the cassette is never placed twice at the same pixel
    if st.marker is not None:
        m = st.marker
        h = m.size * res / 2
        _put(canvas, m.letter, m.x + jx - 0.3 * m.size, m.y + jy + 0.5 * m.size, h, 255, bold=True)
        if m.boxed:
            a = (_px(m.x + jx - 0.85 * m.size, res), _px(m.y + jy - 0.8 * m.size, res))
            b = (_px(m.x + jx + 0.85 * m.size, res), _px(m.y + jy + 0.8 * m.size, res))
            cv2.rectangle(canvas, a, b, 255, max(1, int(round(res / 160))), cv2.LINE_AA)
    if st.ruler is not None:
        u = st.ruler
        lw = max(1, int(round(res / 256)))
        x = u.x + jx
        cv2.line(canvas, (_px(x, res), _px(u.y0 + jy, res)), (_px(x, res), _px(u.y1 + jy, res)), 255, lw, cv2.LINE_AA)
        for k, yy in enumerate(np.arange(u.y0, u.y1, 0.04)):
            ln = 0.05 if k % 5 == 0 else 0.025
            x1 = x + ln if x < 0 else x - ln
            cv2.line(canvas, (_px(x, res), _px(yy + jy, res)), (_px(x1, res), _px(yy + jy, res)), 255, lw, cv2.LINE_AA)
    out = (8.0 / 255.0) * canvas.astype(np.float64)  # lead: no signal under it, whatever the exposure and noise
    if st.ecg > 0 and r.random() < st.ecg:
        out += _ecg(r, fr)
    return out


def _ecg(r: np.random.Generator, fr: Frame) -> np.ndarray:
    """ECG electrodes (a dense disc and its ring) with curved leads, on the chest (body coordinates)."""
    x, y = fr.x, fr.y
    out = np.zeros_like(x)
    for _ in range(int(r.integers(1, 5))):
        ex, ey = r.uniform(-0.75, 0.75), r.uniform(-0.75, 0.55)
        rr = (x - ex) ** 2 + (y - ey) ** 2
        out += 0.5 * np.exp(-rr / (2 * 0.02**2)) + 0.25 * np.exp(-(((np.sqrt(rr) - 0.04) / 0.008) ** 2))
        th, kappa, amp, om, ph = r.uniform(0, 2 * np.pi), r.uniform(-0.6, 0.6), r.uniform(0, 0.08), r.uniform(3, 8), r.uniform(0, 2 * np.pi)
        c, s = np.cos(th), np.sin(th)
        along = (x - ex) * c + (y - ey) * s
        off = -(x - ex) * s + (y - ey) * c - (kappa * along**2 + amp * np.sin(om * along + ph))
        out += 0.3 * np.exp(-((off / 0.011) ** 2)) * sig((along - 0.04) / 0.01)
    return out


def film_text(st: Styles, r: np.random.Generator) -> tuple[str, ...]:
    """The burned-in strings of one film: the text block's lines, then the label box's line.
    The date and the numbers change per film; the site's name and view do not."""
    date = f"20{int(r.integers(19, 23)):02d}-{int(r.integers(1, 13)):02d}-{int(r.integers(1, 29)):02d}"
    acc = f"ACC {int(r.integers(100000, 999999))}"
    box = f"ID {int(r.integers(1000, 99999))}"
    lines: tuple[str, ...] = ()
    if st.text is not None:
        lines = (st.text.name, date, st.text.view, acc)[: st.text.lines]
    return lines + ((box,) if st.label_box is not None else ())


def burn_in(img: np.ndarray, st: Styles, texts: tuple[str, ...], r: np.random.Generator) -> None:
    """Write the burned-in graphics into a finished uint8 image, in place (flat white, no noise)."""
    import cv2

    res = img.shape[0]
    lines = list(texts)
    jx, jy = r.normal(0, 0.004, 2)
    if st.text is not None:
        t = st.text
        hpx = t.height * res / 2
        step = t.height * 1.45
        own = lines[: t.lines]
        for k, s in enumerate(own):
            row = (len(own) - 1 - k) if t.bottom else k
            y = t.y + jy + (-row * step if t.bottom else (row + 1) * step - 0.3 * step)
            _put(img, s, t.x + jx, y, hpx, 255, right=t.right)
        lines = lines[t.lines :]
    if st.label_box is not None:
        b = st.label_box
        a = (_px(b.x0 + jx, res), _px(b.y0 + jy, res))
        c = (_px(b.x0 + b.w + jx, res), _px(b.y0 + b.h + jy, res))
        cv2.rectangle(img, a, c, 255, -1)
        if lines:
            _put(img, lines[0], b.x0 + jx + 0.06 * b.w, b.y0 + jy + 0.68 * b.h, 0.45 * b.h * res / 2, 0)
