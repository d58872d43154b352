"""External evaluation sets (issue 24, point 1): config refusals, the data layer's held-out site,
the gap statistic on hand cases, the report's per-set view against a planted fake sweep, and the
planted shortcut measured over seeds (a held-out site and a second source)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lungray.config import ExternalSetConfig
from lungray.data.external import check_external_counts, hold_out_sites
from lungray.errors import ConfigError, DataError
from lungray.report.stats import set_gap
from lungray.study import load_study

EXT2 = "data.external=[{name: site_2, hold_out_site: site-2}]"


# -- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, says",
    [
        ("data.external=[{name: s, hold_out_site: site-7}]", "data.external[0].hold_out_site: 'site-7' is not a site of the phantom"),
        ("data.external=[{name: s}]", "set exactly one of hold_out_site"),
        ("data.external=[{name: s, hold_out_site: site-1, source: phantom}]", "set exactly one of hold_out_site"),
        ("data.external=[{name: 2nd, source: phantom}]", "data.external[0].name: '2nd' is not valid"),
        ("data.external=[{name: a.b, source: phantom}]", "data.external[0].name: 'a.b' is not valid"),
        ("data.external=[{name: internal, source: phantom}]", "reserved"),
        ("data.external=[{name: a, source: phantom}, {name: a, hold_out_site: site-1}]", "two external sets are both called 'a'"),
        ("data.external=[{name: a, source: nope}]", "unknown dataset adapter 'nope'"),
        ("data.external=[{name: a, source: phantom, settings: {phantom_sed: 1}}]", "unknown config key settings.phantom_sed"),
        ("data.external=[{name: a, source: phantom, settings: {resolution: 48}}]", "settings.resolution differs from data.resolution"),
        ("data.external=[{name: a, source: phantom, settings: {phantom_site_label_correlation: 2}}]", "data.phantom_site_label_correlation"),
        ("data.external=[{name: a, source: folder}]", "path is required for source 'folder'"),
        ("data.external=[{name: a, source: folder, path: /no/such/dir}]", "path /no/such/dir does not exist"),
        ("data.external=[{name: a, hold_out_site: site-1, path: /x}]", "hold_out_site takes its images from data.source itself"),
        ("data.external=[{name: a, hold_out_site: site-0}, {name: b, hold_out_site: site-1}, {name: c, hold_out_site: site-2}]",
         "holds out every site"),
        ("data.external=[{nme: a}]", "unknown config key data.external[0].nme"),
        ("data.split_unit=patient", "data.split_unit: 'patient' is not valid"),
        ("data.split_unit=image", "data.leakage 'drop' would remove them again"),
    ],
)
def test_external_config_refusals_are_one_line(override, says):
    with pytest.raises(ConfigError) as e:
        load_study("smoke", overrides=[override])
    assert says in str(e.value)
    assert "\n" not in str(e.value)


def test_external_config_resolves_and_keeps_old_fingerprints():
    cfg = load_study("smoke", overrides=["data.external=[{name: site_2, hold_out_site: site-2}, "
                                         "{name: other, source: phantom, settings: {phantom_seed: 9}}]"])
    assert cfg.data.external[0] == ExternalSetConfig(name="site_2", hold_out_site="site-2")
    sub = cfg.data.external[1].data_config(cfg.data)
    assert (sub.source, sub.phantom_seed, sub.resolution, sub.external) == ("phantom", 9, cfg.data.resolution, ())
    # a study without external sets hashes as it did before the keys existed (resume keeps working)
    plain = load_study("smoke")
    assert plain.fingerprint() == load_study("smoke", overrides=["data.external=[]", "data.split_unit=group"]).fingerprint()
    assert plain.fingerprint() != load_study("smoke", overrides=[EXT2]).fingerprint()


# -- data: which rows leave the study -------------------------------------------------------------


class _E:
    def __init__(self, name, site):
        self.name, self.hold_out_site = name, site


def test_hold_out_site_takes_the_site_and_everything_grouped_with_it():
    sites = ["a", "b", "b", "a", "c", "a"]
    groups = np.array([0, 1, 0, 2, 3, 1])  # row 0 shares patient 0 with row 2 (site b), row 5 patient 1 with row 1
    rows, out = hold_out_sites(sites, groups, [_E("B", "b")], "csv")
    assert rows["B"].tolist() == [1, 2]
    assert out.tolist() == [0, 1, 2, 5]
    rows, out = hold_out_sites(sites, None, [_E("B", "b"), _E("C", "c")], "csv")
    assert (rows["B"].tolist(), rows["C"].tolist(), out.tolist()) == ([1, 2], [4], [1, 2, 4])


def test_hold_out_site_refusals_name_the_set():
    with pytest.raises(DataError, match="data.external 'B': site 'x' has no usable image in csv data; sites present: a, b"):
        hold_out_sites(["a", "b"], None, [_E("B", "x")], "csv")
    with pytest.raises(DataError, match="needs each image's site, and folder data has none"):
        hold_out_sites(["", ""], None, [_E("B", "x")], "folder")


def test_external_counts_refuse_starved_classes_and_allow_an_absent_one():
    assert check_external_counts("s", np.array([1] * 12), ("Normal", "COVID"), 10) == []  # COVID-only: a sensitivity
    assert check_external_counts("s", np.array([0] * 3 + [1] * 12), ("Normal", "COVID"), 10) == [
        "data.external 's' holds too few images of a class to score (Normal 3; data.min_eval_per_class is 10)"]
    assert check_external_counts("s", np.zeros(0, dtype=int), ("Normal", "COVID"), 10) == ["data.external 's' has no usable image"]


# -- the gap statistic --------------------------------------------------------------------------


def test_set_gap_hand_case_paired():
    # per-run gaps .25 and .25 (run term 0); internal per-image means 1, 1, .5, .5: image term
    # 4/3 * (4 * .0625) / 16 = 1/48; external per-image means .5, .5: 0; df = 3
    g = set_gap(np.array([[1, 1, 1, 0], [1, 1, 0, 1]]), np.array([[1, 0], [0, 1]]))
    half = 3.182446305284263 * math.sqrt(1 / 48)
    assert g.estimate == pytest.approx(0.25)
    assert (g.low, g.high) == pytest.approx((0.25 - half, 0.25 + half))
    assert (g.var_runs, g.var_a, g.var_b, g.df) == pytest.approx((0.0, 1 / 48, 0.0, 3.0))


def test_set_gap_hand_case_with_run_noise_and_patients():
    a = np.array([[1, 1, 1, 1], [1, 1, 0, 0]])  # run means 1, .5
    b = np.array([[1, 0, 1, 0], [0, 0, 0, 0]])  # run means .5, 0: gaps .5, .5 -> run term 0
    g = set_gap(a, b)
    assert g.estimate == pytest.approx(0.5) and g.var_runs == pytest.approx(0.0)
    # a's per-image means 1, 1, .5, .5 as two patients {0,1} {2,3}: deviations summed per patient
    # +.5, -.5 -> 2/1 * .5 / 16 = 1/16; b's .5, 0, .5, 0 by image: 4/3 * 4 * .0625 / 16 = 1/48
    g = set_gap(a, b, codes_a=[0, 0, 1, 1])
    assert (g.var_a, g.var_b) == pytest.approx((1 / 16, 1 / 48))
    # independent runs (two protocols): the run term is each side's variance of run means / runs
    g = set_gap(a, b, paired_runs=False)
    assert g.var_runs == pytest.approx(0.125 / 2 + 0.125 / 2)


def test_set_gap_edge_cases():
    g = set_gap(np.ones((1, 5)), np.zeros((1, 5)))  # one run, no image variance: exact
    assert (g.estimate, g.low, g.high, g.p) == (1.0, 1.0, 1.0, 0.0)
    g = set_gap(np.ones((2, 1)), np.zeros((2, 1)))  # one image per set: no image variance estimate
    assert g.estimate == 1.0 and math.isnan(g.low)
    assert math.isnan(set_gap(np.zeros((2, 0)), np.zeros((2, 3))).estimate)
    with pytest.raises(ValueError, match="same runs"):
        set_gap(np.ones((2, 3)), np.ones((3, 3)))


# -- the report, on a planted fake sweep -----------------------------------------------------------


def _drop(model, n, n_max, seed):
    """The external set: 20 points below the internal accuracy (default_accuracy)."""
    from lungray.report._testing import default_accuracy

    return default_accuracy(model, n, n_max, seed) - 0.20


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    from lungray.report._testing import default_accuracy, log_fake_sweep

    root = tmp_path_factory.mktemp("mlflow")
    return log_fake_sweep(f"sqlite:///{root / 'mlflow.db'}", "ext_study", models=("alpha", "beta"), sizes=(25, 50, 100, 200),
                          seeds=(0, 1, 2), n_eval=200, external={"site_2": _drop, "same": default_accuracy}, n_external=160,
                          artifact_root=(root / "art").as_uri())


def test_report_view_reads_each_set_exactly(fake):
    from lungray.report import tables as TB
    from lungray.report.external import external_view, gap_table
    from lungray.report.load import load_sweep

    sw = load_sweep(fake.tracking_uri, "ext_study")
    assert sw.external_names == ["site_2", "same"]
    view = external_view(sw, "site_2")
    done = view.complete
    assert len(done) == 2 * 4 * 3 and not any(str(c).startswith("ext.") for c in view.runs.columns)
    for r in done.itertuples():
        assert r.test_accuracy == pytest.approx(fake.ext_accuracy[("site_2", r.model, r.train_size, r.optimizer, r.seed)])
    summary = TB.summarise(TB.add_derived(view, TB.prediction_arrays(view)), predictions=TB.prediction_arrays(view))
    row = summary[(summary.metric == "accuracy") & (summary.model == "alpha") & (summary.train_size == 200)].iloc[0]
    want = np.mean([fake.ext_accuracy[("site_2", "alpha", 200, "adam", s)] for s in (0, 1, 2)])
    assert row["mean"] == pytest.approx(want) and row.n_images == 160 and row.ci_low < want < row.ci_high

    gap = gap_table(sw, "site_2")
    assert len(gap) == 8
    for r in gap.itertuples():
        want = np.mean([fake.accuracy[(r.model, r.train_size, "adam", s)] - fake.ext_accuracy[("site_2", r.model, r.train_size, "adam", s)]
                        for s in (0, 1, 2)])
        assert r.gap == pytest.approx(want, abs=1e-12)
        assert r.gap == pytest.approx(0.20, abs=0.01) and r.gap_low > 0.05 and r.p < 0.01  # the planted drop is found
        assert (r.n_runs, r.n_internal, r.n_external) == (3, 200, 160)
    same = gap_table(sw, "same")  # same accuracy on another image set: no gap claimed
    assert (same.gap.abs() < 0.01).all() and ((same.gap_low < 0) & (same.gap_high > 0)).all()


def test_report_section_shows_every_set(fake, tmp_path):
    from lungray.report.build import build_report

    path = build_report(fake.tracking_uri, "ext_study", out_dir=tmp_path / "r", gradcam=False, n_boot=200)
    html = path.read_text()
    assert "External evaluation sets" in html
    assert "site_2" in html and "points LOWER on site_2 than internally" in html
    assert "no gap larger than the noise between internal and same" in html
    gap = pd.read_csv(tmp_path / "r" / "external_gap.csv")
    assert set(gap["set"]) == {"site_2", "same"} and len(gap) == 16
    for name in ("site_2", "same"):
        assert (tmp_path / "r" / f"external_{name}_summary.csv").exists()
        assert (tmp_path / "r" / f"external_{name}_power_law.csv").exists()
        assert (tmp_path / "r" / f"external_{name}_paired.csv").exists()


# -- the planted shortcut, measured over seeds (slow: 10 prepared phantoms, a logistic regression each) ---


def _correct(df: pd.DataFrame) -> np.ndarray:
    p = df[[c for c in df.columns if c.startswith("prob_")]].to_numpy()
    return (p.argmax(1) == df["y_true"].to_numpy()).astype(float)[None]


def _gaps(correlation: float, seed: int, tmp) -> dict:
    """Train logreg on a phantom whose site predicts the label with ``correlation``; return the
    internal-external gap of each external set: site-2 held out, and a second phantom (another
    generator seed: other site profiles) where site and label are independent."""
    from lungray.data.prepare import prepare_data
    from lungray.train import run_trial

    cfg = load_study("smoke", overrides=[
        "data.phantom_n=500", "data.phantom_difficulty=0.5", f"data.phantom_seed={seed}",
        f"data.phantom_site_label_correlation={correlation}", 'data.leakage="off"', f"data.cache_dir={tmp / 'cache'}",
        "data.external=[{name: site_2, hold_out_site: site-2}, {name: other, source: phantom, settings: "
        f"{{phantom_seed: {100 + seed}, phantom_n: 200, phantom_site_label_correlation: 0}}}}]",
        "models=[logreg]", "sizes=[100]", "seeds=[0]"])
    data = prepare_data(cfg.data, output_dir=tmp, progress=False, echo=lambda s: None)
    r = run_trial(cfg.trials()[0], data, workdir=tmp / f"w{correlation}-{seed}")
    a = _correct(r.predictions)
    assert r.mlflow_metrics()["ext.site_2.accuracy"] == pytest.approx(_correct(r.external["site_2"]["predictions"]).mean())
    return {name: set_gap(a, _correct(r.external[name]["predictions"])) for name in ("site_2", "other")}


@pytest.mark.slow
def test_planted_site_shortcut_drops_external_accuracy_over_seeds(tmp_path):
    """Site predicts the label (correlation 0.8; 1 would leave site-2 without a film when 2 classes
    have 3 sites: every film at its class's home site): the gap is clear of zero for both sets in
    at least 4 of 5 seeds, and large on average. No shortcut (0): the gap is within noise in at
    least 3 of 5 seeds (measured: 4 of 5 for both sets; the phantom's sites also differ in
    contrast, so a pixel-level model can lose a little on an unseen site without any shortcut)."""
    seeds = range(5)
    short = [_gaps(0.8, s, tmp_path) for s in seeds]
    none = [_gaps(0.0, s, tmp_path) for s in seeds]
    for name in ("site_2", "other"):
        flagged_short = sum(g[name].low > 0 for g in short)
        flagged_none = sum(g[name].low > 0 for g in none)
        assert flagged_short >= 4, (name, [round(g[name].estimate, 3) for g in short])
        assert flagged_none <= 2, (name, [round(g[name].estimate, 3) for g in none])
        assert np.mean([g[name].estimate for g in short]) > 0.25
        assert abs(np.mean([g[name].estimate for g in none])) < 0.12


def test_a_held_out_site_with_no_film_is_refused_before_training(tmp_path):
    """Correlation 1 with 2 classes over 3 sites puts no film at site-2: one line, before any trial."""
    from lungray.data.prepare import prepare_data

    cfg = load_study("smoke", overrides=["data.phantom_site_label_correlation=1", 'data.leakage="off"', EXT2])
    with pytest.raises(DataError) as e:
        prepare_data(cfg.data, output_dir=tmp_path, progress=False, echo=lambda s: None)
    assert str(e.value) == "data.external 'site_2': site 'site-2' has no usable image in phantom data; sites present: site-0, site-1"


def test_a_run_calling_every_external_image_one_class_still_counts(fake):
    """The shortcut's signature on an external set (one class for everything) is the finding: the
    run counts there exactly as it counts internally, so the drop is not hidden."""
    from lungray.report import tables as TB
    from lungray.report.external import _with_internal_counting, external_view, gap_table
    from lungray.report.load import load_sweep

    sw = load_sweep(fake.tracking_uri, "ext_study")
    rid = fake.run_ids[("alpha", 200, "adam", 0)]
    df = sw.external_predictions["site_2"][rid].copy()
    df["prob_Normal"], df["prob_COVID"] = 0.9, 0.1  # every external image called Normal
    sw.external_predictions["site_2"][rid] = df
    view = external_view(sw, "site_2")
    preds = TB.prediction_arrays(view)
    from lungray.report.stats import degenerate_output

    assert degenerate_output(preds[rid][2], preds[rid][1])  # by its own predictions it would have been left out
    runs = _with_internal_counting(view, TB.add_derived(view, preds))
    assert bool(runs.set_index("run_id").at[rid, "counted"])
    summary = TB.summarise(runs, predictions=preds)
    cell = summary[(summary.metric == "accuracy") & (summary.model == "alpha") & (summary.train_size == 200)].iloc[0]
    assert (cell.n, cell.n_degenerate) == (3, 0)
    gap = gap_table(sw, "site_2")
    assert gap[(gap.model == "alpha") & (gap.train_size == 200)].n_runs.item() == 3


def test_prepared_external_sets_never_touch_the_study_and_map_classes(tmp_path):
    """A held-out site's rows are in no split (and are all of that site); a source set holding only
    the study's second class gets the study's class index; the sweep's splits.json lists the rows."""
    from lungray.data.prepare import prepare_data
    from lungray.sweep.runner import splits_payload

    cfg = load_study("smoke", overrides=[
        "data.phantom_n=600", "sizes=[40]",
        "data.external=[{name: site_2, hold_out_site: site-2}, "
        "{name: covid_only, source: phantom, class_map: {Normal: null, COVID: COVID}, settings: {phantom_seed: 3, phantom_n: 80}}]"])
    data = prepare_data(cfg.data, output_dir=tmp_path, progress=False, echo=lambda s: None)
    site, other = data.external
    study_rows = np.concatenate([data.eval_idx, data.val_idx, data.pool_idx])
    assert (site.name, site.kind, other.name, other.kind) == ("site_2", "site", "covid_only", "source")
    assert np.intersect1d(site.idx, study_rows).size == 0 and len(site.idx) > 0
    assert set(data.manifest()["site"].to_numpy()[site.idx]) == {"site-2"}
    assert "site-2" not in set(data.manifest()["site"].to_numpy()[study_rows])
    ext = other.resolve(data)
    assert ext.class_names == data.class_names == ("Normal", "COVID")
    assert set(ext.labels[other.idx].tolist()) == {1} and other.info["class_counts"]["Normal"] == 0
    assert data.info["external"][0]["n_images"] == len(site.idx)
    payload = splits_payload(data, [40], [0])
    assert payload["external"]["site_2"]["rows"] == site.idx.tolist()
    assert payload["external"]["covid_only"] == {"kind": "source", "rows": list(range(len(other.idx))), "fingerprint": ext.fingerprint}
