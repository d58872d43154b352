"""``lungray`` command line: data checks, the phantom, reports, MLflow re-sync, cluster checks and MLflow users.

Errors are one readable line (``lungray: error: ...``); ``-v`` shows the traceback. Sweeps are
run by the thin scripts in ``sweeps/`` (``python sweeps/size_study.py``), which share
:func:`lungray.sweep.cli.main`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from lungray.errors import LungrayError


def _kv(items: Sequence[str]) -> Optional[dict[str, Optional[str]]]:
    if not items:
        return None
    out: dict[str, Optional[str]] = {}
    for it in items:
        if "=" not in it:
            raise LungrayError(f"--class-map entries look like SOURCE=TARGET, got '{it}'")
        k, v = it.split("=", 1)
        out[k] = None if v.lower() in ("", "none", "null", "drop") else v
    return out


def build_parser() -> argparse.ArgumentParser:
    # the module docstring's first line, without its reStructuredText markup (``lungray``)
    p = argparse.ArgumentParser(prog="lungray", description=__doc__.splitlines()[0].replace("``", ""))
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="dataset tools")
    dsub = data.add_subparsers(dest="data_command", required=True)
    chk = dsub.add_parser(
        "check",
        help="validate a dataset before anything trains",
        description="Decode every file and check labels and splits. Exit status: 0 when the dataset can be "
        "used (quarantined files and warnings are listed), 1 when it cannot (no images, fewer than two "
        "classes, an impossible split or size, a split that loses a class or holds too few of one, a duplicate "
        "cluster too large to be copies) or, with --strict, on any problem; 2 on a usage error.",
    )
    chk.add_argument("path", nargs="?", default=None, help="dataset root or file (omit for the phantom)")
    chk.add_argument("--source", default=None, help="adapter name (default: guessed from the layout)")
    chk.add_argument("--modality", default=None, help="covid_ct_xray: CT or X-ray")
    chk.add_argument("--class-map", nargs="*", default=[], metavar="SRC=DST",
                     help="rename source classes (SRC=DST) or drop them (SRC=drop), as data.class_map does")
    chk.add_argument("--sizes", nargs="*", type=int, default=[], help="training sizes to check the pool against")
    chk.add_argument("--eval-size", type=float, default=None,
                     help="held-out evaluation images: a count (>= 1) or a fraction (< 1) of the dataset "
                     "(default: the study's data.eval_size; 300 for the built-in phantom)")
    chk.add_argument("--val-size", type=float, default=None,
                     help="validation images: a count or a fraction of what remains after the evaluation set "
                     "(default: the study's data.val_size; 100 for the built-in phantom)")
    chk.add_argument("--min-eval-per-class", type=int, default=None,
                     help="refuse a split with fewer evaluation images of a class (default: data.min_eval_per_class, 10)")
    chk.add_argument("--min-val-per-class", type=int, default=None,
                     help="refuse a split with fewer validation images of a class (default: data.min_val_per_class, 3)")
    chk.add_argument("--strict", action="store_true", help="exit 1 on any problem or warning instead of quarantining")
    chk.add_argument("--quick", action="store_true", help="header checks only: do not decode the pixels")
    chk.add_argument(
        "--allow-outside-root", action="store_true", help="csv: read rows that point outside the CSV's folder"
    )
    chk.add_argument("--no-duplicates", action="store_true", help="skip the duplicate search (it decodes every image once)")
    chk.add_argument("--cache-dir", default="lungray_runs/cache",
                     help="where the duplicate search decodes the images to (default: lungray_runs/cache, the cache "
                     "a sweep with the same data settings reuses)")
    chk.add_argument("--manifest-out", default=None, help="write the manifest (problem reasons, hashes) here")

    which = dsub.add_parser("which", help="the file behind a (hashed) image id, from the local manifests")
    which.add_argument("image_id", nargs="+", help="image ids as they appear in reports, MLflow and predictions.csv")
    which.add_argument("--output", default="lungray_runs", help="the sweep's output folder (its cache/ is searched)")
    which.add_argument("--cache-dir", default=None, help="the data.cache_dir, when set")

    ph = sub.add_parser("phantom", help="write a sample sheet (and optionally DICOMs) of the phantom")
    ph.add_argument("--out", default=str(Path("lungray_runs") / "phantom_sheet.png"),
                    help="the PNG sheet to write (default: lungray_runs/phantom_sheet.png, beside the sweeps' output)")
    ph.add_argument("--classes", type=int, default=4, choices=[2, 4], help="2 (Normal, COVID) or 4 classes")
    ph.add_argument("--per-class", type=int, default=4, help="images per class on the sheet")
    ph.add_argument("--resolution", type=int, default=256, help="image side in pixels")
    ph.add_argument("--difficulty", type=float, default=1.0,
                    help="lesion subtlety: 1.0 the generator's default, lower is easier (the default preset uses 0.5)")
    ph.add_argument("--seed", type=int, default=0, help="generator seed (the same seed gives the same images)")
    ph.add_argument("--dicom-dir", default=None, help="also write the images as DICOM files here")

    rep = sub.add_parser("report", help="build the HTML report of a sweep from MLflow (default: the latest sweep in lungray_runs/)")
    rep.add_argument("--tracking-uri", default=None,
                     help="MLflow store (default: $MLFLOW_TRACKING_URI, else the sweeps' default sqlite:///lungray_runs/mlflow.db)")
    g = rep.add_mutually_exclusive_group()
    g.add_argument("--experiment", default=None, help="experiment name (default: the latest sweep's)")
    g.add_argument("--run-id", default=None, help="the sweep's parent run id")
    rep.add_argument("--out", default=None, metavar="DIR",
                     help="output folder (default: report/ beside the store's mlflow.db, i.e. lungray_runs/report/)")
    rep.add_argument("--no-gradcam", action="store_true",
                     help="skip the Grad-CAM panels and the pointing game (no model is rebuilt, no torch import)")
    rep.add_argument("--print-figures", action="store_true",
                     help="also write every figure under DIR/figures/ as a 300-dpi PNG, SVG and PDF, 180 mm wide "
                     "(the page itself always embeds its figures)")

    sync = sub.add_parser("mlflow-sync", help="rebuild the MLflow view of a sweep from its Ray experiment directory")
    sync.add_argument("experiment_dir", help="the sweep's experiment directory (lungray_runs/<study>_<stamp>)")
    sync.add_argument("--tracking-uri", default=None,
                      help="MLflow store to write to (default: the one the sweep used, from its sweep.json)")

    cc = sub.add_parser("check-cluster", help="validate a Ray cluster YAML (Ray's schema + lungray's security rules) before `ray up`")
    cc.add_argument("path", nargs="?", default="cluster.yaml", help="the cluster YAML (default: cluster.yaml)")
    cc.add_argument("--no-server", action="store_true",
                    help="skip the local run of the head's MLflow server command (it needs mlflow[auth] here)")

    ma = sub.add_parser("mlflow-auth", help="on a cluster head: the MLflow admin (head only) and the non-admin runs user, before `mlflow server`")
    ma.add_argument("--server-env", default="~/.lungray/mlflow_server.env",
                    help="head-only file (0600) for the admin password and the auth app's secret key, created when missing")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from lungray.redact import configure_logging, redact

    configure_logging(args.verbose)
    try:
        return _dispatch(args)
    except (LungrayError, FileNotFoundError) as e:
        if args.verbose:
            raise
        from lungray.data.check import printable  # a file or class name must not forge lines

        print(printable(f"lungray: error: {redact(str(e))}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lungray: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - an MLflow server's 401/403 is one line too (report, mlflow-sync)
        from lungray.sweep.mlflow_run import refusal

        why = refusal(e)
        if why is None or args.verbose:
            raise
        print(f"lungray: error: {redact(why)}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "data" and args.data_command == "which":
        from lungray.data.check import printable
        from lungray.data.manifest import find_image_ids

        found = find_image_ids(args.image_id, args.cache_dir or Path(args.output) / "cache")
        for image_id in args.image_id:
            hit = found.get(image_id)
            fields = (image_id, hit["path"], hit["label"]) if hit else (image_id, "not found")
            print("\t".join(printable(f) for f in fields))
        return 0 if len(found) == len(set(args.image_id)) else 1
    if args.command == "data":
        from lungray.data.check import check_dataset, exit_status, guess_source

        source = args.source or (guess_source(args.path) if args.path else "phantom")
        cfg = data_check_config(args, source)
        report = check_dataset(cfg, sizes=tuple(args.sizes), echo=print, decode_files=not args.quick)
        if not (args.no_duplicates or args.quick) and report.usable:
            from lungray.data.check import report_duplicates

            dup = report_duplicates(cfg, report.manifest, args.cache_dir, echo=print)
            # a cluster the audit chained and the split it forces are errors too (issue 18): exit 1
            report.dataset_problems += dup["problems"]
            report.problems += dup["problems"]
        if args.manifest_out:
            report.manifest.to_parquet(args.manifest_out)
        status = exit_status(report, strict=args.strict)
        if not report.usable:
            print(f"data check failed: the dataset cannot be used ({len(report.dataset_problems)} error(s) above)", file=sys.stderr)
        elif status:
            print(f"data check failed (--strict): {len(report.problems)} problem(s) above", file=sys.stderr)
        return status
    if args.command == "phantom":
        from lungray.data.phantom import write_sample_sheet

        path = write_sample_sheet(
            args.out,
            n_classes=args.classes,
            per_class=args.per_class,
            resolution=args.resolution,
            difficulty=args.difficulty,
            seed=args.seed,
            dicom_dir=args.dicom_dir,
        )
        print(f"wrote {path}")
        return 0
    if args.command == "report":
        from lungray.report import build_report
        from lungray.report.figures import FIGURE_FORMATS

        uri = report_tracking_uri(args.tracking_uri)
        run_id = args.run_id or (None if args.experiment else latest_sweep(uri))
        try:
            out = build_report(tracking_uri=uri, experiment=args.experiment, parent_run_id=run_id,
                               out_dir=args.out or default_report_dir(uri), gradcam=not args.no_gradcam,
                               figure_formats=FIGURE_FORMATS if args.print_figures else ())
        except LungrayError as e:
            raise LungrayError(f"{e} (tracking URI searched: {uri})") from e
        print(f"wrote {out}")
        return 0
    if args.command == "mlflow-sync":
        from lungray.sweep.sync import sync_mlflow

        n = sync_mlflow(args.experiment_dir, tracking_uri=args.tracking_uri)
        print(f"synced {n} trial(s) to MLflow")
        return 0
    if args.command == "check-cluster":
        from lungray.sweep.cluster import validate_cluster_yaml

        cfg = validate_cluster_yaml(args.path)
        served = ""
        if not args.no_server:
            from lungray.sweep.cluster_server import try_server_command

            served = f"; {try_server_command(cfg, args.path)}"
        print(f"{args.path}: OK (Ray's schema, SSH from your group only, MLflow with authentication, a private /efs/lungray){served}")
        return 0
    if args.command == "mlflow-auth":
        from lungray.sweep.mlflow_auth import setup_head

        setup_head(Path(os.path.expanduser(args.server_env)))
        return 0
    raise LungrayError(f"unknown command {args.command}")


def data_check_config(args: argparse.Namespace, source: str):
    """The :class:`~lungray.config.DataConfig` ``lungray data check`` checks.

    Without a path that is the built-in phantom exactly as the default study (``python
    sweeps/size_study.py``) makes it (images, difficulty, resolution, split sizes), so the
    check, its duplicate search and its decoded cache are the sweep's, not another phantom's.
    """
    from dataclasses import replace

    from lungray.config import DataConfig, resolve_study

    base = resolve_study("default").data if (source == "phantom" and not args.path) else DataConfig(source=source)

    def size(v, default):
        return default if v is None else (int(v) if v >= 1 else v)

    return replace(
        base,
        source=source,
        path=args.path,
        modality=args.modality,
        class_map=_kv(args.class_map),
        eval_size=size(args.eval_size, base.eval_size),
        val_size=size(args.val_size, base.val_size),
        min_eval_per_class=base.min_eval_per_class if args.min_eval_per_class is None else args.min_eval_per_class,
        min_val_per_class=base.min_val_per_class if args.min_val_per_class is None else args.min_val_per_class,
        strict=args.strict,
        allow_outside_root=args.allow_outside_root,
    )


def default_report_dir(uri: str) -> Path:
    """Where ``lungray report`` writes without ``--out``: ``report/`` beside a sqlite store's
    ``mlflow.db`` (``lungray_runs/report/`` for the sweeps' default store), else under the
    sweeps' default output folder; never a new folder in the current directory."""
    from lungray.config import StudyConfig
    from lungray.tracking import is_sqlite

    if is_sqlite(uri) and uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).parent / "report"
    return Path(StudyConfig.output_dir) / "report"


def report_tracking_uri(explicit: Optional[str]) -> str:
    """The store ``lungray report`` reads: ``--tracking-uri``, else where a sweep writes by default
    (``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/lungray_runs/mlflow.db``). A sqlite file that
    does not exist is an error naming it, never a new empty store created in passing."""
    from pathlib import Path

    from lungray.config import StudyConfig
    from lungray.tracking import is_sqlite

    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(StudyConfig.output_dir).resolve() / 'mlflow.db')}"
    if is_sqlite(uri):
        path = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
        if path is not None and not path.is_file():
            raise LungrayError(
                f"no MLflow store at {uri}: run a sweep first (python sweeps/size_study.py writes lungray_runs/mlflow.db), "
                "run this from the folder that holds lungray_runs/, or pass --tracking-uri (a sweep prints its URI)"
            )
    return uri


def latest_sweep(uri: str) -> str:
    """The parent run id of the most recently started lungray sweep in ``uri``."""
    from lungray import tracking as T
    from lungray.sweep import mlflow_run as M

    c = M.client(uri)
    exps = [e.experiment_id for e in M.retry(lambda: c.search_experiments())]
    runs = M.retry(lambda: c.search_runs(exps, filter_string=f"tags.`{T.ROLE}` = '{T.ROLE_SWEEP}'",
                                         order_by=["attributes.start_time DESC"], max_results=1)) if exps else []
    if not runs:
        raise LungrayError(f"no lungray sweep in {uri}; pass --tracking-uri of the store a sweep wrote to")
    return runs[0].info.run_id


if __name__ == "__main__":
    sys.exit(main())
