"""Tasks: what a trial learns and how it is scored, by name (``train.task``).

The training loop (:mod:`lungray.train.loop`) knows epochs, samplers, optimizers, checkpoints and
early stopping; everything that depends on WHAT is predicted comes from the trial's task:

==========================  ==================================================================
``dataset(data, idx, ...)``  the torch dataset of ``(x, target, row)`` items; the target is a
                             class index for ``classification`` (``target_kind = "label"``)
``targets(data, idx)``       the training targets as an array (class weights, samplers)
``criterion(trial, ...)``    the training loss (class weights, label smoothing...)
``sampler_weights(...)``     per-image draw weights for ``train.imbalance = weighted_sampler``
``batch_stats(out, y)``      per-batch SUMS as device tensors (the loop adds them up on the
                             device and reads them once per epoch: a per-step ``float()`` is a
                             host sync that stalls a GPU's launch queue)
``epoch_stats(...)``         the epoch's training row (``train_loss``, ``train_accuracy``)
``outputs(logits)``          what inference keeps per image (softmax probabilities)
``val_metrics(y, out)``      the per-epoch validation metrics; ``monitors`` names those that
                             ``schedule.monitor`` may pick, each with "min" or "max"
``report(y, out, names)``    the final held-out report: flat metrics, per-class table, confusion
``predictions_frame(...)``   one row per evaluation image (the report's paired statistics)
``report_spec``              what the report and MLflow read: the primary metric of learning
                             curves, headline and per-class metric names, per-epoch metrics
==========================  ==================================================================

How a new task plugs in (``segmentation``, issue 10): subclass :class:`Task` and register an
instance in :data:`TASKS`. Its ``dataset`` yields ``(image [1,H,W], mask [H,W] int64, row)``
with one geometric transform applied to both (``target_kind = "mask"``); the model returns
logits ``[B,K,H,W]`` (``outputs`` keeps ``softmax(logits, 1)``, the same call);
``criterion`` is Dice or Dice + CE; ``batch_stats`` sums per-image Dice/IoU on the device;
``val_metrics`` gives ``val_dice``/``val_iou``/``val_loss`` with their directions in
``monitors``; ``report`` gives per-image Dice/IoU (positive images and all images separately)
plus image-level detection AUC; ``predictions_frame`` one row per image with its scores; and
``report_spec`` names ``dice`` as the primary metric and no Grad-CAM. The loop, the sweep and
the checkpoint format need no change. ``train.task`` and ``schedule.monitor`` are validated
against this registry at config time (:mod:`lungray.validate`).

Importing this module is cheap (no torch): config validation reads the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import numpy as np

from lungray import tracking as T
from lungray.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import torch

    from lungray.config import TrialConfig

__all__ = ["TASKS", "Task", "ReportSpec", "ClassificationTask", "class_weights", "sample_weights"]


@dataclass(frozen=True)
class ReportSpec:
    """What the report builder and MLflow read from a task's trials.

    ``primary_metric``: the held-out metric of learning curves and paired comparisons (without
    the ``test_`` prefix); ``headline_metrics``: the study table's columns; ``per_class_metrics``:
    the per-class table's; ``epoch_metrics``: the per-epoch MLflow metrics; ``explanation``:
    the panel type (``"gradcam"``, or ``"overlay"`` for a mask that is its own explanation);
    ``artifacts``: the per-trial MLflow artifacts the task's results fill.
    """

    primary_metric: str
    headline_metrics: tuple[str, ...]
    per_class_metrics: tuple[str, ...]
    epoch_metrics: tuple[str, ...]
    explanation: str
    artifacts: tuple[str, ...]


class Task:
    """Base class of a task; see the module docstring for what each member does."""

    name: str = ""
    target_kind: str = ""
    monitors: Mapping[str, str] = {}  # validation metric -> "min" or "max", in the order listed to users
    report_spec: ReportSpec

    def mode(self, monitor: str) -> str:
        """``"min"`` or ``"max"``: the direction in which ``monitor`` improves."""
        return self.monitors[monitor]

    def check(self, cfg: Any) -> None:
        """Task-specific config checks on a :class:`~lungray.config.StudyConfig`, run at config
        time after the generic ones (e.g. segmentation: a data source with masks)."""

    # -- data --------------------------------------------------------------------------------
    def class_names(self, data: Any) -> list[str]:
        """The K output channels' names (the logits' class axis)."""
        return [str(c) for c in data.class_names]

    def dataset(self, data: Any, idx: np.ndarray, *, augmentation: str, mean: float, std: float, seed: int) -> Any:
        """The dataset of rows ``idx``: items ``(x, target, row)`` for an index ``i`` or an
        ``(epoch, i)`` pair, and ``set_epoch(e)`` (see :class:`lungray.data.dataset.ImageDataset`:
        augmentation draws are a function of (seed, epoch, row), so resumes replay exactly)."""
        raise NotImplementedError

    def targets(self, data: Any, idx: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # -- training ----------------------------------------------------------------------------
    def criterion(self, trial: "TrialConfig", targets: np.ndarray, num_classes: int, device: Any) -> Any:
        raise NotImplementedError

    def sampler_weights(
        self, trial: "TrialConfig", targets: np.ndarray, num_classes: int
    ) -> Optional[np.ndarray]:
        return None

    def full_batch_weights(
        self, trial: "TrialConfig", targets: np.ndarray, num_classes: int
    ) -> Optional[np.ndarray]:
        """Per-sample loss weights for a model fitted in one call (``ModelSpec.full_batch``)."""
        return None

    def batch_stats(self, logits: "torch.Tensor", target: "torch.Tensor") -> dict[str, "torch.Tensor"]:
        raise NotImplementedError

    def epoch_stats(self, loss_sum: float, sums: Mapping[str, Any], seen: int) -> dict[str, float]:
        raise NotImplementedError

    # -- inference and scores ------------------------------------------------------------------
    def outputs(self, logits: "torch.Tensor") -> "torch.Tensor":
        import torch

        return torch.softmax(logits, dim=1)

    def output_stats(self, targets: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
        """The training row of a full-batch fit (no batches), from the fitted model's outputs."""
        raise NotImplementedError

    def val_metrics(self, targets: np.ndarray, outputs: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
        raise NotImplementedError

    def report(
        self, targets: np.ndarray, outputs: np.ndarray, class_names: Sequence[str]
    ) -> tuple[dict[str, float], Any, Any]:
        raise NotImplementedError

    def predictions_frame(
        self, data: Any, rows: np.ndarray, targets: np.ndarray, outputs: np.ndarray, class_names: Sequence[str]
    ) -> "pd.DataFrame":
        raise NotImplementedError


TASKS: Registry[Task] = Registry("task")


# ------------------------------------------------------------------------------------------
# classification
# ------------------------------------------------------------------------------------------


def class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """``n / (K * count_c)`` per class (scikit-learn's "balanced"); 0 for an absent class.

    Used for ``train.imbalance = weighted_loss``: on the 4-class set (PROTOCOLS.md section 4,
    10,192 Normal vs 1,345 Viral Pneumonia) the rare class then weighs as much in the loss as
    the common one.

    >>> class_weights(np.array([0, 0, 0, 1]), 2).tolist()
    [0.6666666666666666, 2.0]
    """
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes).astype(np.float64)
    w = np.zeros(n_classes, dtype=np.float64)
    present = counts > 0
    w[present] = len(y) / (n_classes * counts[present])
    return w


def sample_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-sample weights ``1 / count[y_i]`` (``train.imbalance = weighted_sampler``): every class
    is drawn equally often in expectation.

    >>> sample_weights(np.array([0, 0, 0, 1]), 2).tolist()
    [0.3333333333333333, 0.3333333333333333, 0.3333333333333333, 1.0]
    """
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes).astype(np.float64)
    return 1.0 / counts[np.asarray(y, dtype=np.int64)]


# monitor name -> key in classification_report's flat dict, in the order of a validation row
_VAL_KEYS = {
    "val_loss": "log_loss",
    "val_accuracy": "accuracy",
    "val_auc": "auc",
    "val_balanced_accuracy": "balanced_accuracy",
    "val_macro_f1": "macro_f1",
}


class ClassificationTask(Task):
    """One class per image: cross-entropy, softmax probabilities, :func:`classification_report`.

    Every study of PROTOCOLS.md but the RSNA U-Net (section 3) is this task.
    """

    name = "classification"
    target_kind = "label"
    monitors = {
        "val_loss": "min",
        "val_accuracy": "max",
        "val_balanced_accuracy": "max",
        "val_macro_f1": "max",
        "val_auc": "max",
    }
    report_spec = ReportSpec(
        primary_metric="accuracy",
        headline_metrics=T.HEADLINE_METRICS,
        per_class_metrics=T.PER_CLASS_METRICS,
        epoch_metrics=T.EPOCH_METRICS,
        explanation="gradcam",
        artifacts=(T.PREDICTIONS, T.PER_CLASS, T.CONFUSION_CSV, T.CONFUSION_PNG, T.HISTORY),
    )

    def dataset(self, data, idx, *, augmentation, mean, std, seed):
        from lungray.data.dataset import ImageDataset

        return ImageDataset(data, idx, augmentation=augmentation, mean=mean, std=std, seed=seed)

    def targets(self, data, idx):
        return np.asarray(data.labels[idx], dtype=np.int64)

    def criterion(self, trial, targets, num_classes, device):
        """Cross-entropy; ``weighted_loss`` weighs classes "balanced" (:func:`class_weights`)."""
        import torch

        tc = trial.train
        cw = class_weights(targets, num_classes) if tc.imbalance == "weighted_loss" else None
        return torch.nn.CrossEntropyLoss(
            weight=None if cw is None else torch.as_tensor(cw, dtype=torch.float32, device=device),
            label_smoothing=tc.label_smoothing,
        )

    def sampler_weights(self, trial, targets, num_classes):
        return sample_weights(targets, num_classes) if trial.train.imbalance == "weighted_sampler" else None

    def full_batch_weights(self, trial, targets, num_classes) -> Optional[np.ndarray]:
        """Per-sample loss weights of a full-batch fit: either imbalance option gives the
        "balanced" weighting (a closed-form fit has no sampler to weight)."""
        if trial.train.imbalance in ("weighted_loss", "weighted_sampler"):
            return sample_weights(targets, num_classes) * len(targets) / num_classes
        return None

    def batch_stats(self, logits, target):
        return {"correct": (logits.detach().argmax(1) == target).sum()}

    def epoch_stats(self, loss_sum, sums, seen):
        return {"train_loss": loss_sum / max(seen, 1), "train_accuracy": int(sums["correct"]) / max(seen, 1)}

    def output_stats(self, targets, outputs):
        from lungray.metrics import accuracy, log_loss

        return {"train_loss": log_loss(targets, outputs), "train_accuracy": accuracy(targets, outputs.argmax(1))}

    def val_metrics(self, targets, outputs, class_names):
        flat, _, _ = self.report(targets, outputs, class_names)
        return {k: float(flat[v]) for k, v in _VAL_KEYS.items()}

    def report(self, targets, outputs, class_names):
        from lungray.metrics import classification_report

        return classification_report(targets, _probs(outputs, len(class_names)), class_names)

    def predictions_frame(self, data, rows, targets, outputs, class_names):
        import pandas as pd

        probs = _probs(outputs, len(class_names))
        ids = np.asarray(data.ids)[rows] if len(rows) else np.zeros(0, dtype=object)
        df = pd.DataFrame({"image_id": ids.astype(str), "y_true": targets.astype(np.int64)})
        for j, c in enumerate(class_names):
            df[f"prob_{c}"] = probs[:, j] if probs.shape[0] else np.zeros(0)
        df["row"] = rows.astype(np.int64)
        return df


def _probs(outputs: np.ndarray, k: int) -> np.ndarray:
    """``outputs`` as an (n, K) array; an empty evaluation set gives (0, K)."""
    return outputs if outputs.shape[0] else np.zeros((0, k))


TASKS.register(
    "classification",
    ClassificationTask(),
    doc="one label per image: cross-entropy, softmax, accuracy/AUC/F1 and per-class tables",
)
