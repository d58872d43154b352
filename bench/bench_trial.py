"""What does lungray's loop inside a Ray Train trial cost next to a bare PyTorch loop?

Issue 5, item 1. The same model, batch, data and device, trained by

* ``bare``: a minimal hand-written loop (``DataLoader`` over the same
  :class:`~lungray.data.dataset.ImageDataset`, forward, loss, backward, step; nothing else);
* ``run_trial``: :func:`lungray.train.run_trial` called in-process with the default schedule
  (per-epoch bookkeeping; a resumable checkpoint every epoch but at most one a minute,
  ``schedule.checkpoint_min_seconds = 60``, and at the end: in a run this short, only at the end);
* ``run_trial, ckpt every epoch (before)``: the same with ``checkpoint_min_seconds = 0``, the
  loop as it was before this bench's finding (isolates the cost of the per-epoch checkpoint);
* ``ray train, plain report`` (``--plain``): ``run_trial`` inside a one-worker
  ``TorchTrainer`` whose report callback only calls ``ray.train.report(metrics, checkpoint)``;
* ``tune trial, sweep default``: the sweep's default path for a one-worker trial, the same trial
  body and report callback (Tune report, checkpoint persistence, batched MLflow epoch metrics)
  run by :func:`lungray.sweep.trainable._fit_in_trial` in a Tune trial, without Ray Train;
* ``ray train, sweep worker``: the sweep's own Train worker
  (:func:`lungray.sweep.trainable.train_worker`) around ``run_trial``: ``ray.train.report``
  with the checkpoint plus per-epoch MLflow metrics from rank 0, exactly as in a sweep; and
  the same with a checkpoint every epoch (before).

A direct probe then times one resumable checkpoint of the model (write + copy), which the
end-to-end ratios on a noisy machine cannot resolve.

Steady-state throughput, not start-up: every variant stamps the end of each epoch (for
``run_trial`` after its ``report`` callback returned, so the checkpoint write and Ray's upload
count), and images/s = images per epoch / median epoch duration over epochs 2..E-1 (epoch 1
warms up, epoch E runs the only validation). Ray Train's worker start-up is excluded here; it
is ``bench_sweep.py``'s business. Variants are interleaved (A B C D, D C B A, ...) and the ratio
is the median of per-round ratios.

Run: ``python bench/bench_trial.py`` (default, < 5 min on 2 CPUs) or ``--quick`` (CI smoke).
"""

from __future__ import annotations

import argparse
import json
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
    p.add_argument("--model", default="resnet18", help="model name (default: the default preset's resnet18)")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n-train", type=int, default=160, help="training images per epoch")
    p.add_argument("--epochs", type=int, default=5, help=">= 4: epochs 2..E-1 are timed")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads in every variant")
    p.add_argument("--no-ray", action="store_true", help="skip the Ray Train variants")
    p.add_argument("--plain", action="store_true",
                   help="also run run_trial in a TorchTrainer with a bare ray.train.report callback (no MLflow)")
    p.add_argument("--out", default=None, help="work folder (default: a temp dir, removed at the end)")
    a = p.parse_args(argv)
    if a.quick:
        a.model = "simple_cnn" if a.model == "resnet18" else a.model
        a.resolution, a.n_train, a.epochs, a.repeats = 32, 48, 4, 1
    if a.epochs < 4:
        p.error("--epochs must be >= 4 (epoch 1 warms up, the last one validates)")
    return a


# ------------------------------------------------------------------------------------------
# set-up shared by every variant
# ------------------------------------------------------------------------------------------


def prepare(args, out: Path):
    from lungray.config import DataConfig
    from lungray.data import prepare_data

    cfg = DataConfig(
        source="phantom",
        phantom_n=args.n_train + 120,
        resolution=args.resolution,
        eval_size=60,
        val_size=20,
        leakage="off",
        cache_dir=str(out / "cache"),
    )
    return prepare_data(cfg, output_dir=str(out / "prepared"), sizes=(args.n_train,), seeds=(0,), progress=False)


def make_trial(args, checkpoint_min_seconds: float = 60.0):
    from lungray.config import ModelConfig, OptimizerConfig, ScheduleConfig, TrainConfig, TrialConfig

    return TrialConfig(
        study="bench_trial",
        model=ModelConfig(name=args.model),
        train_size=args.n_train,
        optimizer=OptimizerConfig(name="adam", lr=1e-3),
        seed=0,
        schedule=ScheduleConfig(
            rule="fixed",
            batch_size=args.batch_size,
            epochs=args.epochs,
            eval_every=args.epochs,  # validate once, at the end (excluded from the timing)
            checkpoint_every=1,
            checkpoint_min_seconds=checkpoint_min_seconds,
        ),
        train=TrainConfig(augmentation="none", normalization="pool", num_workers=0),
    )


def steady_rate(stamps: list[float], images_per_epoch: int) -> float:
    """images/s from epoch-end stamps: median duration of epochs 2..E-1."""
    durations = [b - a for a, b in zip(stamps[:-1], stamps[1:])]  # epochs 2..E
    steady = durations[:-1] or durations  # drop epoch E (validation)
    return images_per_epoch / C.median(steady)


def images_per_epoch(trial, n_train: int) -> int:
    from lungray.train.loop import epoch_plan

    bs, _ = trial.schedule.resolve(n_train)
    steps, drop_last = epoch_plan(n_train, bs, 1)
    return n_train - (n_train % bs if drop_last else 0)


# ------------------------------------------------------------------------------------------
# variants
# ------------------------------------------------------------------------------------------


def bare_device(fp16: bool = True):
    """(device, autocast dtype or None, channels_last) as a user would pick them: bf16 where the
    GPU has it, else fp16 with a GradScaler (``fp16``) or fp32; channels_last on CUDA only."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    amp = (torch.bfloat16 if torch.cuda.is_bf16_supported() else (torch.float16 if fp16 else None)) if cuda else None
    return device, amp, cuda


def bare_loader(args, data, cl: bool, target: str = "label"):
    """A plain DataLoader over the first ``args.n_train`` pool images, pool-normalised, no
    augmentation, with the loop's batch rule (no batch of one under batch norm)."""
    import torch

    from lungray.data.augment import normalization_stats
    from lungray.data.dataset import ImageDataset
    from lungray.train.loop import epoch_plan

    torch.manual_seed(0)
    idx = data.subset(args.n_train, 0)
    mean, std = normalization_stats("pool", data)
    ds = ImageDataset(data, idx, augmentation="none", mean=mean, std=std, seed=0, target=target)
    _, drop_last = epoch_plan(len(idx), args.batch_size, 1)
    return torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True, drop_last=drop_last,
                                       generator=torch.Generator().manual_seed(0), pin_memory=cl)


def bare_fit(model, loader, opt, lossf, epochs: int, device, amp, cl: bool) -> float:
    """The hand-written training loop every bare reference shares; images/s over the steady epochs."""
    import torch

    if cl:
        model = model.to(memory_format=torch.channels_last)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    stamps, seen = [], 0
    for _ in range(epochs):
        model.train()
        seen = 0
        for x, y, _ in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = model(x)
            loss = lossf(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            seen += int(y.shape[0])
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
    return steady_rate(stamps, seen)


def bare_loop(args, data, trial) -> float:
    """The hand-written reference: what a user would write without lungray."""
    import torch

    from lungray.models import create_model

    device, amp, cl = bare_device()
    loader = bare_loader(args, data, cl)
    model = create_model(trial.model, data.num_classes, in_chans=1, resolution=data.resolution).to(device)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=trial.optimizer.lr)
    return bare_fit(model, loader, opt, torch.nn.CrossEntropyLoss(), args.epochs, device, amp, cl)


def timed_run_trial(trial, data, workdir: Path, n_train: int) -> float:
    """lungray's own trial loop, in this process; images/s over the steady epochs."""
    from lungray.train import run_trial

    stamps: list[float] = []
    run_trial(trial, data, workdir=workdir, report=lambda m, d: stamps.append(time.perf_counter()))
    shutil.rmtree(workdir, ignore_errors=True)
    return steady_rate(stamps, images_per_epoch(trial, n_train))


def direct_trial(args, data, trial, out: Path, tag: str) -> float:
    return timed_run_trial(trial, data, out / f"direct_{tag}_{time.time_ns()}", args.n_train)


def _plain_ray_worker(config: dict) -> None:
    """Ray Train worker: ``run_trial`` reporting metrics + checkpoint per epoch, nothing else."""
    import torch

    import ray.train
    from ray.train import Checkpoint

    from lungray.config import TrialConfig
    from lungray.train import run_trial

    torch.set_num_threads(int(config["threads"]))
    stamps: list[float] = []
    in_report = [0.0]

    def report(metrics, ckpt_dir):
        t = time.perf_counter()
        ray.train.report(dict(metrics), checkpoint=Checkpoint.from_directory(ckpt_dir) if ckpt_dir else None)
        in_report[0] += time.perf_counter() - t
        stamps.append(time.perf_counter())

    trial = TrialConfig.from_dict(config["trial"])
    run_trial(trial, config["data"], workdir=config["workdir"], report=report)
    Path(config["stamps"]).write_text(json.dumps({"stamps": stamps, "report_seconds": in_report[0],
                                                  "threads": torch.get_num_threads()}))


def _stamped_body(trial, data, *, workdir, report, resume_from=None, stamps_path, threads):
    """The sweep's trial body (``run_trial``) with epoch-end stamps taken after the sweep's
    report callback (``ray.train.report`` + checkpoint upload + MLflow epoch metrics) returned."""
    import torch

    from lungray.train import run_trial

    torch.set_num_threads(int(threads))
    stamps: list[float] = []
    in_report = [0.0]

    def rep(metrics, ckpt_dir):
        t = time.perf_counter()
        report(metrics, ckpt_dir)
        in_report[0] += time.perf_counter() - t
        stamps.append(time.perf_counter())

    result = run_trial(trial, data, workdir=workdir, report=rep, resume_from=resume_from)
    Path(stamps_path).write_text(json.dumps({"stamps": stamps, "report_seconds": in_report[0],
                                             "threads": torch.get_num_threads()}))
    return result


def checkpoint_probe(args, data, trial, out: Path, repeats: int = 3) -> dict:
    """Time one resumable checkpoint of this model directly (the noisy end-to-end ratios above
    cannot resolve a few hundred ms): ``state.pt`` as run_trial writes it every
    ``checkpoint_every`` epochs (model + Adam state, plus the best model's weights once a
    validation has run) through :func:`lungray.train.checkpoint.save_state` (fsync'd, atomic),
    then the copy Ray makes when the directory is reported (a plain directory copy here)."""
    import torch

    from lungray.models import create_model
    from lungray.train import checkpoint as ckpt

    torch.manual_seed(0)
    model = create_model(trial.model, data.num_classes, in_chans=1, resolution=data.resolution)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x = torch.rand(4, 1, data.resolution, data.resolution)
    torch.nn.functional.cross_entropy(model(x), torch.zeros(4, dtype=torch.long)).backward()
    opt.step()  # Adam's moments exist now, as in every real checkpoint
    res = {}
    for label, best in (("model+optimizer", None), ("model+optimizer+best", ckpt.cpu_state_dict(model))):
        state = {"trial": trial.to_dict(), "epoch": 1, "model": ckpt.cpu_state_dict(model), "optimizer": opt.state_dict(),
                 "scheduler": None, "scaler": {}, "best_value": 0.0, "best_epoch": 1, "best_model": best, "bad_evals": 0,
                 "done": False, "stopped_early": False, "history": [], "train_seconds": 0.0, "rng": ckpt.rng_state()}
        writes, copies, size = [], [], 0
        for i in range(repeats):
            d = out / f"ckprobe_{label.count('+')}_{i}"
            with C.Timer() as t:
                ckpt.save_state(d, state)
            writes.append(t.s)
            size = (d / ckpt.STATE_FILE).stat().st_size
            with C.Timer() as t:
                shutil.copytree(d, out / f"ckprobe_copy_{label.count('+')}_{i}")
            copies.append(t.s)
            shutil.rmtree(d, ignore_errors=True)
            shutil.rmtree(out / f"ckprobe_copy_{label.count('+')}_{i}", ignore_errors=True)
        res[label] = {"mb": size / 2**20, "write": C.median(writes), "copy": C.median(copies)}
    return res


class RayVariants:
    """The Ray variants (Ray Train and Tune); Ray and the MLflow experiment are set up once (excluded)."""

    def __init__(self, args, data, trial, out: Path):
        import torch

        self.args, self.data, self.trial, self.out = args, data, trial, out
        self.use_gpu = torch.cuda.is_available()
        self.info: dict[str, list[dict]] = {"plain": [], "sweep": []}
        self._mlflow = None

    def _scaling(self):
        from ray.train import ScalingConfig

        return ScalingConfig(num_workers=1, use_gpu=self.use_gpu,
                             resources_per_worker={"CPU": 0.99, "GPU": 1} if self.use_gpu else {"CPU": 0.99})

    def plain(self) -> float:
        """``run_trial`` in a TorchTrainer with a bare ``ray.train.report`` callback."""
        from ray.train import RunConfig
        from ray.train.torch import TorchTrainer

        tag = time.time_ns()
        stamps_file = self.out / f"ray_stamps_{tag}.json"
        TorchTrainer(
            _plain_ray_worker,
            train_loop_config={"trial": self.trial.to_dict(), "data": self.data, "workdir": str(self.out / f"ray_work_{tag}"),
                               "stamps": str(stamps_file), "threads": self.args.threads},
            scaling_config=self._scaling(),
            run_config=RunConfig(name=f"bench-trial-{tag}", storage_path=str(self.out / "ray_results")),
        ).fit()
        info = json.loads(stamps_file.read_text())
        shutil.rmtree(self.out / f"ray_work_{tag}", ignore_errors=True)
        self.info["plain"].append(info)
        return steady_rate(info["stamps"], images_per_epoch(self.trial, self.args.n_train))

    def _in_tune_trial(self, ctx, trial, trial_id: str, run_id: str, tag: int) -> None:
        """One Tune trial running the sweep's in-trial path (:func:`lungray.sweep.trainable._fit_in_trial`)."""
        from ray import tune

        from lungray.sweep.trainable import _fit_in_trial

        def fn(config):
            _fit_in_trial(ctx, trial, trial_id, run_id, ctx.trial_dir(trial_id))

        res = {"cpu": 0.99, "gpu": 1.0 if self.use_gpu else 0.0}
        grid = tune.Tuner(
            tune.with_resources(fn, res),
            run_config=tune.RunConfig(name=f"bench-tune-{tag}", storage_path=str(self.out / "tune_results"), verbose=0),
        ).fit()
        if grid.errors:
            raise RuntimeError(f"the Tune trial failed: {grid.errors[0]}")

    def tune(self, trial=None, key: str = "tune") -> float:
        """The sweep's default path for a one-worker trial: the loop in the Tune trial itself."""
        return self.sweep(trial, key, via="tune")

    def sweep(self, trial=None, key: str = "sweep", via: str = "ray_train") -> float:
        """The sweep's own Train worker (:func:`lungray.sweep.trainable.train_worker`): its report
        callback, checkpoint persistence and per-epoch MLflow logging, as in a real sweep
        (``via="tune"``: the same body and callbacks in a Tune trial, without Ray Train)."""
        trial = trial or self.trial
        import functools

        import ray.train
        from ray.train.torch import TorchTrainer

        from lungray.sweep import mlflow_run as M
        from lungray.sweep.trainable import SweepContext, train_worker

        uri = f"sqlite:///{self.out / 'mlflow.db'}"
        if self._mlflow is None:
            exp = M.ensure_experiment(uri, "bench_trial", artifact_root=str(self.out / "mlartifacts"))
            parent = M.create_parent_run(uri, exp, study_name="bench_trial", config_dict={}, config_fingerprint="",
                                         dataset_fingerprint=str(self.data.fingerprint), storage_path=str(self.out),
                                         data_root=str(self.data.root), artifacts={})
            self._mlflow = (exp, parent)
        exp, parent = self._mlflow
        tag = time.time_ns()
        trial_id = f"bench{tag}"
        run_id, _ = M.find_or_create_trial_run(uri, exp, parent, trial_id, trial)
        stamps_file = self.out / f"sweep_stamps_{tag}.json"
        ctx = SweepContext(
            study="bench_trial", experiment_dir=str(self.out / "experiment"), tracking_uri=uri, experiment_id=exp,
            parent_run_id=parent, data=self.data, trials={},
            body=functools.partial(_stamped_body, stamps_path=str(stamps_file), threads=self.args.threads),
        )
        if via == "tune":
            self._in_tune_trial(ctx, trial, trial_id, run_id, tag)
            M.finish_run(uri, run_id, "FINISHED")
            info = json.loads(stamps_file.read_text())
            self.info.setdefault(key, []).append(info)
            return steady_rate(info["stamps"], images_per_epoch(trial, self.args.n_train))
        TorchTrainer(
            train_worker,
            train_loop_config={"ctx": ctx, "trial": trial, "trial_id": trial_id, "run_id": run_id},
            scaling_config=self._scaling(),
            run_config=ray.train.RunConfig(name=f"train-{trial_id}", storage_path=str(self.out / "experiment" / "train")),
        ).fit()
        M.finish_run(uri, run_id, "FINISHED")
        info = json.loads(stamps_file.read_text())
        self.info.setdefault(key, []).append(info)
        return steady_rate(info["stamps"], images_per_epoch(trial, self.args.n_train))


def main(argv=None) -> int:
    args = parse_args(argv)
    C.set_threads(args.threads)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    C.print_header("bench_trial: lungray's trial loop vs a bare PyTorch loop", args)
    with C.work_dir(args.out, "lungray_bench_trial_") as out:
        ray_started = False
        try:
            data = prepare(args, out)
            trial = make_trial(args)
            trial_every = make_trial(args, checkpoint_min_seconds=0.0)
            variants = {
                "bare": lambda: bare_loop(args, data, trial),
                "run_trial": lambda: direct_trial(args, data, trial, out, "every"),
                "run_trial, ckpt every epoch (before)": lambda: direct_trial(args, data, trial_every, out, "every_epoch"),
            }
            rv = None
            if not args.no_ray:
                import ray

                ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
                with C.Timer() as t:
                    ray.init(num_cpus=ncpu, include_dashboard=False, log_to_driver=False, configure_logging=False)
                ray_started = True
                print(f"ray.init: {t.s:.1f}s (excluded)")
                rv = RayVariants(args, data, trial, out)
                if args.plain:
                    variants["ray train, plain report"] = rv.plain
                variants["tune trial, sweep default (no Ray Train)"] = rv.tune
                variants["ray train, sweep worker"] = rv.sweep
                if not args.quick:  # --quick keeps one Train start-up
                    variants["ray train, sweep worker, ckpt every epoch (before)"] = lambda: rv.sweep(trial_every, "sweep_every")
            ipe = images_per_epoch(trial, args.n_train)
            print(f"{args.model} at {args.resolution} px, batch {args.batch_size}, {ipe} images/epoch, {args.epochs} epochs "
                  f"(2..{args.epochs - 1} timed), {args.threads} thread(s), {args.repeats} interleaved rounds")
            res = C.interleave(variants, args.repeats)

            base = res["bare"]
            rows = []
            for name, vals in res.items():
                rows.append({"variant": name, "images/s (median)": C.median(vals), "range": C.spread(vals),
                             "vs bare": C.paired_ratio(vals, base)})
            C.print_table(rows, "steady-state training throughput (vs bare: paired median ratio)")
            if rv is not None:
                for key, what in (("tune", "Tune trial report (default checkpoint rule): tune.report + MLflow epoch metrics"),
                                  ("plain", "ray.train.report + checkpoint upload"),
                                  ("sweep", "sweep report (default checkpoint rule): ray.train.report + MLflow epoch metrics"),
                                  ("sweep_every", "sweep report with a checkpoint every epoch: ray.train.report + upload + MLflow")):
                    if rv.info.get(key):
                        per_epoch = C.median([i["report_seconds"] / args.epochs for i in rv.info[key]])
                        print(f"inside the Ray worker, {what}: {per_epoch * 1000:.0f} ms/epoch "
                              f"(torch threads {rv.info[key][0]['threads']})")
            ckpt_cost = 1.0 / C.median(res["run_trial, ckpt every epoch (before)"]) - 1.0 / C.median(res["run_trial"])
            print(f"per-epoch checkpoint cost, end to end (ckpt every epoch - run_trial; noisy): {ckpt_cost * ipe * 1000:.0f} ms/epoch")
            probe = checkpoint_probe(args, data, trial, out)
            bare_epoch = ipe / C.median(base)
            for label, p in probe.items():
                share = (p["write"] + p["copy"]) / bare_epoch
                print(f"checkpoint probe, {label}: {p['mb']:.1f} MB, write {p['write'] * 1000:.0f} ms + copy "
                      f"{p['copy'] * 1000:.0f} ms = {share:.2f} of a bare epoch ({bare_epoch * 1000:.0f} ms)")
            C.print_ratio("trial_loop_vs_bare", C.paired_ratio(res["run_trial"], base), 0.95)
            if rv is not None:
                C.print_ratio("ray_trial_vs_bare", C.paired_ratio(res["ray train, sweep worker"], base), 0.95,
                              note="(the sweep's Train worker)")
                if "ray train, plain report" in res:
                    C.print_ratio("ray_plain_vs_bare", C.paired_ratio(res["ray train, plain report"], base))
                if "ray train, sweep worker, ckpt every epoch (before)" in res:
                    C.print_ratio("ray_trial_ckpt_every_epoch_vs_bare",
                                  C.paired_ratio(res["ray train, sweep worker, ckpt every epoch (before)"], base),
                                  0.95, note="(before: a checkpoint every epoch)")
                C.print_ratio("tune_trial_vs_bare", C.paired_ratio(res["tune trial, sweep default (no Ray Train)"], base), 0.95,
                              note="(the sweep's default one-worker trial)")
                C.print_ratio("ray_sweep_vs_run_trial", C.paired_ratio(res["ray train, sweep worker"], res["run_trial"]))
        finally:
            if ray_started:
                import ray

                ray.shutdown()
    C.print_load()
    return 0


if __name__ == "__main__":
    sys.exit(main())
