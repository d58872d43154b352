"""Is data ever the bottleneck? Input pipeline vs pre-made tensors, and decoding into the cache.

Issue 5, item 2. Three measurements, each side by side in one run:

1. **Loader**: the same trainer (one model, one optimizer, fixed batch) fed by

   * ``tensors``: the epoch's batches made in advance (already augmented and normalised, in
     memory): the trainer's ceiling, no input pipeline at all;
   * ``pipeline wK``: lungray's real input path, built exactly as :func:`lungray.train.run_trial`
     builds it (memory-mapped cache -> :class:`~lungray.data.dataset.ImageDataset` with the
     augmentation preset -> ONE ``DataLoader`` per trial over the loop's ``EpochTagged``
     sampler, whose K = 0, 1, 2 loader workers persist across epochs); and
     ``pipeline wK, DataLoader per epoch (before)``: the loop as it was before this bench's
     finding, a fresh ``DataLoader`` (and K fresh worker processes) every epoch.

   ratio = pipeline images/s / tensors images/s (target >= 0.95: data is never the
   bottleneck).

2. **Preprocessing**: phantom images written as PNG and DICOM files in a temp folder tree, then
   decoded into the cache (:func:`lungray.data.cache.build_cache`) serially vs through the Ray
   task path (Ray already running, as on a cluster; the cold start of a local Ray is reported
   once, separately), and the second run that finds the cache. The serial path also runs with
   numpy's BLAS limited to one thread (``threadpoolctl``): the perceptual hashes are small
   matrix products, which a multi-threaded BLAS slows down (Ray tasks run single-threaded).

3. **Loader alone** at the paper preset's 256 px with its rot30_zoom_flip augmentation (a cache
   decoded from the PNG tree): images/s per loader worker count, steady state. A GPU that
   trains at X images/s (``bench_gpu.py``) needs ceil(X / per-worker rate) loader workers.

Numbers are medians over interleaved repeats; see ``bench/_common.py`` for why.

Run: ``python bench/bench_data.py`` (default, < 5 min on 2 CPUs) or ``--quick`` (CI smoke).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes for a CI smoke run (asserts nothing about speed)")
    p.add_argument("--model", default="resnet18", help="trainer model (default: the default preset's resnet18)")
    p.add_argument("--resolution", type=int, default=64, help="cache resolution for the loader part")
    p.add_argument("--augmentation", default="rot_hflip", help="augmentation preset (default preset: rot_hflip)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n-train", type=int, default=192, help="images per epoch")
    p.add_argument("--epochs", type=int, default=3, help="epochs per measurement (the first is warm-up)")
    p.add_argument("--workers", default="0,1,2", help="DataLoader worker counts to compare")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the trainer")
    p.add_argument("--decode-images", type=int, default=240, help="files per format for the preprocessing part")
    p.add_argument("--native", type=int, default=512, help="pixel size of the written PNG/DICOM files")
    p.add_argument("--decode-repeats", type=int, default=2)
    p.add_argument("--skip-loader", action="store_true")
    p.add_argument("--skip-decode", action="store_true")
    p.add_argument("--skip-alone", action="store_true")
    p.add_argument("--alone-resolution", type=int, default=256, help="resolution of the loader-alone part (paper: 256)")
    p.add_argument("--alone-augmentation", default="rot30_zoom_flip", help="augmentation of the loader-alone part")
    p.add_argument("--out", default=None, help="work folder (default: a temp dir, removed at the end)")
    a = p.parse_args(argv)
    if a.quick:
        a.model = "simple_cnn" if a.model == "resnet18" else a.model
        a.resolution = min(a.resolution, 32)
        a.n_train, a.epochs, a.repeats, a.batch_size = 48, 2, 1, 16
        a.workers = "0,1"
        a.decode_images, a.native, a.decode_repeats = 24, 128, 1
        a.alone_resolution = min(a.alone_resolution, 64)
    a.worker_list = [int(w) for w in str(a.workers).split(",") if w.strip() != ""]
    if a.epochs < 2:
        p.error("--epochs must be >= 2 (the first epoch is warm-up)")
    return a


# ------------------------------------------------------------------------------------------
# 1. loader: pipeline vs pre-made tensors
# ------------------------------------------------------------------------------------------


def prepare_phantom(args, out: Path):
    from lungray.config import DataConfig
    from lungray.data import prepare_data

    n_pool = args.n_train + 16
    cfg = DataConfig(
        source="phantom",
        phantom_n=n_pool + 80,
        resolution=args.resolution,
        eval_size=40,
        val_size=20,
        leakage="off",
        cache_dir=str(out / "cache"),
    )
    return prepare_data(cfg, output_dir=str(out / "prepared"), sizes=(args.n_train,), seeds=(0,), progress=False)


class Trainer:
    """One model + optimizer; ``epoch(batches)`` runs the plain training step over an iterable.

    The step is the minimal one (forward, cross-entropy, backward, step): the point is to
    compare data sources under an identical consumer, not to measure lungray's loop (that is
    ``bench_trial.py``).
    """

    def __init__(self, model_name: str, num_classes: int, resolution: int, seed: int = 0):
        import torch

        from lungray.config import ModelConfig
        from lungray.models import create_model

        torch.manual_seed(seed)
        self.torch = torch
        self.model = create_model(ModelConfig(name=model_name), num_classes, in_chans=1, resolution=resolution)
        self.model.train()
        self.opt = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=1e-3)
        self.loss = torch.nn.CrossEntropyLoss()

    def epoch(self, batches) -> tuple[int, float]:
        n = 0
        t0 = time.perf_counter()
        for batch in batches:
            x, y = batch[0], batch[1]
            logits = self.model(x)
            loss = self.loss(logits.float(), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            n += int(y.shape[0])
        return n, time.perf_counter() - t0


def loader_for_epoch(ds, n_train: int, batch_size: int, seed: int, epoch: int, workers: int):
    """The DataLoader as ``run_trial`` built it for every epoch before the fix (kept to compare)."""
    import torch

    from lungray.train.device import torch_generator
    from lungray.train.loop import EpochSampler, epoch_plan

    _, drop_last = epoch_plan(n_train, batch_size, 1)
    sampler = EpochSampler(n_train, seed)
    sampler.set_epoch(epoch)
    ds.set_epoch(epoch)
    return torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=workers,
        pin_memory=False,
        generator=torch_generator(seed, epoch, stream=2),
    )


def persistent_loader(ds, batch_size: int, seed: int, workers: int):
    """The DataLoader exactly as ``run_trial`` builds it: ONE per trial, workers that persist
    across epochs, the epoch handed to them with each index (``EpochTagged``)."""
    import torch

    from lungray.train.device import torch_generator
    from lungray.train.loop import EpochSampler, EpochTagged, epoch_plan

    _, drop_last = epoch_plan(len(ds), batch_size, 1)
    sampler = EpochSampler(len(ds), seed)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=EpochTagged(sampler), drop_last=drop_last,
                                         num_workers=workers, persistent_workers=workers > 0, pin_memory=False,
                                         generator=torch_generator(seed, 0, stream=2))
    return loader, sampler


def bench_loader(args, out: Path) -> list[dict]:
    from lungray.data.augment import normalization_stats
    from lungray.data.dataset import ImageDataset

    data = prepare_phantom(args, out)
    idx = data.subset(args.n_train, 0)
    mean, std = normalization_stats("pool", data)
    ds = ImageDataset(data, idx, augmentation=args.augmentation, mean=mean, std=std, seed=0)
    trainer = Trainer(args.model, data.num_classes, data.resolution)

    # the pre-made tensors: one epoch of the same pipeline, materialised once
    premade = [(x.clone(), y.clone()) for x, y, _ in loader_for_epoch(ds, len(idx), args.batch_size, 0, 1, 0)]

    def run_tensors() -> float:
        times = []
        for e in range(args.epochs):
            n, s = trainer.epoch(premade)
            times.append(s)
        return n / C.median(times[1:])

    def run_pipeline(workers: int):
        def _run() -> float:
            times = []
            for e in range(1, args.epochs + 1):
                loader = loader_for_epoch(ds, len(idx), args.batch_size, 0, e, workers)
                n, s = trainer.epoch(loader)
                times.append(s)
            return n / C.median(times[1:])

        return _run

    def run_persistent(workers: int):
        def _run() -> float:
            loader, sampler = persistent_loader(ds, args.batch_size, 0, workers)
            times = []
            for e in range(1, args.epochs + 1):
                sampler.set_epoch(e)
                n, s = trainer.epoch(loader)
                times.append(s)
            del loader  # shuts the persistent workers down
            return n / C.median(times[1:])

        return _run

    variants = {"tensors (pre-made)": run_tensors}
    for w in args.worker_list:
        variants[f"pipeline w{w}"] = run_persistent(w)
    for w in args.worker_list:
        if w > 0 and not args.quick:
            variants[f"pipeline w{w}, DataLoader per epoch (before)"] = run_pipeline(w)
    print(f"loader part: {args.model} at {data.resolution} px, batch {args.batch_size}, {len(idx)} images/epoch, "
          f"augmentation {args.augmentation}, {args.threads} torch thread(s), {args.repeats} interleaved rounds")
    res = C.interleave(variants, args.repeats)

    base = res["tensors (pre-made)"]
    rows = []
    ratios = {}
    for name, v in res.items():
        ratios[name] = C.paired_ratio(v, base)
        rows.append({"variant": name, "images/s (median)": C.median(v), "range": C.spread(v), "ratio": ratios[name]})
    C.print_table(rows, "trainer throughput by data source (ratio = paired median vs pre-made tensors)")
    for w in args.worker_list:
        C.print_ratio(f"data_pipeline_w{w}", ratios[f"pipeline w{w}"], 0.95, note="(one loader per trial, as run_trial)")
    for w in args.worker_list:
        if f"pipeline w{w}, DataLoader per epoch (before)" in ratios:
            C.print_ratio(f"data_pipeline_w{w}_per_epoch_before", ratios[f"pipeline w{w}, DataLoader per epoch (before)"], 0.95)
    enough = [w for w in args.worker_list if ratios[f"pipeline w{w}"] >= 0.95]
    print(f"loader workers needed for >= 0.95 here (as run_trial builds the loader): "
          f"{min(enough) if enough else 'none of ' + str(args.worker_list)}")
    return rows


def bench_loader_alone(args, out: Path, png_tree: Path) -> None:
    """Images/s the input pipeline alone delivers per worker count, at the paper preset's
    resolution and augmentation (256 px, rot30_zoom_flip), from a cache decoded from the PNG
    tree: what an accelerator needs. Steady state: persistent workers, 4 passes per epoch."""
    import numpy as np

    from lungray.config import DataConfig
    from lungray.data import prepare_data
    from lungray.data.augment import normalization_stats
    from lungray.data.dataset import ImageDataset

    res_px = args.alone_resolution
    cfg = DataConfig(source="folder", path=str(png_tree), resolution=res_px, eval_size=8, val_size=4, leakage="off",
                     min_eval_per_class=0, min_val_per_class=0,  # a loader throughput run, no metric on these splits
                     cache_dir=str(out / "cache_alone"))
    data = prepare_data(cfg, output_dir=str(out / "prepared_alone"), progress=False)
    idx = np.tile(np.asarray(data.pool_idx), 4)
    mean, std = normalization_stats("imagenet", data)
    ds = ImageDataset(data, idx, augmentation=args.alone_augmentation, mean=mean, std=std, seed=0)

    def alone(workers: int):
        def _run() -> float:
            loader, sampler = persistent_loader(ds, args.batch_size, 0, workers)
            rates = []
            for e in range(1, 3):
                sampler.set_epoch(e)
                t0 = time.perf_counter()
                n = sum(int(b[1].shape[0]) for b in loader)
                rates.append(n / (time.perf_counter() - t0))
            del loader
            return rates[-1]

        return _run

    print(f"input pipeline alone at {res_px} px with {args.alone_augmentation}, {len(idx)} images per pass:")
    res = C.interleave({f"loader alone w{w}": alone(w) for w in args.worker_list}, max(1, args.repeats - 1))
    rows = [{"workers": w, "images/s": C.median(res[f"loader alone w{w}"]), "range": C.spread(res[f"loader alone w{w}"])}
            for w in args.worker_list]
    C.print_table(rows, f"input pipeline alone (cache -> {args.alone_augmentation} -> batches), {res_px} px")
    with_workers = [r for r in rows if r["workers"] >= 1] or rows  # w0 loads in the training process itself
    per_worker = max(r["images/s"] / max(r["workers"], 1) for r in with_workers)
    C.print_ratio(f"loader_images_per_s_per_worker_{res_px}px", per_worker,
                  note="(images/s, not a ratio: a GPU training at X images/s needs ceil(X / this) loader workers)")


# ------------------------------------------------------------------------------------------
# 2. preprocessing: decode PNG / DICOM into the cache, serial vs Ray, cache hit
# ------------------------------------------------------------------------------------------


def write_tree(root: Path, fmt: str, n: int, native: int, seed: int = 0) -> Path:
    """``root/<class>/<id>.<fmt>``: n phantom-derived files (the folder adapter's layout).

    Rendering a 512 px phantom costs ~0.1 s, so a few distinct images are rendered and every
    file adds its own seeded noise to one of them: the files differ (distinct hashes and cache
    rows) while writing stays cheap. DICOMs are 12-bit CR in 16-bit words, as CR detectors
    write them; PNGs are 8-bit, as the Kaggle sets ship them.
    """
    import cv2
    import numpy as np

    from lungray.data.phantom import generate_phantom, write_dicom

    base = generate_phantom(min(n, 16), n_classes=2, resolution=native, seed=seed)
    rng = np.random.default_rng(seed)
    for i in range(n):
        j = i % len(base.labels)
        cls = base.class_names[int(base.labels[j])]
        img = np.clip(base.images[j].astype(np.int16) + rng.integers(-3, 4, size=base.images[j].shape), 0, 255).astype(np.uint8)
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        if fmt == "png":
            cv2.imwrite(str(d / f"img{i:05d}.png"), img)
        else:
            write_dicom(d / f"img{i:05d}.dcm", img, bits=12, patient_id=f"P{i:05d}", image_id=f"img{i:05d}", class_name=cls)
    return root


def bench_decode(args, out: Path) -> list[dict]:
    import ray

    from lungray.config import DataConfig
    from lungray.data.adapters import build_manifest
    from lungray.data.cache import build_cache

    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    rows = []
    trees = {}
    for fmt in ("png", "dcm"):
        with C.Timer() as t:
            trees[fmt] = write_tree(out / f"files_{fmt}", fmt, args.decode_images, args.native)
        print(f"wrote {args.decode_images} {fmt} files of {args.native} px in {t.s:.1f}s")

    def manifest(fmt: str):
        cfg = DataConfig(source="folder", path=str(trees[fmt]), resolution=min(args.resolution, 64))
        return cfg, build_manifest(cfg)

    counter = {"n": 0}

    def decode(fmt: str, parallel: bool, blas1: bool = False):
        def _run() -> float:
            import contextlib

            from threadpoolctl import threadpool_limits

            cfg, m = manifest(fmt)
            counter["n"] += 1
            cache = out / f"cache_{fmt}_{counter['n']}"
            limit = threadpool_limits(1) if blas1 else contextlib.nullcontext()
            with limit, C.Timer() as t:
                build_cache(m, cfg, cache, progress=False, parallel=parallel, num_cpus=ncpu, chunk_rows=max(8, math.ceil(len(m) / (4 * ncpu))))
            shutil.rmtree(cache, ignore_errors=True)
            return len(m) / t.s

        return _run

    cfg0, m0 = manifest("png")
    if not args.quick:
        # a cold local Ray start, once: what a one-off run on a laptop pays for the parallel path
        with C.Timer() as t_cold:
            build_cache(m0, cfg0, out / "cache_cold", progress=False, parallel=True, num_cpus=ncpu)
        shutil.rmtree(out / "cache_cold", ignore_errors=True)
        print(f"parallel path with a cold local Ray start (ray.init + decode + shutdown): {t_cold.s:.1f}s "
              f"for {len(m0)} PNGs")

    ray.init(num_cpus=ncpu, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        # warm the Ray workers once (process start, lungray/cv2/pydicom imports): a cluster has
        # that behind it; the cold figure above is the laptop's one-off cost
        for fmt in ("png", "dcm"):
            cfg_w, m_w = manifest(fmt)
            build_cache(m_w.iloc[: 4 * ncpu], cfg_w, out / f"cache_warm_{fmt}", progress=False, parallel=True,
                        num_cpus=ncpu, chunk_rows=2)
            shutil.rmtree(out / f"cache_warm_{fmt}", ignore_errors=True)
        variants = {}
        for fmt in ("png", "dcm"):
            variants[f"{fmt} serial"] = decode(fmt, False)
            variants[f"{fmt} serial, BLAS 1 thread"] = decode(fmt, False, blas1=True)
            variants[f"{fmt} ray x{ncpu}"] = decode(fmt, True)
        print(f"decode part: {args.decode_images} files per format at {args.native} px -> {min(args.resolution, 64)} px cache, "
              f"{args.decode_repeats} interleaved rounds")
        res = C.interleave(variants, args.decode_repeats)
    finally:
        ray.shutdown()

    # cache hit: build once, then time the second call (manifest + fingerprint + lookup)
    hits = {}
    for fmt in ("png", "dcm"):
        cfg, m = manifest(fmt)
        cache = out / f"cache_{fmt}_hit"
        with C.Timer() as first:
            build_cache(m, cfg, cache, progress=False, parallel=False)
        seconds = []
        for _ in range(3):
            with C.Timer() as second:
                cfg2, m2 = manifest(fmt)  # a second run starts from the files again
                build_cache(m2, cfg2, cache, progress=False, parallel=False)
            seconds.append(second.s)
        hits[fmt] = (first.s, C.median(seconds))

    for fmt in ("png", "dcm"):
        s, r, s1 = res[f"{fmt} serial"], res[f"{fmt} ray x{ncpu}"], res[f"{fmt} serial, BLAS 1 thread"]
        rows.append({"format": fmt, "path": "serial", "images/s": C.median(s), "range": C.spread(s), "speed-up": 1.0})
        rows.append({"format": fmt, "path": "serial, BLAS 1 thread", "images/s": C.median(s1), "range": C.spread(s1),
                     "speed-up": C.paired_ratio(s1, s)})
        rows.append({"format": fmt, "path": f"ray x{ncpu} (warm)", "images/s": C.median(r), "range": C.spread(r), "speed-up": C.paired_ratio(r, s)})
        first, second = hits[fmt]
        rows.append({"format": fmt, "path": "second run (cache hit)", "images/s": args.decode_images / second,
                     "range": f"{second * 1000:.0f} ms", "speed-up": first / second})
    C.print_table(rows, "decoding into the cache (speed-up: ray vs serial, paired; cache hit vs first decode)")
    for fmt in ("png", "dcm"):
        C.print_ratio(f"decode_{fmt}_ray_vs_serial", C.paired_ratio(res[f"{fmt} ray x{ncpu}"], res[f"{fmt} serial"]),
                      note="(serial as it runs in the driver, BLAS threads as numpy set them)")
        C.print_ratio(f"decode_{fmt}_ray_vs_serial_blas1", C.paired_ratio(res[f"{fmt} ray x{ncpu}"], res[f"{fmt} serial, BLAS 1 thread"]),
                      note=f"(one single-threaded worker vs {ncpu} Ray tasks; ideal {ncpu}x)")
        C.print_ratio(f"decode_{fmt}_cache_hit_speedup", hits[fmt][0] / hits[fmt][1])
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    C.set_threads(args.threads)
    C.print_header("bench_data: input pipeline and preprocessing", args, device="cpu")
    with C.work_dir(args.out, "lungray_bench_data_") as out:
        if not args.skip_loader:
            bench_loader(args, out)
        if not args.skip_decode:
            bench_decode(args, out)
        if not args.skip_alone:
            tree = out / "files_png"
            if not tree.exists():
                write_tree(tree, "png", args.decode_images, args.native)
            bench_loader_alone(args, out, tree)
    C.print_load()
    return 0


if __name__ == "__main__":
    sys.exit(main())
