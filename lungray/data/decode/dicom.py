"""DICOM through pydicom 3: header checks without decoding (pixel-data length, frames,
photometric interpretation, a decoder for compressed syntaxes), the modality LUT / VOI LUT /
window / MONOCHROME1 rules, and the only header fields lungray records (:func:`dicom_info`,
the patient id hashed on the spot). One subject of :mod:`lungray.data.decode` (issue 22.2);
:func:`lungray.data.decode.decode` is the entry point.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from lungray.data.decode.pixels import _check_finite, _check_size, _minmax, _reduce_factor, array_to_unit, block_mean
from lungray.data.decode.problems import ImageError
from lungray.data.decode.sniff import DICOM_SUFFIXES, sniff

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
