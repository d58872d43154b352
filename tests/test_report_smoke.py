"""The report from a REAL smoke sweep (lungray.sweep.runner.run_study, ``smoke`` preset).

Slow: it trains the smoke grid (2 models x 2 sizes x 2 seeds on the 32 px phantom) with Ray
Tune/Train and MLflow, then builds the report with Grad-CAM from what MLflow holds, opens it in
Chromium and executes the sweep notebook against it.
"""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    from lungray.study import load_study
    from lungray.sweep.runner import run_study

    out = tmp_path_factory.mktemp("smoke")
    uri = f"sqlite:///{out / 'mlflow.db'}"
    # one seed (4 trials) to fit the CI budget: the fake-sweep tests cover multi-seed intervals
    cfg = load_study("smoke", overrides=[f"output_dir={out}", f"tracking.tracking_uri={uri}", "tracking.experiment=smoke", "seeds=[0]"])
    result = run_study(cfg, report=False, echo=lambda s: None)
    return {"cfg": cfg, "uri": uri, "out": out, "result": result}


@pytest.fixture(scope="module")
def report(smoke):
    from lungray.report import build_report

    path = build_report(smoke["uri"], "smoke", out_dir=smoke["out"] / "report", n_boot=300, device="cpu")
    return path.parent


def test_every_section_present_and_grid_complete(smoke, report):
    html = (report / "report.html").read_text()
    for sid in ("curves", "tables", "dynamics", "perclass", "paired", "fit", "gradcam", "pointing", "provenance"):
        assert f'<section id="{sid}">' in html
    n = len(smoke["cfg"].trials())
    assert f"Complete: all {n} trials of the grid finished." in html
    assert "Grad-CAM could not be computed" not in html
    gradcam = html[html.index('id="gradcam"'):html.index('id="pointing"')]
    assert '<img src="data:image/png;base64,' in gradcam  # the panels, embedded (print files only on request)
    assert not (report / "figures").exists()
    pg = pd.read_csv(report / "pointing_game.csv")
    assert list(pg.model) == [m.key for m in smoke["cfg"].models]  # every model, logreg included
    assert ((pg.score >= 0) & (pg.score <= 1)).all() and (pg.random_map_score > 0).all()
    assert "does not reproduce" not in html  # rebuilt checkpoints give the logged predictions


def test_tables_equal_what_mlflow_holds(smoke, report):
    from mlflow import MlflowClient

    from lungray import tracking as T

    c = MlflowClient(smoke["uri"])
    exp = c.get_experiment_by_name("smoke")
    runs = c.search_runs([exp.experiment_id], filter_string=f"tags.`{T.ROLE}` = '{T.ROLE_TRIAL}'")
    acc = {}
    for r in runs:
        key = (r.data.tags[T.AXIS_TAGS["model"]], int(r.data.tags[T.AXIS_TAGS["train_size"]]))
        acc.setdefault(key, []).append(r.data.metrics["test_accuracy"])
    tab = pd.read_csv(report / "table_accuracy.csv")
    assert len(tab) == len(acc)
    for r in tab.itertuples():
        vals = acc[(r.model, r.train_size)]
        assert r.n == len(vals) == len(smoke["cfg"].seeds)
        assert r.mean == pytest.approx(np.mean(vals), abs=1e-12)
    paired = pd.read_csv(report / "paired.csv")
    assert set(paired.train_size) == set(smoke["cfg"].sizes)
    assert paired.sentence.str.match(r".+ - .+ at \d+ images: [+-]\d+\.\d points \[[+-]\d+\.\d, [+-]\d+\.\d\]").all()


@pytest.mark.browser
def test_chromium_opens_the_smoke_report(report, tmp_path):
    from lungray.report._testing import chromium_check

    res = chromium_check(report / "report.html", tmp_path / "chromium")
    assert res.images and all(ok for ok, _, _ in res.images)
    assert res.page_requests == []


def test_sweep_notebook_on_the_smoke_sweep(smoke, report, tmp_path):
    from test_notebooks import images_in, outputs_text, run_notebook

    nb = run_notebook("sweep_results.ipynb", {"LUNGRAY_TRACKING_URI": smoke["uri"], "LUNGRAY_EXPERIMENT": "smoke"}, tmp_path)
    text = outputs_text(nb)
    wide = pd.read_csv(report / "table_accuracy.csv")
    first = wide.iloc[0]
    # the report's number, shown by the notebook (one seed here: a mean without an interval)
    assert f"{first['mean']:.3f}" in text
    assert images_in(nb) == 1
