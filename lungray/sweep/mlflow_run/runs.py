"""The sweep's runs in MLflow: its experiment, the parent run, one child run per trial.

Exactly one child run per trial, whatever happens to the driver or the workers: the trial finds
or creates its run by the ``lungray.trial_id`` tag under the parent (find and create retried as
one step, duplicates deleted), a retried or resumed trial reopens it and counts the attempt, and
a run ends FINISHED, or FAILED with a ``lungray.error`` tag. The parent run carries the
provenance (version, git commit, fingerprints), the flattened config and the JSON/YAML payloads.
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path
from typing import Any, Mapping, Optional

from lungray import tracking as T
from lungray.redact import redact
from lungray.sweep.mlflow_run.connection import client, is_local_store, one_line, retry, schema_lock
from lungray.sweep.mlflow_run.params import flatten, log_params, set_tags

log = logging.getLogger(__name__)

#: Extra trial tags (not part of the report's schema): where the trial's worker ran.
NODE_ID_TAG = "lungray.node_id"
NODE_IP_TAG = "lungray.node_ip"
ATTEMPT_TAG = "lungray.attempts"


# --------------------------------------------------------------------------------------------
# experiment
# --------------------------------------------------------------------------------------------


def ensure_experiment(tracking_uri: str, name: str, artifact_root: Optional[str] = None) -> str:
    """Id of experiment ``name``, created if missing (restored if it was deleted).

    With a local sqlite store the artifacts go to ``artifact_root`` (next to the database)
    instead of MLflow's default ``./mlruns`` relative to wherever the driver was started.
    A tracking server with ``--serve-artifacts`` picks its own artifact root.
    """
    with schema_lock(tracking_uri):  # the first client creates the sqlite schema
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



def run_counts(tracking_uri: str, experiment_id: str, parent_run_id: str) -> dict[str, int]:
    """Child runs per status (a test and ``mlflow-sync`` sanity check)."""
    out: dict[str, int] = {}
    for r in find_trial_runs(tracking_uri, experiment_id, parent_run_id):
        out[r.info.status] = out.get(r.info.status, 0) + 1
    return out
