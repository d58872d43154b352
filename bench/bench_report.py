"""How long does the report of a sweep take, before and after issue 22.4? Side by side, one run.

Issue 22.4 / 20.5: ``lungray report`` took 102 s wall (41 s of CPU) for the default preset on 2
CPUs, and the sweep's own report step 76 s. Where it went: Grad-CAM (42 separate forward/backward
passes), figure files (10 figures x 4 formats: print PNG, SVG, PDF and the page's PNG) and
imports. The target: <= 15 s on 2 CPUs.

What this measures, on ONE sweep that is already in MLflow (``--store``/``--run-id``; default:
a fresh one made here, ``--quick`` the smoke grid with one seed, else the default preset):

1. ``lungray report`` as a user runs it: a fresh ``python -m lungray report`` process, imports
   included; wall time and CPU time (user + system of the child). ``before`` is the lungray
   tree of ``--before`` (a git revision, extracted with ``git archive``; default: the commit
   this work started from), ``after`` this tree. ``after, print files`` adds ``--print-figures``
   (the before build always wrote them).
2. The sweep's own report step: ``build_report`` called in a process that has already imported
   what a sweep driver holds at its end (Ray Tune, MLflow with its store open, torch, lungray's
   sweep runner and data layer), as :func:`lungray.sweep.runner._build_report` calls it, without
   logging the files to the run (which would change the store between rounds).
3. ``--profile``: one more build of each tree under cProfile, and the cumulative seconds of
   the parts (imports are not in it: they happen before the profiled call).

Variants alternate every round (A B, B A, ...: :func:`_common.interleave`) and the ratios are the
median of the per-round ratios, so drift of a shared machine cancels out. Nothing is asserted:
``tests/test_bench.py`` runs ``--quick`` and checks the ratio lines exist.

Run: ``python bench/bench_report.py --store sqlite:///lungray_runs/mlflow.db`` (its latest sweep),
``--quick`` (CI smoke, a few minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

#: The commit before the report was made faster (issue 22.4): the "today's build" of the issue.
BEFORE_REV = "f75bbc7bafefc7bb7ea610604d0a79cbaf038683"

#: What a sweep driver has imported when its report step starts (lungray.sweep.runner's run).
DRIVER_IMPORTS = """
import ray, ray.tune, torch, mlflow
from mlflow import MlflowClient
import lungray.sweep.runner, lungray.sweep.mlflow_run, lungray.data.prepare
MlflowClient({uri!r}).search_experiments()
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the smoke grid with one seed, one round (CI smoke)")
    p.add_argument("--store", default=None, metavar="URI", help="MLflow store holding the sweep (default: make one here)")
    p.add_argument("--run-id", default=None, help="the sweep's parent run id (default: the store's latest sweep)")
    p.add_argument("--before", default=BEFORE_REV, metavar="REV", help="git revision of the 'before' build")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds per variant")
    p.add_argument("--no-step", dest="step", action="store_false", help="skip the sweep-step (warm process) measurement")
    p.add_argument("--profile", action="store_true", help="also profile one in-process build of each tree")
    p.add_argument("--out", default=None, help="work folder (kept); default: a temp folder, removed")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: run one build in this process
    p.add_argument("--tree", default=None, help=argparse.SUPPRESS)
    p.add_argument("--report-out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--formats", default="", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ------------------------------------------------------------------------------ the sweep


def make_sweep(work: Path, quick: bool) -> tuple[str, str]:
    """A real sweep (no report) in ``work``: the smoke grid with one seed, or the default preset."""
    from lungray.report.load import latest_sweep_id
    from lungray.study import load_study
    from lungray.sweep.runner import run_study

    out = work / "sweep"
    uri = f"sqlite:///{out / 'mlflow.db'}"
    preset, extra = ("smoke", ["seeds=[0]"]) if quick else ("default", [])
    cfg = load_study(preset, overrides=[f"output_dir={out}", f"tracking.tracking_uri={uri}", *extra])
    print(f"making a {preset} sweep ({len(cfg.trials())} trials, no report) in {out} ...", flush=True)
    with C.Timer() as t:
        run_study(cfg, report=False, echo=lambda s: None)
    print(f"  done in {t.s:.0f} s", flush=True)
    return uri, latest_sweep_id(uri)


def extract_tree(rev: str, dst: Path) -> Path:
    """The ``lungray`` package of git revision ``rev``, unpacked under ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    arch = dst / "tree.tar"
    with open(arch, "wb") as f:
        subprocess.run(["git", "-C", str(C.REPO), "archive", rev, "lungray"], stdout=f, check=True)
    with tarfile.open(arch) as t:
        t.extractall(dst, filter="data")
    arch.unlink()
    return dst


# ------------------------------------------------------------------------------ one build


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_cli(tree: Path, uri: str, run_id: str, out: Path, print_figures: bool) -> dict:
    """``python -m lungray report`` in a fresh process with ``tree`` first on the path."""
    env = {**os.environ, "PYTHONPATH": str(tree), "TQDM_DISABLE": "1"}
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "lungray", "report", "--tracking-uri", uri, "--run-id", run_id, "--out", str(out)]
    if print_figures:
        cmd.append("--print-figures")
    cpu0, t0 = _child_cpu(), time.perf_counter()
    # run from the output folder: `python -m` puts the current folder first on the path, which
    # from this checkout would shadow the tree under test
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=out.parent)
    wall, cpu = time.perf_counter() - t0, _child_cpu() - cpu0
    text = (r.stdout + r.stderr).strip()
    partial = r.returncode == 2 and "failed part" in text and (out / "report.html").is_file()
    if r.returncode != 0 and not partial:
        raise RuntimeError(f"lungray report ({tree}) exited {r.returncode}: {text[-2000:]}")
    if partial and str(tree) not in _PARTIAL:
        # an older tree may not read a newer sweep's configs (e.g. a model key added since): it
        # writes the report with that part in a red box and exits 2; it then did less work, so
        # its time is a lower bound and the after/before ratio errs against the new build
        _PARTIAL.add(str(tree))
        print(f"  note: {tree.name} build wrote its report with failed part(s), its time is a lower bound: "
              f"{text.splitlines()[-1][:240]}", flush=True)
    lines = [ln for ln in text.splitlines() if not partial or "failed part" not in ln]
    return {"wall": wall, "cpu": cpu, "console_lines": len(lines)}


_PARTIAL: set = set()  # trees whose report had failed parts (noted once)


def check_tree(tree: Path, cwd: Path) -> None:
    """The lungray a subprocess imports with ``tree`` on its path, from ``cwd``, is ``tree``'s."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cwd.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([sys.executable, "-c", "import lungray; print(lungray.__file__)"], env=env, cwd=cwd,
                       capture_output=True, text=True, check=True)
    if not Path(r.stdout.strip()).resolve().is_relative_to(Path(tree).resolve()):
        raise RuntimeError(f"a subprocess imports {r.stdout.strip()}, not the tree under test {tree}")


def run_step(tree: Path, uri: str, run_id: str, out: Path, formats: str, profile: bool = False) -> dict:
    """The sweep's report step: ``build_report`` in a process warmed up like a sweep driver."""
    env = {**os.environ, "PYTHONPATH": str(tree), "TQDM_DISABLE": "1"}
    cmd = [sys.executable, __file__, "--worker", "profile" if profile else "step", "--tree", str(tree), "--store", uri,
           "--run-id", run_id, "--report-out", str(out), "--formats", formats]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(Path(tree).parent))
    if r.returncode != 0:
        raise RuntimeError(f"report step ({tree}) exited {r.returncode}: {(r.stdout + r.stderr)[-3000:]}")
    return json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1])


#: cProfile entries shown by --profile: (label, function name, file suffix)
PROFILED = [
    ("whole build_report", "build_report", "report/build.py"),
    ("read the sweep from MLflow", "load_sweep", "report/load.py"),
    ("sections 7-8: Grad-CAM + pointing", "gradcam_sections", "report/explain.py"),
    ("  rebuild checkpoints", "load_checkpoint_model", "report/gradcam.py"),
    ("  CAM passes (old: compute_cams)", "compute_cams", "report/gradcam.py"),
    ("  CAM passes (new: cam_pass)", "cam_pass", "report/gradcam.py"),
    ("figures: print files", "save_figure", "report/figures.py"),
    ("figures: page PNGs", "to_png", "report/figures.py"),
    ("interval bootstraps (summarise)", "summarise", "report/tables.py"),
]


def worker(args: argparse.Namespace) -> None:
    """One build in this process (``--worker step|profile``); prints one JSON line."""
    sys.path.insert(0, args.tree)  # the tree under test first, before this checkout
    exec(DRIVER_IMPORTS.format(uri=args.store), {})
    import inspect

    import lungray
    from lungray.report.build import build_report

    if not Path(lungray.__file__).resolve().is_relative_to(Path(args.tree).resolve()):
        raise RuntimeError(f"imported {lungray.__file__}, not the tree under test {args.tree}")
    kw = {"figure_formats": tuple(f for f in args.formats.split(",") if f)}
    if "figure_formats" not in inspect.signature(build_report).parameters:
        kw = {}  # the before build: it always wrote every format
    def call():
        try:
            build_report(args.store, parent_run_id=args.run_id, out_dir=args.report_out, gradcam=True, **kw)
        except Exception as e:  # noqa: BLE001 - an older tree's partial report (see run_cli): a lower bound
            if type(e).__name__ != "ReportIncomplete":
                raise
    cpu0, t0 = time.process_time(), time.perf_counter()
    if args.worker == "profile":
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.runcall(call)
        stats = pstats.Stats(prof).stats
        parts = {}
        for label, func, suffix in PROFILED:
            hits = [v[3] for (file, _, name), v in stats.items() if name == func and file.endswith(suffix)]
            if hits:
                parts[label] = max(hits)
    else:
        call()
        parts = {}
    print(json.dumps({"wall": time.perf_counter() - t0, "cpu": time.process_time() - cpu0, "parts": parts}), flush=True)


# ------------------------------------------------------------------------------ main


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    if args.quick:
        args.repeats = 1
    C.print_header("bench_report", args)
    with C.work_dir(args.out, "lungray-bench-report-") as work:
        if args.store:
            from lungray.report.load import latest_sweep_id

            uri, run_id = args.store, args.run_id or latest_sweep_id(args.store)
        else:
            uri, run_id = make_sweep(work, args.quick)
        trees = {"before": extract_tree(args.before, work / "before"), "after": C.REPO}
        for tree in trees.values():
            check_tree(tree, work / "out")
        print(f"sweep {run_id} in {uri}; before = {args.before[:12]} ({trees['before']}), after = this tree", flush=True)
        results: dict[str, list[dict]] = {}

        def variant(name: str, fn):
            def go() -> float:
                res = fn(work / "out" / name.replace(" ", "_").replace(",", ""))
                results.setdefault(name, []).append(res)
                return res["wall"]

            return go

        variants = {
            "cli before": variant("cli before", lambda o: run_cli(trees["before"], uri, run_id, o, False)),
            "cli after": variant("cli after", lambda o: run_cli(trees["after"], uri, run_id, o, False)),
            "cli after, print files": variant("cli after, print files", lambda o: run_cli(trees["after"], uri, run_id, o, True)),
        }
        if args.step:
            variants["step before"] = variant("step before", lambda o: run_step(trees["before"], uri, run_id, o, ""))
            variants["step after"] = variant("step after", lambda o: run_step(trees["after"], uri, run_id, o, ""))
        print("\nwall seconds per build (interleaved rounds):", flush=True)
        walls = C.interleave(variants, args.repeats)
        rows = []
        for name, vals in walls.items():
            cpu = [r["cpu"] for r in results[name]]
            row = {"variant": name, "wall s (median)": C.median(vals), "wall range": C.spread(vals),
                   "cpu s (median)": C.median(cpu)}
            if name.startswith("cli"):
                row["console lines"] = results[name][-1]["console_lines"]
            rows.append(row)
        C.print_table(rows, "lungray report and the sweep's report step, same sweep, same machine")
        cpu = {n: [r["cpu"] for r in results[n]] for n in results}
        C.print_ratio("report_cli_wall_after_vs_before", C.paired_ratio(walls["cli after"], walls["cli before"]))
        C.print_ratio("report_cli_cpu_after_vs_before", C.paired_ratio(cpu["cli after"], cpu["cli before"]))
        C.print_ratio("report_cli_print_files_vs_none", C.paired_ratio(walls["cli after, print files"], walls["cli after"]))
        if args.step:
            C.print_ratio("report_step_wall_after_vs_before", C.paired_ratio(walls["step after"], walls["step before"]))
            C.print_ratio("report_step_cpu_after_vs_before", C.paired_ratio(cpu["step after"], cpu["step before"]))
        after = C.median(walls["cli after"])
        print(f"lungray report after: {after:.1f} s wall, {C.median(cpu['cli after']):.1f} s CPU "
              f"(target <= 15 s on 2 CPUs; wall is inflated by the load below)", flush=True)
        if args.profile:
            prof = {n: run_step(trees[n], uri, run_id, work / "out" / f"profile_{n}", "", profile=True) for n in ("before", "after")}
            rows = [{"part (cumulative s, cProfile)": label, "before": prof["before"]["parts"].get(label, float("nan")),
                     "after": prof["after"]["parts"].get(label, float("nan"))} for label, _, _ in PROFILED]
            C.print_table(rows, "where an in-process build spends its time (one profiled build each; imports excluded)")
        C.print_load()


if __name__ == "__main__":
    main()
