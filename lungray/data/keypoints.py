"""Stage 2 of the duplicate search: keypoints, a bit-sampling LSH join and geometric verification.

Why: the public COVID-19 sets (COVID-19 X-ray & CT, the Radiography Database) hold copies made
with Keras' ``ImageDataGenerator``: rotations up to 30 degrees, zoom 0.9-1.1 per axis, shifts,
horizontal flips and brightness changes, the empty border filled with the nearest pixel (the
default) or black. A global perceptual hash (:mod:`lungray.data.hashing`, stage 1) is not
invariant to any of these: measured with ``bench/bench_leakage.py`` it found 4 % of 5-degree
rotations, none at 10 degrees or more, none of the zooms or 5 % shifts, 2 % of a Keras-style
random mix. Keypoints are: a rotated, zoomed, shifted copy keeps most of its corners, each with
a rotation-invariant binary descriptor, and the matches between copy and original agree on one
affine map, which unrelated images (even two look-alike chests) do not.

The search, for every image of a dataset against every other (no pair is verified unless the
cheap stages nominate it, so the cost grows with the number of images, not with pairs):

1. :func:`describe` (per image, once, in the decoded cache): the image area-resized to
   ``SIZE`` x ``SIZE`` (256), ``N_KEYPOINTS`` (150) ORB keypoints of the image and 150 of its
   mirror image (ORB descriptors are not mirror-invariant; the mirror's keypoints are stored in
   the original's coordinates), and a ``THUMB`` x ``THUMB`` (128) thumbnail for the last check.
2. :func:`match_descriptors`: a self-join of all descriptors of the dataset by bit-sampling
   locality-sensitive hashing (Indyk & Motwani 1998): ``tables`` keys of ``bits`` randomly
   chosen descriptor bits each; two descriptors of different images that share a key in some
   table and differ in at most ``HAMMING_MAX`` of 256 bits are a match. Buckets larger than
   ``BUCKET_CAP`` (flat, featureless patches every image has) are skipped.
3. :func:`verify_candidates`: image pairs with at least ``MIN_VOTES`` matches (per relation:
   direct or mirrored) get a RANSAC affine fit (OpenCV ``estimateAffine2D``, 3 px at 256); the
   pair survives with at least ``MIN_INLIERS`` inliers and a plausible map (singular values in
   ``SCALE_RANGE``; mirrored iff the determinant is negative). Then the photometric check: the
   map is refined by ECC (Evangelidis & Psarakis 2008) on the thumbnails and the normalised
   cross-correlation of the fine detail (thumbnail minus its Gaussian blur, sigma 1 px) over
   the overlap, best of both directions, must reach ``MIN_NCC``. Copies keep their fine detail;
   two different chests aligned as well as possible do not (measured on the phantom: copies
   0.87-0.99, the best-aligned pairs of different patients at most 0.61). A map with at least
   ``STRONG_INLIERS`` (40) inliers skips this check (ECC is the costly step): over 1.6 million
   pairs of different phantom patients no plausible map had more than 22.

Thresholds and the measured recall / false-pair rates: ``bench/bench_leakage.py`` and
``bench/RESULTS.md``. :func:`keras_transform` is the reference of the transform family (Keras'
``apply_affine_transform`` arithmetic), used by the tests and the bench.

OpenCV is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

FEATURE_VERSION = 1
"""Bump when :func:`describe` changes: part of the cache key (:data:`lungray.data.cache.CACHE_VERSION`)."""

SIZE = 256  # features are computed on the image resized to SIZE x SIZE
N_KEYPOINTS = 150  # per side (image and mirror)
THUMB = 128  # photometric-check thumbnail
DESC_BYTES = 32  # ORB: 256-bit descriptors
FAST_THRESHOLD = 7  # OpenCV's 20 leaves smooth films (a leg CR) with ~20 corners; the 150 strongest are kept either way

HAMMING_MAX = 36  # of 256 bits: matched ORB descriptors of copies differ by 12-35 bits (10th-90th percentile)
BUCKET_CAP = 32
MIN_VOTES = 5
MIN_INLIERS = 10
SCALE_RANGE = (0.7, 1.45)
MIN_NCC = 0.75
STRONG_INLIERS = 40  # this many inliers on a plausible map is a copy without the photometric check
RANSAC_PX = 3.0


@dataclass(frozen=True)
class Features:
    """Keypoint features of N images (row-aligned with the dataset).

    ``desc`` (N, 2, K, 32) uint8 ORB descriptors of the image (side 0) and its mirror (side 1);
    ``xy`` (N, 2, K, 2) float32 keypoint positions in the image's own 256-px frame (both sides);
    ``count`` (N, 2) int number of valid keypoints per side (0 for images that were not
    described, e.g. phantom rows); ``thumbs`` (N, 128, 128) uint8.
    """

    desc: np.ndarray
    xy: np.ndarray
    count: np.ndarray
    thumbs: np.ndarray

    def __len__(self) -> int:
        return int(self.count.shape[0])

    @classmethod
    def empty(cls, n: int) -> "Features":
        return cls(
            desc=np.zeros((n, 2, N_KEYPOINTS, DESC_BYTES), np.uint8),
            xy=np.zeros((n, 2, N_KEYPOINTS, 2), np.float32),
            count=np.zeros((n, 2), np.int16),
            thumbs=np.zeros((n, THUMB, THUMB), np.uint8),
        )


# --------------------------------------------------------------------------------------------
# the transform family (reference implementation for tests and the bench)
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# 1. per-image features
# --------------------------------------------------------------------------------------------


def _as_u8(img: np.ndarray, size: int) -> np.ndarray:
    """A 2-D image (float in [0, 1], uint8 or uint16; RGB -> luminance) as uint8 ``size`` x ``size``."""
    import cv2

    a = np.asarray(img)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    if a.ndim != 2 or min(a.shape) < 1:
        raise ValueError(f"expected one 2-D grayscale image, got shape {a.shape}")
    if a.dtype == np.uint8:
        f = a.astype(np.float32)
    elif a.dtype == np.uint16:
        f = a.astype(np.float32) / 257.0
    else:
        f = np.clip(a.astype(np.float32), 0.0, 1.0) * 255.0
    interp = cv2.INTER_AREA if max(f.shape) > size else cv2.INTER_LINEAR
    if f.shape != (size, size):
        f = cv2.resize(f, (size, size), interpolation=interp)
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)


def describe(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(desc (2, K, 32), xy (2, K, 2), count (2,), thumb (THUMB, THUMB))`` of one image (see :class:`Features`)."""
    import cv2

    u8 = _as_u8(img, SIZE)
    desc = np.zeros((2, N_KEYPOINTS, DESC_BYTES), np.uint8)
    xy = np.zeros((2, N_KEYPOINTS, 2), np.float32)
    count = np.zeros(2, np.int16)
    orb = cv2.ORB_create(nfeatures=N_KEYPOINTS, fastThreshold=FAST_THRESHOLD)
    for side, im in enumerate((u8, np.ascontiguousarray(u8[:, ::-1]))):
        kps, d = orb.detectAndCompute(im, None)
        if d is None or not len(kps):
            continue
        k = min(len(kps), N_KEYPOINTS)
        pts = np.array([kp.pt for kp in kps[:k]], np.float32)
        if side == 1:  # back into the original image's frame
            pts[:, 0] = (SIZE - 1) - pts[:, 0]
        desc[side, :k], xy[side, :k], count[side] = d[:k], pts, k
    thumb = cv2.resize(u8, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    return desc, xy, count, thumb


def describe_batch(images, progress: Optional[Callable[[int], None]] = None) -> Features:
    """:class:`Features` of a sequence of 2-D images."""
    n = len(images)
    f = Features.empty(n)
    for i, im in enumerate(images):
        f.desc[i], f.xy[i], f.count[i], f.thumbs[i] = describe(im)
        if progress is not None:
            progress(1)
    return f


# --------------------------------------------------------------------------------------------
# 2. candidate generation: bit-sampling LSH self-join
# --------------------------------------------------------------------------------------------


def _lsh_bits(m: int) -> int:
    """Key length for ``m`` descriptors: about 2 descriptors per non-empty bucket, 18..26 bits."""
    return int(np.clip(np.ceil(np.log2(max(m, 2))) + 1, 18, 26))


def match_descriptors(f: Features, rows: Optional[np.ndarray] = None, tables: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    """All descriptor matches between different images: the LSH self-join of step 2.

    Returns ``a``, ``b`` (image rows, ``a < b``), ``rel`` (0: image-image or mirror-mirror
    keypoints, so ``b`` is a direct copy of ``a``; 1: image-mirror, a mirrored copy), and ``pa``,
    ``pb`` (the keypoint positions in each image's frame), one entry per matched descriptor pair.
    """
    rows = np.flatnonzero(f.count.sum(axis=1) > 0) if rows is None else np.asarray(rows, dtype=np.int64)
    owner_l, side_l, slot_l = [], [], []
    for s in (0, 1):
        cnt = f.count[rows, s].astype(np.int64)
        owner_l.append(np.repeat(rows, cnt))
        side_l.append(np.full(int(cnt.sum()), s, np.int8))
        slot_l.append(np.concatenate([np.arange(c) for c in cnt]) if len(cnt) else np.zeros(0, np.int64))
    owner, side, slot = np.concatenate(owner_l), np.concatenate(side_l), np.concatenate(slot_l).astype(np.int64)
    m = len(owner)
    empty = {k: np.zeros(0, np.int64) for k in ("a", "b", "rel")} | {"pa": np.zeros((0, 2), np.float32), "pb": np.zeros((0, 2), np.float32)}
    if m < 2:
        return empty
    d64 = np.ascontiguousarray(f.desc[owner, side, slot]).view(np.uint64)  # (m, 4)
    bits = _lsh_bits(m)
    rng = np.random.default_rng([seed, 0x15A])
    found: list[np.ndarray] = []
    for _ in range(tables):
        pos = rng.choice(256, bits, replace=False)
        key = np.zeros(m, np.uint32)
        for i, p in enumerate(pos):  # ORB bytes are little-endian words of the uint64 view
            key |= (((d64[:, p // 64] >> np.uint64(p % 64)) & np.uint64(1)).astype(np.uint32)) << np.uint32(i)
        order = np.argsort(key, kind="stable")
        ks = key[order]
        starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
        sizes = np.diff(np.r_[starts, m])
        for s in range(2, BUCKET_CAP + 1):
            g = starts[sizes == s]
            if not len(g):
                continue
            ii, jj = np.triu_indices(s, 1)
            a = order[g[:, None] + ii[None, :]].ravel()
            b = order[g[:, None] + jj[None, :]].ravel()
            keep = owner[a] != owner[b]
            a, b = a[keep], b[keep]
            keep = np.bitwise_count(d64[a] ^ d64[b]).sum(axis=1) <= HAMMING_MAX
            lo, hi = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
            found.append(lo * m + hi)
    if not found:
        return empty
    code = np.unique(np.concatenate(found))
    x, y = code // m, code % m
    swap = owner[x] > owner[y]  # image rows ascending within a pair
    x, y = np.where(swap, y, x), np.where(swap, x, y)
    return {
        "a": owner[x],
        "b": owner[y],
        "rel": (side[x] ^ side[y]).astype(np.int64),
        "pa": f.xy[owner[x], side[x], slot[x]],
        "pb": f.xy[owner[y], side[y], slot[y]],
    }


# --------------------------------------------------------------------------------------------
# 3. verification
# --------------------------------------------------------------------------------------------


def _fine(x: np.ndarray) -> np.ndarray:
    import cv2

    x = x.astype(np.float32)
    return x - cv2.GaussianBlur(x, (0, 0), 1.0)


def _ncc_into(src: np.ndarray, dst: np.ndarray, w_inv: np.ndarray) -> float:
    """NCC of the fine detail of ``src`` warped into ``dst``'s frame (``w_inv``: dst -> src
    coordinates) and ``dst``'s, over the pixels whose source lies inside ``src``."""
    import cv2

    n = dst.shape[0]
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(src, w_inv, (n, n), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    valid = cv2.warpAffine(np.ones_like(src), w_inv, (n, n), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderValue=0)
    valid = cv2.erode(valid, np.ones((7, 7), np.uint8)) > 0.5
    if valid.sum() < 0.25 * n * n:
        return -1.0
    a, b = _fine(warped)[valid], _fine(dst)[valid]
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-12))


# 256-px keypoint frame -> THUMB-px frame (pixel centres: x_thumb = (x + 0.5) * THUMB / SIZE - 0.5)
_S = np.array([[THUMB / SIZE, 0.0, 0.5 * THUMB / SIZE - 0.5], [0.0, THUMB / SIZE, 0.5 * THUMB / SIZE - 0.5], [0.0, 0.0, 1.0]])


def photometric_score(thumb_a: np.ndarray, thumb_b: np.ndarray, affine: np.ndarray) -> float:
    """The photometric check of a pair: ``affine`` (2x3, a's 256-px frame -> b's) refined by ECC on
    the thumbnails, then the fine-detail NCC over the overlap, the better of both directions."""
    import cv2

    ta, tb = thumb_a.astype(np.float32), thumb_b.astype(np.float32)
    at = _S @ np.vstack([affine, [0.0, 0.0, 1.0]]) @ np.linalg.inv(_S)
    w = np.linalg.inv(at)[:2].astype(np.float32)  # b -> a, as findTransformECC wants it
    try:
        crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 1e-4)
        _, w = cv2.findTransformECC(tb, ta, w, cv2.MOTION_AFFINE, crit, None, 3)
    except cv2.error:  # ECC did not converge: keep the RANSAC map
        pass
    w3 = np.vstack([w, [0.0, 0.0, 1.0]])
    return max(_ncc_into(ta, tb, w3[:2]), _ncc_into(tb, ta, np.linalg.inv(w3)[:2].astype(np.float32)))


def describe_affine(affine: np.ndarray) -> str:
    """``"rot -12 deg, zoom 1.04, mirrored"``: how image b relates to image a."""
    lin = np.asarray(affine)[:, :2]
    det = float(np.linalg.det(lin))
    m = lin @ np.diag([-1.0, 1.0]) if det < 0 else lin  # take the mirror out first
    ang = float(np.degrees(np.arctan2(m[1, 0], m[0, 0])))
    zoom = float(np.sqrt(abs(det)))
    return f"rot {ang:+.0f} deg, zoom {zoom:.2f}" + (", mirrored" if det < 0 else "")


def verify_candidates(
    f: Features,
    matches: dict[str, np.ndarray],
    progress: Optional[Callable[[int], None]] = None,
    seed: int = 0,
) -> "pd.DataFrame":  # noqa: F821
    """Step 3 on every (a, b, relation) with at least ``MIN_VOTES`` matches.

    Returns one row per verified image pair (the relation with more inliers when both pass):
    ``row_a``, ``row_b``, ``votes``, ``inliers``, ``ncc`` (NaN when skipped), ``transform``
    (:func:`describe_affine`).
    """
    import cv2
    import pandas as pd

    cols = ["row_a", "row_b", "votes", "inliers", "ncc", "transform"]
    a, b, rel = matches["a"], matches["b"], matches["rel"]
    if not len(a):
        return pd.DataFrame(columns=cols)
    n = int(max(a.max(), b.max())) + 1
    code = (a * n + b) * 2 + rel
    order = np.argsort(code, kind="stable")
    cs = code[order]
    starts = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]])
    ends = np.r_[starts[1:], len(cs)]
    votes = ends - starts
    keep = votes >= MIN_VOTES
    out: dict[tuple[int, int], tuple] = {}
    for st, en, v in zip(starts[keep], ends[keep], votes[keep]):
        c = int(cs[st])
        r, ij = c % 2, c // 2
        i, j = ij // n, ij % n
        idx = order[st:en]
        cv2.setRNGSeed(seed)
        aff, inl = cv2.estimateAffine2D(matches["pa"][idx], matches["pb"][idx], method=cv2.RANSAC,
                                        ransacReprojThreshold=RANSAC_PX, maxIters=1000, confidence=0.995)
        if progress is not None:
            progress(1)
        if aff is None:
            continue
        ni = int(inl.sum())
        sv = np.linalg.svd(aff[:, :2], compute_uv=False)
        det = float(np.linalg.det(aff[:, :2]))
        if ni < MIN_INLIERS or sv.min() < SCALE_RANGE[0] or sv.max() > SCALE_RANGE[1] or (det < 0) != bool(r):
            continue
        ncc = photometric_score(f.thumbs[i], f.thumbs[j], aff) if ni < STRONG_INLIERS else float("nan")
        if ncc < MIN_NCC:
            continue
        if (i, j) not in out or ni > out[(i, j)][3]:
            out[(i, j)] = (i, j, int(v), ni, round(ncc, 4), describe_affine(aff))
    df = pd.DataFrame(sorted(out.values()), columns=cols)
    return df.astype({"row_a": np.int64, "row_b": np.int64, "votes": np.int64, "inliers": np.int64, "ncc": float})


def keypoint_pairs(f: Features, rows: Optional[np.ndarray] = None, seed: int = 0, progress: Optional[Callable[[int], None]] = None):
    """Stage 2 end to end: verified near-duplicate pairs among ``rows`` (default: every described image)."""
    return verify_candidates(f, match_descriptors(f, rows, seed=seed), progress=progress, seed=seed)
