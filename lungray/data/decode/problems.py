"""What can be wrong with an image file, and what to do about it: the problem kinds of
``lungray data check``, the sweep's quarantine and the cache, each with its one-line hint
(:data:`HINTS`), and :class:`ImageError`, the error every decoder raises (issue 15).

One subject of :mod:`lungray.data.decode` (issue 22.2); import these names from there.
"""

from __future__ import annotations

from typing import Any

from lungray.errors import DataError


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
