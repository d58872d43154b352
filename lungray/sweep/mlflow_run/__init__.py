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

The package holds one subject per module; every name is also importable from here (``from
lungray.sweep import mlflow_run as M``; ``M.client``, ``M.OUTAGE``...):

* :mod:`~lungray.sweep.mlflow_run.connection`: the client, HTTP bounds, credentials, retries, the
  outage breaker, the store's warm-up while Ray starts;
* :mod:`~lungray.sweep.mlflow_run.params`: params, metrics and tags within MLflow's limits;
* :mod:`~lungray.sweep.mlflow_run.runs`: the experiment, the parent run, the child runs;
* :mod:`~lungray.sweep.mlflow_run.pending`: the queue of writes that could not be made;
* :mod:`~lungray.sweep.mlflow_run.trial_logger`: rank 0's per-epoch metrics (:class:`TrialLogger`).
"""

from __future__ import annotations

from lungray.sweep.mlflow_run.connection import (  # noqa: F401
    MLFLOW_ENV_DEFAULTS,
    RETRY_SECONDS_ENV,
    RETRY_SECONDS,
    PROBE_SECONDS_ENV,
    PROBE_SECONDS,
    _TRANSIENT,
    bound_http_env,
    credentials_to_env,
    client,
    TrackingUnavailable,
    TrackingRefused,
    refusal,
    check_access,
    _Outage,
    OUTAGE,
    _env_float,
    clock,
    is_transient,
    retry,
    is_local_store,
    schema_lock,
    StoreWarmUp,
    one_line,
)
from lungray.sweep.mlflow_run.params import (  # noqa: F401
    MAX_PARAM_VALUE,
    MAX_TAG_VALUE,
    MAX_KEY,
    MAX_PARAMS_PER_BATCH,
    MAX_METRICS_PER_BATCH,
    flatten,
    param_value,
    log_params,
    log_metrics,
    _finite,
    set_tags,
)
from lungray.sweep.mlflow_run.runs import (  # noqa: F401
    NODE_ID_TAG,
    NODE_IP_TAG,
    ATTEMPT_TAG,
    ensure_experiment,
    git_commit,
    lungray_version,
    create_parent_run,
    log_json_artifacts,
    _json_default,
    reopen_run,
    finish_run,
    trial_tags,
    trial_params,
    _search_trial_runs,
    find_trial_runs,
    find_or_create_trial_run,
    run_counts,
)
from lungray.sweep.mlflow_run.pending import (  # noqa: F401
    PENDING_FILE,
    EPOCH_JOURNAL,
    mark_pending,
    clear_pending,
    read_pending,
    queued_writes,
    read_journal,
)
from lungray.sweep.mlflow_run.trial_logger import (  # noqa: F401
    TrialLogger,
)
from lungray.sweep.expdir import atomic_write_text  # noqa: F401 - its home is the experiment directory's module

