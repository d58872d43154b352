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

import json
import logging
import math
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, TypeVar

from lungray import tracking as T

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


def client(tracking_uri: str):
    """An :class:`mlflow.MlflowClient` bound to ``tracking_uri`` (imports mlflow lazily)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def retry(fn: Callable[[], R], *, attempts: int = 8, what: str = "MLflow call") -> R:
    """Call ``fn`` and retry transient store errors (sqlite 'database is locked', HTTP 5xx).

    Concurrent trials share one sqlite file by default; SQLite serialises writers and can
    refuse one that waits too long. A short exponential back-off is enough at the write rate
    of a sweep (a few writes per trial epoch).
    """
    delay = 0.2
    for i in range(attempts):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - classified below
            text = str(e).lower()
            transient = any(s in text for s in ("database is locked", "busy", "timed out", "temporarily", "503", "502", "connection"))
            if not transient or i == attempts - 1:
                raise
            log.debug("%s failed (%s); retrying in %.1fs", what, e, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")  # pragma: no cover


def is_local_store(tracking_uri: str) -> bool:
    return tracking_uri.startswith("sqlite:") or tracking_uri.startswith("file:") or "://" not in tracking_uri


def ensure_experiment(tracking_uri: str, name: str, artifact_root: Optional[str] = None) -> str:
    """Id of experiment ``name``, created if missing (restored if it was deleted).

    With a local sqlite store the artifacts go to ``artifact_root`` (next to the database)
    instead of MLflow's default ``./mlruns`` relative to wherever the driver was started.
    A tracking server with ``--serve-artifacts`` picks its own artifact root.
    """
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
    """Log params in batches of MLflow's limit; keys/values truncated to its limits."""
    from mlflow.entities import Param

    items = [Param(k[:MAX_KEY], param_value(v)) for k, v in params.items()]
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

    items = [RunTag(k[:MAX_KEY], str(v)[:MAX_TAG_VALUE]) for k, v in tags.items()]
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
    run = retry(lambda: c.create_run(experiment_id, run_name=f"sweep:{study_name}", tags=tags))
    run_id = run.info.run_id
    log_params(c, run_id, flatten(config_dict))
    log_json_artifacts(c, run_id, artifacts)
    return run_id


def log_json_artifacts(c, run_id: str, artifacts: Mapping[str, Any], artifact_path: Optional[str] = None) -> None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lungray-art-") as d:
        for name, content in artifacts.items():
            p = Path(d) / name
            p.write_text(content if isinstance(content, str) else json.dumps(content, indent=1, default=_json_default))
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
    s = " ".join(str(text).split())
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


def find_trial_runs(tracking_uri: str, experiment_id: str, parent_run_id: str, trial_id: Optional[str] = None) -> list:
    """The child runs of a parent (optionally only those of one trial id), oldest first."""
    c = client(tracking_uri)
    f = f"tags.`{T.PARENT}` = '{parent_run_id}' and tags.`{T.ROLE}` = '{T.ROLE_TRIAL}'"
    if trial_id is not None:
        f += f" and tags.`{T.TRIAL_ID}` = '{trial_id}'"
    runs = []
    token = None
    while True:
        page = retry(
            lambda: c.search_runs([experiment_id], filter_string=f, max_results=1000, order_by=["attributes.start_time ASC"], page_token=token)
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
    return runs


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
    run per trial whatever happened to the driver or the workers.
    """
    c = client(tracking_uri)
    found = find_trial_runs(tracking_uri, experiment_id, parent_run_id, trial_id)
    if found:
        run = found[0]
        run_id = run.info.run_id
        if len(found) > 1:  # pragma: no cover - guarded against, kept visible if it ever happens
            log.warning("trial %s has %d MLflow runs; using the oldest (%s)", trial_id, len(found), run_id)
        tags = dict(extra_tags or {})
        if count_attempt:
            tags[ATTEMPT_TAG] = int(run.data.tags.get(ATTEMPT_TAG, "1")) + 1
        if tags:
            set_tags(c, run_id, tags)
        if run.info.status != "RUNNING":
            retry(lambda: c.update_run(run_id, status="RUNNING"))
        return run_id, False
    tags = {**trial_tags(trial, trial_id, parent_run_id), ATTEMPT_TAG: "1", **{k: str(v) for k, v in (extra_tags or {}).items()}}
    run = retry(lambda: c.create_run(experiment_id, run_name=trial.name, tags=tags))
    run_id = run.info.run_id
    log_params(c, run_id, trial_params(trial))
    return run_id, True


class TrialLogger:
    """Rank 0's handle on its trial's child run: per-epoch metrics exactly once per step.

    On construction it reads which epochs the run already has (a restarted worker resumes
    from its last checkpoint, possibly after it had logged a later epoch), and
    :meth:`log_epoch` skips those. Steps are epochs, so the MLflow chart of a trial that was
    killed and resumed is one unbroken curve with no repeated step.

    ``flush_seconds`` > 0 buffers epochs and writes them in one batch at most that often
    (and on :meth:`flush`): one write per epoch cost ~10 ms on the default sqlite store, a
    quarter of a short CPU trial's time (``bench/RESULTS.md``). The caller flushes before it
    reports a checkpoint (so every epoch up to a persisted checkpoint is in MLflow or in that
    checkpoint, for :func:`lungray.sweep.trainable._catch_up`) and at the end.
    """

    def __init__(self, tracking_uri: str, run_id: str, keys: Sequence[str] = T.EPOCH_METRICS, flush_seconds: float = 0.0):
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.client = client(tracking_uri)
        self.flush_seconds = float(flush_seconds)
        self.logged: set[int] = set()
        self._pending: list[tuple[int, dict[str, Any], int]] = []
        self._last_flush = time.monotonic()
        for k in keys:
            hist = retry(lambda: self.client.get_metric_history(run_id, k))
            self.logged.update(int(m.step) for m in hist)

    def log_epoch(self, epoch: int, metrics: Mapping[str, Any]) -> bool:
        """Log ``metrics`` at ``step=epoch`` unless that step is already in the run (or queued)."""
        epoch = int(epoch)
        if epoch in self.logged:
            return False
        values = {k: v for k, v in metrics.items() if k not in ("epoch", "checkpoint_path", "done")}
        self._pending.append((epoch, values, int(time.time() * 1000)))
        self.logged.add(epoch)
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()
        return True

    def flush(self) -> int:
        """Write the queued epochs (one batch per MLflow batch limit); returns how many."""
        from mlflow.entities import Metric

        pending, self._pending = self._pending, []
        self._last_flush = time.monotonic()
        if not pending:
            return 0
        items = []
        for epoch, values, ts in pending:
            for k, v in _finite(values).items():
                items.append(Metric(k[:MAX_KEY], v, ts, epoch))
        for i in range(0, len(items), MAX_METRICS_PER_BATCH):
            chunk = items[i : i + MAX_METRICS_PER_BATCH]
            retry(lambda: self.client.log_batch(self.run_id, metrics=chunk), what="log metrics")
        return len(pending)

    def log_final(self, metrics: Mapping[str, Any]) -> None:
        log_metrics(self.client, self.run_id, metrics, step=0)

    def log_dir(self, local_dir: str | os.PathLike, artifact_path: Optional[str] = None) -> None:
        retry(lambda: self.client.log_artifacts(self.run_id, str(local_dir), artifact_path), what="log artifacts")

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
