"""One canonical grayscale decode for every image lungray reads: PNG/JPEG/BMP/TIFF and DICOM.

Every image, whatever its container, becomes a ``float32`` array of shape ``(H, W)`` with values
in ``[0, 1]`` where *bright means dense* (bone white), which is what the studies' 8-bit Kaggle
PNGs already look like. The rules, in one place so that two sources of the same radiograph give
the same pixels:

Raster files (PIL, OpenCV for 16-bit colour PNGs that PIL truncates to 8 bits)
    8-bit gray ``/255``; 16-bit gray ``/65535``; RGB(A)/palette -> ITU-R 601 luminance
    ``0.299 R + 0.587 G + 0.114 B`` (what PIL's "L" and OpenCV's ``cvtColor`` compute), in float
    so nothing is rounded twice; alpha composites over black (transparent = no signal); 1-bit
    images map to {0, 1}; float images are min-max scaled.

DICOM (pydicom 3; JPEG 2000 / JPEG-LS / JPEG lossless / RLE through pylibjpeg)
    1. stored values -> modality LUT or Rescale Slope/Intercept (CT Hounsfield units);
    2. VOI LUT Sequence when present (scaled by its own output range), else Window Center/Width
       (DICOM PS3.3 C.11.2.1.2: LINEAR, LINEAR_EXACT or SIGMOID, first window), else min-max
       over the image;
    3. MONOCHROME1 inverted (``1 - x``) so bone is bright, as in MONOCHROME2 and in PNGs.
    Multi-frame files, files without pixel data and compressed transfer syntaxes with no
    installed decoder raise :class:`ImageError` naming the file and the fix.

Size and content limits, the same for every container (issue 15 items 4-5)
    * more than :data:`MAX_PIXELS` pixels (89.5 megapixels, about 9459 x 9459: Pillow's own
      decompression-bomb threshold) -> quarantined from the header, nothing decoded;
    * more than :data:`WORK_PIXELS` (2048 x 2048) -> decoded *reduced* by an integer factor
      (JPEG inside the DCT via ``draft``, other rasters with Pillow's ``reduce`` right after
      loading, DICOM and 16-bit colour PNGs by block means), so the float pipeline never holds
      more than ~4 megapixels whatever the file (an 8000 x 8000 RGB PNG: +263 MB peak, Pillow's
      own buffer, instead of +2.4 GB through float64 RGB at full size before this rule);
    * a side shorter than :data:`MIN_SIDE` (16 px), several frames/pages (multi-page TIFF,
      animated GIF/PNG/WebP, multi-frame DICOM), NaN/inf pixel values, an image whose pixels
      all have one value, an unsupported DICOM PhotometricInterpretation and DICOM pixel data
      shorter than its header says -> :class:`ImageError`.

:func:`decode` and :func:`probe` share one header check (:func:`_preflight`), so everything the
cheap probe rejects is rejected by the full decode with the very same reason: ``lungray data
check`` (full decode) and the sweep's preparation (probe, then the cache's decode) agree.

Only non-identifying DICOM fields are ever read into lungray's records (:func:`dicom_info`);
the Patient ID is hashed with a salt on the spot and the raw value is dropped.

Resizing to the study resolution (:func:`resize`) is either ``stretch`` (the aspect ratio is
changed, as Keras ``flow_from_directory`` and torchvision ``Resize((s, s))`` do in the studies)
or ``letterbox`` (the long side fits, the short side is centred and padded with black, so
anatomy keeps its proportions).

The subjects live in their own modules, every public name re-exported here (issue 22.2):
:mod:`~lungray.data.decode.problems` (problem kinds, hints, :class:`ImageError`),
:mod:`~lungray.data.decode.pixels` (scaling rules and size limits),
:mod:`~lungray.data.decode.sniff` (container kinds), :mod:`~lungray.data.decode.raster`,
:mod:`~lungray.data.decode.dicom`; this module keeps the dispatch (:func:`decode`,
:func:`probe`, the shared header check) and the resize to the study resolution.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Optional

import numpy as np

from lungray.data.decode.dicom import (  # noqa: F401 - re-exported
    SAFE_DICOM_FIELDS,
    _check_dicom_pixels,
    _decode_dicom,
    _read_dicom,
    dicom_info,
    dicom_to_unit,
    quiet_pydicom,
)
from lungray.data.decode.pixels import (  # noqa: F401 - re-exported
    LUMA,
    MAX_PIXELS,
    MIN_SIDE,
    WORK_PIXELS,
    array_to_unit,
    block_mean,
)
from lungray.data.decode.problems import HINTS, ImageError, PixelError, hint_for, problem_kind  # noqa: F401 - re-exported
from lungray.data.decode.raster import _PIL_CLASSES, _check_raster_header, _check_raster_stream, _decode_raster, _open_pil
from lungray.data.decode.sniff import (  # noqa: F401 - re-exported
    DICOM_SUFFIXES,
    IMAGE_SUFFIXES,
    NPZ_SEP,
    PHANTOM_SCHEME,
    RASTER_SUFFIXES,
    sniff,
)
from lungray.errors import DataError


def decode_raster(path: str | Path) -> np.ndarray:
    """PNG/JPEG/BMP/TIFF/GIF/WebP -> float32 (H, W) in [0, 1] (see the module rules)."""
    p = Path(path)
    kind, _ = _preflight(p)
    if kind == "dicom":
        raise ImageError(p, "not an image (unrecognised content)")
    return _decode_raster(p, kind)


def decode_dicom(path: str | Path) -> np.ndarray:
    """A single-frame DICOM -> float32 (H, W) in [0, 1], bone bright (see the module rules)."""
    p = Path(path)
    kind, ds = _preflight(p)
    if kind != "dicom":
        raise ImageError(p, "not a readable DICOM file (no DICOM header)")
    return _decode_dicom(p, ds)


@functools.lru_cache(maxsize=4)
def _npz_arrays(path: str, key: str) -> np.ndarray:
    with np.load(path, allow_pickle=False) as z:
        return np.asarray(z[key])


def npz_row(ref: str) -> np.ndarray:
    """The raw array of an ``<file>.npz::<split>/<row>`` reference (MedMNIST)."""
    file, sub = ref.split(NPZ_SEP, 1)
    split, row = sub.rsplit("/", 1)
    try:
        arr = _npz_arrays(file, f"{split}_images")
        return arr[int(row)]
    except (OSError, KeyError, ValueError, IndexError) as e:
        raise ImageError(file, f"unreadable npz row '{sub}' ({type(e).__name__})") from None


def _preflight(p: Path) -> tuple[str, Any]:
    """Every check that needs no pixel decoding; returns ``(kind, dataset)`` (the pydicom dataset
    for a DICOM, else None) or raises :class:`ImageError`.

    Shared by :func:`probe` (the cheap pass) and :func:`decode` (the cache and ``lungray data
    check``), so a file the probe rejects is rejected by the decode with the same reason.
    """
    try:
        if not p.is_file():
            raise ImageError(p, "missing file")
        if p.stat().st_size == 0:
            raise ImageError(p, "zero-byte file")
        kind = sniff(p)
        if kind == "unknown":
            raise ImageError(p, "not an image (unrecognised content)")
        if kind == "dicom":
            ds = _read_dicom(p)
            _check_dicom_pixels(p, ds)
            return kind, ds
        im = _open_pil(p, kind)
        try:
            _check_raster_header(p, kind, im)
        finally:
            im.close()
        _check_raster_stream(p, kind)
        return kind, None
    except OSError as e:  # permissions, I/O errors: the same reason from probe and decode
        raise ImageError(p, f"unreadable file ({type(e).__name__})") from None


def _check_content(p: Path, img: np.ndarray) -> np.ndarray:
    if img.size and float(img.min()) == float(img.max()):
        raise ImageError(p, "blank image (every pixel has the same value)")
    return img


def decode(path: str | Path) -> np.ndarray:
    """Any supported image reference -> float32 (H, W) in [0, 1].

    ``path`` is a file (kind decided by content, :func:`sniff`) or an ``.npz`` row reference
    ``<file>.npz::<split>/<row>`` (MedMNIST). Raises :class:`ImageError` (a ``DataError``) with
    a one-line reason naming the file: whatever :func:`probe` reports, plus what only the pixels
    show (NaN/inf values, a blank image, a stream that fails to decode).
    """
    s = str(path)
    if s.startswith(PHANTOM_SCHEME):
        raise DataError(f"{s}: phantom images are generated by the cache, not decoded from a path")
    try:
        if NPZ_SEP in s:
            return _check_content(Path(s), array_to_unit(npz_row(s)))
        p = Path(s)
        kind, ds = _preflight(p)
        img = _decode_dicom(p, ds) if kind == "dicom" else _decode_raster(p, kind)
    except PixelError as e:
        raise ImageError(s, str(e)) from None
    return _check_content(p, img)


def probe(path: str | Path) -> str:
    """Cheap validity check without a full decode: '' when fine, else the problem reason.

    Catches missing, zero-byte and non-image files, truncated PNGs (chunk CRCs) and JPEGs (no
    end-of-image marker), images over the pixel limit or under the size limit, multi-frame
    files, pixel-less, oddly encoded, truncated and undecodable-compressed DICOMs. Full pixel
    decoding (:func:`decode`, once, in the cache or in ``lungray data check``) repeats these
    checks and adds the ones that need the pixels.
    """
    s = str(path)
    if s.startswith(PHANTOM_SCHEME) or NPZ_SEP in s:
        return ""
    try:
        _preflight(Path(s))
        return ""
    except ImageError as e:
        return e.reason


def resize(img: np.ndarray, resolution: int, mode: str = "stretch") -> np.ndarray:
    """Resize a float (H, W) image to (resolution, resolution).

    ``stretch`` scales each axis independently (the studies' Keras/torchvision pipelines);
    ``letterbox`` fits the long side and pads the short side with black, centred. Area
    interpolation when shrinking (no aliasing of rib edges), bilinear when enlarging.
    """
    import cv2

    if mode not in ("stretch", "letterbox"):
        raise DataError(f"resize mode '{mode}' is not valid; valid choices: stretch, letterbox")
    h, w = img.shape[:2]
    r = int(resolution)
    src = np.ascontiguousarray(img, dtype=np.float32)
    if mode == "stretch":
        if (h, w) == (r, r):
            return src.copy()
        interp = cv2.INTER_AREA if (h > r or w > r) else cv2.INTER_LINEAR
        return cv2.resize(src, (r, r), interpolation=interp)
    s = r / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    small = src if (nh, nw) == (h, w) else cv2.resize(src, (nw, nh), interpolation=interp)
    out = np.zeros((r, r), dtype=np.float32)
    top, left = (r - nh) // 2, (r - nw) // 2
    out[top : top + nh, left : left + nw] = small
    return out


def to_storage(img: np.ndarray, dtype: str = "uint8") -> np.ndarray:
    """Float [0, 1] -> the cache dtype (rounded, clipped): uint8 (x255) or uint16 (x65535)."""
    if dtype not in ("uint8", "uint16"):
        raise DataError(f"cache dtype '{dtype}' is not valid; valid choices: uint8, uint16")
    full = 255.0 if dtype == "uint8" else 65535.0
    return np.rint(np.clip(img, 0.0, 1.0) * full).astype(dtype)


def native_size(path: str | Path) -> Optional[tuple[int, int]]:
    """(width, height) from the header when cheap to get, else None."""
    s = str(path)
    if s.startswith(PHANTOM_SCHEME) or NPZ_SEP in s:
        return None
    try:
        kind = sniff(s)
        if kind == "dicom":
            ds = _read_dicom(Path(s))
            return int(ds.Columns), int(ds.Rows)
        if kind in _PIL_CLASSES:
            im = _open_pil(Path(s), kind)
            try:
                return im.size
            finally:
                im.close()
    except Exception:
        return None
    return None
