"""Optimizers and per-epoch learning-rate schedules, by name.

Both registries must stay importable without torch (:func:`lungray.validate.validate_study`
checks names against them before anything heavy loads), so optimizer factories import torch inside
and schedules are pure functions ``factor(epoch, cfg, epochs) -> float`` (the multiplier of the
base learning rate during 0-based ``epoch``), wrapped in a ``LambdaLR`` only when a trial runs.
Pure schedules are also what makes them testable with exact numbers.

Defaults come from the studies (``shared/PROTOCOLS.md``): SGD with momentum 0.9 and weight
decay 0.01 plus StepLR(10, 0.1) is the RSNA study's recipe (section 3) and the 4-class study's
SGD arm (section 4); Adam is what the training-size study and the from-scratch CNN used
(sections 1 and 5).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

from lungray.config import OptimizerConfig
from lungray.errors import ConfigError
from lungray.registry import Registry

OPTIMIZERS: Registry[Callable[..., Any]] = Registry("optimizer")
SCHEDULERS: Registry[Callable[[int, OptimizerConfig, int], float]] = Registry("scheduler")


# ------------------------------------------------------------------------------------------
# optimizers: factory(params, cfg) -> torch.optim.Optimizer
# ------------------------------------------------------------------------------------------


@OPTIMIZERS.register("adam")
def _adam(params: Iterable[Any], cfg: OptimizerConfig):
    """Adam (coupled L2 weight decay); beat SGD by ~6 points in the 4-class study."""
    import torch

    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adamw")
def _adamw(params: Iterable[Any], cfg: OptimizerConfig):
    """AdamW (decoupled weight decay, ``optimizer.weight_decay``)."""
    import torch

    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("sgd")
def _sgd(params: Iterable[Any], cfg: OptimizerConfig):
    """SGD with momentum (0.9 by default) and weight decay, the RSNA study's optimizer."""
    import torch

    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def build_optimizer(model: Any, cfg: OptimizerConfig):
    """The named optimizer over the model's TRAINABLE parameters only.

    Frozen parameters (freeze policies ``backbone``/``last:N``) never reach the optimizer, so
    weight decay cannot creep into a frozen backbone and optimizer state stays small.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(
            f"model has no trainable parameters for optimizer '{cfg.name}'; "
            "use a freeze policy that leaves the head trainable (none, backbone, last:N)"
        )
    return OPTIMIZERS.get(cfg.name)(params, cfg)


def check_optimizer_config(cfg: OptimizerConfig, where: str = "optimizer") -> None:
    """Config-time checks of one optimizer: registered names, ranges (no torch)."""
    OPTIMIZERS.check(cfg.name)
    SCHEDULERS.check(cfg.scheduler)
    if not cfg.lr > 0:
        raise ConfigError(f"{where}.lr must be > 0, got {cfg.lr}")
    if cfg.weight_decay < 0:
        raise ConfigError(f"{where}.weight_decay must be >= 0, got {cfg.weight_decay}")
    if cfg.scheduler == "step" and cfg.step_size < 1:
        raise ConfigError(f"{where}.step_size must be >= 1, got {cfg.step_size}")
    if cfg.grad_clip is not None and not cfg.grad_clip > 0:
        raise ConfigError(f"{where}.grad_clip must be > 0 or null, got {cfg.grad_clip}")


# ------------------------------------------------------------------------------------------
# schedules: factor(epoch, cfg, epochs) -> multiplier of cfg.lr during 0-based epoch
# ------------------------------------------------------------------------------------------


@SCHEDULERS.register("none")
def _constant(epoch: int, cfg: OptimizerConfig, epochs: int) -> float:
    """Constant learning rate."""
    return 1.0


@SCHEDULERS.register("step")
def _step(epoch: int, cfg: OptimizerConfig, epochs: int) -> float:
    """Multiply by ``gamma`` every ``step_size`` epochs (StepLR; RSNA study: 10, 0.1)."""
    return float(cfg.gamma ** (epoch // cfg.step_size))


@SCHEDULERS.register("cosine")
def _cosine(epoch: int, cfg: OptimizerConfig, epochs: int) -> float:
    """Half-cosine from the base rate towards 0 over the epochs after warm-up."""
    w = max(0, cfg.warmup_epochs)
    span = max(1, epochs - w)
    t = min(max(epoch - w, 0), span)
    return 0.5 * (1.0 + math.cos(math.pi * t / span))


def lr_factor(epoch: int, cfg: OptimizerConfig, epochs: int) -> float:
    """The multiplier of ``cfg.lr`` during 0-based ``epoch``: linear warm-up, then the schedule.

    Warm-up (``warmup_epochs`` = W > 0) ramps linearly ``1/(W+1), 2/(W+1), ...`` over the first
    W epochs so the first step is never taken at the full rate on random heads; after it the
    named schedule runs (for ``cosine``, counted from the end of warm-up).
    """
    base = SCHEDULERS.get(cfg.scheduler)(epoch, cfg, epochs)
    w = cfg.warmup_epochs
    if w > 0 and epoch < w:
        return base * (epoch + 1) / (w + 1)
    return base


class _EpochFactor:
    """Picklable LambdaLR callable holding only primitives, so the scheduler's ``state_dict``
    loads with ``torch.load(weights_only=True)``."""

    def __init__(self, cfg: OptimizerConfig, epochs: int):
        self.scheduler = cfg.scheduler
        self.step_size = int(cfg.step_size)
        self.gamma = float(cfg.gamma)
        self.warmup_epochs = int(cfg.warmup_epochs)
        self.epochs = int(epochs)

    def __call__(self, epoch: int) -> float:
        cfg = OptimizerConfig(
            scheduler=self.scheduler, step_size=self.step_size, gamma=self.gamma, warmup_epochs=self.warmup_epochs
        )
        return lr_factor(epoch, cfg, self.epochs)


def build_scheduler(optimizer: Any, cfg: OptimizerConfig, epochs: int):
    """A ``LambdaLR`` stepped once per epoch (after the epoch's optimisation steps)."""
    import torch

    SCHEDULERS.check(cfg.scheduler)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=_EpochFactor(cfg, epochs))


def clip_gradients(parameters: Iterable[Any], max_norm: float | None) -> float | None:
    """Clip the global gradient norm to ``max_norm`` (no-op when None); returns the norm."""
    if max_norm is None:
        return None
    import torch

    params = [p for p in parameters if p.grad is not None]
    if not params:
        return 0.0
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
