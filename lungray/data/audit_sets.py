"""Image sets with a planted truth for measuring the leakage audit on annotated films (issue 18).

The audit must not be measured only on the data it was tuned on, so besides the phantom
(:mod:`lungray.data.phantom`) this module provides, with code that shares nothing with the
phantom's renderer:

* :func:`scenes`: a second, independent generator of distinct "patients": smooth random
  densities, bright curved structures, a fixed texture per patient and acquisition noise;
* :func:`real_tiles`: distinct real anatomy, the non-overlapping tiles of pydicom-data's real
  computed radiographs (``RG1_UNCR``: a chest CR, 1955 x 1841; ``RG3_UNCR``: an extremity CR);
* :func:`stamp`: burned-in markings drawn with OpenCV fonts at one *site's* places: a side
  letter (boxed or not), 1-4 text lines whose date and number change per film, a white label
  box with black text, a ruler, and ECG-like leads (drawn grey and blurred, as physical objects
  look), so distinct patients of one site share them as they do in the public sets;
* :func:`keras_copy`: a Keras ``ImageDataGenerator`` copy (:mod:`lungray.data.kerasaug`).

``tests/test_data_burnin.py`` measures the audit on these (recall, false pairs, clusters) and
``bench/bench_leakage.py`` at a larger size, with the cost against n.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

STAMP_KINDS = ("letter", "text", "label_box", "ruler", "leads")


@dataclass(frozen=True)
class SiteStyle:
    """Where one site puts its markings (pixel fractions of the image side)."""

    letter: tuple[float, float, str, bool]  # x, y, "L"/"R", boxed
    text: tuple[float, float, int, bool]  # x, y, lines, right-aligned
    box: tuple[float, float, float, float]  # x, y, w, h
    ruler: tuple[float, float, float]  # x, y0, y1
    font: int
    kinds: tuple[str, ...]


def site_style(seed: int, kinds: Sequence[str] = STAMP_KINDS) -> SiteStyle:
    """A random site: its markings' places, a font, and which kinds it uses."""
    import cv2

    r = np.random.default_rng([seed, 0x51E])
    corners = [(0.04, 0.06), (0.70, 0.06), (0.04, 0.80), (0.66, 0.80)]
    order = r.permutation(4)
    lx, ly = corners[order[0]]
    tx, ty = corners[order[1]]
    bx, by = corners[order[2]]
    return SiteStyle(
        letter=(lx + r.uniform(0, 0.08), ly + r.uniform(0, 0.06), "L" if r.random() < 0.5 else "R", bool(r.random() < 0.5)),
        text=(tx, ty, int(r.integers(1, 5)), tx > 0.5),
        box=(bx, by, float(r.uniform(0.22, 0.3)), float(r.uniform(0.08, 0.12))),
        ruler=(0.96 if r.random() < 0.5 else 0.02, float(r.uniform(0.1, 0.3)), float(r.uniform(0.6, 0.9))),
        font=int(r.choice([cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX_SMALL])),
        kinds=tuple(kinds),
    )


def stamp(img: np.ndarray, style: SiteStyle, rng: np.random.Generator) -> np.ndarray:
    """A copy of uint8 ``img`` with the site's markings drawn on (text content and a pixel of
    placement jitter drawn from ``rng``)."""
    import cv2

    out = np.ascontiguousarray(img.copy())
    h, w = out.shape
    s = min(h, w)
    j = rng.integers(-1, 2, 2) * max(1, s // 256)
    sc = s / 512.0

    def at(fx: float, fy: float) -> tuple[int, int]:
        return int(fx * w) + int(j[0]), int(fy * h) + int(j[1])

    k = style.kinds
    if "letter" in k:
        x, y, letter, boxed = style.letter
        p = at(x, y + 0.06)
        cv2.putText(out, letter, p, cv2.FONT_HERSHEY_SIMPLEX, 1.6 * sc, 255, max(1, int(3 * sc)), cv2.LINE_AA)
        if boxed:
            cv2.rectangle(out, (p[0] - int(6 * sc), p[1] - int(40 * sc)), (p[0] + int(36 * sc), p[1] + int(8 * sc)), 255, max(1, int(2 * sc)))
    if "text" in k:
        x, y, n, right = style.text
        lines = ["GENERAL HOSP", f"{int(rng.integers(1, 29)):02d}/{int(rng.integers(1, 13)):02d}/20{int(rng.integers(10, 24))}",
                 "PORTABLE AP", f"#{int(rng.integers(10**5, 10**6))}"][:n]
        for i, t in enumerate(lines):
            fs = 1.1 * sc
            (tw, th), _ = cv2.getTextSize(t, style.font, fs, max(1, int(1.5 * sc)))
            px, py = at(x, y + 0.05 * (i + 1))
            if right:
                px = min(w - 2, int(0.97 * w)) - tw
            cv2.putText(out, t, (px, py), style.font, fs, 255, max(1, int(1.5 * sc)), cv2.LINE_AA)
    if "label_box" in k:
        x, y, bw, bh = style.box
        a = at(x, y)
        cv2.rectangle(out, a, (a[0] + int(bw * w), a[1] + int(bh * h)), 255, -1)
        cv2.putText(out, f"ID {int(rng.integers(10**4, 10**5))}", (a[0] + int(0.02 * w), a[1] + int(0.7 * bh * h)),
                    style.font, 1.0 * sc, 0, max(1, int(1.5 * sc)), cv2.LINE_AA)
    if "ruler" in k:
        x, y0, y1 = style.ruler
        xa, ya = at(x, y0)
        _, yb = at(x, y1)
        cv2.line(out, (xa, ya), (xa, yb), 255, max(1, int(2 * sc)))
        for i, yy in enumerate(range(ya, yb, max(2, int(12 * sc)))):
            ln = int((14 if i % 5 == 0 else 7) * sc) + 1
            cv2.line(out, (xa, yy), (xa + (ln if x < 0.5 else -ln), yy), 255, max(1, int(2 * sc)))
    if "leads" in k:
        leads = np.zeros_like(out)
        for _ in range(int(rng.integers(1, 4))):
            c = rng.uniform(0.2, 0.8, 2) * (w, h)
            pts = np.cumsum(rng.normal(0, 0.05 * s, (8, 2)), axis=0) + c
            cv2.polylines(leads, [pts.astype(np.int32)], False, 200, max(1, int(3 * sc)), cv2.LINE_AA)
            cv2.circle(leads, tuple(int(v) for v in c), max(2, int(10 * sc)), 220, -1, cv2.LINE_AA)
        leads = cv2.GaussianBlur(leads, (0, 0), max(0.6, sc))
        out = np.maximum(out, leads)
    return out


def scenes(n: int, size: int = 256, seed: int = 0) -> np.ndarray:
    """(n, size, size) uint8: ``n`` distinct images of the second generator (each its own patient)."""
    import cv2

    out = np.empty((n, size, size), np.uint8)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        r = np.random.default_rng([seed, 0x5CE, i])
        a = np.zeros((size, size), np.float32)
        for _ in range(20):  # smooth densities
            cx, cy, sx, sy = r.uniform(0, 1), r.uniform(0, 1), r.uniform(0.05, 0.3), r.uniform(0.05, 0.3)
            a += r.uniform(-0.4, 0.6) * np.exp(-(((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2)).astype(np.float32)
        curves = np.zeros((size, size), np.float32)
        for _ in range(int(r.integers(8, 16))):  # bright curved structures
            p0 = r.uniform(0, 1, 2)
            pts = np.array([p0 + t * r.normal(0, 0.4, 2) + t * t * r.normal(0, 0.3, 2) for t in np.linspace(0, 1, 12)])
            cv2.polylines(curves, [(pts * size).astype(np.int32)], False, float(r.uniform(0.2, 0.5)), int(r.integers(1, 4)), cv2.LINE_AA)
        a += cv2.GaussianBlur(curves, (0, 0), 1.2)
        tex = cv2.GaussianBlur(r.normal(0, 1, (size, size)).astype(np.float32), (0, 0), 2.0)  # the patient's texture
        a += 0.15 * tex / (tex.std() + 1e-6)
        a = (a - a.min()) / (np.ptp(a) + 1e-6)
        a = 0.1 + 0.75 * a + r.normal(0, 0.02, a.shape)  # acquisition noise
        out[i] = np.clip(a * 255 + 0.5, 0, 255).astype(np.uint8)
    return out


def real_tiles(
    names: Sequence[str] = ("RG1_UNCR.dcm", "RG3_UNCR.dcm"), grid: int = 4, size: int = 256, min_content: float = 0.5
) -> tuple[np.ndarray, list[str]]:
    """``(tiles (k, size, size) uint8, their names)``: the non-overlapping ``grid`` x ``grid`` tiles of
    pydicom-data's real CRs (distinct real anatomy), without the tiles of which less than
    ``min_content`` lies below the saturated white background (a tile of blank background is no
    patient: two such tiles are the same picture); empty when pydicom-data is not installed."""
    import cv2

    from lungray.data.decode import decode

    try:
        from pydicom.data import get_testdata_file
    except ImportError:  # pragma: no cover
        return np.zeros((0, size, size), np.uint8), []
    tiles, out_names = [], []
    for name in names:
        path = get_testdata_file(name)
        if path is None:
            continue
        img = np.rint(np.clip(decode(path), 0, 1) * 255).astype(np.uint8)
        h, w = img.shape
        th, tw = h // grid, w // grid
        for a in range(grid):
            for b in range(grid):
                t = img[a * th : (a + 1) * th, b * tw : (b + 1) * tw]
                if (t < 235).mean() < min_content:
                    continue
                tiles.append(cv2.resize(t, (size, size), interpolation=cv2.INTER_AREA))
                out_names.append(f"{name.split('.')[0]}[{a},{b}]")
    return (np.stack(tiles) if tiles else np.zeros((0, size, size), np.uint8)), out_names


def keras_copy(img: np.ndarray, rng: np.random.Generator, style: Optional[SiteStyle] = None) -> np.ndarray:
    """A Keras-style random copy of ``img`` (rotation +-30, zoom 0.9-1.1, shift +-10 %, flip, brightness,
    fill nearest or black); with ``style``, the site's markings are burned on the copy afterwards (a copy
    re-exported by a site that marks its films, while the original is clean or marked elsewhere)."""
    from lungray.data.kerasaug import keras_random_params, keras_transform

    out = keras_transform(img, **keras_random_params(rng, img.shape))
    if style is None:
        return out
    burned = tuple(k for k in style.kinds if k != "leads")  # leads are physical: a copy cannot gain them
    return stamp(out, SiteStyle(style.letter, style.text, style.box, style.ruler, style.font, burned), rng)
