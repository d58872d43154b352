"""Segmentation as a task of the training loop (``train.task=segmentation``, issue 10 section 2).

* config time: U-Nets only with segmentation, classifiers only with classification, a data
  source with masks, the loss names, and the presets;
* the task's pieces against an independent path: device-side confusions and Dice sums vs
  :mod:`lungray.metrics.segmentation` on NumPy masks, the validation loss vs the criterion on the whole
  split as one batch, the held-out report vs ``segmentation_report`` on the argmax masks;
* ``run_trial`` end to end on the phantom's lesion masks: the reported test Dice is that of the
  selected checkpoint's masks, recomputed here; a dataset without masks fails in one line.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lungray.config import DataConfig, ModelConfig, OptimizerConfig, ScheduleConfig, TrainConfig, TrialConfig
from lungray.study import load_study
from lungray.data.masks import IGNORE
from lungray.errors import ConfigError
from lungray.metrics.segmentation import image_confusion, masks_from_probs, image_scores, segmentation_report
from lungray.train.tasks import TASKS, SegmentationTask, image_confusion_torch


def seg_trial(**changes) -> TrialConfig:
    t = TrialConfig(
        study="seg",
        model=ModelConfig(name="unet_keras", width=4),
        train_size=60,
        optimizer=OptimizerConfig(name="adam", lr=3e-3),
        seed=0,
        schedule=ScheduleConfig(rule="fixed", batch_size=16, epochs=2),
        train=TrainConfig(task="segmentation", augmentation="none", normalization="pool", device="cpu", eval_batch_size=32),
    )
    for section, fields in changes.items():
        t = replace(t, **{section: replace(getattr(t, section), **fields)})
    return t


def random_batch(seed: int, b: int = 5, c: int = 2, h: int = 8, w: int = 8, ignore_rows: tuple = (3,)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, h, w, generator=g) * 2
    target = (torch.rand(b, h, w, generator=g) < 0.3).long()
    target[1] = 0  # an image without foreground
    for r in ignore_rows:
        target[r] = IGNORE  # an image whose mask is unknown
    target[0, :2, :2] = IGNORE  # a few unknown pixels
    return logits, target


# ------------------------------------------------------------------------------------------
# config time
# ------------------------------------------------------------------------------------------


def test_registry_presets_and_losses():
    from lungray.train.losses import LOSSES

    seg = TASKS.get("segmentation")
    assert sorted(seg.losses) == sorted(LOSSES.names()) and seg.losses[0] == "dice"
    assert seg.target_kind == "mask" and seg.report_spec.primary_metric == "dice_pos"
    assert seg.report_spec.explanation == "overlay" and seg.monitors["val_loss"] == "min"
    assert all(seg.mode(m) == "max" for m in seg.monitors if m != "val_loss")
    smoke = load_study("segmentation_smoke")
    assert smoke.train.task == "segmentation" and smoke.train.loss == "dice_rsna" and smoke.data.source == "phantom"
    paper = load_study("segmentation", overrides=["data.path=/data/rsna"])
    assert paper.train.loss == "dice_rsna"  # the study's own loss (PROTOCOLS.md section 3)
    assert paper.data.source == "rsna" and [m.name for m in paper.models][0] == "unet_keras"
    assert 200 in paper.sizes and paper.schedule.early_stopping_patience and paper.data.resolution % 32 == 0
    for monitor in seg.monitors:
        assert load_study("segmentation_smoke", overrides=[f"schedule.monitor={monitor}"]).schedule.monitor == monitor


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        (["train.task=classification", "schedule.monitor=val_loss"],
         r"models\[0\]\.name: 'unet_keras' is a segmentation model .*set train\.task=segmentation"),
        (["models=[resnet18]"], r"models\[0\]\.name: 'resnet18' is not a segmentation model; train\.task=segmentation takes unet:<timm encoder>, unet_keras"),
        (["data.source=covid_ct_xray", "data.path=/x"],
         r"train\.task=segmentation needs masks, and data\.source 'covid_ct_xray' has none; sources with masks: phantom \(lesion\), rsna \(lesion_boxes\)"),
        (["train.loss=diec"], r"train\.loss: 'diec' is not valid; valid choices: auto, dice, dice_rsna, dice_ce, dice_bce, ce"),
        (["train.imbalance=weighted_loss"], r"train\.imbalance: 'weighted_loss' weighs image classes"),
        (["schedule.monitor=val_accuracy"], r"'val_accuracy' is not a validation metric of task 'segmentation'"),
        (["data.resolution=40"], r"'unet_keras' needs data\.resolution to be a multiple of 16"),
    ],
)
def test_segmentation_config_errors_are_one_line(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_study("segmentation_smoke", overrides=overrides)


def test_classification_rejects_a_unet_and_a_segmentation_loss():
    with pytest.raises(ConfigError, match=r"'unet:resnet18' is a segmentation model"):
        load_study("smoke", overrides=["models=[unet:resnet18]"])
    with pytest.raises(ConfigError, match=r"train\.loss: 'dice' is not valid; valid choices: auto, ce"):
        load_study("smoke", overrides=["train.loss=dice"])
    assert load_study("smoke").train.loss == "auto"


# ------------------------------------------------------------------------------------------
# the task's pieces, against lungray.metrics.segmentation on NumPy masks
# ------------------------------------------------------------------------------------------


def test_device_confusion_equals_the_numpy_one():
    logits, target = random_batch(0)
    pred = logits.argmax(1)
    got = image_confusion_torch(pred, target).numpy()
    np.testing.assert_array_equal(got, image_confusion(pred.numpy(), target.numpy(), 2))
    assert got.dtype == np.int64 and got[3].sum() == 0 and got[0].sum() == 64 - 4


def test_batch_and_epoch_statistics_by_hand():
    task = TASKS.get("segmentation")
    # image 0: truth 2 px, prediction 3 px, overlap 1 -> Dice 2/5, IoU 1/4 (positive)
    # image 1: empty truth, empty prediction -> Dice 1 (counts in "all", not in "positive")
    # image 2: empty truth, 1 false-positive pixel -> Dice 0
    # image 3: unknown mask -> left out
    target = torch.zeros(4, 2, 3, dtype=torch.long)
    target[0, 0, :2] = 1
    target[3] = IGNORE
    pred = torch.zeros(4, 2, 3, dtype=torch.long)
    pred[0, 0, 1:] = 1
    pred[0, 1, 0] = 1
    pred[2, 1, 2] = 1
    logits = torch.stack([1 - pred, pred], 1).float() * 4  # argmax = pred
    s = task.batch_stats(logits, target)
    assert float(s["dice_pos"]) == pytest.approx(2 / 5) and float(s["iou_pos"]) == pytest.approx(1 / 4)
    assert float(s["dice_all"]) == pytest.approx(2 / 5 + 1 + 0) and int(s["n_known"]) == 3 and int(s["n_pos"]) == 1
    twice = {k: v + v for k, v in s.items()}
    row = task.epoch_stats(1.5, twice, 8)
    assert row == {"train_loss": 1.5 / 8, "train_dice_pos": pytest.approx(2 / 5), "train_dice_all": pytest.approx(1.4 / 3)}
    nothing = task.epoch_stats(0.0, {k: v * 0 for k, v in s.items()}, 0)
    assert math.isnan(nothing["train_dice_pos"]) and math.isnan(nothing["train_dice_all"])


@pytest.mark.parametrize("loss", ["dice", "dice_rsna", "dice_ce", "dice_bce", "ce"])
def test_validation_and_report_equal_an_independent_computation(loss):
    """Two batches through evaluate_batch; val_loss is the criterion on both batches as ONE
    batch, Dice/IoU/detection are metrics.segmentation's on the argmax masks and max-foreground scores."""
    from lungray.train.losses import build_loss

    task = TASKS.get("segmentation").for_trial(seg_trial(train={"loss": loss}))
    assert task.loss == loss and (task is TASKS.get("segmentation")) == (loss == "dice")
    c = 1 if loss == "dice_bce" else 2
    (l1, t1), (l2, t2) = random_batch(1, c=c), random_batch(2, b=3, c=c, ignore_rows=())
    kept, y = zip(*(task.evaluate_batch(lg, t) for lg, t in ((l1, t1), (l2, t2))))
    outputs, targets = torch.cat(kept).numpy(), torch.cat(y).numpy()
    logits, target = torch.cat([l1, l2]), torch.cat([t1, t2])
    names = ["background", "lesion"]

    val = task.val_metrics(targets, outputs, names)
    assert set(val) == set(task.monitors)
    assert val["val_loss"] == pytest.approx(float(build_loss(loss)(logits.double(), target)), rel=1e-6)

    probs = task.outputs(logits).numpy()
    ref = segmentation_report(masks_from_probs(probs), target.numpy(), 2, scores=image_scores(probs), class_names=names)
    flat, per_class, confusion = task.report(targets, outputs, names)
    assert confusion is None and list(per_class["class"]) == ["lesion"]
    for key in ("dice_pos", "dice_all", "iou_pos", "iou_all", "miou_global", "pixel_accuracy", "det_auc", "n_pos", "n_unknown"):
        assert flat[key] == pytest.approx(ref[key], nan_ok=True), key
        if f"val_{key}" in val:
            assert val[f"val_{key}"] == pytest.approx(ref[key], nan_ok=True)
    assert flat["n_unknown"] == 1 and flat["loss"] == pytest.approx(val["val_loss"])
    assert targets.tolist()[3] == IGNORE and targets.tolist()[1] == 0


def test_predictions_frame_and_empty_evaluation():
    task = TASKS.get("segmentation")
    logits, target = random_batch(3, b=4)
    kept, y = task.evaluate_batch(logits, target)

    class D:
        ids = np.array([f"img{i}" for i in range(10)])

    rows = np.array([7, 2, 5, 0])
    df = task.predictions_frame(D, rows, y.numpy(), kept.numpy(), ["background", "lesion"])
    assert list(df.columns) == ["image_id", "y_true", "score", "dice", "iou", "fg_true", "fg_pred", "row"]
    assert df["image_id"].tolist() == ["img7", "img2", "img5", "img0"] and df["row"].tolist() == rows.tolist()
    pred = logits.argmax(1).numpy()
    t = target.numpy()
    for i in (0, 2):
        inter = ((pred[i] == 1) & (t[i] == 1)).sum()
        true, got = ((t[i] == 1)).sum(), ((pred[i] == 1) & (t[i] != IGNORE)).sum()
        assert df["fg_true"][i] == true and df["fg_pred"][i] == got
        assert df["dice"][i] == pytest.approx(2 * inter / (true + got))
    assert math.isnan(df["dice"][3]) and df["y_true"][3] == IGNORE
    probs = torch.softmax(logits, 1).numpy()
    np.testing.assert_allclose(df["score"], (1 - probs[:, 0]).reshape(4, -1).max(1))
    # an empty held-out set: predict() returns (0, 0) outputs
    flat, per_class, _ = task.report(np.zeros(0, dtype=np.int64), np.zeros((0, 0)), ["background", "lesion"])
    assert flat["n_images"] == 0 and math.isnan(flat["dice_pos"]) and math.isnan(flat["loss"])
    assert len(task.predictions_frame(D, np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros((0, 0)), ["b", "l"])) == 0


# ------------------------------------------------------------------------------------------
# run_trial on the phantom's lesion masks
# ------------------------------------------------------------------------------------------


def test_run_trial_segments_and_reports_the_selected_checkpoint(prepared_phantom, tmp_path):
    from lungray.models.segmentation import create_segmentation_model
    from lungray.train import run_trial

    data = prepared_phantom
    trial = seg_trial(schedule={"epochs": 3, "monitor": "val_dice_all"})
    reported = []
    res = run_trial(trial, data, workdir=tmp_path, report=lambda m, c: reported.append(m))
    assert res.completed and reported == res.history and res.confusion is None
    assert set(res.history[0]) == {"epoch", "train_loss", "train_dice_pos", "train_dice_all", "lr", *TASKS.get("segmentation").monitors}
    assert res.best_epoch == int(np.nanargmax([h["val_dice_all"] for h in res.history])) + 1
    for key in ("dice_pos", "dice_all", "iou_pos", "iou_all", "miou_global", "det_auc", "loss"):
        assert f"test_{key}" in res.metrics
    assert res.metrics["test_n_images"] == len(data.eval_idx)

    # the held-out numbers ARE those of the selected weights' masks, recomputed with NumPy
    best = torch.load(res.best_checkpoint, weights_only=True)
    assert best["class_names"] == ["background", "lesion"] and best["epoch"] == res.best_epoch
    net = create_segmentation_model(trial.model, 2, in_chans=1, resolution=data.resolution)
    net.load_state_dict(best["model"])
    net.eval()
    ds = TASKS.get("segmentation").dataset(data, data.eval_idx, augmentation="none", mean=best["norm"][0], std=best["norm"][1], seed=0)
    with torch.no_grad():
        probs = torch.softmax(net(torch.stack([ds[i][0] for i in range(len(ds))])), 1).numpy()
    truth = np.asarray(data.masks[data.eval_idx]).astype(np.int64)
    ref = segmentation_report(masks_from_probs(probs), truth, 2, scores=image_scores(probs))
    for key in ("dice_pos", "dice_all", "iou_all", "miou_global", "det_auc"):
        assert res.metrics[f"test_{key}"] == pytest.approx(ref[key], abs=1e-9), key
    np.testing.assert_array_equal(res.predictions["row"], data.eval_idx)
    assert res.predictions["fg_true"].tolist() == (truth == 1).reshape(len(truth), -1).sum(1).tolist()


def test_dice_bce_trains_one_sigmoid_channel(prepared_phantom, tmp_path):
    from lungray.train import run_trial

    res = run_trial(seg_trial(train={"loss": "dice_bce"}, schedule={"epochs": 1}), prepared_phantom, workdir=tmp_path)
    assert torch.load(res.best_checkpoint, weights_only=True)["model"]["net.head.weight"].shape[0] == 1
    assert np.isfinite(res.metrics["test_loss"]) and 0 <= res.metrics["test_dice_all"] <= 1


def _without_masks(data, tmp_path: Path):
    """A copy of a prepared dataset whose meta.json names no mask kind (as a source without masks)."""
    from lungray.data.prepared import PreparedData

    root = tmp_path / "nomasks"
    shutil.copytree(data.root, root)
    meta = json.loads((root / "meta.json").read_text())
    meta.pop("mask_kind", None)
    (root / "meta.json").write_text(json.dumps(meta))
    return PreparedData(root=str(root), class_names=data.class_names, eval_idx=data.eval_idx, val_idx=data.val_idx,
                        pool_idx=data.pool_idx, fingerprint=data.fingerprint, groups=data.groups, info=dict(data.info))


def test_data_without_masks_fails_in_one_line_before_training(prepared_phantom, tmp_path):
    from lungray.sweep.runner import run_study
    from lungray.train import run_trial

    data = _without_masks(prepared_phantom, tmp_path)
    pattern = rf"train\.task=segmentation: the prepared dataset at {data.root} \(source 'phantom'\) has no masks \(mask kind: none\)"
    with pytest.raises(ConfigError, match=pattern):
        run_trial(seg_trial(), data, workdir=tmp_path / "w")
    assert not (tmp_path / "w").exists()
    cfg = load_study("segmentation_smoke", overrides=[f"output_dir={tmp_path / 'out'}", "sizes=[20]"])
    with pytest.raises(ConfigError, match=pattern):  # the sweep: before Ray, MLflow or a trial
        run_study(cfg, data=data, echo=lambda s: None)


def test_unet_encoder_weights_follow_the_classifiers_offline_rules():
    """``unet:<enc>`` with ``pretrained: true`` loads timm's ``<enc>`` weights: the sweep fetches
    and the dry run checks the same cache entry as for the classifier ``<enc>``."""
    from lungray.models.weights import weights_status

    st = weights_status(ModelConfig(name="unet:resnet18", pretrained=True))
    ref = weights_status(ModelConfig(name="resnet18", pretrained=True))
    assert (st.source, st.location, st.cached) == (ref.source, ref.location, ref.cached)
    assert st.model == "unet:resnet18"
    assert weights_status(ModelConfig(name="unet_keras")) is None  # trained from scratch


def test_report_per_image_scores_by_hand():
    """What the report's intervals, paired tests and fits average for a segmentation metric."""
    import pandas as pd

    from lungray.report.tables import _aligned_scores, per_image_scores

    f = pd.DataFrame({"image_id": ["c", "a", "b", "d"], "y_true": [1, 0, 1, 255],
                      "dice": [0.5, 1.0, 0.25, np.nan], "iou": [1 / 3, 1.0, 1 / 7, np.nan]})
    ids, s = per_image_scores(f, (), "dice_pos")
    assert ids.tolist() == ["c", "b"] and s.tolist() == [0.5, 0.25]  # images with a finding
    ids, s = per_image_scores(f, (), "iou_all")
    assert ids.tolist() == ["c", "a", "b"] and s == pytest.approx([1 / 3, 1.0, 1 / 7])  # known masks
    g = f.assign(dice=[0.7, 1.0, 0.1, np.nan])
    scores, ids = _aligned_scores(["r1", "r2"], {"r1": f, "r2": g}, "dice_pos")
    np.testing.assert_allclose(scores, [[0.25, 0.5], [0.1, 0.7]])
    assert ids.tolist() == ["b", "c"]
    with pytest.raises(ValueError, match="no per-image score for metric 'miou_global'"):
        per_image_scores(f, (), "miou_global")
