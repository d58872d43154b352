"""One trial: train one model on one nested training subset, select a checkpoint, evaluate it.

:func:`run_trial` is plain Python. A test calls it with a list's ``append``-like callback; the
sweep calls it inside a Ray Train worker with a callback around ``ray.train.report``. The order
of events per epoch (1-based):

1. train one epoch on ``data.subset(train_size, seed)`` in an order drawn from a generator
   seeded by (seed, epoch) (optionally weighted by class, sharded across ranks under DDP);
2. step the per-epoch LR schedule;
3. every ``schedule.eval_every`` epochs (and at the last), evaluate on ``data.val_idx``, keep
   the best model state by ``schedule.monitor`` and count evaluations without improvement
   for early stopping;
4. every ``schedule.checkpoint_every`` epochs, but no sooner than
   ``schedule.checkpoint_min_seconds`` after the last one (and always when stopping), write
   ``state.pt``; a resumed trial replays the epochs since then exactly;
5. hand the epoch's metrics and the checkpoint directory (or None) to ``report``.

Then the best model state is evaluated once on ``data.eval_idx`` (the fixed held-out set) and
written as ``<workdir>/checkpoint/best.pt`` in the :mod:`lungray.tracking` format.

The trial runs in four stages, :func:`_set_up` (subset, budget, normalisation, datasets),
:func:`_build_model` (the model spec's ``prepare`` hook, the network, criterion, sampler and
optimizer), :func:`_fit` (the epochs above, fresh or resumed) and :func:`_final_evaluation`.
Nothing here knows what is predicted: datasets, loss, training statistics, validation metrics,
the held-out report and the predictions table come from the trial's task
(:mod:`lungray.train.tasks`, ``train.task``), and model-specific steps (autoencoder
pretraining, a closed-form fit) from hooks on the model's spec (:class:`lungray.models.ModelSpec`).

One subject, the sequence of one trial (issue 22.2): which images each epoch sees lives in
:mod:`lungray.train.epochs` (its names re-exported here), the DDP steps in
:mod:`lungray.train.distributed`; the four stages stay together because they share one context
and are read as one sequence.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from lungray.config import StudyConfig, TrialConfig
from lungray.errors import ConfigError, LungrayError
from lungray.train.distributed import barrier, sync_buffers, wrap_distributed
from lungray.train.epochs import EpochSampler, EpochTagged, StepStream, epoch_plan
from lungray.train.evaluate import EarlyStopping
from lungray.train.result import TrialResult
from lungray.train.tasks import TASKS, Task, class_weights, sample_weights

__all__ = [
    "run_trial", "validate_trial", "epoch_plan", "EpochSampler", "EpochTagged", "StepStream", "class_weights", "sample_weights",
]

log = logging.getLogger(__name__)

Report = Callable[[dict[str, float], Optional[str]], None]


# ------------------------------------------------------------------------------------------
# pure helpers
# ------------------------------------------------------------------------------------------


def validate_trial(trial: TrialConfig, resolution: Optional[int] = None) -> None:
    """Run the study-level checks on a single trial (names, ranges, zero-step schedules).

    A trial built by hand (a test, a notebook) gets the same config-time errors as a study;
    the one-cell study reuses :func:`lungray.train.validate.validate_study` so the rules live once.
    ``resolution`` (the prepared data's, when known) enables the resolution-dependent model
    checks; without it they are skipped (a 256 px stand-in passes them).
    """
    from lungray.config import DataConfig
    from lungray.train.validate import validate_study

    validate_study(StudyConfig(
        name=trial.study,
        data=DataConfig(resolution=int(resolution) if resolution else 256),
        models=(trial.model,),
        sizes=(trial.train_size,),
        optimizers=(trial.optimizer,),
        seeds=(trial.seed,),
        schedule=trial.schedule,
        train=trial.train,
    ))


# ------------------------------------------------------------------------------------------
# the trial
# ------------------------------------------------------------------------------------------


def run_trial(
    trial: TrialConfig,
    data: Any,
    *,
    workdir: str | Path,
    report: Optional[Report] = None,
    resume_from: Optional[str | Path] = None,
    stop_after_epoch: Optional[int] = None,
) -> TrialResult:
    """Train, select and evaluate one trial; see the module docstring for the sequence.

    Parameters
    ----------
    trial : TrialConfig
        One grid cell and seed. Validated first (unknown names, lr <= 0, zero-step schedules
        raise :class:`~lungray.errors.ConfigError` before any data is touched).
    data : PreparedData
        The prepared dataset; trains on ``data.subset(trial.train_size, trial.seed)``,
        validates on ``data.val_idx``, evaluates on ``data.eval_idx``.
    workdir : path
        Where checkpoints (``checkpoints/epoch_NNNN/state.pt``, only the latest is kept) and
        ``checkpoint/best.pt`` go. Only rank 0 writes.
    report : callable(metrics, checkpoint_dir_or_None), optional
        Called once per epoch on EVERY rank (Ray Train's ``report`` is a barrier that all
        workers must reach); only rank 0 passes a checkpoint directory. ``metrics`` holds
        ``epoch``, ``train_loss``, ``train_accuracy``, ``lr`` and, on evaluated epochs,
        ``val_loss``, ``val_accuracy``, ``val_auc``, ``val_balanced_accuracy``,
        ``val_macro_f1``.
    resume_from : path, optional
        A checkpoint directory from an earlier call on the same trial: training continues
        exactly where it stopped (same final metrics and predictions as an uninterrupted run).
    stop_after_epoch : int, optional
        Stop after this epoch with a checkpoint (``completed=False``); for tests and for
        splitting a long trial.
    """
    from lungray.train.device import (
        amp_dtype,
        configure_backends,
        distributed_info,
        restore_backends,
        select_device,
    )

    t0 = time.perf_counter()
    validate_trial(trial, resolution=(getattr(data, "info", None) or {}).get("resolution"))
    if trial.model.normalization not in (None, trial.train.normalization):  # a trial built by hand
        from dataclasses import replace

        from lungray.config import VariantConfig

        trial = replace(trial, train=StudyConfig(train=trial.train).variant_train(VariantConfig(), trial.model))
    if stop_after_epoch is not None and stop_after_epoch < 1:
        raise ConfigError(f"stop_after_epoch must be >= 1, got {stop_after_epoch}")
    rank, world = distributed_info()
    device = select_device(trial.train.device)
    dtype = amp_dtype(device, trial.train.amp)
    channels_last = bool(trial.train.channels_last and device.type == "cuda")
    prev = configure_backends(device, trial.train.deterministic)
    ctx = _Context(
        trial=trial,
        data=data.for_preprocess(trial.variant.preprocess),  # a variant's cache: same rows and splits
        task=TASKS.get(trial.train.task).for_trial(trial),
        workdir=Path(workdir),
        device=device,
        dtype=dtype,
        channels_last=channels_last,
        rank=rank,
        world=world,
        t0=t0,
    )
    try:
        return _run(ctx, report=report, resume_from=resume_from, stop_after_epoch=stop_after_epoch)
    finally:
        restore_backends(prev)


@dataclass
class _Context:
    """What every stage of one trial reads: the config, the data, the task, where it runs."""

    trial: TrialConfig
    data: Any
    task: Task
    workdir: Path
    device: Any
    dtype: Any
    channels_last: bool
    rank: int
    world: int
    t0: float

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class _SetUp:
    """The data side of a trial: its subsets, targets, normalisation, datasets and budget."""

    train_idx: np.ndarray
    val_idx: np.ndarray
    targets: np.ndarray  # training targets (class weights, samplers, full-batch fits)
    class_names: list[str]
    mean: Any  # a float, or one per input channel (repeat3 models: ImageNet's three)
    std: Any
    train_ds: Any
    val_ds: Any
    batch_size: int
    epochs: int
    drop_last: bool
    resolved: dict[str, Any]

    @property
    def k(self) -> int:
        return len(self.class_names)

    @property
    def norm(self) -> tuple[Any, Any]:
        return _stat(self.mean), _stat(self.std)


@dataclass
class _Model:
    """The network and everything that updates it."""

    net: Any  # wrapped for DDP by :func:`_fit` when world > 1
    full_batch: bool
    criterion: Any
    sampler: Any  # EpochSampler, or StepStream for schedule.steps_per_epoch
    optimizer: Any
    scheduler: Any
    scaler: Any


@dataclass
class _Fitted:
    """Where training stopped: the history, the selected state and whether the trial is done."""

    trial_dict: dict[str, Any]
    stopper: EarlyStopping
    history: list[dict[str, float]] = field(default_factory=list)
    best_state: Optional[dict[str, Any]] = None
    done: bool = False
    stopped_early: bool = False
    paused: bool = False
    train_seconds: float = 0.0
    setup_seconds: float = 0.0
    last_ckpt: Optional[Path] = None

    @property
    def epochs_run(self) -> int:
        return int(self.history[-1]["epoch"]) if self.history else 0


def _run(
    ctx: _Context,
    *,
    report: Optional[Report],
    resume_from: Optional[str | Path],
    stop_after_epoch: Optional[int],
) -> TrialResult:
    setup = _set_up(ctx)
    model = _build_model(ctx, setup)
    fitted = _fit(ctx, setup, model, report=report, resume_from=resume_from, stop_after_epoch=stop_after_epoch)
    if fitted.paused:
        return TrialResult(
            metrics={},
            per_class=None,
            confusion=None,
            predictions=None,
            history=fitted.history,
            best_epoch=fitted.stopper.best_epoch,
            best_checkpoint=None,
            timings={"setup_seconds": fitted.setup_seconds, "train_seconds": fitted.train_seconds, "eval_seconds": 0.0},
            epochs_run=fitted.epochs_run,
            completed=False,
            stopped_early=False,
            checkpoint_dir=str(fitted.last_ckpt) if fitted.last_ckpt is not None else None,
            resolved=setup.resolved,
        )
    return _final_evaluation(ctx, setup, model, fitted)


def _set_up(ctx: _Context) -> _SetUp:
    """Subset, budget, normalisation and the training/validation datasets (no model yet)."""
    from lungray.data.augment import normalization_stats
    from lungray.models import input_channels
    from lungray.train.device import seed_everything

    trial, data, task = ctx.trial, ctx.data, ctx.task
    sch, tc = trial.schedule, trial.train
    task.check_data(data)  # e.g. segmentation on a dataset without masks: one line, before any work
    if ctx.is_main:
        ctx.workdir.mkdir(parents=True, exist_ok=True)
    seed_everything(trial.seed)

    train_idx = np.asarray(data.subset(trial.train_size, trial.seed), dtype=np.int64)
    n_train = len(train_idx)
    batch_size, epochs = sch.resolve(n_train)
    steps_per_epoch, drop_last = epoch_plan(n_train, batch_size, ctx.world)
    stream_steps = sch.epoch_steps(n_train, batch_size)  # an "epoch" of N steps of a stream (Keras)
    if stream_steps is not None:
        steps_per_epoch = stream_steps
    if epochs < 1:
        raise ConfigError(
            f"schedule gives {epochs} epochs at training size {n_train}: zero optimisation steps; "
            "set schedule.epochs (or size_rules/max_steps) >= 1"
        )
    # repeat3 models get 3 channels, each normalised with its own statistics (ImageNet's three)
    mean, std = normalization_stats(tc.normalization, data, input_channels(trial.model), fixed=(tc.norm_mean, tc.norm_std))
    val_idx = np.asarray(data.val_idx, dtype=np.int64)
    size = _input_size(trial, data)
    return _SetUp(
        train_idx=train_idx,
        val_idx=val_idx,
        targets=task.targets(data, train_idx),
        class_names=task.class_names(data),
        mean=mean,
        std=std,
        train_ds=task.dataset(data, train_idx, augmentation=tc.augmentation, mean=mean, std=std, seed=trial.seed, **size),
        val_ds=task.dataset(data, val_idx, augmentation="none", mean=mean, std=std, seed=trial.seed, **size),
        batch_size=int(batch_size),
        epochs=int(epochs),
        drop_last=bool(drop_last),
        resolved={
            "n_train": n_train,
            "batch_size": int(batch_size),
            "epochs": int(epochs),
            "steps_per_epoch": int(steps_per_epoch),
            "epoch": "one pass" if stream_steps is None else f"{stream_steps} steps of a stream of shuffled passes",
            "drop_last": bool(drop_last),
            "input_size": int(size.get("size", data.resolution)),
            "norm_mean": _stat(mean),
            "norm_std": _stat(std),
            "device": str(ctx.device),
            "amp": str(ctx.dtype).replace("torch.", "") if ctx.dtype is not None else "off",
            "world_size": ctx.world,
        },
    )


def _build_model(ctx: _Context, setup: _SetUp) -> _Model:
    """The model (after its spec's ``prepare`` hook), the criterion, sampler and optimizer.

    A model whose spec says ``full_batch`` is fitted once on the whole training set: one
    "epoch", no optimizer, no scheduler.
    """
    from lungray.models import input_channels, model_spec
    from lungray.train.device import make_scaler, seed_everything, to_channels_last
    from lungray.train.optim import build_optimizer, build_scheduler

    trial, data = ctx.trial, ctx.data
    spec = model_spec(trial.model.name)
    build_kwargs: dict[str, Any] = {}
    if spec is not None and spec.prepare is not None:
        # rank 0 prepares (or finds the cache) first so ranks never race on a cache file
        for turn in ((True,) if ctx.world == 1 else (ctx.is_main, not ctx.is_main)):
            if turn:
                build_kwargs = spec.prepare(data, trial, device=ctx.device, mean=setup.norm[0], std=setup.norm[1])
            barrier(ctx.world)
    seed_everything(trial.seed)  # weight init independent of what ran before (e.g. AE pretraining)
    net = ctx.task.build_model(trial, setup.class_names, in_chans=input_channels(trial.model),
                               resolution=setup.resolved["input_size"], **build_kwargs)
    net = to_channels_last(net.to(ctx.device), ctx.channels_last)
    full_batch = spec is not None and spec.full_batch
    if full_batch:
        setup.epochs = 1
        setup.resolved.update(epochs=1, steps_per_epoch=1, batch_size=len(setup.train_idx), drop_last=False)

    criterion = ctx.task.criterion(trial, setup.targets, setup.k, ctx.device)
    weights = ctx.task.sampler_weights(trial, setup.targets, setup.k)
    stream_steps = trial.schedule.epoch_steps(len(setup.train_idx), setup.batch_size)
    sampler: Any
    if stream_steps is not None and not full_batch:
        sampler = StepStream(len(setup.train_idx), setup.batch_size, stream_steps, trial.seed, weights=weights)
    else:
        sampler = EpochSampler(len(setup.train_idx), trial.seed, weights=weights, rank=ctx.rank, world_size=ctx.world)
    optimizer = scheduler = None
    if not full_batch:
        optimizer = build_optimizer(net, trial.optimizer)
        scheduler = build_scheduler(optimizer, trial.optimizer, setup.epochs, steps_per_epoch=setup.resolved["steps_per_epoch"])
    return _Model(net, full_batch, criterion, sampler, optimizer, scheduler, make_scaler(ctx.device, ctx.dtype))


def _fit(
    ctx: _Context,
    setup: _SetUp,
    m: _Model,
    *,
    report: Optional[Report],
    resume_from: Optional[str | Path],
    stop_after_epoch: Optional[int],
) -> _Fitted:
    """Epochs, validation, early stopping, checkpoints and per-epoch reports (fresh or resumed).

    Returns with ``paused`` set when ``stop_after_epoch`` stopped an unfinished trial.
    """
    import torch

    from lungray.train import checkpoint as ckpt
    from lungray.train.device import torch_generator
    from lungray.train.evaluate import unwrap

    trial, task = ctx.trial, ctx.task
    sch, tc = trial.schedule, trial.train
    f = _Fitted(
        trial_dict=json.loads(json.dumps(trial.to_dict())),
        stopper=EarlyStopping(sch.monitor, sch.early_stopping_patience, mode=task.mode(sch.monitor)),
    )
    start_epoch = 0
    if resume_from is not None:
        st = ckpt.load_state(resume_from)
        if json.dumps(st["trial"], sort_keys=True) != json.dumps(f.trial_dict, sort_keys=True):
            raise LungrayError(
                f"resume_from {resume_from}: the checkpoint belongs to trial '{st['trial'].get('study')}' "
                f"with a different config than '{trial.name}'; resume the same trial or start afresh"
            )
        unwrap(m.net).load_state_dict(st["model"])
        if m.optimizer is not None:
            m.optimizer.load_state_dict(st["optimizer"])
            m.scheduler.load_state_dict(st["scheduler"])
        if st.get("scaler"):
            m.scaler.load_state_dict(st["scaler"])
        start_epoch = int(st["epoch"])
        f.history = [dict(h) for h in st["history"]]
        f.stopper.load_state_dict(st["early_stopping"])
        f.best_state = st["best_model"]
        f.done = bool(st["done"])
        f.stopped_early = bool(st["stopped_early"])
        f.train_seconds = float(st["train_seconds"])
        ckpt.set_rng_state(st["rng"])
        f.last_ckpt = Path(resume_from)
    if not m.full_batch:
        m.net = wrap_distributed(m.net, ctx.device, ctx.world)
    ckpt_root = ctx.workdir / "checkpoints"
    # One loader per split for the whole trial; with loader workers they persist across epochs.
    persistent = tc.num_workers > 0
    pin = ctx.device.type == "cuda"
    loader = val_loader = None
    if not m.full_batch:
        batching: dict[str, Any] = (
            {"batch_sampler": m.sampler} if isinstance(m.sampler, StepStream)
            else {"batch_size": setup.batch_size, "sampler": EpochTagged(m.sampler), "drop_last": setup.drop_last}
        )
        loader = torch.utils.data.DataLoader(
            setup.train_ds,
            **batching,
            num_workers=tc.num_workers,
            persistent_workers=persistent,
            pin_memory=pin,
            generator=torch_generator(trial.seed, 0, stream=2),  # worker seeds only; items are seeded
        )
    if len(setup.val_idx):
        val_loader = torch.utils.data.DataLoader(
            setup.val_ds, batch_size=max(1, int(tc.eval_batch_size)), shuffle=False,
            num_workers=tc.num_workers, persistent_workers=persistent, pin_memory=pin,
        )
    last_ckpt_t = time.perf_counter()
    f.setup_seconds = time.perf_counter() - ctx.t0

    epochs = setup.epochs
    for epoch in range(start_epoch + 1, epochs + 1):
        if f.done:
            break
        t_ep = time.perf_counter()
        if m.full_batch:
            lr = float("nan")
            stats = _fit_full_batch(ctx, setup, m.net)
        else:
            lr = float(m.optimizer.param_groups[0]["lr"])
            stats = _train_epoch(ctx, setup, m, loader, epoch)
        row: dict[str, float] = {"epoch": int(epoch), **{k: float(v) for k, v in stats.items()}, "lr": lr}
        if len(setup.val_idx) and (epoch % sch.eval_every == 0 or epoch == epochs):
            vm = _validate(ctx, setup, m.net, val_loader)
            row.update(vm)
            improved, stop = f.stopper.update(vm[sch.monitor], epoch)
            if improved:
                f.best_state = ckpt.cpu_state_dict(m.net)
            if stop:
                f.done = f.stopped_early = True
        if epoch == epochs:
            f.done = True
        f.train_seconds += time.perf_counter() - t_ep
        f.history.append(row)
        log.debug("trial %s epoch %d: %s", trial.name, epoch, row)

        pause = stop_after_epoch is not None and epoch >= stop_after_epoch and not f.done
        # a resumable checkpoint costs a full model + optimizer write (resnet18: 128-171 MB, 12-14 %
        # of a CPU epoch, more than a whole GPU epoch: bench/RESULTS.md); write one every
        # checkpoint_every epochs but at most every checkpoint_min_seconds, and always at the end
        due = epoch % sch.checkpoint_every == 0 and time.perf_counter() - last_ckpt_t >= sch.checkpoint_min_seconds
        write = due or f.done or pause
        ckpt_dir: Optional[Path] = None
        if write and ctx.is_main:
            ckpt_dir = ckpt.save_state(
                ckpt_root / f"epoch_{epoch:04d}",
                {
                    "trial": f.trial_dict,
                    "epoch": int(epoch),
                    "model": ckpt.cpu_state_dict(m.net),
                    "optimizer": m.optimizer.state_dict() if m.optimizer is not None else None,
                    "scheduler": m.scheduler.state_dict() if m.scheduler is not None else None,
                    "scaler": m.scaler.state_dict(),
                    "early_stopping": f.stopper.state_dict(),
                    "best_model": f.best_state,
                    "done": bool(f.done),
                    "stopped_early": bool(f.stopped_early),
                    "history": f.history,
                    "train_seconds": float(f.train_seconds),
                    "rng": ckpt.rng_state(),
                },
            )
        if report is not None:
            report(dict(row), str(ckpt_dir) if ckpt_dir is not None else None)
        if write:
            last_ckpt_t = time.perf_counter()  # only rank 0 writes, so its clock is the one that counts
        if ckpt_dir is not None:
            ckpt.remove_older(ckpt_root, keep=ckpt_dir)
            f.last_ckpt = ckpt_dir
        if pause:
            f.paused = True
            break
    return f


def _train_epoch(ctx: _Context, setup: _SetUp, m: _Model, loader: Any, epoch: int) -> dict[str, float]:
    """One epoch of optimizer steps; the task's statistics, read from the device once."""
    import torch

    from lungray.train.device import autocast, to_channels_last
    from lungray.train.optim import clip_gradients

    device, grad_clip = ctx.device, ctx.trial.optimizer.grad_clip
    setup.train_ds.set_epoch(epoch)
    m.sampler.set_epoch(epoch)
    m.net.train()
    # summed on the device and read once per epoch: a per-step float()/int() is a host
    # sync that stalls the CUDA launch queue twice per step
    loss_sum_t = torch.zeros((), dtype=torch.float64, device=device)
    sums: dict[str, Any] = {}
    seen = 0
    params = [p for p in m.net.parameters() if p.requires_grad]
    for x, y, _ in loader:
        x = to_channels_last(x.to(device, non_blocking=True), ctx.channels_last)
        y = y.to(device, non_blocking=True)
        with autocast(device, ctx.dtype):
            logits = m.net(x)
        loss = m.criterion(logits.float(), y)
        m.optimizer.zero_grad(set_to_none=True)
        m.scaler.scale(loss).backward()
        if grad_clip is not None:
            m.scaler.unscale_(m.optimizer)
            clip_gradients(params, grad_clip)
        m.scaler.step(m.optimizer)
        m.scaler.update()
        m.scheduler.step()  # per optimisation step: epoch schedules count steps_per_epoch (optim.py)
        bs = int(y.shape[0])
        loss_sum_t += loss.detach().double() * bs
        for key, v in ctx.task.batch_stats(logits, y).items():
            sums[key] = sums[key] + v if key in sums else v
        seen += bs
    return ctx.task.epoch_stats(float(loss_sum_t), sums, seen)


def _validate(ctx: _Context, setup: _SetUp, model: Any, val_loader: Any) -> dict[str, float]:
    """The task's validation metrics of the current weights on ``data.val_idx``."""
    from lungray.train.evaluate import predict

    sync_buffers(model, ctx.world)
    tc = ctx.trial.train
    outputs, y, _ = predict(
        model, setup.val_ds, batch_size=tc.eval_batch_size, device=ctx.device, dtype=ctx.dtype,
        channels_last=ctx.channels_last, loader=val_loader, batch_fn=ctx.task.evaluate_batch,
    )
    return ctx.task.val_metrics(y, outputs, setup.class_names)


def _fit_full_batch(ctx: _Context, setup: _SetUp, model: Any) -> dict[str, float]:
    """Closed-form / full-batch fit (``ModelSpec.full_batch``: ``logreg``): all training images
    at once, no SGD epochs.

    The 4-class study's logistic-regression baseline (PROTOCOLS.md section 4) is a convex fit
    on pixels; solving it exactly (as scikit-learn does) instead of with a few SGD epochs makes
    it comparable with scikit-learn. Augmentation does not apply to a single full-batch fit.
    """
    import torch

    from lungray.train.evaluate import predict, unwrap

    trial, task, device = ctx.trial, ctx.task, ctx.device
    plain = task.dataset(ctx.data, setup.train_idx, augmentation="none", mean=setup.mean, std=setup.std, seed=trial.seed,
                         **_input_size(trial, ctx.data))
    xs, ys = [], []
    for i in range(len(plain)):
        x, y, _ = plain[i]
        xs.append(torch.as_tensor(x))
        ys.append(torch.as_tensor(y))
    x = torch.stack(xs).to(device)
    y = torch.stack(ys).to(device=device, dtype=torch.int64)
    w = task.full_batch_weights(trial, setup.targets, setup.k)
    sw = None if w is None else torch.as_tensor(w, dtype=torch.float32, device=device)
    unwrap(model).fit_full_batch(x, y, sample_weight=sw)
    outputs, yy, _ = predict(
        model, plain, batch_size=max(1, trial.train.eval_batch_size), device=device, dtype=ctx.dtype,
        channels_last=ctx.channels_last, batch_fn=task.evaluate_batch,
    )
    return task.output_stats(yy, outputs)


def _final_evaluation(ctx: _Context, setup: _SetUp, m: _Model, f: _Fitted) -> TrialResult:
    """Evaluate the selected state once on the held-out ``data.eval_idx``; write ``best.pt``."""
    from lungray.tracking import TEST_PREFIX
    from lungray.train import checkpoint as ckpt
    from lungray.train.evaluate import predict, unwrap

    trial, data, task = ctx.trial, ctx.data, ctx.task
    t_eval = time.perf_counter()
    sync_buffers(m.net, ctx.world)
    net = unwrap(m.net)
    best_state = f.best_state
    if best_state is not None:
        net.load_state_dict(best_state)
        best_epoch = f.stopper.best_epoch
    else:  # no validation split: the last epoch is the selected one
        best_epoch = f.epochs_run
        best_state = ckpt.cpu_state_dict(net)
    eval_idx = np.asarray(data.eval_idx, dtype=np.int64)
    eval_ds = task.dataset(data, eval_idx, augmentation="none", mean=setup.mean, std=setup.std, seed=trial.seed,
                           **_input_size(trial, data))
    outputs, y, rows = predict(
        net, eval_ds, batch_size=trial.train.eval_batch_size, device=ctx.device, dtype=ctx.dtype,
        channels_last=ctx.channels_last, num_workers=trial.train.num_workers, batch_fn=task.evaluate_batch,
    )
    flat, per_class, confusion = task.report(y, outputs, setup.class_names)
    metrics = {f"{TEST_PREFIX}{key}": float(v) for key, v in flat.items()}
    predictions = task.predictions_frame(data, rows, y, outputs, setup.class_names)
    from lungray.train.external import evaluate_external  # issue 24: the same model on each external set

    external = evaluate_external(ctx, setup, net, _input_size(trial, data))
    best_path: Optional[Path] = None
    if ctx.is_main:
        best_path = ckpt.write_best(
            ctx.workdir / "checkpoint" / ckpt.BEST_FILE,
            model_state=best_state,
            class_names=setup.class_names,
            trial=f.trial_dict,
            norm=setup.norm,
            epoch=int(best_epoch or 0),
        )
    eval_seconds = time.perf_counter() - t_eval
    return TrialResult(
        metrics=metrics,
        per_class=per_class,
        confusion=confusion,
        predictions=predictions,
        history=f.history,
        best_epoch=best_epoch,
        best_checkpoint=str(best_path) if best_path is not None else None,
        timings={"setup_seconds": f.setup_seconds, "train_seconds": f.train_seconds, "eval_seconds": eval_seconds},
        epochs_run=f.epochs_run,
        completed=True,
        stopped_early=f.stopped_early,
        checkpoint_dir=str(f.last_ckpt) if f.last_ckpt is not None else None,
        resolved=setup.resolved,
        external=external,
    )


def _input_size(trial: TrialConfig, data: Any) -> dict[str, int]:
    """``{"size": models[i].input_size}`` when the model reads another size than the cache's."""
    n = trial.model.input_size
    return {"size": int(n)} if n is not None and int(n) != int(data.resolution) else {}


def _stat(v: Any) -> Any:
    """A normalisation statistic as JSON-able numbers: a float, or a list per channel."""
    return float(v) if np.ndim(v) == 0 else [float(x) for x in v]
