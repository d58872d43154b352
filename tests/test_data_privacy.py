"""Patient identifiers never leave the local map (issue 15 item 6).

A dataset whose every file name holds a PatientID-like string, plus DICOMs named by their
PatientID and carrying a PatientName, goes through ``lungray data check`` and a one-trial sweep
(real preparation, training, MLflow, report with Grad-CAM). Then EVERY file the sweep wrote (the
output folder: Ray experiment directory, MLflow database and artifacts, report, cache) is read, as
bytes and, for parquet/sqlite, as decoded text, and searched for the identifiers. The only files
allowed to hold them are the local map (the cache's ``manifest.parquet``/``quarantined.parquet``,
whose ``path`` column leads back to the files, never logged to MLflow), and ``lungray data which``
must find the file behind a hashed id there.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PATIENT_ID = re.compile(rb"PID-\d{7}|MRN99887766|Doe\^Jane|DOE\^JANE")


def _dataset(root: Path) -> None:
    import pydicom
    from PIL import Image

    from lungray.data.phantom import generate_phantom, write_dicom

    ph = generate_phantom(60, resolution=32, seed=4, series_fraction=0.0)  # files get one patient id each: no CT-like series
    for i in range(ph.images.shape[0] - 2):
        cls = ph.class_names[int(ph.labels[i])]
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ph.images[i]).save(d / f"PID-{1000000 + i}_chest.png")
    for k, i in enumerate((58, 59)):
        cls = ph.class_names[int(ph.labels[i])]
        p = write_dicom(root / cls / f"MRN9988776{6 + k}.dcm", ph.images[i], patient_id=f"MRN9988776{6 + k}")
        ds = pydicom.dcmread(p)
        ds.PatientName = "Doe^Jane"
        ds.PatientBirthDate = "19700101"
        ds.save_as(p)
    # two broken files named by patient id (issue 23, point 6): the sweep's quarantine lines name
    # them by hashed id, and pydicom's warnings about the cut one ("... in file /abs/path") are
    # not printed at all
    from pydicom.data import get_testdata_file

    j2k = Path(get_testdata_file("MR_small_jp2klossless.dcm")).read_bytes()
    (root / "COVID" / "PID-1888888.dcm").write_bytes(j2k[:-1200])
    (root / "Normal" / "PID-1999999_chest.png").write_bytes(b"not an image\n")


def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
    for k in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(k, None)
    return env


def _texts(path: Path) -> list[bytes]:
    """The bytes of a file, plus the decoded cells of parquet tables and sqlite databases."""
    out = [path.read_bytes()]
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
        out.append(df.to_csv(index=False).encode() + repr(df.attrs).encode())
    elif path.suffix == ".db":
        con = sqlite3.connect(path)
        try:
            for (table,) in con.execute("select name from sqlite_master where type='table'"):
                for row in con.execute(f'select * from "{table}"'):
                    out.append(repr(row).encode())
        finally:
            con.close()
    return out


def test_patient_ids_in_file_names_and_dicom_headers_reach_no_output(tmp_path):
    ds, out = tmp_path / "ds", tmp_path / "out"
    _dataset(ds)
    check = subprocess.run(
        [sys.executable, "-m", "lungray", "data", "check", str(ds), "--source", "folder", "--cache-dir", str(tmp_path / "check_cache"),
         "--manifest-out", str(tmp_path / "m.parquet"), "--min-eval-per-class", "5", "--min-val-per-class", "2"],  # 60 images
        capture_output=True, text=True, env=_env(), timeout=600,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    # data check is the data owner's tool: it names the two broken files (relative to the root), and
    # nothing else; pydicom's own warnings, which carry the absolute path, are not printed
    lines = (check.stdout + check.stderr).splitlines()
    named = sorted(line for line in lines if PATIENT_ID.search(line.encode()))
    assert named == ["COVID/PID-1888888.dcm: truncated DICOM (the file ends inside its pixel data); re-download or remove it",
                     "Normal/PID-1999999_chest.png: not an image (unrecognised content); remove it or fix its format"], lines
    assert str(ds) not in check.stdout + check.stderr and "in file" not in check.stdout + check.stderr
    assert any(line.startswith("2 of 62 images quarantined") for line in lines)
    m = pd.read_parquet(tmp_path / "m.parquet")
    good = m[m["problem"] == ""]
    assert m["image_id"].str.fullmatch(r"img_[0-9a-f]{16}").all() and (good["sha256"].str.len() == 64).all()
    assert (good["phash"].str.len() == 16).all()

    cmd = [
        sys.executable, str(REPO / "sweeps" / "size_study.py"), "--preset", "smoke", "--output", str(out), "--address", "local",
        "--set", "data.source=folder", "--set", f"data.path={ds}", "--set", "data.eval_size=16", "--set", "data.val_size=6", "--set", "data.min_eval_per_class=5",
        "--set", "models=[{name: simple_cnn, width: 8}]", "--set", "sizes=[20]", "--set", "seeds=[0]",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=1500, cwd=tmp_path)
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-3000:])
    assert "data: 60 of 62 images usable, 2 quarantined" in run.stdout
    assert not PATIENT_ID.search((run.stdout + run.stderr).encode()) and "in file" not in run.stdout + run.stderr
    bad_ids = set(m.loc[m["problem"] != "", "image_id"])
    assert len(bad_ids) == 2 and all(any(line.startswith(f"{i}: ") for line in run.stdout.splitlines()) for i in bad_ids)

    local_map = set()
    leaks = []
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "report.html" for p in files) and any(p.name == "mlflow.db" for p in files)
    assert any(p.name == "predictions.csv" for p in files)
    for p in files:
        hit = any(PATIENT_ID.search(t) for t in _texts(p))
        if p.parent.parent.name == "cache" and p.name in ("manifest.parquet", "quarantined.parquet"):
            local_map.add(p.name) if hit else None
        elif hit:
            leaks.append(str(p.relative_to(out)))
    assert leaks == []
    assert local_map == {"manifest.parquet", "quarantined.parquet"}  # the map back to the files, local only

    # predictions.csv carries hashed ids; `lungray data which` turns one back into its file
    pred = pd.read_csv(next(p for p in files if p.name == "predictions.csv"))
    assert pred["image_id"].str.fullmatch(r"img_[0-9a-f]{16}").all()
    which = subprocess.run(
        [sys.executable, "-m", "lungray", "data", "which", str(pred["image_id"].iloc[0]), "--output", str(out)],
        capture_output=True, text=True, env=_env(), timeout=300,
    )
    assert which.returncode == 0, which.stderr
    image_id, path, label = which.stdout.strip().split("\t")
    assert image_id == pred["image_id"].iloc[0] and Path(path).is_file() and Path(path).parent.name == label
    assert np.isin(label, ["Normal", "COVID"])
