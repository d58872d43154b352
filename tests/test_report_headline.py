"""Issue 20.1-20.3: "What this study found", budget-limited points, one number per cell.

Fake sweeps (lungray.report._testing) with planted truths:

* a real lead (beta 10 points behind alpha, right on a subset of alpha's images) and no lead
  (beta 0.5 points behind: one evaluation image in 200) at known sizes;
* a learning curve planted as error(n) = 0.02 + 3 n^-0.6 (+ 0.005 seed term), whose 90 %
  target size is known in closed form, and a three-size sweep whose fit must be UNRELIABLE;
* best epochs planted at the end of the budget for a random set of trials (the budget flag's
  recall and false alarms are measured over every trial);
* a degenerate run that must be set apart from its cell in the console, MLflow and the report.

The consistency test runs the sweep driver's own end step (:func:`lungray.sweep.conclude.conclude`)
and compares each cell's number across the console lines, the MLflow parent run and the HTML.
"""

from __future__ import annotations

import html as _html
import math
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from lungray.report._testing import log_fake_sweep

SIZES = (25, 50, 100, 200, 400)


def _curve(n: int) -> float:
    return 1.0 - (0.02 + 3.0 * n ** -0.6)


def _planted(model: str, n: int, n_max: int, seed: int) -> float:
    base = _curve(n) - 0.005 * seed
    if model == "beta":
        return base - (0.005 if n <= 50 else 0.10)  # no lead at 25 and 50; a real one from 100 on
    return base


def _target_size(error: float) -> float:
    """The planted curve's size for a target error (the seed term averages 0.005 over 0, 1, 2)."""
    return ((error - 0.02 - 0.005) / 3.0) ** (-1 / 0.6)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{root / 'mlflow.db'}", root


@pytest.fixture(scope="module")
def planted(store):
    """A sweep with a planted lead/no lead, a reliable curve and random budget-limited trials."""
    uri, root = store
    rng = np.random.default_rng(20)
    grid = [(m, n, s) for m in ("alpha", "beta") for n in SIZES for s in (0, 1, 2)]
    limited = {grid[i] for i in rng.choice(len(grid), size=9, replace=False)}
    fake = log_fake_sweep(uri, "planted", models=("alpha", "beta"), sizes=SIZES, accuracy_fn=_planted,
                          best_epoch_fn=lambda m, n, s: 2 if (m, n, s) in limited else 1,
                          artifact_root=(root / "art_planted").as_uri())
    from lungray.report.findings import compute_findings
    from lungray.report.load import load_sweep

    return fake, compute_findings(load_sweep(uri, "planted")), limited


def test_headline_names_the_real_lead_and_the_one_within_noise(planted):
    from lungray.report.headline import make_headline

    _, f, _ = planted
    h = make_headline(f)
    by_size = {int(re.match(r"At ([\d,]+) training images", s).group(1).replace(",", "")): s for s in h.sizes}
    assert sorted(by_size) == list(SIZES)
    for n in (25, 50):  # planted: 0.5 points, one image in 200 -> not a finding
        assert by_size[n].startswith(f"At {n} training images: alpha leads with ")
        assert "ahead of beta by +0.5 points" in by_size[n] and "within noise, not a finding" in by_size[n], by_size[n]
        assert "a real difference" not in by_size[n]
    for n in (100, 200, 400):  # planted: 10 points on a subset of alpha's images -> real
        assert "ahead of beta by +10.0 points" in by_size[n] and "a real difference" in by_size[n], by_size[n]
        p = float(re.search(r"Holm-adjusted p [=<] ([0-9.e-]+)", by_size[n]).group(1))
        assert p < 0.05
    # the paired table is where those words come from: the same verdicts, Holm-adjusted
    pc = f.paired.set_index("train_size")
    assert [bool(pc.loc[n, "significant"]) for n in SIZES] == [False, False, True, True, True]
    # the lead's number is the cell's number (section 2's string)
    cells = f.cells().set_index(["label", "train_size"])
    from lungray.report.html import fmt_ci

    r = cells.loc[("alpha", 200)]
    assert fmt_ci(r["mean"], r["ci_low"], r["ci_high"], int(r["n"])) in by_size[200]
    assert r["mean"] == pytest.approx(np.mean([_planted("alpha", 200, 400, s) for s in (0, 1, 2)]), abs=0.5 / 200 + 1e-12)


def test_headline_calls_equal_means_level_not_a_lead(store):
    """Two models with the very same predictions (the fake's gamma copies alpha): no lead."""
    from lungray.report.findings import compute_findings
    from lungray.report.headline import make_headline
    from lungray.report.load import load_sweep

    uri, root = store
    log_fake_sweep(uri, "tied", models=("alpha", "gamma"), sizes=(25, 50), artifact_root=(root / "art_t").as_uri())
    h = make_headline(compute_findings(load_sweep(uri, "tied")))
    for s in h.sizes:
        assert "no model leads: alpha" in s and "gamma" in s and "are level" in s and "leads with" not in s, s
        assert "within noise, not a finding" in s


def test_headline_gives_the_planted_target_size_with_an_interval(planted):
    from lungray.report.headline import make_headline

    _, f, _ = planted
    line = next(t for t in make_headline(f).targets if t.startswith("Training images for 90% accuracy"))
    m = re.search(r"alpha: ([\d,]+) \[([\d,]+), ([\d,]+|∞)\]", line)
    assert m, line
    est, lo, hi = (float(x.replace(",", "").replace("∞", "inf")) for x in m.groups())
    truth = _target_size(0.10)  # ~468 images
    assert lo <= truth <= hi and abs(est - truth) / truth < 0.25, (line, truth)
    # 95 % is beyond twice the largest size measured: the headline says it cannot be said
    line95 = next(t for t in make_headline(f).targets if t.startswith("Training images for 95% accuracy"))
    assert ("alpha: cannot be said" in line95 or "cannot be said for alpha" in line95) and _target_size(0.05) > 2 * max(SIZES)


def test_headline_says_an_unreliable_fit_cannot_answer(store):
    """The issue's default: three sizes, so three parameters through three means: UNRELIABLE."""
    from lungray.report.findings import compute_findings
    from lungray.report.headline import make_headline
    from lungray.report.load import load_sweep

    uri, root = store
    log_fake_sweep(uri, "three_sizes", models=("alpha", "beta"), sizes=(50, 150, 450), artifact_root=(root / "art3").as_uri())
    h = make_headline(compute_findings(load_sweep(uri, "three_sizes")))
    assert len(h.targets) == 2
    for t in h.targets:  # one reason for both models: said once
        assert ": cannot be said for alpha or beta (the fit is UNRELIABLE: only 3 training sizes" in t, t
    assert not re.search(r"alpha: [\d,]+ \[", " ".join(h.targets))  # no number given where none can be


def test_budget_flags_exactly_the_planted_runs_and_cells(planted):
    """Recall and false alarms of the budget flag over every trial of the sweep (30 runs, 9
    planted at random: best validation loss at the last epoch of the budget)."""
    from lungray.report import budget as B
    from lungray.report.headline import make_headline

    _, f, limited = planted
    br = f.budget_runs
    flagged = {(r.model, int(r.train_size), int(r.seed)) for r in br.itertuples() if r.budget_limited}
    assert len(br) == 30
    assert flagged == limited  # recall 1, false alarms 0
    assert all("last evaluation" in w for w in br.loc[br["budget_limited"], "budget_why"])
    bc = f.budget_cells.set_index(["label", "train_size"])
    for (m, n), g in pd.DataFrame(sorted(limited), columns=["m", "n", "s"]).groupby(["m", "n"]):
        assert bc.loc[(m, n), "budget_limited"] and bc.loc[(m, n), "n_limited"] == len(g)
    assert int(bc["n_limited"].sum()) == len(limited)
    # the budget per point: fixed 3 epochs of batch 16, from scratch
    assert set(bc["pretrained"]) == {"from scratch"} and set(bc["epochs_planned"]) == {3.0}
    assert bc.loc[("alpha", 100), "steps_per_epoch"] == math.ceil(100 / 16)
    # the headline's caveat names each flagged cell with its count, and no other
    cav = next(c.text for c in make_headline(f).caveats if c.key == "budget")
    assert B.BUDGET_CAVEAT in cav
    named = set(re.findall(r"(alpha|beta) at ([^;]+?)(?:;| ended)", cav))
    pairs = {(lab, int(n)) for lab, rest in named for n in re.findall(r"([\d,]+) \(\d+ of \d+ runs\)", rest)}
    assert pairs == {(m, n) for m, n, _ in limited}


def test_caveat_registry_takes_a_new_provider_and_survives_a_broken_one(planted, monkeypatch):
    """Issue 24's shortcut probes add a caveat without touching the callers."""
    from lungray.report import headline as HL

    _, f, _ = planted
    monkeypatch.setattr(HL, "_PROVIDERS", dict(HL._PROVIDERS))
    f.extras["shortcut_probe"] = {"model": "alpha", "masked_score": 0.81}

    @HL.caveat_provider("test_probe", order=66)
    def _probe(fd):
        p = fd.extras["shortcut_probe"]
        return [HL.Caveat("test_probe", f"{p['model']} scores {p['masked_score']} with the lungs masked out")]

    @HL.caveat_provider("test_broken", order=67)
    def _broken(fd):
        raise KeyError("no such probe")

    with pytest.raises(ValueError, match="registered twice"):
        HL.caveat_provider("test_probe")(_probe)
    h = HL.make_headline(f)
    keys = [c.key for c in h.caveats]
    assert keys.index("test_probe") > keys.index("leakage") if "leakage" in keys else "test_probe" in keys
    assert "alpha scores 0.81 with the lungs masked out" in h.markdown() and "lungs masked out" in h.html()
    assert any(c.key == "test_broken" and "could not be checked (KeyError" in c.text for c in h.caveats)
    f.extras.pop("shortcut_probe")


def test_default_preset_headline_says_the_curve_measures_budget(store):
    """Issue 20.2: the default preset's fixed 200 steps; the headline says so."""
    from lungray.study import load_study
    from lungray.report import headline as HL
    from lungray.report.findings import compute_findings
    from lungray.report.load import load_sweep

    cfg = load_study("default")
    assert cfg.schedule.rule == "steps"  # if the preset changes, this test must be rethought
    uri, root = store
    log_fake_sweep(uri, "steps_budget", models=("alpha",), sizes=(50, 150, 450), artifact_root=(root / "art_s").as_uri())
    sw = load_sweep(uri, "steps_budget")
    from dataclasses import replace

    sw.config = replace(sw.config, schedule=cfg.schedule)  # the preset's budget, the fake's numbers
    f = compute_findings(sw)
    text = next(c.text for c in HL.make_headline(f).caveats if c.key == "budget_rule")
    passes = f.budget_cells.set_index("train_size")["passes"]
    assert passes[50] > passes[450]
    assert f"budget of {cfg.schedule.max_steps} optimisation steps" in text and "does not measure data alone" in text
    assert f"{passes[50]:.0f} passes" in text and f"{passes[450]:.0f}" in text


# -- one number per cell: console, MLflow parent, report ---------------------------------------------


@pytest.fixture(scope="module")
def concluded(store, tmp_path_factory):
    """The driver's end step over a fake sweep with one degenerate run."""
    from lungray.sweep.conclude import conclude

    uri, root = store
    fake = log_fake_sweep(uri, "consistency", models=("alpha", "beta"), sizes=(25, 50, 100, 200),
                          degenerate=[("beta", 25, 1)], artifact_root=(root / "art_c").as_uri())
    exp_dir = tmp_path_factory.mktemp("exp")
    lines: list[str] = []
    cfg = SimpleNamespace(tracking=SimpleNamespace(gradcam=False, print_figures=False))
    end = conclude(uri, "consistency", fake.parent_id, exp_dir, cfg, report=True, echo=lines.append)
    assert end.report_error is None and end.report_path is not None, lines
    return fake, end, lines, exp_dir


def test_every_cell_has_one_number_in_console_mlflow_and_report(concluded):
    from mlflow import MlflowClient

    from lungray import tracking as T
    from lungray.report.html import fmt_ci

    fake, end, lines, exp_dir = concluded
    console = "\n".join(lines)
    html = end.report_path.read_text()
    parent = MlflowClient(fake.tracking_uri).get_run(fake.parent_id)
    cells = end.cells
    assert len(cells) == 8
    for r in cells.itertuples():
        text = fmt_ci(r.mean, r.ci_low, r.ci_high, r.n)
        assert text in console and _html.escape(text) in html, (r.label, r.train_size, text)
        assert end.summary.loc[r.label, f"n = {r.train_size}"].startswith(text)
        key = T.cell_metric_key(r.model, None, r.train_size, "accuracy")
        assert r.mlflow_key == key
        m = parent.data.metrics
        assert m[key] == r.mean and m[key + "_low"] == r.ci_low and m[key + "_high"] == r.ci_high
        assert m[T.cell_metric_key(r.model, None, r.train_size, "accuracy", "runs")] == r.n
        assert m[T.cell_metric_key(r.model, None, r.train_size, "accuracy", "set_apart")] == r.n_set_apart
        # the planted accuracies, by hand: the mean of the runs that count
        seeds = [s for s in (0, 1, 2) if not (r.model == "beta" and r.train_size == 25 and s == 1)]
        assert r.mean == pytest.approx(np.mean([fake.accuracy[(r.model, r.train_size, "adam", s)] for s in seeds]), abs=1e-12)
    # summary.csv (the file, and the copy in MLflow) holds those same rows
    disk = pd.read_csv(exp_dir / "summary.csv")
    assert np.array_equal(disk["mean"].to_numpy(), cells["mean"].to_numpy())


def test_a_set_apart_run_is_shown_wherever_its_cell_is(concluded):
    from lungray.report.html import esc

    fake, end, lines, _ = concluded
    c = end.cells.set_index(["label", "train_size"]).loc[("beta", 25)]
    assert (c["n"], c["n_runs"], c["n_set_apart"], c["set_apart_seeds"]) == (2, 3, 1, "1")
    console = "\n".join(lines)
    assert "+1 degenerate run (seed 1" in console and "not in the mean" in console
    html = end.report_path.read_text()
    sentence = "Set apart (degenerate output; not counted here or in any other number of this report"
    for sec in ("curves", "tables", "perclass", "paired", "fit"):
        body = html[html.index(f'<section id="{sec}">'):]
        body = body[: body.index("</section>")]
        assert esc(sentence) in body and "beta at 25 images, seed 1" in body, sec
    assert any(k == "set_apart" for k in (cv["key"] for cv in _headline_json(end)["caveats"]))
    # the paired test at 25 pairs only the seeds where both runs count; so do the per-class table
    # and the pooled confusion matrix
    pc = pd.read_csv(end.report_path.parent / "paired.csv").set_index("train_size")
    assert int(pc.loc[25, "n_seeds"]) == 2 and int(pc.loc[100, "n_seeds"]) == 3
    assert "beta: seeds 0,2 (seed 1 set apart)" in html


def _headline_json(end):
    import json

    return json.loads((end.report_path.parent / "headline.json").read_text())


def test_the_headline_is_the_same_in_console_mlflow_and_report(concluded):
    from mlflow import MlflowClient

    from lungray import tracking as T
    from lungray.report.headline import TITLE

    fake, end, lines, _ = concluded
    md = (end.report_path.parent / T.HEADLINE_MD).read_text()
    client = MlflowClient(fake.tracking_uri)
    parent = client.get_run(fake.parent_id)
    assert parent.data.tags[T.NOTE] == md  # the MLflow UI's description of the sweep run
    local = client.download_artifacts(fake.parent_id, T.HEADLINE_MD)
    assert open(local).read() == md
    # the console lines are the markdown's items, in the same order
    assert end.headline[0].startswith(TITLE)
    items = [ln[2:] for ln in md.splitlines() if ln.startswith("- ")]
    console_items = [ln.strip()[2:] if ln.strip().startswith("- ") else ln.strip() for ln in end.headline[1:]
                     if ln.strip() != "Caveats:"]
    assert [i.replace("**", "") for i in items] == console_items
    # the report opens with the same block, before section 1
    html = end.report_path.read_text()
    assert html.index('id="headline"') < html.index('<section id="curves">')
    for item in console_items:
        assert _html.escape(item) in html
    # section 2's mark agrees with section 5's verdict
    wide = end.summary
    pc = pd.read_csv(end.report_path.parent / "paired.csv").set_index("train_size")
    for n in (25, 50, 100, 200):
        star = "★" in wide.loc["alpha", f"n = {n}"]
        assert star == bool(pc.loc[n, "significant"]), (n, wide.loc["alpha", f"n = {n}"])


# -- the report in a browser --------------------------------------------------------------------------


@pytest.mark.browser
def test_chromium_opens_the_report_with_the_headline_and_180_mm_figures(concluded, tmp_path):
    from lungray.report._testing import chromium_check
    from lungray.report.figures import SCREEN_DPI
    from lungray.report.headline import TITLE

    _, end, _, _ = concluded
    res = chromium_check(end.report_path, tmp_path / "chromium", height=1400)
    lay = res.layout
    # the first heading after the title is the headline, and it is on the first screen
    assert lay["headings"][:2] == ["lungray report: consistency", TITLE], lay["headings"][:4]
    assert 0 < lay["headline_top"] < 400 and lay["headline_height"] > 100
    assert "alpha leads with" in lay["headline_text"]
    # every figure decodes at 180 mm at the report's screen resolution
    assert len(res.images) >= 5
    for ok, width, _ in res.images:
        assert ok and width / SCREEN_DPI * 25.4 == pytest.approx(180.0, abs=25.4 / SCREEN_DPI), width


def test_budget_rule_by_hand():
    """The flag's rule on hand-made runs: early stopping, the planned epochs, the last quarter."""
    from lungray.report.budget import _judge

    nan = float("nan")
    # closed-form fit, stopped early, or ended before its planned epochs: never budget-limited
    assert _judge(True, False, 1, 1, 0, 1, 1, None, "val_loss")[0] is False
    assert _judge(False, True, 12, 25, 6, 12, 7, 5, "val_loss") == (False, "early stopping ended it at epoch 12 of 25")
    assert _judge(False, False, 10, 25, 9, 10, 10, None, "val_loss")[0] is False
    # with early stopping: used the whole budget without being stopped -> still improving
    lim, why = _judge(False, False, 25, 25, 22, 25, 23, 5, "val_loss")
    assert lim and "within the last 5" in why
    # without: best in the last quarter of 8 evaluations (7 or 8) flags, 6 does not
    assert _judge(False, False, 8, 8, 6, 8, 7, None, "val_loss") == (True, "best val_loss at evaluation 7 of 8 (the last quarter)")
    assert _judge(False, False, 8, 8, 7, 8, 8, None, "val_loss") == (True, "best val_loss at the last evaluation")
    assert _judge(False, False, 8, 8, 5, 8, 6, None, "val_loss") == (False, "best val_loss at evaluation 6 of 8")
    # no history: the logged best epoch against the epochs run
    assert _judge(False, False, 3, 3, 3, 0, nan, None, "val_loss") == (True, "best epoch 3 is the last")


def test_a_trial_logs_its_budget_for_the_report():
    from lungray.train.result import TrialResult

    r = TrialResult(metrics={"test_accuracy": 0.5}, per_class=None, confusion=None, predictions=None, history=[],
                    best_epoch=6, best_checkpoint=None, timings={}, epochs_run=7, stopped_early=False,
                    resolved={"batch_size": 16, "epochs": 7, "steps_per_epoch": 29, "n_train": 450})
    m = r.mlflow_metrics()
    assert (m["epochs_planned"], m["steps_per_epoch"], m["batch_size_used"], m["stopped_early"]) == (7.0, 29.0, 16.0, 0.0)
    assert m["best_epoch"] == 6.0 and m["epochs_run"] == 7.0


def test_cells_without_an_interval_are_named_and_nothing_is_called_real(store):
    """One seed per cell: no interval and no test of the recipes; the headline says both."""
    from lungray.report.findings import compute_findings
    from lungray.report.headline import make_headline
    from lungray.report.load import load_sweep

    uri, root = store
    log_fake_sweep(uri, "one_seed", models=("alpha", "beta"), sizes=(25, 50), seeds=(0,), artifact_root=(root / "art1").as_uri())
    h = make_headline(compute_findings(load_sweep(uri, "one_seed")))
    cav = next(c.text for c in h.caveats if c.key == "no_interval")
    assert cav.startswith("No interval: alpha at 25 (1 run), alpha at 50 (1 run), beta at 25 (1 run) and beta at 50 (1 run)")
    for s in h.sizes:
        assert "(one seed: no test of the recipes)" in s and "a real difference" not in s, s
        assert "(n=1, no interval)" in s
