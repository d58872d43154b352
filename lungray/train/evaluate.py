"""Batched inference and the validation / held-out evaluation of one model.

Evaluation runs under ``torch.inference_mode`` in eval mode (batch-norm running statistics,
no dropout) on the UNWRAPPED model, so every distributed rank computes identical validation
metrics and therefore takes identical early-stopping decisions without a collective.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from lungray.metrics import classification_report

# monitor name -> key in classification_report's flat dict
VAL_KEYS = {
    "val_loss": "log_loss",
    "val_accuracy": "accuracy",
    "val_auc": "auc",
    "val_balanced_accuracy": "balanced_accuracy",
    "val_macro_f1": "macro_f1",
}


def unwrap(model: Any) -> Any:
    """The bare module under DDP / ``prepare_model`` wrappers."""
    return getattr(model, "module", model)


def predict(
    model: Any,
    dataset: Any,
    *,
    batch_size: int,
    device: Any,
    dtype: Optional[Any] = None,
    channels_last: bool = False,
    num_workers: int = 0,
    loader: Optional[Any] = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Softmax probabilities (n, K) float64, labels (n,) and dataset rows (n,), in dataset order.

    ``loader``: an existing ``DataLoader`` over ``dataset`` in order (the training loop keeps
    one with persistent workers for its per-epoch validation, instead of starting
    ``num_workers`` processes at every evaluation). Probabilities stay on the device until the
    end: one host transfer per call, not one per batch (each is a sync on a GPU).
    """
    import torch

    from lungray.train.device import autocast, to_channels_last

    net = unwrap(model)
    was_training = net.training
    net.eval()
    if loader is None:
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=max(1, int(batch_size)),
            shuffle=False,
            num_workers=num_workers,
            pin_memory=getattr(device, "type", "cpu") == "cuda",
        )
    probs, ys, rows = [], [], []
    try:
        with torch.inference_mode():
            for x, y, row in loader:
                x = to_channels_last(x.to(device, non_blocking=True), channels_last)
                with autocast(device, dtype):
                    logits = net(x)
                probs.append(torch.softmax(logits.float(), dim=1))
                ys.append(np.asarray(y, dtype=np.int64))
                rows.append(np.asarray(row, dtype=np.int64))
    finally:
        net.train(was_training)
    if not probs:
        return np.zeros((0, 0)), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return torch.cat(probs).cpu().numpy().astype(np.float64), np.concatenate(ys), np.concatenate(rows)


def val_metrics(y: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """The per-epoch validation metrics (every name ``schedule.monitor`` may pick)."""
    flat, _, _ = classification_report(y, probs, class_names)
    return {k: float(flat[v]) for k, v in VAL_KEYS.items()}


def is_better(value: float, best: Optional[float], monitor: str) -> bool:
    """Strict improvement of ``monitor`` (min for ``val_loss``, max otherwise); NaN never improves.

    The first evaluation always counts as the best so far, so a trial whose validation metric
    is undefined (e.g. AUC on a single-class validation split) still selects a checkpoint.
    """
    if best is None:
        return True
    if value != value:  # NaN
        return False
    if best != best:
        return True
    return value < best if monitor == "val_loss" else value > best


class EarlyStopping:
    """Best-so-far tracking and patience on ``schedule.monitor``, counted in evaluations.

    ``update(value, epoch)`` returns ``(improved, stop)``: ``improved`` when ``value`` is the
    new best (the loop then keeps that model state), ``stop`` once ``patience`` consecutive
    evaluations have not improved. ``patience=None`` never stops (the studies trained fixed
    budgets, PROTOCOLS.md sections 1-2; the 4-class and from-scratch studies used early
    stopping, sections 4-5).

    >>> es = EarlyStopping("val_loss", patience=2)
    >>> [es.update(v, e) for e, v in enumerate([0.5, 0.4, 0.45, 0.41, 0.39], start=1)]
    [(True, False), (True, False), (False, False), (False, True), (True, False)]
    >>> es.best, es.best_epoch
    (0.39, 5)
    """

    def __init__(self, monitor: str, patience: Optional[int] = None):
        self.monitor = monitor
        self.patience = patience
        self.best: Optional[float] = None
        self.best_epoch: Optional[int] = None
        self.bad = 0

    def update(self, value: float, epoch: int) -> tuple[bool, bool]:
        if is_better(value, self.best, self.monitor):
            self.best, self.best_epoch, self.bad = float(value), int(epoch), 0
            return True, False
        self.bad += 1
        return False, self.patience is not None and self.bad >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad": int(self.bad)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = None if state["best"] is None else float(state["best"])
        self.best_epoch = None if state["best_epoch"] is None else int(state["best_epoch"])
        self.bad = int(state["bad"])
