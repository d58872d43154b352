"""Batched inference and the validation / held-out evaluation of one model.

Evaluation runs under ``torch.inference_mode`` in eval mode (batch-norm running statistics,
no dropout) on the UNWRAPPED model, so every distributed rank computes identical validation
metrics and therefore takes identical early-stopping decisions without a collective.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np


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
    batch_fn: Optional[Callable[[Any, Any], tuple[Any, Any]]] = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What is kept per image (softmax probabilities (n, K) by default) as float64, targets and
    dataset rows (n,), in dataset order.

    ``batch_fn(logits, targets) -> (kept, kept_targets)`` maps a batch's float32 logits and its
    targets (on the device) to what is kept per image: the task's
    :meth:`~lungray.train.tasks.Task.evaluate_batch` (classification: softmax probabilities and
    the class indices; segmentation: a few numbers per image counted on the GPU instead of every
    probability map and mask on the host). Default: softmax over dimension 1 (the class axis of
    both ``[B, K]`` and ``[B, K, H, W]`` logits) and the targets unchanged.

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
                out = logits.float()
                if batch_fn is None:
                    kept, y = torch.softmax(out, dim=1), torch.as_tensor(y)
                else:
                    kept, y = batch_fn(out, y.to(device, non_blocking=True))
                probs.append(kept)
                ys.append(y)
                rows.append(np.asarray(row, dtype=np.int64))
    finally:
        net.train(was_training)
    if not probs:
        return np.zeros((0, 0)), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    kept, targets = torch.cat(probs).cpu().numpy(), torch.cat(ys).cpu().numpy()
    return kept.astype(np.float64), targets.astype(np.int64), np.concatenate(rows)


def is_better(value: float, best: Optional[float], monitor: str, mode: Optional[str] = None) -> bool:
    """Strict improvement of ``monitor`` in direction ``mode`` ("min"/"max", from the task's
    :attr:`~lungray.train.tasks.Task.monitors`; by default min for ``val_loss``, max otherwise);
    NaN never improves.

    The first evaluation always counts as the best so far, so a trial whose validation metric
    is undefined (e.g. AUC on a single-class validation split) still selects a checkpoint.
    """
    if best is None:
        return True
    if value != value:  # NaN
        return False
    if best != best:
        return True
    mode = mode or ("min" if monitor == "val_loss" else "max")
    return value < best if mode == "min" else value > best


class EarlyStopping:
    """Best-so-far tracking and patience on ``schedule.monitor``, counted in evaluations.

    ``mode`` ("min"/"max") is the task's direction for ``monitor`` (see :func:`is_better`).

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

    def __init__(self, monitor: str, patience: Optional[int] = None, mode: Optional[str] = None):
        self.monitor = monitor
        self.patience = patience
        self.mode = mode
        self.best: Optional[float] = None
        self.best_epoch: Optional[int] = None
        self.bad = 0

    def update(self, value: float, epoch: int) -> tuple[bool, bool]:
        if is_better(value, self.best, self.monitor, self.mode):
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
