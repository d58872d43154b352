"""What lungray writes to MLflow, in one place (the sweep writes it, the report reads it).

Parent run (one per sweep), tags:
    ``lungray.role = "sweep"``, ``lungray.study``, ``lungray.config_fingerprint``,
    ``lungray.dataset_fingerprint``, ``lungray.version``, ``lungray.git_commit``,
    ``lungray.storage_path`` (the Ray experiment directory, the source of truth),
    ``lungray.data_root`` (the PreparedData directory, for Grad-CAM panels)
  params: flattened resolved config (``data.resolution``...), truncated to MLflow's limits
  artifacts: ``config.yaml``, ``leakage.json``, ``data_summary.json`` (class counts per split,
    subset sizes, preprocessing, class names), ``splits.json`` (eval/val/pool/dropped indices and
    the nested subset indices per size and seed), ``report/report.html`` + CSV tables when the
    report runs; at the end of the sweep ``trials.csv``, ``summary.csv`` (one row per cell: the
    number the report shows), ``headline.md`` and ``headline.json`` (the report's "What this
    study found")
  the headline also as the run's description (tag ``mlflow.note.content``, shown by the UI)
  metrics per cell (issue 20.3; the same runs and interval as the report):
    ``cell/<model>[/<optimizer>]/n<size>/<metric>`` (mean over the runs that count), ``..._low``,
    ``..._high`` (its 95% interval, when it has one), ``.../runs`` (runs counted),
    ``.../set_apart`` (degenerate runs left out), ``.../budget_limited`` (counted runs whose best
    epoch came at the end of their budget): :func:`cell_metric_key`

Child run (one per trial), nested under the parent (``mlflow.parentRunId`` tag), tags:
    ``lungray.role = "trial"``, ``lungray.trial_id`` (find-or-create key), ``lungray.model``,
    ``lungray.train_size``, ``lungray.optimizer``, ``lungray.seed``, ``lungray.cell``,
    ``lungray.error`` on failure
  params: ``model``, ``train_size``, ``optimizer``, ``seed`` (the grid axes) plus the flattened
    trial config (``model.head``, ``optimizer.lr``, ``schedule.batch_size_resolved``...)
  metrics per epoch (``step`` = epoch): ``train_loss``, ``train_accuracy``, ``val_loss``,
    ``val_accuracy``, ``val_auc``, ``lr``
  final metrics (on the held-out evaluation set, ``test_`` prefix, no step):
    ``test_accuracy``, ``test_balanced_accuracy``, ``test_log_loss``, ``test_macro_f1``,
    ``test_weighted_f1``, ``test_auc``, ``test_sensitivity``, ``test_specificity``,
    per class ``test_precision__<class>``, ``test_recall__<class>``, ``test_f1__<class>``,
    ``test_missed_as_normal__<class>``; plus ``best_epoch``, ``epochs_run``, ``train_seconds``,
    ``eval_seconds``, ``trial_overhead_seconds``, and the budget: ``epochs_planned``,
    ``steps_per_epoch``, ``batch_size_used``, ``stopped_early`` (0/1)
  artifacts: ``predictions.csv`` (image_id, y_true, prob_<class>...), ``per_class.csv``,
    ``confusion_matrix.png``, ``confusion_matrix.csv``, ``history.csv``, ``trial_config.json``,
    ``checkpoint/best.pt`` (unless ``tracking.log_checkpoints`` is off): a dict loadable with
    ``torch.load(weights_only=True)``: ``{"model": state_dict, "class_names": [...],
    "trial": TrialConfig.to_dict(), "norm": [mean, std], "epoch": int}``

Experiment tags (set by the sweep): ``mlflow.experimentKind = custom_model_development`` and a
shared view ``mlflow.sharedViewState.lungray-grid`` (the trial runs grouped by grid cell, seeds
listed under each cell's mean, the grid axes and headline metrics as columns), so
:func:`ui_url` opens MLflow 3's runs table on the grid rather than its GenAI overview with the
trials collapsed under the sweep's parent run.

Class names in metric keys are sanitised with :func:`metric_key` (MLflow allows only
alphanumerics, ``_ - . / space``).
"""

from __future__ import annotations

import json
import re

ROLE = "lungray.role"
ROLE_SWEEP = "sweep"
ROLE_TRIAL = "trial"
TRIAL_ID = "lungray.trial_id"
STUDY = "lungray.study"
CONFIG_FP = "lungray.config_fingerprint"
DATASET_FP = "lungray.dataset_fingerprint"
VERSION = "lungray.version"
GIT_COMMIT = "lungray.git_commit"
STORAGE_PATH = "lungray.storage_path"
DATA_ROOT = "lungray.data_root"
ERROR = "lungray.error"
PARENT = "mlflow.parentRunId"

AXES = ("model", "train_size", "optimizer", "seed")
AXIS_TAGS = {a: f"lungray.{a}" for a in AXES}
CELL = "lungray.cell"

EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_auc", "lr")
TEST_PREFIX = "test_"
HEADLINE_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auc", "log_loss")
PER_CLASS_METRICS = ("precision", "recall", "f1", "missed_as_normal")

CONFIG_YAML = "config.yaml"
LEAKAGE_JSON = "leakage.json"
DATA_SUMMARY = "data_summary.json"
SPLITS_JSON = "splits.json"
PREDICTIONS = "predictions.csv"
PER_CLASS = "per_class.csv"
CONFUSION_PNG = "confusion_matrix.png"
CONFUSION_CSV = "confusion_matrix.csv"
HISTORY = "history.csv"
TRIAL_CONFIG = "trial_config.json"
HEADLINE_MD = "headline.md"
HEADLINE_JSON = "headline.json"
#: The MLflow UI shows this tag of a run as its description (markdown)
NOTE = "mlflow.note.content"
CHECKPOINT_DIR = "checkpoint"
BEST_CHECKPOINT = "checkpoint/best.pt"
PROBES_CSV = "probes.csv"  # per-image lung ablations and Grad-CAM lung shares of a trial (issue 24, lungray.sweep.probes)
PROBE_ERROR_TAG = "lungray.probe_error"  # why a trial's lung probes did not run (the trial itself stands)


#: MLflow 3's experiment type: its UI opens a "custom model development" (machine learning)
#: experiment on the runs table, a GenAI one (or one without the tag, with the UI's default
#: workflow "genai") on the traces overview (mlflow/server/js: experiment page redirect).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
#: A view of the runs table the UI loads from ``?viewStateShareKey=<key>`` (what its "Share"
#: button writes): JSON with the search facets and the selected columns.
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
VIEW_KEY = "lungray-grid"
UI_COLUMNS = (
    *(f"metrics.`{TEST_PREFIX}{m}`" for m in ("accuracy", "balanced_accuracy", "auc")),
    *(f"params.`{a}`" for a in AXES),
)


def experiment_tags() -> dict[str, str]:
    """Tags the sweep sets on its MLflow experiment (see the module docstring)."""
    view = {
        "searchFilter": f"tags.`{ROLE}` = '{ROLE_TRIAL}'",
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        "selectedColumns": list(UI_COLUMNS),
        # one group per grid cell (its seeds under it, the group row showing their mean): the
        # trials are listed, not collapsed under the sweep's parent run
        "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": CELL}]},
    }
    return {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, VIEW_TAG_PREFIX + VIEW_KEY: json.dumps(view)}


def ui_url(base: str, experiment_id: str) -> str:
    """The MLflow UI page of an experiment's runs table with the grid columns (``base``: the UI's
    address; credentials in it are dropped, the page is printed).

    >>> ui_url("http://user:secret@mlflow.internal:5000/", "3")
    'http://mlflow.internal:5000/#/experiments/3/runs?workflowType=machine_learning&viewStateShareKey=lungray-grid'
    """
    from urllib.parse import urlsplit, urlunsplit

    u = urlsplit(base.rstrip("/"))
    netloc = u.netloc.rpartition("@")[2]
    return f"{urlunsplit((u.scheme, netloc, u.path, '', ''))}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"


def is_sqlite(tracking_uri: str) -> bool:
    return str(tracking_uri).startswith("sqlite:")


def metric_key(name: str) -> str:
    """MLflow-safe key for a class name ('Viral Pneumonia' stays; 'a/b?' -> 'a/b_')."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", name)


def cell_metric_key(model: str, optimizer, size: int, metric: str, part: str = "") -> str:
    """The parent run's metric key of one cell (``optimizer`` None when the sweep has one):

    >>> cell_metric_key("unet:resnet34", None, 100, "dice_pos")
    'cell/unet_resnet34/n100/dice_pos'
    >>> cell_metric_key("resnet18", "sgd", 50, "accuracy", "low")
    'cell/resnet18/sgd/n50/accuracy_low'
    >>> cell_metric_key("resnet18", None, 50, "accuracy", "runs")
    'cell/resnet18/n50/runs'
    """
    def part_of(s: str) -> str:
        return re.sub(r"[^A-Za-z0-9_\-.]", "_", str(s))

    head = "cell/" + part_of(model) + (f"/{part_of(optimizer)}" if optimizer else "") + f"/n{int(size)}/"
    if part in ("", "low", "high"):
        return head + part_of(metric) + (f"_{part}" if part else "")
    return head + part_of(part)


def per_class_key(metric: str, class_name: str) -> str:
    return f"{TEST_PREFIX}{metric}__{metric_key(class_name)}"


#: the protocol arms of one invocation (issue 24, point 5): each arm's parent ("sweep") run is
#: tagged with its protocol (``corrected``, ``as_published``) and a group id shared by the arms
PROTOCOL = "lungray.protocol"
PROTOCOL_GROUP = "lungray.protocol_group"

#: external evaluation sets (issue 24, point 1): a trial's final metrics on set ``<name>`` are
#: ``ext.<name>.<key>`` where the held-out set's are ``test_<key>`` (``ext.site_2.accuracy``,
#: ``ext.site_2.recall__COVID``), and its per-image predictions the artifact ``predictions.ext.<name>.csv``
EXT_PREFIX = "ext."


def ext_key(name: str, key: str) -> str:
    """MLflow key of metric ``key`` (without ``test_``) on external set ``name``."""
    return f"{EXT_PREFIX}{name}.{key}"


def ext_predictions(name: str) -> str:
    """Artifact file of the per-image predictions on external set ``name``."""
    return f"predictions.ext.{name}.csv"


def default_tracking_uri(output_dir: str) -> str:
    """A SQL-backed store in the output directory (file stores are deprecated in MLflow 3)."""
    import os
    from pathlib import Path

    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    p = Path(output_dir).resolve() / "mlflow.db"
    p.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{p}"


def default_artifact_root(output_dir: str) -> str:
    """Where a new experiment keeps its artifacts: ``<output_dir>/mlartifacts`` (absolute), next
    to the sqlite store; the sweep and ``lungray mlflow-sync`` must agree on it."""
    from pathlib import Path

    return str(Path(output_dir).resolve() / "mlartifacts")
