"""Segmentation losses (torch, pure functions of logits and masks) and their registry.

Inputs: ``logits`` float ``(B, K, H, W)``; ``target`` int64 ``(B, H, W)`` of class indices with
``IGNORE`` (255, :mod:`lungray.data.masks`) for unknown pixels, which every loss skips.

``K >= 2``: softmax over the K classes against the one-hot target (the RSNA study's one-hot
masks with a softmax output, PROTOCOLS.md section 3). ``K == 1``: one sigmoid channel, the
foreground probability, against a 0/1 target.

Every Dice here is batch-global: the sums run over every valid pixel of the WHOLE BATCH (as the
study's Keras ``dice_coef`` and smp's ``DiceLoss``; per-image Dice is a metric, in
:mod:`lungray.metrics.segmentation`). Two smoothing conventions exist, because papers differ:

``dice_rsna`` -- the RSNA study's own loss, exactly (its code, PROTOCOLS.md section 3): the
foreground channel only (channel 1 of the one-hot mask and of the softmax; the background
terms are commented out in the study), ``smooth = 1e-6``, and the smooth term doubled in the
numerator as written there::

    D = 2 * (sum(p_1 * y_1) + s) / (sum(p_1) + sum(y_1) + s),    loss = 1 - D

An all-background prediction scores about 1 (a 32 x 32 batch with a 100-pixel box and
``p_1 = 0.01`` everywhere: ``1 - 2 * 1 / 110.24 = 0.9819``), and a batch without foreground
gives ``1 - 2s / (sum(p_1) + s)``, close to 1 whatever is predicted there: such a batch teaches
almost nothing (its gradient is ``O(s)``), as in the study. It has no log term, so a softmax
saturated to background (``p_1 ~ 0`` everywhere) gets vanishing gradients and can stay there:
a run that collapses to empty masks shows a loss stuck near 1 (seen in exploratory CPU-twin runs
at a wider or higher-resolution twin; cross-entropy terms, ``dice_ce``, do not saturate). (With ``K > 2`` the mean over the
foreground channels 1..K-1; ``K == 1``: the sigmoid channel is the foreground.)

``dice`` -- lungray's smoother default (``train.loss: auto``), NOT the study's::

    D_c = (2 * sum(p_c * y_c) + s) / (sum(p_c) + sum(y_c) + s),    loss = 1 - mean_c D_c

with ``s = smooth = 1`` (the common Keras kernels' ``smooth=1``) and, by default
(``include_background=True``, as MONAI and smp), the mean over all K classes, background
included. A class absent from the batch scores ``s / (sum(p_c) + s)``, which rises to 1 as its
predicted mass falls to 0: no NaN, and an empty mask still teaches "predict nothing here". The
background channel makes it far gentler than the study's on foreground errors (the example
above: 0.5144 instead of 0.9819); ``include_background=False`` averages over classes 1..K-1
only (for ``K == 1`` the single channel is the foreground).

``LOSSES``: ``dice``, ``dice_rsna``, ``dice_ce`` (Dice + cross-entropy, K >= 2), ``dice_bce``
(Dice + binary cross-entropy, K == 1), ``ce`` (cross-entropy alone, the Keras example's loss).
Cross-entropy terms are the mean over valid pixels (0 when a batch has none).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from lungray.data.masks import IGNORE
from lungray.errors import ConfigError
from lungray.registry import Registry

__all__ = [
    "LOSSES", "soft_dice", "dice_loss", "dice_rsna_loss", "dice_ce_loss", "dice_bce_loss", "ce_loss", "build_loss",
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


#: the RSNA study's Dice smoothing (its code: ``smooth = 1e-6``, PROTOCOLS.md section 3)
RSNA_SMOOTH = 1e-6


def _dice_rsna_formula(stats: torch.Tensor, *, smooth: float = RSNA_SMOOTH) -> torch.Tensor:
    """``1 - 2 (I + s) / (P + Y + s)`` on the foreground channel(s) (see the module docstring)."""
    c, inter, psum, ysum, _, n_valid = _split(stats)
    fg = slice(1, None) if c > 1 else slice(0, 1)
    d = 2.0 * (inter[fg] + smooth) / (psum[fg] + ysum[fg] + smooth)
    # no valid pixel at all (every mask unknown): nothing to learn, 0 as the other losses (the
    # formula would give 1 - 2s/s = -1 there)
    return torch.where(n_valid > 0, 1.0 - d.mean(), torch.zeros_like(d.mean()))


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
    "dice_rsna": (False, _dice_rsna_formula),
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
    """``1 - mean_c D_c`` (soft Dice, smooth 1; background included unless ``include_background=False``).

    lungray's default segmentation loss, not the RSNA study's (that is :func:`dice_rsna_loss`).
    """
    return _on_batch("dice", logits, target, ignore_index, smooth=smooth, include_background=include_background)


@LOSSES.register("dice_rsna")
def dice_rsna_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    smooth: float = RSNA_SMOOTH,
    ignore_index: int = IGNORE,
) -> torch.Tensor:
    """The RSNA study's Dice loss: foreground channel only, ``smooth = 1e-6`` doubled in the
    numerator, batch-global (PROTOCOLS.md section 3; the module docstring has the formula).

    >>> # p_fg = 0.8, 0.1, 0.1, 0.1 on a 2 x 2 image whose first pixel is the foreground:
    >>> # I = 0.8, P = 1.1, Y = 1: 1 - 2 (0.8 + 1e-6) / (2.1 + 1e-6) = 0.238095
    >>> x = torch.zeros(1, 2, 2, 2); x[0, 1] = torch.tensor([[4.0, 1 / 9], [1 / 9, 1 / 9]]).log()
    >>> t = torch.tensor([[[1, 0], [0, 0]]])
    >>> round(float(dice_rsna_loss(x, t)), 6)
    0.238095
    """
    return _on_batch("dice_rsna", logits, target, ignore_index, smooth=smooth)


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
