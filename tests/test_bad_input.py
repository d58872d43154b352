"""Every bad-input kind of ``tests/BAD_INPUT.md``, built for real and run through ``data check``
and the sweep's data preparation (issues 12, 13 item 8, 14, 15 items 4-6).

Each :class:`Case` builds a small dataset (16 good phantom radiographs, 8 per class, plus the bad
thing), then asserts the exact outcome:

``quarantined``  the exact line(s) ``data check`` prints (the full decode), the very same reason in
                 the cache's quarantine after ``prepare_data`` (probe + decode: one check, issue 15
                 item 5), whether the cheap header probe already catches it (``stage``), every
                 good image still usable (nothing lost) and exit status 0 (1 under ``--strict``);
``warning``      the exact warning lines; ``prepare_data`` still prepares; ``strict`` refuses;
``error``        the dataset cannot be used: the exact error line, exit status 1, ``prepare_data``
                 refuses before decoding;
``note``         an information line only: exit status 0 even under ``--strict``;
``ok``           accepted as it should be (with an extra assertion);
``raises``       the adapter refuses the whole dataset with one :class:`LungrayError` line.

``tests/BAD_INPUT.md`` is generated from :data:`CASES` (``python tests/test_bad_input.py``) and a
test keeps it equal, so the table and the tests cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import io
import re
import struct
import unicodedata
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pytest
import yaml

TABLE = Path(__file__).with_name("BAD_INPUT.md")
CLASSES = ("COVID", "Normal")
N_PER_CLASS = 8


@dataclass(frozen=True)
class Case:
    id: str
    what: str  # the bad input, in words
    build: Callable[..., Optional[dict]]  # (root, tmp) -> DataConfig overrides (default: a folder dataset at root)
    outcome: str  # quarantined | warning | error | note | ok | raises
    lines: tuple[str, ...] = ()  # exact lines ({root}, {tmp} substituted); a regex for ``raises``
    stage: str = ""  # quarantined: "manifest" (the listing), "header" (the probe) or "pixels" (only a decode does)
    counts: Optional[dict] = None  # usable images per class afterwards (default: 8 and 8)
    check: Optional[Callable[..., None]] = None  # extra assertion (report, root, tmp)
    lost: str = ""  # the table's "nothing lost" column when not the default for the outcome
    prefix: bool = False  # the last line is a prefix (the rest is another module's wording)


# --------------------------------------------------------------------------------------------
# builders
# --------------------------------------------------------------------------------------------


def _phantom() -> np.ndarray:
    from lungray.data.phantom import generate_phantom

    return generate_phantom(40, resolution=24, seed=0).images


_IMGS: dict[str, Any] = {}


def imgs() -> np.ndarray:
    if "x" not in _IMGS:
        _IMGS["x"] = _phantom()
    return _IMGS["x"]


def png_bytes(a: np.ndarray, **kw: Any) -> bytes:
    from PIL import Image

    b = io.BytesIO()
    Image.fromarray(a).save(b, format=kw.pop("format", "PNG"), **kw)
    return b.getvalue()


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def base(root: Path, classes=CLASSES) -> Path:
    """8 distinct good PNGs per class folder."""
    for c, cls in enumerate(classes):
        for i in range(N_PER_CLASS):
            put(root / cls / f"{i}.png", png_bytes(imgs()[c * N_PER_CLASS + i]))
    return root


def base_csv(root: Path, extra: str = "", header: str = "path,label") -> dict:
    for i in range(2 * N_PER_CLASS):
        put(root / "img" / f"{i}.png", png_bytes(imgs()[i]))
    rows = [f"img/{i}.png,{CLASSES[i // N_PER_CLASS]}" for i in range(2 * N_PER_CLASS)]
    (root / "labels.csv").write_text(header + "\n" + "\n".join(rows) + "\n" + extra)
    return {"source": "csv", "path": str(root / "labels.csv")}


def plus(files: dict, classes=CLASSES, **over: Any) -> Callable[..., dict]:
    """The base dataset (of ``classes``) plus ``files`` (relative path -> ``make(root)`` bytes, or
    None for an empty folder); ``over`` are DataConfig overrides (``path`` relative to the root)."""

    def build(root: Path, tmp: Path) -> dict:
        base(root, classes=classes)
        for rel, make in files.items():
            (root / rel).mkdir(parents=True) if make is None else put(root / rel, make(root))
        return {**over, **({"path": str(root / over["path"])} if "path" in over else {})}

    return build


def bad_file(name: str, data: Callable[[], bytes]) -> Callable[..., None]:
    def build(root: Path, tmp: Path) -> None:
        base(root)
        put(root / "COVID" / name, data())

    return build


def _half(b: bytes) -> bytes:
    return b[: len(b) // 2]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` (8-bit gray) with one small IDAT: the header a
    decompression bomb shows before anything is inflated."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b"")


def corrupt_idat_crc() -> bytes:
    b = bytearray(png_bytes(imgs()[39]))
    i = bytes(b).index(b"IDAT") + 10
    b[i] ^= 0xFF
    return bytes(b)


def tiff_bytes(a: np.ndarray) -> bytes:
    return png_bytes(a, format="TIFF")


def float_with(values: dict) -> np.ndarray:
    a = imgs()[39].astype(np.float32) / 255.0
    for (r, c), v in values.items():
        a[r, c] = v
    return a


def frames_bytes(fmt: str, n: int) -> bytes:
    from PIL import Image

    frames = [Image.fromarray(imgs()[30 + k]) for k in range(n)]
    b = io.BytesIO()
    frames[0].save(b, format=fmt, save_all=True, append_images=frames[1:], **({"duration": 100} if fmt != "TIFF" else {}))
    return b.getvalue()


def rgba_transparent() -> bytes:
    a = np.dstack([imgs()[39]] * 3 + [np.zeros((24, 24), np.uint8)])
    return png_bytes(a)


def _dicom(img: np.ndarray, path: Path, **edit: Any) -> bytes:
    import pydicom

    from lungray.data.phantom import write_dicom

    write_dicom(path, img)
    if edit:
        ds = pydicom.dcmread(path)
        for k, v in edit.items():
            setattr(ds, k, v)
        ds.save_as(path)
    return path.read_bytes()


def dicom_file(name: str, make: Callable[[Path], bytes]) -> Callable[..., None]:
    def build(root: Path, tmp: Path) -> None:
        base(root)
        put(root / "COVID" / name, make(tmp / "src.dcm"))

    return build


def _testdata(name: str) -> Callable[[Path], bytes]:
    def make(_: Path) -> bytes:
        from pydicom.data import get_testdata_file

        return Path(get_testdata_file(name)).read_bytes()

    return make


def _mpeg2(tmp: Path) -> bytes:
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import MPEG2MPML

    ds = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.save_as(tmp)
    return tmp.read_bytes()


def _cut_dicom(tmp: Path) -> bytes:
    b = _dicom(imgs()[39], tmp)
    return b[:-288]


def _ts_lie(tmp: Path) -> bytes:
    """A little-endian DICOM whose file meta says Explicit VR Big Endian (same UID length)."""
    b = _dicom(imgs()[39], tmp)
    assert b.count(b"1.2.840.10008.1.2.1\x00") == 1
    return b.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.2\x00")


NEUMONIA_NFC = unicodedata.normalize("NFC", "Neumon\u00eda")
NEUMONIA_NFD = unicodedata.normalize("NFD", NEUMONIA_NFC)


def extra_class(name: str, n: int, first: int = 16) -> Callable[..., None]:
    def build(root: Path, tmp: Path) -> None:
        base(root)
        for i in range(n):
            put(root / name / f"{i}.png", png_bytes(imgs()[first + i]))

    return build


def symlink_case(link: str, target: str) -> Callable[..., None]:
    """The base dataset plus ``link`` (relative to the root) as a symlink to ``target``
    (``{root}``/``{tmp}`` substituted); an image outside the root is put at ``{tmp}/outside``."""

    def build(root: Path, tmp: Path) -> None:
        base(root)
        put(tmp / "outside" / "secret.png", png_bytes(imgs()[39]))
        put(root / ".store" / "7.png", png_bytes(imgs()[37]))  # inside the root, in no class folder
        (root / link).parent.mkdir(parents=True, exist_ok=True)
        (root / link).symlink_to(_fmt(target, root, tmp))

    return build


def csv_case(extra: str, header: str = "path,label", split: bool = False, link: Optional[tuple] = None, **over: Any) -> Callable[..., dict]:
    def build(root: Path, tmp: Path) -> dict:
        extra_ = _fmt(extra, root, tmp)
        if split:
            d = base_csv(root, header=header + ",split")
            text = (root / "labels.csv").read_text().splitlines()
            (root / "labels.csv").write_text("\n".join([text[0]] + [r + ",train" for r in text[1:]]) + "\n" + extra_)
        else:
            d = base_csv(root, extra_, header)
        put(tmp / "outside" / "secret.png", png_bytes(imgs()[39]))
        put(root / "img" / "extra.png", png_bytes(imgs()[38]))
        if link is not None:
            (root / link[0]).symlink_to(_fmt(link[1], root, tmp))
        return {**d, **over}

    return build


# --------------------------------------------------------------------------------------------
# the cases
# --------------------------------------------------------------------------------------------

CASES: list[Case] = [
    # ---- broken, truncated or mislabelled files -----------------------------------------------
    Case("zero_byte", "zero-byte PNG", bad_file("bad.png", lambda: b""), "quarantined",
         ("COVID/bad.png: zero-byte file; re-download or remove it",), "header"),
    Case("text_as_png", "text file named .png", bad_file("bad.png", lambda: b"not an image\n"), "quarantined",
         ("COVID/bad.png: not an image (unrecognised content); remove it or fix its format",), "header"),
    Case("html_as_jpg", "an HTML error page saved as .jpg (a failed download)",
         bad_file("bad.jpg", lambda: b"<html><body>404 Not Found</body></html>\n"), "quarantined",
         ("COVID/bad.jpg: not an image (unrecognised content); remove it or fix its format",), "header"),
    Case("truncated_png", "PNG cut in half", bad_file("bad.png", lambda: _half(png_bytes(imgs()[39]))), "quarantined",
         ("COVID/bad.png: truncated image; re-download or remove it",), "header"),
    Case("truncated_jpeg", "JPEG cut in half (no end-of-image marker)",
         bad_file("bad.jpg", lambda: _half(png_bytes(imgs()[39], format="JPEG"))), "quarantined",
         ("COVID/bad.jpg: truncated image; re-download or remove it",), "header"),
    Case("corrupt_png_crc", "PNG with a flipped byte in its pixel data (chunk CRC mismatch)",
         bad_file("bad.png", corrupt_idat_crc), "quarantined",
         ("COVID/bad.png: unreadable image (broken PNG file (bad header checksum in b'IDAT')); re-download or remove it",), "header"),
    Case("bomb_png", "decompression bomb: a PNG declaring 30000 x 30000 px",
         bad_file("bomb.png", lambda: bomb_png_header(30000, 30000)), "quarantined",
         ("COVID/bomb.png: image too large (30000x30000 px = 900.0 megapixels; the limit is 89.5); downscale it (lungray decodes at most 2048 x 2048 px of it anyway) or remove it",), "header"),
    Case("tiny_1x1", "1 x 1 px PNG", bad_file("dot.png", lambda: png_bytes(np.full((1, 1), 7, np.uint8))), "quarantined",
         ("COVID/dot.png: image too small (1x1 px; at least 16 px per side); remove it (an export error?)",), "header"),
    Case("tiny_thumbnail", "20 x 12 px thumbnail", bad_file("thumb.png", lambda: png_bytes(imgs()[39][:12, :20])),
         "quarantined", ("COVID/thumb.png: image too small (20x12 px; at least 16 px per side); remove it (an export error?)",), "header"),
    Case("float_tiff_nan", "float32 TIFF with a NaN pixel", bad_file("nan.tif", lambda: tiff_bytes(float_with({(3, 4): np.nan}))),
         "quarantined", ("COVID/nan.tif: non-finite pixel values (1 NaN/inf pixel(s)); re-export it with finite pixel values or remove it",), "pixels"),
    Case("float_tiff_inf", "float32 TIFF with +inf and -inf pixels",
         bad_file("inf.tif", lambda: tiff_bytes(float_with({(0, 0): np.inf, (5, 5): -np.inf}))), "quarantined",
         ("COVID/inf.tif: non-finite pixel values (2 NaN/inf pixel(s)); re-export it with finite pixel values or remove it",), "pixels"),
    Case("multipage_tiff", "3-page TIFF", bad_file("pages.tif", lambda: frames_bytes("TIFF", 3)), "quarantined",
         ("COVID/pages.tif: multi-page TIFF (3 pages); lungray reads one image per file; save the frame you want as its own file",), "header"),
    Case("animated_gif", "animated GIF (4 frames)", bad_file("anim.gif", lambda: frames_bytes("GIF", 4)), "quarantined",
         ("COVID/anim.gif: animated image (4 frames); lungray reads one image per file; save the frame you want as its own file",), "header"),
    Case("animated_png", "animated PNG (APNG, 2 frames)", bad_file("anim.png", lambda: frames_bytes("PNG", 2)),
         "quarantined", ("COVID/anim.png: animated image (2 frames); lungray reads one image per file; save the frame you want as its own file",), "header"),
    Case("blank_png", "all-black PNG", bad_file("black.png", lambda: png_bytes(np.zeros((24, 24), np.uint8))),
         "quarantined", ("COVID/black.png: blank image (every pixel has the same value); re-export it or remove it",), "pixels"),
    Case("transparent_png", "RGBA PNG, fully transparent (composites to black)", bad_file("clear.png", rgba_transparent),
         "quarantined", ("COVID/clear.png: blank image (every pixel has the same value); re-export it or remove it",), "pixels"),
    Case("dicom_no_pixels", "DICOM without pixel data (an RT plan)", dicom_file("plan.dcm", _testdata("rtplan.dcm")),
         "quarantined", ("COVID/plan.dcm: DICOM without pixel data; it is not an image (report, RT plan...); remove it",), "header"),
    Case("dicom_multiframe", "multi-frame DICOM (10 frames)", dicom_file("cine.dcm", _testdata("emri_small.dcm")),
         "quarantined", ("COVID/cine.dcm: multi-frame DICOM (10 frames); lungray reads one image per file; save the frame you want as its own file",), "header"),
    Case("dicom_truncated", "DICOM whose pixel data is cut short", dicom_file("cut.dcm", _cut_dicom), "quarantined",
         ("COVID/cut.dcm: truncated DICOM pixel data (288 of 576 bytes); re-download or remove it",), "header"),
    Case("dicom_odd_photometric", "DICOM with PhotometricInterpretation YBR_FULL on 1 sample per pixel",
         dicom_file("ybr.dcm", lambda t: _dicom(imgs()[39], t, PhotometricInterpretation="YBR_FULL")), "quarantined",
         ("COVID/ybr.dcm: unsupported DICOM PhotometricInterpretation 'YBR_FULL' with 1 sample(s) per pixel; re-export it as MONOCHROME2 (or RGB) or remove it",), "header"),
    Case("dicom_no_decoder", "compressed DICOM with no decoder (MPEG-2)", dicom_file("mpeg.dcm", _mpeg2), "quarantined",
         ("COVID/mpeg.dcm: compressed DICOM (MPEG2 Main Profile / Main Level) with no decoder installed; install pylibjpeg, pylibjpeg-openjpeg, pylibjpeg-libjpeg and pylibjpeg-rle (or python-gdcm), or convert the file to an uncompressed transfer syntax",), "header"),
    Case("dicom_tiny", "8 x 8 px DICOM", dicom_file("small.dcm", lambda t: _dicom(imgs()[39][:8, :8], t)), "quarantined",
         ("COVID/small.dcm: image too small (8x8 px; at least 16 px per side); remove it (an export error?)",), "header"),
    Case("dicom_garbage", "DICOM preamble and 'DICM' followed by garbage (parses to no pixel data)",
         bad_file("junk.dcm", lambda: b"\x00" * 128 + b"DICM" + b"\xff\xfe\x01" * 40), "quarantined",
         ("COVID/junk.dcm: DICOM without pixel data; it is not an image (report, RT plan...); remove it",), "header"),
    Case("dicom_transfer_syntax_lie", "DICOM whose header declares big-endian but whose data set is little-endian",
         dicom_file("lie.dcm", _ts_lie), "quarantined",
         ("COVID/lie.dcm: DICOM transfer syntax mismatch (the header declares Explicit VR Big Endian, the data set is little-endian); "
          "re-export it (its header names one byte order, its data uses the other) or remove it",), "header"),
    Case("dicom_j2k_truncated", "JPEG 2000 DICOM cut short inside its pixel data",
         dicom_file("cut_j2k.dcm", lambda t: _testdata("MR_small_jp2klossless.dcm")(t)[:-1200]), "quarantined",
         ("COVID/cut_j2k.dcm: truncated DICOM (the file ends inside its pixel data); re-download or remove it",), "header"),
    Case("newline_in_name", "a file name holding a newline (could forge an output line)",
         bad_file("evil\nNormal/ok.png", lambda: b""), "quarantined",
         ("COVID/evil\\nNormal/ok.png: zero-byte file; re-download or remove it",), "header"),
    Case("bidi_in_name", "a file name holding a right-to-left override (U+202E)",
         bad_file("x\u202egnp.png", lambda: b""), "quarantined",
         ("COVID/x\\u202egnp.png: zero-byte file; re-download or remove it",), "header"),
    Case("label_conflict", "the same bytes filed under two labels",
         plus({"Normal/dup.png": lambda root: (root / "COVID" / "0.png").read_bytes()}),
         "quarantined",
         ("COVID/0.png: label conflict: same bytes as 'Normal/dup.png' labelled 'Normal'; keep the file under its right label and delete the other copy",
          "Normal/dup.png: label conflict: same bytes as 'COVID/0.png' labelled 'COVID'; keep the file under its right label and delete the other copy"),
         "header", counts={"COVID": 7, "Normal": 8},
         lost="the pair is quarantined (which label is right is unknown); all other images kept"),
    # ---- CSV rows ------------------------------------------------------------------------------
    Case("macosx_root", "a root __MACOSX/ folder (a zip made on macOS: AppleDouble ._ files)",
         plus({"__MACOSX/COVID/._0.png": lambda root: b"\x00\x05\x16\x07" + b"\x00" * 80,
               "__MACOSX/Normal/._0.png": lambda root: b"\x00\x05\x16\x07" + b"\x00" * 80}), "ok"),
    Case("csv_missing_file", "CSV row naming a missing file", csv_case("img/nope.png,COVID\n"), "quarantined",
         ("img/nope.png: missing file 'img/nope.png' (labels.csv row 17 (line 18)); fix the path or remove the row",), "header"),
    Case("csv_outside_absolute", "CSV row with an absolute path outside the dataset root",
         csv_case("{tmp}/outside/secret.png,COVID\n"), "quarantined",
         ("{tmp}/outside/secret.png: path outside the dataset root '{tmp}/outside/secret.png' (labels.csv row 17 (line 18)); "
          "rows must point under the CSV's folder {root}, or set data.allow_outside_root=true",), "header",
         lost="the file is never opened; all other rows kept"),
    Case("symlink_outside", "a folder entry that is a symlink to an image outside the dataset root",
         symlink_case("COVID/link.png", "{tmp}/outside/secret.png"), "quarantined",
         ("COVID/link.png: symlink leading outside the dataset root {root}; copy the file into the dataset, or set data.allow_outside_root=true",),
         "manifest", lost="the file is never opened; all other images kept"),
    Case("symlink_etc_passwd", "a folder entry that is a symlink to /etc/passwd",
         symlink_case("Normal/x.png", "/etc/passwd"), "quarantined",
         ("Normal/x.png: symlink leading outside the dataset root {root}; copy the file into the dataset, or set data.allow_outside_root=true",),
         "manifest", lost="the file is never opened; all other images kept"),
    Case("symlink_inside", "a symlink to another image inside the root (followed)",
         symlink_case("COVID/again.png", "{root}/.store/7.png"), "ok", counts={"COVID": 9, "Normal": 8}),
    Case("csv_symlink_outside", "CSV row naming a symlink inside the root that leads outside it",
         csv_case("img/link.png,COVID\n", link=("img/link.png", "{tmp}/outside/secret.png")), "quarantined",
         ("{tmp}/outside/secret.png: path outside the dataset root 'img/link.png' (labels.csv row 17 (line 18)); "
          "rows must point under the CSV's folder {root}, or set data.allow_outside_root=true",), "header",
         lost="the file is never opened; all other rows kept"),
    Case("csv_outside_dotdot", "CSV row climbing out of the root with ../", csv_case("../outside/secret.png,COVID\n"),
         "quarantined",
         ("{tmp}/outside/secret.png: path outside the dataset root '../outside/secret.png' (labels.csv row 17 (line 18)); "
          "rows must point under the CSV's folder {root}, or set data.allow_outside_root=true",), "header",
         lost="the file is never opened; all other rows kept"),
    Case("csv_empty_label", "CSV row with an empty label", csv_case("img/extra.png,\n"), "quarantined",
         ("img/extra.png: empty label (labels.csv row 17 (line 18)); fill in the label or remove the row",), "header"),
    Case("csv_empty_path", "CSV row with an empty path", csv_case(",COVID\n"), "quarantined",
         ("empty path (labels.csv row 17 (line 18)); fill in the path or remove the row",), "header"),
    Case("csv_unknown_split", "CSV split value that is not train/val/test", csv_case("img/extra.png,COVID,dev\n", split=True),
         "quarantined", ("img/extra.png: unknown split 'dev' (labels.csv row 17 (line 18)); use train, val or test",), "header"),
    Case("csv_duplicate_id", "two CSV rows with one image_id",
         lambda root, tmp: _csv_with_ids(root), "quarantined",
         ("img/0.png: duplicate image_id; make the image ids unique", "img/1.png: duplicate image_id; make the image ids unique"), "header", counts={"COVID": 6, "Normal": 8},
         lost="both rows quarantined (which is meant is unknown); all other rows kept"),
    Case("unknown_label", "a class folder the class map does not mention", lambda root, tmp: _with_other(root),
         "quarantined", ("Other/0.png: unknown label 'Other' (not in data.class_map); add the class to data.class_map (or map it to null) or remove the file",), "header"),
    # ---- labels ----------------------------------------------------------------------------------
    Case('typo_case', "label typo: 'Covid' next to 'COVID'", extra_class("Covid", 2), "error",
         ("the validation set would hold no 'Covid' image: model selection and early stopping would ignore the class; use more data, a larger data.val_size, or data.val_size=0 for no validation set",
          "near-identical class names 'COVID' (8 images), 'Covid' (2 images): one class under several spellings? merge them with data.class_map: {\"COVID\": \"COVID\", \"Covid\": \"COVID\", \"Normal\": \"Normal\"}",),
         counts={"COVID": 8, "Covid": 2, "Normal": 8}),
    Case("nfc_nfd_classes", "two class folders named alike in NFC and NFD Unicode forms (a macOS copy): they print identically",
         plus({f"{NEUMONIA_NFD}/{i}.png": (lambda i: lambda root: png_bytes(imgs()[20 + i]))(i) for i in range(8)},
              classes=("COVID", NEUMONIA_NFC), val_size=3), "warning",
         (f"near-identical class names '{NEUMONIA_NFC}' (8 images, NFC: Neumon\\u00eda), '{NEUMONIA_NFD}' (8 images, NFD: "
          "Neumoni\\u0301a): the same name in two Unicode forms (a folder copied from macOS?); merge them with "
          f'data.class_map: {{"COVID": "COVID", "Neumoni\\u0301a": "{NEUMONIA_NFC}", "{NEUMONIA_NFC}": "{NEUMONIA_NFC}"}}',),
         counts={"COVID": 8, NEUMONIA_NFC: 8, NEUMONIA_NFD: 8}),
    Case('typo_lookalike_l', "label typo with a look-alike letter: 'COVlD' (l for I), one image", extra_class("COVlD", 1), "error",
         ("the evaluation set would hold no 'COVlD' image: its metrics would miss the class; use more data or a larger data.eval_size, or drop the class with data.class_map",
          "the validation set would hold no 'COVlD' image: model selection and early stopping would ignore the class; use more data, a larger data.val_size, or data.val_size=0 for no validation set",
          "near-identical class names 'COVID' (8 images), 'COVlD' (1 image): one class under several spellings? merge them with data.class_map: {\"COVID\": \"COVID\", \"COVlD\": \"COVID\", \"Normal\": \"Normal\"}",),
         counts={"COVID": 8, "COVlD": 1, "Normal": 8}),
    Case('typo_zero_for_o', "label typo: 'C0VID' (zero for O)", extra_class("C0VID", 3), "error",
         ("the validation set would hold no 'C0VID' image: model selection and early stopping would ignore the class; use more data, a larger data.val_size, or data.val_size=0 for no validation set",
          "near-identical class names 'COVID' (8 images), 'C0VID' (3 images): one class under several spellings? merge them with data.class_map: {\"C0VID\": \"COVID\", \"COVID\": \"COVID\", \"Normal\": \"Normal\"}",),
         counts={"C0VID": 3, "COVID": 8, "Normal": 8}),
    Case('typo_whitespace', "label typo: a trailing space, 'Normal '", extra_class("Normal ", 3), "error",
         ("the validation set would hold no 'Normal ' image: model selection and early stopping would ignore the class; use more data, a larger data.val_size, or data.val_size=0 for no validation set",
          "near-identical class names 'Normal' (8 images), 'Normal ' (3 images): one class under several spellings? merge them with data.class_map: {\"COVID\": \"COVID\", \"Normal\": \"Normal\", \"Normal \": \"Normal\"}",),
         counts={"COVID": 8, "Normal": 8, "Normal ": 3}),
    Case('typo_homoglyph', "label typo: Cyrillic 'С' in '\u0421OVID'", extra_class("\u0421OVID", 3), "error",
         ("the validation set would hold no '\u0421OVID' image: model selection and early stopping would ignore the class; use more data, a larger data.val_size, or data.val_size=0 for no validation set",
          "near-identical class names 'COVID' (8 images), '\u0421OVID' (3 images): one class under several spellings? merge them with data.class_map: {\"COVID\": \"COVID\", \"Normal\": \"Normal\", \"СOVID\": \"COVID\"}",),
         counts={"COVID": 8, "Normal": 8, "\u0421OVID": 3}),
    Case('class_one_image', 'a class with 1 image', extra_class("Rare", 1), "error",
         ("the evaluation set would hold no 'Rare' image: its metrics would miss the class; use more data or a larger data.eval_size, or drop the class with data.class_map",
          "the validation set would hold no 'Rare' image: model selection and early stopping would ignore the class; use more data, a larger data.val_size, or data.val_size=0 for no validation set",),
         counts={"COVID": 8, "Normal": 8, "Rare": 1}),
    Case('class_two_images', 'a class with 2 images', extra_class("Rare", 2), "error",
         ("the validation set would hold no 'Rare' image: model selection and early stopping would ignore the class; use more data, a larger data.val_size, or data.val_size=0 for no validation set",),
         counts={"COVID": 8, "Normal": 8, "Rare": 2}),
    Case("typo_splits_fine", "label typo on a class large enough for every split: 'Covid' (8 images)",
         lambda root, tmp: (extra_class("Covid", 8, first=24)(root, tmp), {"val_size": 3})[1], "warning",
         ('near-identical class names \'COVID\' (8 images), \'Covid\' (8 images): one class under several spellings? '
          'merge them with data.class_map: {"COVID": "COVID", "Covid": "COVID", "Normal": "Normal"}',),
         counts={"COVID": 8, "Covid": 8, "Normal": 8}),
    # ---- the dataset cannot be used --------------------------------------------------------------
    Case("empty_class", "an empty class folder", plus({"Empty": None}),
         "error",
         ("class 'Empty' has no usable images; add images, fix the quarantined ones, or drop it with data.class_map",),
         counts={"COVID": 8, "Empty": 0, "Normal": 8}),
    Case("all_bad_class", "a class whose every file is broken",
         plus({"Broken/a.png": lambda root: b"", "Broken/b.png": lambda root: b"x"}),
         "error",
         ("Broken/a.png: zero-byte file; re-download or remove it", "Broken/b.png: not an image (unrecognised content); remove it or fix its format",
          "class 'Broken' has no usable images; add images, fix the quarantined ones, or drop it with data.class_map"),
         counts={"Broken": 0, "COVID": 8, "Normal": 8}),
    Case("single_class", "only one class", plus({}, classes=("COVID",)), "error",
         ("fewer than 2 classes with usable images (COVID 8); a classifier needs at least two",), counts={"COVID": 8}),
    Case("no_images", "class folders with no image in them",
         plus({"COVID/a.txt": lambda root: b"x", "Normal/b.txt": lambda root: b"x"}, classes=()),
         "error", ("no images found: the dataset has no labelled image; check data.path and data.source",),
         counts={"COVID": 0, "Normal": 0}),
    Case("size_over_pool", "a training size larger than the pool", plus({}, sizes=(500,)),
         "error", ("training size 500 is larger than the training pool of 10 images (COVID: 5, Normal: 5); ",), prefix=True),
    Case("split_no_pool", "an evaluation set that leaves no training pool",
         plus({}, eval_size=16, val_size=0), "error",
         ("the held-out split cannot be made: eval_size=16 and val_size=0 leave no training pool out of 16 images",),
         prefix=True),
    Case("eval_below_minimum", "an evaluation set with fewer images of a class than data.min_eval_per_class",
         plus({}, min_eval_per_class=10), "error",
         ("the evaluation set would hold only 2 'COVID', 2 'Normal' image(s), fewer than data.min_eval_per_class = 10 per "
          "class: a metric on so few is noise; use more data, a larger data.eval_size, or lower data.min_eval_per_class",)),
    Case("val_loses_a_class", "a validation set too small to hold every class",
         plus({}, val_size=1), "error",
         ("the validation set would hold no 'Normal' image: model selection and early stopping would ignore the class; "
          "use more data, a larger data.val_size, or data.val_size=0 for no validation set",)),
    # ---- information only ------------------------------------------------------------------------
    Case("non_image_files", "non-image files in the class folders (.txt, .xlsx)",
         plus({"COVID/notes.txt": lambda root: b"x", "Normal/meta.xlsx": lambda root: b"x"}),
         "note",
         ("note: 2 file(s) not read, outside any class folder or not an image suffix (.txt 1, .xlsx 1), e.g. "
          "'COVID/notes.txt'; lungray reads .png .jpg .jpeg .bmp .tif .tiff .gif .webp .dcm .dicom .dic in class folders",)),
    Case("stray_root_image", "an image outside any class folder",
         plus({"stray.png": lambda root: png_bytes(imgs()[39])}), "note",
         ("note: 1 file(s) not read, outside any class folder or not an image suffix (.png 1), e.g. 'stray.png'; "
          "lungray reads .png .jpg .jpeg .bmp .tif .tiff .gif .webp .dcm .dicom .dic in class folders",)),
    Case("same_label_copy", "the same bytes twice under one label",
         plus({"COVID/copy.png": lambda root: (root / "COVID" / "0.png").read_bytes()}),
         "note",
         ("note: 1 file(s) are byte-identical copies of another file with the same label (e.g. 'COVID/copy.png' = "
          "'COVID/0.png'); they count as separate training images, and copies of evaluation images are handled by the "
          "leakage audit",), counts={"COVID": 9, "Normal": 8}),
    # ---- accepted, as they should be -------------------------------------------------------------
    Case("gif_single_frame", "a single-frame GIF (read, not ignored)", bad_file("one.gif", lambda: png_bytes(imgs()[39], format="GIF")),
         "ok", counts={"COVID": 9, "Normal": 8}),
    Case("large_image_reduced", "an image over the working size (decoded reduced, memory bounded)",
         bad_file("big.png", lambda: png_bytes(np.kron(imgs()[39], np.ones((9, 9), np.uint8)))), "ok",
         counts={"COVID": 9, "Normal": 8}, check=lambda rep, root, tmp: _reduced(rep)),
    Case("patient_id_in_filename", "a PatientID in a file name", bad_file("PAT-12345678_cxr.png", lambda: png_bytes(imgs()[39])),
         "ok", counts={"COVID": 9, "Normal": 8}, check=lambda rep, root, tmp: _ids_hashed(rep, "PAT-12345678")),
    Case("csv_absolute_inside", "CSV row with an absolute path under the root", csv_case("{root}/img/extra.png,COVID\n"),
         "ok", counts={"COVID": 9, "Normal": 8}),
    Case("csv_outside_allowed", "CSV row outside the root with data.allow_outside_root",
         csv_case("../outside/secret.png,COVID\n", allow_outside_root=True), "ok", counts={"COVID": 9, "Normal": 8}),
    # ---- refused as a whole, before anything is read ----------------------------------------------
    Case("csv_no_label_column", "CSV without a label column", csv_case("", header="path,diagnosis"), "raises",
         (r"{root}/labels.csv: missing column\(s\) label; found path, diagnosis \(expected path, label\)",)),
    Case("csv_not_text", "a binary file named .csv",
         plus({"labels.csv": lambda root: b"\xff\xfe\x00\x81" * 50}, classes=(), source="csv", path="labels.csv"),
         "raises", (r"{root}/labels.csv: not a readable CSV \(UnicodeDecodeError: .*\)",)),
    Case("unknown_source", "an unknown data.source", plus({}, source="kaggle"), "raises",
         (r"unknown dataset adapter 'kaggle'; valid choices: .*csv.*folder.*",)),
    Case("missing_root", "data.path that does not exist", lambda root, tmp: {"path": str(root / "nowhere")}, "raises",
         (r"data.path '{root}/nowhere' does not exist \(data.source 'folder'\); check the path",)),
    Case("no_class_folders", "a folder without class folders", plus({"a.png": lambda root: png_bytes(imgs()[0])}, classes=()),
         "raises", (r"{root}: no class folders found; the folder layout needs one subfolder per class",)),
    Case("medmnist_mismatch", "a MedMNIST .npz whose labels and images differ in length",
         lambda root, tmp: _npz(root), "raises", (r"{root}/m.npz: 'train_labels' has 3 rows but 'train_images' has 4",)),
]


def _csv_with_ids(root: Path) -> dict:
    d = base_csv(root, header="path,label,image_id")
    lines = (root / "labels.csv").read_text().splitlines()
    lines = [lines[0]] + [f"{r},id{i}" for i, r in enumerate(lines[1:])]
    lines[2] = lines[2].replace(",id1", ",id0")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return d


def _with_other(root: Path) -> dict:
    base(root)
    put(root / "Other" / "0.png", png_bytes(imgs()[39]))
    return {"class_map": {"COVID": "COVID", "Normal": "Normal"}}


def _npz(root: Path) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "m.npz", train_images=np.zeros((4, 28, 28), np.uint8), train_labels=np.zeros((3, 1), np.uint8))
    return {"source": "medmnist", "path": str(root / "m.npz")}


def _reduced(rep: Any) -> None:
    # 216 x 216 px with a working limit of 64 x 64 px: decoded reduced by 4 (ceil(216/64) = 4) to 54 x 54
    row = rep.manifest[rep.manifest["path"].str.endswith("big.png")].iloc[0]
    assert (row["width"], row["height"]) == (54, 54) and row["problem"] == ""


def _ids_hashed(rep: Any, secret: str) -> None:
    m = rep.manifest
    assert m["image_id"].str.fullmatch(r"img_[0-9a-f]{16}").all()
    assert not m["image_id"].str.contains(secret).any() and m["path"].str.contains(secret).sum() == 1


CASE_IDS = [c.id for c in CASES]


# --------------------------------------------------------------------------------------------
# running a case
# --------------------------------------------------------------------------------------------


def _cfg(case: Case, root: Path, tmp: Path) -> tuple[Any, tuple]:
    from lungray.config import DataConfig

    over = case.build(root, tmp) or {}
    sizes = tuple(over.pop("sizes", ()))
    # 8 images per class: below a study's split minimums (data.min_eval_per_class 10), lifted here
    # except by the cases that test them
    kw: dict = {"source": "folder", "path": str(root), "resolution": 16, "val_size": 2,
                "min_eval_per_class": 1, "min_val_per_class": 1, **over}
    return DataConfig(**kw), sizes


def _as_sweep(line: str, manifest: Any, cfg: Any) -> str:
    """A ``data check`` line as the sweep prints it: the file it names replaced by its image id."""
    from lungray.data.check import _display, printable

    top = Path(cfg.path).resolve()
    top = top.parent if top.is_file() else top
    ids = {printable(d): iid for d, iid in ((_display(r, top, cfg.source), r["image_id"]) for _, r in manifest.iterrows()) if d}
    named = False
    for d in sorted(ids, key=len, reverse=True):
        if not named and line.startswith(d + ": "):
            line, named = ids[d] + line[len(d):], True
        line = line.replace(f"same bytes as '{d}'", f"same bytes as '{ids[d]}'")
    unnamed = [r["image_id"] for _, r in manifest.iterrows() if r["problem"] and not str(r["path"])]
    if not named and len(unnamed) == 1:  # a row without a path (data check prints its reason alone)
        line = f"{unnamed[0]}: {line}"
    return line


def _fmt(s: str, root: Path, tmp: Path) -> str:
    return s.replace("{root}", str(root.resolve())).replace("{tmp}", str(tmp.resolve()))


@pytest.fixture()
def work(tmp_path, monkeypatch):
    from lungray.data import decode as D
    from lungray.data.decode import pixels

    # the large-image case: reduce without a huge file (pixels' limit drives the decoders, the
    # re-exported copy the config check)
    monkeypatch.setattr(pixels, "WORK_PIXELS", 64 * 64)
    monkeypatch.setattr(D, "WORK_PIXELS", 64 * 64)
    return tmp_path


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_bad_input(case: Case, work: Path):
    from lungray.data.check import check_dataset, exit_status
    from lungray.data.decode import probe
    from lungray.data.prepare import prepare_data
    from lungray.errors import DataError, LungrayError

    root, tmp = work / "ds", work
    root.mkdir()
    expected = [_fmt(s, root, tmp) for s in case.lines]
    if case.outcome == "raises":
        with pytest.raises(LungrayError) as e:
            cfg, sizes = _cfg(case, root, tmp)
            check_dataset(cfg, echo=None, decode_files=True)
        assert re.fullmatch(expected[0], str(e.value)), str(e.value)
        return

    cfg, sizes = _cfg(case, root, tmp)
    printed: list[str] = []
    rep = check_dataset(cfg, sizes=sizes, echo=printed.append, decode_files=True)
    assert all("\n" not in line for line in printed)
    counts = case.counts or {"COVID": N_PER_CLASS, "Normal": N_PER_CLASS}
    assert rep.class_counts == counts  # nothing else lost
    if case.check is not None:
        case.check(rep, root, tmp)

    if case.outcome == "ok":
        assert rep.ok and rep.notes == [] and printed == [rep.summary]
        assert rep.summary.startswith(f"all {sum(counts.values())} images OK")
        return
    if case.outcome == "note":
        assert rep.notes == expected and rep.problems == [] and rep.ok
        assert exit_status(rep) == 0 and exit_status(rep, strict=True) == 0
        assert printed[-2:] == [expected[-1], rep.summary]
        return
    if case.outcome == "quarantined":
        assert [p for p in rep.problems] == expected and rep.warnings == [] and rep.dataset_problems == []
        assert printed == expected + [rep.summary]
        assert rep.summary.startswith(f"{len(expected)} of ")
        assert exit_status(rep) == 0 and exit_status(rep, strict=True) == 1
        # the sweep's preparation (probe, then the cache's decode) quarantines the same files, same reasons
        shown: list[str] = []
        data = prepare_data(cfg, output_dir=tmp / "out", progress=False, parallel=False, echo=shown.append)
        assert sum(sum(v.values()) for v in data.class_counts().values()) + len(data.dropped_idx) == sum(counts.values())
        # the sweep names images by hashed id, never by file name (issue 23, point 6)
        for line in expected:
            assert _as_sweep(line, rep.manifest, cfg) in shown, (_as_sweep(line, rep.manifest, cfg), shown)
        totals = next(s for s in shown if s.startswith("data: "))  # then the leakage audit's line
        assert totals.startswith(f"data: {sum(counts.values())} of ") and f"{len(expected)} quarantined" in totals
        bad = rep.manifest[rep.manifest["problem"] != ""]
        for p, reason in zip(bad["path"], bad["problem"]):
            if p and case.stage != "manifest" and not case.id.startswith(("csv_", "label_", "unknown_")):
                assert probe(p) == (reason if case.stage == "header" else ""), (p, probe(p))
        return
    if case.outcome == "warning":
        assert rep.warnings == expected
        assert rep.dataset_problems == [] and rep.n_quarantined == 0
        assert printed[-len(rep.warnings) - 1 :] == rep.warnings + [rep.summary]
        assert exit_status(rep) == 0 and exit_status(rep, strict=True) == 1  # data.strict: test_strict_refuses
        _merge_fixes(cfg, rep, counts)
        return
    assert case.outcome == "error"
    if case.prefix:
        assert rep.problems[-1].startswith(expected[-1]) and rep.problems[:-1] == expected[:-1]
        expected[-1] = rep.problems[-1]
    errors = [p for p in expected if p not in rep.warnings]  # a label typo's hint comes after the errors it causes
    assert rep.dataset_problems == errors[-len(rep.dataset_problems) :] and rep.problems == expected
    assert exit_status(rep) == 1 and not rep.usable
    if rep.warnings:
        _merge_fixes(cfg, rep, counts)
    if not sizes:
        with pytest.raises(DataError) as e:
            prepare_data(cfg, output_dir=tmp / "out", progress=False, parallel=False, echo=[].append)
        assert errors[-1] in str(e.value) and "\n" not in str(e.value)


def _merge_fixes(cfg: Any, rep: Any, counts: dict) -> None:
    """A near-identical class-name warning's class_map line merges the spellings, and the merged
    dataset checks clean."""
    from lungray.data.check import check_dataset

    for w in rep.warnings:
        if not w.startswith("near-identical"):
            continue
        cmap = yaml.safe_load(w.split("merge them with ")[1].split(": ", 1)[1])
        merged: dict = {}
        for k, v in counts.items():
            merged[cmap[k]] = merged.get(cmap[k], 0) + v
        fixed = check_dataset(dataclasses.replace(cfg, class_map=cmap), echo=None, decode_files=True)
        assert fixed.ok and fixed.class_counts == merged and len(merged) == 2


@pytest.mark.parametrize("case_id", ["truncated_png", "float_tiff_nan", "typo_splits_fine"])
def test_strict_refuses_what_the_default_lets_through(case_id: str, work: Path):
    """``data.strict`` (the sweep) refuses a header-level quarantine, a pixel-level quarantine (found
    by the cache's decode) and a label warning; the default prepares all three, warning printed."""
    from lungray.data.prepare import prepare_data
    from lungray.errors import DataError

    case = next(c for c in CASES if c.id == case_id)
    root = work / "ds"
    root.mkdir()
    cfg, _ = _cfg(case, root, work)
    shown: list[str] = []
    data = prepare_data(cfg, output_dir=work / "out", progress=False, parallel=False, echo=shown.append)
    assert data.num_classes == len(case.counts or CLASSES)
    from lungray.data.adapters import build_manifest

    line = [_fmt(s, root, work) for s in case.lines][0]
    assert (_as_sweep(line, build_manifest(cfg), cfg) if case.outcome == "quarantined" else line) in shown
    with pytest.raises(DataError, match=r"^data check failed \(strict\): ") as e:
        prepare_data(dataclasses.replace(cfg, strict=True), output_dir=work / "out", progress=False, parallel=False, echo=[].append)
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------

_CAUGHT = {
    "quarantined": {"header": "yes: data check; sweep preparation (header probe)",
                    "pixels": "yes: data check; sweep preparation (cache decode)",
                    "manifest": "yes: data check; sweep preparation (listing, before any file is opened)"},
    "warning": "yes: data check and sweep preparation warn; `--strict`/`data.strict` refuse",
    "error": "yes: data check exits 1; sweep preparation refuses before decoding",
    "note": "yes: data check and sweep preparation print a note",
    "ok": "accepted (correctly)",
    "raises": "yes: refused before any file is read (exit 2)",
}
_LOST = {
    "quarantined": "only this file is quarantined (reason in the manifest); every other image kept",
    "warning": "nothing: every image kept; merge or drop with `data.class_map`",
    "error": "nothing trained or computed yet",
    "note": "nothing: every image kept",
    "ok": "nothing",
    "raises": "nothing trained or computed yet",
}


def table() -> str:
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", "\\n")

    head = (
        "# Bad input: what lungray does with it\n\n"
        "Generated from `tests/test_bad_input.py` (`python tests/test_bad_input.py`); each row is one\n"
        "parametrised case of `test_bad_input` that builds the input, runs `lungray data check` (full decode)\n"
        "and, where it trains, the sweep's data preparation, and asserts the exact message below. `<root>`\n"
        "is the dataset root, `<tmp>` the folder around it. Exit status of `data check`: 0 when the dataset\n"
        "can be used (quarantined files and warnings listed), 1 when it cannot or, under `--strict`, on any\n"
        "problem or warning, 2 on a refused configuration. Everything here happens before any training.\n\n"
        f"{len(CASES)} kinds.\n\n"
        "| kind | caught before training | message | nothing lost |\n|---|---|---|---|\n"
    )
    rows = []
    for c in CASES:
        caught = _CAUGHT[c.outcome]
        caught = caught[c.stage] if isinstance(caught, dict) else caught
        msg = " / ".join(f"`{cell(s.replace('{root}', '<root>').replace('{tmp}', '<tmp>'))}`" for s in c.lines) or "(no message)"
        rows.append(f"| `{c.id}`: {cell(c.what)} | {caught} | {msg} | {c.lost or _LOST[c.outcome]} |")
    return head + "\n".join(rows) + "\n"


def test_table_is_in_sync_and_covers_30_kinds():
    assert len(CASES) >= 30 and len(set(CASE_IDS)) == len(CASE_IDS)
    assert TABLE.read_text() == table(), "regenerate with: python tests/test_bad_input.py"


if __name__ == "__main__":
    TABLE.write_text(table())
    print(f"wrote {TABLE} ({len(CASES)} kinds)")


# --------------------------------------------------------------------------------------------
# image bombs and big images, at their real size (issue 15 item 4)
# --------------------------------------------------------------------------------------------

# peak RSS from VmHWM (ru_maxrss survives exec on Linux: it would report pytest's own peak)
_HWM = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) // 1024"
_MEASURE = f"""
import sys
from lungray.data.decode import decode
base = {_HWM}
img = decode(sys.argv[1])
print(img.shape[0], img.shape[1], {_HWM} - base)
"""


def _real_png(path: Path, width: int, height: int, channels: int = 1, gradient: bool = True) -> Path:
    """A valid 8-bit PNG (a smooth gradient, or zeros: the bomb), written row by row."""
    comp = zlib.compressobj(9)
    row = (np.linspace(0, 255, width * channels) * gradient).astype(np.uint8).tobytes()
    color = {1: 0, 3: 2}[channels]
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0)))
        data = []
        for _ in range(height):
            data.append(comp.compress(b"\x00" + row))
        data.append(comp.flush())
        f.write(_png_chunk(b"IDAT", b"".join(data)))
        f.write(_png_chunk(b"IEND", b""))
    return path


@pytest.mark.slow
def test_real_decompression_bomb_is_quarantined_without_decoding(tmp_path):
    """A 30000 x 30000 PNG (under 1 MB on disk, 900 MB decoded): ``data check`` quarantines it
    from the header, prints no raw Pillow warning, and never allocates its pixels."""
    import subprocess
    import sys

    root = base(tmp_path / "ds")
    bomb = _real_png(root / "COVID" / "bomb.png", 30000, 30000, gradient=False)
    assert bomb.stat().st_size < 1_000_000
    code = f"import sys; from lungray.cli import main; rc = main(sys.argv[1:]); print('maxrss_mb', {_HWM}); sys.exit(rc)"
    p = subprocess.run([sys.executable, "-c", code, "data", "check", str(root), "--val-size", "2", "--no-duplicates",
                        "--min-eval-per-class", "1", "--min-val-per-class", "1"],
                       capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "PYTHONWARNINGS": "always"})
    assert p.returncode == 0, p.stderr
    assert "COVID/bomb.png: image too large (30000x30000 px = 900.0 megapixels; the limit is 89.5); downscale it" in p.stdout
    assert "DecompressionBomb" not in p.stdout + p.stderr and "Traceback" not in p.stderr
    assert int(p.stdout.split("maxrss_mb")[1]) < 600  # the pixels alone would be 900 MB


@pytest.mark.slow
def test_big_rgb_png_decodes_reduced_in_bounded_memory(tmp_path):
    """An 8000 x 8000 RGB PNG (64 MP, under the limit): decoded reduced by 4 to 2000 x 2000. The
    full-size float pipeline took +2.4 GB (float64 RGB + luma, measured); reduced, the peak is
    Pillow's own 256 MB buffer (RGB is stored 4 bytes a pixel) plus small change."""
    import subprocess
    import sys

    big = _real_png(tmp_path / "big.png", 8000, 8000, channels=3)
    p = subprocess.run([sys.executable, "-c", _MEASURE, str(big)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    h, w, extra_mb = map(int, p.stdout.split())
    assert (h, w) == (2000, 2000)
    print(f"decode of an 8000 x 8000 RGB PNG: +{extra_mb} MB peak RSS")
    assert extra_mb < 400, extra_mb
