"""Decoding: real DICOM test files shipped with pydicom / pydicom-data, and PNG/JPEG variants."""

from __future__ import annotations

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402
from PIL import Image  # noqa: E402

from lungray.data import decode as D  # noqa: E402
from lungray.data.preprocess import PREPROCESSING, apply_preprocessing, local_eq_radius  # noqa: E402
from lungray.errors import DataError  # noqa: E402


def _testfile(name: str) -> str:
    try:
        return get_testdata_file(name)
    except Exception as e:  # pragma: no cover - pydicom-data missing
        pytest.skip(f"pydicom test file {name} unavailable: {e}")


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rg1():
    """The RG1 chest CR (MONOCHROME1, 15-bit, window 15000/30000), uncompressed."""
    path = _testfile("RG1_UNCR.dcm")
    return path, D.decode(path)


def test_rg1_uncompressed_and_lossless_j2k_decode_identically(rg1):
    path, a = rg1
    b = D.decode(_testfile("RG1_J2KR.dcm"))
    assert a.dtype == np.float32 and a.shape == (1955, 1841)
    assert np.array_equal(a, b)


def test_rg1_monochrome1_is_inverted_so_bone_is_bright(rg1):
    path, x = rg1
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    raw = ds.pixel_array.astype(np.float64)
    # the window (15000 +- 15000) covers every stored value: decode is an exact negative linear map
    assert np.corrcoef(raw.ravel(), x.ravel())[0, 1] < -0.9999
    c, w = 15000.0, 30000.0
    expected = 1.0 - np.clip((raw - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(x, expected, atol=2e-6)
    # anatomy: the mediastinum/spine column is brighter than the lung fields, air corners darkest
    s = D.resize(x, 16)
    mediastinum = s[3:9, 7:9].mean()
    lungs = s[3:9, [4, 5, 10, 11]].mean()
    assert mediastinum > lungs + 0.15
    assert s[0, 0] < lungs and s[0, -1] < lungs


def test_ct_rescale_slope_intercept_applies_before_the_window(tmp_path):
    """CT_small stores raw values with intercept -1024; a soft-tissue window is in HU."""
    src = _testfile("CT_small.dcm")
    ds = pydicom.dcmread(src)
    assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
    ds.WindowCenter, ds.WindowWidth = 40, 400
    p = tmp_path / "ct_window.dcm"
    ds.save_as(p)
    x = D.decode(p)
    raw = ds.pixel_array.astype(np.float64)
    hu = raw - 1024
    expected = np.clip((hu - 39.5) / 399 + 0.5, 0, 1)
    np.testing.assert_allclose(x, expected, atol=1e-6)
    # by hand: stored 1064 -> 40 HU -> 0.5 + 0.5/399; stored <= 864 (<= -160 HU) -> black
    assert np.allclose(x[raw == 1064], 0.5 + 0.5 / 399, atol=1e-6) and (raw == 1064).any()
    assert np.all(x[raw <= 864] == 0) and np.all(x[raw >= 1264] == 1)
    # the same file via pydicom's own modality LUT + windowing gives the same image
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ref = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    lo, hi = -(2**15) * 1 - 1024, (2**15 - 1) - 1024  # pydicom's output range (signed 16-bit, rescaled)
    np.testing.assert_allclose(x, (ref - lo) / (hi - lo), atol=1e-5)


def test_ct_without_window_is_min_max_of_hounsfield_units():
    src = _testfile("CT_small.dcm")
    x = D.decode(src)
    raw = pydicom.dcmread(src).pixel_array.astype(np.float64)
    np.testing.assert_allclose(x, (raw - raw.min()) / (raw.max() - raw.min()), atol=1e-6)
    assert x.min() == 0.0 and x.max() == 1.0


def test_jpeg_ls_and_rle_decode_like_the_uncompressed_file():
    ref = D.decode(_testfile("MR_small.dcm"))
    for name in ("MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm"):
        ds = pydicom.dcmread(_testfile(name))
        assert ds.file_meta.TransferSyntaxUID.is_compressed
        assert np.array_equal(D.decode(_testfile(name)), ref), name


def test_multiframe_dicom_is_a_clear_error():
    path = _testfile("emri_small.dcm")
    with pytest.raises(DataError, match=r"emri_small\.dcm: multi-frame DICOM \(10 frames\)"):
        D.decode(path)
    assert D.probe(path) == "multi-frame DICOM (10 frames)"


def test_pixelless_dicom_is_a_clear_error():
    path = _testfile("rtplan.dcm")
    with pytest.raises(DataError, match=r"rtplan\.dcm: DICOM without pixel data"):
        D.decode(path)
    assert D.probe(path) == "DICOM without pixel data"


def test_compressed_dicom_without_a_decoder_is_a_clear_error(tmp_path):
    from pydicom.uid import MPEG2MPML

    ds = pydicom.dcmread(_testfile("MR_small_RLE.dcm"))
    ds.file_meta.TransferSyntaxUID = MPEG2MPML  # encapsulated, and no decoder exists for it
    p = tmp_path / "mpeg2.dcm"
    ds.save_as(p)
    with pytest.raises(DataError, match=r"mpeg2\.dcm: compressed DICOM \(MPEG2 .*\) with no decoder installed; install pylibjpeg"):
        D.decode(p)
    assert D.probe(p).startswith("compressed DICOM (MPEG2")


def test_dicom_info_keeps_no_identifiers():
    path = _testfile("RG1_UNCR.dcm")
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    info = D.dicom_info(path, salt="test-salt")
    assert info["modality"] == "CR" and info["width"] == 1841 and info["height"] == 1955
    assert info["photometric"] == "MONOCHROME1" and info["frames"] == 1
    text = repr(info)
    for kw in ("PatientID", "PatientName", "PatientBirthDate"):
        v = str(ds.get(kw, "") or "")
        if v:
            assert v not in text, kw
    assert info["patient_id"].startswith("p_") and len(info["patient_id"]) == 18
    assert D.dicom_info(path, salt="other")["patient_id"] != info["patient_id"]


def test_phantom_dicom_roundtrip_monochrome1_16bit(tmp_path):
    """A MONOCHROME1 12-bit phantom DICOM (no window) decodes to the min-max of the original."""
    from lungray.data.phantom import generate_phantom, write_dicom

    img = generate_phantom(1, resolution=32).images[0]
    p = write_dicom(tmp_path / "a.dcm", img, bits=12, photometric="MONOCHROME1")
    x = D.decode(p)
    f = img.astype(np.float64)
    np.testing.assert_allclose(x, (f - f.min()) / (f.max() - f.min()), atol=2 / 4095)


# --------------------------------------------------------------------------------------------
# PNG / JPEG
# --------------------------------------------------------------------------------------------


@pytest.fixture()
def rng():
    return np.random.default_rng(0)


def test_png_8bit_and_16bit_gray(tmp_path, rng):
    a8 = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    a16 = rng.integers(0, 65536, (20, 30), dtype=np.uint16)
    Image.fromarray(a8).save(tmp_path / "g8.png")
    Image.fromarray(a16).save(tmp_path / "g16.png")
    np.testing.assert_allclose(D.decode(tmp_path / "g8.png"), a8 / 255.0, atol=1e-7)
    np.testing.assert_allclose(D.decode(tmp_path / "g16.png"), a16 / 65535.0, atol=1e-7)


def test_png_rgb_rgba_palette_use_itu601_luma(tmp_path, rng):
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    luma = rgb.astype(np.float64) @ [0.299, 0.587, 0.114] / 255.0
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_allclose(D.decode(tmp_path / "rgb.png"), luma, atol=1e-6)
    alpha = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "rgba.png")
    np.testing.assert_allclose(D.decode(tmp_path / "rgba.png"), luma * alpha / 255.0, atol=1e-6)
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(tmp_path / "pal.png")
    mapped = np.asarray(pal.convert("RGB")).astype(np.float64) @ [0.299, 0.587, 0.114] / 255.0
    np.testing.assert_allclose(D.decode(tmp_path / "pal.png"), mapped, atol=1e-6)


def test_png_16bit_rgb_keeps_16_bits(tmp_path, rng):
    import cv2

    bgr = rng.integers(0, 65536, (20, 30, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "rgb16.png"), bgr)
    expected = bgr[..., ::-1].astype(np.float64) @ [0.299, 0.587, 0.114] / 65535.0
    np.testing.assert_allclose(D.decode(tmp_path / "rgb16.png"), expected, atol=1e-6)


def test_jpeg_gray_is_close_to_the_source(tmp_path):
    g = np.tile(np.linspace(0, 255, 32), (32, 1)).astype(np.uint8)
    Image.fromarray(g).save(tmp_path / "g.jpg", quality=95)
    assert np.abs(D.decode(tmp_path / "g.jpg") - g / 255.0).max() < 0.03


@pytest.mark.parametrize(
    "name,content,reason",
    [
        ("zero.png", b"", "zero-byte file"),
        ("text.png", b"this is a text file, not a PNG\n", "not an image (unrecognised content)"),
    ],
)
def test_bad_files_are_named_errors(tmp_path, name, content, reason):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(DataError) as e:
        D.decode(p)
    assert str(e.value).startswith(f"{p}: {reason}")
    assert D.probe(p) == reason


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_images_are_detected(tmp_path, rng, suffix):
    full = tmp_path / f"full{suffix}"
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(full)
    cut = tmp_path / f"cut{suffix}"
    b = full.read_bytes()
    cut.write_bytes(b[: len(b) // 2])
    assert D.probe(full) == ""
    assert D.probe(cut) == "truncated image"
    with pytest.raises(DataError, match="truncated"):
        D.decode(cut)


def test_missing_file_and_sniff(tmp_path):
    assert D.probe(tmp_path / "nope.png") == "missing file"
    with pytest.raises(DataError, match="missing file"):
        D.decode(tmp_path / "nope.png")
    assert D.sniff(_testfile("CT_small.dcm")) == "dicom"


def test_npz_rows_decode(tmp_path, rng):
    imgs = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "m.npz", train_images=imgs, train_labels=np.zeros((5, 1)))
    x = D.decode(f"{tmp_path / 'm.npz'}::train/3")
    np.testing.assert_allclose(x, imgs[3] / 255.0, atol=1e-7)


# --------------------------------------------------------------------------------------------
# resize, storage, preprocessing
# --------------------------------------------------------------------------------------------


def test_resize_stretch_and_letterbox():
    img = np.ones((20, 40), np.float32)
    s = D.resize(img, 32, "stretch")
    assert s.shape == (32, 32) and np.allclose(s, 1)
    lb = D.resize(img, 32, "letterbox")  # scale 0.8 -> 16 x 32, centred: rows 8..23
    assert lb.shape == (32, 32)
    assert np.all(lb[:8] == 0) and np.all(lb[24:] == 0) and np.allclose(lb[8:24], 1)
    tall = D.resize(np.ones((40, 10), np.float32), 16, "letterbox")  # 16 x 4, cols 6..9
    assert np.allclose(tall[:, 6:10], 1) and np.all(tall[:, :6] == 0) and np.all(tall[:, 10:] == 0)
    with pytest.raises(DataError, match="valid choices: stretch, letterbox"):
        D.resize(img, 32, "crop")


def test_to_storage_rounds_and_clips():
    x = np.array([[0.0, 0.5, 1.0, 1.2, -0.1]], np.float32)
    assert D.to_storage(x, "uint8").tolist() == [[0, 128, 255, 255, 0]]
    assert D.to_storage(x, "uint16").tolist() == [[0, 32768, 65535, 65535, 0]]


def test_preprocessing_registry_shapes_ranges_and_effect(rng):
    assert PREPROCESSING.names() == ["center_crop", "clahe", "hist_eq", "local_eq", "none"]
    # a low-contrast image: values in [0.4, 0.5]
    img = (0.4 + 0.1 * rng.random((64, 64))).astype(np.float32)
    for name in ("clahe", "hist_eq", "local_eq", "none"):  # center_crop is no equaliser (tests/test_protocol_elements.py)
        out = apply_preprocessing(name, img, 64)
        assert out.shape == img.shape and out.dtype == np.float32
        assert 0.0 <= out.min() and out.max() <= 1.0
        if name == "none":
            assert np.array_equal(out, img)
        else:  # every equaliser widens the histogram of a low-contrast image
            assert out.std() > 2 * img.std(), name
    he = apply_preprocessing("hist_eq", img, 64)
    assert abs(he.mean() - 0.5) < 0.05  # global equalisation flattens the histogram
    assert local_eq_radius(299) == 70 and local_eq_radius(64) == 15


def test_clahe_matches_opencv_on_8_bits(rng):
    import cv2

    img = rng.random((32, 32)).astype(np.float32)
    u8 = np.rint(img * 255).astype(np.uint8)
    ref = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(u8) / 255.0
    np.testing.assert_allclose(apply_preprocessing("clahe", img, 32), ref, atol=1e-6)
