"""What does lungray's segmentation trial loop cost next to a bare smp training loop?

Issue 10, "Done when": the segmentation task's trial loop vs a bare segmentation_models_pytorch
loop on the same data, model and steps, ratio >= 0.95. Both train the same U-Net
(``smp.Unet`` with the timm encoder ``tu-<name>``, the network lungray's ``unet:<name>`` wraps),
from the same initial weights, on the same phantom lesion masks through the same
:class:`~lungray.data.dataset.ImageDataset` (``target="mask"``), batch size and epochs:

* ``bare smp``: the loop a user writes with smp alone: ``DataLoader``, forward,
  ``smp.losses.DiceLoss("multiclass")``, backward, Adam step; nothing else;
* ``run_trial (segmentation)``: :func:`lungray.train.run_trial` with ``train.task=segmentation``
  (Dice loss from per-image statistics, per-batch Dice/IoU sums on the device, per-epoch
  bookkeeping, the default checkpoint rule: at most one a minute and at the end).

As ``bench_trial.py``: steady-state images/s from epoch-end stamps (median over epochs 2..E-1:
epoch 1 warms up, epoch E runs the only validation), variants interleaved (A B, B A, ...) and the
ratio is the median of per-round ratios (``bench/_common.py``).

Run: ``python bench/bench_segmentation.py`` (default, ~5 min on 2 CPUs) or ``--quick`` (CI smoke).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from bench_trial import bare_device, bare_fit, bare_loader, images_per_epoch, timed_run_trial  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes for a CI smoke run (asserts nothing about speed)")
    p.add_argument("--encoder", default="resnet18", help="timm encoder of the U-Net (lungray name unet:<encoder>)")
    p.add_argument("--width", type=int, default=16, help="decoder width w: channels 16w..w (smp's default: 16)")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n-train", type=int, default=64, help="training images per epoch")
    p.add_argument("--epochs", type=int, default=5, help=">= 4: epochs 2..E-1 are timed")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds (5: a loaded 2-CPU machine swings 20 %% between rounds)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads in every variant")
    p.add_argument("--out", default=None, help="work folder (default: a temp dir, removed at the end)")
    a = p.parse_args(argv)
    if a.quick:
        a.encoder, a.width, a.resolution, a.n_train, a.epochs, a.repeats = "resnet10t", 4, 32, 48, 4, 1
    if a.epochs < 4:
        p.error("--epochs must be >= 4 (epoch 1 warms up, the last one validates)")
    return a


def prepare(args, out: Path):
    """The phantom with its lesion masks (4 classes: three findings carry masks)."""
    from lungray.config import DataConfig
    from lungray.data import prepare_data

    cfg = DataConfig(source="phantom", phantom_classes=4, phantom_n=args.n_train + 120, resolution=args.resolution,
                     eval_size=60, val_size=20, leakage="off", cache_dir=str(out / "cache"))
    return prepare_data(cfg, output_dir=str(out / "prepared"), sizes=(args.n_train,), seeds=(0,), progress=False)


def make_trial(args):
    from lungray.config import ModelConfig, OptimizerConfig, ScheduleConfig, TrainConfig, TrialConfig

    return TrialConfig(
        study="bench_segmentation",
        model=ModelConfig(name=f"unet:{args.encoder}", width=args.width),
        train_size=args.n_train,
        optimizer=OptimizerConfig(name="adam", lr=1e-3),
        seed=0,
        schedule=ScheduleConfig(rule="fixed", batch_size=args.batch_size, epochs=args.epochs, eval_every=args.epochs),
        train=TrainConfig(task="segmentation", loss="dice", augmentation="none", normalization="pool", num_workers=0),
    )


def bare_smp_loop(args, data, trial) -> float:
    """The hand-written reference: smp's U-Net and Dice loss, a DataLoader, Adam."""
    import segmentation_models_pytorch as smp
    import torch

    device, amp, cl = bare_device(fp16=False)
    loader = bare_loader(args, data, cl, target="mask")
    w = args.width
    model = smp.Unet(encoder_name=f"tu-{args.encoder}", encoder_weights=None, in_channels=1, classes=2,
                     decoder_channels=(16 * w, 8 * w, 4 * w, 2 * w, w)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=trial.optimizer.lr)
    lossf = smp.losses.DiceLoss("multiclass", from_logits=True, ignore_index=255)
    return bare_fit(model, loader, opt, lossf, args.epochs, device, amp, cl)


def segmentation_trial(args, data, trial, out: Path) -> float:
    return timed_run_trial(trial, data, out / f"trial_{time.time_ns()}", args.n_train)


def same_network(args, data, trial) -> int:
    """Parameter count of lungray's ``unet:<encoder>``, asserted equal to the bare smp U-Net's."""
    import segmentation_models_pytorch as smp

    from lungray.models.segmentation import create_segmentation_model

    w = args.width
    ours = sum(p.numel() for p in create_segmentation_model(trial.model, 2, in_chans=1, resolution=data.resolution).parameters())
    bare = sum(p.numel() for p in smp.Unet(encoder_name=f"tu-{args.encoder}", encoder_weights=None, in_channels=1, classes=2,
                                           decoder_channels=(16 * w, 8 * w, 4 * w, 2 * w, w)).parameters())
    if ours != bare:
        raise SystemExit(f"lungray's unet:{args.encoder} has {ours} parameters, the bare smp U-Net {bare}: not the same model")
    return ours


def main(argv=None) -> int:
    args = parse_args(argv)
    C.set_threads(args.threads)
    C.print_header("bench_segmentation: lungray's segmentation trial loop vs a bare smp loop", args)
    with C.work_dir(args.out, "lungray_bench_segmentation_") as out:
        data = prepare(args, out)
        trial = make_trial(args)
        n_params = same_network(args, data, trial)
        ipe = images_per_epoch(trial, args.n_train)
        print(f"smp U-Net tu-{args.encoder} (decoder width {args.width}, {n_params:,} parameters) at {args.resolution} px, "
              f"batch {args.batch_size}, {ipe} images/epoch, {args.epochs} epochs (2..{args.epochs - 1} timed), "
              f"{args.threads} thread(s), {args.repeats} interleaved rounds")
        res = C.interleave({
            "bare smp": lambda: bare_smp_loop(args, data, trial),
            "run_trial (segmentation)": lambda: segmentation_trial(args, data, trial, out),
        }, args.repeats)
        base = res["bare smp"]
        C.print_table([{"variant": n, "images/s (median)": C.median(v), "range": C.spread(v), "vs bare": C.paired_ratio(v, base)}
                       for n, v in res.items()], "steady-state training throughput (vs bare: paired median ratio)")
        C.print_ratio("seg_trial_loop_vs_bare_smp", C.paired_ratio(res["run_trial (segmentation)"], base), 0.95)
    C.print_load()
    return 0


if __name__ == "__main__":
    sys.exit(main())
