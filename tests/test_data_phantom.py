"""The phantom: deterministic per image, class findings with masks exactly for non-Normal images,
patients that share anatomy and label, findings whose contrast follows ``difficulty``, DICOM
output that pydicom reads back, and a sample sheet a person can look at. (That a small CNN learns
it, and how fast, is measured in the module docstring; the training tests train on it.)"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from lungray.data import phantom
from lungray.data.phantom import CLASS_NAMES, generate_phantom, render_case, write_dicom, write_sample_sheet
from lungray.errors import ConfigError


@pytest.fixture(scope="module")
def four():
    return generate_phantom(48, n_classes=4, resolution=48, seed=1)


def test_image_i_does_not_depend_on_n():
    small = generate_phantom(5, resolution=32, seed=3)
    big = generate_phantom(23, resolution=32, seed=3)
    for f in ("images", "masks", "labels", "ids", "patient_ids"):
        assert np.array_equal(getattr(small, f), getattr(big, f)[:5]), f
    case = render_case(17, resolution=32, seed=3)
    assert np.array_equal(case.image, big.images[17]) and np.array_equal(case.mask, big.masks[17])
    assert (case.label, case.image_id, case.patient_id) == (big.labels[17], big.ids[17], big.patient_ids[17])
    assert case.class_name == big.class_names[big.labels[17]]
    # same call, same bytes; another seed, other images
    again = generate_phantom(5, resolution=32, seed=3)
    assert hashlib.sha256(again.images.tobytes()).digest() == hashlib.sha256(small.images.tobytes()).digest()
    other = generate_phantom(5, resolution=32, seed=4)
    assert not np.array_equal(other.images, small.images)
    assert len(set(other.ids) & set(small.ids)) == 0


def test_shapes_dtypes_and_class_names(four):
    two = generate_phantom(6, resolution=40)
    assert two.images.shape == two.masks.shape == (6, 40, 40)
    assert two.images.dtype == two.masks.dtype == np.uint8 and two.labels.dtype == np.int64
    assert two.class_names == ("Normal", "COVID") == CLASS_NAMES[2]
    assert four.class_names == ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
    assert set(np.unique(four.labels)) == {0, 1, 2, 3}
    assert len(set(four.ids)) == len(four) == 48
    assert set(np.unique(four.masks)) <= {0, 1}
    # a radiograph: dark air outside the body in some corner, bright mediastinum/abdomen, full range
    assert four.images.max() >= 200 and four.images.min() <= 40


def test_masks_are_nonempty_exactly_for_abnormal_classes(four):
    normal = four.class_names.index("Normal")
    area = four.masks.reshape(len(four), -1).sum(axis=1)
    assert np.all(area[four.labels == normal] == 0)
    assert np.all(area[four.labels != normal] > 0)
    # typical extents: patches (COVID) are small, consolidation a lobe, interstitial both lungs
    med = {c: np.median(area[four.labels == four.class_names.index(c)]) for c in ("COVID", "Lung_Opacity", "Viral Pneumonia")}
    assert med["COVID"] < med["Lung_Opacity"] < med["Viral Pneumonia"]


def test_findings_are_denser_where_the_mask_is():
    # the same cases with strong (difficulty 0.25) and faint (4.0) findings: same labels and
    # masks (a mask marks where the finding is, not how visible it is), and the pixels under the
    # mask are brighter when the finding is strong
    strong = generate_phantom(60, n_classes=4, resolution=48, difficulty=0.25, seed=2)
    faint = generate_phantom(60, n_classes=4, resolution=48, difficulty=4.0, seed=2)
    assert np.array_equal(strong.labels, faint.labels) and np.array_equal(strong.masks, faint.masks)
    abnormal = np.flatnonzero(strong.masks.reshape(60, -1).any(axis=1))
    gain = [strong.images[i][strong.masks[i] > 0].mean() - faint.images[i][strong.masks[i] > 0].mean() for i in abnormal]
    assert np.mean(gain) > 5 and np.median(gain) > 0
    outside = [strong.images[i][strong.masks[i] == 0].mean() - faint.images[i][strong.masks[i] == 0].mean() for i in abnormal]
    assert np.mean(gain) > np.mean(outside) + 5


def test_patients_share_label_and_have_one_to_four_images():
    ph = generate_phantom(200, resolution=8, seed=0)
    pids, first, counts = np.unique(ph.patient_ids, return_index=True, return_counts=True)
    assert counts.min() >= 1 and counts.max() <= 4 and (counts > 1).sum() > 20
    for p in pids:
        rows = np.flatnonzero(ph.patient_ids == p)
        assert np.array_equal(rows, np.arange(rows[0], rows[-1] + 1))  # consecutive images
        assert len(set(ph.labels[rows])) == 1
    # labels balanced per block of two patients: patient counts per class differ by at most 1
    per_patient = ph.labels[first]
    assert abs(int((per_patient == 0).sum()) - int((per_patient == 1).sum())) <= 1


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="n_classes must be 2 or 4, got 3"):
        generate_phantom(4, n_classes=3)
    with pytest.raises(ConfigError, match="difficulty must be a number > 0"):
        generate_phantom(4, difficulty=0)
    with pytest.raises(ConfigError, match="resolution must be an integer >= 8"):
        generate_phantom(4, resolution=4)
    with pytest.raises(ConfigError, match="size must be a positive integer"):
        generate_phantom(0)
    with pytest.raises(ConfigError, match="seed must be an integer >= 0"):
        generate_phantom(2, seed=-1)


@pytest.mark.parametrize("bits,photometric", [(8, "MONOCHROME2"), (12, "MONOCHROME1"), (16, "MONOCHROME2")])
def test_dicom_roundtrip(tmp_path, bits, photometric):
    import pydicom

    case = render_case(3, n_classes=4, resolution=32, seed=0)
    p = write_dicom(tmp_path / "x.dcm", case.image, bits=bits, photometric=photometric,
                    patient_id=case.patient_id, image_id=case.image_id, class_name=case.class_name)
    ds = pydicom.dcmread(p)
    px = ds.pixel_array
    top = (1 << bits) - 1
    assert (ds.Rows, ds.Columns, ds.BitsStored, ds.PhotometricInterpretation) == (32, 32, bits, photometric)
    assert ds.Modality == "CR" and ds.SamplesPerPixel == 1
    expect = case.image.astype(np.int64) if bits == 8 else np.round(case.image * (top / 255.0)).astype(np.int64)
    if photometric == "MONOCHROME1":
        expect = top - expect
    assert np.array_equal(px.astype(np.int64), expect)
    # synthetic identifiers only
    assert ds.PatientID == case.patient_id and str(ds.PatientName) == "Phantom^Synthetic"
    assert "PatientBirthDate" not in ds and "InstitutionName" not in ds
    assert case.class_name in ds.ImageComments
    # deterministic bytes (UIDs derived from the ids)
    q = write_dicom(tmp_path / "y.dcm", case.image, bits=bits, photometric=photometric,
                    patient_id=case.patient_id, image_id=case.image_id, class_name=case.class_name)
    assert p.read_bytes() == q.read_bytes()


def test_write_phantom_dicoms(tmp_path):
    import pydicom

    ph = generate_phantom(4, resolution=16)
    paths = phantom.write_phantom_dicoms(tmp_path / "dcm", ph, bits=12)
    assert [p.name for p in paths] == [f"{i}.dcm" for i in ph.ids]
    assert len({pydicom.dcmread(p).SOPInstanceUID for p in paths}) == 4


def test_sample_sheet_and_cli(tmp_path):
    from PIL import Image

    out = write_sample_sheet(tmp_path / "sheet.png", n_classes=4, per_class=2, resolution=64, dicom_dir=tmp_path / "d")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 300
        px = np.asarray(im.convert("L"))
    assert px.std() > 20  # not blank
    assert len(list((tmp_path / "d").glob("*.dcm"))) == 8
    assert phantom.main(["--out", str(tmp_path / "cli.png"), "--classes", "2", "--per-class", "1", "--resolution", "32"]) == 0
    assert (tmp_path / "cli.png").stat().st_size > 1000
    assert phantom.main(["--out", str(tmp_path / "bad.png"), "--difficulty", "-1"]) == 2
