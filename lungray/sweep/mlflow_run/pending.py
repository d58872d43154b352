"""The queue: MLflow writes that could not be made, recorded next to the results.

Files first: a trial's results are complete on disk whatever MLflow does. What did not reach
the store is counted in the directory's ``mlflow_pending.json`` (and a trial's epochs are in its
``epochs.jsonl`` journal); the sweep's end and ``lungray mlflow-sync`` replay it from the files
(:mod:`lungray.sweep.sync`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from lungray.sweep.expdir import atomic_write_text
from lungray.sweep.mlflow_run.connection import OUTAGE, TrackingUnavailable, one_line

log = logging.getLogger(__name__)

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
