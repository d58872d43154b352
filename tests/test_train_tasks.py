"""The task seam of the training loop (``train.task``, :mod:`lungray.train.tasks`).

* the registry and its config-time checks (``train.task``, ``schedule.monitor`` per task);
* the classification task's pieces on hand-computed cases;
* ``run_trial`` equals a bare PyTorch loop written out here from the documented recipe
  (simple_cnn with weighted loss, label smoothing and a max-direction monitor; logreg's
  closed-form fit): a reference run beside it, compared exactly, not pinned numbers;
* a toy pixel-wise task (targets ``[B,H,W]``, logits ``[B,K,H,W]``) plugs into the unchanged
  loop: what segmentation will do.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from lungray.config import ModelConfig, OptimizerConfig, ScheduleConfig, TrainConfig, TrialConfig
from lungray.study import load_study
from lungray.errors import ConfigError
from lungray.metrics import classification_report
from lungray.train.tasks import TASKS, ClassificationTask, ReportSpec, Task, class_weights


def make_trial(**changes) -> TrialConfig:
    t = TrialConfig(
        study="tasks",
        model=ModelConfig(name="simple_cnn", width=8),
        train_size=60,
        optimizer=OptimizerConfig(name="adam", lr=3e-3),
        seed=0,
        schedule=ScheduleConfig(rule="fixed", batch_size=8, epochs=3),
        train=TrainConfig(augmentation="none", normalization="pool", device="cpu", eval_batch_size=64),
    )
    for section, fields in changes.items():
        t = replace(t, **{section: replace(getattr(t, section), **fields) if isinstance(fields, dict) else fields})
    return t


def same(a, b) -> bool:
    return (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)) or a == b


def assert_rows_identical(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for k in g:
            assert same(g[k], w[k]), (k, g[k], w[k])


# ------------------------------------------------------------------------------------------
# registry and config-time checks
# ------------------------------------------------------------------------------------------


def test_registry_lists_classification_and_rejects_unknown_tasks():
    assert TASKS.names() == ["classification", "segmentation", "site"]  # site: the source probe (issue 24.2)
    assert TASKS.get("classification").target_kind == "label"
    assert TASKS.get("site").target_kind == "site"
    with pytest.raises(ConfigError, match=r"unknown task 'segmentaton'; valid choices: classification, segmentation, site"):
        load_study("smoke", overrides=["train.task=segmentaton"])


@pytest.mark.parametrize("monitor", list(ClassificationTask.monitors))
def test_every_classification_monitor_is_accepted(monitor):
    assert load_study("smoke", overrides=[f"schedule.monitor={monitor}"]).schedule.monitor == monitor


def test_monitor_is_checked_against_the_tasks_own_metrics(monkeypatch):
    """A registered task's monitors, not a fixed list, decide what schedule.monitor may be."""
    monkeypatch.setitem(TASKS._items, "toy_pixels", PixelTask())
    cfg = load_study("smoke", overrides=["train.task=toy_pixels", "schedule.monitor=val_dice"])
    assert cfg.train.task == "toy_pixels"
    pattern = r"'val_accuracy' is not a validation metric of task 'toy_pixels'; valid choices: val_loss, val_dice"
    with pytest.raises(ConfigError, match=pattern):
        load_study("smoke", overrides=["train.task=toy_pixels", "schedule.monitor=val_accuracy"])


# ------------------------------------------------------------------------------------------
# classification pieces, by hand
# ------------------------------------------------------------------------------------------


def test_classification_batch_and_epoch_statistics_by_hand():
    task = TASKS.get("classification")
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.5, 0.4]])
    y = torch.tensor([0, 0, 1, 0])
    stats = task.batch_stats(logits, y)
    assert stats["correct"].dtype == torch.int64 and int(stats["correct"]) == 2  # rows 0 and 3
    # two batches summed on the device: 2 + 1 correct of 4 + 2 images, loss sum 3.0 over 6
    sums = {"correct": stats["correct"] + task.batch_stats(logits[:2], torch.tensor([0, 1]))["correct"]}
    assert task.epoch_stats(3.0, sums, 6) == {"train_loss": 0.5, "train_accuracy": 4 / 6}


def test_classification_criterion_weights_and_smoothing():
    task = TASKS.get("classification")
    y = np.array([0, 0, 0, 1])
    plain = task.criterion(make_trial(), y, 2, torch.device("cpu"))
    assert plain.weight is None and plain.label_smoothing == 0.0
    weighted = task.criterion(make_trial(train={"imbalance": "weighted_loss", "label_smoothing": 0.2}), y, 2, "cpu")
    assert weighted.weight.tolist() == pytest.approx([4 / 6, 2.0]) and weighted.label_smoothing == 0.2
    assert task.sampler_weights(make_trial(), y, 2) is None
    assert task.sampler_weights(make_trial(train={"imbalance": "weighted_sampler"}), y, 2).tolist() == [1 / 3] * 3 + [1.0]
    # a closed-form fit has no sampler: either option gives the balanced per-sample weights
    for imbalance in ("weighted_loss", "weighted_sampler"):
        w = task.full_batch_weights(make_trial(train={"imbalance": imbalance}), y, 2)
        np.testing.assert_allclose(w, class_weights(y, 2)[y])
    assert task.full_batch_weights(make_trial(), y, 2) is None


def test_classification_report_predictions_and_empty_evaluation():
    task = TASKS.get("classification")
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    y = np.array([0, 1, 1])
    flat, per_class, cm = task.report(y, probs, ["Normal", "COVID"])
    assert flat["accuracy"] == 2 / 3 and cm.tolist() == [[1, 0], [1, 1]]
    val = task.val_metrics(y, probs, ["Normal", "COVID"])
    assert set(val) == set(task.monitors) and val["val_accuracy"] == 2 / 3 and val["val_auc"] == 1.0
    assert val["val_loss"] == pytest.approx(-(math.log(0.9) + math.log(0.8) + math.log(0.4)) / 3)

    class D:
        ids = np.array(["a", "b", "c", "d"])

    df = task.predictions_frame(D, np.array([3, 0, 1]), y, probs, ["Normal", "COVID"])
    assert list(df.columns) == ["image_id", "y_true", "prob_Normal", "prob_COVID", "row"]
    assert df["image_id"].tolist() == ["d", "a", "b"] and df["prob_COVID"].tolist() == [0.1, 0.8, 0.4]
    # an empty held-out set: predict() returns (0, 0) outputs; the report still has K columns
    empty = np.zeros((0, 0))
    flat, per_class, cm = task.report(np.zeros(0, dtype=np.int64), empty, ["Normal", "COVID"])
    assert cm.shape == (2, 2) and flat["n"] == 0
    df = task.predictions_frame(D, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), empty, ["Normal", "COVID"])
    assert len(df) == 0 and list(df.columns) == ["image_id", "y_true", "prob_Normal", "prob_COVID", "row"]


def test_report_spec_names_what_the_report_reads():
    from lungray import tracking as T

    spec = TASKS.get("classification").report_spec
    assert spec.primary_metric == "accuracy" and spec.primary_metric in T.HEADLINE_METRICS
    assert spec.epoch_metrics == T.EPOCH_METRICS and spec.explanation == "gradcam"


# ------------------------------------------------------------------------------------------
# run_trial == a bare PyTorch loop of the documented recipe
# ------------------------------------------------------------------------------------------


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _probs_of(model, ds, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # evaluation goes through a DataLoader like the loop's, which draws its base seed from the
    # global generator (and so shifts later dropout draws) every time it is iterated
    model.eval()
    ps, ys, rows = [], [], []
    with torch.no_grad():
        for x, y, r in torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False):
            ps.append(torch.softmax(model(x).float(), dim=1))
            ys.append(y.numpy())
            rows.append(r.numpy())
    model.train()
    return torch.cat(ps).numpy().astype(np.float64), np.concatenate(ys), np.concatenate(rows)


def _reference(data, trial, fit) -> dict:
    """Subset, pool normalisation, seed, build, ``fit(model, ...)``, select by val_auc, evaluate."""
    from lungray.data.augment import normalization_stats
    from lungray.data.dataset import ImageDataset
    from lungray.models import create_model

    names = list(data.class_names)
    _seed(trial.seed)
    idx = data.subset(trial.train_size, trial.seed)
    mean, std = normalization_stats("pool", data)
    ds = lambda rows: ImageDataset(data, rows, mean=mean, std=std, seed=trial.seed)  # noqa: E731
    _seed(trial.seed)
    model = create_model(trial.model, 2, in_chans=1, resolution=data.resolution)
    history, best, best_auc, best_epoch = [], None, None, None
    for epoch, row in fit(model, ds(idx), np.asarray(data.labels[idx])):
        p, y, _ = _probs_of(model, ds(data.val_idx))
        flat, _, _ = classification_report(y, p, names)
        row.update(val_loss=flat["log_loss"], val_accuracy=flat["accuracy"], val_auc=flat["auc"],
                   val_balanced_accuracy=flat["balanced_accuracy"], val_macro_f1=flat["macro_f1"])
        history.append(row)
        if best_auc is None or row["val_auc"] > best_auc:  # schedule.monitor = val_auc: higher is better
            best_auc, best_epoch = row["val_auc"], epoch
            best = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best)
    p, y, rows = _probs_of(model, ds(data.eval_idx))
    flat, per_class, cm = classification_report(y, p, names)
    return {"history": history, "best_epoch": best_epoch, "metrics": {f"test_{k}": v for k, v in flat.items()},
            "probs": p, "rows": rows, "confusion": cm}


def _assert_matches(res, ref, names):
    assert_rows_identical(res.history, ref["history"])
    assert res.best_epoch == ref["best_epoch"]
    assert_rows_identical([res.metrics], [ref["metrics"]])
    np.testing.assert_array_equal(res.predictions[[f"prob_{c}" for c in names]].to_numpy(), ref["probs"])
    np.testing.assert_array_equal(res.predictions["row"].to_numpy(), ref["rows"])
    np.testing.assert_array_equal(res.confusion, ref["confusion"])


def test_run_trial_equals_a_bare_loop_with_weighted_loss_and_a_max_monitor(prepared_phantom, tmp_path):
    from lungray.train import run_trial
    from lungray.train.device import torch_generator
    from lungray.train.loop import EpochSampler, EpochTagged

    data = prepared_phantom
    trial = make_trial(  # the MLP head's dropout draws from the global generator: order matters
        model=ModelConfig(name="simple_cnn", width=8, head="bn_mlp256"),
        train={"imbalance": "weighted_loss", "label_smoothing": 0.1},
        schedule={"monitor": "val_auc"},
    )

    def sgd_epochs(model, train_ds, y):
        counts = np.bincount(y, minlength=2)
        ce = torch.nn.CrossEntropyLoss(
            weight=torch.tensor(len(y) / (2 * counts), dtype=torch.float32), label_smoothing=0.1
        )
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        order = EpochSampler(len(y), trial.seed)  # the (seed, epoch) shuffle, tested on its own
        loader = torch.utils.data.DataLoader(  # 60 = 7 x 8 + 4: no batch of one to drop
            train_ds, batch_size=8, sampler=EpochTagged(order), generator=torch_generator(trial.seed, 0, stream=2)
        )
        for epoch in range(1, 4):
            order.set_epoch(epoch)
            loss_sum, correct, seen = 0.0, 0, 0
            for x, t, _ in loader:
                logits = model(x)
                loss = ce(logits, t)
                opt.zero_grad()
                loss.backward()
                opt.step()
                loss_sum += loss.item() * len(t)
                correct += int((logits.argmax(1) == t).sum())
                seen += len(t)
            yield epoch, {"epoch": epoch, "train_loss": loss_sum / seen, "train_accuracy": correct / seen, "lr": 3e-3}

    ref = _reference(data, trial, sgd_epochs)
    res = run_trial(trial, data, workdir=tmp_path)
    _assert_matches(res, ref, data.class_names)
    assert len(res.history) == 3 and res.resolved["steps_per_epoch"] == 8


def test_full_batch_model_equals_a_direct_fit(prepared_phantom, tmp_path):
    """``ModelSpec.full_batch`` (logreg): one call of fit_full_batch with balanced weights."""
    from lungray.metrics import accuracy, log_loss
    from lungray.train import run_trial

    data = prepared_phantom
    trial = make_trial(
        model=ModelConfig(name="logreg"), train={"imbalance": "weighted_loss"}, schedule={"monitor": "val_auc"}
    )

    def closed_form(model, train_ds, y):
        x = torch.stack([train_ds[i][0] for i in range(len(train_ds))])
        counts = np.bincount(y, minlength=2)
        w = 1.0 / counts[y] * len(y) / 2
        model.fit_full_batch(x, torch.as_tensor(y), sample_weight=torch.as_tensor(w, dtype=torch.float32))
        p, t, _ = _probs_of(model, train_ds)
        yield 1, {"epoch": 1, "train_loss": log_loss(t, p), "train_accuracy": accuracy(t, p.argmax(1)), "lr": float("nan")}

    ref = _reference(data, trial, closed_form)
    res = run_trial(trial, data, workdir=tmp_path)
    _assert_matches(res, ref, data.class_names)
    assert res.resolved["epochs"] == 1 and res.resolved["batch_size"] == 60


# ------------------------------------------------------------------------------------------
# a pixel-wise task through the unchanged loop
# ------------------------------------------------------------------------------------------


class MaskDataset(torch.utils.data.Dataset):
    """Images as in classification; the target is the mask of pixels brighter than ``thr``."""

    def __init__(self, data, idx, thr, **kw):
        from lungray.data.dataset import ImageDataset

        self.images, self.data, self.thr = ImageDataset(data, idx, **kw), data, thr

    def set_epoch(self, epoch):
        self.images.set_epoch(epoch)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x, _, row = self.images[i]
        return x, torch.from_numpy((np.asarray(self.data.images[row]) > self.thr).astype(np.int64)), row


def dice(pred: np.ndarray, true: np.ndarray) -> float:
    inter = np.logical_and(pred, true).sum()
    return float(2 * inter / (pred.sum() + true.sum()))


class PixelTask(Task):
    """A toy segmentation: find the bright pixels. Logits [B,2,H,W], targets [B,H,W]."""

    name = "toy_pixels"
    target_kind = "mask"
    monitors = {"val_loss": "min", "val_dice": "max"}
    report_spec = ReportSpec(
        primary_metric="dice",
        headline_metrics=("dice", "pixel_accuracy"),
        per_class_metrics=(),
        epoch_metrics=("train_loss", "train_pixel_accuracy", "val_loss", "val_dice", "lr"),
        explanation="overlay",
        artifacts=(),
    )
    thr = 0

    def class_names(self, data):
        return ["background", "bright"]

    def dataset(self, data, idx, *, augmentation, mean, std, seed):
        return MaskDataset(data, idx, self.thr, augmentation=augmentation, mean=mean, std=std, seed=seed)

    def targets(self, data, idx):
        return np.asarray(data.images[np.asarray(idx)]) > self.thr

    def criterion(self, trial, targets, num_classes, device):
        return torch.nn.CrossEntropyLoss()

    def batch_stats(self, logits, target):
        return {"correct": (logits.detach().argmax(1) == target).sum(), "pixels": torch.tensor(target.numel())}

    def epoch_stats(self, loss_sum, sums, seen):
        return {"train_loss": loss_sum / seen, "train_pixel_accuracy": int(sums["correct"]) / int(sums["pixels"])}

    def val_metrics(self, targets, outputs, class_names):
        p_true = np.take_along_axis(outputs, targets[:, None], axis=1)
        return {"val_loss": float(-np.log(p_true).mean()), "val_dice": dice(outputs.argmax(1) == 1, targets == 1)}

    def report(self, targets, outputs, class_names):
        pred = outputs.argmax(1)
        return {"dice": dice(pred == 1, targets == 1), "pixel_accuracy": float((pred == targets).mean())}, None, None

    def predictions_frame(self, data, rows, targets, outputs, class_names):
        pred = outputs.argmax(1)
        per_image = [dice(p == 1, t == 1) for p, t in zip(pred, targets)]
        return pd.DataFrame({"image_id": np.asarray(data.ids)[rows], "dice": per_image, "row": rows})


def test_a_pixelwise_task_plugs_into_the_loop(prepared_phantom, tmp_path, monkeypatch):
    import lungray.models as models
    from lungray.train import run_trial

    data = prepared_phantom
    task = PixelTask()
    task.thr = float(np.quantile(np.asarray(data.images[data.pool_idx]), 0.8))  # ~20 % foreground
    monkeypatch.setitem(TASKS._items, "toy_pixels", task)
    # a one-layer "segmenter": per-pixel logits [B, 2, H, W] from a 1x1 convolution
    monkeypatch.setattr(models, "create_model", lambda cfg, k, **kw: torch.nn.Conv2d(1, k, 1))
    trial = make_trial(
        optimizer={"lr": 0.05},
        schedule={"epochs": 6, "monitor": "val_dice", "early_stopping_patience": 2},
        train={"task": "toy_pixels"},
    )
    reported = []
    res = run_trial(trial, data, workdir=tmp_path, report=lambda m, c: reported.append(m))

    assert res.completed and [m for m in reported] == res.history
    assert set(res.history[0]) == {"epoch", "train_loss", "train_pixel_accuracy", "lr", "val_loss", "val_dice"}
    # selected by the task's direction for val_dice (max), not val_loss's
    dices = [h["val_dice"] for h in res.history]
    assert res.best_epoch == int(np.argmax(dices)) + 1
    assert set(res.metrics) == {"test_dice", "test_pixel_accuracy"} and res.per_class is None and res.confusion is None
    assert res.metrics["test_pixel_accuracy"] > 0.9  # a threshold is one 1x1 convolution away

    # the reported dice IS that of the selected weights on the held-out masks, recomputed here
    best = torch.load(res.best_checkpoint, weights_only=True)
    assert best["class_names"] == ["background", "bright"] and best["epoch"] == res.best_epoch
    net = torch.nn.Conv2d(1, 2, 1)
    net.load_state_dict(best["model"])
    ds = task.dataset(data, data.eval_idx, augmentation="none", mean=best["norm"][0], std=best["norm"][1], seed=0)
    with torch.no_grad():
        pred = torch.cat([net(ds[i][0][None]).argmax(1) for i in range(len(ds))]).numpy()
    true = np.asarray(data.images[data.eval_idx]) > task.thr
    assert res.metrics["test_dice"] == pytest.approx(dice(pred == 1, true), abs=1e-12)
    np.testing.assert_array_equal(res.predictions["row"].to_numpy(), data.eval_idx)
    assert res.predictions["dice"].to_numpy() == pytest.approx([dice(p == 1, t) for p, t in zip(pred, true)])


def test_auto_loss_names_each_tasks_default_and_an_explicit_loss_stays():
    """What the sweep's summary line prints for ``train.loss``: 'auto' resolved per task."""
    assert TASKS.get("classification").loss_name("auto") == "ce"
    assert TASKS.get("segmentation").loss_name("auto") == "dice"
    assert TASKS.get("segmentation").loss_name("dice_bce") == "dice_bce"
