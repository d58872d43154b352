"""The experiment directory on disk: what a sweep, its trials and ``mlflow-sync`` read and write.

The Ray experiment directory is the record written first and the source of truth (MLflow gets a
copy, :mod:`lungray.sweep.sync`). Its layout::

    <output>/<study>_<stamp>/
        sweep.json            the sweep's state (fingerprint, tracking URI, run ids)
        config.yaml           the resolved study config
        tune/                 Ray Tune's own state
        trials/<trial_id>/
            result.json       the finished trial's metrics (written atomically)
            artifacts/        predictions, per-class table, confusion, best weights
            work/             rank 0's resumable checkpoint while the trial runs

The driver (:mod:`~lungray.sweep.runner`), the trial body (:mod:`~lungray.sweep.trainable`) and
the MLflow sync all import these names from here, so none of them imports another for a path.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from lungray.config import StudyConfig, from_dict
from lungray.errors import ConfigError

__all__ = [
    "new_experiment_dir",
    "SWEEP_JSON",
    "CONFIG_YAML",
    "TUNE_NAME",
    "EPOCH_FILE",
    "WORK_DIR",
    "RESULT_FILE",
    "ARTIFACTS_DIR",
    "read_sweep_state",
    "load_saved_config",
    "read_result",
    "write_result",
    "remove_work",
    "atomic_write_text",
]

SWEEP_JSON = "sweep.json"
CONFIG_YAML = "config.yaml"
TUNE_NAME = "tune"
#: File written into every reported checkpoint: the epoch and its metrics, so a worker that
#: resumes from it can log an epoch whose MLflow write was cut off by the crash.
EPOCH_FILE = "lungray_epoch.json"
#: Rank 0's working folder in the trial directory (resumable checkpoint, best.pt), removed
#: once the trial's results are complete.
WORK_DIR = "work"
#: Per-trial result file in ``<experiment>/trials/<trial_id>/`` (read by the driver and sync).
RESULT_FILE = "result.json"
ARTIFACTS_DIR = "artifacts"


def new_experiment_dir(cfg: StudyConfig, now: Optional[_dt.datetime] = None) -> Path:
    """``<output_dir>/<study>_<YYYYmmdd-HHMMSS>``, numbered ``-2``, ``-3``... when taken (claimed
    atomically later: :func:`lungray.sweep.lock.claim_new_dir`)."""
    now = now or _dt.datetime.now()
    base = Path(cfg.output_dir).resolve()
    d = base / f"{cfg.name}_{now:%Y%m%d-%H%M%S}"
    i = 1
    while d.exists():
        i += 1
        d = base / f"{cfg.name}_{now:%Y%m%d-%H%M%S}-{i}"
    return d


def read_sweep_state(experiment_dir: Union[str, Path]) -> dict:
    p = Path(experiment_dir) / SWEEP_JSON
    if not p.exists():
        raise ConfigError(f"--resume {experiment_dir}: no {SWEEP_JSON} there; pass the experiment directory a sweep printed at start")
    return json.loads(p.read_text())


def load_saved_config(experiment_dir: Union[str, Path]) -> StudyConfig:
    """The resolved config a sweep was started with (``<experiment_dir>/config.yaml``)."""
    import yaml

    p = Path(experiment_dir) / CONFIG_YAML
    if not p.exists():
        raise ConfigError(f"--resume {experiment_dir}: no {CONFIG_YAML} there; is this a lungray experiment directory?")
    return from_dict(StudyConfig, yaml.safe_load(p.read_text()))


def read_result(tdir: Path) -> Optional[dict]:
    p = Path(tdir) / RESULT_FILE
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except ValueError:
        return None


def atomic_write_text(p: Path, text: str) -> None:
    """Write ``p`` through a temporary file and a rename: a reader (or a kill) never sees half of it,
    and a full disk leaves the previous version in place."""
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, p)




def write_result(tdir: Path, summary: Mapping[str, Any]) -> None:
    """``result.json``, replaced atomically: a reader never sees half a file, and a write that
    fails (full disk, kill) leaves the previous version."""
    atomic_write_text(Path(tdir) / RESULT_FILE, json.dumps(summary, indent=1, default=str))


def remove_work(tdir: Path) -> None:
    """Delete a finished trial's working folder (its resumable checkpoint is no longer needed)."""
    shutil.rmtree(Path(tdir) / WORK_DIR, ignore_errors=True)
