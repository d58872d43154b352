"""GPU throughput: AMP + channels_last vs fp32, and four small trials packed on one GPU.

Issue 5, item 4. Only when a CUDA device is present (otherwise it prints
``no CUDA device: skipped`` and exits 0, so CI on CPU machines stays green):

1. **Precision/layout**: training images/s of the training-size study's two backbones
   (PROTOCOLS.md section 1: ResNet50 and DenseNet121 with the Conv2D(8)->Conv2D(3) stem and the
   BN-MLP(256) head, 256 px, input repeated to 3 channels) built by
   :func:`lungray.models.create_model`, with ``fp32`` (contiguous, no autocast) vs ``amp+cl``
   (autocast in bf16 where the GPU has it, else fp16 with a GradScaler, channels_last), as
   :func:`lungray.train.run_trial` runs them. Interleaved rounds, medians.
2. **Packing**: four 100-image trials of the study (ResNet50, 256 px, phantom data) through the
   real sweep (:func:`lungray.sweep.runner.run_study`) with ``resources.gpus_per_worker=0.25``,
   once with 4 concurrent trials (packed on the one GPU) and once with 1 (one after another).
   Speed-up = sequential trial span / packed trial span (from the trials' MLflow runs).

``--allow-cpu`` runs part 1 on the CPU at a tiny size (a code-path check for CI, not a figure).

Run: ``python bench/bench_gpu.py`` (default) or ``--quick`` (CI smoke).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

#: the training-size study's classifier (presets.PRESETS["paper"]), without downloaded weights
PAPER_MODEL = {"head": "bn_mlp256", "stem": "conv8_conv3", "input_mode": "repeat3", "pretrained": False}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few steps, no packing run (CI smoke)")
    p.add_argument("--models", default="resnet50,densenet121")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=30, help="timed optimisation steps per round")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before the first round (cuDNN autotune)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--pack-trials", type=int, default=4)
    p.add_argument("--pack-size", type=int, default=100, help="training images per packed trial")
    p.add_argument("--pack-epochs", type=int, default=10)
    p.add_argument("--pack-model", default="resnet50")
    p.add_argument("--pack-gpu", type=float, default=0.25, help="GPU fraction per trial when packed")
    p.add_argument("--pack-repeats", type=int, default=1)
    p.add_argument("--skip-pack", action="store_true")
    p.add_argument("--allow-cpu", action="store_true", help="run part 1 on the CPU at a tiny size (code-path check)")
    p.add_argument("--out", default=None, help="work folder (default: a temp dir, removed at the end)")
    a = p.parse_args(argv)
    if a.quick:
        a.steps, a.warmup, a.repeats, a.skip_pack = 5, 2, 1, True
    return a


# ------------------------------------------------------------------------------------------
# 1. AMP + channels_last vs fp32
# ------------------------------------------------------------------------------------------


class Runner:
    """One model in one precision/layout mode, trained on a fixed synthetic batch on the device.

    The batch lives on the device, so the figure is the model's training throughput (the data
    path is ``bench_data.py``'s business).
    """

    def __init__(self, name: str, mode: str, args, device):
        import torch

        from lungray.config import ModelConfig
        from lungray.models import create_model

        self.torch = torch
        self.device = device
        self.mode = mode
        self.cl = mode == "amp+cl"
        if self.cl and device.type == "cuda":
            self.dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        elif self.cl:
            self.dtype = torch.bfloat16  # CPU code-path check only
        else:
            self.dtype = None
        torch.manual_seed(0)
        m = create_model(ModelConfig(name=name, **PAPER_MODEL), 2, in_chans=1, resolution=args.resolution).to(device)
        if self.cl:
            m = m.to(memory_format=torch.channels_last)
        self.model = m.train()
        self.opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-4)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        g = torch.Generator().manual_seed(0)
        x = torch.rand(args.batch_size, 1, args.resolution, args.resolution, generator=g)
        self.x = x.to(device)
        if self.cl:
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.y = torch.randint(0, 2, (args.batch_size,), generator=g).to(device)
        self.lossf = torch.nn.CrossEntropyLoss()

    def steps(self, n: int) -> float:
        torch = self.torch
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                logits = self.model(self.x)
            loss = self.lossf(logits.float(), self.y)
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return n * int(self.y.shape[0]) / (time.perf_counter() - t0)


def bench_precision(args, device) -> None:
    import torch

    torch.backends.cudnn.benchmark = True  # as run_trial sets it for fixed-size inputs
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    rows = []
    ratios = {}
    for name in models:
        runners = {mode: Runner(name, mode, args, device) for mode in ("fp32", "amp+cl")}
        for r in runners.values():
            r.steps(args.warmup)
        amp_name = str(runners["amp+cl"].dtype).replace("torch.", "")
        print(f"{name} at {args.resolution} px, batch {args.batch_size}, {args.steps} steps per round (amp dtype {amp_name}):")
        res = C.interleave({f"{name} {mode}": (lambda r=r: r.steps(args.steps)) for mode, r in runners.items()}, args.repeats)
        fp32, amp = res[f"{name} fp32"], res[f"{name} amp+cl"]
        ratios[name] = C.paired_ratio(amp, fp32)
        mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        rows.append({"model": name, "fp32 img/s": C.median(fp32), "amp+cl img/s": C.median(amp),
                     "speed-up": ratios[name], "amp dtype": amp_name, "peak GiB": mem})
        del runners
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
    C.print_table(rows, "training throughput, AMP + channels_last vs fp32 (speed-up: paired median ratio)")
    for name, r in ratios.items():
        C.print_ratio(f"gpu_amp_cl_vs_fp32_{name}", r)


# ------------------------------------------------------------------------------------------
# 2. four small trials packed on one GPU vs one after another
# ------------------------------------------------------------------------------------------


def run_pack(args, out: Path, concurrent: int, tag: str) -> dict:
    from bench_sweep import read_trials

    from lungray.study import load_study
    from lungray.sweep.runner import run_study

    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cpus = max(0.5, round((ncpu - 1) / args.pack_trials, 2))  # leave one CPU to the driver
    exp_dir = out / f"pack_{tag}"
    overrides = [
        f"name=pack_{tag}",
        f"output_dir={exp_dir}",
        f"data.cache_dir={out / 'shared_cache'}",
        f"data.phantom_n={args.pack_size * 2 + 400}",
        f"data.resolution={args.resolution}",
        "data.eval_size=300",
        "data.val_size=60",
        "data.source=phantom",
        f"models=[{{name: {args.pack_model}, head: bn_mlp256, stem: conv8_conv3, input_mode: repeat3, pretrained: false}}]",
        f"sizes=[{args.pack_size}]",
        f"seeds=[{', '.join(str(s) for s in range(args.pack_trials))}]",
        "optimizers=[{name: adam, lr: 0.0001}]",
        f"schedule={{rule: fixed, batch_size: 16, epochs: {args.pack_epochs}, eval_every: {args.pack_epochs}}}",
        "train.augmentation=rot30_zoom_flip",
        "train.normalization=imagenet",
        f"tracking.tracking_uri=sqlite:///{exp_dir / 'mlflow.db'}",
        "tracking.log_checkpoints=false",
        f"resources.gpus_per_worker={args.pack_gpu}",
        f"resources.cpus_per_worker={cpus}",
        f"resources.max_concurrent_trials={concurrent}",
        "report=false",
    ]
    cfg = load_study("default", overrides=overrides)
    t0 = time.time()
    run_study(cfg)
    wall = time.time() - t0
    trials = [t for t in read_trials(f"sqlite:///{exp_dir / 'mlflow.db'}", cfg.tracking.experiment or cfg.name) if t["end"] > 0]
    span = max(t["end"] for t in trials) - min(t["start"] for t in trials)
    images = args.pack_trials * args.pack_size * args.pack_epochs
    return {"wall": wall, "span": span, "train": sum(t["train"] for t in trials), "n": len(trials), "img/s": images / span}


def bench_pack(args, out: Path) -> None:
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    results: dict[str, list[dict]] = {"packed": [], "sequential": []}

    def run(kind: str):
        def _run() -> float:
            r = run_pack(args, out, args.pack_trials if kind == "packed" else 1, f"{kind}_{time.time_ns()}")
            results[kind].append(r)
            return r["span"]

        return _run

    print(f"packing: {args.pack_trials} trials x {args.pack_size} images x {args.pack_epochs} epochs of {args.pack_model} "
          f"at {args.resolution} px, {args.pack_gpu} GPU each; trial span in seconds:")
    res = C.interleave({"packed": run("packed"), "sequential": run("sequential")}, args.pack_repeats)
    rows = []
    for kind in ("sequential", "packed"):
        rs = results[kind]
        rows.append({"run": kind, "trials": rs[0]["n"], "trial span s": C.median([r["span"] for r in rs]),
                     "run_study s": C.median([r["wall"] for r in rs]), "sum train s": C.median([r["train"] for r in rs]),
                     "images/s (all trials)": C.median([r["img/s"] for r in rs])})
    C.print_table(rows, "four small trials on one GPU")
    C.print_ratio("gpu_packed_vs_sequential_speedup", C.paired_ratio(res["sequential"], res["packed"]))


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    C.print_header("bench_gpu: AMP/channels_last and GPU packing", args)
    if not cuda and not args.allow_cpu:
        print("no CUDA device: skipped")
        return 0
    if cuda:
        device = torch.device("cuda", torch.cuda.current_device())
        print(f"GPU: {torch.cuda.get_device_name(device)}, "
              f"{torch.cuda.get_device_properties(device).total_memory / 2**30:.0f} GiB, "
              f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, bf16 {torch.cuda.is_bf16_supported()}")
    else:
        device = torch.device("cpu")
        args.resolution, args.batch_size, args.steps, args.warmup, args.repeats = 32, 4, 2, 1, 1
        args.skip_pack = True
        torch.set_num_threads(1)
        print("--allow-cpu: part 1 on the CPU at 32 px (a code-path check, not a figure); packing skipped")
    with C.work_dir(args.out, "lungray_bench_gpu_") as out:
        bench_precision(args, device)
        if not args.skip_pack:
            bench_pack(args, out)
    C.print_load()
    return 0


if __name__ == "__main__":
    sys.exit(main())
