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
``outputs(logits)``          probabilities from logits (softmax; one sigmoid channel: sigmoid)
``evaluate_batch(out, y)``   what inference keeps per image, on the device (classification: the
                             probabilities and labels; segmentation: pixel confusions, a
                             detection score and the loss's sums, never the probability maps)
``val_metrics(y, out)``      the per-epoch validation metrics; ``monitors`` names those that
                             ``schedule.monitor`` may pick, each with "min" or "max"
``report(y, out, names)``    the final held-out report: flat metrics, per-class table, confusion
``predictions_frame(...)``   one row per evaluation image (the report's paired statistics)
``report_spec``              what the report and MLflow read: the primary metric of learning
                             curves, headline and per-class metric names, per-epoch metrics
``check_model``/``check``    config-time checks (which models the task takes; e.g. masks needed)
``check_data(data)``         prepared-data checks before any training (segmentation: masks)
``build_model(...)``         the network (classifiers; segmentation: a U-Net with K or 1 outputs)
``for_trial(trial)``         the task as a trial configures it (``train.loss``)
==========================  ==================================================================

Two tasks are registered: ``classification`` and ``segmentation`` (issue 10,
:class:`SegmentationTask`: masks, U-Nets, Dice losses, per-image Dice/IoU). A new task subclasses
:class:`Task` and registers an instance in :data:`TASKS`; the loop, the sweep, the checkpoint
format and the MLflow schema need no change, and the report reads its ``report_spec``.
``train.task``, ``train.loss`` and ``schedule.monitor`` are validated against this registry at
config time (:mod:`lungray.train.validate`).

Importing this module is cheap (no torch): config validation reads the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import numpy as np

from lungray import tracking as T
from lungray.errors import ConfigError
from lungray.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import torch

    from lungray.config import TrialConfig

__all__ = [
    "TASKS", "Task", "ReportSpec", "ClassificationTask", "SegmentationTask", "class_weights", "sample_weights",
    "image_confusion_torch",
]


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

    losses: tuple[str, ...] = ()  # what ``train.loss`` may name besides "auto" (the first is the default)

    def loss_name(self, loss: str) -> str:
        """The loss ``train.loss`` names, ``"auto"`` resolved to this task's default."""
        return self.losses[0] if loss == "auto" and self.losses else loss

    def mode(self, monitor: str) -> str:
        """``"min"`` or ``"max"``: the direction in which ``monitor`` improves."""
        return self.monitors[monitor]

    def for_trial(self, trial: "TrialConfig") -> "Task":
        """The task as one trial configures it (e.g. segmentation's ``train.loss``); the
        registered instance when the trial changes nothing."""
        return self

    def check(self, cfg: Any) -> None:
        """Task-specific config checks on a :class:`~lungray.config.StudyConfig`, run at config
        time after the generic ones (e.g. segmentation: a data source with masks)."""

    def check_model(self, m: Any, where: str, resolution: Optional[int]) -> None:
        """Config-time checks of one :class:`~lungray.config.ModelConfig` for this task; by
        default a classifier (lungray's own, timm, ``tv:``) with its head, freeze policy and
        stem, and a U-Net name is refused with the task it belongs to."""
        from lungray.models import FREEZE_POLICIES, HEADS, check_model_config, check_model_name
        from lungray.models.segmentation import is_segmentation_model

        if is_segmentation_model(m.name):
            raise ConfigError(
                f"{where}.name: '{m.name}' is a segmentation model (per-pixel masks); train.task={self.name} "
                "takes one label per image: set train.task=segmentation or pick a classifier (e.g. resnet18)"
            )
        check_model_name(m.name)
        HEADS.check(m.head)
        FREEZE_POLICIES.check(m.freeze.split(":")[0] if m.freeze.startswith("last:") else m.freeze)
        if m.freeze.startswith("last:"):
            n = m.freeze.split(":", 1)[1]
            if not n.isdigit() or int(n) < 1:
                raise ConfigError(f"{where}.freeze '{m.freeze}': N in last:N must be a positive integer")
        if m.stem not in ("none", "conv8_conv3"):
            raise ConfigError(f"{where}.stem: '{m.stem}' is not valid; valid choices: none, conv8_conv3")
        # head/stem/pretrained combinations, weights path exists, the model's resolution rule
        check_model_config(m, where, resolution=resolution)

    def check_data(self, data: Any) -> None:
        """Checks on the prepared data before any training (e.g. segmentation: it has masks)."""

    def build_model(self, trial: "TrialConfig", class_names: Sequence[str], *, in_chans: int, resolution: int, **kwargs: Any) -> Any:
        """The network for ``trial.model``, with an output per class by default; ``kwargs`` come
        from the model spec's ``prepare`` hook (e.g. the autoencoder's weights)."""
        import lungray.models as models

        return models.create_model(trial.model, len(class_names), in_chans=in_chans, resolution=resolution, **kwargs)

    # -- data --------------------------------------------------------------------------------
    def class_names(self, data: Any) -> list[str]:
        """The K output channels' names (the logits' class axis)."""
        return [str(c) for c in data.class_names]

    def dataset(self, data: Any, idx: np.ndarray, *, augmentation: str, mean: float, std: float, seed: int, **kwargs: Any) -> Any:
        """The dataset of rows ``idx``: items ``(x, target, row)`` for an index ``i`` or an
        ``(epoch, i)`` pair, and ``set_epoch(e)`` (see :class:`lungray.data.dataset.ImageDataset`:
        augmentation draws are a function of (seed, epoch, row), so resumes replay exactly).
        ``kwargs``: ``size`` (a model's ``input_size``), passed only when set."""
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

    def evaluate_batch(self, logits: "torch.Tensor", target: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
        """What inference keeps of one batch, on the device: ``(outputs, targets)`` per image,
        which ``val_metrics``, ``report`` and ``predictions_frame`` then read (as float64 and
        int64 arrays). By default :meth:`outputs` and the targets themselves."""
        return self.outputs(logits), target

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
    losses = ("ce",)
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

    def dataset(self, data, idx, *, augmentation, mean, std, seed, **kwargs):
        from lungray.data.dataset import ImageDataset

        return ImageDataset(data, idx, augmentation=augmentation, mean=mean, std=std, seed=seed, **kwargs)

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


# ------------------------------------------------------------------------------------------
# segmentation
# ------------------------------------------------------------------------------------------

#: the foreground class's name per mask kind (the mask's class axis: background, foreground)
MASK_CLASS = {"lesion": "lesion", "lesion_boxes": "opacity", "lung": "lung"}

# monitor name -> key of the segmentation summary (lungray.metrics.segmentation.report_from_confusion)
_SEG_VAL_KEYS = {
    "val_dice_pos": "dice_pos",
    "val_dice_all": "dice_all",
    "val_iou_pos": "iou_pos",
    "val_iou_all": "iou_all",
    "val_miou_global": "miou_global",
    "val_det_auc": "det_auc",
}
_SEG_HEADLINE = ("dice_pos", "dice_all", "iou_pos", "iou_all", "miou_global", "det_auc")


def image_confusion_torch(pred: "torch.Tensor", target: "torch.Tensor", num_classes: int = 2) -> "torch.Tensor":
    """Per-image pixel confusion ``C[n, t, p]`` (int64 ``(B, K, K)``) on the tensors' device.

    The torch twin of :func:`lungray.metrics.segmentation.image_confusion` (a test holds them equal):
    ``target`` pixels equal to ``IGNORE`` (255) are skipped. K^2 masked sums instead of a
    ``bincount``, whose data-dependent output size is a host sync on a GPU.
    """
    import torch

    from lungray.data.masks import IGNORE

    k = int(num_classes)
    valid = target != IGNORE
    cols = [((target == i) & (pred == j) & valid).sum((1, 2)) for i in range(k) for j in range(k)]
    return torch.stack(cols, dim=1).reshape(-1, k, k)


def _dice_iou_sums(conf: "torch.Tensor") -> dict[str, "torch.Tensor"]:
    """Per-image Dice/IoU of the foreground (class 1) summed over the known and the positive
    images of a batch, with :mod:`lungray.metrics.segmentation`' conventions (empty truth and prediction
    score 1; an image without a valid pixel is left out)."""
    import torch

    tp, fp, fn = conf[:, 1, 1], conf[:, 0, 1], conf[:, 1, 0]
    known = conf.sum((1, 2)) > 0
    pos = (tp + fn) > 0
    d_den, i_den = 2 * tp + fp + fn, tp + fp + fn
    one = torch.ones_like(tp, dtype=torch.float64)
    dice = torch.where(d_den > 0, 2 * tp / d_den.clamp_min(1), one)
    iou = torch.where(i_den > 0, tp / i_den.clamp_min(1), one)
    return {
        "dice_all": (dice * known).sum(),
        "dice_pos": (dice * pos).sum(),
        "iou_pos": (iou * pos).sum(),
        "n_known": known.sum(),
        "n_pos": pos.sum(),
    }


def _ratio_or_nan(num: Any, den: Any) -> float:
    den = float(den)
    return float(num) / den if den > 0 else float("nan")


class SegmentationTask(Task):
    """One mask per image: the RSNA study's U-Net task (PROTOCOLS.md section 3).

    Targets are the prepared cache's masks (:class:`~lungray.data.dataset.ImageDataset` with
    ``target="mask"``: image and mask moved by one geometric draw); the model is a
    :data:`~lungray.models.segmentation.SEG_MODELS` U-Net; the loss is ``train.loss``
    (``dice`` by default; ``dice_rsna``, the study's own foreground-only Dice with smooth 1e-6,
    which the ``segmentation`` preset uses; ``dice_ce``, ``dice_bce`` with one sigmoid channel,
    ``ce``: :mod:`lungray.train.losses`). Two mask classes (background and the kind's
    foreground: ``lesion``, ``opacity`` for RSNA boxes, ``lung``).

    Inference keeps 4 + 1 + (3C + 2) numbers per image, counted on the device
    (:meth:`evaluate_batch`): the pixel confusion, the detection score (maximum foreground
    probability) and the loss's sufficient statistics, so the validation loss is the training
    loss over the whole split as one batch (:func:`lungray.train.losses.loss_from_stats`) and
    no probability map leaves the GPU. Scores (:class:`~lungray.metrics.segmentation.SegmentationAccumulator`):
    per-image Dice and IoU averaged over POSITIVE images (``dice_pos``: the segmentation
    quality; the primary metric) and over ALL images (``dice_all``: empty images count 1 when
    left empty, 0 otherwise), the study's background-dominated global mean IoU
    (``miou_global``), and image-level detection from the mask (``det_auc``...).
    """

    name = "segmentation"
    target_kind = "mask"
    losses = ("dice", "dice_rsna", "dice_ce", "dice_bce", "ce")  # lungray.train.losses.LOSSES (a test holds them equal)
    monitors = {"val_loss": "min", **{k: "max" for k in _SEG_VAL_KEYS}}
    report_spec = ReportSpec(
        primary_metric="dice_pos",
        headline_metrics=_SEG_HEADLINE,
        per_class_metrics=("dice_pos", "dice_all", "iou_pos", "iou_all"),
        epoch_metrics=("train_loss", "train_dice_pos", "train_dice_all", "val_loss", "val_dice_pos", "val_dice_all", "lr"),
        explanation="overlay",
        artifacts=(T.PREDICTIONS, T.PER_CLASS, T.HISTORY),
    )

    def __init__(self, loss: str = "dice"):
        self.loss = loss

    def for_trial(self, trial):
        loss = trial.train.loss
        return self if loss in ("auto", self.loss) else SegmentationTask(loss)

    # -- config and data ---------------------------------------------------------------------
    def check(self, cfg):
        from lungray.data.masks import SOURCE_MASK_KIND

        src = cfg.data.source
        if src not in SOURCE_MASK_KIND:
            have = ", ".join(f"{s} ({k})" for s, k in SOURCE_MASK_KIND.items())
            raise ConfigError(
                f"train.task=segmentation needs masks, and data.source '{src}' has none; sources with masks: {have}"
            )
        t = cfg.train
        if t.imbalance == "weighted_loss":
            raise ConfigError(
                "train.imbalance: 'weighted_loss' weighs image classes, which a per-pixel loss does not have; "
                "segmentation takes none or weighted_sampler (draws images by their class label)"
            )
        if t.label_smoothing:
            raise ConfigError(f"train.label_smoothing: segmentation losses take no label smoothing, got {t.label_smoothing}; set it to 0")

    def check_model(self, m, where, resolution):
        from lungray.models.segmentation import SEG_MODELS, check_segmentation_model_config, is_segmentation_model

        if not is_segmentation_model(m.name):
            names = ", ".join(f"{n}:<timm encoder>" if SEG_MODELS.get(n).encoder else n for n in SEG_MODELS.names())
            raise ConfigError(
                f"{where}.name: '{m.name}' is not a segmentation model; train.task=segmentation takes {names} "
                "(or set train.task=classification for a classifier)"
            )
        check_segmentation_model_config(m, where, resolution=resolution)

    def check_data(self, data):
        if getattr(data, "mask_kind", None) is None or data.masks is None:
            src = (getattr(data, "info", None) or {}).get("source", "?")
            raise ConfigError(
                f"train.task=segmentation: the prepared dataset at {data.root} (source '{src}') has no masks "
                "(mask kind: none); RSNA needs stage_2_train_labels.csv with boxes, the Radiography Database "
                "its <Class>/masks/ folders"
            )

    def class_names(self, data):
        return ["background", MASK_CLASS.get(data.mask_kind, "foreground")]

    def dataset(self, data, idx, *, augmentation, mean, std, seed, **kwargs):
        from lungray.data.dataset import ImageDataset

        return ImageDataset(data, idx, augmentation=augmentation, mean=mean, std=std, seed=seed, target="mask", **kwargs)

    def targets(self, data, idx):
        """The images' class labels (e.g. RSNA Target): what ``weighted_sampler`` balances."""
        return np.asarray(data.labels[idx], dtype=np.int64)

    def build_model(self, trial, class_names, *, in_chans, resolution, **kwargs):
        from lungray.models.segmentation import create_segmentation_model

        channels = 1 if self.loss == "dice_bce" else len(class_names)  # dice_bce: one sigmoid channel
        return create_segmentation_model(trial.model, channels, in_chans=in_chans, resolution=resolution)

    # -- training ----------------------------------------------------------------------------
    def criterion(self, trial, targets, num_classes, device):
        from lungray.train.losses import build_loss

        return build_loss(self.loss)

    def sampler_weights(self, trial, targets, num_classes):
        if trial.train.imbalance != "weighted_sampler":
            return None
        return sample_weights(targets, int(targets.max()) + 1 if len(targets) else 1)

    def _pred(self, logits: "torch.Tensor") -> "torch.Tensor":
        return (logits[:, 0] >= 0).long() if logits.shape[1] == 1 else logits.argmax(1)

    def batch_stats(self, logits, target):
        return _dice_iou_sums(image_confusion_torch(self._pred(logits.detach()), target))

    def epoch_stats(self, loss_sum, sums, seen):
        return {
            "train_loss": loss_sum / max(seen, 1),
            "train_dice_pos": _ratio_or_nan(sums["dice_pos"], sums["n_pos"]),
            "train_dice_all": _ratio_or_nan(sums["dice_all"], sums["n_known"]),
        }

    # -- inference and scores ------------------------------------------------------------------
    def outputs(self, logits):
        import torch

        return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)

    def evaluate_batch(self, logits, target):
        """Per image: confusion (4), detection score (1), loss statistics (3C + 2), as float64;
        the target kept is whether the truth has foreground (1/0, 255 when the mask is unknown)."""
        import torch

        from lungray.data.masks import IGNORE
        from lungray.train.losses import loss_stats

        probs = self.outputs(logits)
        conf = image_confusion_torch(self._pred(logits), target)
        fg = probs[:, 0] if probs.shape[1] == 1 else 1.0 - probs[:, 0]
        score = fg.flatten(1).amax(1)
        stats = loss_stats(logits, target, ce=True)
        kept = torch.cat([conf.flatten(1).double(), score[:, None].double(), stats.double()], dim=1)
        known = conf.sum((1, 2)) > 0
        has_fg = torch.where(known, (conf[:, 1].sum(1) > 0).long(), torch.full_like(known, IGNORE, dtype=torch.long))
        return kept, has_fg

    @staticmethod
    def _split(outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(confusions (N, 2, 2), scores (N,), loss statistics (N, 3C + 2)) of kept outputs."""
        o = np.asarray(outputs, dtype=np.float64)
        if o.shape[0] == 0:
            return np.zeros((0, 2, 2), dtype=np.int64), np.zeros(0), np.zeros((0, 8))
        return np.round(o[:, :4]).astype(np.int64).reshape(-1, 2, 2), o[:, 4], o[:, 5:]

    def _summary(self, outputs: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
        from lungray.metrics.segmentation import SegmentationAccumulator

        conf, scores, _ = self._split(outputs)
        acc = SegmentationAccumulator(2)
        acc.add(conf, scores)
        return acc.report(list(class_names))

    def _loss(self, outputs: np.ndarray) -> float:
        import torch

        from lungray.train.losses import loss_from_stats

        _, _, stats = self._split(outputs)
        if stats.shape[0] == 0:
            return float("nan")
        return float(loss_from_stats(self.loss, torch.as_tensor(stats.sum(0))))

    def val_metrics(self, targets, outputs, class_names):
        flat = self._summary(outputs, class_names)
        return {"val_loss": self._loss(outputs), **{k: float(flat[v]) for k, v in _SEG_VAL_KEYS.items()}}

    def report(self, targets, outputs, class_names):
        """Flat held-out metrics (``dice_pos``, ``dice_all``, ``iou_pos``, ``iou_all``,
        ``miou_global``, ``pixel_accuracy``, ``det_*``, counts, the loss), a per-class table
        (one row per foreground class), and no confusion matrix (the pixel counts are in
        ``pixel_accuracy`` and ``miou_global``; an image-class matrix does not exist)."""
        import pandas as pd

        flat = self._summary(outputs, class_names)
        per_class = pd.DataFrame(
            [{"class": name, **vals} for name, vals in flat.pop("per_class").items()],
            columns=["class", "dice_pos", "dice_all", "iou_pos", "iou_all", "n_pos"],
        )
        flat["loss"] = self._loss(outputs)
        return {k: float(v) for k, v in flat.items()}, per_class, None

    def predictions_frame(self, data, rows, targets, outputs, class_names):
        """One row per evaluation image: ``image_id`` (the manifest's, as classification),
        ``y_true`` (the truth has foreground: 1/0; 255 unknown), ``score`` (detection score),
        ``dice``, ``iou`` (NaN for an unknown mask), ``fg_true``, ``fg_pred`` (foreground pixel
        counts), ``row``: the per-image values paired comparisons need."""
        import pandas as pd

        from lungray.metrics.segmentation import overlap_ratios

        conf, scores, _ = self._split(outputs)
        dice, iou = overlap_ratios(conf)
        ids = np.asarray(data.ids)[rows] if len(rows) else np.zeros(0, dtype=object)
        return pd.DataFrame({
            "image_id": ids.astype(str),
            "y_true": np.asarray(targets, dtype=np.int64),
            "score": scores,
            "dice": dice[:, 1],
            "iou": iou[:, 1],
            "fg_true": conf[:, 1, :].sum(1),
            "fg_pred": conf[:, :, 1].sum(1),
            "row": np.asarray(rows, dtype=np.int64),
        })


TASKS.register(
    "segmentation",
    SegmentationTask(),
    doc="one mask per image: U-Nets, Dice/CE losses, per-image Dice/IoU over positive and all images, detection AUC",
)
