"""The shortcut probes through the real sweep (issue 24): ``shortcut_smoke`` with Ray Tune, MLflow and the report.

One seed at one size of the ``shortcut_smoke`` preset (the phantom from two sites, the site
shortcut planted): the label trial and its source-probe twin run as Tune trials, the label
trial's lung probes land in MLflow as ``probe_*`` metrics with ``probes.csv``, the source probe
is a trial run of its own (task ``site``), the report keeps it out of the study's tables and
its section "Does the model look at the lungs?" says no, first.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lungray import tracking as T

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    from lungray.study import load_study
    from lungray.sweep.runner import run_study

    out = tmp_path_factory.mktemp("shortcut")
    uri = f"sqlite:///{out / 'mlflow.db'}"
    cfg = load_study("shortcut_smoke", overrides=[f"output_dir={out}", f"tracking.tracking_uri={uri}",
                                                   "tracking.experiment=shortcut", "seeds=[0]", "sizes=[150]"])
    res = run_study(cfg, report=False, echo=lambda s: None)
    return {"cfg": cfg, "uri": uri, "out": out, "headline": res.headline}


def _runs(uri):
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("shortcut")
    return c, c.search_runs([exp.experiment_id], filter_string=f"tags.`{T.ROLE}` = '{T.ROLE_TRIAL}'")


def test_probes_are_trials_in_mlflow(sweep):
    from lungray.sweep.probes import METRICS

    c, runs = _runs(sweep["uri"])
    by_model = {r.data.tags[T.AXIS_TAGS["model"]]: r for r in runs}
    assert set(by_model) == {"simple_cnn", "simple_cnn~source-probe"}
    label, probe = by_model["simple_cnn"], by_model["simple_cnn~source-probe"]
    assert label.info.status == probe.info.status == "FINISHED"
    # the source probe: a trial on the same subset and budget, scored on the sites
    assert probe.data.metrics["test_auc"] > 0.9
    preds = pd.read_csv(c.download_artifacts(probe.info.run_id, T.PREDICTIONS, str(sweep["out"])))
    assert sorted(c[len("prob_"):] for c in preds.columns if c.startswith("prob_")) == ["site-0", "site-1"]
    # the label trial's lung probes: every summary metric (a randomised map may have no mass: then no share)
    have = {k for k in label.data.metrics if k.startswith("probe_")}
    assert set(METRICS) - {"probe_cam_lung_share_randomised"} <= have
    tab = pd.read_csv(c.download_artifacts(label.info.run_id, T.PROBES_CSV, str(sweep["out"] / "p")))
    assert label.data.metrics["probe_n_images"] == len(tab) > 100
    acc = (tab[["lungs_blanked_prob_0", "lungs_blanked_prob_1"]].to_numpy().argmax(1) == tab["y_true"]).mean()
    assert label.data.metrics["probe_lungs_blanked_accuracy"] == pytest.approx(acc)
    assert acc > 0.8  # the planted shortcut survives blanking the lungs


def test_report_section_says_no_first(sweep):
    from lungray.report import build_report
    from lungray.report.load import load_sweep
    from lungray.report.shortcut import TITLE

    sw = load_sweep(sweep["uri"], "shortcut", predictions=False, histories=False)
    assert sw.runs["model"].tolist() == ["simple_cnn"] and sw.probe_runs["model"].tolist() == ["simple_cnn~source-probe"]
    assert sw.models == ["simple_cnn"] and len(sw.expected) == 1
    out = sweep["out"] / "report"
    build_report(sweep["uri"], "shortcut", out_dir=out, gradcam=False, n_boot=200)
    html = (out / "report.html").read_text()
    sec = html[html.index('<section id="shortcuts">'):]
    sec = sec[: sec.index("</section>")]
    assert TITLE in sec and "<p><b>No: the models use shortcuts outside the lungs" in sec
    assert sec.index("<b>No:") < sec.index("<table>")  # the verdict before the tables
    ab = pd.read_csv(out / "shortcut_ablations.csv")
    assert ab["uses_shortcut"].tolist() == [True] and ab["lungs_blanked_accuracy"].iloc[0] > ab["chance"].iloc[0] + 0.3
    src = pd.read_csv(out / "shortcut_source_probe.csv")
    assert src["model"].tolist() == ["simple_cnn"] and src["degrave"].tolist() == [True]
    assert "DeGrave test" in sec and "Cramér" in sec
    tables = pd.read_csv(out / "table_accuracy.csv")
    assert tables["model"].tolist() == ["simple_cnn"]  # the probe is no model of the study's tables
    # the headline (report top, headline.md, the sweep's last console lines) carries the same warnings
    md = (out / "headline.md").read_text()
    lead = html[: html.index('<section id="shortcuts">')]
    for text in ("still scores above chance with the lungs blanked", "Source shortcut possible (DeGrave test)"):
        assert text in md and text in lead, text
        assert any(text in line for line in sweep["headline"]), (text, sweep["headline"])


def test_caveats_for_a_headline(sweep, tmp_path):
    from lungray.report.load import load_sweep
    from lungray.report.shortcut import shortcut_caveats, shortcut_findings

    sw = load_sweep(sweep["uri"], "shortcut", histories=False)
    f = shortcut_findings(sw, tmp_path, n_boot=100)
    lines = shortcut_caveats(f)
    assert any(s.startswith("Shortcut: simple_cnn at n=150 still scores above chance with the lungs blanked") for s in lines)
    assert any(s.startswith("Source shortcut possible (DeGrave test)") for s in lines)
    assert all("\n" not in s for s in lines)
    assert f.assoc["cramers_v"] == pytest.approx(1.0) and f.assoc["per_patient"] == 1.0
    assert np.isfinite(f.source["source_auc"]).all()
