"""The sweep driver: validate -> prepare data -> preflight -> MLflow parent -> Ray Tune.

The order is the point (issue 6): every mistake that can be found without a GPU is found
before the first trial starts: a bad config (unknown names, zero-step schedules), a bad
dataset (missing files in strict mode, a training size larger than the pool), a grid the
cluster can never schedule. Only then are the MLflow experiment and the sweep's parent run
created and Tune started.

Layout of one sweep (``<output_dir>/<study>_<timestamp>/``, the *experiment directory*):

``config.yaml``   the resolved study config (also logged to the parent run)
``sweep.json``    fingerprint, tracking URI, experiment and parent run ids (used by --resume)
``tune/``         the Ray Tune experiment (``Tuner.restore`` reads it; no checkpoints)
``train/``        Ray Train's run state for trials through Ray Train (DDP, ``use_ray_train=true``)
``trials/<trial_id>/``  the trial's results and artifacts (source of truth for mlflow-sync),
                  ``artifacts/checkpoint/best.pt`` (the best weights, once), and while it runs
                  ``work/`` (its one resumable checkpoint: :mod:`lungray.sweep.trainable`)
``trials.csv``, ``summary.csv``   per-trial results and the model x size summary
``report/``       the HTML report (when it builds)
``ray_instance.json``   the local Ray instance the driver started (:mod:`lungray.sweep.local_ray`)
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from lungray import tracking as T
from lungray.config import StudyConfig, dump_yaml, is_pool_size
from lungray.errors import ConfigError
from lungray.study import validate_study
from lungray.sweep import grid as G
from lungray.redact import redact, redacting, usable_uri
from lungray.sweep import sync as S
from lungray.sweep.expdir import CONFIG_YAML, SWEEP_JSON, TUNE_NAME, load_saved_config, read_result, read_sweep_state, remove_work
from lungray.sweep.faults import DiskFullError, failpoint, is_disk_full, no_space_left
from lungray.sweep.lock import ExperimentLock, check_private, claim_new_dir
from lungray.sweep.progress import disk_line, format_summary, make_callback, summary_table

log = logging.getLogger(__name__)

@dataclass
class SweepResult:
    """What a sweep (or a dry run) produced."""

    experiment_dir: Optional[Path]
    config: StudyConfig
    preflight: Optional[G.Preflight] = None
    tracking_uri: Optional[str] = None
    experiment_id: Optional[str] = None
    parent_run_id: Optional[str] = None
    trials: Any = None  # pandas.DataFrame, one row per trial
    summary: Any = None  # pandas.DataFrame, model x size
    report_path: Optional[Path] = None
    dry_run: bool = False
    n_errors: int = 0
    data: Any = None  # PreparedData
    notes: list[str] = field(default_factory=list)
    report_error: Optional[str] = None  # one line when the report failed or has failed parts

    @property
    def ok(self) -> bool:
        """Every trial finished and the report (when built) has no failed part."""
        return self.n_errors == 0 and self.report_error is None


# --------------------------------------------------------------------------------------------
# experiment directory and resume
# --------------------------------------------------------------------------------------------


def new_experiment_dir(cfg: StudyConfig, now: Optional[_dt.datetime] = None) -> Path:
    now = now or _dt.datetime.now()
    base = Path(cfg.output_dir).resolve()
    d = base / f"{cfg.name}_{now:%Y%m%d-%H%M%S}"
    i = 1
    while d.exists():
        i += 1
        d = base / f"{cfg.name}_{now:%Y%m%d-%H%M%S}-{i}"
    return d


def grid_diff(a: StudyConfig, b: StudyConfig) -> list[str]:
    """Top-level (and data.*) keys whose values differ between two configs' grid-defining parts."""
    da, db = a.to_dict(), b.to_dict()
    out = []
    for k in sorted(set(da) | set(db)):
        if k in ("output_dir", "tracking", "resources", "report"):
            continue
        if k == "data" and isinstance(da.get(k), dict) and isinstance(db.get(k), dict):
            out += [f"data.{s}" for s in sorted(set(da[k]) | set(db[k])) if da[k].get(s) != db[k].get(s)]
        elif da.get(k) != db.get(k):
            out.append(k)
    return out


def check_resume(cfg: StudyConfig, experiment_dir: Union[str, Path]) -> dict:
    """Refuse to resume a sweep whose grid changed; returns its saved state."""
    state = read_sweep_state(experiment_dir)
    if state.get("fingerprint") != cfg.fingerprint():
        diff = grid_diff(load_saved_config(experiment_dir), cfg)
        raise ConfigError(
            f"--resume {experiment_dir}: the study changed since this sweep started "
            f"(config fingerprint {state.get('fingerprint')} -> {cfg.fingerprint()}; differs in: "
            f"{', '.join(diff) or 'unknown keys'}); resume without --preset/--config/--set to use the saved "
            "config, or start a new sweep"
        )
    return state


# --------------------------------------------------------------------------------------------
# parent-run payloads
# --------------------------------------------------------------------------------------------


def splits_payload(data: Any, sizes: Sequence[int], seeds: Sequence[int]) -> dict:
    """eval/val/pool/dropped row indices and every nested subset (size x seed) of the sweep."""
    import numpy as np

    subsets: dict[str, dict[str, list[int]]] = {}
    for n in sizes:
        subsets[str(n)] = {str(s): np.asarray(data.subset(int(n), int(s))).tolist() for s in seeds}
    out = {
        "class_names": list(data.class_names),
        "fingerprint": data.fingerprint,
        "eval": np.asarray(data.eval_idx).tolist(),
        "val": np.asarray(data.val_idx).tolist(),
        "pool": np.asarray(data.pool_idx).tolist(),
        "dropped": np.asarray(data.dropped_idx).tolist(),
        "subsets": subsets,
    }
    for e in getattr(data, "external", ()) or ():  # issue 24: which rows each external set scored
        out.setdefault("external", {})[e.name] = {"kind": e.kind, "rows": np.asarray(e.idx).tolist(),
                                                  "fingerprint": e.data.fingerprint if e.data is not None else data.fingerprint}
    if getattr(data, "groups", None) is not None:  # the report resamples patients, not images (issue 19)
        try:
            out["eval_groups"] = eval_groups_payload(data.ids, data.groups, data.eval_idx)
        except (OSError, ValueError, KeyError):  # no manifest to name the images: images resampled
            pass
    return out


def eval_groups_payload(ids: Sequence[Any], groups: Sequence[Any], eval_idx: Sequence[int]) -> dict[str, int]:
    """``image_id -> patient code`` of the evaluation images, codes renumbered 0.. in evaluation
    order (a code says which images share a patient, never who the patient is)."""
    import numpy as np

    ev = np.asarray(eval_idx, dtype=np.int64)
    ids, groups = np.asarray(ids), np.asarray(groups)
    seen: dict = {}
    return {str(ids[i]): seen.setdefault(groups[i].item() if hasattr(groups[i], "item") else groups[i], len(seen)) for i in ev}


def data_summary_payload(data: Any, cfg: StudyConfig) -> dict:
    info = dict(data.info or {})
    return {
        "class_names": list(data.class_names),
        "fingerprint": data.fingerprint,
        "root": str(data.root),
        "class_counts": info.get("class_counts") or data.class_counts(),
        "sizes": list(cfg.sizes),
        "seeds": list(cfg.seeds),
        "n_eval": int(len(data.eval_idx)),
        "n_val": int(len(data.val_idx)),
        "n_pool": int(len(data.pool_idx)),
        "n_dropped": int(len(data.dropped_idx)),
        "source": cfg.data.source,
        "resolution": cfg.data.resolution,
        "preprocess": cfg.data.preprocess,
        "info": info,
    }


def leakage_payload(data: Any) -> dict:
    """The leakage summary, plus the full audit file of these splits when the data layer wrote one."""
    info = dict(data.info or {})
    out: dict[str, Any] = {"summary": info.get("leakage", {"mode": "unknown"})}
    key = info.get("split_key")
    if key:
        p = Path(data.root) / f"leakage-{key}.json"
        if p.exists():
            try:
                out["audit"] = json.loads(p.read_text())
            except ValueError:
                pass
    return out


# --------------------------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------------------------


def run_study(
    cfg: StudyConfig,
    *,
    resume_dir: Optional[Union[str, Path]] = None,
    dry_run: bool = False,
    address: Optional[str] = None,
    autoscaling_config: Optional[str] = None,
    trial_body: Optional[Union[str, Callable[..., Any]]] = None,
    data: Any = None,
    echo: Callable[[str], None] = print,
    verbose: bool = False,
    report: Optional[bool] = None,
    validate: bool = True,
) -> SweepResult:
    """Run (or dry-run, or resume) a study; see the module docstring for the order of steps.

    Parameters
    ----------
    cfg : StudyConfig
        The resolved study.
    resume_dir : path, optional
        An experiment directory of an interrupted sweep: only its unfinished trials run, into
        the same MLflow parent run. A changed grid is refused.
    dry_run : bool
        Print the grid, resources and cluster and return without preparing data or training.
    address : str, optional
        Ray address (``auto``, ``host:port``, ``local``); default: ``auto`` when ``RAY_ADDRESS``
        is set, else whatever ``ray.init()`` finds.
    autoscaling_config : str, optional
        A cluster YAML whose worker node types the preflight may count as launchable.
    trial_body : callable or "module:attr", optional
        What trains one trial (default :func:`lungray.train.run_trial`); tests pass
        :class:`lungray.sweep.testing.FakeTrialBody`.
    data : PreparedData, optional
        Use this prepared dataset instead of running :func:`lungray.data.prepare_data`.
    report : bool, optional
        Override ``cfg.report`` (the CLI's ``--no-report``).
    validate : bool
        Run :func:`lungray.train.validate.validate_study` (registry names, ranges) first.
    """
    if validate:
        validate_study(cfg, require_data=not dry_run)
    echo = redacting(echo)  # credentials never reach the console (issue 15)
    spec = G.lr_search_spec(cfg)
    total = G.n_trials(cfg)

    if dry_run:
        return _dry_run(cfg, address, autoscaling_config, echo)

    state: Optional[dict] = None
    locks: list[ExperimentLock] = []  # one driver per experiment directory (released on any exit)
    if resume_dir is not None:
        # a size of 'all' is only known once the data is prepared: check the grid then
        state = None if cfg.pool_sizes else check_resume(cfg, resume_dir)
        exp_dir = Path(resume_dir).resolve()
        check_private(exp_dir)  # --resume unpickles tune/: nobody else may have written it
        locks.append(ExperimentLock(exp_dir, "sweep", echo=echo).acquire())
    else:
        exp_dir = new_experiment_dir(cfg)
    try:
        return _run(cfg, state, exp_dir, locks, spec, total, resume_dir, address, autoscaling_config, trial_body, data, echo, verbose, report)
    finally:
        for lock in locks:
            lock.release()


def _run(cfg, state, exp_dir, locks, spec, total, resume_dir, address, autoscaling_config, trial_body, data, echo, verbose, report) -> SweepResult:
    """:func:`run_study` after the dry-run branch, with the experiment directory decided."""

    # 1. data: every data problem surfaces here, before Ray, MLflow or any trial
    counts = [n for n in cfg.sizes if not is_pool_size(n)]
    if data is None:
        from lungray.data.prepare import prepare_data

        echo(f"preparing data ({cfg.data.source}) ...")
        data = prepare_data(cfg.data, output_dir=cfg.output_dir, sizes=counts, seeds=cfg.seeds, progress=verbose,
                            echo=echo, preprocess_variants=[v.preprocess for v in cfg.variants if v.preprocess])
    if cfg.pool_sizes:
        cfg = cfg.with_pool_size(len(data.pool_idx))
        echo(f"training size 'all' = {len(data.pool_idx)} images (the whole training pool)")
        total = G.n_trials(cfg)
        if resume_dir is not None:
            state = check_resume(cfg, resume_dir)
    _check_sizes_against_pool(data, cfg)
    # pretrained weights: fetched once here, so a cluster that cannot get them stops now, not in every trial
    from lungray.models.weights import fetch_weights

    for m in cfg.models:
        st = fetch_weights(m)
        if st is not None and verbose:
            echo(st.line())
    if state is not None and state.get("dataset_fingerprint") not in (None, data.fingerprint):
        raise ConfigError(
            f"--resume {exp_dir}: the prepared dataset changed (fingerprint {state.get('dataset_fingerprint')} -> "
            f"{data.fingerprint}); the finished trials were trained on other data: start a new sweep"
        )
    echo(_data_line(data))
    from lungray.train.tasks import TASKS

    TASKS.get(cfg.train.task).check_data(data)  # e.g. segmentation on data without masks: before Ray

    # 2. Ray and the preflight
    import ray

    from lungray.sweep import local_ray as LR
    from lungray.sweep.cluster import cluster_spec, init_ray

    # what a killed earlier driver of this output directory (or of this sweep) left running
    LR.stop_leftovers(LR.records_for(cfg.output_dir, exp_dir if state is not None else None), echo=echo)
    # MLflow credentials reach a local Ray's workers through the environment they inherit from
    # this process, never through a runtime_env (Ray logs those: lungray.sweep.ray_env)
    from lungray.sweep.mlflow_run import check_access, credentials_to_env

    given = usable_uri(cfg.tracking.tracking_uri or T.default_tracking_uri(cfg.output_dir), "tracking_uri")  # a saved one is masked
    check_access(credentials_to_env(given))  # a 401/403 is one line now, not after Ray's start-up
    quiet_ray_console(verbose)
    started_ray = init_ray(address, logging_level=logging.INFO if verbose else logging.WARNING)
    instance = LR.started_instance() if started_ray else None  # None when it joined a running cluster
    ray_records = [LR.record_dir(cfg.output_dir) / f"{os.getpid()}.json"] if instance else []
    for rec in ray_records:
        LR.record(rec, instance)
    try:
        cluster = cluster_spec(autoscaling_config)
        pre = G.preflight(cfg, cluster, total)
        echo(f"cluster: {cluster.describe()}")
        echo(f"resources per trial: {pre.resources.describe()}; up to {pre.max_concurrent_trials} trial(s) at once")
        for n in pre.notes:
            echo(f"note: {n}")

        # 3. MLflow: experiment + parent run (created once; reused on resume)
        from lungray.sweep import mlflow_run as M

        tracking_uri = cfg.tracking.tracking_uri or T.default_tracking_uri(cfg.output_dir)
        experiment = cfg.tracking.experiment or cfg.name
        M.OUTAGE.for_sweep(None)  # a fresh start: whatever this process saw before is history
        if state is None:
            experiment_id = M.ensure_experiment(tracking_uri, experiment, artifact_root=T.default_artifact_root(cfg.output_dir))
            exp_dir = claim_new_dir(exp_dir)  # atomic: two sweeps started in one second get two directories
            locks.append(ExperimentLock(exp_dir, "sweep", echo=echo).acquire())
            c = M.client(tracking_uri)
            for k, v in T.experiment_tags().items():  # the UI opens on the runs table of the grid
                M.retry(lambda k=k, v=v: c.set_experiment_tag(experiment_id, k, v), what="set experiment tag")
            (exp_dir / CONFIG_YAML).write_text(redact(dump_yaml(cfg)))
            parent_run_id = M.create_parent_run(
                tracking_uri,
                experiment_id,
                study_name=cfg.name,
                config_dict=cfg.to_dict(),
                config_fingerprint=cfg.fingerprint(),
                dataset_fingerprint=data.fingerprint,
                storage_path=str(exp_dir),
                data_root=str(data.root),
                artifacts={
                    T.CONFIG_YAML: dump_yaml(cfg),
                    T.LEAKAGE_JSON: leakage_payload(data),
                    T.DATA_SUMMARY: data_summary_payload(data, cfg),
                    T.SPLITS_JSON: splits_payload(data, cfg.sizes, cfg.seeds),
                },
            )
            state = {
                "study": cfg.name,
                "fingerprint": cfg.fingerprint(),
                "dataset_fingerprint": data.fingerprint,
                "tracking_uri": tracking_uri,
                "experiment": experiment,
                "experiment_id": experiment_id,
                "parent_run_id": parent_run_id,
                "created": _dt.datetime.now().isoformat(timespec="seconds"),
                "n_trials": total,
            }
            S.write_state(exp_dir, state)
            echo(f"experiment directory: {exp_dir}")
            echo(f"MLflow: {tracking_uri} experiment '{experiment}' parent run {parent_run_id}")
        else:
            tracking_uri = usable_uri(cfg.tracking.tracking_uri or state["tracking_uri"], f"{exp_dir / SWEEP_JSON}: tracking_uri")
            experiment_id, parent_run_id = state["experiment_id"], state["parent_run_id"]
            for k in ("status", "failed_trials", "finished"):  # the end recorded by a previous driver
                state.pop(k, None)
            S.write_state(exp_dir, state)
            try:
                M.reopen_run(tracking_uri, parent_run_id)
            except M.TrackingUnavailable as e:
                echo(f"warning: {e}; the sweep runs on and its MLflow view is replayed when the store is back")
            echo(f"resuming {exp_dir} (MLflow parent run {parent_run_id})")
        if instance:  # what this driver's Ray started, so a later driver can stop it if this one is killed
            LR.record(exp_dir / LR.EXPERIMENT_RECORD, instance)
            ray_records.append(exp_dir / LR.EXPERIMENT_RECORD)
        echo(dump_yaml(cfg) if verbose else f"full config: {exp_dir / CONFIG_YAML}")  # echo redacts

        # 4. Tune
        from lungray.sweep.trainable import DEFAULT_BODY, SweepContext

        from lungray.sweep.ray_env import worker_tracking_uri

        r = cfg.resources
        ctx = SweepContext(
            study=cfg.name,
            experiment_dir=str(exp_dir),
            tracking_uri=worker_tracking_uri(tracking_uri),  # no credentials: workers read their own
            experiment_id=experiment_id,
            parent_run_id=parent_run_id,
            data=data,
            trials=G.trial_lookup(cfg),
            workers=r.workers,
            cpus_per_worker=r.cpus_per_worker,
            gpus_per_worker=r.gpus_per_worker,
            max_failures=r.max_failures,
            use_ray_train=r.ray_train,
            log_checkpoints=cfg.tracking.log_checkpoints,
            body=trial_body if trial_body is not None else DEFAULT_BODY,
            train_env=train_env(cluster, worker_tracking_uri(tracking_uri)),
            tune_report_seconds=0.0 if (spec is not None and spec.asha) else 1.0,
        )
        done_before = _count_done(exp_dir)
        S.set_watch(tracking_uri)
        results, interrupted = _run_tune(cfg, ctx, pre, spec, total, exp_dir, resume=resume_dir is not None, done_before=done_before, echo=echo, verbose=verbose)
        remove_finished_work(exp_dir)

        # 5. results, summary, report
        rows = collect_rows(exp_dir, results, ctx.trials)
        import pandas as pd

        trials_df = pd.DataFrame(rows)
        n_errors = int((trials_df["status"] != "done").sum()) if len(trials_df) else 0
        trials_df.to_csv(exp_dir / "trials.csv", index=False)
        done_rows = [r for r in rows if r["status"] == "done"]
        summary = summary_table(done_rows, headline_metric(cfg))
        summary.to_csv(exp_dir / "summary.csv")
        echo("")
        echo(format_summary(done_rows, headline_metric(cfg)))
        if n_errors:
            echo(f"{n_errors} trial(s) did not finish; see {exp_dir / 'trials.csv'} and the lungray.error tag in MLflow")
        over = pd.to_numeric(trials_df.get("trial_overhead_seconds", pd.Series(dtype=float)), errors="coerce").dropna()
        if len(over):
            what = "Ray Train start-up, result files, teardown" if ctx.use_ray_train else "set-up, result files"
            echo(f"per-trial overhead ({what}; not training or evaluating): mean {over.mean():.1f}s, max {over.max():.1f}s")
        # the end, files first (sweep.json records it), then MLflow: queued trial writes replayed,
        # the parent run closed, then the report; whatever the store still misses waits for mlflow-sync
        state.update(status="KILLED" if interrupted else "FINISHED", failed_trials=n_errors, finished=_dt.datetime.now().isoformat(timespec="seconds"))
        S.write_state(exp_dir, state)
        failpoint("driver.before_finish", cfg.name)
        replayed, queued = S.replay_pending(exp_dir, tracking_uri, experiment_id, parent_run_id, cfg.tracking.log_checkpoints)
        if replayed:
            echo(f"MLflow: replayed the queued writes of {replayed} trial(s)")
        # the parent run is closed before the report reads it: the report (and its copy logged
        # to MLflow) shows the sweep's final status, not RUNNING under a "Complete" banner
        parent_done = not queued and S.finish_parent(exp_dir, tracking_uri, parent_run_id, state["status"], n_errors)
        report_path = report_error = None
        want_report = cfg.report if report is None else report
        if want_report and not interrupted and parent_done:
            report_path, report_error = _build_report(tracking_uri, experiment, parent_run_id, exp_dir, cfg.tracking.gradcam, echo,
                                                      print_figures=cfg.tracking.print_figures)
        if not parent_done:
            S.mark_parent_pending(exp_dir)
            echo(f"{S.outage_line(exp_dir) or 'MLflow writes are queued'}; the results are complete in {exp_dir}: "
                 f"once the store is back run: lungray mlflow-sync {exp_dir}")
        if interrupted:
            raise KeyboardInterrupt(str(exp_dir))
        echo(ui_line(tracking_uri, experiment_id, cfg.output_dir))
        echo(disk_line(exp_dir, Path(cfg.output_dir)))
        echo(f"done: {len(trials_df) - n_errors}/{len(trials_df)} trials finished; experiment directory {exp_dir}")
        return SweepResult(
            experiment_dir=exp_dir,
            config=cfg,
            preflight=pre,
            tracking_uri=tracking_uri,
            experiment_id=experiment_id,
            parent_run_id=parent_run_id,
            trials=trials_df,
            summary=summary,
            report_path=report_path,
            n_errors=n_errors,
            data=data,
            report_error=report_error,
        )
    finally:
        if started_ray:
            ray.shutdown()
            LR.forget(ray_records)


def quiet_ray_console(verbose: bool) -> None:
    """Keep Ray's start-up chatter off the sweep's console (``-v`` keeps it).

    Ray 2.60 logs "Token authentication is enabled for this Ray cluster..." at WARNING on every
    local start, though enabling it is its secure default: the line is dropped (the warning for a
    cluster WITHOUT authentication is not). ``ray.init(logging_level=...)`` handles Ray's INFO
    lines ("Started a local Ray instance"), and MLflow's "Creating initial MLflow database
    tables..." INFO lines are raised to WARNING.
    """
    if verbose:
        return
    auth = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _DropTokenEnabled) for f in auth.filters):
        auth.addFilter(_DropTokenEnabled())
    # a failed trial is one line of lungray's ("[1/2] FAILED <trial>: <reason>"), not Tune's
    # traceback (~50 lines per failure) and its "Trials did not complete" (issue 23)
    for name in ("ray.tune.execution.tune_controller", "ray.tune.tune"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _DropTrialFailure) for f in lg.filters):
            lg.addFilter(_DropTrialFailure())
    import mlflow  # noqa: F401 - configures its loggers at import; set the level after that

    logging.getLogger("mlflow").setLevel(logging.WARNING)


class _DropTokenEnabled(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Token authentication is enabled")


class _DropTrialFailure(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("Trial task failed for trial", "Trials did not complete"))


def ui_line(tracking_uri: str, experiment_id: str, output_dir: str) -> str:
    """Where to look at the runs: the experiment's runs table in the MLflow UI (a tracking
    server's own page, or the ``mlflow ui`` command for a local store and the page it serves)."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"MLflow UI: {T.ui_url(tracking_uri, experiment_id)}"
    return (f"MLflow UI: mlflow ui --backend-store-uri {tracking_uri} --default-artifact-root "
            f"{T.default_artifact_root(output_dir)} --port 5000, then open {T.ui_url('http://127.0.0.1:5000', experiment_id)}")


def remove_finished_work(exp_dir: Path) -> None:
    """Delete the working folders (resumable checkpoints) that finished trials left behind
    (a driver killed between a trial's result and its clean-up); unfinished trials keep theirs
    for ``--resume``."""
    d = exp_dir / "trials"
    for t in sorted(d.iterdir()) if d.exists() else []:
        if (read_result(t) or {}).get("complete"):
            remove_work(t)


def train_env(cluster: G.ClusterSpec, tracking_uri: str) -> dict[str, str]:
    """Environment for every trial's Ray Train controller and workers.

    Per-trial start-up is what short trials pay for (issue 6: ~16 s per 1-worker
    ``TorchTrainer.fit()`` with Ray's defaults on 2 CPUs). Besides the 0.2 s health-check
    interval, a single machine that cannot be preempted does not need Ray Train's
    preemption-watcher actor (one Python process fewer to start per trial).
    """
    from lungray.sweep.trainable import TRAIN_ENV_DEFAULTS

    env = {**TRAIN_ENV_DEFAULTS, "MLFLOW_TRACKING_URI": tracking_uri}
    if len(cluster.nodes) == 1 and not any(n.autoscaled for n in cluster.nodes):
        env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
    return env


def _check_sizes_against_pool(data: Any, cfg: StudyConfig) -> None:
    """The prepare_data size check for a dataset handed in directly."""
    from lungray.errors import DataError

    n_pool = len(data.pool_idx)
    too_big = [n for n in cfg.sizes if n > n_pool]
    if too_big:
        raise DataError(
            f"training size(s) {too_big} exceed the training pool of {n_pool} images "
            f"({data.root}); lower sizes or use more data"
        )


def _data_line(data: Any) -> str:
    counts = data.class_counts()
    parts = [f"{k} " + ", ".join(f"{c}={v}" for c, v in counts[k].items()) for k in ("eval", "val", "pool")]
    return f"data: {len(data.class_names)} classes; " + " | ".join(parts)


def _dry_run(cfg: StudyConfig, address: Optional[str], autoscaling_config: Optional[str], echo) -> SweepResult:
    """Print the grid, what a trial needs and what the cluster lacks; check sizes and weights.

    Never refuses for the cluster (a GPU study planned on a CPU laptop still shows its grid);
    training sizes the dataset cannot supply (with ``--data``) are an error after the grid.
    """
    from lungray.sweep.checks import dataset_checks, weights_checks

    data_lines, problems, n_pool = dataset_checks(cfg)
    if n_pool is not None and cfg.pool_sizes:
        cfg = cfg.with_pool_size(n_pool)
    checks = data_lines + weights_checks(cfg)
    cluster = _dry_run_cluster(address, autoscaling_config)
    error = None
    try:
        pre: Optional[G.Preflight] = G.preflight(cfg, cluster)
    except ConfigError as e:
        pre, error = None, str(e)
    # each problem once: the first is the error line the dry run exits with, the others above it
    checks += [f"data problem: {p}" for p in problems[1:]]
    echo(G.dry_run_text(cfg, pre, cluster, error=error, checks=checks))
    if problems:
        from lungray.errors import DataError

        raise DataError(problems[0] + (f" (+{len(problems) - 1} more above)" if len(problems) > 1 else ""))
    import pandas as pd

    return SweepResult(experiment_dir=None, config=cfg, preflight=pre, trials=pd.DataFrame(G.grid_rows(cfg)), dry_run=True,
                       notes=[f"cluster lacks: {error}"] if error else [])


def _dry_run_cluster(address: Optional[str], autoscaling_config: Optional[str]) -> G.ClusterSpec:
    from lungray.sweep.cluster import cluster_spec, init_ray, local_cluster_spec, resolve_address

    if resolve_address(address) is not None:
        import ray

        started = init_ray(address)
        try:
            cluster = cluster_spec(autoscaling_config)
        finally:
            if started:
                ray.shutdown()
    else:
        cluster = local_cluster_spec()
        from lungray.sweep.cluster import _load_yaml, autoscaling_config_path

        p = autoscaling_config_path(autoscaling_config)
        if p is not None:
            cluster = cluster.with_autoscaling(_load_yaml(p))
    return cluster


def _count_done(exp_dir: Path) -> int:
    d = exp_dir / "trials"
    if not d.exists():
        return 0
    return sum(1 for t in d.iterdir() if (read_result(t) or {}).get("complete"))


def headline_metric(cfg: StudyConfig) -> str:
    """The metric of the progress lines and the summary table: the task's primary held-out
    metric (``test_accuracy``, ``test_dice_pos``)."""
    from lungray.train.tasks import TASKS

    return T.TEST_PREFIX + TASKS.get(cfg.train.task).report_spec.primary_metric


def _run_tune(cfg, ctx, pre, spec, total, exp_dir: Path, *, resume: bool, done_before: int, echo, verbose: bool):
    from ray import tune

    from lungray.sweep.trainable import tune_trial

    trainable = tune.with_resources(tune.with_parameters(tune_trial, ctx=ctx), pre.resources.trial_bundle)
    samples = spec.samples if spec is not None else 1
    cells = [(t.model.key, int(t.train_size)) for t in cfg.trials()] * samples
    progress = make_callback(total, echo=echo, headline=headline_metric(cfg), cells=cells, slots=pre.max_concurrent_trials)
    # Worker failures are retried inside Ray Train from the last checkpoint (FailureConfig on
    # each TorchTrainer, resources.max_failures). A trial that still fails is final for this
    # run: a Tune-level retry would only repeat the Train retries. `--resume` retries errored
    # trials (from their checkpoints), which also covers a trial driver lost with its node.
    # Without Ray Train (one-worker trials by default) Tune's own retries resume from the
    # trial's last Tune checkpoint.
    run_config = tune.RunConfig(
        name=TUNE_NAME,
        storage_path=str(exp_dir),
        failure_config=tune.FailureConfig(max_failures=0 if ctx.use_ray_train else cfg.resources.max_failures),
        callbacks=[progress, S.outage_watch(str(exp_dir))],
        verbose=1 if verbose else 0,
    )
    tune_path = exp_dir / TUNE_NAME
    if resume and tune_path.exists() and tune.Tuner.can_restore(str(tune_path)) and not _tune_state_damaged(tune_path, echo):
        tuner = tune.Tuner.restore(str(tune_path), trainable=trainable, resume_unfinished=True, resume_errored=True, restart_errored=False)
    else:
        axes = G.param_space_axes(cfg)
        space: dict[str, Any] = {k: tune.grid_search(v) for k, v in axes.items()}
        scheduler = None
        num_samples = 1
        if spec is not None:
            space["lr"] = tune.loguniform(spec.low, spec.high)
            num_samples = spec.samples
            if spec.asha:
                from ray.tune.schedulers import ASHAScheduler

                scheduler = ASHAScheduler(time_attr="training_iteration", grace_period=spec.grace_period)
        tune_config = tune.TuneConfig(
            max_concurrent_trials=pre.max_concurrent_trials,
            num_samples=num_samples,
            scheduler=scheduler,
            metric="val_loss" if scheduler else None,
            mode="min" if scheduler else None,
            # one trial process serves successive trials: imports (torch, timm, Ray Train) and a
            # CUDA context are paid once per slot, not once per trial (bench/bench_sweep.py)
            reuse_actors=True,
        )
        tuner = tune.Tuner(trainable, param_space=space, tune_config=tune_config, run_config=run_config)
    echo(f"running {total} trial(s) ({done_before} already finished)" if resume else f"running {total} trial(s)")
    try:
        # Tune's new output engine prints its configuration box, "View detailed results here"
        # and a TensorBoard hint even at verbose=0; the legacy engine at 0 prints nothing, and
        # lungray prints one line per finished trial instead (``-v`` keeps Tune's tables)
        from lungray.sweep.ray_env import no_secrets_in_runtime_env

        with _env({} if verbose else {"RAY_AIR_NEW_OUTPUT": "0"}), no_secrets_in_runtime_env():  # no AWS keys in Ray's logs
            results = tuner.fit()
    except KeyboardInterrupt:
        return None, True
    except Exception as e:  # noqa: BLE001 - Tune's driver itself died; a full disk gets one line
        if is_disk_full(e) or no_space_left(exp_dir):
            raise DiskFullError(
                f"the sweep stopped: no space left on the device of {exp_dir} (Tune could not write its state: "
                f"{type(e).__name__}); finished trials are kept: free space or raise the quota, then run with --resume {exp_dir}"
            ) from e
        raise
    return results, False


def _tune_state_damaged(tune_path: Path, echo) -> bool:
    """Whether Tune's saved state cannot be resumed (Ray 2.60 writes it in place: a full disk
    left trials without their config, which then failed with ``KeyError: 'model'``). The
    damaged state is moved aside and the sweep starts Tune afresh: finished trials are kept (their
    ``result.json`` makes the new trial return at once), unfinished ones start over."""
    from ray.tune import ExperimentAnalysis

    try:
        trials = ExperimentAnalysis(str(tune_path)).trials
        why = "" if trials and all("model" in (t.config or {}) for t in trials) else "trials without their config"
    except Exception as e:  # noqa: BLE001 - any failure to read it is damage
        why = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
    if not why:
        return False
    aside = tune_path.with_name(f"{tune_path.name}.damaged-{_dt.datetime.now():%Y%m%d-%H%M%S}")
    tune_path.rename(aside)
    echo(f"note: Tune's state in {tune_path} is damaged ({why}); kept as {aside.name}, unfinished trials start afresh, finished ones are kept")
    return True


@contextlib.contextmanager
def _env(values: Mapping[str, str]):
    """Set environment variables for the duration of the block, then restore them."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def collect_rows(exp_dir: Path, results: Any, lookup: Optional[Mapping[str, Any]] = None) -> list[dict]:
    """One row per trial from the trial directories (finished) and Tune's results (errors)."""
    rows: dict[str, dict] = {}
    tdir = exp_dir / "trials"
    if tdir.exists():
        for d in sorted(tdir.iterdir()):
            r = read_result(d)
            if r and r.get("complete"):
                rows[d.name] = _row(d.name, r, "done")
                rows[d.name]["degenerate"] = _degenerate(d)
    if results is not None:
        for res in results:
            tid = _trial_id_of(res, lookup)
            if tid in rows:
                continue
            c = res.config or {}
            rows[tid] = {
                "trial_id": tid,
                "model": c.get("model"),
                "train_size": c.get("train_size"),
                "optimizer": c.get("optimizer"),
                "seed": c.get("seed"),
                "status": "error" if res.error else "incomplete",
                "error": redact(str(res.error).strip().splitlines()[-1][:300]) if res.error else "",
            }
    return sorted(rows.values(), key=lambda r: (str(r.get("model")), int(r.get("train_size") or 0), str(r.get("optimizer")), int(r.get("seed") or 0)))


def _degenerate(tdir: Path) -> str:
    """Why the trial's output is degenerate ("" when it is not, or unknown): the rule the summary
    and the report share (:func:`lungray.report.stats.degenerate_output`)."""
    from lungray.report.stats import degenerate_output
    from lungray.sweep.expdir import ARTIFACTS_DIR

    p = Path(tdir) / ARTIFACTS_DIR / T.PREDICTIONS
    if not p.is_file():
        return ""
    import numpy as np
    import pandas as pd

    try:
        df = pd.read_csv(p)
    except (OSError, ValueError):
        return ""
    probs = [c for c in df.columns if str(c).startswith("prob_")]
    if not probs or "y_true" not in df:
        return ""
    y = df["y_true"]
    if not pd.api.types.is_numeric_dtype(y):  # class names: their prob_<name> column's index
        y = y.astype(str).map({str(c)[len("prob_"):]: i for i, c in enumerate(probs)})
    if y.isna().any():
        return ""
    return degenerate_output(df[probs].to_numpy(dtype=float), y.to_numpy(dtype=np.int64))


def _row(trial_id: str, r: Mapping[str, Any], status: str) -> dict:
    row = {
        "trial_id": trial_id,
        "model": r.get("model"),
        "train_size": r.get("train_size"),
        "optimizer": r.get("optimizer"),
        "seed": r.get("seed"),
        "status": status,
        "error": "",
        "node_id": r.get("node_id"),
        "worker_start": r.get("worker_start"),
        "worker_end": r.get("worker_end"),
        "resumed": r.get("resumed"),
        "trial_overhead_seconds": r.get("trial_overhead_seconds"),
    }
    for k, v in (r.get("metrics") or {}).items():
        if k.startswith(T.TEST_PREFIX) or k in ("best_epoch", "epochs_run", "train_seconds", "eval_seconds"):
            row[k] = v
    return row


def _trial_id_of(res: Any, lookup: Optional[Mapping[str, Any]] = None) -> str:
    m = res.metrics or {}
    if m.get("lungray_trial_id"):
        return str(m["lungray_trial_id"])
    c = res.config or {}
    if lookup is not None:
        try:
            return G.trial_uid(G.trial_from_params(lookup, c), lr_sampled=c.get("lr") is not None)
        except (ConfigError, KeyError):
            pass
    return str(m.get("trial_id") or Path(str(getattr(res, "path", "") or "")).name)


def _build_report(tracking_uri: str, experiment: str, parent_run_id: str, exp_dir: Path, gradcam: bool, echo,
                  print_figures: bool = False) -> tuple[Optional[Path], Optional[str]]:
    """Build the HTML report and log it to the parent run: ``(path, failure line or None)``.

    A report written with failed parts (red boxes) still returns its path, with the one-line
    failure; a report that could not be built at all returns no path and the warning line.
    """
    from lungray.report.build import ReportIncomplete
    from lungray.sweep import mlflow_run as M

    try:
        from lungray.report import build_report

        try:
            from lungray.report.figures import FIGURE_FORMATS

            path, failure = Path(build_report(tracking_uri=tracking_uri, experiment=experiment, parent_run_id=parent_run_id,
                                              out_dir=str(exp_dir / "report"), gradcam=gradcam,
                                              figure_formats=FIGURE_FORMATS if print_figures else ())), None
        except ReportIncomplete as e:
            path, failure = e.path, str(e)
        M.retry(lambda: M.client(tracking_uri).log_artifacts(parent_run_id, str(path.parent), "report"))
        echo(f"report: {path}")
        if failure:
            echo(f"error: {failure}")
        return path, failure
    except Exception as e:  # noqa: BLE001 - the sweep's results must never be lost to the report
        line = (f"the report could not be built ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}); "
                f"rebuild it with: lungray report --tracking-uri {tracking_uri} --run-id {parent_run_id}")
        echo(f"error: {line}")
        return None, line
