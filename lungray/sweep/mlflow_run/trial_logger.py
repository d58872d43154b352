"""Rank 0's per-epoch MLflow metrics: exactly once per step, batched, journaled, queued in an outage."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from lungray import tracking as T
from lungray.sweep.mlflow_run.connection import OUTAGE, TrackingUnavailable, client, retry
from lungray.sweep.mlflow_run.params import MAX_KEY, MAX_METRICS_PER_BATCH, _finite, log_metrics, set_tags
from lungray.sweep.mlflow_run.pending import EPOCH_JOURNAL, clear_pending, mark_pending

log = logging.getLogger(__name__)


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
