"""``lungray`` command line: data checks, the phantom, reports, MLflow re-sync.

Errors are one readable line (``lungray: error: ...``); ``-v`` shows the traceback. Sweeps are
run by the thin scripts in ``sweeps/`` (``python sweeps/size_study.py``), which share
:func:`lungray.sweep.cli.main`.
"""

from __future__ import annotations

import argparse
import logging
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
        "classes, an impossible split or size) or, with --strict, on any problem; 2 on a usage error.",
    )
    chk.add_argument("path", nargs="?", default=None, help="dataset root or file (omit for the phantom)")
    chk.add_argument("--source", default=None, help="adapter name (default: guessed from the layout)")
    chk.add_argument("--modality", default=None, help="covid_ct_xray: CT or X-ray")
    chk.add_argument("--class-map", nargs="*", default=[], metavar="SRC=DST")
    chk.add_argument("--sizes", nargs="*", type=int, default=[], help="training sizes to check the pool against")
    chk.add_argument("--eval-size", type=float, default=0.25)
    chk.add_argument("--val-size", type=float, default=0.1)
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

    rep = sub.add_parser("report", help="build the HTML report of a sweep from MLflow")
    rep.add_argument("--tracking-uri", default=None)
    g = rep.add_mutually_exclusive_group(required=True)
    g.add_argument("--experiment", default=None)
    g.add_argument("--run-id", default=None, help="the sweep's parent run id")
    rep.add_argument("--out", default="report")
    rep.add_argument("--no-gradcam", action="store_true")

    sync = sub.add_parser("mlflow-sync", help="rebuild the MLflow view of a sweep from its Ray experiment directory")
    sync.add_argument("experiment_dir")
    sync.add_argument("--tracking-uri", default=None)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        return _dispatch(args)
    except (LungrayError, FileNotFoundError) as e:
        if args.verbose:
            raise
        from lungray.data.check import printable  # a file or class name must not forge lines

        print(printable(f"lungray: error: {e}"), file=sys.stderr)
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
            strict=args.strict,
            allow_outside_root=args.allow_outside_root,
        )
        report = check_dataset(cfg, sizes=tuple(args.sizes), echo=print, decode_files=not args.quick)
        if not (args.no_duplicates or args.quick) and report.usable:
            from lungray.data.check import report_duplicates

            report_duplicates(cfg, report.manifest, args.cache_dir, echo=print)
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

        out = build_report(
            tracking_uri=args.tracking_uri,
            experiment=args.experiment,
            parent_run_id=args.run_id,
            out_dir=args.out,
            gradcam=not args.no_gradcam,
        )
        print(f"wrote {out}")
        return 0
    if args.command == "mlflow-sync":
        from lungray.sweep.sync import sync_mlflow

        n = sync_mlflow(args.experiment_dir, tracking_uri=args.tracking_uri)
        print(f"synced {n} trial(s) to MLflow")
        return 0
    raise LungrayError(f"unknown command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
