"""lungray.report.tables without MLflow: a run stuck at chance is shown apart, not averaged in."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lungray import metrics as M
from lungray import tracking as T
from lungray.report import stats, tables


class _Sweep:
    """The two attributes of a Sweep that add_derived reads."""

    def __init__(self, runs):
        self.runs = runs
        self.histories = pd.DataFrame(columns=["run_id", "key", "step", "value"])


def _cell():
    rng = np.random.default_rng(0)
    n = 300
    y = np.arange(n) % 2
    preds, rows = {}, []
    for s in range(3):
        if s == 2:  # collapsed: a constant output
            p = np.tile([0.6, 0.4], (n, 1))
        else:
            right = rng.random(n) < 0.85
            pt = np.where(right, 0.8, 0.2)
            p = np.stack([np.where(y == 0, pt, 1 - pt), np.where(y == 1, pt, 1 - pt)], 1)
        rid = f"run{s}"
        preds[rid] = (np.array([f"img{i:04d}" for i in range(n)]), y, p)
        flat, _, _ = M.classification_report(y, p, ["Normal", "COVID"])
        row = {"run_id": rid, "state": "complete", "model": "cnn", "optimizer": "adam", "train_size": 100, "seed": s}
        row.update({T.TEST_PREFIX + k: v for k, v in flat.items()})
        rows.append(row)
    return pd.DataFrame(rows), preds


def test_a_run_at_chance_is_left_out_of_the_interval_and_named():
    runs, preds = _cell()
    runs = tables.add_derived(_Sweep(runs), preds)
    assert list(runs["at_chance"]) == [False, False, True]
    summ = tables.summarise(runs, predictions=preds, n_boot=200)
    acc = summ[summ.metric == "accuracy"].iloc[0]
    working = runs["test_accuracy"].iloc[:2]
    assert acc["n"] == 2 and acc["n_runs"] == 3 and acc["n_at_chance"] == 1 and acc["at_chance_seeds"] == "2"
    assert acc["mean"] == pytest.approx(working.mean()) and acc["mean_all"] == pytest.approx(runs["test_accuracy"].mean())
    assert acc["interval"] == "seeds+images"
    # the interval is the two-level interval of the two working runs' per-image outcomes
    y = preds["run0"][1]
    scores = np.stack([(preds[r][2].argmax(1) == y).astype(float) for r in ("run0", "run1")])
    ci = stats.two_level_ci_scores(scores, bounds=(0.0, 1.0))
    assert (acc["ci_low"], acc["ci_high"]) == pytest.approx((ci.low, ci.high))
    cell = tables.study_table_wide(summ, "accuracy").iloc[0, 0]
    assert "+1 run at chance (seed 2), not in the mean" in cell
    # AUC, macro F1, balanced accuracy: bootstrap over images shared by the runs
    auc = summ[summ.metric == "auc"].iloc[0]
    assert auc["interval"] == "seeds+images" and auc["n"] == 2 and auc["ci_low"] < auc["mean"] < auc["ci_high"]
    # validation loss has no per-image values: seeds only, and says so
    runs["val_loss_best"] = [0.3, 0.35, 0.7]
    vl = tables.summarise(runs, predictions=preds, n_boot=50)
    assert (vl[vl.metric == "val_loss"]["interval"] == "seeds only").all()
    pc = tables.per_class_table(runs.assign(**{T.per_class_key(m, c): 0.5 for m in ("precision", "recall", "f1")
                                               for c in ("Normal", "COVID")}), ("Normal", "COVID"), [100],
                                predictions=preds, n_boot=100)
    assert (pc["n"] == 2).all() and (pc["n_at_chance"] == 1).all() and (pc["interval"] == "seeds+images").all()


def test_all_runs_at_chance_are_summarised_together():
    runs, preds = _cell()
    y = preds["run0"][1]
    for r in ("run0", "run1"):
        preds[r] = (preds[r][0], y, np.tile([0.6, 0.4], (y.size, 1)))
    runs = tables.add_derived(_Sweep(runs), preds)
    summ = tables.summarise(runs, predictions=preds, n_boot=50)
    acc = summ[summ.metric == "accuracy"].iloc[0]
    assert acc["n"] == 3 and acc["n_at_chance"] == 3
    assert "all 3 runs at chance" in tables.study_table_wide(summ, "accuracy").iloc[0, 0]


def test_without_predictions_the_interval_is_seeds_only():
    runs, _ = _cell()
    summ = tables.summarise(tables.add_derived(_Sweep(runs)))
    summ = summ[summ.metric != "val_loss"]  # no history logged here: no values at all
    assert (summ["interval"] == "seeds only").all() and (summ["n"] == 3).all()
