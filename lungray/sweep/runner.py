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
``trials.csv``, ``summary.csv``   per-trial results and the model x size cells (the report's
                  numbers: :mod:`lungray.sweep.conclude`)
``report/``       the HTML report (when it builds)
``ray_instance.json``   the local Ray instance the driver started (:mod:`lungray.sweep.local_ray`)

This module is the driver and its Tune run; the other subjects of a sweep have their own
modules: :mod:`~lungray.sweep.payloads` (what the parent run records about the data),
:mod:`~lungray.sweep.dryrun`, :mod:`~lungray.sweep.resume` (a changed grid is refused),
:mod:`~lungray.sweep.results` (:class:`SweepResult`, one row per trial).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from pathlib import Path
from typing import Any, Callable, Optional, Union

from lungray import tracking as T
from lungray.config import StudyConfig, dump_yaml, is_pool_size
from lungray.errors import ConfigError
from lungray.study import validate_study
from lungray.sweep import grid as G
from lungray.redact import redact, redacting, usable_uri
from lungray.sweep import dryrun as DR
from lungray.sweep import sync as S
from lungray.sweep.expdir import CONFIG_YAML, SWEEP_JSON, TUNE_NAME, new_experiment_dir
from lungray.sweep.faults import DiskFullError, failpoint, is_disk_full, no_space_left
from lungray.sweep.lock import ExperimentLock, check_private, claim_new_dir
from lungray.sweep.payloads import data_summary_payload, leakage_payload, splits_payload
from lungray.sweep.progress import disk_line, format_summary, make_callback, summary_table
from lungray.sweep.results import SweepResult, collect_rows, count_done, remove_finished_work
from lungray.sweep.resume import check_resume

# Names that lived in this module before its subjects got their own (issue 22.2): callers import
# them from here, so they stay importable here.
from lungray.sweep.expdir import load_saved_config  # noqa: F401,E402
from lungray.sweep.payloads import eval_groups_payload  # noqa: F401,E402
from lungray.sweep.resume import grid_diff  # noqa: F401,E402

log = logging.getLogger(__name__)


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
        return DR.dry_run(cfg, address, autoscaling_config, echo)

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
    if cfg.probes.source:  # a source probe on data without sites: one line, before Ray
        from lungray.config import SITE_TASK

        TASKS.get(SITE_TASK).check_data(data)

    # 2. Ray and the preflight
    from lungray.sweep import local_ray as LR
    from lungray.sweep.cluster import cluster_spec, init_ray

    # what a killed earlier driver of this output directory (or of this sweep) left running
    LR.stop_leftovers(LR.records_for(cfg.output_dir, exp_dir if state is not None else None), echo=echo)
    # MLflow credentials reach a local Ray's workers through the environment they inherit from
    # this process, never through a runtime_env (Ray logs those: lungray.sweep.ray_env)
    from lungray.sweep import mlflow_run as M

    given = usable_uri(cfg.tracking.tracking_uri or T.default_tracking_uri(cfg.output_dir), "tracking_uri")  # a saved one is masked
    M.check_access(M.credentials_to_env(given))  # a 401/403 is one line now, not after Ray's start-up
    if state is None:
        tracking_uri = cfg.tracking.tracking_uri or T.default_tracking_uri(cfg.output_dir)
    else:
        tracking_uri = usable_uri(cfg.tracking.tracking_uri or state["tracking_uri"], f"{exp_dir / SWEEP_JSON}: tracking_uri")
    quiet_ray_console(verbose)
    warm = M.StoreWarmUp(tracking_uri, quiet=not verbose).start()  # MLflow's import and store while Ray starts
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
        warm.wait()
        experiment = cfg.tracking.experiment or cfg.name
        M.OUTAGE.for_sweep(None)  # a fresh start: whatever this process saw before is history
        if state is None:
            experiment_id = M.ensure_experiment(tracking_uri, experiment, artifact_root=T.default_artifact_root(cfg.output_dir))
            exp_dir = claim_new_dir(exp_dir)  # atomic: two sweeps started in one second get two directories
            locks.append(ExperimentLock(exp_dir, "sweep", echo=echo).acquire())
            c = M.client(tracking_uri)
            for k, v in T.experiment_tags().items():  # the UI opens on the runs table of the grid
                _set_experiment_tag(c, experiment_id, k, v)
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
            probes=cfg.probes,
        )
        done_before = count_done(exp_dir)
        S.set_watch(tracking_uri)
        results, interrupted = _run_tune(cfg, ctx, pre, spec, total, exp_dir, resume=resume_dir is not None, done_before=done_before, echo=echo, verbose=verbose)
        remove_finished_work(exp_dir)
        if started_ray:
            # nothing below needs Ray, and the end step reads MLflow and builds the report for a
            # while: a Tune worker exiting late would have its output forwarded into the console's
            # last lines, where the headline goes (seen: an abseil "mutex.cc ... RAW: Unlock" line)
            LR.shutdown()
            LR.forget(ray_records)
            started_ray = False

        # 5. results, summary, report
        rows = collect_rows(exp_dir, results, ctx.trials)
        import pandas as pd

        trials_df = pd.DataFrame(rows)
        n_errors = int((trials_df["status"] != "done").sum()) if len(trials_df) else 0
        trials_df.to_csv(exp_dir / "trials.csv", index=False)
        done_rows = [r for r in rows if r["status"] == "done"]
        # the per-trial table, shown only when the findings cannot be read back from MLflow (below)
        summary = summary_table(done_rows, headline_metric(cfg))
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
        end = None
        if not interrupted and parent_done:  # console table, summary.csv, report, MLflow headline: one set of numbers
            from lungray.sweep.conclude import conclude

            end = conclude(tracking_uri, experiment, parent_run_id, exp_dir, cfg, report=want_report, echo=echo)
            report_path, report_error = end.report_path, end.report_error
        if end is not None and end.summary is not None:
            summary = end.summary
        else:
            summary.to_csv(exp_dir / "summary.csv")
            echo("")
            echo(format_summary(done_rows, headline_metric(cfg)))
        if not parent_done:
            S.mark_parent_pending(exp_dir)
            echo(f"{S.outage_line(exp_dir) or 'MLflow writes are queued'}; the results are complete in {exp_dir}: "
                 f"once the store is back run: lungray mlflow-sync {exp_dir}")
        if interrupted:
            raise KeyboardInterrupt(str(exp_dir))
        echo(ui_line(tracking_uri, experiment_id, cfg.output_dir))
        echo(disk_line(exp_dir, Path(cfg.output_dir)))
        echo(f"done: {len(trials_df) - n_errors}/{len(trials_df)} trials finished; experiment directory {exp_dir}")
        if end is not None and end.headline:  # the answer last, where the eye lands (issue 20.1)
            echo("")
            for line in end.headline:
                echo(line)
        return SweepResult(
            experiment_dir=exp_dir,
            config=cfg,
            preflight=pre,
            tracking_uri=tracking_uri,
            experiment_id=experiment_id,
            parent_run_id=parent_run_id,
            trials=trials_df,
            summary=summary,
            cells=end.cells if end is not None else None,
            headline=list(end.headline) if end is not None else [],
            report_path=report_path,
            n_errors=n_errors,
            data=data,
            report_error=report_error,
        )
    finally:
        if started_ray:
            LR.shutdown()
            LR.forget(ray_records)


def _set_experiment_tag(c, experiment_id: str, key: str, value: str) -> None:
    """One experiment tag. Two sweeps started at once into one store both set it: MLflow's SQL
    store inserts a tag it did not find, so the slower insert fails on the unique key; the tag
    is then there (the same value, both sweeps set the grid's), and one more set updates it."""
    from lungray.sweep import mlflow_run as M

    def once() -> None:
        M.retry(lambda: c.set_experiment_tag(experiment_id, key, value), what="set experiment tag")

    try:
        once()
    except Exception as e:  # noqa: BLE001 - only the insert race is retried; anything else is raised
        if "UNIQUE constraint failed" not in str(e) and "IntegrityError" not in str(e):
            raise
        once()


def quiet_ray_console(verbose: bool) -> None:
    """Keep Ray's start-up chatter off the sweep's console (``-v`` keeps it).

    Ray 2.60 logs "Token authentication is enabled for this Ray cluster..." at WARNING on every
    local start, though enabling it is its secure default: the line is dropped (the warning for a
    cluster WITHOUT authentication is not). ``ray.init(logging_level=...)`` handles Ray's INFO
    lines ("Started a local Ray instance"); MLflow's "Creating initial MLflow database
    tables..." INFO lines are raised to WARNING where MLflow is imported
    (:class:`~lungray.sweep.mlflow_run.StoreWarmUp`, in a thread while Ray starts).
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
    # Tune's own result files (tune/<trial>/result.json, progress.csv) are kept; its TensorBoard
    # logger is not: nothing reads its event files, and creating it imported tensorboardX and
    # torch into the driver while the first trials started (bench/RESULTS.md, issue 22.3)
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    run_config = tune.RunConfig(
        name=TUNE_NAME,
        storage_path=str(exp_dir),
        failure_config=tune.FailureConfig(max_failures=0 if ctx.use_ray_train else cfg.resources.max_failures),
        callbacks=[progress, S.outage_watch(str(exp_dir)), CSVLoggerCallback(), JsonLoggerCallback()],
        verbose=1 if verbose else 0,
    )
    tune_path = exp_dir / TUNE_NAME
    env: dict[str, str] = {} if verbose else {"RAY_AIR_NEW_OUTPUT": "0"}
    if resume and tune_path.exists() and tune.Tuner.can_restore(str(tune_path)) and not _tune_state_damaged(tune_path, echo):
        # the saved run config's callbacks come back with it (a sweep of an older lungray may
        # lack the explicit loggers: Tune then adds its defaults, TensorBoard's included)
        tuner = tune.Tuner.restore(str(tune_path), trainable=trainable, resume_unfinished=True, resume_errored=True, restart_errored=False)
    else:
        env["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"  # the two above are given explicitly
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
        from lungray.sweep.ray_env import no_secrets_in_runtime_env, scoped_env

        with scoped_env(env), no_secrets_in_runtime_env():  # no AWS keys in Ray's logs
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


def _build_report(tracking_uri: str, experiment: str, parent_run_id: str, exp_dir: Path, gradcam: bool, echo,
                  print_figures: bool = False) -> tuple[Optional[Path], Optional[str]]:
    """Build the HTML report and log it to the parent run (:func:`lungray.sweep.conclude.build_report_step`)."""
    from lungray.sweep.conclude import build_report_step

    return build_report_step(tracking_uri, experiment, parent_run_id, exp_dir, gradcam, echo, print_figures)
