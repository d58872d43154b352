"""``check_dataset``: every bad-input kind is found, named on one line, quarantined or fatal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lungray.config import DataConfig
from lungray.data.check import check_dataset, guess_source, problem_kind
from lungray.errors import DataError

# the minimums of a real study (data.min_eval_per_class 10, min_val_per_class 3) refuse these
# few-file fixtures; the tests of other checks lift them
TINY = {"min_eval_per_class": 1, "min_val_per_class": 1}
TINY_CLI = ["--min-eval-per-class", "1", "--min-val-per-class", "1"]


@pytest.fixture(scope="module")
def imgs():
    from lungray.data.phantom import generate_phantom

    return generate_phantom(40, resolution=24).images


def _png(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


@pytest.fixture()
def bad_tree(tmp_path, imgs):
    """A class-per-folder tree with one file of every bad kind in class A."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import MPEG2MPML

    from lungray.data.phantom import write_dicom

    root = tmp_path / "ds"
    for i in range(6):
        _png(root / "A" / f"good{i}.png", imgs[i])
        _png(root / "B" / f"good{i}.png", imgs[10 + i])
    write_dicom(root / "B" / "good.dcm", imgs[20], patient_id="SECRET-PATIENT-42")
    (root / "A" / "zero.png").write_bytes(b"")
    full = _png(tmp_path / "full.png", imgs[30]).read_bytes()
    (root / "A" / "truncated.png").write_bytes(full[: len(full) // 2])
    (root / "A" / "text.png").write_text("I am a text file with an image suffix\n")
    (root / "A" / "plan.dcm").write_bytes(Path(get_testdata_file("rtplan.dcm")).read_bytes())
    (root / "A" / "cine.dcm").write_bytes(Path(get_testdata_file("emri_small.dcm")).read_bytes())
    ds = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.save_as(root / "A" / "mpeg.dcm")
    return root


EXPECTED_A = {  # each line: the file, the reason (the manifest's problem column), what to do
    "A/zero.png: zero-byte file; re-download or remove it",
    "A/truncated.png: truncated image; re-download or remove it",
    "A/text.png: not an image (unrecognised content); remove it or fix its format",
    "A/plan.dcm: DICOM without pixel data; it is not an image (report, RT plan...); remove it",
    "A/cine.dcm: multi-frame DICOM (10 frames); lungray reads one image per file; save the frame you want as its own file",
    "A/mpeg.dcm: compressed DICOM (MPEG2 Main Profile / Main Level) with no decoder installed; install pylibjpeg, "
    "pylibjpeg-openjpeg, pylibjpeg-libjpeg and pylibjpeg-rle (or python-gdcm), or convert the file to an uncompressed "
    "transfer syntax",
}


def test_every_bad_file_kind_is_quarantined_with_one_line(bad_tree):
    lines: list[str] = []
    # val_size=2: one validation image per class (with 0.1, 1 image: a class never validated is a warning)
    rep = check_dataset(DataConfig(source="folder", path=str(bad_tree), val_size=2, **TINY), echo=lines.append)
    assert set(rep.problems) == EXPECTED_A
    assert set(lines[:-1]) == EXPECTED_A
    assert lines[-1] == rep.summary
    assert rep.summary.startswith("6 of 19 images quarantined (")
    assert "usable per class: A 6, B 7" in rep.summary
    assert not rep.ok and rep.n_quarantined == 6
    assert rep.class_counts == {"A": 6, "B": 7}
    m = rep.manifest
    assert (m.loc[m["path"].str.endswith("/A/zero.png"), "problem"] == "zero-byte file").all()
    assert (m.loc[m["path"].str.contains("/B/"), "problem"] == "").all()
    assert rep.counts["zero-byte file"] == 1 and rep.counts["multi-frame DICOM"] == 1
    assert all("SECRET-PATIENT" not in s for s in lines)


def test_strict_raises_after_reporting(bad_tree):
    lines: list[str] = []
    with pytest.raises(DataError, match=r"data check failed \(strict\): 6 of 19 images quarantined"):
        check_dataset(DataConfig(source="folder", path=str(bad_tree), val_size=2, **TINY), strict=True, echo=lines.append)
    assert set(lines[:-1]) == EXPECTED_A  # everything was listed before failing


def test_unknown_label_and_empty_class(tmp_path, imgs):
    for i in range(3):
        _png(tmp_path / "COVID" / f"{i}.png", imgs[i])
        _png(tmp_path / "Normal" / f"{i}.png", imgs[5 + i])
        _png(tmp_path / "Other" / f"{i}.png", imgs[10 + i])
    lines: list[str] = []
    cfg = DataConfig(source="folder", path=str(tmp_path), class_map={"COVID": "COVID", "Normal": "Normal", "Ghost": "Ghost"})
    rep = check_dataset(cfg, echo=lines.append)
    assert [p for p in rep.problems if p.startswith("Other/")] == [
        f"Other/{i}.png: unknown label 'Other' (not in data.class_map); add the class to data.class_map (or map it to "
        "null) or remove the file"
        for i in range(3)
    ]
    assert rep.dataset_problems == [
        "class 'Ghost' has no usable images; add images, fix the quarantined ones, or drop it with data.class_map"
    ]
    assert rep.class_counts == {"COVID": 3, "Ghost": 0, "Normal": 3}


def test_csv_missing_file_row_number_and_duplicate_ids(tmp_path, imgs):
    for i in range(4):
        _png(tmp_path / "img" / f"{i}.png", imgs[i])
    csv = tmp_path / "study.csv"
    csv.write_text(
        "path,label,image_id\n"
        "img/0.png,COVID,a\n"
        "img/1.png,Normal,b\n"
        "img/missing.png,Normal,c\n"
        "img/2.png,COVID,d\n"
        "img/3.png,Normal,d\n"
    )
    lines: list[str] = []
    rep = check_dataset(DataConfig(source="csv", path=str(csv)), echo=lines.append)
    assert rep.problems[:3] == [
        f"{(tmp_path / 'img' / 'missing.png').resolve().relative_to(tmp_path.resolve()).as_posix()}: "
        "missing file 'img/missing.png' (study.csv row 3 (line 4)); fix the path or remove the row",
        "img/2.png: duplicate image_id; make the image ids unique",
        "img/3.png: duplicate image_id; make the image ids unique",
    ]
    assert rep.class_counts == {"COVID": 1, "Normal": 1}
    # one usable image per class: the held-out split cannot both evaluate and train each class (issue 18: errors)
    assert [w.split(":")[0] for w in rep.dataset_problems] == [
        "the evaluation set would hold no 'Normal' image", "the validation set would hold no 'COVID' and no 'Normal' image",
        "the training pool would hold no 'COVID' image",
    ] and rep.problems[3:] == rep.dataset_problems and rep.warnings == [] and not rep.usable


def test_pool_too_small_for_requested_sizes(tmp_path, imgs):
    pytest.importorskip("lungray.data.splits")
    for i in range(10):
        _png(tmp_path / "A" / f"{i}.png", imgs[i])
        _png(tmp_path / "B" / f"{i}.png", imgs[10 + i])
    cfg = DataConfig(source="folder", path=str(tmp_path), eval_size=6, val_size=2, **TINY)
    lines: list[str] = []
    rep = check_dataset(cfg, sizes=(4, 12, 500), echo=lines.append)
    # 20 images - 6 eval - 2 val = a pool of 12: sizes 4 and 12 fit, 500 does not
    assert len(rep.dataset_problems) == 1
    msg = rep.dataset_problems[0]
    assert msg.startswith("training size 500 is larger than the training pool of 12 images (A: 6, B: 6)")
    assert not rep.ok and lines[-2] == msg


def test_phantom_checks_clean():
    lines: list[str] = []
    rep = check_dataset(DataConfig(phantom_n=200, resolution=16), echo=lines.append)
    assert rep.ok and rep.problems == [] and lines == [rep.summary]
    assert rep.summary.startswith("all 200 images OK; per class: Normal ")


def test_problem_kind():
    assert problem_kind("unknown label 'X' (not in data.class_map)") == "unknown label"
    assert problem_kind("zero-byte file") == "zero-byte file"


def test_guess_source(tmp_path, imgs):
    (tmp_path / "rsna").mkdir()
    (tmp_path / "rsna" / "stage_2_train_labels.csv").write_text("patientId,x,y,width,height,Target\n")
    assert guess_source(tmp_path / "rsna") == "rsna"
    for c in ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"):
        _png(tmp_path / "radio" / "COVID-19_Radiography_Dataset" / c / "images" / "1.png", imgs[0])
    assert guess_source(tmp_path / "radio") == "covid_radiography"
    for m in ("CT", "X-ray"):
        for c in ("COVID", "Non-COVID"):
            _png(tmp_path / "ctx" / "COVID-19 Dataset" / m / c / "1.png", imgs[0])
    assert guess_source(tmp_path / "ctx") == "covid_ct_xray"
    _png(tmp_path / "plain" / "cats" / "1.png", imgs[0])
    assert guess_source(tmp_path / "plain") == "folder"
    (tmp_path / "x.csv").write_text("path,label\n")
    np.savez(tmp_path / "m.npz", train_images=np.zeros((1, 2, 2)))
    assert guess_source(tmp_path / "x.csv") == "csv" and guess_source(tmp_path / "m.npz") == "medmnist"
    with pytest.raises(DataError, match="does not exist"):
        guess_source(tmp_path / "nowhere")


def test_data_check_reports_duplicate_clusters(tmp_path, capsys):
    """``lungray data check`` runs the leakage audit's duplicate search and prints the clusters
    (issue 11.1): a rotated+zoomed Keras-style copy and a flipped, brightened copy of one image,
    a byte-identical copy of another; the folder has no patient ids."""
    from PIL import Image

    from lungray.cli import main
    from lungray.data.keypoints import keras_transform
    from lungray.data.phantom import PhantomSpec, layout, render_case

    patient = layout(80, PhantomSpec(seed=5)).patient
    first = np.flatnonzero(np.r_[True, patient[1:] != patient[:-1]])[:8]
    root = tmp_path / "ds"
    for k, i in enumerate(first):
        c = render_case(int(i), resolution=128, seed=5)
        (root / c.class_name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(c.image).save(root / c.class_name / f"im{k}.png")
        if k == 0:
            Image.fromarray(keras_transform(c.image, theta=17, zx=1.06, zy=0.95, tx=6)).save(root / c.class_name / "im0_rot.png")
            Image.fromarray(keras_transform(c.image, flip=True, brightness=1.2, theta=-8)).save(root / c.class_name / "im0_flip.png")
        if k == 1:
            (root / c.class_name / "im1_copy.png").write_bytes((root / c.class_name / "im1.png").read_bytes())
    rc = main(["data", "check", str(root), "--cache-dir", str(tmp_path / "cache"), "--val-size", "0", *TINY_CLI])
    out = capsys.readouterr().out
    assert rc == 0, out
    line = next(ln for ln in out.splitlines() if ln.startswith("duplicates:"))
    assert line.startswith("duplicates: 1 exact pair(s), 3 near-duplicate pair(s)")
    assert line.endswith("2 cluster(s) holding 5 images, the largest 3")
    biggest = next(ln for ln in out.splitlines() if "cluster of 3" in ln)
    assert all(name in biggest for name in ("im0", "im0_rot", "im0_flip"))
    assert "no patient ids: a split of this dataset is image-level, grouped only by these clusters" in out
    assert main(["data", "check", str(root), "--no-duplicates", "--val-size", "0", *TINY_CLI]) == 0
    assert "duplicates:" not in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# the command line: exit status (issue 12), escaped names, `data which`
# --------------------------------------------------------------------------------------------


def _run(argv, capsys):
    from lungray.cli import main

    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_exit_status_quarantine_strict_unusable(tmp_path, imgs, capsys):
    for i in range(8):
        _png(tmp_path / "ds" / "A" / f"{i}.png", imgs[i])
        _png(tmp_path / "ds" / "B" / f"{i}.png", imgs[10 + i])
    (tmp_path / "ds" / "A" / "bad\nB: fake.png").write_bytes(b"")
    ds = str(tmp_path / "ds")
    rc, out, err = _run(["data", "check", ds, "--val-size", "2", "--no-duplicates", *TINY_CLI], capsys)
    # one bad PNG: quarantined with a warning line, and the gate passes as the sweep would
    assert rc == 0 and "A/bad\\nB: fake.png: zero-byte file; re-download or remove it\n" in out
    assert out.count("\n") == 2 and out.splitlines()[-1].startswith("1 of 17 images quarantined")
    rc, out, err = _run(["data", "check", ds, "--val-size", "2", "--strict", "--no-duplicates", *TINY_CLI], capsys)
    assert rc == 1 and err == "data check failed (--strict): 1 problem(s) above\n"
    (tmp_path / "one" / "A").mkdir(parents=True)
    _png(tmp_path / "one" / "A" / "0.png", imgs[0])
    rc, out, err = _run(["data", "check", str(tmp_path / "one"), "--no-duplicates"], capsys)
    assert rc == 1 and "fewer than 2 classes with usable images (A 1)" in out
    assert err == "data check failed: the dataset cannot be used (1 error(s) above)\n"
    rc, out, err = _run(["data", "check", str(tmp_path / "nowhere")], capsys)
    assert rc == 2 and err.startswith("lungray: error: dataset path") and "does not exist" in err


def test_cli_which_maps_a_hashed_id_back_to_its_file(tmp_path, imgs, capsys):
    from lungray.config import DataConfig
    from lungray.data.prepare import prepare_data

    for i in range(8):
        _png(tmp_path / "ds" / "A" / f"PAT-{i}.png", imgs[i])
        _png(tmp_path / "ds" / "B" / f"PAT-{10 + i}.png", imgs[10 + i])
    cfg = DataConfig(source="folder", path=str(tmp_path / "ds"), resolution=16, val_size=2, **TINY)
    d = prepare_data(cfg, output_dir=tmp_path / "out", progress=False, parallel=False)
    image_id = str(d.ids[3])
    assert image_id.startswith("img_") and "PAT" not in "".join(map(str, d.ids))
    rc, out, _ = _run(["data", "which", image_id, "img_0000000000000000", "--output", str(tmp_path / "out")], capsys)
    path = d.manifest()["path"].iloc[3]
    assert rc == 1 and out.splitlines() == [f"{image_id}\t{path}\t{d.manifest()['label'].iloc[3]}", "img_0000000000000000\tnot found"]


def test_check_manifest_carries_the_hashes_the_cache_computes(tmp_path, imgs, capsys):
    """Issue 13 item 8: ``--manifest-out`` has sha256 (of the file bytes) and phash/width/height (of
    the decode), equal to what the sweep's cache computes for the same images."""
    import hashlib

    import pandas as pd

    from lungray.data.prepare import prepare_data

    for i in range(8):
        _png(tmp_path / "ds" / "A" / f"{i}.png", imgs[i])
        _png(tmp_path / "ds" / "B" / f"{i}.png", imgs[10 + i][:, :20])  # 24 x 20
    rc, _, _ = _run(["data", "check", str(tmp_path / "ds"), "--val-size", "2", "--no-duplicates", "--manifest-out", str(tmp_path / "m.parquet"), *TINY_CLI], capsys)
    m = pd.read_parquet(tmp_path / "m.parquet").set_index("image_id")
    assert rc == 0 and len(m) == 16
    for image_id, r in m.iterrows():
        assert r["sha256"] == hashlib.sha256(Path(r["path"]).read_bytes()).hexdigest()
        assert (r["width"], r["height"]) == ((24, 24) if "/A/" in r["path"] else (20, 24))
    cfg = DataConfig(source="folder", path=str(tmp_path / "ds"), resolution=16, val_size=2, **TINY)
    cached = prepare_data(cfg, output_dir=tmp_path / "out", progress=False, parallel=False).manifest().set_index("image_id")
    cols = ["sha256", "phash", "width", "height", "path", "label"]
    pd.testing.assert_frame_equal(m.loc[cached.index, cols], cached[cols])
