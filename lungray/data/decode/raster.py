"""PNG/JPEG/BMP/TIFF/GIF/WebP through Pillow (OpenCV for 16-bit colour PNGs that Pillow
truncates to 8 bits): header checks without decoding, then a decode reduced to the working
size (the rules: :mod:`lungray.data.decode`). One subject of :mod:`lungray.data.decode`
(issue 22.2); :func:`lungray.data.decode.decode` is the entry point.
"""

from __future__ import annotations

import importlib
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from lungray.data.decode.pixels import _check_size, _reduce_factor, array_to_unit, block_mean
from lungray.data.decode.problems import ImageError

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


def _decode_cv2(p: Path) -> np.ndarray:
    import cv2

    buf = np.fromfile(p, dtype=np.uint8)
    arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageError(p, "truncated or corrupt image")
    arr = block_mean(arr, _reduce_factor(arr.shape[1], arr.shape[0]))
    return array_to_unit(arr, bgr=arr.ndim == 3)
