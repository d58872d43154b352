"""Content hashes (exact duplicates) and perceptual hashes (near-duplicates) of images.

Why both: the public Kaggle chest sets contain byte-identical files *and* augmented copies
(resized, re-encoded, flipped, rotated by 90 degrees); the training-size study's CT/X-ray set is
built from such copies (``shared/PROTOCOLS.md`` section 1), so a random split puts copies of
evaluation images in the training pool. :mod:`lungray.data.leakage` uses these hashes to find
them.

* :func:`sha256_file` / :func:`sha256_bytes`: the bytes, streamed (exact duplicates).
* :func:`phash64`: a 64-bit DCT perceptual hash: area-resize to 32x32, orthonormal 2-D DCT-II,
  keep the 8x8 block of coefficients whose two frequency indices both lie in [5, 13) (2.5 to
  6.5 cycles per image), one bit per coefficient: its sign. Area resizing makes it robust to
  resizing, the low frequencies to JPEG re-encoding and noise, and the sign to brightness and
  contrast changes (an offset only moves the DC term, a gain scales every coefficient alike).
* :func:`dihedral_hashes`: the hashes of the 8 dihedral variants of an image (identity,
  rotations by 90/180/270 degrees, flips, transposes), computed from ONE DCT: flipping an axis
  multiplies DCT-II coefficient ``k`` along it by ``(-1)**k`` and a transpose transposes the
  coefficients. ``dihedral_hashes(img)[k] == phash64(apply_dihedral(img, k))``.

Why not the classic pHash (lowest 8x8 block including DC, median threshold): every chest
radiograph shares the same large-scale layout (two dark lungs, bright mediastinum), so the
lowest frequencies barely differ between patients. Measured on 900 phantom images at 64 px
(807,650 ordered pairs of images of different patients, each the minimum over one image's 8
dihedral variants against the other's own hash, as the leakage audit compares them): the
classic pHash puts 0.40% of the pairs within Hamming distance 6, this band none (minimum 7).
Copies of the same 900 images stay close: resized x0.75 (area or bilinear) and JPEG
re-encoded at quality 50 within 6 bits, x4 bicubic and JPEG at quality 75-90 within 4, and
97-100% of each kind of copy within 3; flips and quarter turns are bit-exact. The default
``data.leakage_max_distance`` of 6 sits between. The separation is not perfect: over four
phantom sets (2.3 million ordered pairs of different patients) one pair of images came within 5
bits, and the 1000-image phantom split with the DataConfig defaults has one pool/evaluation
pair at 6 (two zoomed-out films in the same pose), which the audit reports and, by default,
drops. Real
collections with many near-identical acquisitions (same device, positioning, follow-up films)
will have more; patient-disjoint splits keep same-patient films out of the audit, and the
leakage report lists every pair so it can be checked.

This hash is the cheap first near-duplicate stage. It is not invariant to rotations by other
angles, zooms or shifts (Keras-style augmented copies: 0-4 % recall, ``bench/RESULTS.md``); the
second stage, :mod:`lungray.data.keypoints`, catches those.

Hashes are ``numpy.uint64``; :func:`hamming` counts differing bits, vectorised with
``np.bitwise_count``. Pure numpy: no OpenCV/PIL needed, cheap to import.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Union

import numpy as np

DIHEDRAL: tuple[str, ...] = ("identity", "rot90", "rot180", "rot270", "hflip", "vflip", "transpose", "antitranspose")
"""Names of the 8 variants, in the order of :func:`dihedral_hashes` (``rot90`` is ``np.rot90``,
counter-clockwise; ``hflip`` mirrors left-right)."""

INVERSE: dict[str, str] = {n: n for n in DIHEDRAL} | {"rot90": "rot270", "rot270": "rot90"}
"""The inverse of each variant (only the quarter turns are not their own inverse)."""

_HASH_SIZE = 8  # 8x8 coefficients -> 64 bits
_DCT_SIZE = 32  # resize target
_BAND = 5  # first frequency index of the hashed block: indices 5..12 along both axes


# --------------------------------------------------------------------------------------------
# bytes
# --------------------------------------------------------------------------------------------


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of a bytes object."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Union[str, Path], chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in ``chunk_size`` pieces (never the whole file in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# dihedral transforms (reference implementation, used by tests and for illustration)
# --------------------------------------------------------------------------------------------


def apply_dihedral(img: np.ndarray, k: Union[int, str]) -> np.ndarray:
    """Apply dihedral variant ``k`` (index or name in :data:`DIHEDRAL`) to an image's first two axes."""
    name = DIHEDRAL[k] if isinstance(k, (int, np.integer)) else k
    ops = {
        "identity": lambda a: a,
        "rot90": lambda a: np.rot90(a, 1),
        "rot180": lambda a: np.rot90(a, 2),
        "rot270": lambda a: np.rot90(a, 3),
        "hflip": lambda a: a[:, ::-1],
        "vflip": lambda a: a[::-1],
        "transpose": lambda a: np.swapaxes(a, 0, 1),
        "antitranspose": lambda a: np.rot90(np.swapaxes(a, 0, 1), 2),
    }
    if name not in ops:
        raise ValueError(f"unknown dihedral transform {k!r}; valid: {', '.join(DIHEDRAL)}")
    return np.ascontiguousarray(ops[name](img))


# --------------------------------------------------------------------------------------------
# perceptual hash
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of exact area resampling (mirror-symmetric, so flips commute)."""
    edges_out = np.linspace(0.0, n_in, n_out + 1)
    lo = np.maximum(edges_out[:-1, None], np.arange(n_in)[None, :])
    hi = np.minimum(edges_out[1:, None], np.arange(n_in)[None, :] + 1.0)
    w = np.clip(hi - lo, 0.0, None)
    return w / w.sum(axis=1, keepdims=True)


@lru_cache(maxsize=1)
def _dct_matrix(n: int = _DCT_SIZE) -> np.ndarray:
    """Orthonormal DCT-II matrix: coefficients = D @ x."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


def _gray(images: np.ndarray, batched: bool) -> np.ndarray:
    a = np.asarray(images)
    nd = 3 if batched else 2
    if a.ndim == nd + 1 and a.shape[-1] in (3, 4):  # RGB(A): luminance
        a = a[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    if a.ndim != nd:
        raise ValueError(f"expected {'a batch of ' if batched else 'one '}2-D grayscale image(s), got shape {a.shape}")
    if a.shape[-1] < 1 or a.shape[-2] < 1:
        raise ValueError(f"cannot hash an empty image of shape {a.shape}")
    return a.astype(np.float64, copy=False)


def _band_dct(images: np.ndarray) -> np.ndarray:
    """(N, 8, 8) DCT coefficients of the hashed band of area-resized (N, H, W) images."""
    h, w = images.shape[-2:]
    small = np.einsum("ah,nhw,bw->nab", _area_matrix(h, _DCT_SIZE), images, _area_matrix(w, _DCT_SIZE), optimize=True)
    d = _dct_matrix()[_BAND : _BAND + _HASH_SIZE]
    return np.einsum("ua,nab,vb->nuv", d, small, d, optimize=True)


def _variants(c: np.ndarray) -> np.ndarray:
    """(N, 8, 8, 8): the band block of each dihedral variant, in :data:`DIHEDRAL` order."""
    k = np.arange(_BAND, _BAND + _HASH_SIZE)
    su = ((-1.0) ** k)[:, None]  # flip along rows (vertical flip)
    sv = ((-1.0) ** k)[None, :]  # flip along columns (horizontal flip)
    t = np.swapaxes(c, -1, -2)
    return np.stack([c, su * t, su * sv * c, sv * t, sv * c, su * c, t, su * sv * t], axis=1)


def _bits_to_uint64(blocks: np.ndarray) -> np.ndarray:
    """One uint64 per 8x8 block: bit = coefficient > 0, row-major, most significant bit first."""
    flat = np.ascontiguousarray(blocks).reshape(*blocks.shape[:-2], _HASH_SIZE * _HASH_SIZE)
    packed = np.ascontiguousarray(np.packbits(flat > 0, axis=-1))  # (..., 8) uint8, big-endian
    return packed.view(">u8")[..., 0].astype(np.uint64)


def phash_batch(images: np.ndarray) -> np.ndarray:
    """(N,) uint64 perceptual hashes of a stack (N, H, W) of same-sized images."""
    return _bits_to_uint64(_band_dct(_gray(images, batched=True)))


def dihedral_hashes_batch(images: np.ndarray) -> np.ndarray:
    """(N, 8) uint64: the 8 dihedral hashes of each image of a stack (N, H, W)."""
    return _bits_to_uint64(_variants(_band_dct(_gray(images, batched=True))))


def phash64(img2d: np.ndarray) -> int:
    """64-bit DCT perceptual hash of one 2-D image (any size, dtype; RGB is converted to luminance).

    >>> img = (np.add.outer(np.arange(64), np.arange(64)) % 23 * 11).astype(np.uint8)
    >>> hamming(phash64(img), phash64(img[:, ::-1]))  # a mirrored copy is a different image...
    32
    >>> hamming(dihedral_hashes(img)[DIHEDRAL.index("hflip")], phash64(img[:, ::-1]))  # ...unless flipped back
    0
    """
    return int(phash_batch(_gray(img2d, batched=False)[None])[0])


def dihedral_hashes(img2d: np.ndarray) -> np.ndarray:
    """(8,) uint64: hashes of the image's 8 dihedral variants (index 0 = the image itself)."""
    return dihedral_hashes_batch(_gray(img2d, batched=False)[None])[0]


def hamming(a, b):
    """Number of differing bits between uint64 hashes; broadcasts like numpy (int for scalars)."""
    d = np.bitwise_count(np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64)))
    return int(d) if d.ndim == 0 else d


def to_hex(h) -> Union[str, np.ndarray]:
    """16-digit hex string(s) of uint64 hash(es) (for manifests and JSON)."""
    if np.ndim(h) == 0:
        return f"{int(h):016x}"
    return np.array([f"{int(v):016x}" for v in np.asarray(h).ravel()]).reshape(np.shape(h))


def from_hex(s) -> Union[int, np.ndarray]:
    """Inverse of :func:`to_hex`."""
    if isinstance(s, str):
        return int(s, 16)
    arr = np.asarray(s)
    return np.array([int(v, 16) for v in arr.ravel()], dtype=np.uint64).reshape(arr.shape)
