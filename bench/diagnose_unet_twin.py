"""Why does the RSNA study's U-Net (``unet_keras``) not learn in its CPU twin? (issue 21.5)

Not a speed benchmark: a measurement of held-out Dice, so the cause is found by changing one
thing at a time on the ``segmentation_smoke`` recipe (phantom lesion masks at 32 px, width 8,
400 Adam steps at batch 16, early stopping on the validation loss) and scoring every variant on
the same subsets and the same 120 held-out images:

1. ``study``: the twin as lungray builds it (Keras batch-norm momentum 0.99 = PyTorch 0.01,
   epsilon 1e-3, PyTorch's default initialisation);
2. ``bn_torch``: batch-norm momentum 0.1 (PyTorch's default: running statistics 10x faster);
3. ``glorot``: Keras' initialisation (Glorot-uniform kernels, zero biases);
4. ``lr1e-3``: Keras' default Adam rate instead of the twin's 3e-3;
5. ``budget4x``: four times the optimisation steps;
6. ``skips``: the same network plus U-Net skip connections (a 1x1 projection of the encoder's
   16, 8 and 4 px maps and of the input, added to the decoder's maps of the same size); the
   Keras example has none, so its decoder sees the image only through the 1/16 bottleneck,
   2 x 2 cells of 16 x 16 px at 32 px;
7. ``smp``: ``unet:resnet10t`` (width 4), the twin's smp comparison.

Per variant and training size: Dice over images with a finding (``dice_pos``), split by lesion
size, ``small`` (lesion under 4 % of the image: 40 px at 32 px) and ``large``, mean over seeds;
and how many runs ``collapsed`` (the selected model predicts no foreground pixel on any
held-out image: the study's foreground-only Dice, ``--loss dice_rsna``, can saturate the softmax
there and lose its gradient).

Run: ``python bench/diagnose_unet_twin.py`` (21 min on 2 busy CPUs, 2026-12-07; the table is in the
README) or ``--quick``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

VARIANTS = ("study", "bn_torch", "glorot", "lr1e-3", "budget4x", "skips", "smp")
SMALL = 0.04  # a lesion under this share of the image is "small"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one tiny run per variant (CI smoke; the numbers mean nothing)")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--sizes", nargs="*", type=int, default=[25, 400])
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1])
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--loss", default="dice", help="train.loss (segmentation_smoke: dice; the study: dice_rsna)")
    p.add_argument("--out", default=None, help="work folder (default: a temp dir, removed at the end)")
    a = p.parse_args(argv)
    if a.quick:
        a.sizes, a.seeds, a.steps = [16], [0], 4
    return a


def prepare(args, out: Path):
    """segmentation_smoke's data: the 4-class phantom, 640 images, difficulty 0.5."""
    from lungray.config import DataConfig
    from lungray.data import prepare_data

    cfg = DataConfig(source="phantom", phantom_classes=4, phantom_n=640, phantom_difficulty=0.5, resolution=args.resolution,
                     eval_size=120, val_size=40, leakage="off", cache_dir=str(out / "cache"))
    return prepare_data(cfg, output_dir=str(out / "prepared"), sizes=tuple(args.sizes), seeds=tuple(args.seeds), progress=False)


def with_skips(net):
    """The Keras twin plus U-Net skips: each decoder map gets a 1x1 projection of the encoder
    map (or the input) of its size added. Everything else is unchanged."""
    import torch.nn as nn

    from lungray.models.unet import KerasUNet

    class SkipKerasUNet(nn.Module):
        def __init__(self, base: KerasUNet, in_chans: int):
            super().__init__()
            self.base = base
            w = base.head.in_channels
            enc = [in_chans, w, 2 * w, 4 * w]  # input (R), entry (R/2), down0 (R/4), down1 (R/8)
            dec = [w, 2 * w, 4 * w, 8 * w]  # up3 (R), up2 (R/2), up1 (R/4), up0 (R/8)
            self.proj = nn.ModuleList(nn.Conv2d(e, d, 1) for e, d in zip(enc, dec))

        def forward(self, x):
            b = self.base
            e = b.entry(x)
            d0 = b.down[0](e)
            d1 = b.down[1](d0)
            h = b.down[2](d1)
            skips = [self.proj[3](d1), self.proj[2](d0), self.proj[1](e), self.proj[0](x)]
            for up, s in zip(b.up, skips):
                h = up(h) + s
            return b.head(h)

    net.net = SkipKerasUNet(net.net, net.adapter(__import__("torch").zeros(1, net.in_chans, 8, 8)).shape[1])
    return net


def patch(variant: str):
    """Apply a variant's change to lungray's U-Net builders; returns an undo function."""
    import torch.nn as nn

    import lungray.models.segmentation as S
    import lungray.models.unet as U

    saved = (U._bn, U.KerasUNet.__init__, S.SEG_MODELS.get("unet_keras").build)
    if variant == "bn_torch":
        U._bn = lambda c: nn.BatchNorm2d(c, eps=1e-3, momentum=0.1)
    if variant == "glorot":
        init0 = U.KerasUNet.__init__

        def init(self, *a, **k):
            init0(self, *a, **k)
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                    nn.init.xavier_uniform_(m.weight)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

        U.KerasUNet.__init__ = init
    spec = S.SEG_MODELS.get("unet_keras")
    if variant == "skips":
        build0 = spec.build
        object.__setattr__(spec, "build", lambda *a, **k: with_skips(build0(*a, **k)))

    def undo():
        U._bn, U.KerasUNet.__init__ = saved[0], saved[1]
        object.__setattr__(spec, "build", saved[2])

    return undo


def make_trial(args, variant: str, n: int, seed: int):
    from lungray.config import ModelConfig, OptimizerConfig, ScheduleConfig, TrainConfig, TrialConfig

    model = ModelConfig(name="unet:resnet10t", width=4) if variant == "smp" else ModelConfig(name="unet_keras", width=8)
    return TrialConfig(
        study="diagnose_unet_twin", model=model, train_size=n, seed=seed,
        optimizer=OptimizerConfig(name="adam", lr=1e-3 if variant == "lr1e-3" else 3e-3),
        schedule=ScheduleConfig(rule="steps", batch_size=16, max_steps=args.steps * (4 if variant == "budget4x" else 1),
                                eval_every=5, early_stopping_patience=6, monitor="val_loss", checkpoint_min_seconds=1e9),
        train=TrainConfig(task="segmentation", loss=args.loss, augmentation="none", normalization="pool", device="cpu"),
    )


def main(argv=None) -> int:
    import numpy as np
    import torch

    from lungray.train import run_trial

    args = parse_args(argv)
    torch.set_num_threads(1)
    C.print_header("diagnose_unet_twin", args)
    with C.work_dir(args.out, "diagnose_unet_twin") as out:
        data = prepare(args, out)
        rows = []
        for variant in args.variants:
            for n in args.sizes:
                for seed in args.seeds:
                    undo = patch(variant)
                    t0 = time.perf_counter()
                    try:
                        r = run_trial(make_trial(args, variant, n, seed), data, workdir=out / "w" / f"{variant}-{n}-{seed}")
                    finally:
                        undo()
                    p = r.predictions
                    share = p["fg_true"] / float(args.resolution) ** 2
                    small, large = p[(p.fg_true > 0) & (share < SMALL)]["dice"], p[share >= SMALL]["dice"]
                    train_pos = r.history[-1].get("train_dice_pos", float("nan"))
                    collapsed = float(p["fg_pred"].sum() == 0)
                    rows.append((variant, n, seed, r.metrics["test_dice_pos"], small.mean(), large.mean(), train_pos, collapsed))
                    print(f"  {variant:<9} n={n:<4} seed={seed}  dice_pos {rows[-1][3]:.3f}  small {rows[-1][4]:.3f}  "
                          f"large {rows[-1][5]:.3f}  train dice_pos {train_pos:.3f}  epochs {r.epochs_run}"
                          f"{'  COLLAPSED' if collapsed else ''}  {time.perf_counter() - t0:.0f}s", flush=True)
        print(f"\nheld-out Dice over images with a finding, mean of seeds {args.seeds} "
              f"(small: lesion < {SMALL:.0%} of the image; train: the last epoch's training batches)")
        print(f"{'variant':<10}{'n':>5}{'dice_pos':>10}{'small':>8}{'large':>8}{'train':>8}{'collapsed':>11}")
        for variant in args.variants:
            for n in args.sizes:
                sel = np.array([r[3:] for r in rows if r[0] == variant and r[1] == n], dtype=float)
                m = np.nanmean(sel[:, :4], axis=0) if len(sel) else [float("nan")] * 4
                print(f"DICE {variant:<9}{n:>5}{m[0]:>10.3f}{m[1]:>8.3f}{m[2]:>8.3f}{m[3]:>8.3f}"
                      f"{f'{int(sel[:, 4].sum())}/{len(sel)}':>11}")
        C.print_load()
    return 0


if __name__ == "__main__":
    sys.exit(main())
