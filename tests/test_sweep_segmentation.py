"""``python sweeps/segmentation_study.py`` end to end on a tiny RSNA-layout tree.

pydicom-made DICOMs and a labels CSV with multi-box patients (the tree of
tests/test_data_masks.py), through the rsna adapter, the mask cache, the segmentation task in
Ray Tune trials, MLflow and the report: the same grid parameters and MLflow schema as a
classification sweep, segmentation metrics, per-image predictions whose true foreground counts
are the filled boxes' pixel counts worked out by hand, and mask panels instead of Grad-CAM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lungray import tracking as T
from lungray.sweep import mlflow_run as M

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "sweeps" / "segmentation_study.py")

STUDY = """
name: rsna_tiny
data: {resolution: 32, eval_size: 2, val_size: 2, leakage: "off", min_eval_per_class: 1, min_val_per_class: 1}
models: [{name: unet_keras, width: 4}, {name: "unet:resnet10t", width: 2}]
sizes: [4]
seeds: [0]
schedule: {rule: fixed, batch_size: 2, epochs: 2, early_stopping_patience: null}
resources: {cpus_per_worker: 0.99, gpus_per_worker: 0}
"""


def test_rsna_tree_runs_end_to_end_through_a_segmentation_sweep(tmp_path):
    from test_data_masks import COUNTS_STRETCH, P, write_rsna_tree

    from lungray.data.manifest import hash_patient_id, id_salt

    tree = write_rsna_tree(tmp_path / "rsna")
    (tmp_path / "study.yaml").write_text(STUDY)
    env = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
    for k in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(k, None)
    p = subprocess.run([sys.executable, SCRIPT, "--config", "study.yaml", "--data", str(tree), "--output", "runs", "--address", "local"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
    assert p.returncode == 0, (p.stdout[-4000:], p.stderr[-4000:])
    assert "#   task: segmentation (loss: dice_rsna); data source: rsna " in p.stdout  # the study's loss, from the preset
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("[") and " done " in ln]
    assert len(lines) == 2 and all("test_dice_pos=" in ln for ln in lines)

    (exp_dir,) = [d for d in (tmp_path / "runs").iterdir() if (d / "sweep.json").exists()]
    state = json.loads((exp_dir / "sweep.json").read_text())
    c = M.client(state["tracking_uri"])
    runs = c.search_runs([state["experiment_id"]])
    children = [r for r in runs if r.data.tags.get(T.ROLE) == T.ROLE_TRIAL]
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    coords = {(r.data.params["model"], int(r.data.params["train_size"]), r.data.params["optimizer"], int(r.data.params["seed"]))
              for r in children}
    assert coords == {(m, n, "adam", 0) for m in ("unet_keras", "unet:resnet10t") for n in (4,)}
    row_of_patient = {"rsna_" + hash_patient_id(pid, id_salt("rsna"))[2:]: pid for pid in P}
    for r in children:
        m = r.data.metrics
        assert r.data.params["train.task"] == "segmentation" and r.data.params["train.loss"] == "dice_rsna"
        for key in ("dice_pos", "dice_all", "iou_pos", "iou_all", "miou_global", "det_auc", "loss"):
            assert f"test_{key}" in m
        assert 0 <= m["test_dice_all"] <= 1 and m["test_n_images"] == 2 and "test_accuracy" not in m
        assert [x.step for x in c.get_metric_history(r.info.run_id, "val_dice_pos")] == [1, 2]
        arts = {a.path for a in c.list_artifacts(r.info.run_id)}
        assert {T.PREDICTIONS, T.PER_CLASS, T.HISTORY, T.CHECKPOINT_DIR} <= arts and T.CONFUSION_PNG not in arts
        pred = pd.read_csv(c.download_artifacts(r.info.run_id, T.PREDICTIONS, str(tmp_path / r.info.run_id)))
        # the true foreground of each held-out image is its filled boxes' pixel count, by hand
        for image_id, fg, y in zip(pred["image_id"], pred["fg_true"], pred["y_true"]):
            pid = row_of_patient[image_id]
            assert fg == COUNTS_STRETCH.get(pid, 0) and y == int(pid in COUNTS_STRETCH)

    html = (exp_dir / "report" / "report.html").read_text()
    assert "Dice (images with a finding)" in html and "Predicted masks" in html
    assert "No Grad-CAM for segmentation" in html and "Grad-CAM panels" not in html
    masks = html[html.index("Predicted masks"):]
    assert '<img src="data:image/png;base64,' in masks[:masks.index("</section>")]  # embedded (print files only on request)
    assert (exp_dir / "report" / "table_dice_pos.csv").exists()
