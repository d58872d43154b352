"""The command line shared by the study scripts in ``sweeps/``.

``python sweeps/size_study.py`` runs the study's default preset; every script accepts::

    --preset NAME          a named preset (smoke, default, paper, transfer)
    --config FILE.yaml     layered on the preset (same nested keys)
    --set a.b=value        layered last; repeatable (``--set sizes=[50,100] --set seeds=[0]``)
    --data PATH            the dataset (sets data.path; --source names the adapter, else guessed)
    --output DIR           where experiment directories, the cache and mlflow.db go
    --tracking-uri URI     an MLflow server (default: $MLFLOW_TRACKING_URI or sqlite in --output)
    --dry-run              print the grid, resources and cluster; run nothing
    --resume DIR           finish an interrupted sweep (only its unfinished trials)
    --no-report            skip the HTML report
    --address ADDR         Ray address (default: auto when RAY_ADDRESS is set)
    -v                     full config, Tune's own tables, Ray's and MLflow's info lines, tracebacks

Errors are one line (``size_study.py: error: ...``), found before anything trains. The console
shows a few lines about the study (:func:`config_summary`; the full resolved config goes to
``<experiment dir>/config.yaml``), then one line per finished trial with an ETA, then the
summary table, the report, the MLflow UI address and the disk used.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Callable, Optional, Sequence

from lungray.errors import LungrayError


def build_parser(prog: Optional[str] = None, default_preset: str = "default", description: Optional[str] = None) -> argparse.ArgumentParser:
    from lungray.presets import preset_names

    p = argparse.ArgumentParser(prog=prog, description=description or "Run a lungray study on Ray Tune + Ray Train with MLflow tracking.")
    p.add_argument("--preset", default=None, choices=preset_names(), help=f"study preset (default: {default_preset})")
    p.add_argument("--config", default=None, metavar="FILE", help="YAML file layered on the preset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--data", default=None, metavar="PATH", help="dataset path (sets data.path)")
    p.add_argument("--source", default=None, help="dataset adapter (default: guessed from --data's layout)")
    p.add_argument("--output", default=None, metavar="DIR", help="output directory (sets output_dir)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (sets tracking.tracking_uri)")
    p.add_argument("--dry-run", action="store_true", help="print the grid, resources and cluster; run nothing")
    p.add_argument("--resume", default=None, metavar="DIR", help="resume the sweep in this experiment directory")
    p.add_argument("--no-report", action="store_true", help="do not build the HTML report")
    p.add_argument("--address", default=None, help="Ray address: auto, host:port or local")
    p.add_argument("--cluster-config", default=None, metavar="YAML", help="autoscaling config whose node types the preflight may count")
    p.add_argument("-v", "--verbose", action="store_true", help="full config, Tune tables, tracebacks")
    return p


def config_summary(cfg, source: str, grid: bool = True) -> list[str]:
    """A few lines that say what will run (the full config is written to the experiment directory).

    ``grid=False`` leaves out the grid line: a dry run prints the grid itself, once, as its
    first line and table (:func:`lungray.sweep.grid.dry_run_text`)."""
    from lungray.sweep.grid import n_trials

    def axis(name: str, values: list) -> str:
        return f"{len(values)} {name}{'s' if len(values) != 1 else ''} ({', '.join(map(str, values))})"

    from lungray.train.tasks import TASKS

    d = cfg.data
    data = f"{d.source}{' ' + str(d.path) if d.path else ''}, {d.resolution} px"
    loss = TASKS.get(cfg.train.task).loss_name(cfg.train.loss)
    lines = [
        f"# study {cfg.name} ({source}), grid fingerprint {cfg.fingerprint()}",
        f"#   {axis('model', [m.key for m in cfg.models])} x {axis('size', list(cfg.sizes))} x "
        f"{axis('optimizer', [o.key for o in cfg.optimizers])} x {axis('seed', list(cfg.seeds))}{' x 2 (each with its source probe)' if cfg.probes.source else ''} = {n_trials(cfg)} trials",
        f"#   task: {cfg.train.task} (loss: {loss}); data source: {data}; output: {cfg.output_dir} (full resolved config: config.yaml in the experiment directory; -v prints it)",
    ]
    return lines if grid else [lines[0], lines[2]]


def resolve_config(args: argparse.Namespace, default_preset: str = "default"):
    """The study config from preset -> YAML -> --data/--source/--output/--tracking-uri -> --set.

    With ``--resume DIR`` and no grid-changing option, the config saved in DIR is used.
    """
    from lungray.study import load_study, validate_study

    grid_args = args.preset or args.config or args.overrides or args.data or args.source
    if args.resume and not grid_args:
        from lungray.config import replace_in
        from lungray.sweep.runner import load_saved_config

        cfg = load_saved_config(args.resume)
        changes: dict[str, Any] = {}
        if args.output:
            changes["output_dir"] = args.output
        if args.tracking_uri:
            changes["tracking__tracking_uri"] = args.tracking_uri
        if args.no_report:
            changes["report"] = False
        return validate_study(replace_in(cfg, **changes) if changes else cfg)
    overrides: list[str] = []
    if args.data:
        source = args.source
        if source is None:
            from lungray.data.check import guess_source

            source = guess_source(args.data)
        overrides += [f"data.path={args.data}", f"data.source={source}"]
    elif args.source:
        overrides.append(f"data.source={args.source}")
    if args.output:
        overrides.append(f"output_dir={args.output}")
    if args.tracking_uri:
        overrides.append(f"tracking.tracking_uri={args.tracking_uri}")
    if args.no_report:
        overrides.append("report=false")
    overrides += list(args.overrides)
    preset = args.preset or default_preset
    cfg = load_study(preset, args.config, overrides, require_data=not getattr(args, "dry_run", False))
    if args.data:
        cfg = _named_after_data(cfg, preset, args.data)
    return cfg


def _named_after_data(cfg, preset: str, data_path: str):
    """A phantom preset run on the user's ``--data`` is named after that data, so its experiment
    directory and MLflow experiment do not say ``phantom`` (issue 20.6): ``phantom_size_study``
    on ``/data/my_xrays`` becomes ``my_xrays_size_study``, ``smoke`` becomes ``smoke_my_xrays``.
    A name set by the user (YAML ``name:``, ``--set name=...``) or by a preset written for real
    data is kept."""
    import re
    from pathlib import Path

    from lungray.config import replace_in, resolve_study

    base = resolve_study(preset)
    if cfg.name != base.name or base.data.source != "phantom" or cfg.data.source == "phantom":
        return cfg
    p = Path(data_path)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", (p.stem if p.suffix else p.name) or "data").strip("_.-") or "data"
    name = cfg.name.replace("phantom", slug) if "phantom" in cfg.name else f"{cfg.name}_{slug}"
    return replace_in(cfg, name=name)


def main(
    argv: Optional[Sequence[str]] = None,
    default_preset: str = "default",
    *,
    prog: Optional[str] = None,
    description: Optional[str] = None,
    trial_body: Optional[Callable[..., Any]] = None,
) -> int:
    """Entry point of ``sweeps/*.py``; returns the process exit code.

    0: every trial finished; 1: some trials failed (the rest are in MLflow); 2: the study was
    refused before training (bad config, bad data, unschedulable grid); 130: interrupted.
    ``trial_body`` replaces :func:`lungray.train.run_trial` (tests use a fake one).
    """
    prog = prog or os.path.basename(sys.argv[0] or "lungray-sweep")
    parser = build_parser(prog, default_preset, description)
    args = parser.parse_args(argv)
    from lungray.redact import configure_logging, redact

    configure_logging(args.verbose, logging.WARNING)
    try:
        from lungray.config import dump_yaml
        from lungray.sweep.runner import run_study

        cfg = resolve_config(args, default_preset)
        source = "resumed from " + args.resume if args.resume else "preset " + (args.preset or default_preset)
        if args.verbose:
            print(f"# resolved config ({source})")
            print(redact(dump_yaml(cfg)).rstrip())
        print(redact("\n".join(config_summary(cfg, source, grid=not args.dry_run))))
        common = dict(resume_dir=args.resume, dry_run=args.dry_run, address=args.address, autoscaling_config=args.cluster_config,
                      trial_body=trial_body, verbose=args.verbose, report=False if args.no_report else None)
        if cfg.protocols:  # issue 24, point 5: one sweep per protocol, on the same data
            from lungray.sweep.protocols import run_protocols

            return 0 if all(r.ok for r in run_protocols(cfg, **common)) else 1
        result = run_study(cfg, **common)
        return 0 if result.ok else 1
    except LungrayError as e:
        if args.verbose:
            raise
        print(f"{prog}: error: {redact(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        where = str(e) if str(e) else "<experiment directory>"
        print(f"{prog}: interrupted; finish it later with: {prog} --resume {where}", file=sys.stderr)
        return 130
