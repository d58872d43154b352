"""Optimizers and per-epoch learning-rate schedules, by name.

Both registries must stay importable without torch (:func:`lungray.train.validate.validate_study`
checks names against them before anything heavy loads), so optimizer factories import torch inside
and schedules are pure functions ``factor(epoch, cfg, epochs, iteration) -> float`` (the
multiplier of the base learning rate during 0-based ``epoch``, at 0-based optimisation step
``iteration``), wrapped in a ``LambdaLR`` only when a trial runs. The ``LambdaLR`` is stepped
after every optimisation step (``build_scheduler(..., steps_per_epoch)``): epoch schedules read
``iteration // steps_per_epoch``, Keras' inverse-time decay reads the step itself. Pure
schedules are also what makes them testable with exact numbers.

``inverse_time`` is Keras' legacy ``decay`` argument (Adam(lr=INIT_LR, decay=INIT_LR / EPOCHS)
in the Grad-CAM study, PROTOCOLS.md section 2): ``lr_t = lr0 / (1 + decay * t)`` with ``t``
the number of optimisation steps taken so far, i.e. per *iteration*, not per epoch;
``optimizer.decay`` defaults to ``lr / epochs``.

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
    if cfg.decay is not None and cfg.decay < 0:
        raise ConfigError(f"{where}.decay must be >= 0 or null (lr / epochs), got {cfg.decay}")
    if cfg.grad_clip is not None and not cfg.grad_clip > 0:
        raise ConfigError(f"{where}.grad_clip must be > 0 or null, got {cfg.grad_clip}")


# ------------------------------------------------------------------------------------------
# schedules: factor(epoch, cfg, epochs) -> multiplier of cfg.lr during 0-based epoch
# ------------------------------------------------------------------------------------------


@SCHEDULERS.register("none")
def _constant(epoch: int, cfg: OptimizerConfig, epochs: int, iteration: int = 0) -> float:
    """Constant learning rate."""
    return 1.0


@SCHEDULERS.register("step")
def _step(epoch: int, cfg: OptimizerConfig, epochs: int, iteration: int = 0) -> float:
    """Multiply by ``gamma`` every ``step_size`` epochs (StepLR; RSNA study: 10, 0.1)."""
    return float(cfg.gamma ** (epoch // cfg.step_size))


@SCHEDULERS.register("cosine")
def _cosine(epoch: int, cfg: OptimizerConfig, epochs: int, iteration: int = 0) -> float:
    """Half-cosine from the base rate towards 0 over the epochs after warm-up."""
    w = max(0, cfg.warmup_epochs)
    span = max(1, epochs - w)
    t = min(max(epoch - w, 0), span)
    return 0.5 * (1.0 + math.cos(math.pi * t / span))


def keras_decay(cfg: OptimizerConfig, epochs: int) -> float:
    """``optimizer.decay``, or ``lr / epochs`` (the Grad-CAM study's ``INIT_LR / EPOCHS``)."""
    return float(cfg.decay) if cfg.decay is not None else float(cfg.lr) / max(1, int(epochs))


@SCHEDULERS.register("inverse_time")
def _inverse_time(epoch: int, cfg: OptimizerConfig, epochs: int, iteration: int = 0) -> float:
    """Keras' ``decay``: lr0 / (1 + decay * steps so far), per iteration (Grad-CAM study, section 2)."""
    return 1.0 / (1.0 + keras_decay(cfg, epochs) * int(iteration))


def lr_factor(epoch: int, cfg: OptimizerConfig, epochs: int, iteration: int | None = None) -> float:
    """The multiplier of ``cfg.lr`` during 0-based ``epoch`` (at 0-based step ``iteration``,
    default: ``epoch``, i.e. one step per epoch): linear warm-up, then the schedule.

    Warm-up (``warmup_epochs`` = W > 0) ramps linearly ``1/(W+1), 2/(W+1), ...`` over the first
    W epochs so the first step is never taken at the full rate on random heads; after it the
    named schedule runs (for ``cosine``, counted from the end of warm-up).

    >>> cfg = OptimizerConfig(lr=1e-3, scheduler="inverse_time")  # decay = 1e-3 / 15
    >>> round(1 / lr_factor(0, cfg, 15, iteration=150), 6)  # 1 + 150 * 1e-3 / 15
    1.01
    """
    it = epoch if iteration is None else iteration
    base = SCHEDULERS.get(cfg.scheduler)(epoch, cfg, epochs, it)
    w = cfg.warmup_epochs
    if w > 0 and epoch < w:
        return base * (epoch + 1) / (w + 1)
    return base


class _StepFactor:
    """Picklable LambdaLR callable holding only primitives, so the scheduler's ``state_dict``
    loads with ``torch.load(weights_only=True)``. Called with the number of steps taken."""

    def __init__(self, cfg: OptimizerConfig, epochs: int, steps_per_epoch: int = 1):
        self.scheduler = cfg.scheduler
        self.lr = float(cfg.lr)
        self.decay = None if cfg.decay is None else float(cfg.decay)
        self.step_size = int(cfg.step_size)
        self.gamma = float(cfg.gamma)
        self.warmup_epochs = int(cfg.warmup_epochs)
        self.epochs = int(epochs)
        self.steps_per_epoch = max(1, int(steps_per_epoch))

    def __call__(self, iteration: int) -> float:
        cfg = OptimizerConfig(
            lr=self.lr, decay=self.decay, scheduler=self.scheduler, step_size=self.step_size, gamma=self.gamma,
            warmup_epochs=self.warmup_epochs,
        )
        return lr_factor(iteration // self.steps_per_epoch, cfg, self.epochs, iteration=iteration)


def build_scheduler(optimizer: Any, cfg: OptimizerConfig, epochs: int, steps_per_epoch: int = 1):
    """A ``LambdaLR`` to step after every optimisation step (``steps_per_epoch`` per epoch).

    With the default ``steps_per_epoch=1`` it is stepped once per epoch instead (one "step" per
    epoch: the epoch schedules are unchanged; ``inverse_time`` then decays per epoch).
    """
    import torch

    SCHEDULERS.check(cfg.scheduler)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=_StepFactor(cfg, epochs, steps_per_epoch))


def clip_gradients(parameters: Iterable[Any], max_norm: float | None) -> float | None:
    """Clip the global gradient norm to ``max_norm`` (no-op when None); returns the norm."""
    if max_norm is None:
        return None
    import torch

    params = [p for p in parameters if p.grad is not None]
    if not params:
        return 0.0
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
