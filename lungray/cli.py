"""``lungray`` command line: data checks, the phantom, reports, MLflow re-sync.

Errors are one readable line (``lungray: error: ...``); ``-v`` shows the traceback. Sweeps are
run by the thin scripts in ``sweeps/`` (``python sweeps/size_study.py``), which share
:func:`lungray.sweep.cli.main`.
"""

from __future__ import annotations

import argparse
import logging
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
    p = argparse.ArgumentParser(prog="lungray", description=__doc__.splitlines()[0])
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
    chk.add_argument("--class-map", nargs="*", default=[], metavar="SRC=DST")
    chk.add_argument("--sizes", nargs="*", type=int, default=[], help="training sizes to check the pool against")
    chk.add_argument("--eval-size", type=float, default=0.25)
    chk.add_argument("--val-size", type=float, default=0.1)
    chk.add_argument("--min-eval-per-class", type=int, default=10, help="refuse a split with fewer evaluation images of a class")
    chk.add_argument("--min-val-per-class", type=int, default=3, help="refuse a split with fewer validation images of a class")
    chk.add_argument("--strict", action="store_true", help="exit 1 on any problem or warning instead of quarantining")
    chk.add_argument("--quick", action="store_true", help="header checks only: do not decode the pixels")
    chk.add_argument(
        "--allow-outside-root", action="store_true", help="csv: read rows that point outside the CSV's folder"
    )
    chk.add_argument("--no-duplicates", action="store_true", help="skip the duplicate search (it decodes every image once)")
    chk.add_argument("--cache-dir", default="lungray_runs/cache", help="decoded cache for the duplicate search")
    chk.add_argument("--manifest-out", default=None, help="write the manifest (problem reasons, hashes) here")

    which = dsub.add_parser("which", help="the file behind a (hashed) image id, from the local manifests")
    which.add_argument("image_id", nargs="+")
    which.add_argument("--output", default="lungray_runs", help="the sweep's output folder (its cache/ is searched)")
    which.add_argument("--cache-dir", default=None, help="the data.cache_dir, when set")

    ph = sub.add_parser("phantom", help="write a sample sheet (and optionally DICOMs) of the phantom")
    ph.add_argument("--out", default="phantom_sheet.png")
    ph.add_argument("--classes", type=int, default=4, choices=[2, 4])
    ph.add_argument("--per-class", type=int, default=4)
    ph.add_argument("--resolution", type=int, default=256)
    ph.add_argument("--difficulty", type=float, default=1.0)
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--dicom-dir", default=None, help="also write the images as DICOM files here")

    rep = sub.add_parser("report", help="build the HTML report of a sweep from MLflow (default: the latest sweep in lungray_runs/)")
    rep.add_argument("--tracking-uri", default=None,
                     help="MLflow store (default: $MLFLOW_TRACKING_URI, else the sweeps' default sqlite:///lungray_runs/mlflow.db)")
    g = rep.add_mutually_exclusive_group()
    g.add_argument("--experiment", default=None, help="experiment name (default: the latest sweep's)")
    g.add_argument("--run-id", default=None, help="the sweep's parent run id")
    rep.add_argument("--out", default="report")
    rep.add_argument("--no-gradcam", action="store_true")

    sync = sub.add_parser("mlflow-sync", help="rebuild the MLflow view of a sweep from its Ray experiment directory")
    sync.add_argument("experiment_dir")
    sync.add_argument("--tracking-uri", default=None)

    cc = sub.add_parser("check-cluster", help="validate a Ray cluster YAML (Ray's schema + lungray's security rules) before `ray up`")
    cc.add_argument("path", nargs="?", default="cluster.yaml")
    return p


def configure_logging(verbose: bool, level: int = logging.INFO) -> None:
    """Console logging at ``level``; ``-v`` adds lungray's debug lines and libraries' INFO lines,
    never their DEBUG lines (PIL alone writes one per PNG chunk it reads). Every record is
    redacted (:func:`lungray.redact.install_log_redaction`)."""
    from lungray.redact import install_log_redaction

    logging.basicConfig(level=logging.INFO if verbose else level, format="%(message)s")
    if verbose:
        logging.getLogger("lungray").setLevel(logging.DEBUG)
    install_log_redaction()  # credentials never reach the console (issue 15)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    from lungray.redact import redact
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
        from lungray.config import DataConfig
        from lungray.data.check import check_dataset, exit_status, guess_source

        source = args.source or (guess_source(args.path) if args.path else "phantom")
        cfg = DataConfig(
            source=source,
            path=args.path,
            modality=args.modality,
            class_map=_kv(args.class_map),
            eval_size=int(args.eval_size) if args.eval_size >= 1 else args.eval_size,
            val_size=int(args.val_size) if args.val_size >= 1 else args.val_size,
            min_eval_per_class=args.min_eval_per_class,
            min_val_per_class=args.min_val_per_class,
            strict=args.strict,
            allow_outside_root=args.allow_outside_root,
        )
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

        uri = report_tracking_uri(args.tracking_uri)
        run_id = args.run_id or (None if args.experiment else latest_sweep(uri))
        try:
            out = build_report(tracking_uri=uri, experiment=args.experiment, parent_run_id=run_id, out_dir=args.out, gradcam=not args.no_gradcam)
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

        validate_cluster_yaml(args.path)
        print(f"{args.path}: OK (Ray's schema, SSH from your group only, MLflow with authentication, a private /efs/lungray)")
        return 0
    raise LungrayError(f"unknown command {args.command}")


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
