"""Every dataset adapter on a generated tree in the real download layout (phantom images)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lungray.config import DataConfig
from lungray.data.adapters import ADAPTERS, build_manifest
from lungray.data.manifest import COLUMNS, class_names_of, hash_image_id, id_salt, validate_manifest
from lungray.errors import DataError


@pytest.fixture(scope="module")
def imgs():
    from lungray.data.phantom import generate_phantom

    return generate_phantom(12, resolution=24).images


def _png(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


def _counts(df: pd.DataFrame) -> dict[str, int]:
    good = df[df["problem"] == ""]
    return {k: int(v) for k, v in good["label"].value_counts().sort_index().items()}


def test_registry_has_every_layout():
    assert ADAPTERS.names() == ["covid_ct_xray", "covid_radiography", "csv", "folder", "medmnist", "phantom", "rsna"]


def test_phantom_adapter():
    df = build_manifest(DataConfig(phantom_n=30, phantom_classes=4, resolution=16))
    validate_manifest(df)
    assert list(df.columns) == list(COLUMNS)
    assert class_names_of(df) == ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
    assert len(df) == 30 and (df["problem"] == "").all()
    from lungray.data.adapters import parse_phantom_uri, phantom_spec
    from lungray.data.phantom import PhantomSpec, generate_phantom

    spec = phantom_spec(DataConfig(phantom_classes=4))
    assert spec == PhantomSpec(n_classes=4)
    assert df["path"].iloc[7] == f"phantom://{spec.key}/7" and parse_phantom_uri(df["path"].iloc[7]) == (spec, 7)
    assert df["image_id"].iloc[7] == "phantom-s0-000007"
    assert df["patient_id"].str.match(r"^p_[0-9a-f]{16}$").all()
    assert df["patient_id"].nunique() < 30  # patients have several images
    ph = generate_phantom(30, n_classes=4, resolution=16)
    assert np.array_equal(df["class_index"].to_numpy(), ph.labels)
    assert df["site"].tolist() == [f"site-{s}" for s in ph.sites]
    # a Kaggle-like phantom: no patient ids in the manifest (only the audit's clusters group copies)
    hidden = build_manifest(DataConfig(phantom_n=30, phantom_patient_ids=False, resolution=16))
    assert (hidden["patient_id"] == "").all() and (hidden["site"] != "").all()
    with pytest.raises(DataError, match="malformed phantom path"):
        parse_phantom_uri("phantom://seed=0/bogus=1/3")


# --------------------------------------------------------------------------------------------
# COVID-19 Radiography Database
# --------------------------------------------------------------------------------------------

RADIO_COUNTS = {"COVID": 3, "Lung_Opacity": 2, "Normal": 4, "Viral Pneumonia": 1}


@pytest.fixture()
def radiography_tree(tmp_path, imgs):
    root = tmp_path / "download" / "COVID-19_Radiography_Dataset"
    k = 0
    for cls, n in RADIO_COUNTS.items():
        for i in range(n):
            _png(root / cls / "images" / f"{cls}-{i + 1}.png", imgs[k % len(imgs)])
            _png(root / cls / "masks" / f"{cls}-{i + 1}.png", np.zeros((24, 24), np.uint8))
            k += 1
        (root / f"{cls}.metadata.xlsx").write_bytes(b"PK\x03\x04 not really a spreadsheet")
    (root / "README.md.txt").write_text("COVID-19 Radiography Database")
    return tmp_path / "download"


def test_covid_radiography_layout(radiography_tree):
    df = build_manifest(DataConfig(source="covid_radiography", path=str(radiography_tree)))
    validate_manifest(df)
    assert class_names_of(df) == ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
    assert _counts(df) == RADIO_COUNTS  # masks/ are not images of a class, xlsx ignored
    assert not df["path"].str.contains("/masks/").any()
    # image ids are salted hashes of the relative path (file names may hold patient ids)
    assert hash_image_id("Viral Pneumonia/images/Viral Pneumonia-1", id_salt("covid_radiography")) in set(df["image_id"])
    assert (df["source"] == "covid_radiography").all() and (df["modality"] == "XR").all()
    assert (df["class_index"] == df["label"].map({c: i for i, c in enumerate(class_names_of(df))})).all()


def test_covid_radiography_class_map_two_class_and_drop(radiography_tree):
    cmap = {"COVID": "COVID", "Lung_Opacity": "rest", "Normal": "rest", "Viral Pneumonia": "rest"}
    df = build_manifest(DataConfig(source="covid_radiography", path=str(radiography_tree), class_map=cmap))
    assert class_names_of(df) == ["COVID", "rest"]
    assert _counts(df) == {"COVID": 3, "rest": 7}
    drop = {"COVID": "COVID", "Lung_Opacity": None, "Normal": "Normal", "Viral Pneumonia": None}
    df = build_manifest(DataConfig(source="covid_radiography", path=str(radiography_tree), class_map=drop))
    assert class_names_of(df) == ["COVID", "Normal"]
    assert len(df) == 7 and _counts(df) == {"COVID": 3, "Normal": 4}


def test_covid_radiography_unknown_label_is_quarantined(radiography_tree):
    cmap = {"COVID": "COVID", "Normal": "Normal", "Lung_Opacity": "Normal"}  # forgot Viral Pneumonia
    df = build_manifest(DataConfig(source="covid_radiography", path=str(radiography_tree), class_map=cmap))
    bad = df[df["problem"] != ""]
    assert len(bad) == 1
    assert bad["problem"].iloc[0] == "unknown label 'Viral Pneumonia' (not in data.class_map)"
    assert bad["class_index"].iloc[0] == -1


def test_covid_radiography_old_flat_layout(tmp_path, imgs):
    for cls, n in (("COVID", 2), ("NORMAL", 3), ("Viral Pneumonia", 1)):
        for i in range(n):
            _png(tmp_path / cls / f"{cls} ({i + 1}).png", imgs[i])
    df = build_manifest(DataConfig(source="covid_radiography", path=str(tmp_path)))
    assert class_names_of(df) == ["COVID", "Normal", "Viral Pneumonia"]  # NORMAL -> canonical spelling
    assert _counts(df) == {"COVID": 2, "Normal": 3, "Viral Pneumonia": 1}


def test_covid_radiography_wrong_tree_is_a_clear_error(tmp_path):
    (tmp_path / "cats").mkdir()
    with pytest.raises(DataError, match="no COVID-19 Radiography Database class folders"):
        build_manifest(DataConfig(source="covid_radiography", path=str(tmp_path)))


# --------------------------------------------------------------------------------------------
# COVID-19 X-ray and CT (training-size study)
# --------------------------------------------------------------------------------------------


@pytest.fixture()
def ct_xray_tree(tmp_path, imgs):
    root = tmp_path / "COVID-19 Dataset"
    for mod, cls, n in (("CT", "COVID", 3), ("CT", "non-COVID", 2), ("X-ray", "COVID", 1), ("X-ray", "Non-COVID", 4)):
        for i in range(n):
            _png(root / mod / cls / f"img_{i}.png", imgs[i])
    return tmp_path


def test_covid_ct_xray_modality_picks_the_subtree(ct_xray_tree):
    ct = build_manifest(DataConfig(source="covid_ct_xray", path=str(ct_xray_tree), modality="CT"))
    assert class_names_of(ct) == ["COVID", "Non-COVID"]  # 'non-COVID' folder -> canonical name
    assert _counts(ct) == {"COVID": 3, "Non-COVID": 2}
    assert (ct["modality"] == "CT").all() and ct["path"].str.contains("/CT/").all()
    tree = (Path(ct_xray_tree) / "COVID-19 Dataset").resolve()
    rel = [Path(p).relative_to(tree).with_suffix("").as_posix() for p in ct["path"]]
    assert rel[0].startswith("CT/COVID/")  # ids hash 'CT/<class>/<file>': no clash with the X-ray tree's
    assert list(ct["image_id"]) == [hash_image_id(r, id_salt("covid_ct_xray")) for r in rel]
    xr = build_manifest(DataConfig(source="covid_ct_xray", path=str(ct_xray_tree), modality="x_ray"))
    assert _counts(xr) == {"COVID": 1, "Non-COVID": 4}
    assert not set(ct["path"]) & set(xr["path"])


def test_covid_ct_xray_needs_a_valid_modality(ct_xray_tree):
    with pytest.raises(DataError, match="data.modality is required"):
        build_manifest(DataConfig(source="covid_ct_xray", path=str(ct_xray_tree)))
    with pytest.raises(DataError, match="valid choices: CT, X-ray"):
        build_manifest(DataConfig(source="covid_ct_xray", path=str(ct_xray_tree), modality="MRI"))


# --------------------------------------------------------------------------------------------
# RSNA
# --------------------------------------------------------------------------------------------

PIDS = ["0004cfab-14fd-4e49-80ba-63a80b6bddd6", "00313ee0-9eaa-42f4-b0ab-c148ed3241cd", "00322d4d-1c29-4943-afc9-b6754be640eb", "003d8fa0-6bf1-40ed-b54c-ac657f8495c5"]


@pytest.fixture()
def rsna_tree(tmp_path, imgs):
    from lungray.data.phantom import write_dicom

    img_dir = tmp_path / "stage_2_train_images"
    for i, pid in enumerate(PIDS[:3]):  # the 4th patient's DICOM is missing
        write_dicom(img_dir / f"{pid}.dcm", imgs[i], patient_id=pid, image_id=pid)
    (tmp_path / "stage_2_train_labels.csv").write_text(
        "patientId,x,y,width,height,Target\n"
        f"{PIDS[0]},,,,,0\n"
        f"{PIDS[1]},264.0,152.0,213.0,379.0,1\n"
        f"{PIDS[1]},562.0,152.0,256.0,453.0,1\n"
        f"{PIDS[2]},,,,,0\n"
        f"{PIDS[3]},10,20,30,40,1\n"
    )
    (tmp_path / "stage_2_detailed_class_info.csv").write_text(
        "patientId,class\n"
        f"{PIDS[0]},No Lung Opacity / Not Normal\n"
        f"{PIDS[1]},Lung Opacity\n"
        f"{PIDS[1]},Lung Opacity\n"
        f"{PIDS[2]},Normal\n"
        f"{PIDS[3]},Lung Opacity\n"
    )
    return tmp_path


def test_rsna_two_class_with_boxes(rsna_tree):
    df = build_manifest(DataConfig(source="rsna", path=str(rsna_tree)))
    validate_manifest(df)
    assert class_names_of(df) == ["Lung Opacity", "No Lung Opacity"]
    assert len(df) == 4  # one row per patient, not per box
    by_path = {Path(p).stem: r for p, r in zip(df["path"], df.to_dict("records"))}
    assert json.loads(by_path[PIDS[1]]["boxes"]) == [[264.0, 152.0, 213.0, 379.0], [562.0, 152.0, 256.0, 453.0]]
    assert json.loads(by_path[PIDS[0]]["boxes"]) == []
    assert by_path[PIDS[1]]["label"] == "Lung Opacity" and by_path[PIDS[0]]["label"] == "No Lung Opacity"
    missing = by_path[PIDS[3]]
    assert missing["problem"] == "missing DICOM file (stage_2_train_labels.csv row 5 (line 6))"
    # the patientId is the DICOM PatientID: image and patient ids are salted hashes, never the raw id
    for pid in PIDS:
        assert not df["image_id"].str.contains(pid).any()
        assert not df["patient_id"].str.contains(pid).any()
    assert df["patient_id"].nunique() == 4


def test_rsna_three_detailed_classes_via_class_map(rsna_tree):
    cmap = {"Lung Opacity": "Lung Opacity", "Normal": "Normal", "No Lung Opacity / Not Normal": "Not Normal"}
    df = build_manifest(DataConfig(source="rsna", path=str(rsna_tree), class_map=cmap))
    assert class_names_of(df) == ["Lung Opacity", "Normal", "Not Normal"]
    good = df[df["problem"] == ""]
    assert sorted(good["label"]) == ["Lung Opacity", "Normal", "Not Normal"]


def test_rsna_missing_labels_csv_is_a_clear_error(tmp_path):
    (tmp_path / "stage_2_train_images").mkdir()
    with pytest.raises(DataError, match="no stage_2_train_labels.csv"):
        build_manifest(DataConfig(source="rsna", path=str(tmp_path)))


# --------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------


def test_csv_relative_paths_patients_splits_and_missing_rows(tmp_path, imgs):
    for i in range(4):
        _png(tmp_path / "imgs" / f"{i}.png", imgs[i])
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "path,label,patient_id,split\n"
        "imgs/0.png,COVID,P1,train\n"
        "imgs/1.png,Normal,P1,train\n"
        f"{tmp_path / 'imgs' / '2.png'},Normal,P2,test\n"
        "imgs/404.png,Normal,P3,train\n"
        "imgs/3.png,,P4,validation\n"
    )
    df = build_manifest(DataConfig(source="csv", path=str(csv)))
    validate_manifest(df)
    assert class_names_of(df) == ["COVID", "Normal"]
    assert df["path"].iloc[0] == str((tmp_path / "imgs" / "0.png").resolve())
    assert df["split"].tolist() == ["train", "train", "test", "train", "val"]
    assert df["problem"].iloc[3] == "missing file 'imgs/404.png' (labels.csv row 4 (line 5))"
    assert df["problem"].iloc[4] == "empty label (labels.csv row 5 (line 6))"
    assert (df["problem"].iloc[:3] == "").all()
    pid = df["patient_id"]
    assert pid.iloc[0] == pid.iloc[1] != pid.iloc[2] and not pid.str.contains("P1").any()


def test_csv_without_label_column_is_a_clear_error(tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text("file,diagnosis\na.png,COVID\n")
    with pytest.raises(DataError, match=r"bad\.csv: missing column\(s\) path, label; found file, diagnosis"):
        build_manifest(DataConfig(source="csv", path=str(csv)))


# --------------------------------------------------------------------------------------------
# MedMNIST and folder
# --------------------------------------------------------------------------------------------


def test_medmnist_npz(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "pneumoniamnist.npz"
    np.savez(
        p,
        train_images=rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        train_labels=np.array([[0], [1], [1], [0], [1], [1]]),
        val_images=rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
        val_labels=np.array([[0], [1]]),
        test_images=rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        test_labels=np.array([[1], [0], [0]]),
    )
    df = build_manifest(DataConfig(source="medmnist", path=str(p)))
    validate_manifest(df)
    assert class_names_of(df) == ["Normal", "Pneumonia"]
    assert df["split"].value_counts().to_dict() == {"train": 6, "test": 3, "val": 2}
    assert df["class_index"].tolist() == [0, 1, 1, 0, 1, 1, 0, 1, 1, 0, 0]
    assert df["path"].iloc[8] == f"{p.resolve()}::test/0"
    bad = tmp_path / "chestmnist.npz"
    np.savez(bad, train_images=np.zeros((2, 28, 28), np.uint8), train_labels=np.zeros((2, 14), np.uint8))
    with pytest.raises(DataError, match="multi-label MedMNIST sets"):
        build_manifest(DataConfig(source="medmnist", path=str(bad)))


def test_folder_layout_with_split_folders(tmp_path, imgs):
    for split, cls, n in (("train", "NORMAL", 3), ("train", "PNEUMONIA", 2), ("test", "NORMAL", 1), ("test", "PNEUMONIA", 1)):
        for i in range(n):
            _png(tmp_path / split / cls / f"{i}.jpeg", imgs[i])
    (tmp_path / "train" / "NORMAL" / "notes.txt").write_text("not an image suffix: ignored")
    df = build_manifest(DataConfig(source="folder", path=str(tmp_path)))
    assert class_names_of(df) == ["NORMAL", "PNEUMONIA"]
    assert df.groupby(["split", "label"]).size().to_dict() == {
        ("test", "NORMAL"): 1, ("test", "PNEUMONIA"): 1, ("train", "NORMAL"): 3, ("train", "PNEUMONIA"): 2
    }


def test_folder_empty_class_keeps_its_name(tmp_path, imgs):
    _png(tmp_path / "A" / "0.png", imgs[0])
    (tmp_path / "B").mkdir()
    df = build_manifest(DataConfig(source="folder", path=str(tmp_path)))
    assert class_names_of(df) == ["A", "B"]
    with pytest.raises(DataError, match="does not exist"):
        build_manifest(DataConfig(source="folder", path=str(tmp_path / "nope")))


# --------------------------------------------------------------------------------------------
# the manifest schema itself
# --------------------------------------------------------------------------------------------


def test_validate_manifest_names_the_broken_column_and_row():
    df = build_manifest(DataConfig(phantom_n=6, resolution=16))
    with pytest.raises(DataError, match=r"manifest: missing column\(s\) sha256"):
        validate_manifest(df.drop(columns=["sha256"]))
    bad = df.copy()
    bad["width"] = bad["width"].astype(float)
    with pytest.raises(DataError, match="column 'width' must hold integers"):
        validate_manifest(bad)
    bad = df.copy()
    bad.loc[2, "label"] = "COVID" if bad.loc[2, "label"] == "Normal" else "Normal"
    with pytest.raises(DataError, match="row 2 label"):
        validate_manifest(bad)
    bad = df.copy()
    bad.loc[4, "split"] = "holdout"
    with pytest.raises(DataError, match="row 4 split 'holdout' is not one of train, val, test"):
        validate_manifest(bad)


def test_patient_hash_salt_comes_from_the_environment(monkeypatch):
    from lungray.data.manifest import hash_patient_id, id_salt

    monkeypatch.delenv("LUNGRAY_ID_SALT", raising=False)
    a = hash_patient_id("PAT-1", id_salt("rsna"))
    assert a == hash_patient_id("PAT-1", id_salt("rsna")) != hash_patient_id("PAT-1", id_salt("csv"))
    monkeypatch.setenv("LUNGRAY_ID_SALT", "site-secret")
    assert hash_patient_id("PAT-1", id_salt("rsna")) != a
    assert hash_patient_id("", "x") == "" and hash_patient_id(None, "x") == ""
