"""Where does a sweep's wall time go? Per-trial overhead, sweep efficiency, scaling with trials.

Issue 5, item 3. Three measurements:

1. **Ray Train start-up, taken apart** (one process, Ray started once): a one-worker
   ``TorchTrainer.fit()`` whose worker does nothing, timed from ``fit()`` to the worker's first
   line (start-up) and from its last line to ``fit()`` returning (teardown), for each
   ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` value (interleaved); next to it the two things a
   start-up is made of on one node: spawning a fresh actor process with a runtime env (the
   Train controller and each worker get one) and importing torch + Ray Train in a new Python.
2. **Sweeps** (each in its own subprocess, so every run gets a fresh Ray with its own
   environment and a fresh sqlite MLflow store, as a user's first run):
   :func:`lungray.sweep.runner.run_study` on the ``smoke`` preset (8 trials: the efficiency
   target) and on a series of k identical trials (simple_cnn at 120 images, k seeds, ``--trials``:
   how wall time grows with the number of trials), 2 concurrent trial slots. From each trial's
   MLflow child run: wall time (run start to end), setup/train/eval seconds. Per-trial
   overhead = wall - train - eval. Sweep efficiency = sum(train + eval) / (wall x slots), for
   the whole ``run_study`` call and for the span of the trials (first start to last end, i.e.
   without Ray start-up, data preparation and MLflow set-up). Wall time against k is fitted
   with a line: the slope is the marginal cost of a trial and R^2 says whether growth is
   linear. The sweeps run as lungray runs them by default (one-worker trials train in the
   re-used Tune trial process, a checkpoint at most once a minute). ``--epochs N`` lengthens
   every trial.
3. **Before and after**: the smoke grid again as lungray ran it before this bench's finding
   (``--before``, on by default): every trial through a one-worker ``TorchTrainer``
   (``resources.use_ray_train=true``) with a checkpoint every epoch
   (``schedule.checkpoint_min_seconds=0``). Optional: the smoke grid with longer trials
   (``--long-epochs N``; before and after with ``--before``) and at the other health-check
   intervals (``--hc-sweep``, Ray Train path).
4. **A sweep's fixed cost** (issue 22.3): everything of a ``run_study`` call that is not trial
   compute, ``fixed = wall - sum(train + eval) / slots``, and its phases, read from the sweep's
   own console lines and its trials' MLflow runs: data preparation (a cache hit), Ray start-up
   and the preflight, MLflow set-up (store, experiment, parent run), Tune start-up to the first
   trial's MLflow run, the first trial of each slot (its imports), and the end (summary files,
   MLflow's parent run, Ray's shutdown). ``--baseline REF`` runs the smoke grid with lungray as
   of git ``REF`` (extracted with ``git archive``) and with this checkout (or ``--candidate
   REF``), alternating A B, B A for ``--rounds`` rounds, and prints the paired ratio.

Run: ``python bench/bench_sweep.py`` (default, ~5 min on 2 CPUs) or ``--quick`` (CI smoke);
the fixed cost before/after: ``python bench/bench_sweep.py --skip-startup --trials 0 --no-before
--baseline <commit> --rounds 4``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

HC = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"

#: grids by key: "smoke" is the smoke preset itself (2 models x 2 sizes x 2 seeds = 8 trials,
#: what the efficiency target is about); an integer k is k identical trials (simple_cnn at 120
#: images, seeds 0..k-1), the series that shows how wall time grows with the number of trials
SMOKE = 0
SERIES_CELL = ["models=[{name: simple_cnn, width: 16}]", "sizes=[120]"]


def grid_overrides(key: int) -> list[str]:
    if key == SMOKE:
        return []
    return [*SERIES_CELL, f"seeds=[{','.join(str(i) for i in range(key))}]"]


def grid_label(key: int) -> str:
    return "smoke grid (8 trials)" if key == SMOKE else f"{key} x simple_cnn n=120"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one tiny sweep and one start-up sample (CI smoke)")
    p.add_argument("--trials", default="2,4,8", help="numbers of identical trials for the wall-time series (0: skip the series)")
    p.add_argument("--slots", type=int, default=2, help="concurrent trials (resources.max_concurrent_trials)")
    p.add_argument("--hc", default="0.2,2.0", help="RAY_TRAIN_HEALTH_CHECK_INTERVAL_S values to compare")
    p.add_argument("--startup-repeats", type=int, default=2, help="interleaved no-op fits per health-check value")
    p.add_argument("--hc-sweep", action="store_true",
                   help="also run the smallest sweep at every other --hc value (the no-op fits compare them anyway)")
    p.add_argument("--epochs", type=int, default=0,
                   help="schedule.epochs of every sweep in the main series (default: the smoke preset's 3); "
                        "longer trials make the per-trial slope of wall time visible")
    p.add_argument("--long-epochs", type=int, default=0,
                   help="also run the smallest sweep with schedule.epochs=N (efficiency vs trial length)")
    p.add_argument("--no-before", dest="before", action="store_false",
                   help="skip the largest sweep as lungray ran it before the fix (every trial through Ray Train, "
                        "a checkpoint every epoch)")
    p.add_argument("--baseline", default=None,
                   help="git ref of lungray to compare the fixed cost with (section 4: A/B rounds on the smoke grid)")
    p.add_argument("--candidate", default=None, help="git ref of the 'after' side (default: this checkout)")
    p.add_argument("--rounds", type=int, default=3, help="A/B rounds of section 4")
    p.add_argument("--skip-startup", action="store_true")
    p.add_argument("--skip-sweeps", action="store_true")
    p.add_argument("--parts", action="store_true", help="section 4b: each part of the fixed cost alone, before and after")
    p.add_argument("--out", default=None, help="work folder (default: a temp dir, removed at the end)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: run one sweep, write JSON here
    p.add_argument("--child-trials", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--child-set", action="append", default=[], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        a.trials, a.hc, a.startup_repeats, a.before = "", "0.2", 1, False  # the smoke grid only
    a.trial_list = [int(t) for t in str(a.trials).split(",") if t.strip() and int(t) > 0]
    a.hc_list = [h.strip() for h in str(a.hc).split(",") if h.strip()]
    return a


# ------------------------------------------------------------------------------------------
# 1. Ray Train start-up, taken apart
# ------------------------------------------------------------------------------------------


def _noop_worker(config: dict) -> None:
    import json as _json
    import time as _time

    t_enter = _time.time()
    try:
        import psutil

        born = psutil.Process().create_time()  # when Ray spawned this worker process
    except Exception:  # noqa: BLE001 - optional detail
        born = float("nan")
    _json.dump({"t_enter": t_enter, "t_born": born, "t_exit": _time.time()}, open(config["out"], "w"))


def bench_startup(args, out: Path) -> None:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    with C.Timer() as t:
        ray.init(num_cpus=ncpu, include_dashboard=False, log_to_driver=False, configure_logging=False)
    print(f"ray.init (local, {ncpu} CPUs): {t.s:.1f}s")
    parts: dict[str, list[dict]] = {h: [] for h in args.hc_list}
    try:
        def fit(hc: str):
            def _run() -> float:
                os.environ[HC] = hc  # read by TorchTrainer.fit and propagated to controller and workers
                stamp = out / f"noop_{time.time_ns()}.json"
                t0 = time.time()
                TorchTrainer(
                    _noop_worker,
                    train_loop_config={"out": str(stamp)},
                    scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.99}),
                    run_config=RunConfig(name=f"noop-{time.time_ns()}", storage_path=str(out / "ray_results")),
                ).fit()
                t1 = time.time()
                s = json.loads(stamp.read_text())
                parts[hc].append({"startup": s["t_enter"] - t0, "teardown": t1 - s["t_exit"], "total": t1 - t0,
                                  "to_process": s["t_born"] - t0, "in_process": s["t_enter"] - s["t_born"]})
                return t1 - t0

            return _run

        print("no-op TorchTrainer.fit() (1 worker), seconds:")
        C.interleave({f"fit, health check {h}s": fit(h) for h in args.hc_list}, args.startup_repeats)

        @ray.remote(num_cpus=0)
        class Probe:
            def ready(self) -> float:
                return time.time()

        def spawn() -> float:
            t0 = time.time()
            a = Probe.options(runtime_env={"env_vars": {"LUNGRAY_BENCH_PROBE": str(time.time_ns())}}).remote()
            t1 = ray.get(a.ready.remote())
            ray.kill(a)
            return t1 - t0

        spawned = {"actor spawn": []}
        if not args.quick:
            print("fresh actor process with a runtime env (what the controller and each worker cost to spawn):")
            spawned = C.interleave({"actor spawn": spawn}, max(1, args.startup_repeats))
    finally:
        ray.shutdown()

    def imp() -> float:
        code = "import time; t=time.perf_counter(); import torch, ray.train.torch; print(time.perf_counter()-t)"
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        return float(r.stdout.strip().splitlines()[-1])

    imports = {"import": []}
    if not args.quick:
        print("import torch + ray.train.torch in a new Python (each Train worker does this):")
        imports = C.interleave({"import": imp}, max(1, args.startup_repeats))

    rows = []
    for h in args.hc_list:
        ps = parts[h]
        rows.append({"what": f"no-op fit, health check {h}s", "total s": C.median([p["total"] for p in ps]),
                     "start-up s": C.median([p["startup"] for p in ps]),
                     "fit -> worker process": C.median([p["to_process"] for p in ps]),
                     "worker process -> train fn": C.median([p["in_process"] for p in ps]),
                     "teardown s": C.median([p["teardown"] for p in ps])})
    nan = float("nan")
    rows.append({"what": "spawn one actor process (runtime env)", "total s": C.median(spawned["actor spawn"]),
                 "start-up s": nan, "fit -> worker process": nan, "worker process -> train fn": nan, "teardown s": nan})
    rows.append({"what": "import torch + ray.train.torch", "total s": C.median(imports["import"]),
                 "start-up s": nan, "fit -> worker process": nan, "worker process -> train fn": nan, "teardown s": nan})
    C.print_table(rows, "Ray Train start-up and teardown of one trial (medians, seconds)")
    if len(args.hc_list) > 1:
        lo, hi = min(args.hc_list, key=float), max(args.hc_list, key=float)
        C.print_ratio(f"noop_fit_hc{hi}_vs_hc{lo}", C.median([p["total"] for p in parts[hi]]) / C.median([p["total"] for p in parts[lo]]),
                      note="(> 1: the longer interval costs that factor)")
    C.print_ratio("noop_fit_seconds", C.median([p["total"] for p in parts[min(args.hc_list, key=float)]]),
                  note="(seconds, not a ratio: fixed cost per Ray Train trial)")


# ------------------------------------------------------------------------------------------
# 2. one sweep (child process)
# ------------------------------------------------------------------------------------------


def child(args) -> int:
    """Run one sweep with run_study and write its timings as JSON (runs in a subprocess)."""
    from lungray.study import load_study
    from lungray.sweep.runner import run_study

    out = Path(args.child).parent / f"sweep_{Path(args.child).stem}"
    uri = f"sqlite:///{out / 'mlflow.db'}"
    overrides = [
        f"output_dir={out}",
        f"data.cache_dir={Path(args.child).parent / 'shared_cache'}",
        f"tracking.tracking_uri={uri}",
        f"resources.max_concurrent_trials={args.slots}",
        "report=false",
        *grid_overrides(args.child_trials),
        *args.child_set,
    ]
    cfg = load_study("smoke", overrides=overrides)
    lines: list[tuple[float, str]] = []

    def echo(s: str) -> None:  # the console as the user sees it, each line timed (section 4's phases)
        print(s, flush=True)
        lines.append((time.time(), str(s).splitlines()[0] if str(s) else ""))

    t0 = time.time()
    result = run_study(cfg, echo=echo)
    t1 = time.time()
    trials = read_trials(uri, cfg.tracking.experiment or cfg.name, Path(result.experiment_dir))
    Path(args.child).write_text(json.dumps({"t0": t0, "t1": t1, "n_trials": len(cfg.trials()), "trials": trials,
                                            "lines": lines, "load": os.getloadavg()[0]}))
    return 0


def read_trials(uri: str, experiment: str, experiment_dir: Path | None = None) -> list[dict]:
    """Per-trial timings: MLflow child runs (status, start/end, lungray/tracking.py metrics),
    refined by the trial's ``result.json`` in the experiment directory when it is there
    (``trial_start``/``trial_end`` of the Tune trial function, ``worker_start``/``worker_end``
    of the Train worker's body), which splits the overhead into its parts."""
    from mlflow.tracking import MlflowClient

    from lungray import tracking as T

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id], filter_string=f"tags.`{T.ROLE}` = '{T.ROLE_TRIAL}'", max_results=10000)
    out = []
    for r in runs:
        m = r.data.metrics
        rec = {
            "name": r.info.run_name,
            "status": r.info.status,
            "start": r.info.start_time / 1000.0,
            "end": (r.info.end_time or 0) / 1000.0,
            "setup": float(m.get("setup_seconds", float("nan"))),
            "train": float(m.get("train_seconds", float("nan"))),
            "eval": float(m.get("eval_seconds", float("nan"))),
            "overhead_logged": float(m.get("trial_overhead_seconds", float("nan"))),
        }
        tid = r.data.tags.get(T.TRIAL_ID)
        rj = (experiment_dir / "trials" / str(tid) / "result.json") if experiment_dir is not None and tid else None
        if rj is not None and rj.exists():
            d = json.loads(rj.read_text())
            for k in ("trial_start", "trial_end", "worker_start", "worker_end"):
                v = d.get(k)
                if isinstance(v, (int, float)):
                    rec[k] = float(v)
        out.append(rec)
    return out


#: the sweep as lungray ran it before bench_sweep's finding (RESULTS.md, item 3)
BEFORE = ["resources.use_ray_train=true", "schedule.checkpoint_min_seconds=0"]


def run_child(args, out: Path, n_trials: int, env: dict, sets=(), pythonpath: Optional[str] = None) -> dict:
    """One sweep in a subprocess; ``n_trials`` is a grid key (``SMOKE`` or k identical trials)."""
    tag = f"k{n_trials}_{time.time_ns()}"
    path = out / f"{tag}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(path), "--child-trials", str(n_trials),
           "--slots", str(args.slots)]
    for s in sets:
        cmd += ["--child-set", s]
    full_env = {**os.environ, **env}
    if pythonpath is not None:  # another lungray (section 4); Ray's workers inherit it
        full_env["PYTHONPATH"] = pythonpath
    load0 = os.getloadavg()[0]
    cpu = TreeCPU(driver_args=cmd[1:3])
    t0 = time.time()
    with cpu:
        r = subprocess.run(cmd, env=full_env, capture_output=True, text=True)
        wall = time.time() - t0
        _reap_orphans()
    if r.returncode != 0:
        sys.stderr.write(r.stdout[-4000:] + r.stderr[-8000:])
        raise SystemExit(f"sweep child failed (exit {r.returncode}): {' '.join(cmd)}")
    res = json.loads(path.read_text())
    res["process_wall"] = wall
    res["load_start"] = load0
    res["cpu"] = cpu.by_role()
    return res


class TreeCPU:
    """CPU seconds of every process this script starts (the sweep's driver, Ray's services, the
    trial processes), sampled every 0.1 s while a sweep runs: what a sweep costs the machine,
    however loaded it is. ``/proc`` per process, kept at its last value; a process's last tenth
    of a second is missed. Orphans stay below this process (:func:`_subreaper`)."""

    def __init__(self, driver_args: list[str]):
        import threading

        self.driver_args = driver_args
        self.seen: dict[tuple[int, float], list] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "TreeCPU":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _role(self, p) -> str:
        cmd = " ".join(p.cmdline())
        if all(a in cmd for a in self.driver_args):
            return "driver"
        if "default_worker.py" in cmd or cmd.startswith("ray::"):
            return "trial processes"
        return "ray services"

    def _loop(self) -> None:
        import psutil

        me = psutil.Process()
        while True:
            for p in me.children(recursive=True):
                try:
                    with p.oneshot():
                        key = (p.pid, p.create_time())
                        t = p.cpu_times()
                        # a child caught between fork and exec shows this script's command line,
                        # an exited one (a zombie until reaped) none: a process is a Ray service
                        # only until its command line says otherwise, and keeps what it was said
                        old = self.seen.get(key, ["ray services", 0.0])[0]
                        role = self._role(p) if old == "ray services" and p.cmdline() else old
                        self.seen[key] = [role, t.user + t.system]
                except psutil.Error:
                    pass
            if self._stop.wait(0.1):
                return

    def by_role(self) -> dict[str, float]:
        out = {"driver": 0.0, "ray services": 0.0, "trial processes": 0.0}
        for role, c in self.seen.values():
            out[role] = out.get(role, 0.0) + c
        out["total"] = sum(out.values())
        return out


def _subreaper() -> bool:
    """Adopt the orphans of the sweeps this script starts (Linux ``PR_SET_CHILD_SUBREAPER``):
    Ray's processes outlive their parents by a moment and are then reaped (and measured) here."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def _reap_orphans(timeout: float = 15.0) -> None:
    """Reap adopted orphans until none is left (or ``timeout``)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.1)


def summarise(res: dict, slots: int) -> dict:
    tr = [t for t in res["trials"] if t["end"] > 0]
    compute = sum(t["train"] + t["eval"] for t in tr)
    wall = res["t1"] - res["t0"]
    span = (max(t["end"] for t in tr) - min(t["start"] for t in tr)) if tr else float("nan")
    overheads = [(t["end"] - t["start"]) - t["train"] - t["eval"] for t in tr]
    parts = breakdown(tr)
    return {
        "trials": res["n_trials"],
        "finished": sum(t["status"] == "FINISHED" for t in tr),
        "run_study s": wall,
        "trial span s": span,
        "trial wall s": C.median([t["end"] - t["start"] for t in tr]),
        "setup s": C.median([t["setup"] for t in tr]),
        "train+eval s": C.median([t["train"] + t["eval"] for t in tr]),
        "overhead s": C.median(overheads),
        "eff (run_study)": compute / (wall * slots) if wall else float("nan"),
        "eff (span)": compute / (span * slots) if span else float("nan"),
        "fixed s": wall - compute / slots,  # section 4's figure: all that is not trial compute
        **parts,
    }


def breakdown(trials: list[dict]) -> dict:
    """Median seconds per trial of each overhead part (needs the trials' result.json stamps):

    * ``train start-up``: Tune trial function entered -> Train worker's body started (MLflow
      find-or-create, TorchTrainer controller + worker processes, process group);
    * ``setup``: run_trial's own set-up (model, data views, normalisation);
    * ``outputs``: rest of the worker body (per-epoch reports and checkpoints, artifacts and
      final MLflow logging);
    * ``teardown``: worker body done -> trial function done (Train teardown, MLflow finish).
    """
    keys = ("trial_start", "trial_end", "worker_start", "worker_end")
    tr = [t for t in trials if all(k in t for k in keys)]
    if not tr:
        return {}
    return {
        "train start-up s": C.median([t["worker_start"] - t["trial_start"] for t in tr]),
        "outputs s": C.median([(t["worker_end"] - t["worker_start"]) - t["setup"] - t["train"] - t["eval"] for t in tr]),
        "teardown s": C.median([t["trial_end"] - t["worker_end"] for t in tr]),
    }


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares y = a + b x; returns (a, b, R^2)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    a = my - b * mx
    ss_res = sum((y - (a + b * x)) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return a, b, (1 - ss_res / ss_tot) if ss_tot else 1.0


SWEEP_COLS = ("trials", "finished", "run_study s", "trial span s", "eff (run_study)", "eff (span)", "fixed s")
TRIAL_COLS = ("trial wall s", "train+eval s", "overhead s", "setup s", "train start-up s", "outputs s", "teardown s")


def bench_sweeps(args, out: Path) -> None:
    lo_hc = min(args.hc_list, key=float)
    runs: list[tuple[str, dict]] = []
    main_sets = [f"schedule.epochs={args.epochs}"] if args.epochs else []
    label = f" x {args.epochs} epochs" if args.epochs else ""
    env = {HC: lo_hc}

    def sweep(key: int, sets=(), what: str = "") -> dict:
        name = f"{grid_label(key)}{label}{what}"
        print(f"sweep: {name}, {args.slots} slots ...", flush=True)
        res = summarise(run_child(args, out, key, env, sets=[*main_sets, *sets]), args.slots)
        runs.append((name, res))
        return res

    smoke = sweep(SMOKE)
    before = sweep(SMOKE, BEFORE, ", before (Ray Train per trial, ckpt every epoch)") if args.before else None
    series = {k: sweep(k) for k in args.trial_list}
    if args.long_epochs:
        long = [f"schedule.epochs={args.long_epochs}"]
        sweep(SMOKE, long, f", {args.long_epochs} epochs")
        if args.before:
            sweep(SMOKE, [*long, *BEFORE], f", {args.long_epochs} epochs, before")
    if args.hc_sweep:
        for h in args.hc_list:
            if h != lo_hc:
                env = {HC: h}
                sweep(SMOKE, BEFORE, f", Ray Train, health check {h}s")
    C.print_table([{"sweep": name, **{c: s.get(c, float("nan")) for c in SWEEP_COLS}} for name, s in runs],
                  f"sweeps on the smoke preset and a series of identical trials, {args.slots} concurrent slots")
    C.print_table([{"sweep": name, **{c: s.get(c, float("nan")) for c in TRIAL_COLS}} for name, s in runs],
                  "per trial, medians in seconds (overhead = trial wall - train - eval)")
    C.print_ratio("sweep_efficiency_smoke", smoke["eff (run_study)"], 0.85)
    C.print_ratio("sweep_efficiency_smoke_span", smoke["eff (span)"], note="(without ray.init, data preparation and MLflow set-up)")
    if before is not None:
        C.print_ratio("sweep_efficiency_smoke_before", before["eff (run_study)"], note="(Ray Train per trial)")
        C.print_ratio("sweep_wall_smoke_after_vs_before", smoke["run_study s"] / before["run_study s"],
                      note="(< 1: the sweep takes that fraction of its former wall time)")
        C.print_ratio("trial_overhead_after_vs_before", smoke["overhead s"] / before["overhead s"], note="(median per-trial overhead)")
    if len(series) >= 2:
        ks = sorted(series)
        a, b, r2 = fit_line([float(k) for k in ks], [series[k]["run_study s"] for k in ks])
        print(f"wall time vs identical trials: {a:.1f}s fixed + {b:.2f}s per trial ({b * args.slots:.2f}s per trial per slot; "
              f"a trial's median wall {C.median([series[k]['trial wall s'] for k in ks]):.2f}s); R^2 {r2:.3f} over {ks}")
        C.print_ratio("sweep_wall_linear_r2", r2, note="(1.0 = wall time grows linearly with the number of trials)")


# ------------------------------------------------------------------------------------------
# 4. a sweep's fixed cost, before and after (issue 22.3)
# ------------------------------------------------------------------------------------------

#: console lines that end each phase (the same in every lungray version measured)
PHASE_LINES = (
    ("data s", "data: "),  # the last data line: "data: 2 classes; eval ..." (a cache hit)
    ("ray + preflight s", "cluster: "),
    ("mlflow s", "experiment directory: "),
)


def _last_line(lines: list, prefix: str, after: float = 0.0) -> float:
    ts = [t for t, s in lines if s.startswith(prefix) and t >= after]
    return ts[-1] if prefix == "data: " else (ts[0] if ts else float("nan"))


def fixed_cost(res: dict, slots: int) -> dict:
    """A sweep's fixed cost and its phases, in seconds, from one child's record.

    ``fixed`` = run_study wall - sum(train + eval) / slots: all that is not trial compute
    (per-trial overheads included, ~0.15 s x trials / slots on the smoke grid). Phases end at
    the sweep's console lines (:data:`PHASE_LINES`) and its trials' MLflow runs: ``to first
    trial`` from the MLflow set-up to the first trial's run (Tune start-up, trial processes and
    their Ray Tune and MLflow imports); ``first trial extra``: per slot, the first trial's
    overhead beyond the median of the others (its torch/model imports); ``end``: the last trial's
    end to ``run_study`` returning (summary files, closing the parent run, Ray's shutdown).
    """
    tr = sorted((t for t in res["trials"] if t["end"] > 0), key=lambda t: t["start"])
    wall = res["t1"] - res["t0"]
    compute = sum(t["train"] + t["eval"] for t in tr)
    lines = [(float(t), s) for t, s in res.get("lines", [])]
    out = {"run_study s": wall, "fixed s": wall - compute / slots}
    prev = res["t0"]
    for name, prefix in PHASE_LINES:
        t = _last_line(lines, prefix)
        out[name] = t - prev
        prev = t
    if tr:
        out["to first trial s"] = tr[0]["start"] - prev
        over = [(t["end"] - t["start"]) - t["train"] - t["eval"] for t in tr]
        rest = C.median(over[slots:]) if len(over) > slots else 0.0
        out["first trial extra s"] = C.median([o - rest for o in over[:slots]])
        out["end s"] = res["t1"] - max(t["end"] for t in tr)
    # CPU seconds of the sweep's whole process tree (driver, Ray's processes, trial workers),
    # trial compute taken out: what the fixed cost costs the machine, whatever else loads it
    cpu = res.get("cpu") or {}
    out["cpu total s"] = cpu.get("total", float("nan"))
    # trial compute is wall seconds: under load a trial's wall exceeds its CPU, so this figure is
    # low on a busy machine; the side-by-side difference of "cpu total" (same trials) is exact
    out["fixed cpu s"] = cpu.get("total", float("nan")) - compute
    for role in ("driver", "ray services", "trial processes"):
        out[f"cpu {role} s"] = cpu.get(role, float("nan"))
    out["load"] = res.get("load_start", float("nan"))
    return out


def _extract(ref: str, out: Path) -> Path:
    """lungray as of git ``ref``, extracted under ``out`` (a PYTHONPATH root)."""
    import io
    import tarfile

    dest = out / f"lungray_{ref.replace('/', '_')}"
    if not (dest / "lungray").exists():
        tar = subprocess.run(["git", "-C", str(C.REPO), "archive", "--format=tar", ref, "lungray"], capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(tar)) as t:
            t.extractall(dest, filter="data")
    return dest


FIXED_COLS = ("run_study s", "fixed s", "data s", "ray + preflight s", "mlflow s", "to first trial s", "first trial extra s", "end s",
              "load")
CPU_COLS = ("cpu total s", "fixed cpu s", "cpu driver s", "cpu ray services s", "cpu trial processes s")


def bench_fixed_cost(args, out: Path) -> None:
    base = str(_extract(args.baseline, out))
    cand = str(_extract(args.candidate, out)) if args.candidate else os.environ.get("PYTHONPATH") or str(C.REPO)
    sides = {f"before ({args.baseline})": base, f"after ({args.candidate or 'this checkout'})": cand}
    env = {HC: min(args.hc_list, key=float)}
    print(f"\nsection 4: the smoke grid's fixed cost, {args.rounds} rounds alternating A B, B A; {args.slots} slots", flush=True)
    run_child(args, out, SMOKE, env, pythonpath=cand)  # prepares the shared data cache: every measured sweep hits it
    recs: dict[str, list[dict]] = {k: [] for k in sides}

    def one(name: str):
        def _run() -> float:
            r = fixed_cost(run_child(args, out, SMOKE, env, pythonpath=sides[name]), args.slots)
            recs[name].append(r)
            print("    " + "  ".join(f"{k} {v:.1f}" for k, v in r.items()), flush=True)
            return r["fixed s"]

        return _run

    vals = C.interleave({k: one(k) for k in sides}, args.rounds)
    rows = [{"lungray": k, **{c: C.median([r.get(c, float("nan")) for r in recs[k]]) for c in FIXED_COLS}} for k in sides]
    C.print_table(rows, "a sweep's fixed cost on the smoke grid (medians over rounds, wall seconds; load = 1-min load average at its start)")
    rows = [{"lungray": k, **{c: C.median([r.get(c, float("nan")) for r in recs[k]]) for c in CPU_COLS}} for k in sides]
    C.print_table(rows, "CPU seconds of the sweep's processes (medians; fixed = all of them minus the trials' train + eval)")
    b, a = list(sides)
    C.print_ratio("fixed_cost_after_vs_before", C.paired_ratio(vals[a], vals[b]), note="(median of per-round ratios; < 1: the fixed cost shrank to that fraction)")
    C.print_ratio("fixed_cost_after_seconds", C.median(vals[a]), note="(seconds, not a ratio: target <= 5 s)")
    cpu = {k: [r["fixed cpu s"] for r in recs[k]] for k in sides}
    C.print_ratio("fixed_cpu_after_vs_before", C.paired_ratio(cpu[a], cpu[b]),
                  note="(CPU seconds of the whole process tree beyond trial compute, as wall seconds: low under load)")
    tot = {k: [r["cpu total s"] for r in recs[k]] for k in sides}
    C.print_ratio("sweep_cpu_after_vs_before", C.paired_ratio(tot[a], tot[b]),
                  note="(CPU seconds of the whole process tree, the same trials on both sides)")
    saved = C.median([x - y for x, y in zip(tot[b], tot[a])])
    C.print_ratio("sweep_cpu_saved_seconds", saved, note="(seconds, not a ratio: median per-round CPU before - after; > 0: the fixed cost costs less CPU)")


#: section 4b: the parts of the fixed cost each change is about, before and after in fresh
#: processes (each prints ``{"cpu": process CPU s, "wall": s}`` of the timed part only)
PARTS = {
    "store: a new local MLflow store": (
        # before: MLflow's ~60 schema migrations; after: a copy of the empty store made once per machine
        "from mlflow.tracking import MlflowClient\nt = clock()\n"
        "MlflowClient(uri).get_experiment_by_name('Default')\ndone(t)",
        "from mlflow.tracking import MlflowClient\nfrom lungray.sweep.mlflow_run.connection import schema_template, seed_sqlite_store\n"
        "schema_template()\nt = clock()\nseed_sqlite_store(Path(db))\nMlflowClient(uri).get_experiment_by_name('Default')\ndone(t)",
    ),
    "first_trial_imports: a slot's first-trial imports (MLflow, torch, torch._dynamo)": (
        # before: one after the other; after: torch in a thread while MLflow imports (preload_training_stack)
        "t = clock()\nimport mlflow\nimport torch\nimport torch._dynamo\ndone(t)",
        "import threading\nt = clock()\ndef pre():\n    import torch\n    import torch._dynamo\n"
        "th = threading.Thread(target=pre)\nth.start()\nimport mlflow\nth.join()\ndone(t)",
    ),
    "ray: a local Ray started and stopped (tree CPU)": (
        "import ray\nt = clock()\nray.init(address='local', logging_level='ERROR')\nray.shutdown()\ndone(t)",
        "import ray\nfrom lungray.sweep.cluster import init_ray\nfrom lungray.sweep import local_ray as LR\nt = clock()\n"
        "init_ray('local', logging_level='ERROR')\nLR.shutdown()\ndone(t)",
    ),
}

_PART_PRELUDE = """import json, os, sys, time
from pathlib import Path
db = sys.argv[1]
uri = 'sqlite:///' + db
def clock():
    return (time.process_time(), time.perf_counter())
def done(t):
    print('PART ' + json.dumps({'cpu': time.process_time() - t[0], 'wall': time.perf_counter() - t[1]}), flush=True)
"""


def _part(code: str, out: Path, pythonpath: str) -> dict:
    db = out / f"part_{time.time_ns()}.db"
    cpu = TreeCPU(driver_args=["-c", "PART"])
    with cpu:
        r = subprocess.run([sys.executable, "-c", _PART_PRELUDE + code, str(db)], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": pythonpath})
        _reap_orphans()
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("PART ")]
    if r.returncode != 0 or not line:
        sys.stderr.write(r.stdout[-2000:] + r.stderr[-4000:])
        raise SystemExit(f"part failed (exit {r.returncode})")
    rec = json.loads(line[-1][5:])
    rec["tree cpu"] = cpu.by_role()["total"]  # Ray's processes too (the whole child tree)
    return rec


def bench_fixed_parts(args, out: Path) -> None:
    """Section 4b: each part alone, before and after, alternating over ``--rounds``."""
    here = os.environ.get("PYTHONPATH") or str(C.REPO)
    rows = []
    for key, (before, after) in PARTS.items():
        short, name = key.split(": ", 1)
        recs: dict[str, list[dict]] = {"before": [], "after": []}

        def one(side: str, code: str):
            def _run() -> float:
                r = _part(code, out, here)
                recs[side].append(r)
                return r["cpu"]

            return _run

        C.interleave({"before": one("before", before), "after": one("after", after)}, args.rounds, verbose=False)
        use = "tree cpu" if "tree CPU" in name else "cpu"
        for side in ("before", "after"):
            rows.append({"part": name, "side": side, "cpu s": C.median([r[use] for r in recs[side]]),
                         "wall s": C.median([r["wall"] for r in recs[side]]), "wall range": C.spread([r["wall"] for r in recs[side]])})
        C.print_ratio(f"part_cpu_after_vs_before_{short}",
                      C.paired_ratio([r[use] for r in recs["after"]], [r[use] for r in recs["before"]]), note=f"({name})")
    C.print_table(rows, f"section 4b: the fixed cost's parts, medians of {args.rounds} rounds (CPU of the timed part; Ray: its whole process tree)")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    os.environ.setdefault(HC, "0.2")
    _subreaper()
    C.print_header("bench_sweep: orchestration overhead", args, device="cpu")
    with C.work_dir(args.out, "lungray_bench_sweep_") as out:
        if not args.skip_startup:
            bench_startup(args, out)
        if not args.skip_sweeps:
            bench_sweeps(args, out)
        if args.baseline:
            bench_fixed_cost(args, out)
        if args.parts:
            bench_fixed_parts(args, out)
    C.print_load()
    return 0


if __name__ == "__main__":
    sys.exit(main())
