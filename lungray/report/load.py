"""Read a sweep back from MLflow, exactly as :mod:`lungray.tracking` says it was written.

The report never talks to Ray or to the experiment directory: MLflow is the record a user can
still reach long after the cluster is gone (issue 4). :func:`load_sweep` finds the parent
("sweep") run, its child ("trial") runs, their final ``test_*`` metrics, per-epoch histories and
``predictions.csv`` artifacts, and the parent's ``config.yaml``/``leakage.json``/
``data_summary.json``/``splits.json``. It also works out what is missing: the expected grid comes
from the parent's resolved ``config.yaml`` (model x size x optimizer x seed), so a partial sweep
yields a partial report that names the trials not there yet and the ones that failed, and why.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from lungray import tracking as T
from lungray.errors import LungrayError

log = logging.getLogger(__name__)

__all__ = ["Sweep", "load_sweep", "resolve_parent", "safe_uri", "prediction_matrix", "find_store", "latest_sweep_id"]

#: run status -> how the report treats it
COMPLETE, FAILED, RUNNING = "complete", "failed", "running"


@dataclass
class Sweep:
    """Everything the report needs from one sweep, as plain Python/pandas objects.

    ``runs`` has one row per trial (duplicates from retries collapsed to the best attempt):
    ``run_id, state, status, trial_id, model, train_size, optimizer, seed, cell, error`` plus
    every final metric (``test_accuracy``, ``best_epoch``...). ``histories`` is long-form
    ``run_id, key, step, value`` for the per-epoch metrics. ``predictions`` maps run id to its
    ``predictions.csv``. ``expected`` is the grid from ``config.yaml`` with each trial's state
    (``complete``, ``failed``, ``running``, ``missing``).
    """

    tracking_uri: str
    experiment_id: str
    experiment_name: str
    parent_id: str
    parent_name: str
    parent_status: str
    parent_tags: dict[str, str]
    parent_params: dict[str, str]
    config: Any  # lungray.config.StudyConfig or None
    config_text: str
    leakage: Optional[dict]
    data_summary: Optional[dict]
    splits: Optional[dict]
    runs: pd.DataFrame
    histories: pd.DataFrame
    predictions: dict[str, pd.DataFrame]
    class_names: tuple[str, ...]
    expected: pd.DataFrame
    checkpoints: dict[str, bool] = field(default_factory=dict)  # run id -> has checkpoint/best.pt
    notes: list[str] = field(default_factory=list)
    #: the source-probe trials (``probes.source``, issue 24.2: the same columns as ``runs``),
    #: kept out of every table of the study's own models; :mod:`lungray.report.shortcut` reads them
    probe_runs: pd.DataFrame = field(default_factory=pd.DataFrame)
    # external evaluation sets (issue 24): set name -> run id -> that set's predictions.ext.<name>.csv
    external_predictions: dict[str, dict[str, pd.DataFrame]] = field(default_factory=dict)

    @property
    def external_names(self) -> list[str]:
        """The sweep's external evaluation sets: from ``config.yaml`` (in its order), else from
        the runs' ``ext.<name>.*`` metrics."""
        if self.config is not None and getattr(self.config.data, "external", ()):
            return [e.name for e in self.config.data.external]
        found = []
        for c in self.runs.columns:
            if isinstance(c, str) and c.startswith(T.EXT_PREFIX) and c.count(".") >= 2:
                found.append(c[len(T.EXT_PREFIX):].rsplit(".", 1)[0])
        return list(dict.fromkeys(found))

    # -- views --------------------------------------------------------------------------------
    @property
    def complete(self) -> pd.DataFrame:
        return self.runs[self.runs["state"] == COMPLETE]

    @property
    def failed(self) -> pd.DataFrame:
        return self.runs[self.runs["state"] == FAILED]

    @property
    def missing(self) -> pd.DataFrame:
        """Expected trials with no complete run (failed, still running, or never started)."""
        if self.expected.empty:
            return self.expected
        return self.expected[self.expected["state"] != COMPLETE]

    @property
    def models(self) -> list[str]:
        arms = list(dict.fromkeys(t.arm for t in self.config.study_trials())) if self.config else None
        return _ordered(self.runs["model"], arms)

    @property
    def optimizers(self) -> list[str]:
        return _ordered(self.runs["optimizer"], [o.key for o in self.config.optimizers] if self.config else None)

    @property
    def sizes(self) -> list[int]:
        return sorted(int(s) for s in self.runs["train_size"].dropna().unique())

    @property
    def seeds(self) -> list[int]:
        return sorted(int(s) for s in self.runs["seed"].dropna().unique())

    @property
    def task(self) -> str:
        """``train.task`` of the sweep (``classification`` when the config is unknown)."""
        return _task_of(self.config)

    @property
    def spec(self):
        """What the report reads for this task (:class:`lungray.train.tasks.ReportSpec`): the
        primary metric of the curves, fits and paired comparisons, the headline metrics, the
        explanation panels."""
        from lungray.train.tasks import TASKS

        return TASKS.get(self.task).report_spec

    @property
    def study(self) -> str:
        return self.parent_tags.get(T.STUDY) or (self.config.name if self.config else self.parent_name)

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(self.tracking_uri)


def _ordered(values: pd.Series, preferred: Optional[list[str]]) -> list[str]:
    present = [str(v) for v in pd.unique(values.dropna())]
    if preferred:
        return [p for p in preferred if p in present] + sorted(v for v in present if v not in preferred)
    return sorted(present)


def safe_uri(uri: str) -> str:
    """A tracking URI with its credentials masked (:func:`lungray.redact.redact`), fit to print in a report."""
    from lungray.redact import redact

    return redact(uri)


# ---------------------------------------------------------------------------------------------
# finding the sweep
# ---------------------------------------------------------------------------------------------


#: Where a sweep writes its store by default, relative to the folder it was started from
#: (``StudyConfig.output_dir`` / ``mlflow.db``, :func:`lungray.tracking.default_tracking_uri`).
DEFAULT_STORE = Path("lungray_runs") / "mlflow.db"


def find_store(explicit: Optional[str] = None, start: Optional[str | Path] = None) -> str:
    """The MLflow store to read when a notebook (or a script) names none.

    ``explicit``, else ``$MLFLOW_TRACKING_URI``, else the sweeps' default store
    ``lungray_runs/mlflow.db`` in ``start`` (default: the current folder) or the nearest folder
    above it that has one: a notebook runs in ``notebooks/`` while the README's job wrote
    ``lungray_runs/`` in the repository root. A sqlite store that does not exist is an error
    naming where it looked, never a new empty ``mlflow.db`` created in passing (MLflow's own
    default would leave one in the notebook's folder).
    """
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        if T.is_sqlite(uri) and uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
            raise LungrayError(f"no MLflow store at {uri}: check the path (a sweep prints its tracking URI)")
        return uri
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / DEFAULT_STORE).is_file():
            return f"sqlite:///{folder / DEFAULT_STORE}"
    raise LungrayError(
        f"no MLflow store found: no {DEFAULT_STORE} in {here} or any folder above it; run a sweep first "
        "(python sweeps/size_study.py) or set LUNGRAY_TRACKING_URI / MLFLOW_TRACKING_URI"
    )


def latest_sweep_id(tracking_uri: str) -> str:
    """The parent run id of the most recently started lungray sweep in the store, any experiment."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, filter_string=f"tags.`{T.ROLE}` = '{T.ROLE_SWEEP}'",
                              order_by=["attributes.start_time DESC"], max_results=1) if exps else []
    if not runs:
        raise LungrayError(f"no lungray sweep in {safe_uri(tracking_uri)}; run one first (python sweeps/size_study.py)")
    return runs[0].info.run_id


def resolve_parent(client, experiment: Optional[str], parent_run_id: Optional[str]) -> tuple[Any, list[str]]:
    """The parent run of a sweep, from its id (a trial's id also works) or its experiment.

    With an experiment name (or id) holding several sweeps, the most recently started one is
    used and the others are returned as notes, so the report says which sweep it shows.
    """
    from mlflow.exceptions import MlflowException

    notes: list[str] = []
    if parent_run_id:
        try:
            run = client.get_run(parent_run_id)
        except MlflowException as e:
            raise LungrayError(
                f"MLflow run '{parent_run_id}' not found at this tracking URI ({e.error_code}); "
                "check --run-id and --tracking-uri"
            ) from None
        role = run.data.tags.get(T.ROLE)
        if role == T.ROLE_TRIAL and run.data.tags.get(T.PARENT):
            notes.append(f"run {parent_run_id} is a trial; showing its sweep {run.data.tags[T.PARENT]}")
            run = client.get_run(run.data.tags[T.PARENT])
        elif role != T.ROLE_SWEEP:
            raise LungrayError(
                f"MLflow run '{parent_run_id}' is not a lungray sweep (tag {T.ROLE}={role!r}); "
                "pass the sweep's parent run id (tag lungray.role=sweep)"
            )
        return run, notes
    if not experiment:
        raise LungrayError("give an MLflow experiment (--experiment) or a sweep's parent run id (--run-id)")
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        try:
            exp = client.get_experiment(experiment)
        except MlflowException:
            exp = None
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise LungrayError(
            f"MLflow experiment '{experiment}' not found; experiments at this tracking URI: "
            f"{', '.join(names) or '(none)'}"
        )
    parents = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{T.ROLE}` = '{T.ROLE_SWEEP}'",
        order_by=["attributes.start_time DESC"],
        max_results=50,
    )
    if not parents:
        raise LungrayError(
            f"MLflow experiment '{exp.name}' has no lungray sweep run (tag {T.ROLE}={T.ROLE_SWEEP}); "
            "was it written by a lungray sweep?"
        )
    if len(parents) > 1:
        others = ", ".join(p.info.run_id for p in parents[1:6])
        notes.append(
            f"experiment '{exp.name}' holds {len(parents)} sweeps; this report shows the latest "
            f"({parents[0].info.run_id}); others: {others} (use --run-id)"
        )
    return parents[0], notes


def _all_runs(client, experiment_id: str, filter_string: str) -> list:
    out, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def _to_int(v: Any) -> Optional[int]:
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return None


@contextlib.contextmanager
def quiet_downloads():
    """MLflow draws a progress bar per downloaded file; a report downloads hundreds of tiny
    CSVs. Switch the bar off for the duration (restoring the user's setting afterwards)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    old = os.environ.get(key)
    if old is None:
        os.environ[key] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)


def download(client, run_id: str, path: str, dst: Path) -> Path:
    """Download one artifact of ``run_id`` into ``dst/<run_id>/`` and return its local path."""
    d = Path(dst) / run_id
    d.mkdir(parents=True, exist_ok=True)
    with quiet_downloads():
        return Path(client.download_artifacts(run_id, path, str(d)))


def _read_json_artifact(client, run_id: str, path: str, dst: Path, present: set[str], notes: list[str]) -> Optional[dict]:
    if path not in present:
        notes.append(f"the sweep run has no {path} artifact; that part of the report is empty")
        return None
    text = download(client, run_id, path, dst).read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        notes.append(f"{path} of the sweep run is not valid JSON ({e}); ignored")
        return None


# ---------------------------------------------------------------------------------------------
# the loader
# ---------------------------------------------------------------------------------------------


def load_sweep(
    tracking_uri: Optional[str] = None,
    experiment: Optional[str] = None,
    parent_run_id: Optional[str] = None,
    *,
    predictions: bool = True,
    histories: bool = True,
    artifact_dir: Optional[str | Path] = None,
) -> Sweep:
    """Read one sweep (parent run + trials) from MLflow into a :class:`Sweep`.

    ``artifact_dir`` is where artifacts are downloaded (a temporary directory by default; the
    CSVs are read into memory, so it may be deleted afterwards).
    """
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri or mlflow.get_tracking_uri()
    client = MlflowClient(uri)
    parent, notes = resolve_parent(client, experiment, parent_run_id)
    pid = parent.info.run_id
    exp = client.get_experiment(parent.info.experiment_id)
    tmp = Path(artifact_dir) if artifact_dir else Path(tempfile.mkdtemp(prefix="lungray-report-"))

    # -- parent artifacts -------------------------------------------------------------------
    present = {a.path for a in client.list_artifacts(pid)}
    config, config_text = None, ""
    if T.CONFIG_YAML in present:
        config_text = download(client, pid, T.CONFIG_YAML, tmp).read_text()
        config = _parse_config(config_text, notes)
    else:
        notes.append(f"the sweep run has no {T.CONFIG_YAML}: the expected grid is unknown, only runs present are shown")
    leakage = _read_json_artifact(client, pid, T.LEAKAGE_JSON, tmp, present, notes)
    summary = _read_json_artifact(client, pid, T.DATA_SUMMARY, tmp, present, notes)
    splits = _read_json_artifact(client, pid, T.SPLITS_JSON, tmp, present, notes)

    # -- trials ---------------------------------------------------------------------------------
    from lungray.train.tasks import TASKS

    spec = TASKS.get(_task_of(config)).report_spec
    epoch_keys = tuple(dict.fromkeys(T.EPOCH_METRICS + spec.epoch_metrics))
    children = _all_runs(client, parent.info.experiment_id, f"tags.`{T.PARENT}` = '{pid}'")
    rows = []
    for r in children:
        tags, params, metrics = r.data.tags, r.data.params, r.data.metrics
        if tags.get(T.ROLE, T.ROLE_TRIAL) != T.ROLE_TRIAL:
            continue
        err = tags.get(T.ERROR, "")
        status = r.info.status
        if err or status in ("FAILED", "KILLED"):
            state = FAILED
        elif status == "FINISHED" and f"{T.TEST_PREFIX}{spec.primary_metric}" in metrics:
            state = COMPLETE
        else:
            state = RUNNING
        row = {
            "run_id": r.info.run_id,
            "run_name": r.info.run_name,
            "status": status,
            "state": state,
            "trial_id": tags.get(T.TRIAL_ID, r.info.run_id),
            "model": tags.get(T.AXIS_TAGS["model"], params.get("model")),
            "train_size": _to_int(tags.get(T.AXIS_TAGS["train_size"], params.get("train_size"))),
            "optimizer": tags.get(T.AXIS_TAGS["optimizer"], params.get("optimizer")),
            "seed": _to_int(tags.get(T.AXIS_TAGS["seed"], params.get("seed"))),
            "cell": tags.get(T.CELL, ""),
            "error": err or ("" if state != FAILED else f"run status {status}, no {T.ERROR} tag"),
            "start_time": r.info.start_time,
        }
        row.update({k: float(v) for k, v in metrics.items()})
        rows.append(row)
    runs = pd.DataFrame(rows)
    base_cols = ["run_id", "run_name", "status", "state", "trial_id", "model", "train_size", "optimizer", "seed", "cell", "error", "start_time"]
    if runs.empty:
        runs = pd.DataFrame(columns=base_cols)
    else:
        # one row per trial: retries and re-syncs may have left several runs with one trial id
        rank = runs["state"].map({COMPLETE: 0, RUNNING: 1, FAILED: 2})
        runs = runs.assign(_rank=rank).sort_values(["_rank", "start_time"], ascending=[True, False])
        dup = runs.duplicated("trial_id", keep="first")
        if dup.any():
            notes.append(f"{int(dup.sum())} duplicate trial run(s) (retries) ignored; the best attempt of each trial is shown")
        runs = runs[~dup].drop(columns="_rank")
        runs["train_size"] = runs["train_size"].astype("Int64")
        runs["seed"] = runs["seed"].astype("Int64")
        runs = runs.sort_values(["model", "optimizer", "train_size", "seed"]).reset_index(drop=True)
    # source probes (issue 24.2) predict the site, not the label: never a model of the study's tables
    from lungray.config import PROBE_ARM_SUFFIX

    is_probe = runs["model"].astype(str).str.endswith(PROBE_ARM_SUFFIX)
    probe_runs = runs[is_probe].reset_index(drop=True)
    runs = runs[~is_probe].reset_index(drop=True)

    # -- artifacts of complete trials ---------------------------------------------------------
    preds: dict[str, pd.DataFrame] = {}
    ext_preds: dict[str, dict[str, pd.DataFrame]] = {}
    ext_names = [e.name for e in config.data.external] if config is not None else []
    ckpts: dict[str, bool] = {}
    hist_rows = []
    for _, r in runs.iterrows():
        rid = r["run_id"]
        if r["state"] != COMPLETE:
            continue
        listed = {a.path for a in client.list_artifacts(rid)}
        ckpts[rid] = T.CHECKPOINT_DIR in listed or T.BEST_CHECKPOINT in listed
        if predictions:
            if T.PREDICTIONS in listed:
                df = pd.read_csv(download(client, rid, T.PREDICTIONS, tmp))
                df["image_id"] = df["image_id"].astype(str)
                preds[rid] = df
            else:
                notes.append(f"trial {r['trial_id']} has no {T.PREDICTIONS}: left out of paired comparisons and ROC curves")
            for name in ext_names:
                if T.ext_predictions(name) in listed:
                    df = pd.read_csv(download(client, rid, T.ext_predictions(name), tmp))
                    df["image_id"] = df["image_id"].astype(str)
                    ext_preds.setdefault(name, {})[rid] = df
        if histories:
            for key in epoch_keys:
                if key in r and pd.notna(r.get(key)):
                    for m in client.get_metric_history(rid, key):
                        hist_rows.append((rid, key, int(m.step), float(m.value)))
    hist = pd.DataFrame(hist_rows, columns=["run_id", "key", "step", "value"])

    class_names = _class_names(summary, preds, runs)
    expected = _expected_grid(config, runs)
    return Sweep(
        tracking_uri=uri,
        experiment_id=exp.experiment_id,
        experiment_name=exp.name,
        parent_id=pid,
        parent_name=parent.info.run_name or pid,
        parent_status=parent.info.status,
        parent_tags=dict(parent.data.tags),
        parent_params=dict(parent.data.params),
        config=config,
        config_text=config_text,
        leakage=leakage,
        data_summary=summary,
        splits=splits,
        runs=runs,
        histories=hist,
        predictions=preds,
        class_names=class_names,
        expected=expected,
        checkpoints=ckpts,
        notes=notes,
        probe_runs=probe_runs,
        external_predictions=ext_preds,
    )


def _task_of(config: Any) -> str:
    return config.train.task if config is not None else "classification"


def _parse_config(text: str, notes: list[str]):
    import yaml

    from lungray.config import StudyConfig, from_dict
    from lungray.errors import ConfigError

    try:
        d = yaml.safe_load(text) or {}
        return from_dict(StudyConfig, d)
    except (ConfigError, yaml.YAMLError, TypeError) as e:
        notes.append(f"{T.CONFIG_YAML} could not be read as a study config ({e}); the expected grid is unknown")
        return None


def _class_names(summary: Optional[dict], preds: dict[str, pd.DataFrame], runs: pd.DataFrame) -> tuple[str, ...]:
    if summary and summary.get("class_names"):
        return tuple(str(c) for c in summary["class_names"])
    for df in preds.values():
        cols = [c[len("prob_"):] for c in df.columns if c.startswith("prob_")]
        if cols:
            return tuple(cols)
    prefix = f"{T.TEST_PREFIX}recall__"
    return tuple(sorted(c[len(prefix):] for c in runs.columns if c.startswith(prefix)))


def _expected_grid(config, runs: pd.DataFrame) -> pd.DataFrame:
    cols = ["model", "train_size", "optimizer", "seed", "cell", "state", "error", "run_id"]
    if config is None:
        return pd.DataFrame(columns=cols)
    by_axes = {}
    for _, r in runs.iterrows():
        by_axes[(r["model"], int(r["train_size"]) if pd.notna(r["train_size"]) else None, r["optimizer"],
                 int(r["seed"]) if pd.notna(r["seed"]) else None)] = r
    rows = []
    for t in config.study_trials():  # the source probes' grid is the shortcut section's (issue 24.2)
        key = (t.arm, int(t.train_size), t.optimizer.key, int(t.seed))
        r = by_axes.get(key)
        rows.append(
            {
                "model": key[0],
                "train_size": key[1],
                "optimizer": key[2],
                "seed": key[3],
                "cell": t.cell,
                "state": r["state"] if r is not None else "missing",
                "error": r["error"] if r is not None else "",
                "run_id": r["run_id"] if r is not None else "",
            }
        )
    return pd.DataFrame(rows, columns=cols)


# ---------------------------------------------------------------------------------------------
# predictions
# ---------------------------------------------------------------------------------------------


def prediction_matrix(df: pd.DataFrame, class_names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image_ids, y_true, probs)`` from a ``predictions.csv`` frame, columns in class order.

    ``prob_<class>`` columns are matched by the class name, then by its MLflow-safe form; a
    ``y_true`` column of class names is mapped to indices.
    """
    cols = []
    for i, c in enumerate(class_names):
        for cand in (f"prob_{c}", f"prob_{T.metric_key(c)}"):
            if cand in df.columns:
                cols.append(cand)
                break
        else:
            probs = [c for c in df.columns if c.startswith("prob_")]
            if len(probs) != len(class_names):
                raise LungrayError(
                    f"predictions.csv has columns {list(df.columns)} but the sweep's classes are "
                    f"{list(class_names)}; expected prob_<class> for each"
                )
            cols = probs
            break
    y = df["y_true"]
    if not pd.api.types.is_numeric_dtype(y):
        lookup = {c: i for i, c in enumerate(class_names)}
        y = y.astype(str).map(lookup)
    return (
        df["image_id"].astype(str).to_numpy(),
        y.to_numpy(dtype=np.int64),
        df[cols].to_numpy(dtype=np.float64),
    )
