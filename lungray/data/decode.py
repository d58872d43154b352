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
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
import os
import struct
from pathlib import Path
from typing import Any, Optional

import numpy as np

from lungray.errors import DataError

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
IMAGE_SUFFIXES = RASTER_SUFFIXES + DICOM_SUFFIXES
#: separator between an ``.npz`` file and the array row in a manifest path: ``a.npz::train/12``
NPZ_SEP = "::"
PHANTOM_SCHEME = "phantom://"

# ITU-R BT.601 luma weights (PIL "L", OpenCV cvtColor)
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)

#: Larger images are quarantined from their header, never decoded. Pillow's default
#: ``Image.MAX_IMAGE_PIXELS`` (its decompression-bomb *warning* threshold): a digital chest
#: radiograph is at most ~4300 x 3500 px (15 MP), so anything this big is an export error or a
#: bomb (a 30000 x 30000 PNG of zeros is 875 KB on disk and 900 MB decoded).
MAX_PIXELS = 89_478_485
#: Images with more pixels are decoded reduced by an integer factor (see the module docstring):
#: twice the largest study resolution (512 px) and more, so no study loses detail, while the
#: float pipeline's memory stays bounded.
WORK_PIXELS = 2048 * 2048
#: Images with a side shorter than this are quarantined (1x1 and icon-sized files are export
#: errors; MedMNIST's 28 px is the smallest real dataset lungray reads).
MIN_SIDE = 16


def problem_kind(reason: str) -> str:
    """The kind of a problem reason, without file names, counts and row numbers.

    >>> problem_kind("missing file 'a/b.png' (labels.csv row 3 (line 4))")
    'missing file'
    >>> problem_kind("multi-frame DICOM (10 frames)")
    'multi-frame DICOM'
    """
    import re

    return re.split(r"\s*[('\":]", reason, maxsplit=1)[0].strip() or reason


_REREAD = "re-download or remove it"
_REEXPORT = "re-export it or remove it"
_ONE_FRAME = "lungray reads one image per file; save the frame you want as its own file"
#: what to do, per problem kind (the ``problem`` column holds the reason only; messages add this)
HINTS = {
    "missing file": "fix the path or remove the row",
    "missing DICOM file": "fix the path or remove the row",
    "zero-byte file": _REREAD,
    "truncated image": _REREAD,
    "truncated or corrupt image": _REREAD,
    "truncated DICOM pixel data": _REREAD,
    "unreadable image": _REREAD,
    "unreadable file": _REREAD,
    "unreadable npz row": _REREAD,
    "not an image": "remove it or fix its format",
    "not a readable DICOM file": _REEXPORT,
    "DICOM without pixel data": "it is not an image (report, RT plan...); remove it",
    "truncated DICOM": _REREAD,
    "DICOM transfer syntax mismatch": "re-export it (its header names one byte order, its data uses the other) or remove it",
    "DICOM pixel data could not be decoded": _REEXPORT,
    "multi-frame DICOM": _ONE_FRAME,
    "multi-page TIFF": _ONE_FRAME,
    "animated image": _ONE_FRAME,
    "unsupported DICOM PhotometricInterpretation": "re-export it as MONOCHROME2 (or RGB) or remove it",
    "image too large": "downscale it (lungray decodes at most 2048 x 2048 px of it anyway) or remove it",
    "image too small": "remove it (an export error?)",
    "non-finite pixel values": "re-export it with finite pixel values or remove it",
    "blank image": _REEXPORT,
    "decode failed": _REEXPORT + " (and report the decoder error)",
    "compressed DICOM": "install pylibjpeg, pylibjpeg-openjpeg, pylibjpeg-libjpeg and pylibjpeg-rle "
    "(or python-gdcm), or convert the file to an uncompressed transfer syntax",
    "unknown label": "add the class to data.class_map (or map it to null) or remove the file",
    "duplicate image_id": "make the image ids unique",
    "label conflict": "keep the file under its right label and delete the other copy",
    "empty path": "fill in the path or remove the row",
    "empty label": "fill in the label or remove the row",
    "unknown split": "use train, val or test",
    "non-numeric box": "fix the box or remove the row",
    "incomplete box": "fix the box or remove the row",
    "no class in": "add the class or remove the row",
}


def hint_for(reason: str) -> str:
    """What to do about a problem reason ('' when the reason already says it)."""
    return HINTS.get(problem_kind(reason), "")


class ImageError(DataError):
    """A file that cannot become an image. ``reason`` is the short text for the ``problem`` column;
    the message adds what to do (:data:`HINTS`, or ``hint``)."""

    def __init__(self, path: Any, reason: str, hint: str = ""):
        self.path = str(path)
        self.reason = reason
        self.hint = hint or hint_for(reason)
        super().__init__(f"{path}: {reason}" + (f"; {self.hint}" if self.hint else ""))


class PixelError(Exception):
    """Pixel values no image may have (NaN/inf); raised where no file name is at hand
    (:func:`array_to_unit`), turned into an :class:`ImageError` naming the file by :func:`decode`."""


# --------------------------------------------------------------------------------------------
# Sniffing
# --------------------------------------------------------------------------------------------


def sniff(path: str | Path) -> str:
    """The container kind from the first bytes: dicom, png, jpeg, bmp, tiff, gif, webp, empty or unknown.

    Content, not the suffix, decides: a text file named ``.png`` is ``unknown``. DICOM files
    without the 128-byte preamble (raw datasets) are accepted when they carry a DICOM suffix.
    """
    p = Path(path)
    with open(p, "rb") as f:
        head = f.read(132)
    if not head:
        return "empty"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"BM"):
        return "bmp"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if p.suffix.lower() in DICOM_SUFFIXES and _looks_like_raw_dicom(head):
        return "dicom"
    return "unknown"


def _looks_like_raw_dicom(head: bytes) -> bool:
    # a preamble-less dataset starts with a group 0x0002 or 0x0008 tag (little endian)
    return len(head) >= 8 and head[0:2] in (b"\x02\x00", b"\x08\x00")


# --------------------------------------------------------------------------------------------
# Raster
# --------------------------------------------------------------------------------------------


def _luma(rgb: np.ndarray, bgr: bool = False) -> np.ndarray:
    w = LUMA[::-1] if bgr else LUMA
    return rgb[..., :3].astype(np.float64) @ w


def array_to_unit(arr: np.ndarray, *, bgr: bool = False) -> np.ndarray:
    """A decoded pixel array (gray, RGB or RGBA; any integer or float dtype) -> float32 [0, 1].

    Used for raster files and for MedMNIST arrays, so both follow the same scaling rules.
    """
    a = np.asarray(arr)
    alpha = None
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[-1] in (2, 4):
        alpha = a[..., -1]
        a = a[..., :-1]
        if a.shape[-1] == 1:
            a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] != 3):
        raise DataError(f"expected a 2-D gray or (H, W, 3) colour image, got shape {a.shape}")
    dtype = a.dtype
    _check_finite(a)
    if a.ndim == 3:
        a = _luma(a, bgr=bgr)
    else:
        a = a.astype(np.float64)
    if dtype == np.bool_:
        x = a
    elif np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if info.min < 0:  # signed: min-max (no fixed full scale)
            x = _minmax(a)
        else:
            x = a / float(info.max) if info.max <= 65535 else _full_or_minmax(a)
    else:
        x = a if (a.size and a.min() >= 0 and a.max() <= 1) else _minmax(a)
    if alpha is not None:
        amax = float(np.iinfo(alpha.dtype).max) if np.issubdtype(alpha.dtype, np.integer) else 1.0
        x = x * (alpha.astype(np.float64) / amax)
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def _check_finite(a: np.ndarray) -> None:
    """NaN/inf pixels (float TIFF, float DICOM) have no gray value: min-max scaling would turn
    the whole image black or NaN, so the image is refused instead."""
    if np.issubdtype(a.dtype, np.floating):
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        if bad:
            raise PixelError(f"non-finite pixel values ({bad} NaN/inf pixel(s))")


def _full_or_minmax(a: np.ndarray) -> np.ndarray:
    # 32-bit integer images (PIL mode "I") that hold 16-bit data keep the 16-bit full scale
    if a.size and a.min() >= 0 and a.max() <= 65535:
        return a / 65535.0
    return _minmax(a)


def _minmax(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    if a.size == 0:
        return a
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if not hi > lo:
        return np.zeros_like(a)
    return (a - lo) / (hi - lo)


def _png_bit_depth(path: Path) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26:
        return 0, 0
    return head[24], head[25]  # IHDR bit depth, colour type


#: sniffed kind -> the Pillow module and class that read it
_PIL_CLASSES = {
    "png": ("PngImagePlugin", "PngImageFile"),
    "jpeg": ("JpegImagePlugin", "JpegImageFile"),
    "bmp": ("BmpImagePlugin", "BmpImageFile"),
    "tiff": ("TiffImagePlugin", "TiffImageFile"),
    "gif": ("GifImagePlugin", "GifImageFile"),
    "webp": ("WebPImagePlugin", "WebPImageFile"),
}


def _unreadable(p: Path, e: BaseException) -> ImageError:
    msg = (str(e).splitlines() or [""])[0][:100]
    if "truncat" in msg.lower() or isinstance(e, EOFError):
        return ImageError(p, "truncated image")
    return ImageError(p, f"unreadable image ({msg or type(e).__name__})")


def _open_pil(p: Path, kind: str) -> Any:
    """Open a raster with its format's own Pillow class: header only.

    Not ``Image.open``, whose decompression-bomb check prints a raw ``DecompressionBombWarning``
    or raises before the size can be looked at; lungray applies its own limit (:data:`MAX_PIXELS`)
    to the header size instead, with a one-line reason.
    """
    module, cls = _PIL_CLASSES[kind]
    factory = getattr(importlib.import_module(f"PIL.{module}"), cls)
    try:
        return factory(str(p))
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError, struct.error) as e:
        raise _unreadable(p, e) from None


def _check_size(p: Path, width: int, height: int) -> None:
    pixels = int(width) * int(height)
    if pixels > MAX_PIXELS:
        raise ImageError(
            p, f"image too large ({width}x{height} px = {pixels / 1e6:.1f} megapixels; the limit is {MAX_PIXELS / 1e6:.1f})"
        )
    if min(int(width), int(height)) < MIN_SIDE:
        raise ImageError(p, f"image too small ({width}x{height} px; at least {MIN_SIDE} px per side)")


def _check_raster_header(p: Path, kind: str, im: Any) -> None:
    """Size limits and frame count from the header (no pixel decoding)."""
    _check_size(p, *im.size)
    try:
        frames = int(getattr(im, "n_frames", 1) or 1)
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise _unreadable(p, e) from None
    if frames > 1:
        what = f"multi-page TIFF ({frames} pages)" if kind == "tiff" else f"animated image ({frames} frames)"
        raise ImageError(p, what)


def _check_raster_stream(p: Path, kind: str) -> None:
    """Whole-file structure without decoding: PNG chunk CRCs, the JPEG end-of-image marker."""
    if kind == "png":
        im = _open_pil(p, kind)
        try:
            im.verify()
        except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
            raise _unreadable(p, e) from None
        finally:
            im.close()
    elif kind == "jpeg":
        with open(p, "rb") as f:
            f.seek(-2, os.SEEK_END)
            if f.read(2) != b"\xff\xd9":
                raise ImageError(p, "truncated image")


def _reduce_factor(width: int, height: int) -> int:
    """The smallest integer k with (w/k) * (h/k) <= WORK_PIXELS."""
    return max(1, math.ceil(math.sqrt(width * height / WORK_PIXELS)))


def decode_raster(path: str | Path) -> np.ndarray:
    """PNG/JPEG/BMP/TIFF/GIF/WebP -> float32 (H, W) in [0, 1] (see the module rules)."""
    p = Path(path)
    kind, _ = _preflight(p)
    if kind == "dicom":
        raise ImageError(p, "not an image (unrecognised content)")
    return _decode_raster(p, kind)


def _decode_raster(p: Path, kind: str) -> np.ndarray:
    if kind == "png":
        depth, colour = _png_bit_depth(p)
        if depth == 16 and colour in (2, 6):  # 16-bit RGB / RGBA: PIL would drop to 8 bits
            return _decode_cv2(p)
    im = _open_pil(p, kind)
    try:
        w, h = im.size
        k = _reduce_factor(w, h)
        if k > 1 and kind == "jpeg":
            im.draft(None, (max(1, w // k), max(1, h // k)))  # scaled in the DCT: 1/2, 1/4 or 1/8
        im.load()
        k = _reduce_factor(*im.size)
        if k > 1:
            im = _pil_reduce(im, k)
        return _pil_to_unit(im)
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise _unreadable(p, e) from None
    finally:
        im.close()


def _pil_reduce(im: Any, k: int) -> Any:
    """Pillow's box reduce by ``k`` in the image's own bit depth (modes it cannot reduce are
    first widened without changing what their values mean: palette -> RGBA, 16-bit -> 32-bit)."""
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")
    elif im.mode.startswith("I;16"):
        im = im.convert("I")
    elif im.mode == "1":
        im = im.convert("L")
    elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    return im.reduce(k)


def _pil_to_unit(im: Any) -> np.ndarray:
    mode = im.mode
    if mode == "P" or mode == "PA":
        im = im.convert("RGBA")
        mode = "RGBA"
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
        mode = "RGB"
    elif mode == "1":
        return np.asarray(im, dtype=np.float32)
    arr = np.asarray(im)
    if mode.startswith("I;16"):
        arr = arr.astype(np.uint16)
    return array_to_unit(arr)


def block_mean(a: np.ndarray, k: int) -> np.ndarray:
    """Mean of ``k`` x ``k`` blocks (trailing rows/columns that do not fill a block are dropped),
    in the input dtype (rounded for integers, so a uint16 image keeps its 16-bit meaning).
    Computed band by band, so the float copy is never larger than a band."""
    if k <= 1:
        return a
    h, w = a.shape[:2]
    H, W = h // k, w // k
    tail = a.shape[2:]
    out = np.empty((H, W) + tail, dtype=a.dtype)
    band = max(1, 1024 // k)
    for r in range(0, H, band):
        rows = min(band, H - r)
        x = a[r * k : (r + rows) * k, : W * k].astype(np.float32)
        m = x.reshape((rows, k, W, k) + tail).mean(axis=(1, 3))
        out[r : r + rows] = np.rint(m) if np.issubdtype(a.dtype, np.integer) else m
    return out


def _decode_cv2(p: Path) -> np.ndarray:
    import cv2

    buf = np.fromfile(p, dtype=np.uint8)
    arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageError(p, "truncated or corrupt image")
    arr = block_mean(arr, _reduce_factor(arr.shape[1], arr.shape[0]))
    return array_to_unit(arr, bgr=arr.ndim == 3)


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------


class _NoFileNames(logging.Filter):
    """Drop pydicom's records that name the file ("... found in file /data/<patientId>.dcm"):
    RSNA file names are patient ids, and the reason reaches the manifest anyway (issue 23)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return " in file " not in record.getMessage()


def quiet_pydicom() -> None:
    """pydicom's warnings and log records that carry a file's path are not printed (pydicom
    sends each twice, as a warning and a log record: ``misc.warn_and_log``). Called on every
    DICOM read (so a Ray worker that decodes has it too, and a caller that reset the warning
    filters gets it back); it changes nothing when both are in place."""
    import warnings

    lg = logging.getLogger("pydicom")
    if not any(isinstance(f, _NoFileNames) for f in lg.filters):
        lg.addFilter(_NoFileNames())
    if not any(f[0] == "ignore" and getattr(f[1], "pattern", None) == _PATH_WARNING and f[2] is UserWarning for f in warnings.filters):
        warnings.filterwarnings("ignore", message=_PATH_WARNING, category=UserWarning, module=r"pydicom(\..*)?$")


_PATH_WARNING = r".* in file "


def _read_dicom(p: Path, *, defer: bool = True) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    quiet_pydicom()

    if sniff(p) == "empty":
        raise ImageError(p, "zero-byte file")
    try:
        # defer_size: large values (the pixel data) are read only when touched
        return pydicom.dcmread(p, defer_size="64 KB" if defer else None, force=p.suffix.lower() in DICOM_SUFFIXES)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as e:
        raise ImageError(p, f"not a readable DICOM file ({type(e).__name__})") from None


#: PhotometricInterpretation -> samples per pixel lungray can turn into one gray image
_PHOTOMETRIC = {
    "MONOCHROME1": 1,
    "MONOCHROME2": 1,
    "PALETTE COLOR": 1,
    "RGB": 3,
    "YBR_FULL": 3,
    "YBR_FULL_422": 3,
    "YBR_PARTIAL_420": 3,
    "YBR_ICT": 3,
    "YBR_RCT": 3,
}


#: the (7FE0,0010) PixelData tag as it is written little- and big-endian
_PIXEL_TAG_LE, _PIXEL_TAG_BE = b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10"


def _why_no_pixel_data(p: Path, ds: Any) -> str:
    """Why pydicom found no pixel data (issue 23: a transfer-syntax lie and a cut JPEG 2000
    were both "DICOM without pixel data", i.e. "not an image"). The file's bytes say which:
    a PixelData tag in the byte order the header does not declare is a transfer syntax
    mismatch; one in the declared order that pydicom did not reach, or a header describing an
    image (Rows, Columns), is a file cut short; neither is a DICOM that holds no image."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        raw = p.read_bytes()
    except OSError:
        raw = b""
    start = 132 if raw[128:132] == b"DICM" else 0
    le, be = _PIXEL_TAG_LE in raw[start:], _PIXEL_TAG_BE in raw[start:]
    declared_le = True if ts is None else bool(getattr(ts, "is_little_endian", True))
    if ts is not None and (le or be) and (le != be) and le != declared_le:
        found = "little" if le else "big"
        return f"DICOM transfer syntax mismatch (the header declares {ts.name}, the data set is {found}-endian)"
    if le or be:
        return "truncated DICOM (the file ends inside its pixel data)"
    if ds.get("Rows") and ds.get("Columns"):
        return f"truncated DICOM (it describes a {int(ds.Columns)}x{int(ds.Rows)} image but ends before its pixel data)"
    return "DICOM without pixel data"


def _check_dicom_pixels(p: Path, ds: Any) -> None:
    """Raise for the DICOM cases that can never become one 2-D image (header and pixel-data
    length only: nothing is decoded)."""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageError(p, _why_no_pixel_data(p, ds))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageError(p, f"multi-frame DICOM ({frames} frames)")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    _check_size(p, cols, rows)
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if _PHOTOMETRIC.get(photometric) != spp:
        raise ImageError(p, f"unsupported DICOM PhotometricInterpretation '{photometric}' with {spp} sample(s) per pixel")
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and ts.is_compressed:
        from pydicom.pixels.decoders.base import get_decoder

        try:
            available = get_decoder(ts).is_available
        except NotImplementedError:
            available = False
        if not available:
            raise ImageError(p, f"compressed DICOM ({ts.name}) with no decoder installed")
    elif "PixelData" in ds:
        bits = int(ds.get("BitsAllocated", 8) or 8)
        n = rows * cols * spp
        expected = (n + 7) // 8 if bits == 1 else n * ((bits + 7) // 8)
        try:
            have = len(ds.PixelData or b"")
        except Exception:  # a deferred read past the end of a cut file
            have = 0
        if have < expected:
            raise ImageError(p, f"truncated DICOM pixel data ({have} of {expected} bytes)")


def decode_dicom(path: str | Path) -> np.ndarray:
    """A single-frame DICOM -> float32 (H, W) in [0, 1], bone bright (see the module rules)."""
    p = Path(path)
    kind, ds = _preflight(p)
    if kind != "dicom":
        raise ImageError(p, "not a readable DICOM file (no DICOM header)")
    return _decode_dicom(p, ds)


def _decode_dicom(p: Path, ds: Any) -> np.ndarray:
    try:
        arr = ds.pixel_array
    except Exception as e:  # decoder plugins raise many types on corrupt streams
        msg = (str(e).splitlines() or [""])[0][:100]
        raise ImageError(p, f"DICOM pixel data could not be decoded ({type(e).__name__}: {msg})") from None
    arr = block_mean(arr, _reduce_factor(arr.shape[1], arr.shape[0]))
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.ndim == 3:  # colour (pydicom already converted YBR to RGB)
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            arr = apply_color_lut(arr, ds)
        return array_to_unit(arr)
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        return array_to_unit(apply_color_lut(arr, ds))
    _check_finite(arr)  # float pixel data: the same rule as a float TIFF
    return dicom_to_unit(arr, ds)


def dicom_to_unit(arr: np.ndarray, ds: Any) -> np.ndarray:
    """Stored grayscale values -> [0, 1]: modality LUT, VOI LUT/window or min-max, MONOCHROME1 flip."""
    from pydicom.pixels import apply_modality_lut

    x = apply_modality_lut(arr, ds)
    voi = ds.get("VOILUTSequence")
    item = voi[0] if voi else None
    if item is not None and item.get("LUTDescriptor") is not None and item.get("LUTData") is not None:
        from pydicom.pixels import apply_voi

        xi = np.rint(x).astype(np.int64) if not np.issubdtype(x.dtype, np.integer) else x
        out = apply_voi(xi, ds).astype(np.float64)
        lut = np.asarray(item.LUTData if not isinstance(item.LUTData, bytes) else np.frombuffer(item.LUTData, "<u2"))
        lo, hi = float(lut.min()), float(lut.max())
        y = (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        y = _window(np.asarray(x, dtype=np.float32), ds)
    else:
        y = _minmax(x)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        y = 1.0 - y
    return np.clip(y, 0.0, 1.0).astype(np.float32)


def _first(v: Any) -> float:
    try:
        return float(v[0]) if not isinstance(v, (str, bytes)) and hasattr(v, "__len__") else float(v)
    except TypeError:
        return float(v)


def _window(x: np.ndarray, ds: Any) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing to [0, 1] (first window when several are given)."""
    c = _first(ds.WindowCenter)
    w = _first(ds.WindowWidth)
    func = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    if func == "SIGMOID" and w > 0:
        return 1.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
    if func == "LINEAR_EXACT" and w > 0:
        return np.clip((x - c) * (1.0 / w) + 0.5, 0.0, 1.0)
    if w <= 1:  # degenerate LINEAR window: a threshold at the centre
        return (x > c - 0.5).astype(np.float32)
    return np.clip((x - (c - 0.5)) * (1.0 / (w - 1.0)) + 0.5, 0.0, 1.0)


#: DICOM keywords lungray may record (technical, non-identifying).
SAFE_DICOM_FIELDS = {
    "Modality": "modality",
    "ViewPosition": "view_position",
    "BodyPartExamined": "body_part",
    "PhotometricInterpretation": "photometric",
    "BitsStored": "bits_stored",
    "Rows": "height",
    "Columns": "width",
}


def dicom_info(path: str | Path, salt: str) -> dict[str, Any]:
    """Non-identifying DICOM header fields for the manifest, with the patient id hashed.

    Reads the header only (pixel data deferred). Returns ``modality``, ``view_position``,
    ``body_part``, ``photometric``, ``bits_stored``, ``width``, ``height``, ``frames``,
    ``transfer_syntax`` and ``patient_id`` (salted hash, see
    :func:`lungray.data.manifest.hash_patient_id`). PatientName, birth date and every other
    identifying element are never copied out of the dataset object.
    """
    from lungray.data.manifest import hash_patient_id

    p = Path(path)
    ds = _read_dicom(p)
    out: dict[str, Any] = {}
    for kw, key in SAFE_DICOM_FIELDS.items():
        v = ds.get(kw)
        out[key] = "" if v is None else (int(v) if key in ("bits_stored", "width", "height") else str(v))
    out["frames"] = int(ds.get("NumberOfFrames", 1) or 1)
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    out["transfer_syntax"] = ts.name if ts is not None else ""
    out["patient_id"] = hash_patient_id(ds.get("PatientID"), salt)
    return out


# --------------------------------------------------------------------------------------------
# Dispatch, probing, resizing
# --------------------------------------------------------------------------------------------


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
