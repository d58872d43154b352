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
   the original's coordinates), and a ``THUMB`` x ``THUMB`` (128) thumbnail for the last check (burned-in annotations inpainted, their
   mask kept beside it).
2. :func:`match_descriptors`: a self-join of all descriptors of the dataset by bit-sampling
   locality-sensitive hashing (Indyk & Motwani 1998): ``tables`` keys of ``bits`` randomly
   chosen descriptor bits each; two descriptors of different images that share a key in some
   table and differ in at most ``HAMMING_MAX`` of 256 bits are a match. Buckets larger than
   ``BUCKET_CAP`` (flat, featureless patches every image has) are skipped.
3. :func:`verify_candidates`: image pairs with at least ``MIN_VOTES`` matches (per relation:
   direct or mirrored) get a RANSAC affine fit (OpenCV ``estimateAffine2D``, 3 px at 256); the
   pair survives with at least ``MIN_INLIERS`` inliers and a plausible map (singular values in
   ``SCALE_RANGE``; mirrored iff the determinant is negative). Then the photometric check, on
   every surviving pair: the map is refined by ECC (Evangelidis & Psarakis 2008) on the
   thumbnails (the RANSAC map is kept too, when ECC drifts) and the fine detail (thumbnail minus
   its Gaussian blur, sigma 1 px) is compared over the overlap, burned-in annotations of either
   image left out: the median over 16-px blocks of the blocks' normalised cross-correlation
   (flat blocks skipped), best of both directions, must reach ``MIN_NCC`` (``MIN_NCC_FEW`` with
   fewer than ``FEW_INLIERS`` inliers). Copies keep their fine detail; two different chests
   aligned as well as possible do not. A median of blocks, because a copy may carry what its
   original does not (a lead, another site's text) in a few blocks. Measured over every
   candidate with a plausible map among 1,881 annotated phantom films and Keras copies
   (``bench/bench_leakage.py`` part 1): pairs of different patients scored at most 0.44 with 10
   or more inliers and at most 0.67 with 8-9; copies 0.85 or more in 95 % of cases, lower when
   brightened until clipped or carrying another site's markings.

Burned-in annotations (issue 18). A site writes the same side marker, text lines and label box
on every film, so two different patients share them pixel for pixel; matched as content, 250
such patients became one duplicate cluster, and a shortcut that accepted 40 or more inliers
without the photometric check accepted identity maps fitted to the shared box. Three defences,
each measured in ``bench/bench_leakage.py`` and ``tests/test_data_burnin.py``:

* :func:`describe` takes no keypoint on or within ``MASK_MARGIN`` px of the markings
  :func:`lungray.data.burnin.burnin_mask` finds, and stores that mask with the thumbnail;
* :func:`match_descriptors` keeps, for every descriptor, only its ``MAX_PARTNERS`` nearest
  matches: a marking the detector missed is shared by every film of its site and would nominate
  every same-site pair, while a copy's corner is nearer to its copies than to look-alikes. This
  keeps the candidate pairs, and so the cost, linear in the number of images on
  annotation-heavy data (it was n^1.6);
* the photometric check runs on every pair and ignores the masked pixels (there is no
  "enough inliers" shortcut any more).

OpenCV is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from lungray.data.kerasaug import keras_random_params, keras_transform  # noqa: F401 - the transform family, re-exported

FEATURE_VERSION = 2
"""Bump when :func:`describe` changes: part of the cache key (:data:`lungray.data.cache.CACHE_VERSION`).
2: no keypoints on burned-in annotations, and their mask stored with the thumbnail (issue 18)."""

SIZE = 256  # features are computed on the image resized to SIZE x SIZE
N_KEYPOINTS = 150  # per side (image and mirror)
THUMB = 128  # photometric-check thumbnail
DESC_BYTES = 32  # ORB: 256-bit descriptors
FAST_THRESHOLD = 7  # OpenCV's 20 leaves smooth films (a leg CR) with ~20 corners; the 150 strongest are kept either way

HAMMING_MAX = 36  # of 256 bits: matched ORB descriptors of copies differ by 12-35 bits (10th-90th percentile)
BUCKET_CAP = 32
MIN_VOTES = 5
MIN_INLIERS = 8
FEW_INLIERS = 10  # below this many inliers the photometric check must reach MIN_NCC_FEW instead of MIN_NCC
SCALE_RANGE = (0.7, 1.45)
MIN_NCC = 0.65
MIN_NCC_FEW = 0.8
NCC_BLOCK = 16  # px of the 128-px thumbnail: the photometric check's blocks (8 x 8 of them)
NCC_FLAT = 0.25  # variance (grey levels^2) of a block's fine detail below which the block is flat
NCC_MIN_BLOCKS = 8  # informative blocks (of 64) the check needs: a brightened copy may be clipped white elsewhere
RANSAC_PX = 3.0
MASK_MARGIN = 6  # px at SIZE: no keypoint this close to a burned-in annotation (its 31-px patch would hold it)
MAX_PARTNERS = 32  # matches kept per descriptor, nearest first (a shared marking matches every film of its site)


@dataclass(frozen=True)
class Features:
    """Keypoint features of N images (row-aligned with the dataset).

    ``desc`` (N, 2, K, 32) uint8 ORB descriptors of the image (side 0) and its mirror (side 1);
    ``xy`` (N, 2, K, 2) float32 keypoint positions in the image's own 256-px frame (both sides);
    ``count`` (N, 2) int number of valid keypoints per side (0 for images that were not
    described); ``thumbs`` (N, 128, 128) uint8, with the burned-in annotations inpainted;
    ``masks`` (N, 128, 16) uint8, the thumbnail's burned-in annotation mask
    (:func:`lungray.data.burnin.burnin_mask`), bit-packed along rows (:meth:`mask`).
    """

    desc: np.ndarray
    xy: np.ndarray
    count: np.ndarray
    thumbs: np.ndarray
    masks: np.ndarray

    def mask(self, i: int) -> np.ndarray:
        """The bool (THUMB, THUMB) burned-in annotation mask of image ``i``."""
        return np.unpackbits(np.asarray(self.masks[i]), axis=-1)[:, :THUMB].astype(bool)

    def __len__(self) -> int:
        return int(self.count.shape[0])

    @classmethod
    def empty(cls, n: int) -> "Features":
        return cls(
            desc=np.zeros((n, 2, N_KEYPOINTS, DESC_BYTES), np.uint8),
            xy=np.zeros((n, 2, N_KEYPOINTS, 2), np.float32),
            count=np.zeros((n, 2), np.int16),
            thumbs=np.zeros((n, THUMB, THUMB), np.uint8),
            masks=np.zeros((n, THUMB, THUMB // 8), np.uint8),
        )


# --------------------------------------------------------------------------------------------
# 1. per-image features
# --------------------------------------------------------------------------------------------


def _as_u8(img: np.ndarray, size: int) -> np.ndarray:
    """A 2-D image (float in [0, 1], uint8 or uint16; RGB -> luminance) as uint8 ``size`` x ``size``."""
    import cv2

    from lungray.data.burnin import gray_2d

    a = gray_2d(img)
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


def describe(img: np.ndarray, marks: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(desc (2, K, 32), xy (2, K, 2), count (2,), thumb (THUMB, THUMB), mask (THUMB, THUMB // 8))`` of
    one image (see :class:`Features`): no keypoint within ``MASK_MARGIN`` px of a burned-in annotation
    (``marks``: its :func:`lungray.data.burnin.burnin_mask`, when already computed)."""
    import cv2

    from lungray.data.burnin import burnin_mask, fill

    u8 = _as_u8(img, SIZE)
    marks = burnin_mask(img) if marks is None else marks  # at the detector's working size (<= 512 px): strokes still flat there
    desc = np.zeros((2, N_KEYPOINTS, DESC_BYTES), np.uint8)
    xy = np.zeros((2, N_KEYPOINTS, 2), np.float32)
    count = np.zeros(2, np.int16)
    allowed = None
    if marks.any():
        m = cv2.resize(marks.astype(np.float32), (SIZE, SIZE), interpolation=cv2.INTER_AREA) > 0
        k = 2 * MASK_MARGIN + 1
        m = cv2.dilate(m.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
        allowed = np.where(m > 0, 0, 255).astype(np.uint8)
    orb = cv2.ORB_create(nfeatures=N_KEYPOINTS, fastThreshold=FAST_THRESHOLD)
    for side, im in enumerate((u8, np.ascontiguousarray(u8[:, ::-1]))):
        am = None if allowed is None else (allowed if side == 0 else np.ascontiguousarray(allowed[:, ::-1]))
        kps, d = orb.detectAndCompute(im, am)
        if d is None or not len(kps):
            continue
        k = min(len(kps), N_KEYPOINTS)
        pts = np.array([kp.pt for kp in kps[:k]], np.float32)
        if side == 1:  # back into the original image's frame
            pts[:, 0] = (SIZE - 1) - pts[:, 0]
        desc[side, :k], xy[side, :k], count[side] = d[:k], pts, k
    thumb = cv2.resize(u8, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    tm = np.zeros((THUMB, THUMB), bool)
    if marks.any():
        tm = cv2.resize(marks.astype(np.float32), (THUMB, THUMB), interpolation=cv2.INTER_AREA) > 0
        tm = cv2.dilate(tm.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        thumb = fill(thumb, tm)  # the markings filled in, so they cannot steer the ECC refinement
    return desc, xy, count, thumb, np.packbits(tm, axis=-1)


def describe_batch(images, progress: Optional[Callable[[int], None]] = None) -> Features:
    """:class:`Features` of a sequence of 2-D images."""
    n = len(images)
    f = Features.empty(n)
    for i, im in enumerate(images):
        f.desc[i], f.xy[i], f.count[i], f.thumbs[i], f.masks[i] = describe(im)
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
    # each descriptor keeps its MAX_PARTNERS nearest matches (a match stays when either end keeps
    # it): a marking the mask missed is shared by every film of its site and would nominate every
    # same-site pair; a copy's corner is nearer to its copies than to look-alikes. This bounds the
    # kept matches by MAX_PARTNERS per descriptor, so the candidates and the cost stay linear in
    # the images, and a film with hundreds of copies still reaches each of them through some of
    # its descriptors
    dist = np.bitwise_count(d64[x] ^ d64[y]).sum(axis=1)
    ends = np.concatenate([x, y])
    d2 = np.concatenate([dist, dist])
    order = np.lexsort((d2, ends))  # by descriptor, nearest first
    first = np.r_[0, np.flatnonzero(np.diff(ends[order])) + 1]
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order)) - np.repeat(first, np.diff(np.r_[first, len(order)]))
    keep = (rank[: len(x)] < MAX_PARTNERS) | (rank[len(x):] < MAX_PARTNERS)
    x, y = x[keep], y[keep]
    if not len(x):
        return empty
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


def _ncc_into(src: np.ndarray, dst: np.ndarray, w_inv: np.ndarray, src_mask: np.ndarray, dst_mask: np.ndarray) -> float:
    """Agreement of the fine detail of ``src`` warped into ``dst``'s frame (``w_inv``: dst -> src
    coordinates) with ``dst``'s, over the pixels whose source lies inside ``src`` and that neither
    image's burned-in annotation mask covers: the median over ``NCC_BLOCK``-px blocks of the
    blocks' normalised cross-correlation. A median, not one NCC over the whole overlap, because a
    copy may carry what its original does not (a lead laid on later, another site's text): a few
    blocks disagree, the rest agree, while two different patients disagree everywhere."""
    import cv2

    n = dst.shape[0]
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(src, w_inv, (n, n), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    valid = cv2.warpAffine((~src_mask).astype(np.float32), w_inv, (n, n), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderValue=0)
    valid = (cv2.erode(valid, np.ones((7, 7), np.uint8)) > 0.5) & ~dst_mask
    a, b = _fine(warped), _fine(dst)
    k = NCC_BLOCK
    nb = n // k
    v = valid[: nb * k, : nb * k].reshape(nb, k, nb, k).astype(np.float32)
    a = a[: nb * k, : nb * k].reshape(nb, k, nb, k) * v
    b = b[: nb * k, : nb * k].reshape(nb, k, nb, k) * v
    cnt = v.sum(axis=(1, 3))
    ok = cnt >= 0.5 * k * k
    c = np.maximum(cnt, 1.0)
    ma, mb = a.sum(axis=(1, 3)) / c, b.sum(axis=(1, 3)) / c
    sab = (a * b).sum(axis=(1, 3)) / c - ma * mb
    saa = (a * a).sum(axis=(1, 3)) / c - ma * ma
    sbb = (b * b).sum(axis=(1, 3)) / c - mb * mb
    ok &= (saa > NCC_FLAT) & (sbb > NCC_FLAT)  # a flat block (air, a black fill, saturation) says nothing
    if ok.sum() < NCC_MIN_BLOCKS:  # too little overlap with detail in both images to tell
        return -1.0
    r = sab / np.sqrt(np.maximum(saa * sbb, 1e-12))
    return float(np.median(r[ok]))


# 256-px keypoint frame -> THUMB-px frame (pixel centres: x_thumb = (x + 0.5) * THUMB / SIZE - 0.5)
_S = np.array([[THUMB / SIZE, 0.0, 0.5 * THUMB / SIZE - 0.5], [0.0, THUMB / SIZE, 0.5 * THUMB / SIZE - 0.5], [0.0, 0.0, 1.0]])


def photometric_score(
    thumb_a: np.ndarray,
    thumb_b: np.ndarray,
    affine: np.ndarray,
    mask_a: Optional[np.ndarray] = None,
    mask_b: Optional[np.ndarray] = None,
) -> float:
    """The photometric check of a pair: ``affine`` (2x3, a's 256-px frame -> b's) refined by ECC on
    the thumbnails, then the fine-detail NCC over the overlap without either image's burned-in
    annotations (``mask_a``/``mask_b``, bool THUMB x THUMB), the better of both directions."""
    import cv2

    ta, tb = thumb_a.astype(np.float32), thumb_b.astype(np.float32)
    ma = np.zeros(ta.shape, bool) if mask_a is None else np.asarray(mask_a, bool)
    mb = np.zeros(tb.shape, bool) if mask_b is None else np.asarray(mask_b, bool)
    at = _S @ np.vstack([affine, [0.0, 0.0, 1.0]]) @ np.linalg.inv(_S)
    w0 = np.linalg.inv(at)[:2].astype(np.float32)  # b -> a, as findTransformECC wants it
    maps = [w0]
    try:
        crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 1e-4)
        _, w = cv2.findTransformECC(tb, ta, w0.copy(), cv2.MOTION_AFFINE, crit, (~ma).astype(np.uint8), 3)
        maps.append(w)
    except cv2.error:  # ECC did not converge: the RANSAC map alone
        pass
    best = -1.0
    for w in maps:  # ECC can also drift off a good RANSAC map (a clipped, brightened copy): keep the better
        w3 = np.vstack([w, [0.0, 0.0, 1.0]])
        best = max(best, _ncc_into(ta, tb, w3[:2], ma, mb), _ncc_into(tb, ta, np.linalg.inv(w3)[:2].astype(np.float32), mb, ma))
    return best


def dihedral_affine(name: str) -> np.ndarray:
    """The 2x3 map of a's ``SIZE``-px frame onto b's when ``b = name(a)`` (:data:`lungray.data.hashing.DIHEDRAL`)."""
    c = SIZE - 1.0
    m = {"identity": [[1, 0, 0], [0, 1, 0]], "hflip": [[-1, 0, c], [0, 1, 0]], "vflip": [[1, 0, 0], [0, -1, c]],
         "rot180": [[-1, 0, c], [0, -1, c]], "rot90": [[0, 1, 0], [-1, 0, c]], "rot270": [[0, -1, c], [1, 0, 0]],
         "transpose": [[0, 1, 0], [1, 0, 0]], "antitranspose": [[0, -1, c], [-1, 0, c]]}
    return np.asarray(m[name], dtype=np.float64)


def verify_hash_pairs(f: Features, a: np.ndarray, b: np.ndarray, transforms: list[str]) -> np.ndarray:
    """The photometric score of each perceptual-hash pair under its dihedral map (``b = transform(a)``).

    A perceptual hash sees 64 signs of mid frequencies, so two different look-alike films can
    come within 6 bits (measured: 4 such pairs among 1.75 million in ``bench/bench_leakage.py``,
    scoring at most 0.56 here, while flipped, brightened, resized, JPEG-50 and 96-px copies
    scored at least 0.72). ``-1.0`` where an image was not described or the overlap holds too
    little detail to tell (a featureless film: the hash alone decides, as before)."""
    out = np.full(len(a), -1.0)
    for k, (i, j, t) in enumerate(zip(a, b, transforms)):
        if f.count[i].sum() == 0 or f.count[j].sum() == 0:
            continue
        out[k] = photometric_score(f.thumbs[i], f.thumbs[j], dihedral_affine(t), f.mask(i), f.mask(j))
    return out


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
    skip: Optional[set] = None,
) -> "pd.DataFrame":  # noqa: F821
    """Step 3 on every (a, b, relation) with at least ``MIN_VOTES`` matches (but the pairs in ``skip``).

    Returns one row per verified image pair (the relation with more inliers when both pass):
    ``row_a``, ``row_b``, ``votes``, ``inliers``, ``ncc``, ``transform``
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
    if skip is not None and len(skip):  # pairs an earlier stage found: not verified again
        ij = cs[starts] // 2
        keep &= ~np.isin(ij, np.asarray([a_ * n + b_ for a_, b_ in skip if a_ < n and b_ < n], dtype=np.int64))
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
        ncc = photometric_score(f.thumbs[i], f.thumbs[j], aff, f.mask(i), f.mask(j))
        if ncc < (MIN_NCC if ni >= FEW_INLIERS else MIN_NCC_FEW):
            continue
        if (i, j) not in out or ni > out[(i, j)][3]:
            out[(i, j)] = (i, j, int(v), ni, round(ncc, 4), describe_affine(aff))
    df = pd.DataFrame(sorted(out.values()), columns=cols)
    return df.astype({"row_a": np.int64, "row_b": np.int64, "votes": np.int64, "inliers": np.int64, "ncc": float})


def keypoint_pairs(
    f: Features,
    rows: Optional[np.ndarray] = None,
    seed: int = 0,
    progress: Optional[Callable[[int], None]] = None,
    skip: Optional[set] = None,
):
    """Stage 2 end to end: verified near-duplicate pairs among ``rows`` (default: every described
    image), not verifying the ``(row_a, row_b)`` pairs in ``skip`` (found by an earlier stage)."""
    return verify_candidates(f, match_descriptors(f, rows, seed=seed), progress=progress, seed=seed, skip=skip)
