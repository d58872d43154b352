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


def test_a_degenerate_run_is_left_out_of_the_interval_and_named():
    runs, preds = _cell()
    runs = tables.add_derived(_Sweep(runs), preds)
    assert list(runs["degenerate"]) == ["", "", "constant output"] and list(runs["counted"]) == [True, True, False]
    summ = tables.summarise(runs, predictions=preds, n_boot=200)
    acc = summ[summ.metric == "accuracy"].iloc[0]
    working = runs["test_accuracy"].iloc[:2]
    assert acc["n"] == 2 and acc["n_runs"] == 3 and acc["n_degenerate"] == 1 and acc["degenerate_seeds"] == "2"
    assert acc["mean"] == pytest.approx(working.mean()) and acc["mean_all"] == pytest.approx(runs["test_accuracy"].mean())
    assert acc["interval"] == "seeds+images" and acc["unit"] == "image" and acc["scale"] == "logit"
    # the interval is the two-level interval of the two working runs' per-image outcomes
    y = preds["run0"][1]
    scores = np.stack([(preds[r][2].argmax(1) == y).astype(float) for r in ("run0", "run1")])
    ci = stats.two_level_ci_scores(scores, bounds=(0.0, 1.0))
    assert (acc["ci_low"], acc["ci_high"]) == pytest.approx((ci.low, ci.high))
    cell = tables.study_table_wide(summ, "accuracy").iloc[0, 0]
    assert "+1 degenerate run (seed 2: constant output), not in the mean" in cell
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
    assert (pc["n"] == 2).all() and (pc["n_degenerate"] == 1).all() and (pc["interval"] == "seeds+images").all()


def test_a_weak_but_working_run_counts():
    """Issue 19.4: accuracy 0.52 on 60 images is not distinguishable from chance (the old rule
    dropped it), but the run predicts both classes: it is a draw of the recipe and counts."""
    runs, preds = _cell()
    y = preds["run0"][1]
    rng = np.random.default_rng(3)
    right = rng.random(y.size) < 0.52
    pt = np.where(right, 0.55, 0.45)
    preds["run2"] = (preds["run2"][0], y, np.stack([np.where(y == 0, pt, 1 - pt), np.where(y == 1, pt, 1 - pt)], 1))
    runs.loc[2, "test_accuracy"] = float(right.mean())
    runs = tables.add_derived(_Sweep(runs), preds)
    assert runs["counted"].all() and runs.loc[2, "chance_p_accuracy"] > 0.05  # "at chance" by the old test
    acc = tables.summarise(runs, ("accuracy",), predictions=preds).iloc[0]
    assert acc["n"] == 3 and acc["n_degenerate"] == 0 and acc["mean"] == pytest.approx(runs["test_accuracy"].mean())


def test_all_degenerate_runs_are_summarised_together():
    runs, preds = _cell()
    y = preds["run0"][1]
    for r in ("run0", "run1"):
        preds[r] = (preds[r][0], y, np.tile([0.6, 0.4], (y.size, 1)))
    runs = tables.add_derived(_Sweep(runs), preds)
    summ = tables.summarise(runs, predictions=preds, n_boot=50)
    acc = summ[summ.metric == "accuracy"].iloc[0]
    assert acc["n"] == 3 and acc["n_degenerate"] == 3
    assert "all 3 runs degenerate (constant output)" in tables.study_table_wide(summ, "accuracy").iloc[0, 0]


def test_without_predictions_the_interval_is_seeds_only():
    runs, _ = _cell()
    summ = tables.summarise(tables.add_derived(_Sweep(runs)))
    summ = summ[summ.metric != "val_loss"]  # no history logged here: no values at all
    assert (summ["interval"] == "seeds only").all() and (summ["n"] == 3).all()


def test_perfect_runs_get_an_interval_of_some_width_for_every_metric():
    """Issue 19.3: every run right on every image gave 1.000 [1.000, 1.000] for accuracy and AUC."""
    runs, preds = _cell()
    y = preds["run0"][1]
    rows = []
    for s_ in range(3):
        pt = np.linspace(0.6, 0.99, y.size)
        p = np.stack([np.where(y == 0, pt, 1 - pt), np.where(y == 1, pt, 1 - pt)], 1)
        preds[f"run{s_}"] = (preds["run0"][0], y, p)
        flat, _, _ = M.classification_report(y, p, ["Normal", "COVID"])
        rows.append({**runs.iloc[s_].to_dict(), **{T.TEST_PREFIX + k: v for k, v in flat.items()}})
    runs = tables.add_derived(_Sweep(pd.DataFrame(rows)), preds)
    summ = tables.summarise(runs, ("accuracy", "auc", "balanced_accuracy", "macro_f1"), predictions=preds, n_boot=200)
    assert (summ["mean"] == 1.0).all() and (summ["ci_high"] == 1.0).all()
    assert (summ["ci_low"] < 0.999).all() and (summ["ci_low"] > 0.9).all(), summ[["metric", "ci_low"]]


def test_patients_with_several_images_widen_the_interval_and_say_so():
    runs, preds = _cell()
    runs = tables.add_derived(_Sweep(runs), preds)
    ids = preds["run0"][0]
    by_patient = {i: f"pt{k // 10}" for k, i in enumerate(ids)}  # 30 patients x 10 images
    one_each = {i: f"pt{k}" for k, i in enumerate(ids)}
    s_img = tables.summarise(runs, ("accuracy", "auc"), predictions=preds, n_boot=300)
    s_pat = tables.summarise(runs, ("accuracy", "auc"), predictions=preds, n_boot=300, groups=by_patient)
    s_one = tables.summarise(runs, ("accuracy", "auc"), predictions=preds, n_boot=300, groups=one_each)
    assert (s_pat["unit"] == "patient").all() and (s_pat["n_units"] == 30).all() and (s_pat["n_images"] == 300).all()
    assert (s_one["unit"] == "image").all()  # no patient repeats: images, the same numbers
    assert np.allclose(s_one[["ci_low", "ci_high"]], s_img[["ci_low", "ci_high"]])
    assert (s_pat["mean"].to_numpy() == s_img["mean"].to_numpy()).all()
    assert (s_pat["ci_high"] - s_pat["ci_low"] > 0).all()
    assert tables.unit_sentence(s_pat) == ("Evaluation noise resampled by patient: 30 patients with 300 images "
                                           "(several images of a patient are not independent).")
    assert tables.unit_sentence(s_one).startswith("Evaluation noise resampled by image")


def _sim_sweep(seed=0, degenerate=None, groups=None):
    from lungray.report import _simulate as Sim

    rng = np.random.default_rng(seed)
    c = Sim.family_correct(rng, Sim.Family(models=2, sizes=3, effects=(0.3, 0.0)), 1, 3, 200)[0]
    y = np.arange(200) % 2
    probs = np.stack([[[Sim._probs_of(c[m, z, s], y, rng) for s in range(3)] for z in range(3)] for m in range(2)])
    if degenerate is not None:
        probs[degenerate] = np.tile([0.55, 0.45], (200, 1))
    return Sim.sweep_of(c, y, probs=probs, groups=groups), c


def test_one_rule_for_every_section_of_the_report():
    """Issue 19.4: a degenerate run (model m0, size 50, seed 0) is left out of the tables, the
    confusion matrix, the ROC curves, the paired comparisons and the fit alike."""
    from lungray.report import figures

    sw, c = _sim_sweep(degenerate=(0, 0, 0))
    done = tables.counted_runs(sw)
    bad = done[(done.model == "m0") & (done.train_size == 50) & (done.seed == 0)].iloc[0]
    assert bad["degenerate"] == "constant output" and not bad["counted"] and done["counted"].sum() == len(done) - 1
    runs = tables.add_derived(sw, tables.prediction_arrays(sw))
    summ = tables.summarise(runs, ("accuracy",), predictions=tables.prediction_arrays(sw))
    cell = summ[(summ.model == "m0") & (summ.train_size == 50)].iloc[0]
    assert cell["n"] == 2 and cell["seeds"] == "1,2" and cell["mean"] == pytest.approx(c[0, 0, 1:].mean())
    # the confusion matrix pools the two runs that count (seed 0 would add 200 "Normal" predictions)
    cm = tables.confusion_matrices(sw, 50)["m0"]
    y = np.arange(200) % 2
    right = c[0, 0, 1:]
    assert cm[1, 1] == pytest.approx(right[:, y == 1].mean())
    assert cm[0, 0] == pytest.approx(right[:, y == 0].mean())
    # ROC curves from the same runs
    assert set(figures.roc_curves(sw, 50)) == {"m0", "m1"}
    # paired comparisons: seed 0 is unpaired at n = 50 only
    pc = tables.paired_comparisons(sw)
    assert pc.set_index("train_size").loc[50, "seeds"] == "1,2" and set(pc.loc[pc.train_size != 50, "seeds"]) == {"0,1,2"}
    # the fit uses 8 of m0's 9 runs
    tab, _ = tables.learning_curve_fits(sw, n_boot=20, predictions=tables.prediction_arrays(sw))
    assert tab.set_index("label").loc["m0", "runs_per_size"] == "50×2, 100×3, 200×3"


def test_paired_comparisons_resample_patients_from_the_sweeps_splits():
    groups = [f"p{i // 8}" for i in range(200)]  # 25 patients x 8 images
    sw, _ = _sim_sweep(groups=groups)
    assert tables.eval_groups(sw)["img00009"] == "p1"
    pc = tables.paired_comparisons(sw)
    assert (pc["unit"] == "patient").all() and (pc["n_units"] == 25).all()
    plain = tables.paired_comparisons(sw, groups={})
    assert (plain["unit"] == "image").all() and np.allclose(plain["diff_points"], pc["diff_points"])
    mc = tables.mcnemar_table(pc)
    assert list(mc.columns)[-2:] == ["mcnemar_p", "mcnemar_p_holm"] and len(mc) == len(pc)
    assert "mcnemar" not in " ".join(pc["verdict"]) and (pc["significant"] == (pc["p_holm"] < 0.05)).all()
