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
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from lungray.config import StudyConfig, TrialConfig
from lungray.errors import ConfigError, LungrayError
from lungray.train.result import TrialResult

log = logging.getLogger(__name__)

Report = Callable[[dict[str, float], Optional[str]], None]


# ------------------------------------------------------------------------------------------
# pure helpers
# ------------------------------------------------------------------------------------------


def validate_trial(trial: TrialConfig, resolution: Optional[int] = None) -> None:
    """Run the study-level checks on a single trial (names, ranges, zero-step schedules).

    A trial built by hand (a test, a notebook) gets the same config-time errors as a study;
    the one-cell study reuses :func:`lungray.config.validate_study` so the rules live once.
    ``resolution`` (the prepared data's, when known) enables the resolution-dependent model
    checks; without it they are skipped (a 256 px stand-in passes them).
    """
    from lungray.config import DataConfig

    StudyConfig(
        name=trial.study,
        data=DataConfig(resolution=int(resolution) if resolution else 256),
        models=(trial.model,),
        sizes=(trial.train_size,),
        optimizers=(trial.optimizer,),
        seeds=(trial.seed,),
        schedule=trial.schedule,
        train=trial.train,
    ).validate()


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


def epoch_plan(n_train: int, batch_size: int, world_size: int = 1) -> tuple[int, bool]:
    """(optimisation steps per epoch per rank, drop_last) for ``n_train`` images.

    Each rank sees ``ceil(n / world_size)`` samples. A last batch of exactly one image is
    dropped (``drop_last``): batch norm cannot normalise a batch of one in training mode, and
    with the per-epoch shuffle a different image is left out each epoch.
    """
    if n_train < 1 or batch_size < 1:
        raise ConfigError(
            f"training size {n_train} with batch size {batch_size} gives zero optimisation steps; "
            "set schedule.batch_size/epochs (or size_rules/max_steps) >= 1"
        )
    per_rank = math.ceil(n_train / world_size)
    drop_last = per_rank > 1 and per_rank % batch_size == 1
    steps = per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)
    return steps, drop_last


class EpochSampler:
    """Shuffled (or class-weighted, with replacement) indices for one epoch, sharded by rank.

    The order of epoch e depends only on (seed, e), never on earlier epochs, so a resumed run
    replays it exactly; sharding is DistributedSampler's (pad by wrapping, take ``rank::world``)
    so each rank sees a disjoint slice of the same permutation.
    """

    def __init__(self, n: int, seed: int, *, weights: Optional[np.ndarray] = None, rank: int = 0, world_size: int = 1):
        self.n = int(n)
        self.seed = int(seed)
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0
        self.per_rank = math.ceil(self.n / self.world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self) -> list[int]:
        import torch

        from lungray.train.device import torch_generator

        g = torch_generator(self.seed, self.epoch, stream=1)
        if self.weights is not None:
            idx = torch.multinomial(torch.as_tensor(self.weights), self.n, replacement=True, generator=g)
        else:
            idx = torch.randperm(self.n, generator=g)
        idx = idx.tolist()
        total = self.per_rank * self.world_size
        if total > len(idx):
            idx = idx + idx[: total - len(idx)]
        return idx[self.rank : total : self.world_size]

    def __iter__(self):
        return iter(self.indices())

    def __len__(self) -> int:
        return self.per_rank


class EpochTagged:
    """A sampler that yields ``(epoch, i)`` for each ``i`` of ``sampler``'s current epoch.

    Lets one DataLoader with persistent workers serve every epoch: the sampler is iterated
    in the main process (where ``set_epoch`` is called), and the epoch travels with each
    index to the worker's copy of the dataset (:meth:`ImageDataset.__getitem__`). Building a
    DataLoader per epoch instead re-spawns its workers every epoch (``bench/bench_data.py``).
    """

    def __init__(self, sampler: EpochSampler):
        self.sampler = sampler

    def __iter__(self):
        e = self.sampler.epoch
        return iter([(e, i) for i in self.sampler.indices()])

    def __len__(self) -> int:
        return len(self.sampler)


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
    import torch

    from lungray.train.device import (
        amp_dtype,
        configure_backends,
        distributed_info,
        restore_backends,
        select_device,
    )

    t0 = time.perf_counter()
    validate_trial(trial, resolution=(getattr(data, "info", None) or {}).get("resolution"))
    if stop_after_epoch is not None and stop_after_epoch < 1:
        raise ConfigError(f"stop_after_epoch must be >= 1, got {stop_after_epoch}")
    rank, world = distributed_info()
    device = select_device(trial.train.device)
    dtype = amp_dtype(device, trial.train.amp)
    channels_last = bool(trial.train.channels_last and device.type == "cuda")
    prev = configure_backends(device, trial.train.deterministic)
    try:
        return _run(
            trial,
            data,
            workdir=Path(workdir),
            report=report,
            resume_from=resume_from,
            stop_after_epoch=stop_after_epoch,
            device=device,
            dtype=dtype,
            channels_last=channels_last,
            rank=rank,
            world=world,
            t0=t0,
            torch=torch,
        )
    finally:
        restore_backends(prev)


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _sync_buffers(model: Any, world: int) -> None:
    """Copy rank 0's buffers (batch-norm running statistics) to every rank before evaluating.

    DDP averages gradients, so parameters agree across ranks, but each rank updates its BN
    running statistics from its own shard after DDP's start-of-forward broadcast; without this
    the ranks would evaluate slightly different models and could disagree on early stopping.
    """
    if world <= 1:
        return
    import torch.distributed as dist

    from lungray.train.evaluate import unwrap

    for buf in unwrap(model).buffers():
        dist.broadcast(buf.data, src=0)


def _wrap_distributed(model: Any, device: Any, world: int) -> Any:
    """DDP for world_size > 1: Ray's ``prepare_model`` inside Ray Train, torch DDP otherwise."""
    if world <= 1:
        return model
    try:
        import ray.train

        ray.train.get_context()  # raises outside a Ray Train worker
        in_ray_train = True
    except Exception:
        in_ray_train = False
    if in_ray_train:
        import ray.train.torch as rtt

        return rtt.prepare_model(model, move_to_device=False)
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" and device.index is not None else None
    return DDP(model, device_ids=ids)


def _run(
    trial: TrialConfig,
    data: Any,
    *,
    workdir: Path,
    report: Optional[Report],
    resume_from: Optional[str | Path],
    stop_after_epoch: Optional[int],
    device: Any,
    dtype: Any,
    channels_last: bool,
    rank: int,
    world: int,
    t0: float,
    torch: Any,
) -> TrialResult:
    from lungray.data.augment import normalization_stats
    from lungray.data.dataset import ImageDataset
    from lungray.models import create_model, input_channels
    from lungray.train import checkpoint as ckpt
    from lungray.train.device import autocast, make_scaler, seed_everything, to_channels_last, torch_generator
    from lungray.train.evaluate import EarlyStopping, predict, unwrap, val_metrics
    from lungray.train.optim import build_optimizer, build_scheduler, clip_gradients

    is_main = rank == 0
    sch, tc = trial.schedule, trial.train
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
    seed_everything(trial.seed)
    data = data.for_preprocess(trial.variant.preprocess)  # a variant's cache: same rows and splits

    # -- data --------------------------------------------------------------------------------
    train_idx = np.asarray(data.subset(trial.train_size, trial.seed), dtype=np.int64)
    n_train = len(train_idx)
    batch_size, epochs = sch.resolve(n_train)
    steps_per_epoch, drop_last = epoch_plan(n_train, batch_size, world)
    if epochs < 1:
        raise ConfigError(
            f"schedule gives {epochs} epochs at training size {n_train}: zero optimisation steps; "
            "set schedule.epochs (or size_rules/max_steps) >= 1"
        )
    k = data.num_classes
    class_names = [str(c) for c in data.class_names]
    y_train = np.asarray(data.labels[train_idx], dtype=np.int64)
    # repeat3 models get 3 channels, each normalised with its own statistics (ImageNet's three)
    channels = input_channels(trial.model)
    mean, std = normalization_stats(tc.normalization, data, channels, fixed=(tc.norm_mean, tc.norm_std))
    norm = (_stat(mean), _stat(std))
    train_ds = ImageDataset(data, train_idx, augmentation=tc.augmentation, mean=mean, std=std, seed=trial.seed)
    val_idx = np.asarray(data.val_idx, dtype=np.int64)
    val_ds = ImageDataset(data, val_idx, augmentation="none", mean=mean, std=std, seed=trial.seed)
    resolved = {
        "n_train": n_train,
        "batch_size": int(batch_size),
        "epochs": int(epochs),
        "steps_per_epoch": int(steps_per_epoch),
        "drop_last": bool(drop_last),
        "norm_mean": norm[0],
        "norm_std": norm[1],
        "device": str(device),
        "amp": str(dtype).replace("torch.", "") if dtype is not None else "off",
        "world_size": world,
    }

    # -- model ---------------------------------------------------------------------------------
    ae_weights = None
    if trial.model.name == "ae_encoder":
        from lungray.models import ensure_autoencoder

        # rank 0 pretrains (or finds the cache) first so ranks never race on the cache file
        for turn in ((True,) if world == 1 else (is_main, not is_main)):
            if turn:
                ae_weights = ensure_autoencoder(
                    data,
                    trial.seed,
                    epochs=tc.ae_epochs,
                    device=device,
                    resolution=data.resolution,
                    max_images=tc.ae_pretrain_images,
                    mean=norm[0],
                    std=norm[1],
                    in_chans=channels,
                    pretrain_class=tc.ae_pretrain_class,
                )
            _barrier(world)
    seed_everything(trial.seed)  # weight init independent of what ran before (AE pretraining)
    model = create_model(trial.model, k, in_chans=channels, resolution=data.resolution, ae_weights=ae_weights)
    model = to_channels_last(model.to(device), channels_last)
    full_batch = hasattr(unwrap(model), "fit_full_batch")
    if full_batch:
        epochs = 1
        resolved.update(epochs=1, steps_per_epoch=1, batch_size=n_train, drop_last=False)

    cw = class_weights(y_train, k) if tc.imbalance == "weighted_loss" else None
    criterion = torch.nn.CrossEntropyLoss(
        weight=None if cw is None else torch.as_tensor(cw, dtype=torch.float32, device=device),
        label_smoothing=tc.label_smoothing,
    )
    sampler = EpochSampler(
        n_train,
        trial.seed,
        weights=sample_weights(y_train, k) if tc.imbalance == "weighted_sampler" else None,
        rank=rank,
        world_size=world,
    )
    optimizer = scheduler = None
    if not full_batch:
        optimizer = build_optimizer(model, trial.optimizer)
        scheduler = build_scheduler(optimizer, trial.optimizer, epochs, steps_per_epoch=steps_per_epoch)
    scaler = make_scaler(device, dtype)

    # -- state (fresh or resumed) --------------------------------------------------------------
    trial_dict = json.loads(json.dumps(trial.to_dict()))
    start_epoch = 0
    history: list[dict[str, float]] = []
    stopper = EarlyStopping(sch.monitor, sch.early_stopping_patience)
    best_state: Optional[dict[str, Any]] = None
    done = False
    stopped_early = False
    train_seconds = 0.0
    if resume_from is not None:
        st = ckpt.load_state(resume_from)
        if json.dumps(st["trial"], sort_keys=True) != json.dumps(trial_dict, sort_keys=True):
            raise LungrayError(
                f"resume_from {resume_from}: the checkpoint belongs to trial '{st['trial'].get('study')}' "
                f"with a different config than '{trial.name}'; resume the same trial or start afresh"
            )
        unwrap(model).load_state_dict(st["model"])
        if optimizer is not None:
            optimizer.load_state_dict(st["optimizer"])
            scheduler.load_state_dict(st["scheduler"])
        if st.get("scaler"):
            scaler.load_state_dict(st["scaler"])
        start_epoch = int(st["epoch"])
        history = [dict(h) for h in st["history"]]
        stopper.load_state_dict(st["early_stopping"])
        best_state = st["best_model"]
        done = bool(st["done"])
        stopped_early = bool(st["stopped_early"])
        train_seconds = float(st["train_seconds"])
        ckpt.set_rng_state(st["rng"])
    if not full_batch:
        model = _wrap_distributed(model, device, world)
    ckpt_root = workdir / "checkpoints"
    last_ckpt: Optional[Path] = Path(resume_from) if resume_from is not None else None
    # One loader per split for the whole trial; with loader workers they persist across epochs.
    persistent = tc.num_workers > 0
    pin = device.type == "cuda"
    loader = val_loader = None
    if not full_batch:
        loader = torch.utils.data.DataLoader(
            train_ds,
            batch_size=batch_size,
            sampler=EpochTagged(sampler),
            drop_last=drop_last,
            num_workers=tc.num_workers,
            persistent_workers=persistent,
            pin_memory=pin,
            generator=torch_generator(trial.seed, 0, stream=2),  # worker seeds only; items are seeded
        )
    if len(val_idx):
        val_loader = torch.utils.data.DataLoader(
            val_ds, batch_size=max(1, int(tc.eval_batch_size)), shuffle=False,
            num_workers=tc.num_workers, persistent_workers=persistent, pin_memory=pin,
        )
    last_ckpt_t = time.perf_counter()
    setup_seconds = time.perf_counter() - t0

    def evaluate_val() -> dict[str, float]:
        if len(val_idx) == 0:
            return {}
        _sync_buffers(model, world)
        probs, y, _ = predict(
            model, val_ds, batch_size=tc.eval_batch_size, device=device, dtype=dtype,
            channels_last=channels_last, loader=val_loader,
        )
        return val_metrics(y, probs, class_names)

    # -- epochs --------------------------------------------------------------------------------
    epoch = start_epoch
    for epoch in range(start_epoch + 1, epochs + 1):
        if done:
            break
        t_ep = time.perf_counter()
        if full_batch:
            lr = float("nan")
            plain = ImageDataset(data, train_idx, augmentation="none", mean=mean, std=std, seed=trial.seed)
            train_loss, train_acc = _fit_full_batch(model, plain, y_train, tc, k, device, dtype, channels_last)
        else:
            lr = float(optimizer.param_groups[0]["lr"])
            train_ds.set_epoch(epoch)
            sampler.set_epoch(epoch)
            model.train()
            # summed on the device and read once per epoch: a per-step float()/int() is a host
            # sync that stalls the CUDA launch queue twice per step
            loss_sum_t = torch.zeros((), dtype=torch.float64, device=device)
            correct_t = torch.zeros((), dtype=torch.int64, device=device)
            seen = 0
            params = [p for p in model.parameters() if p.requires_grad]
            for x, y, _ in loader:
                x = to_channels_last(x.to(device, non_blocking=True), channels_last)
                y = y.to(device, non_blocking=True)
                with autocast(device, dtype):
                    logits = model(x)
                loss = criterion(logits.float(), y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if trial.optimizer.grad_clip is not None:
                    scaler.unscale_(optimizer)
                    clip_gradients(params, trial.optimizer.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()  # per optimisation step: epoch schedules count steps_per_epoch (optim.py)
                bs = int(y.shape[0])
                loss_sum_t += loss.detach().double() * bs
                correct_t += (logits.detach().argmax(1) == y).sum()
                seen += bs
            train_loss = float(loss_sum_t) / max(seen, 1)
            train_acc = int(correct_t) / max(seen, 1)
        row: dict[str, float] = {
            "epoch": int(epoch),
            "train_loss": float(train_loss),
            "train_accuracy": float(train_acc),
            "lr": lr,
        }
        if len(val_idx) and (epoch % sch.eval_every == 0 or epoch == epochs):
            vm = evaluate_val()
            row.update(vm)
            improved, stop = stopper.update(vm[sch.monitor], epoch)
            if improved:
                best_state = ckpt.cpu_state_dict(model)
            if stop:
                done = stopped_early = True
        if epoch == epochs:
            done = True
        train_seconds += time.perf_counter() - t_ep
        history.append(row)
        log.debug("trial %s epoch %d: %s", trial.name, epoch, row)

        pause = stop_after_epoch is not None and epoch >= stop_after_epoch and not done
        # a resumable checkpoint costs a full model + optimizer write (resnet18: 128-171 MB, 12-14 %
        # of a CPU epoch, more than a whole GPU epoch: bench/RESULTS.md); write one every
        # checkpoint_every epochs but at most every checkpoint_min_seconds, and always at the end
        due = epoch % sch.checkpoint_every == 0 and time.perf_counter() - last_ckpt_t >= sch.checkpoint_min_seconds
        write = due or done or pause
        ckpt_dir: Optional[Path] = None
        if write and is_main:
            ckpt_dir = ckpt.save_state(
                ckpt_root / f"epoch_{epoch:04d}",
                {
                    "trial": trial_dict,
                    "epoch": int(epoch),
                    "model": ckpt.cpu_state_dict(model),
                    "optimizer": optimizer.state_dict() if optimizer is not None else None,
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "scaler": scaler.state_dict(),
                    "early_stopping": stopper.state_dict(),
                    "best_model": best_state,
                    "done": bool(done),
                    "stopped_early": bool(stopped_early),
                    "history": history,
                    "train_seconds": float(train_seconds),
                    "rng": ckpt.rng_state(),
                },
            )
        if report is not None:
            report(dict(row), str(ckpt_dir) if ckpt_dir is not None else None)
        if write:
            last_ckpt_t = time.perf_counter()  # only rank 0 writes, so its clock is the one that counts
        if ckpt_dir is not None:
            ckpt.remove_older(ckpt_root, keep=ckpt_dir)
            last_ckpt = ckpt_dir
        if pause:
            return TrialResult(
                metrics={},
                per_class=None,
                confusion=None,
                predictions=None,
                history=history,
                best_epoch=stopper.best_epoch,
                best_checkpoint=None,
                timings={"setup_seconds": setup_seconds, "train_seconds": train_seconds, "eval_seconds": 0.0},
                epochs_run=int(epoch),
                completed=False,
                stopped_early=False,
                checkpoint_dir=str(last_ckpt) if last_ckpt is not None else None,
                resolved=resolved,
            )
    epochs_run = int(history[-1]["epoch"]) if history else 0

    # -- final evaluation of the selected checkpoint on the held-out set ---------------------------
    t_eval = time.perf_counter()
    _sync_buffers(model, world)
    net = unwrap(model)
    if best_state is not None:
        net.load_state_dict(best_state)
        best_epoch = stopper.best_epoch
    else:  # no validation split: the last epoch is the selected one
        best_epoch = epochs_run
        best_state = ckpt.cpu_state_dict(net)
    from lungray.metrics import classification_report
    from lungray.tracking import TEST_PREFIX

    eval_ds = ImageDataset(data, np.asarray(data.eval_idx, dtype=np.int64), augmentation="none", mean=mean, std=std, seed=trial.seed)
    probs, y, rows = predict(
        net, eval_ds, batch_size=tc.eval_batch_size, device=device, dtype=dtype,
        channels_last=channels_last, num_workers=tc.num_workers,
    )
    if probs.shape[0] == 0:
        probs = np.zeros((0, k))
    flat, per_class, cm = classification_report(y, probs, class_names)
    metrics = {f"{TEST_PREFIX}{key}": float(v) for key, v in flat.items()}
    predictions = _predictions_frame(data, rows, y, probs, class_names)
    best_path: Optional[Path] = None
    if is_main:
        best_path = ckpt.write_best(
            workdir / "checkpoint" / ckpt.BEST_FILE,
            model_state=best_state,
            class_names=class_names,
            trial=trial_dict,
            norm=norm,
            epoch=int(best_epoch or 0),
        )
    eval_seconds = time.perf_counter() - t_eval
    return TrialResult(
        metrics=metrics,
        per_class=per_class,
        confusion=cm,
        predictions=predictions,
        history=history,
        best_epoch=best_epoch,
        best_checkpoint=str(best_path) if best_path is not None else None,
        timings={"setup_seconds": setup_seconds, "train_seconds": train_seconds, "eval_seconds": eval_seconds},
        epochs_run=epochs_run,
        completed=True,
        stopped_early=stopped_early,
        checkpoint_dir=str(last_ckpt) if last_ckpt is not None else None,
        resolved=resolved,
    )


def _fit_full_batch(model, plain, y_train, tc, k, device, dtype, channels_last) -> tuple[float, float]:
    """Closed-form / full-batch fit (``logreg``): all training images at once, no SGD epochs.

    The 4-class study's logistic-regression baseline (PROTOCOLS.md section 4) is a convex fit
    on pixels; solving it exactly (as scikit-learn does) instead of with a few SGD epochs makes
    it comparable with scikit-learn. Augmentation does not apply to a single full-batch fit.
    """
    import torch

    from lungray.metrics import accuracy, log_loss
    from lungray.train.evaluate import predict, unwrap

    xs, ys = [], []
    for i in range(len(plain)):
        x, y, _ = plain[i]
        xs.append(torch.as_tensor(x))
        ys.append(int(y))
    x = torch.stack(xs).to(device)
    y = torch.as_tensor(ys, dtype=torch.int64, device=device)
    sw = None
    if tc.imbalance in ("weighted_loss", "weighted_sampler"):
        sw = torch.as_tensor(sample_weights(y_train, k) * len(y_train) / k, dtype=torch.float32, device=device)
    unwrap(model).fit_full_batch(x, y, sample_weight=sw)
    probs, yy, _ = predict(model, plain, batch_size=max(1, tc.eval_batch_size), device=device, dtype=dtype, channels_last=channels_last)
    return log_loss(yy, probs), accuracy(yy, probs.argmax(1))


def _stat(v: Any) -> Any:
    """A normalisation statistic as JSON-able numbers: a float, or a list per channel."""
    return float(v) if np.ndim(v) == 0 else [float(x) for x in v]


def _predictions_frame(data, rows, y, probs, class_names):
    import pandas as pd

    ids = np.asarray(data.ids)[rows] if len(rows) else np.zeros(0, dtype=object)
    df = pd.DataFrame({"image_id": ids.astype(str), "y_true": y.astype(np.int64)})
    for j, c in enumerate(class_names):
        df[f"prob_{c}"] = probs[:, j] if probs.shape[0] else np.zeros(0)
    df["row"] = rows.astype(np.int64)
    return df
