"""MLflow bookkeeping of a sweep: one parent run, one child run per trial, never two.

Why not Ray's own integrations (measured with Ray 2.60, issue 6): ``MLflowLoggerCallback``
opens a second run for every interrupted trial after ``Tuner.restore`` (leaving the first one
RUNNING forever) and repeats step numbers after a retry; ``setup_mlflow`` opens a new run per
attempt and never ends it. What holds at one run per trial is done here:

* the driver creates the experiment and the parent run once (and reuses the parent on
  ``--resume``);
* the trial function *finds or creates* its child run by the ``lungray.trial_id`` tag under
  that parent, and hands the run id to rank 0 of its Train workers;
* rank 0 logs each epoch with an explicit ``step=epoch`` and skips steps already in MLflow,
  so a worker restarted from a checkpoint never writes a step twice;
* the trial function ends the run FINISHED, or FAILED with a ``lungray.error`` tag.

Only :class:`mlflow.MlflowClient` is used (no global active run): the same code runs in the
driver, in Tune trial actors and in Train workers, possibly in one process.

The names of tags, params, metrics and artifacts come from :mod:`lungray.tracking`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, TypeVar

from lungray import tracking as T
from lungray.errors import LungrayError
from lungray.redact import redact

log = logging.getLogger(__name__)

R = TypeVar("R")

# MLflow's limits (mlflow/utils/validation.py); values are truncated to them, not rejected.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000

#: Extra trial tags (not part of the report's schema): where the trial's worker ran.
NODE_ID_TAG = "lungray.node_id"
NODE_IP_TAG = "lungray.node_ip"
ATTEMPT_TAG = "lungray.attempts"


# --------------------------------------------------------------------------------------------
# client, retries, experiment
# --------------------------------------------------------------------------------------------


#: MLflow's own HTTP client retries 7 times with exponential back-off (~4 min per call, on top of
#: a 120 s timeout), and lungray retried that again: a stopped server cost up to ~33 min per
#: call (issue 15, item 3). lungray turns MLflow's retries off and bounds each call itself
#: (:func:`retry`); a user's own setting of these variables wins. MLflow also prints "View run
#: ... at: <tracking URI>" to stdout for every run it ends, credentials included: off.
MLFLOW_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
#: seconds lungray keeps retrying one transient failure before it queues the write (env override)
RETRY_SECONDS_ENV = "LUNGRAY_MLFLOW_RETRY_SECONDS"
RETRY_SECONDS = 20.0
#: while the server is unreachable, one probe at most this often; other writes queue at once
PROBE_SECONDS_ENV = "LUNGRAY_MLFLOW_PROBE_SECONDS"
PROBE_SECONDS = 30.0

_TRANSIENT = (
    "database is locked", "busy", "timed out", "timeout", "temporarily", "connection", "max retries exceeded",
    "remote end closed", "reset by peer", "broken pipe", "unable to open database", "disk i/o error",
    "database or disk is full", "503", "502", "504", "429",
)


def bound_http_env() -> None:
    """Set MLflow's HTTP retry/timeout variables to lungray's bounds unless the user set them.

    MLflow reads them at each request (``mlflow.utils.rest_utils.http_request``), so this holds
    in every process that calls :func:`client` (driver, Tune trials, Train workers)."""
    for k, v in MLFLOW_ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)


def credentials_to_env(tracking_uri: str) -> str:
    """``http://user:pw@host`` -> ``http://host``, with ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` set.

    MLflow reads those variables at each request; a URI it is given is echoed in its
    exceptions ("API request to http://user:pw@host/... failed"). With the credentials moved
    out, MLflow never holds them in a string, and :func:`lungray.redact.redact` masks the
    variable's value wherever it might still appear."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https") or parts.password is None:
        return tracking_uri
    os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(parts.username or "")
    os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(parts.password)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def client(tracking_uri: str):
    """An :class:`mlflow.MlflowClient` bound to ``tracking_uri`` (imports mlflow lazily), with
    lungray's HTTP bounds and any credentials of the URI moved to MLflow's variables."""
    from mlflow import MlflowClient

    bound_http_env()
    return MlflowClient(tracking_uri=credentials_to_env(tracking_uri))


class TrackingUnavailable(LungrayError):
    """The tracking store did not answer within lungray's bound; the write was not made (queue it)."""

    def __init__(self, since: float, error: str):
        self.since = since
        self.error = redact(one_line(error, 300))
        super().__init__(f"MLflow tracking unreachable since {clock(since)} ({self.error})")


class TrackingRefused(LungrayError):
    """The tracking server answered and refused: wrong credentials (401), a permission or its
    Host-header check (403). Not an outage: retrying cannot help, so it is one line at once."""


def refusal(e: BaseException) -> Optional[str]:
    """The one-line reason when ``e`` is a 401/403 answer of a tracking server, else ``None``."""
    text = str(e)
    status = getattr(e, "get_http_status_code", lambda: None)()
    m = re.search(r"error code (401|403)\b", text)
    code = int(m.group(1)) if m else (status if status in (401, 403) else None)
    if code is None:
        return None
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    who = f" of user '{user}'" if user else ""
    if code == 401:
        return (f"the MLflow server refused the credentials{who} (401 Unauthorized): set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD to a user of that server (on a cluster: ~/.lungray/mlflow.env on every node), "
                "or pass them in --tracking-uri http://user:password@host:port")
    if "invalid host header" in text.lower():
        return ("the MLflow server refused the address it was called by (403 Invalid Host header, MLflow's DNS-rebinding "
                "check): start it with --allowed-hosts naming that host:port, as cluster.yaml does")
    return (f"the MLflow server denied the request{who} (403 Forbidden): give that user EDIT permission on the "
            "experiment (or let the sweep create its own), or use the user that created it")


def check_access(tracking_uri: str) -> None:
    """One authenticated call before Ray starts: a refusal is one line now, not a traceback
    after start-up; an unreachable server is left to the sweep's outage handling."""
    if is_local_store(tracking_uri):
        return
    c = client(tracking_uri)
    try:
        retry(lambda: c.search_experiments(max_results=1), attempts=1, what="check access")
    except TrackingUnavailable:
        OUTAGE.for_sweep(None)  # unreachable is not refused: the sweep's own outage handling decides


class _Outage:
    """Process-wide circuit breaker: after one call gave up, later calls fail at once (queued)
    instead of each waiting out the retries, and one probe per ``PROBE_SECONDS`` checks
    whether the store is back."""

    def __init__(self) -> None:
        self.since: Optional[float] = None
        self.error = ""
        self.next_probe = 0.0
        self.sweep: Optional[str] = None

    def for_sweep(self, sweep: Optional[str]) -> None:
        """Forget an outage seen by another sweep (Ray re-uses worker processes across sweeps;
        a test process runs several): the breaker holds within one sweep only."""
        if sweep != self.sweep or sweep is None:
            self.since, self.next_probe, self.sweep = None, 0.0, sweep

    def start(self, e: BaseException) -> None:
        if self.since is None:
            self.since = time.time()
            log.info("MLflow unreachable (%s); writes are queued", redact(one_line(str(e), 300)))
        self.error = str(e)
        self.next_probe = time.monotonic() + _env_float(PROBE_SECONDS_ENV, PROBE_SECONDS)

    def clear(self) -> None:
        if self.since is not None:
            log.info("MLflow reachable again (unreachable since %s)", clock(self.since))
        self.since = None

    def unavailable(self, cause: Optional[BaseException] = None) -> TrackingUnavailable:
        return TrackingUnavailable(self.since or time.time(), str(cause) if cause is not None else self.error)


OUTAGE = _Outage()


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def clock(t: float) -> str:
    """``2026-05-03 14:02:11`` (local time), for "unreachable since" lines."""
    import datetime as _dt

    return _dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def is_transient(e: BaseException) -> bool:
    """A failure worth retrying/queuing (store unreachable, overloaded, locked), not a bad request."""
    if isinstance(e, TrackingUnavailable):
        return True
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    text = str(e).lower()
    return any(s in text for s in _TRANSIENT)


def retry(fn: Callable[[], R], *, attempts: Optional[int] = None, what: str = "MLflow call") -> R:
    """Call ``fn``, retrying transient store errors for at most ``LUNGRAY_MLFLOW_RETRY_SECONDS``.

    Transient: sqlite 'database is locked' (concurrent trials share one file), HTTP 5xx/429,
    refused or timed-out connections. When the bound is spent the process enters an outage
    (:data:`OUTAGE`) and raises :class:`TrackingUnavailable`: the caller queues the write on
    disk, and until the next probe every further call raises at once, so a stopped server
    costs a trial one bound, not one bound per write. Other errors are raised as they are.
    ``attempts`` caps the number of tries (tests).
    """
    if OUTAGE.since is not None:
        if time.monotonic() < OUTAGE.next_probe:
            raise OUTAGE.unavailable()
        try:  # the probe: one attempt
            out = fn()
        except Exception as e:  # noqa: BLE001 - classified
            if not is_transient(e):
                OUTAGE.clear()  # the server answered
                why = refusal(e)
                if why:
                    raise TrackingRefused(why) from e
                raise
            OUTAGE.start(e)
            raise OUTAGE.unavailable(e) from e
        OUTAGE.clear()
        return out
    deadline = time.monotonic() + _env_float(RETRY_SECONDS_ENV, RETRY_SECONDS)
    delay, i = 0.25, 0
    while True:
        i += 1
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - classified below
            if not is_transient(e):
                why = refusal(e)
                if why:
                    raise TrackingRefused(why) from e
                raise
            if time.monotonic() + delay > deadline or (attempts is not None and i >= attempts):
                OUTAGE.start(e)
                raise OUTAGE.unavailable(e) from e
            log.debug("%s failed (%s); retrying in %.1fs", what, redact(one_line(str(e), 300)), delay)
            time.sleep(delay)
            delay = min(delay * 2, 4.0)


def is_local_store(tracking_uri: str) -> bool:
    return tracking_uri.startswith("sqlite:") or tracking_uri.startswith("file:") or "://" not in tracking_uri


@contextlib.contextmanager
def _schema_lock(tracking_uri: str):
    """Hold an exclusive file lock next to a local sqlite store while the first MLflow call
    creates its tables: two sweeps started at once into one output folder both ran MLflow's
    schema migration, and the second died ("table _alembic_tmp_latest_metrics already exists")."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    db = Path(tracking_uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".init.lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_experiment(tracking_uri: str, name: str, artifact_root: Optional[str] = None) -> str:
    """Id of experiment ``name``, created if missing (restored if it was deleted).

    With a local sqlite store the artifacts go to ``artifact_root`` (next to the database)
    instead of MLflow's default ``./mlruns`` relative to wherever the driver was started.
    A tracking server with ``--serve-artifacts`` picks its own artifact root.
    """
    with _schema_lock(tracking_uri):  # the first client creates the sqlite schema
        c = client(tracking_uri)
        exp = retry(lambda: c.get_experiment_by_name(name))
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            retry(lambda: c.restore_experiment(exp.experiment_id))
        return exp.experiment_id
    kwargs = {}
    if artifact_root is not None and is_local_store(tracking_uri):
        Path(artifact_root).mkdir(parents=True, exist_ok=True)
        kwargs["artifact_location"] = Path(artifact_root).resolve().as_uri()
    try:
        return retry(lambda: c.create_experiment(name, **kwargs))
    except Exception:  # another process created it first
        exp = retry(lambda: c.get_experiment_by_name(name))
        if exp is None:
            raise
        return exp.experiment_id


class StoreWarmUp:
    """Import MLflow and open the sweep's store in a thread, while Ray starts (issue 22.3).

    A new local sqlite store runs MLflow's ~60 schema migrations, each committed to disk: ~2.5 s
    on a quiet 2-CPU machine and far more on a busy disk, most of it waiting on the disk, and
    ``import mlflow`` takes ~1 s. ``ray.init`` meanwhile mostly waits for the processes it
    starts. Both now overlap; :meth:`wait` is called before the driver's first MLflow write.

    Nothing here refuses or retries: a failure is left for the driver's own calls, which report
    it (or queue the writes) exactly as before. MLflow's client caches the store per URI, so the
    driver's calls reuse the one opened here. ``quiet`` raises MLflow's loggers to WARNING once
    imported (its "Creating initial MLflow database tables..." lines).
    """

    def __init__(self, tracking_uri: str, quiet: bool = True):
        import threading

        self.tracking_uri = tracking_uri
        self.quiet = quiet
        self.error: Optional[BaseException] = None
        self.seconds = float("nan")
        self._thread = threading.Thread(target=self._run, name="lungray-mlflow-warm-up", daemon=True)

    def start(self) -> "StoreWarmUp":
        bound_http_env()  # in this thread: os.environ is not changed while Ray spawns its processes
        self._thread.start()
        return self

    def _run(self) -> None:
        t0 = time.perf_counter()
        try:
            import mlflow  # noqa: F401 - configures its loggers at import; set the level after that

            if self.quiet:
                logging.getLogger("mlflow").setLevel(logging.WARNING)
            if is_local_store(self.tracking_uri):
                with _schema_lock(self.tracking_uri):  # the first client creates the sqlite schema
                    client(self.tracking_uri).get_experiment_by_name("Default")
        except Exception as e:  # noqa: BLE001 - the driver's own call meets it again and reports it
            self.error = e
        finally:
            self.seconds = time.perf_counter() - t0

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the warm-up is done (``False`` if ``timeout`` passed first)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


# --------------------------------------------------------------------------------------------
# params
# --------------------------------------------------------------------------------------------


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``; lists of mappings are indexed (``models.0.name``)."""
    out: dict[str, Any] = {}
    if isinstance(d, Mapping):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(d, (list, tuple)) and any(isinstance(v, Mapping) for v in d):
        for i, v in enumerate(d):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = d
    return out


def param_value(v: Any) -> str:
    s = json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v)
    return s if len(s) <= MAX_PARAM_VALUE else s[: MAX_PARAM_VALUE - 3] + "..."


def log_params(c, run_id: str, params: Mapping[str, Any]) -> None:
    """Log params in batches of MLflow's limit; keys/values redacted and truncated to its limits."""
    from mlflow.entities import Param

    items = [Param(k[:MAX_KEY], redact(param_value(v))) for k, v in params.items()]
    for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
        chunk = items[i : i + MAX_PARAMS_PER_BATCH]
        retry(lambda: c.log_batch(run_id, params=chunk), what="log params")


def log_metrics(c, run_id: str, metrics: Mapping[str, Any], step: int = 0, timestamp: Optional[int] = None) -> int:
    """Log finite numeric metrics in one batch at ``step``; returns how many were logged."""
    from mlflow.entities import Metric

    ts = timestamp if timestamp is not None else int(time.time() * 1000)
    items = [Metric(k[:MAX_KEY], v, ts, int(step)) for k, v in _finite(metrics).items()]
    for i in range(0, len(items), MAX_METRICS_PER_BATCH):
        chunk = items[i : i + MAX_METRICS_PER_BATCH]
        retry(lambda: c.log_batch(run_id, metrics=chunk), what="log metrics")
    return len(items)


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numeric entries as floats. NaN (e.g. AUC with one class present) stays
    absent rather than poisoning means; booleans and strings are not metrics."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            try:
                import numpy as np

                if isinstance(v, np.generic) and np.issubdtype(type(v), np.number):
                    v = v.item()
                else:
                    continue
            except ImportError:  # pragma: no cover
                continue
        v = float(v)
        if math.isnan(v) or math.isinf(v):
            continue
        out[k] = v
    return out


def set_tags(c, run_id: str, tags: Mapping[str, Any]) -> None:
    from mlflow.entities import RunTag

    items = [RunTag(k[:MAX_KEY], redact(str(v))[:MAX_TAG_VALUE]) for k, v in tags.items()]
    for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
        chunk = items[i : i + MAX_PARAMS_PER_BATCH]
        retry(lambda: c.log_batch(run_id, tags=chunk), what="set tags")


# --------------------------------------------------------------------------------------------
# provenance
# --------------------------------------------------------------------------------------------


def git_commit() -> str:
    """The commit of the lungray checkout (``unknown`` for an installed wheel)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        if out.returncode == 0 and out.stdout.strip():
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=10
            )
            return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def lungray_version() -> str:
    import lungray

    return lungray.__version__


# --------------------------------------------------------------------------------------------
# parent run
# --------------------------------------------------------------------------------------------


def create_parent_run(
    tracking_uri: str,
    experiment_id: str,
    *,
    study_name: str,
    config_dict: Mapping[str, Any],
    config_fingerprint: str,
    dataset_fingerprint: str,
    storage_path: str,
    data_root: str,
    artifacts: Mapping[str, Any],
) -> str:
    """Create the sweep's parent run: tags, flattened config params, JSON/YAML artifacts.

    ``artifacts`` maps an artifact file name (``config.yaml``, ``splits.json``...) to its
    content: a string is written as is, anything else as JSON.
    """
    c = client(tracking_uri)
    tags = {
        T.ROLE: T.ROLE_SWEEP,
        T.STUDY: study_name,
        T.CONFIG_FP: config_fingerprint,
        T.DATASET_FP: dataset_fingerprint,
        T.VERSION: lungray_version(),
        T.GIT_COMMIT: git_commit(),
        T.STORAGE_PATH: storage_path,
        T.DATA_ROOT: data_root,
    }
    run = retry(lambda: c.create_run(experiment_id, run_name=f"sweep:{study_name}", tags=redact(tags)))
    run_id = run.info.run_id
    log_params(c, run_id, flatten(config_dict))
    log_json_artifacts(c, run_id, artifacts)
    return run_id


def log_json_artifacts(c, run_id: str, artifacts: Mapping[str, Any], artifact_path: Optional[str] = None) -> None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lungray-art-") as d:
        for name, content in artifacts.items():
            p = Path(d) / name
            p.write_text(redact(content if isinstance(content, str) else json.dumps(content, indent=1, default=_json_default)))
        retry(lambda: c.log_artifacts(run_id, d, artifact_path), what="log artifacts")


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, np.generic):
            return o.item()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, Mapping):
        return dict(o)
    return str(o)


def reopen_run(tracking_uri: str, run_id: str) -> None:
    """Mark a run RUNNING again (a resumed sweep's parent, a retried trial's child)."""
    c = client(tracking_uri)
    retry(lambda: c.update_run(run_id, status="RUNNING"))


def finish_run(tracking_uri: str, run_id: str, status: str = "FINISHED", error: Optional[str] = None) -> None:
    """End a run with ``status`` (FINISHED, FAILED, KILLED); a failure carries ``lungray.error``."""
    c = client(tracking_uri)
    if error is not None:
        set_tags(c, run_id, {T.ERROR: one_line(error)})
    elif status == "FINISHED":
        run = retry(lambda: c.get_run(run_id))
        if T.ERROR in run.data.tags:  # a retry succeeded after an earlier failure
            retry(lambda: c.delete_tag(run_id, T.ERROR))
    retry(lambda: c.set_terminated(run_id, status=status))


def one_line(text: str, limit: int = 1000) -> str:
    """``text`` on one line, redacted, at most ``limit`` characters (error tags, console lines)."""
    s = redact(" ".join(str(text).split()))
    return s if len(s) <= limit else s[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# child runs
# --------------------------------------------------------------------------------------------


def trial_tags(trial, trial_id: str, parent_run_id: str) -> dict[str, str]:
    """Tags of a trial's child run: role, find-or-create key, grid coordinates, parent."""
    return {
        T.ROLE: T.ROLE_TRIAL,
        T.TRIAL_ID: trial_id,
        T.PARENT: parent_run_id,
        T.STUDY: trial.study,
        T.AXIS_TAGS["model"]: trial.arm,  # the model key, @variant when the study has variants
        T.AXIS_TAGS["train_size"]: str(trial.train_size),
        T.AXIS_TAGS["optimizer"]: trial.optimizer.key,
        T.AXIS_TAGS["seed"]: str(trial.seed),
        T.CELL: trial.cell,
        **({"lungray.variant": trial.variant.key} if trial.variant.key else {}),
    }


def trial_params(trial) -> dict[str, Any]:
    """The grid axes plus the flattened trial config, with the schedule resolved for this size."""
    bs, ep = trial.schedule.resolve(trial.train_size)
    params: dict[str, Any] = {
        "model": trial.arm,
        "train_size": trial.train_size,
        "optimizer": trial.optimizer.key,
        "seed": trial.seed,
    }
    if trial.variant.key:
        params["variant"] = trial.variant.key
    d = trial.to_dict()
    for k in ("study", "train_size", "seed"):
        d.pop(k, None)
    params.update(flatten(d))
    params["schedule.batch_size_resolved"] = min(bs, trial.train_size)
    params["schedule.epochs_resolved"] = ep
    return params


def _search_trial_runs(c, experiment_id: str, parent_run_id: str, trial_id: Optional[str] = None) -> list:
    f = f"tags.`{T.PARENT}` = '{parent_run_id}' and tags.`{T.ROLE}` = '{T.ROLE_TRIAL}'"
    if trial_id is not None:
        f += f" and tags.`{T.TRIAL_ID}` = '{trial_id}'"
    runs = []
    token = None
    while True:
        page = c.search_runs([experiment_id], filter_string=f, max_results=1000, order_by=["attributes.start_time ASC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def find_trial_runs(tracking_uri: str, experiment_id: str, parent_run_id: str, trial_id: Optional[str] = None) -> list:
    """The child runs of a parent (optionally only those of one trial id), oldest first."""
    c = client(tracking_uri)
    return retry(lambda: _search_trial_runs(c, experiment_id, parent_run_id, trial_id), what="search runs")


def find_or_create_trial_run(
    tracking_uri: str,
    experiment_id: str,
    parent_run_id: str,
    trial_id: str,
    trial,
    extra_tags: Optional[Mapping[str, Any]] = None,
    count_attempt: bool = True,
) -> tuple[str, bool]:
    """The child run of ``trial_id`` under ``parent_run_id``: found (and reopened) or created.

    Returns ``(run_id, created)``. A retried, restored or re-synced trial gets its existing
    run back (status set to RUNNING again, attempt counter bumped), so there is exactly one
    run per trial whatever happened to the driver or the workers. Find and create are retried
    as one step: a ``create_run`` whose answer was lost (the server made the run, the client
    timed out) is found by the next attempt instead of being created twice; should two runs
    exist anyway, the newer ones are deleted (MLflow's soft delete) and the oldest is kept.
    """
    c = client(tracking_uri)

    def _once():
        found = _search_trial_runs(c, experiment_id, parent_run_id, trial_id)
        if found:
            return found, False
        tags = {**trial_tags(trial, trial_id, parent_run_id), ATTEMPT_TAG: "1", **{k: str(v) for k, v in (extra_tags or {}).items()}}
        return [c.create_run(experiment_id, run_name=trial.name, tags=redact(tags))], True

    found, created = retry(_once, what="find or create the trial run")
    run = found[0]
    run_id = run.info.run_id
    for dup in found[1:]:
        log.warning("trial %s had %d MLflow runs; kept the oldest (%s), deleted %s", trial_id, len(found), run_id, dup.info.run_id)
        retry(lambda: c.delete_run(dup.info.run_id), what="delete a duplicate run")
    if created or not run.data.params:  # a run whose params were cut off by an outage gets them now
        log_params(c, run_id, trial_params(trial))
    if created:
        return run_id, True
    tags = dict(extra_tags or {})
    if count_attempt:
        tags[ATTEMPT_TAG] = int(run.data.tags.get(ATTEMPT_TAG, "1")) + 1
    if tags:
        set_tags(c, run_id, tags)
    if run.info.status != "RUNNING":
        retry(lambda: c.update_run(run_id, status="RUNNING"))
    return run_id, False


# --------------------------------------------------------------------------------------------
# the queue: what could not reach MLflow, recorded next to the results
# --------------------------------------------------------------------------------------------

#: In a trial directory (and the experiment directory, for the parent run): MLflow writes that
#: did not happen. Its presence means "this directory's MLflow view is behind"; the sweep's end
#: and ``lungray mlflow-sync`` replay it from the files (:mod:`lungray.sweep.sync`).
PENDING_FILE = "mlflow_pending.json"
#: Per-epoch metrics of a trial, appended (rank 0) before they go to MLflow.
EPOCH_JOURNAL = "epochs.jsonl"


def mark_pending(directory: Path, kind: str, n: int, error: BaseException | str = "") -> None:
    """Record ``n`` queued writes of ``kind`` (``epochs``, ``result``, ``status``, ``parent``).

    Best effort: on a full disk the record is lost, not the results (``mlflow-sync`` replays
    every trial directory anyway)."""
    p = Path(directory) / PENDING_FILE
    d = read_pending(directory) or {"since": OUTAGE.since or time.time(), "queued": {}}
    if isinstance(error, TrackingUnavailable):
        d["since"] = min(float(d.get("since", error.since)), error.since)
    d["error"] = one_line(getattr(error, "error", error), 300) if error else d.get("error", "")
    d["queued"] = {**d.get("queued", {}), kind: int(n)}
    try:
        atomic_write_text(p, json.dumps(d))
    except OSError as e:
        log.warning("could not record queued MLflow writes in %s: %s", p, e)


def clear_pending(directory: Path, kind: Optional[str] = None) -> None:
    """Forget the queued writes of ``kind`` (all when None); the file goes when nothing is left."""
    p = Path(directory) / PENDING_FILE
    d = read_pending(directory)
    if d is None:
        return
    if kind is not None:
        d["queued"] = {k: v for k, v in d.get("queued", {}).items() if k != kind}
    if kind is None or not any(d["queued"].values()):
        p.unlink(missing_ok=True)
    else:
        atomic_write_text(p, json.dumps(d))


def read_pending(directory: Path) -> Optional[dict]:
    p = Path(directory) / PENDING_FILE
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def queued_writes(d: Optional[Mapping[str, Any]]) -> int:
    return sum(int(v) for v in (d or {}).get("queued", {}).values())


def atomic_write_text(p: Path, text: str) -> None:
    """Write ``p`` through a temporary file and a rename: a reader (or a kill) never sees half of it,
    and a full disk leaves the previous version in place."""
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, p)


def read_journal(directory: Path) -> list[dict]:
    """The epochs a trial journaled (first record per epoch: the one MLflow got first)."""
    p = Path(directory) / EPOCH_JOURNAL
    out: dict[int, dict] = {}
    try:
        lines = p.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            d = json.loads(line)
        except ValueError:  # a line cut off by a kill
            continue
        out.setdefault(int(d["epoch"]), d)
    return [out[k] for k in sorted(out)]


class TrialLogger:
    """Rank 0's handle on its trial's child run: per-epoch metrics exactly once per step.

    On construction it reads which epochs the run already has (a restarted worker resumes
    from its last checkpoint, possibly after it had logged a later epoch), and
    :meth:`log_epoch` skips those. Steps are epochs, so the MLflow chart of a trial that was
    killed and resumed is one unbroken curve with no repeated step.

    ``flush_seconds`` > 0 buffers epochs and writes them in one batch at most that often
    (and on :meth:`flush`): one write per epoch cost ~10 ms on the default sqlite store, a
    quarter of a short CPU trial's time (``bench/RESULTS.md``). The caller flushes before it
    reports a checkpoint and at the end.

    Files first: with ``trial_dir``, each epoch is appended to ``epochs.jsonl`` there before it
    is queued for MLflow. When MLflow is unreachable (:class:`TrackingUnavailable`), epochs
    stay queued (in memory and in the journal, counted in ``mlflow_pending.json``) and
    training goes on; the next flush after the store is back writes them with their original
    timestamps. ``run_id=None`` (the run could not be created when the trial started) journals
    only: the trial's end (or ``mlflow-sync``) creates the run and replays the journal.
    """

    def __init__(
        self,
        tracking_uri: str,
        run_id: Optional[str],
        keys: Sequence[str] = T.EPOCH_METRICS,
        flush_seconds: float = 0.0,
        trial_dir: Optional[Path] = None,
    ):
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.keys = tuple(keys)
        self.client = client(tracking_uri)
        self.flush_seconds = float(flush_seconds)
        self.trial_dir = Path(trial_dir) if trial_dir is not None else None
        self.logged: set[int] = set()
        self._known = False  # whether `logged` reflects the run (False while unreachable)
        self._pending: list[tuple[int, dict[str, Any], int]] = []
        self._last_flush = time.monotonic()
        self._load_logged()

    def _load_logged(self) -> bool:
        if self._known:
            return True
        if self.run_id is None:
            return False
        try:
            for k in self.keys:
                hist = retry(lambda: self.client.get_metric_history(self.run_id, k), what="read metric history")
                self.logged.update(int(m.step) for m in hist)
        except TrackingUnavailable:
            return False
        self._known = True
        return True

    def log_epoch(self, epoch: int, metrics: Mapping[str, Any], ts: Optional[int] = None) -> bool:
        """Queue ``metrics`` at ``step=epoch`` unless that step is already in the run (or queued).

        ``ts`` (ms): the epoch's original timestamp when replaying a journal."""
        epoch = int(epoch)
        if epoch in self.logged or any(e == epoch for e, _, _ in self._pending):
            return False
        values = {k: v for k, v in metrics.items() if k not in ("epoch", "checkpoint_path", "done")}
        ts = int(ts) if ts is not None else int(time.time() * 1000)
        if self.trial_dir is not None:
            try:
                self.trial_dir.mkdir(parents=True, exist_ok=True)
                with open(self.trial_dir / EPOCH_JOURNAL, "a") as f:
                    f.write(json.dumps({"epoch": epoch, "ts": ts, "metrics": _finite(values)}) + "\n")
            except OSError as e:  # a full disk is reported where the checkpoint fails, naming its folder
                log.warning("could not journal epoch %d in %s: %s", epoch, self.trial_dir, e)
        self._pending.append((epoch, values, ts))
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()
        return True

    def flush(self) -> int:
        """Write the queued epochs (one batch per MLflow batch limit); returns how many were written.

        Never raises for an unreachable store: the epochs stay queued and are counted in the
        trial directory's ``mlflow_pending.json``."""
        from mlflow.entities import Metric

        self._last_flush = time.monotonic()
        if not self._pending:
            return 0
        if not self._load_logged():
            self._queued(OUTAGE.unavailable())
            return 0
        self._pending = [p for p in self._pending if p[0] not in self.logged]
        written = 0
        while self._pending:
            # whole epochs per batch, so a batch that fails leaves whole epochs queued
            per = max(1, MAX_METRICS_PER_BATCH // max(1, len(self._pending[0][1])))
            batch = self._pending[:per]
            items = [Metric(k[:MAX_KEY], v, ts, epoch) for epoch, values, ts in batch for k, v in _finite(values).items()]
            try:
                if items:
                    retry(lambda: self.client.log_batch(self.run_id, metrics=items), what="log metrics")
            except TrackingUnavailable as e:
                self._queued(e)
                return written
            self._pending = self._pending[len(batch):]
            self.logged.update(e for e, _, _ in batch)
            written += len(batch)
        if self.trial_dir is not None:
            clear_pending(self.trial_dir, "epochs")
        return written

    @property
    def queued(self) -> int:
        return len(self._pending)

    def _queued(self, e: BaseException) -> None:
        if self.trial_dir is not None:
            mark_pending(self.trial_dir, "epochs", len(self._pending), e)

    def log_final(self, metrics: Mapping[str, Any]) -> None:
        log_metrics(self.client, self.run_id, metrics, step=0)

    def log_file(self, path: str | os.PathLike, artifact_path: Optional[str] = None) -> None:
        retry(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path), what="log artifact")

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        set_tags(self.client, self.run_id, tags)


def run_counts(tracking_uri: str, experiment_id: str, parent_run_id: str) -> dict[str, int]:
    """Child runs per status (a test and ``mlflow-sync`` sanity check)."""
    out: dict[str, int] = {}
    for r in find_trial_runs(tracking_uri, experiment_id, parent_run_id):
        out[r.info.status] = out.get(r.info.status, 0) + 1
    return out
