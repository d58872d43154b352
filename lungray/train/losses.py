"""Segmentation losses (torch, pure functions of logits and masks) and their registry.

Inputs: ``logits`` float ``(B, K, H, W)``; ``target`` int64 ``(B, H, W)`` of class indices with
``IGNORE`` (255, :mod:`lungray.data.masks`) for unknown pixels, which every loss skips.

``K >= 2``: softmax over the K classes against the one-hot target (the RSNA study's one-hot
masks with a softmax output, PROTOCOLS.md section 3). ``K == 1``: one sigmoid channel, the
foreground probability, against a 0/1 target.

Soft Dice, and its smoothing convention (stated because papers differ):

    D_c = (2 * sum(p_c * y_c) + s) / (sum(p_c) + sum(y_c) + s),    loss = 1 - mean_c D_c

with the sums over every valid pixel of the WHOLE BATCH (batch-global, as the Keras
``dice_coef`` the study used and smp's ``DiceLoss``; per-image Dice is a metric, in
:mod:`lungray.metrics.segmentation`) and ``s = smooth = 1`` in numerator and denominator (the Keras
kernels' ``smooth=1``). A class absent from the batch then scores ``s / (sum(p_c) + s)``, which
rises to 1 as its predicted mass falls to 0: no NaN and no division by zero, and an empty mask
still teaches "predict nothing here". ``include_background`` (default ``True``, as the study's
one-hot Dice, MONAI and smp) averages over all K classes; ``False`` over classes 1..K-1 (for
``K == 1`` the single channel is the foreground).

``LOSSES``: ``dice``, ``dice_ce`` (Dice + cross-entropy, K >= 2), ``dice_bce`` (Dice + binary
cross-entropy, K == 1), ``ce`` (cross-entropy alone, the Keras example's loss). Cross-entropy
terms are the mean over valid pixels (0 when a batch has none).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from lungray.data.masks import IGNORE
from lungray.errors import ConfigError
from lungray.registry import Registry

__all__ = [
    "LOSSES", "soft_dice", "dice_loss", "dice_ce_loss", "dice_bce_loss", "ce_loss", "build_loss",
    "loss_stats", "loss_from_stats", "dice_from_stats",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES: Registry[Callable[..., torch.Tensor]] = Registry("segmentation loss")


def _check(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.ndim != 4:
        raise ValueError(f"segmentation logits must be (B, K, H, W), got shape {tuple(logits.shape)}")
    if target.shape != (logits.shape[0],) + tuple(logits.shape[2:]):
        raise ValueError(f"segmentation target must be (B, H, W) = {(logits.shape[0],) + tuple(logits.shape[2:])}, got {tuple(target.shape)}")


def _probs_onehot(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(probs, one-hot target, valid) as (B, C, H, W), (B, C, H, W), (B, 1, H, W) floats."""
    valid = (target != ignore_index).unsqueeze(1)
    t = torch.where(valid.squeeze(1), target, torch.zeros_like(target))
    k = logits.shape[1]
    if k == 1:
        probs = torch.sigmoid(logits)
        onehot = (t == 1).unsqueeze(1)
    else:
        probs = torch.softmax(logits, dim=1)
        onehot = F.one_hot(t, k).permute(0, 3, 1, 2)
    return probs, onehot.to(probs.dtype), valid.to(probs.dtype)


def loss_stats(logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = IGNORE, ce: bool = True) -> torch.Tensor:
    """Per-image sufficient statistics of every loss here, ``(B, 3C + 2)`` for ``C`` channels.

    Columns: ``sum(p_c * y_c)``, ``sum(p_c)``, ``sum(y_c)`` for each channel ``c`` (the soft
    Dice terms), then the summed per-pixel cross-entropy (0 unless ``ce``) and the number of
    valid pixels, all over the image's valid pixels. Every loss is a function of these summed
    over a batch (:func:`loss_from_stats`), so the validation loss of a whole split is the
    same formula on the split's sums: the training loss "as one batch", independent of the
    evaluation batch size.
    """
    _check(logits, target)
    probs, onehot, valid = _probs_onehot(logits, target, ignore_index)
    probs, onehot = probs * valid, onehot * valid
    dims = (2, 3)
    cols = [(probs * onehot).sum(dims), probs.sum(dims), onehot.sum(dims)]
    v = valid[:, 0]
    if ce:
        t = torch.where(target != ignore_index, target, torch.zeros_like(target))
        if logits.shape[1] == 1:
            per = F.binary_cross_entropy_with_logits(logits[:, 0], (t == 1).to(logits.dtype), reduction="none")
        else:
            per = F.cross_entropy(logits, t, reduction="none")
        cols.append((per * v).sum((1, 2))[:, None])
    else:
        cols.append(torch.zeros_like(v[:, 0, 0])[:, None])
    cols.append(v.sum((1, 2))[:, None])
    return torch.cat(cols, dim=1)


def _split(stats: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    c = (stats.shape[-1] - 2) // 3
    if stats.ndim != 1 or stats.shape[0] != 3 * c + 2 or c < 1:
        raise ValueError(f"summed loss statistics must be a vector of 3C + 2 values, got shape {tuple(stats.shape)}")
    return c, stats[:c], stats[c : 2 * c], stats[2 * c : 3 * c], stats[3 * c], stats[3 * c + 1]


def dice_from_stats(stats: torch.Tensor, *, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice per channel ``(C,)`` from summed :func:`loss_stats`."""
    _, inter, psum, ysum, _, _ = _split(stats)
    return (2.0 * inter + smooth) / (psum + ysum + smooth)


def _dice_formula(stats: torch.Tensor, *, smooth: float = 1.0, include_background: bool = True) -> torch.Tensor:
    d = dice_from_stats(stats, smooth=smooth)
    if not include_background and d.shape[0] > 1:
        d = d[1:]
    return 1.0 - d.mean()


def _ce_formula(stats: torch.Tensor) -> torch.Tensor:
    _, _, _, _, ce_sum, n_valid = _split(stats)
    return ce_sum / n_valid.clamp_min(1.0)


def _dice_ce_formula(
    stats: torch.Tensor, *, smooth: float = 1.0, include_background: bool = True, dice_weight: float = 1.0, ce_weight: float = 1.0
) -> torch.Tensor:
    return dice_weight * _dice_formula(stats, smooth=smooth, include_background=include_background) + ce_weight * _ce_formula(stats)


def _dice_bce_formula(stats: torch.Tensor, *, smooth: float = 1.0, dice_weight: float = 1.0, bce_weight: float = 1.0) -> torch.Tensor:
    return dice_weight * _dice_formula(stats, smooth=smooth) + bce_weight * _ce_formula(stats)


# loss name -> (needs the cross-entropy column, the loss as a function of summed statistics)
_FROM_STATS: dict[str, tuple[bool, Callable[..., torch.Tensor]]] = {
    "dice": (False, _dice_formula),
    "ce": (True, _ce_formula),
    "dice_ce": (True, _dice_ce_formula),
    "dice_bce": (True, _dice_bce_formula),
}


def loss_from_stats(name: str, stats: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """The registered loss ``name`` from :func:`loss_stats` summed over the images it covers.

    >>> x, t = torch.randn(2, 2, 3, 3), torch.tensor([[[0, 1, 1]] * 3, [[0, 0, 0]] * 3])
    >>> bool(torch.isclose(loss_from_stats("dice_ce", loss_stats(x, t).sum(0)), dice_ce_loss(x, t)))
    True
    """
    LOSSES.check(name)
    return _FROM_STATS[name][1](stats, **kwargs)


def _on_batch(name: str, logits: torch.Tensor, target: torch.Tensor, ignore_index: int, **kwargs: Any) -> torch.Tensor:
    needs_ce, formula = _FROM_STATS[name]
    return formula(loss_stats(logits, target, ignore_index=ignore_index, ce=needs_ce).sum(0), **kwargs)


def soft_dice(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    smooth: float = 1.0,
    ignore_index: int = IGNORE,
) -> torch.Tensor:
    """Batch-global soft Dice per class, shape ``(K,)`` (see the module docstring)."""
    return dice_from_stats(loss_stats(logits, target, ignore_index=ignore_index, ce=False).sum(0), smooth=smooth)


@LOSSES.register("dice")
def dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    smooth: float = 1.0,
    include_background: bool = True,
    ignore_index: int = IGNORE,
) -> torch.Tensor:
    """``1 - mean_c D_c`` (soft Dice; background included unless ``include_background=False``)."""
    return _on_batch("dice", logits, target, ignore_index, smooth=smooth, include_background=include_background)


@LOSSES.register("ce")
def ce_loss(logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = IGNORE) -> torch.Tensor:
    """Cross-entropy (K >= 2) or binary cross-entropy (K == 1), mean over valid pixels."""
    return _on_batch("ce", logits, target, ignore_index)


@LOSSES.register("dice_ce")
def dice_ce_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    smooth: float = 1.0,
    include_background: bool = True,
    dice_weight: float = 1.0,
    ce_weight: float = 1.0,
    ignore_index: int = IGNORE,
) -> torch.Tensor:
    """``dice_weight * Dice loss + ce_weight * cross-entropy`` for softmax outputs (K >= 2)."""
    if logits.shape[1] < 2:
        raise ConfigError(f"loss 'dice_ce' needs K >= 2 softmax channels, got {logits.shape[1]}; use dice_bce for one sigmoid channel")
    return _on_batch("dice_ce", logits, target, ignore_index, smooth=smooth, include_background=include_background,
                     dice_weight=dice_weight, ce_weight=ce_weight)


@LOSSES.register("dice_bce")
def dice_bce_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    smooth: float = 1.0,
    dice_weight: float = 1.0,
    bce_weight: float = 1.0,
    ignore_index: int = IGNORE,
) -> torch.Tensor:
    """``dice_weight * Dice loss + bce_weight * binary cross-entropy`` for one sigmoid channel (K == 1)."""
    if logits.shape[1] != 1:
        raise ConfigError(f"loss 'dice_bce' needs one sigmoid channel (K == 1), got {logits.shape[1]}; use dice_ce for softmax outputs")
    return _on_batch("dice_bce", logits, target, ignore_index, smooth=smooth, dice_weight=dice_weight, bce_weight=bce_weight)


def build_loss(name: str, **kwargs: Any) -> LossFn:
    """``criterion(logits, target)`` for a registered loss name with its keyword settings.

    >>> import torch
    >>> crit = build_loss("dice", include_background=False)
    >>> # p_fg = 0.5 on 4 pixels, no foreground: D_fg = (0 + 1) / (2 + 0 + 1) = 1/3
    >>> round(float(crit(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))), 4)
    0.6667
    """
    fn = LOSSES.get(name)

    def criterion(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return fn(logits, target, **kwargs)

    criterion.__name__ = f"{name}_loss"
    return criterion
