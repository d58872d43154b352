"""The MLflow view of a sweep, replayed from its Ray experiment directory (the record written first).

The experiment directory is the source of truth, written before any MLflow call:

* ``trials/<trial_id>/result.json`` (``complete``: test metrics, per-epoch history, where it
  ran) and ``trials/<trial_id>/artifacts/`` (predictions, per-class table, confusion matrix,
  history, trial config, best checkpoint) for a finished trial;
* ``trials/<trial_id>/failure.json`` for a trial whose last attempt failed;
* ``trials/<trial_id>/epochs.jsonl``, every epoch's metrics as rank 0 reported them;
* ``mlflow_pending.json`` (in a trial directory, or the experiment directory for the parent
  run): the MLflow writes that did not happen because the store was unreachable.

:func:`sync_trial` makes one trial's run agree with its directory; it is what a trial calls
when it ends, what the driver calls at the end of the sweep for every trial with queued writes
(:func:`replay_pending`), and what ``lungray mlflow-sync <experiment dir>`` calls for every
trial (:func:`sync_mlflow`). It is idempotent: runs are found by the ``lungray.trial_id`` tag
(never duplicated), epochs already logged are skipped (and re-sent with their original
timestamps, which MLflow's SQL store de-duplicates), final metrics are logged once, missing
artifacts are uploaded, and the status is FINISHED for a finished trial, FAILED (with
``lungray.error``) for a failed one and left alone for one still running.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

from lungray import tracking as T
from lungray.config import TrialConfig
from lungray.errors import ConfigError
from lungray.redact import redact
from lungray.sweep.expdir import ARTIFACTS_DIR, SWEEP_JSON, load_saved_config, read_result, read_sweep_state

log = logging.getLogger(__name__)

#: In a trial directory: the last attempt's error (written before MLflow is told).
FAILURE_FILE = "failure.json"


# --------------------------------------------------------------------------------------------
# the trial's own files
# --------------------------------------------------------------------------------------------


def record_failure(tdir: Path, error: str) -> None:
    """``failure.json``; best effort (on a full disk the error still reaches Tune and MLflow)."""
    from lungray.sweep.mlflow_run import atomic_write_text

    try:
        atomic_write_text(Path(tdir) / FAILURE_FILE, json.dumps({"error": redact(error), "time": time.time()}))
    except OSError as e:
        log.warning("could not record the failure of %s in %s: %s", tdir.name, tdir, e)


def read_failure(tdir: Path) -> Optional[dict]:
    try:
        return json.loads((Path(tdir) / FAILURE_FILE).read_text())
    except (OSError, ValueError):
        return None


def _trial_of(tdir: Path) -> Optional[TrialConfig]:
    try:
        return TrialConfig.from_dict(json.loads((tdir / T.TRIAL_CONFIG).read_text())["trial"])
    except (OSError, ValueError, KeyError):
        return None


# --------------------------------------------------------------------------------------------
# one trial
# --------------------------------------------------------------------------------------------


def sync_trial(
    tracking_uri: str,
    experiment_id: str,
    parent_run_id: str,
    tdir: Union[str, Path],
    *,
    log_checkpoints: bool = True,
    run_id: Optional[str] = None,
    count_attempt: bool = False,
    error: Optional[str] = None,
) -> str:
    """Make the MLflow run of the trial in ``tdir`` agree with its files; returns its status.

    ``error``: the failure of the attempt that just ended, when ``failure.json`` could not be
    written (a full disk).

    Raises :class:`~lungray.sweep.mlflow_run.TrackingUnavailable` when the store cannot be
    reached (nothing is lost: the files stay, the caller records the queue).
    """
    from lungray.sweep.faults import failpoint
    from lungray.sweep import mlflow_run as M

    tdir = Path(tdir)
    trial = _trial_of(tdir)
    if trial is None:
        raise ConfigError(f"{tdir}: no readable {T.TRIAL_CONFIG}; not a lungray trial directory")
    result = read_result(tdir)
    complete = bool(result and result.get("complete"))
    failure = None if complete else ({"error": error} if error is not None else read_failure(tdir))
    if run_id is None:
        run_id, _ = M.find_or_create_trial_run(tracking_uri, experiment_id, parent_run_id, tdir.name, trial, count_attempt=count_attempt)
    logger = M.TrialLogger(tracking_uri, run_id)
    journal = {int(d["epoch"]): d for d in M.read_journal(tdir)}
    epochs = result.get("history", []) if complete else [{**d.get("metrics", {}), "epoch": e} for e, d in journal.items()]
    for e in epochs:
        if "epoch" in e:
            logger.log_epoch(int(e["epoch"]), e, ts=journal.get(int(e["epoch"]), {}).get("ts"))
    logger.flush()
    if logger.queued:
        raise M.OUTAGE.unavailable()
    if complete:
        c = logger.client
        if not M.retry(lambda: c.get_metric_history(run_id, "best_epoch")):  # final metrics exactly once
            logger.log_final(result.get("metrics", {}))
        tags = {M.NODE_ID_TAG: result.get("node_id", "unknown"), M.NODE_IP_TAG: result.get("node_ip", "unknown")}
        if result.get("probe_error"):  # the lung probes' own failure (lungray.sweep.probes): the report shows it
            tags[T.PROBE_ERROR_TAG] = str(result["probe_error"])[:500]
        logger.set_tags(tags)
        failpoint("sync.before_artifacts", trial.name)
        _upload_missing(logger, tdir / ARTIFACTS_DIR, log_checkpoints)
        M.finish_run(tracking_uri, run_id, "FINISHED")
        status = "FINISHED"
    elif failure is not None:
        M.finish_run(tracking_uri, run_id, "FAILED", error=failure.get("error", "unknown error"))
        status = "FAILED"
    else:
        status = "RUNNING"  # still training, or killed and waiting for --resume
    M.clear_pending(tdir)
    return status


def _upload_missing(logger, art: Path, log_checkpoints: bool) -> None:
    """Upload the trial's artifact files MLflow does not have yet (a cut-off upload resumes)."""
    from lungray.sweep import mlflow_run as M

    if not art.is_dir():
        return
    c, run_id = logger.client, logger.run_id
    have = {Path(a.path).name for a in M.retry(lambda: c.list_artifacts(run_id))}
    for p in sorted(art.iterdir()):
        if p.is_file() and p.name not in have:
            logger.log_file(p)
    ck = art / T.CHECKPOINT_DIR
    if log_checkpoints and ck.is_dir() and not link_into_local_store(c, run_id, ck, T.CHECKPOINT_DIR):
        have_ck = {Path(a.path).name for a in M.retry(lambda: c.list_artifacts(run_id, T.CHECKPOINT_DIR))}
        for p in sorted(ck.iterdir()):
            if p.is_file() and p.name not in have_ck:
                logger.log_file(p, T.CHECKPOINT_DIR)


def link_into_local_store(client, run_id: str, src_dir: Path, artifact_path: str) -> bool:
    """Log ``src_dir``'s files as artifacts by hard link when the run's artifact store is a local
    folder on the same file system (the default ``<output>/mlartifacts``); False otherwise.

    The best weights then exist once on disk (45 MB per resnet18 trial) yet are in both places:
    the trial directory (what ``mlflow-sync`` replays) and MLflow (what the report reads);
    deleting either keeps the other intact. A remote store, or another file system, gets the
    usual upload (the caller's fallback).
    """
    from lungray.sweep import mlflow_run as M

    uri = M.retry(lambda: client.get_run(run_id)).info.artifact_uri
    if not uri.startswith("file:"):
        return False
    from mlflow.utils.file_utils import local_file_uri_to_path

    dst_root = Path(local_file_uri_to_path(uri)) / artifact_path
    try:
        for src in sorted(p for p in Path(src_dir).rglob("*") if p.is_file()):
            dst = dst_root / src.relative_to(src_dir)
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.link")
            tmp.unlink(missing_ok=True)
            os.link(src, tmp)
            os.replace(tmp, dst)
    except OSError as e:  # another file system (EXDEV), no hard links there: copy instead
        log.debug("hard-linking %s into %s failed (%s); uploading a copy", src_dir, dst_root, e)
        return False
    return True


def sync_or_queue(
    tracking_uri: str, experiment_id: str, parent_run_id: str, tdir: Path, *, log_checkpoints: bool, run_id: Optional[str], error: Optional[str] = None
) -> bool:
    """:func:`sync_trial`, or the write recorded as queued when it fails; True if synced.

    A trial's results never fail on MLflow: an unreachable store (or a store that refuses the
    write: a permission, a full disk on the server) leaves the queue record with the error,
    which the end-of-sweep replay and ``lungray mlflow-sync`` retry and report."""
    from lungray.sweep import mlflow_run as M

    try:
        sync_trial(tracking_uri, experiment_id, parent_run_id, tdir, log_checkpoints=log_checkpoints, run_id=run_id, error=error)
        return True
    except Exception as e:  # noqa: BLE001 - queued, not lost; reported by the replay
        if not isinstance(e, M.TrackingUnavailable):
            log.warning("MLflow refused the results of %s (%s); queued for mlflow-sync", tdir.name, M.one_line(str(e), 300))
        M.mark_pending(tdir, "result", 1, e)
        return False


# --------------------------------------------------------------------------------------------
# the sweep
# --------------------------------------------------------------------------------------------


def pending_summary(exp_dir: Union[str, Path]) -> tuple[Optional[float], int, int]:
    """``(since, writes, trials)`` over every ``mlflow_pending.json`` of a sweep (since=None: none)."""
    from lungray.sweep import mlflow_run as M

    exp_dir = Path(exp_dir)
    since, writes, trials = None, 0, 0
    for p in [exp_dir / M.PENDING_FILE, *exp_dir.glob(f"trials/*/{M.PENDING_FILE}")]:
        d = M.read_pending(p.parent)
        if not d:
            continue
        n = M.queued_writes(d)
        if n <= 0:
            continue
        writes += n
        trials += p.parent != exp_dir
        s = float(d.get("since", time.time()))
        since = s if since is None else min(since, s)
    return since, writes, trials


def outage_line(exp_dir: Union[str, Path]) -> Optional[str]:
    """``MLflow tracking unreachable since <time>; N writes queued (k trials) ...`` or None."""
    from lungray.sweep import mlflow_run as M

    since, writes, trials = pending_summary(exp_dir)
    if since is None and M.OUTAGE.since is None:
        return None
    since = min(x for x in (since, M.OUTAGE.since) if x is not None)
    return (
        f"MLflow tracking unreachable since {M.clock(since)}; {writes} write(s) queued ({trials} trial(s)); "
        "training goes on, results are safe in the experiment directory and replayed when it is back"
    )


def replay_pending(exp_dir: Union[str, Path], tracking_uri: str, experiment_id: str, parent_run_id: str, log_checkpoints: bool = True) -> tuple[int, int]:
    """Replay every trial with queued writes; returns ``(replayed, still_queued)`` trial counts.

    Called by the driver at the end of the sweep. It probes the store once even if this process
    saw it down a moment ago; the first trial that cannot be replayed stops the replay (the
    store is down: the rest would only wait)."""
    from lungray.sweep import mlflow_run as M

    M.OUTAGE.next_probe = 0.0
    todo = sorted(p.parent for p in Path(exp_dir).glob(f"trials/*/{M.PENDING_FILE}"))
    done = 0
    for i, tdir in enumerate(todo):
        try:
            sync_trial(tracking_uri, experiment_id, parent_run_id, tdir, log_checkpoints=log_checkpoints)
            done += 1
        except M.TrackingUnavailable as e:
            M.mark_pending(tdir, "result", 1, e)
            return done, len(todo) - i
    return done, 0


def mark_parent_pending(exp_dir: Union[str, Path]) -> None:
    from lungray.sweep import mlflow_run as M

    M.mark_pending(Path(exp_dir), "parent", 1, M.OUTAGE.unavailable())


# --------------------------------------------------------------------------------------------
# the visible line while the sweep runs
# --------------------------------------------------------------------------------------------

_WATCH_URI: list[Optional[str]] = [None]
_WATCH_CLASS: list = []


def set_watch(tracking_uri: str) -> None:
    """The URI :func:`outage_watch` pings (kept in this driver process, never in Tune's pickled state)."""
    _WATCH_URI[0] = tracking_uri


def ping(tracking_uri: Optional[str], timeout: float = 2.0) -> bool:
    """Whether an MLflow server answers ``/health`` within ``timeout`` (a local store: always)."""
    if not tracking_uri or not tracking_uri.startswith(("http://", "https://")):
        return True
    import requests

    try:
        return requests.get(tracking_uri.rstrip("/") + "/health", timeout=timeout).status_code < 500
    except requests.RequestException:
        return False


def outage_watch(exp_dir: str, poll_s: float = 5.0, every_s: float = 60.0):
    """A Tune callback that prints "MLflow tracking unreachable since <time>; N write(s) queued"
    when trials start queueing, repeats it every ``every_s``, and says when the store is back.

    It reads the trials' ``mlflow_pending.json`` files (the trials talk to MLflow, not the
    driver), every ``poll_s`` at most."""
    return _watch_class()(exp_dir, poll_s, every_s)


def _watch_class():
    if _WATCH_CLASS:
        return _WATCH_CLASS[0]
    from ray.tune import Callback

    class OutageWatch(Callback):
        # Tune pickles its callbacks into the experiment directory, and cloudpickle takes a class
        # built here by value, with the globals its methods name: every name is looked up
        # through the module at call time, so the tracking URI (credentials) is never pickled.
        def __init__(self, exp_dir: str, poll_s: float, every_s: float) -> None:
            self.exp_dir, self.poll_s, self.every_s = exp_dir, poll_s, every_s
            self.setup()

        def setup(self, **info) -> None:
            self.last_poll = self.last_line = 0.0
            self.down = False

        def on_step_end(self, iteration, trials, **info) -> None:
            from lungray.sweep import sync

            sync._watch_step(self, time.time())

    _WATCH_CLASS.append(OutageWatch)
    return OutageWatch


def _watch_step(w, now: float) -> None:
    """One poll of :func:`outage_watch`'s callback ``w`` (state on ``w``, printing through progress)."""
    from lungray.sweep import progress

    if now - w.last_poll < w.poll_s:
        return
    w.last_poll = now
    since, writes, n = pending_summary(w.exp_dir)
    if since is None:
        if w.down:
            progress._ECHO[0]("MLflow tracking reachable again; the queued writes were replayed")
            w.down = False
        return
    if w.down and now - w.last_line < w.every_s:
        return
    w.last_line = now
    if w.down and ping(_WATCH_URI[0]):
        progress._ECHO[0](f"MLflow tracking reachable again; {writes} queued write(s) of {n} trial(s) are replayed at the end of the sweep")
        return
    w.down = True
    progress._ECHO[0](outage_line(w.exp_dir) or "")


def finish_parent(
    exp_dir: Union[str, Path], tracking_uri: str, parent_run_id: str, status: str, failed_trials: Optional[int] = None
) -> bool:
    """The parent run's end from the files: ``trials.csv``/``summary.csv`` (and the report) as
    artifacts, the failed-trial count, the status. Queued (False) when the store is unreachable."""
    from lungray.sweep import mlflow_run as M

    exp_dir = Path(exp_dir)
    try:
        c = M.client(tracking_uri)
        files = {n: (exp_dir / n).read_text() for n in ("trials.csv", "summary.csv") if (exp_dir / n).is_file()}
        if files:
            M.log_json_artifacts(c, parent_run_id, files)
        report = exp_dir / "report"
        if (report / "report.html").is_file() and not M.retry(lambda: c.list_artifacts(parent_run_id, "report")):
            M.retry(lambda: c.log_artifacts(parent_run_id, str(report), "report"), what="log the report")
        if failed_trials is not None:
            M.set_tags(c, parent_run_id, {"lungray.failed_trials": failed_trials})
        M.finish_run(tracking_uri, parent_run_id, status)
    except M.TrackingUnavailable as e:
        M.mark_pending(exp_dir, "parent", 1, e)
        return False
    M.clear_pending(exp_dir, "parent")
    return True


def _find_parent(tracking_uri: str, experiment_id: str, storage_path: str) -> Optional[str]:
    from lungray.sweep import mlflow_run as M

    c = M.client(tracking_uri)
    f = f"tags.`{T.ROLE}` = '{T.ROLE_SWEEP}' and tags.`{T.STORAGE_PATH}` = '{storage_path}'"
    runs = M.retry(lambda: c.search_runs([experiment_id], filter_string=f, max_results=5, order_by=["attributes.start_time ASC"]))
    return runs[0].info.run_id if runs else None


def _run_exists(tracking_uri: str, run_id: Optional[str]) -> bool:
    from lungray.sweep import mlflow_run as M

    if not run_id:
        return False
    try:
        run = M.retry(lambda: M.client(tracking_uri).get_run(run_id))
        return run.info.lifecycle_stage == "active"
    except M.TrackingUnavailable:
        raise
    except Exception:  # noqa: BLE001 - unknown run id on this server
        return False


def sync_mlflow(experiment_dir: Union[str, Path], tracking_uri: Optional[str] = None, echo: Callable[[str], None] = print) -> int:
    """Replay every trial of ``experiment_dir`` into MLflow; returns how many were synced.

    ``tracking_uri`` defaults to the one the sweep used (``sweep.json``; credentials, which are
    never saved, come from ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``). The parent run is the
    sweep's own when the server has it, else one is found by the ``lungray.storage_path`` tag or
    created (with the saved config). Refused while a sweep holds the directory's lock.
    """
    from lungray.config import dump_yaml
    from lungray.redact import usable_uri
    from lungray.sweep import mlflow_run as M
    from lungray.sweep.lock import ExperimentLock

    exp_dir = Path(experiment_dir).resolve()
    if not (exp_dir / SWEEP_JSON).exists():
        raise ConfigError(f"{exp_dir}: not a lungray experiment directory (no {SWEEP_JSON}); pass the directory a sweep printed at start")
    with ExperimentLock(exp_dir, "mlflow-sync", echo=echo):
        state = read_sweep_state(exp_dir)
        cfg = load_saved_config(exp_dir)
        saved = state.get("tracking_uri")
        uri = tracking_uri or usable_uri(saved, f"{exp_dir / SWEEP_JSON}: tracking_uri") or T.default_tracking_uri(cfg.output_dir)
        experiment = state.get("experiment") or cfg.tracking.experiment or cfg.name
        M.OUTAGE.for_sweep(None)
        experiment_id = M.ensure_experiment(uri, experiment, artifact_root=T.default_artifact_root(cfg.output_dir))

        parent = state.get("parent_run_id") if saved is not None and redact(uri) == saved else None
        if not _run_exists(uri, parent):
            parent = _find_parent(uri, experiment_id, str(exp_dir))
        if parent is None:
            parent = M.create_parent_run(
                uri,
                experiment_id,
                study_name=cfg.name,
                config_dict=cfg.to_dict(),
                config_fingerprint=cfg.fingerprint(),
                dataset_fingerprint=str(state.get("dataset_fingerprint", "")),
                storage_path=str(exp_dir),
                data_root=str(state.get("data_root", "")),
                artifacts={T.CONFIG_YAML: dump_yaml(cfg)},
            )
            log.info("created parent run %s on %s", parent, redact(uri))

        n = 0
        trials_dir = exp_dir / "trials"
        for tdir in sorted(trials_dir.iterdir()) if trials_dir.exists() else []:
            if _trial_of(tdir) is None:
                log.warning("skipping %s: no %s", tdir, T.TRIAL_CONFIG)
                continue
            status = sync_trial(uri, experiment_id, parent, tdir, log_checkpoints=cfg.tracking.log_checkpoints)
            n += status == "FINISHED"
        status = state.get("status")
        if status is None:  # the driver never recorded an end (killed): finished when no trial runs
            runs = M.find_trial_runs(uri, experiment_id, parent)
            status = "FINISHED" if runs and all(r.info.status != "RUNNING" for r in runs) else None
        if status is not None:
            finish_parent(exp_dir, uri, parent, status, state.get("failed_trials"))
            M.clear_pending(exp_dir)
        return n


def write_state(exp_dir: Union[str, Path], state: Mapping[str, Any]) -> None:
    """``sweep.json``, redacted, replaced atomically."""
    from lungray.sweep.mlflow_run import atomic_write_text

    atomic_write_text(Path(exp_dir) / SWEEP_JSON, json.dumps(redact(dict(state)), indent=1))
