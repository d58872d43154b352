"""Run one study under several protocols, on the same data (issue 24, point 5).

``protocols: [corrected, as_published]`` runs the study twice (:meth:`lungray.config.StudyConfig.for_protocol`):
as its paper did (image-level split with the augmented copies on both sides, the test set
doubling as the early-stopping set, one seed) and as lungray does by default. Both arms are
ordinary sweeps in one MLflow experiment; their parent runs carry :data:`lungray.tracking.PROTOCOL`
and a shared :data:`lungray.tracking.PROTOCOL_GROUP`, and each arm's report shows the inflation
(as-published minus corrected) with an interval (:mod:`lungray.report.inflation`). The number a
reviewer wants: how much of a published accuracy was the protocol.

The order is the sweep's (issue 6): every arm's config is validated and every arm's data
prepared (the decode is shared, only the splits differ) before the first arm trains, so a
problem with the second arm stops the study before any GPU time.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable

from lungray import tracking as T
from lungray.config import StudyConfig

__all__ = ["run_protocols"]


def run_protocols(cfg: StudyConfig, *, run: Callable[..., Any] = None, echo: Callable[[str], None] = print,
                  report: Any = None, resume_dir: Any = None, dry_run: bool = False, **kwargs: Any) -> list:
    """Run ``cfg`` under each of ``cfg.protocols``; returns the arms' :class:`~lungray.sweep.runner.SweepResult`, in order.

    ``run`` is :func:`lungray.sweep.runner.run_study` (a parameter for tests); ``kwargs`` go to it.
    ``resume_dir`` resumes ONE arm (its saved config names its single protocol). The reports are
    built after every arm has finished, so each can show the other.
    """
    from lungray.data.prepare import prepare_data
    from lungray.study import validate_study
    from lungray.sweep import runner as R

    from lungray.redact import redacting

    run = run or R.run_study
    echo = redacting(echo)
    arms = [cfg.for_protocol(p) for p in cfg.protocols]
    for arm in arms:  # all of it before anything trains
        validate_study(arm, require_data=not dry_run)
    if dry_run:
        return [run(arm, dry_run=True, echo=echo, **kwargs) for arm in arms]
    data = {}
    if kwargs.get("data") is None:
        for arm in arms:
            echo(f"preparing data for the {arm.protocols[0]} arm ({arm.data.source}) ...")
            counts = [n for n in arm.sizes if isinstance(n, int) and n > 0]
            data[arm.name] = prepare_data(arm.data, output_dir=arm.output_dir, sizes=counts, seeds=arm.seeds,
                                          progress=bool(kwargs.get("verbose")), echo=echo,
                                          preprocess_variants=[v.preprocess for v in arm.variants if v.preprocess])
    group = uuid.uuid4().hex[:12]
    results = []
    for arm in arms:
        echo(f"protocol {arm.protocols[0]}: sweep {arm.name}")
        kw = dict(kwargs)
        if arm.name in data:
            kw["data"] = data[arm.name]
        res = run(arm, report=False, resume_dir=resume_dir, echo=echo, **kw)
        if res.parent_run_id and res.tracking_uri:
            _tag(res.tracking_uri, res.parent_run_id, arm.protocols[0], group)
        results.append(res)
    want = cfg.report if report is None else report
    if want:
        for arm, res in zip(arms, results):
            if res.parent_run_id and res.experiment_dir is not None:
                experiment = arm.tracking.experiment or arm.name
                res.report_path, res.report_error = R._build_report(res.tracking_uri, experiment, res.parent_run_id, res.experiment_dir,
                                                                    arm.tracking.gradcam, echo, print_figures=arm.tracking.print_figures)
    return results


def _tag(tracking_uri: str, parent_run_id: str, protocol: str, group: str) -> None:
    from lungray.sweep import mlflow_run as M

    c = M.client(tracking_uri)
    tags = M.retry(lambda: c.get_run(parent_run_id)).data.tags
    group = tags.get(T.PROTOCOL_GROUP, group)  # a resumed arm keeps its group
    M.retry(lambda: c.set_tag(parent_run_id, T.PROTOCOL, protocol), what="tag the protocol")
    M.retry(lambda: c.set_tag(parent_run_id, T.PROTOCOL_GROUP, group), what="tag the protocol group")
