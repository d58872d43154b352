"""The container kind of a file from its first bytes (content, not the suffix, decides), and the
suffixes and reference schemes lungray reads. One subject of :mod:`lungray.data.decode`
(issue 22.2)."""

from __future__ import annotations

from pathlib import Path

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
IMAGE_SUFFIXES = RASTER_SUFFIXES + DICOM_SUFFIXES
#: separator between an ``.npz`` file and the array row in a manifest path: ``a.npz::train/12``
NPZ_SEP = "::"
PHANTOM_SCHEME = "phantom://"


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
