"""What a sweep produced: :class:`SweepResult`, and one row per trial from its trial directories.

The trial directories are the record written first (:mod:`lungray.sweep.expdir`): a finished
trial's ``result.json`` gives its row; Tune's results add the trials that failed or did not
finish, with their one-line error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from lungray import tracking as T
from lungray.config import StudyConfig
from lungray.errors import ConfigError
from lungray.redact import redact
from lungray.sweep import grid as G
from lungray.sweep.expdir import read_result, remove_work


@dataclass
class SweepResult:
    """What a sweep (or a dry run) produced."""

    experiment_dir: Optional[Path]
    config: StudyConfig
    preflight: Optional[G.Preflight] = None
    tracking_uri: Optional[str] = None
    experiment_id: Optional[str] = None
    parent_run_id: Optional[str] = None
    trials: Any = None  # pandas.DataFrame, one row per trial
    summary: Any = None  # pandas.DataFrame, model x size: the console's table (report section 2's strings)
    cells: Any = None  # pandas.DataFrame, one row per cell: summary.csv, the MLflow parent's cell/* metrics
    headline: list[str] = field(default_factory=list)  # "What this study found", as printed last
    report_path: Optional[Path] = None
    dry_run: bool = False
    n_errors: int = 0
    data: Any = None  # PreparedData
    notes: list[str] = field(default_factory=list)
    report_error: Optional[str] = None  # one line when the report failed or has failed parts

    @property
    def ok(self) -> bool:
        """Every trial finished and the report (when built) has no failed part."""
        return self.n_errors == 0 and self.report_error is None


def collect_rows(exp_dir: Path, results: Any, lookup: Optional[Mapping[str, Any]] = None) -> list[dict]:
    """One row per trial from the trial directories (finished) and Tune's results (errors)."""
    rows: dict[str, dict] = {}
    tdir = exp_dir / "trials"
    if tdir.exists():
        for d in sorted(tdir.iterdir()):
            r = read_result(d)
            if r and r.get("complete"):
                rows[d.name] = _row(d.name, r, "done")
                rows[d.name]["degenerate"] = _degenerate(d)
    if results is not None:
        for res in results:
            tid = _trial_id_of(res, lookup)
            if tid in rows:
                continue
            c = res.config or {}
            rows[tid] = {
                "trial_id": tid,
                "model": c.get("model"),
                "train_size": c.get("train_size"),
                "optimizer": c.get("optimizer"),
                "seed": c.get("seed"),
                "status": "error" if res.error else "incomplete",
                "error": redact(str(res.error).strip().splitlines()[-1][:300]) if res.error else "",
            }
    return sorted(rows.values(), key=lambda r: (str(r.get("model")), int(r.get("train_size") or 0), str(r.get("optimizer")), int(r.get("seed") or 0)))


def _degenerate(tdir: Path) -> str:
    """Why the trial's output is degenerate ("" when it is not, or unknown): the rule the summary
    and the report share (:func:`lungray.report.stats.degenerate_output`)."""
    from lungray.report.stats import degenerate_output
    from lungray.sweep.expdir import ARTIFACTS_DIR

    p = Path(tdir) / ARTIFACTS_DIR / T.PREDICTIONS
    if not p.is_file():
        return ""
    import numpy as np
    import pandas as pd

    try:
        df = pd.read_csv(p)
    except (OSError, ValueError):
        return ""
    probs = [c for c in df.columns if str(c).startswith("prob_")]
    if not probs or "y_true" not in df:
        return ""
    y = df["y_true"]
    if not pd.api.types.is_numeric_dtype(y):  # class names: their prob_<name> column's index
        y = y.astype(str).map({str(c)[len("prob_"):]: i for i, c in enumerate(probs)})
    if y.isna().any():
        return ""
    return degenerate_output(df[probs].to_numpy(dtype=float), y.to_numpy(dtype=np.int64))


def _row(trial_id: str, r: Mapping[str, Any], status: str) -> dict:
    row = {
        "trial_id": trial_id,
        "model": r.get("model"),
        "train_size": r.get("train_size"),
        "optimizer": r.get("optimizer"),
        "seed": r.get("seed"),
        "status": status,
        "error": "",
        "node_id": r.get("node_id"),
        "worker_start": r.get("worker_start"),
        "worker_end": r.get("worker_end"),
        "resumed": r.get("resumed"),
        "trial_overhead_seconds": r.get("trial_overhead_seconds"),
    }
    for k, v in (r.get("metrics") or {}).items():
        if k.startswith(T.TEST_PREFIX) or k in ("best_epoch", "epochs_run", "train_seconds", "eval_seconds"):
            row[k] = v
    return row


def _trial_id_of(res: Any, lookup: Optional[Mapping[str, Any]] = None) -> str:
    m = res.metrics or {}
    if m.get("lungray_trial_id"):
        return str(m["lungray_trial_id"])
    c = res.config or {}
    if lookup is not None:
        try:
            return G.trial_uid(G.trial_from_params(lookup, c), lr_sampled=c.get("lr") is not None)
        except (ConfigError, KeyError):
            pass
    return str(m.get("trial_id") or Path(str(getattr(res, "path", "") or "")).name)


def count_done(exp_dir: Path) -> int:
    """How many trials of the experiment directory finished (their ``result.json`` is complete)."""
    d = exp_dir / "trials"
    if not d.exists():
        return 0
    return sum(1 for t in d.iterdir() if (read_result(t) or {}).get("complete"))


def remove_finished_work(exp_dir: Path) -> None:
    """Delete the working folders (resumable checkpoints) that finished trials left behind
    (a driver killed between a trial's result and its clean-up); unfinished trials keep theirs
    for ``--resume``."""
    d = exp_dir / "trials"
    for t in sorted(d.iterdir()) if d.exists() else []:
        if (read_result(t) or {}).get("complete"):
            remove_work(t)
