"""Burned-in annotations: find them, so the duplicate search looks at the anatomy only.

Why: real chest radiographs carry markings that are not anatomy: the lead ``L``/``R`` side
marker, lines of hospital text (name, date, accession number), a white label box, a lead ruler.
A site puts them at the same place on every film, so two *different* patients from one site share
them pixel for pixel. The leakage audit (:mod:`lungray.data.leakage`, :mod:`lungray.data.keypoints`)
matched such shared markings as if they were shared content: 250 phantom patients with one white
label box and a boxed ``R`` became a single duplicate cluster, and the search cost grew as
n^1.6 because every same-site pair became a candidate (issue 18).

What marks a burned-in annotation, and what this module uses:

* it is drawn at (or near) the brightest level of the file: text and boxes are written in
  white after acquisition, and lead letters and ruler ticks stop the beam, so the detector
  saturates under them;
* it is *flat*: digital graphics carry no quantum noise, and saturated lead clips the noise
  away (anatomy at the same brightness is noisy);
* it is small and compact (a letter, a text line, a box), or it is a thin bright stroke with a
  strong contrast to its surroundings (a white top-hat).

:func:`burnin_mask` marks those pixels (and the dark text inside a white box, the holes of a
bright component), keeps the parts shaped like annotations (small, or a solid block like a
label box; a saturated skull ring or the clipped half of a brightened copy is anatomy or
nothing, and stays), and dilates them over the anti-aliased rim. The mask is used three ways: no keypoint is taken on or next to it
(:func:`lungray.data.keypoints.describe`), the photometric check of a candidate pair ignores
its pixels, and the perceptual hash is computed on the image with it inpainted
(:func:`content_image`), so a copy matches its original whether or not either carries the
markings, and two patients do not match because both do.

The detector is not tuned on the phantom alone: ``tests/test_data_burnin.py`` measures it on
the phantom's site markings, on text and boxes drawn with OpenCV's fonts on a second,
independent generator, and on pydicom-data's real chest CR (``RG1_UNCR``) with synthetic
markings; ``bench/bench_leakage.py`` measures what it does to the audit.
"""

from __future__ import annotations

import numpy as np

#: the detector works on the image area-resized to at most this many pixels a side: text of a
#: 2000-px CR keeps strokes of 2-4 px (flat inside), and a mask costs a few ms
WORK = 512
#: a pixel is "bright" within this many grey levels (of 255) of the brightest level of the image
BRIGHT_BAND = 14
#: ... and "flat" when its 3x3 neighbourhood spans at most this many grey levels (quantum noise
#: of a radiograph spans far more; digital graphics and clipped lead span 0-2)
FLAT_RANGE = 3
#: a thin bright stroke: white top-hat (structuring element ``TOPHAT_FRAC`` of the side) of at
#: least this many grey levels on a pixel in the bright band
TOPHAT_MIN = 70
#: ... for a stroke pixel within this many levels of the maximum (anti-aliased 1-px text peaks
#: well below white)
STROKE_BAND = 80
TOPHAT_FRAC = 0.03
#: ... or a stroke at most a few px wide within ``TOP_BAND`` levels of the maximum, standing
#: ``THIN_MIN`` levels above its 5 x 5 opening
TOP_BAND = 2
THIN_MIN = 6
#: holes of a bright component (black text in a white box) are filled when smaller than this
#: share of the image; a collimation frame's hole is the whole body and is left alone
MAX_HOLE = 0.02
#: annotation-shaped parts: at most ``MAX_PART`` of the image, or a solid block (``MIN_FILL`` of
#: its bounding box) of at most ``MAX_BLOCK`` (a label box)
MAX_PART = 0.02
MAX_BLOCK = 0.15
MIN_FILL = 0.6


def gray_2d(img: np.ndarray) -> np.ndarray:
    """One 2-D grayscale image as given (RGB/RGBA -> BT.601 luminance, float32), or a ValueError
    naming the shape: the input rule the annotation detector and the keypoint describer share."""
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    if a.ndim != 2 or min(a.shape) < 1:
        raise ValueError(f"expected one 2-D grayscale image, got shape {a.shape}")
    return a


def _to_u8(img: np.ndarray) -> np.ndarray:
    """A 2-D image (uint8, uint16, float in [0, 1]; RGB -> luminance) as uint8."""
    a = gray_2d(img)
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.uint16:
        return np.rint(a.astype(np.float32) / 257.0).astype(np.uint8)
    return np.rint(np.clip(a.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def _work(u8: np.ndarray) -> np.ndarray:
    import cv2

    h, w = u8.shape
    s = WORK / max(h, w)
    if s >= 1:
        return u8
    return cv2.resize(u8, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def burnin_mask(img: np.ndarray, size: int | None = None) -> np.ndarray:
    """Bool mask of burned-in annotations (see the module docstring), dilated over their rim.

    ``img``: one 2-D image (uint8, uint16 or float in [0, 1]). The mask has the shape of the
    detector's working image (the image area-resized to at most :data:`WORK` px a side), or
    ``size`` x ``size`` when ``size`` is given (any pixel touched by the mask is marked).

    >>> im = np.full((64, 64), 90, np.uint8) + np.random.default_rng(0).integers(0, 30, (64, 64)).astype(np.uint8)
    >>> im[5:12, 5:25] = 255  # a white label
    >>> m = burnin_mask(im)
    >>> bool(m[8, 10]), bool(m[40, 40]), round(float(m.mean()), 2)
    (True, False, 0.04)
    """
    import cv2

    v = _work(_to_u8(img))
    h, w = v.shape
    side = max(h, w)
    top = int(v.max())
    bright = v >= max(top - BRIGHT_BAND, 1)
    k3 = np.ones((3, 3), np.uint8)
    flat = (cv2.dilate(v, k3) - cv2.erode(v, k3)) <= FLAT_RANGE
    mask = bright & flat
    # thin bright strokes with a strong local contrast (anti-aliased text, ruler ticks)
    r = max(3, int(round(TOPHAT_FRAC * side)) | 1)
    se = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (r, r))
    tophat = cv2.morphologyEx(v, cv2.MORPH_TOPHAT, se)
    mask |= (v >= top - STROKE_BAND) & (tophat >= TOPHAT_MIN)
    # thin strokes at the very top level on a bright background (white text over a bright
    # shoulder): low contrast, but exactly at the file's maximum, which noise rarely reaches
    thin = cv2.morphologyEx(v, cv2.MORPH_TOPHAT, np.ones((5, 5), np.uint8))
    mask |= (v >= top - TOP_BAND) & (thin >= THIN_MIN)
    m8 = mask.astype(np.uint8)
    if m8.any():
        # dark text inside a white box: the small holes of the bright components
        ff = np.pad(m8, 1)
        filled = ff.copy()
        cv2.floodFill(filled, None, (0, 0), 2)
        holes = (filled[1:-1, 1:-1] == 0).astype(np.uint8)
        if holes.any():
            n, lab, stats, _ = cv2.connectedComponentsWithStats(holes, connectivity=4)
            small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] <= MAX_HOLE * h * w)
            small = small[small > 0]
            if len(small):
                m8 |= np.isin(lab, small).astype(np.uint8)
        m8 = _annotation_parts(m8)
    if m8.any():
        # the anti-aliased rim and outline of the strokes
        rim = max(1, int(round(side / 256)))
        m8 = cv2.dilate(m8, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rim + 1, 2 * rim + 1)))
    out = m8.astype(bool)
    if size is not None and out.shape != (size, size):
        out = cv2.resize(out.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA) > 0
    return out


def _annotation_parts(m8: np.ndarray) -> np.ndarray:
    """The connected parts of the candidate mask that are shaped like annotations: small (a
    glyph, a text line, a ruler, a letter: at most ``MAX_PART`` of the image) or a solid block
    (a label box: at most ``MAX_BLOCK`` of the image and filling ``MIN_FILL`` of its bounding
    box). Large or sparse bright regions (a saturated skull ring, the clipped half of a
    brightened copy, a saturated abdomen) are anatomy or nothing: they stay, so their edges still
    count as content (flat parts carry no detail for the photometric check anyway)."""
    import cv2

    n, lab, stats, _ = cv2.connectedComponentsWithStats(m8, connectivity=8)
    if n <= 1:
        return m8
    total = m8.size
    area = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
    box = (stats[:, cv2.CC_STAT_WIDTH] * stats[:, cv2.CC_STAT_HEIGHT]).astype(np.float64)
    keep = (area <= MAX_PART * total) | ((area <= MAX_BLOCK * total) & (area >= MIN_FILL * box))
    keep[0] = False
    return keep[lab].astype(np.uint8)


def fill(img: np.ndarray, mask: np.ndarray, sigma: float = 3.0) -> np.ndarray:
    """``img`` (uint8) with the ``mask`` pixels replaced by the Gaussian-weighted mean of the
    unmasked pixels around them (normalised convolution): a smooth, cheap inpainting, ten
    times faster than OpenCV's Telea method at 128 px, which is all a hash or an ECC refinement
    needs (neither may see the annotation; neither needs its place re-invented in detail)."""
    import cv2

    m = np.asarray(mask, bool)
    if not m.any():
        return img
    keep = (~m).astype(np.float32)
    num = cv2.GaussianBlur(img.astype(np.float32) * keep, (0, 0), sigma)
    den = cv2.GaussianBlur(keep, (0, 0), sigma)
    out = img.copy()
    filled = num[m] / np.maximum(den[m], 1e-3)
    far = den[m] < 1e-3  # deep inside a large mark: the image's unmasked mean
    if far.any():
        filled[far] = float(img[~m].mean()) if (~m).any() else 0.0
    out[m] = np.clip(np.rint(filled), 0, 255).astype(img.dtype)
    return out


def content_image(img: np.ndarray, size: int = 128, marks: np.ndarray | None = None) -> np.ndarray:
    """The image as uint8, area-resized to at most ``size`` px a side, with its burned-in
    annotations inpainted (OpenCV's Telea method; ``marks``: a :func:`burnin_mask` already computed): what the perceptual
    hash is computed on, so
    a copy with or without the markings hashes like its original and two patients do not hash
    alike because they share a site's markings."""
    import cv2

    u8 = _to_u8(img)
    h, w = u8.shape
    s = min(1.0, size / max(h, w))
    small = u8 if s >= 1 else cv2.resize(u8, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    m = burnin_mask(u8) if marks is None else np.asarray(marks, bool)
    if not m.any():
        return small
    if m.shape != small.shape:
        m = cv2.resize(m.astype(np.float32), (small.shape[1], small.shape[0]), interpolation=cv2.INTER_AREA) > 0
    # Telea here, not :func:`fill`: the hash's mid frequencies stay closer to the unmarked film's
    # (a 36-px copy of a 48-px film hashed 3 bits from it this way, 4 with the smooth fill)
    return cv2.inpaint(small, m.astype(np.uint8), 3, cv2.INPAINT_TELEA)
