"""What do the phantom's sites, markings and the leakage audit's keypoint stage cost, and how hard is it?

Issue 18. The phantom became the messy built-in dataset (sites, markings, CT-like series, copies;
its rows described for the audit). The default preset's data build must stay a few seconds, so:

1. **Generation**: CPU seconds per 1000 films at 64 px, clean (one site, no markings, no series:
   close to the phantom before issue 18) vs the defaults vs the default preset's knobs (copies
   0.1), interleaved rounds, median; ratio defaults / clean.
2. **The default preset's data build** (``prepare_data`` from nothing: generation, cache,
   hashes, keypoint features, duplicate search, splits): with the leakage audit off vs on,
   interleaved; CPU and wall seconds; ratio on / off.
3. ``--curve``: the difficulty calibration of the package docstring, re-measured on the current
   phantom: a 3-block CNN (16-32-64 channels, BatchNorm, global average pooling), Adam 1e-3,
   batch 16, 20 epochs, horizontal flips, nested patient-grouped subsets of 50 / 100 / 200 / 500
   images, scored on the held-out set, seeds 0-2, at difficulty 1.0 and 0.5.

Run: ``python bench/bench_phantom.py`` (~3 min), ``--curve`` (+10-20 min), ``--quick`` (CI smoke).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="films per generation / data build (the default preset: 1000)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--curve", action="store_true", help="also train the calibration CNN (minutes)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--difficulties", type=float, nargs="+", default=[1.0, 0.5], help="--curve: the difficulties to measure")
    p.add_argument("--skip-cost", action="store_true", help="only the curve (parts 1 and 2 skipped)")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    if a.quick:
        a.n, a.repeats, a.seeds = 80, 1, 1
    return a


def generation(a) -> dict[str, float]:
    from lungray.data.phantom import generate_phantom

    knobs = {"clean (1 site, no markings, no series)": {"sites": 1, "markings": (), "series_fraction": 0.0},
             "defaults (3 sites, markings, series)": {},
             "default preset (+ copies 0.1)": {"copies": 0.1}}

    def run(kw):
        def f():
            c = time.process_time()
            generate_phantom(a.n, resolution=64, difficulty=0.5, **kw)
            return (time.process_time() - c) / a.n * 1000
        return f

    res = C.interleave({k: run(v) for k, v in knobs.items()}, a.repeats)
    rows = [{"phantom": k, "CPU s per 1000 films": f"{C.median(v):.2f}", "range": C.spread(v)} for k, v in res.items()]
    C.print_table(rows, f"1. generating {a.n} films at 64 px")
    names = list(knobs)
    return {"generation_defaults_over_clean": C.paired_ratio(res[names[1]], res[names[0]]),
            "generation_s_per_1000": C.median(res[names[2]])}


def data_build(a) -> dict[str, float]:
    import dataclasses

    from lungray.study import load_study
    from lungray.data.prepare import prepare_data

    cfg = load_study("default").data
    cfg = dataclasses.replace(cfg, phantom_n=a.n, eval_size=round(0.3 * a.n), val_size=round(0.1 * a.n))

    def run(mode):
        def f():
            with tempfile.TemporaryDirectory(prefix="bench_phantom_") as d:
                c, t = time.process_time(), time.time()
                prepare_data(dataclasses.replace(cfg, leakage=mode), output_dir=d, progress=False, parallel=False, echo=lambda s: None)
                wall[mode].append(time.time() - t)
                return time.process_time() - c
        return f

    wall: dict[str, list] = {"off": [], "drop": []}
    res = C.interleave({"off": run("off"), "drop": run("drop")}, a.repeats)
    rows = [{"leakage audit": {"off": "off (patients only)", "drop": "on (hashes, keypoints, search)"}[k],
             "CPU s": f"{C.median(v):.2f}", "wall s": f"{C.median(wall[k]):.2f}", "range CPU": C.spread(v)} for k, v in res.items()]
    C.print_table(rows, f"2. the default preset's data build, {a.n} films at 64 px, from nothing")
    return {"data_build_audit_over_off": C.paired_ratio(res["drop"], res["off"]), "data_build_cpu_s": C.median(res["drop"]),
            "data_build_wall_s": C.median(wall["drop"])}


def curve(a) -> None:
    import numpy as np
    import torch
    from torch import nn

    from lungray.config import DataConfig
    from lungray.data.prepare import prepare_data

    torch.set_num_threads(1)

    def cnn():
        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))

        return nn.Sequential(block(1, 16), block(16, 32), block(32, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 2))

    sizes = [50, 100, 200, 500] if not a.quick else [20, 40]
    rows = []
    for diff in a.difficulties:
        cfg = DataConfig(phantom_n=1400 if not a.quick else 160, phantom_difficulty=diff, resolution=64,
                         eval_size=600 if not a.quick else 50, val_size=0, leakage="off")
        with tempfile.TemporaryDirectory(prefix="bench_curve_") as d:
            data = prepare_data(cfg, output_dir=d, progress=False, parallel=False, echo=lambda s: None)
            x_all = torch.tensor(np.asarray(data.images, dtype=np.float32) / 255.0)[:, None]
            y_all = torch.tensor(np.asarray(data.labels))
            xe, ye = x_all[data.eval_idx], y_all[data.eval_idx]
            acc = {n: [] for n in sizes}
            for seed in range(a.seeds):
                for n in sizes:
                    idx = torch.tensor(data.subset(n, seed))
                    g = torch.Generator().manual_seed(seed)
                    torch.manual_seed(seed)
                    m = cnn()
                    opt = torch.optim.Adam(m.parameters(), 1e-3)
                    for _ in range(20 if not a.quick else 2):
                        m.train()
                        for b in torch.randperm(len(idx), generator=g).split(16):
                            xb, yb = x_all[idx[b]], y_all[idx[b]]
                            flip = torch.rand(len(b), generator=g) < 0.5
                            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
                            opt.zero_grad()
                            nn.functional.cross_entropy(m(xb), yb).backward()
                            opt.step()
                    m.eval()
                    with torch.no_grad():
                        acc[n].append(float((m(xe).argmax(1) == ye).float().mean()))
            rows.append({"difficulty": diff, **{f"n={n}": f"{np.mean(v):.2f} ({min(v):.2f}-{max(v):.2f})" for n, v in acc.items()}})
    C.print_table(rows, f"3. accuracy of the calibration CNN on the held-out set, mean (range over {a.seeds} seeds)")


def main(argv=None) -> int:
    a = parse_args(argv)
    C.print_header("bench_phantom: the phantom's and the audit's cost in the default data build", a)
    r: dict[str, float] = {}
    if not a.skip_cost:
        r |= generation(a)
        r |= data_build(a)
    if a.curve:
        curve(a)
    C.print_load()
    for k, v in r.items():
        C.print_ratio(k, v)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
