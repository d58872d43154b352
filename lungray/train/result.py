"""What one trial returns (cheap to import: no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from lungray.tracking import TEST_PREFIX, ext_key


@dataclass
class TrialResult:
    """The outcome of :func:`lungray.train.run_trial`.

    ``metrics`` are the held-out (``data.eval_idx``) metrics of the SELECTED checkpoint, keyed
    as in :mod:`lungray.tracking` (``test_accuracy``, ``test_precision__COVID``...).
    ``predictions`` has one row per evaluation image (``image_id``, ``y_true``, ``prob_<class>``
    ..., ``row``) for the report's paired statistics. ``completed`` is False when the call
    stopped at ``stop_after_epoch``; then only ``history`` and ``checkpoint_dir`` are set.
    """

    metrics: dict[str, float]
    per_class: Any  # pandas.DataFrame
    confusion: Optional[np.ndarray]
    predictions: Any  # pandas.DataFrame
    history: list[dict[str, float]]
    best_epoch: Optional[int]
    best_checkpoint: Optional[str]
    timings: dict[str, float]
    epochs_run: int = 0
    completed: bool = True
    stopped_early: bool = False
    checkpoint_dir: Optional[str] = None
    resolved: dict[str, Any] = field(default_factory=dict)  # batch_size, epochs, steps_per_epoch, n_train, norm
    # external evaluation sets (issue 24, point 1): name -> {"metrics": {key: value} without the
    # test_ prefix, "predictions": DataFrame like ``predictions``}
    external: dict[str, Any] = field(default_factory=dict)

    def mlflow_metrics(self) -> dict[str, float]:
        """The final, step-less metrics of a trial's MLflow run (see :mod:`lungray.tracking`).

        Besides the held-out metrics: the budget the trial was given and what it used
        (``epochs_planned``, ``steps_per_epoch``, ``batch_size_used``, ``stopped_early`` 0/1),
        so the report can tell a point limited by its training budget from one limited by its
        data (issue 20.2) from what the trial did, not from a re-derivation of the schedule.
        """
        out = {k: float(v) for k, v in self.metrics.items() if k.startswith(TEST_PREFIX)}
        if self.best_epoch is not None:
            out["best_epoch"] = float(self.best_epoch)
        out["epochs_run"] = float(self.epochs_run)
        if self.completed:
            out["stopped_early"] = float(bool(self.stopped_early))
            for key, name in (("epochs", "epochs_planned"), ("steps_per_epoch", "steps_per_epoch"),
                              ("batch_size", "batch_size_used")):
                if isinstance(self.resolved.get(key), (int, float)):
                    out[name] = float(self.resolved[key])
        for name, ext in (self.external or {}).items():
            out.update({ext_key(name, k): float(v) for k, v in ext.get("metrics", {}).items()})
        for k in ("train_seconds", "eval_seconds", "setup_seconds"):
            if k in self.timings:
                out[k] = float(self.timings[k])
        return out
