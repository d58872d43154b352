"""Rebuild the MLflow view of a sweep from its Ray experiment directory.

The experiment directory is the source of truth: every finished trial leaves
``trials/<trial_id>/result.json`` (metrics, per-epoch history, where it ran) and
``trials/<trial_id>/artifacts/`` (predictions, per-class table, confusion matrix, history,
trial config, best checkpoint). If the tracking server was down during a sweep, or the
sweep should appear on another server, ``lungray mlflow-sync <experiment_dir>`` replays
them. It is idempotent: runs are found by the ``lungray.trial_id`` tag (never duplicated),
epochs already logged are skipped, and artifacts are uploaded only to runs that lack them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional, Union

from lungray import tracking as T
from lungray.config import TrialConfig
from lungray.errors import ConfigError

log = logging.getLogger(__name__)


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
        run = M.client(tracking_uri).get_run(run_id)
        return run.info.lifecycle_stage == "active"
    except Exception:  # noqa: BLE001 - unknown run id on this server
        return False


def sync_mlflow(experiment_dir: Union[str, Path], tracking_uri: Optional[str] = None) -> int:
    """Replay every finished trial of ``experiment_dir`` into MLflow; returns how many were synced.

    ``tracking_uri`` defaults to the one the sweep used (``sweep.json``). The parent run is the
    sweep's own when the server has it, else one is found by the ``lungray.storage_path`` tag
    or created (with the saved config).
    """
    from lungray.config import dump_yaml
    from lungray.sweep import mlflow_run as M
    from lungray.sweep.runner import SWEEP_JSON, load_saved_config, read_sweep_state
    from lungray.sweep.trainable import ARTIFACTS_DIR, read_result

    exp_dir = Path(experiment_dir).resolve()
    if not (exp_dir / SWEEP_JSON).exists():
        raise ConfigError(f"{exp_dir}: not a lungray experiment directory (no {SWEEP_JSON}); pass the directory a sweep printed at start")
    state = read_sweep_state(exp_dir)
    cfg = load_saved_config(exp_dir)
    uri = tracking_uri or state.get("tracking_uri") or T.default_tracking_uri(cfg.output_dir)
    experiment = state.get("experiment") or cfg.tracking.experiment or cfg.name
    experiment_id = M.ensure_experiment(uri, experiment, artifact_root=T.default_artifact_root(cfg.output_dir))

    parent = state.get("parent_run_id") if uri == state.get("tracking_uri") else None
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
        log.info("created parent run %s on %s", parent, uri)

    n = 0
    trials_dir = exp_dir / "trials"
    for tdir in sorted(trials_dir.iterdir()) if trials_dir.exists() else []:
        result = read_result(tdir)
        if not result or not result.get("complete"):
            continue
        cfg_file = tdir / T.TRIAL_CONFIG
        if not cfg_file.exists():
            log.warning("skipping %s: no %s", tdir, T.TRIAL_CONFIG)
            continue
        trial = TrialConfig.from_dict(json.loads(cfg_file.read_text())["trial"])
        run_id, _ = M.find_or_create_trial_run(uri, experiment_id, parent, tdir.name, trial, count_attempt=False)
        logger = M.TrialLogger(uri, run_id)
        for e in result.get("history", []):
            if "epoch" in e:
                logger.log_epoch(int(e["epoch"]), e)
        if not M.retry(lambda: logger.client.get_metric_history(run_id, "best_epoch")):
            logger.log_final(result.get("metrics", {}))
        logger.set_tags({M.NODE_ID_TAG: result.get("node_id", "unknown"), M.NODE_IP_TAG: result.get("node_ip", "unknown")})
        has_artifacts = bool(M.retry(lambda: logger.client.list_artifacts(run_id)))
        art = tdir / ARTIFACTS_DIR
        if not has_artifacts and art.is_dir():
            for p in sorted(art.iterdir()):
                if p.is_file():
                    logger.log_file(p)
            if cfg.tracking.log_checkpoints and (art / T.CHECKPOINT_DIR).is_dir():
                logger.log_dir(art / T.CHECKPOINT_DIR, T.CHECKPOINT_DIR)
        M.finish_run(uri, run_id, "FINISHED")
        n += 1
    state_runs = M.find_trial_runs(uri, experiment_id, parent)
    if all(r.info.status != "RUNNING" for r in state_runs):
        M.finish_run(uri, parent, "FINISHED")
    return n
