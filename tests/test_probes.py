"""Issue 24 (points 2-4): the shortcut probes' pure functions, config, source-probe task and trial pass.

Hand-made arrays with values worked out by hand for the ablation and the saliency share (an
input the phantom never produced), the config grid with its source-probe twins, the site view
of a prepared dataset, and one trained model's probe pass on the shared prepared phantom.
The ground truth over seeds (a planted site shortcut) is in ``tests/test_probes_truth.py``.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from lungray.config import PROBE_ARM_SUFFIX, SITE_TASK, resolve_study
from lungray.data.ablation import blank_region, known_masks
from lungray.errors import ConfigError
from lungray.metrics.saliency import area_share, lung_share, mean_mask, prior_share

# ------------------------------------------------------------------------------------------
# ablation (hand-made arrays)
# ------------------------------------------------------------------------------------------

IMG = np.array(
    [
        [[10, 20, 30], [40, 50, 60], [70, 80, 90]],
        [[0, 0, 0], [0, 255, 0], [0, 0, 0]],
        [[5, 5, 5], [5, 5, 5], [5, 5, 5]],
        [[1, 2, 3], [4, 5, 6], [7, 8, 9]],
    ],
    dtype=np.uint8,
)
LUNG = np.array(
    [
        [[0, 1, 0], [0, 1, 0], [0, 0, 0]],  # lungs: 20, 50 (mean 35); outside: 10,30,40,60,70,80,90 (mean 380/7)
        [[0, 0, 0], [0, 1, 0], [0, 0, 0]],  # lungs: 255; outside: eight zeros
        [[1, 1, 1], [1, 1, 1], [1, 1, 1]],  # all lung: no outside -> unusable
        [[0, 1, 0], [0, 255, 0], [0, 0, 0]],  # an unknown pixel -> unusable
    ],
    dtype=np.uint8,
)


def test_known_masks_needs_both_regions_and_no_unknown_pixel():
    assert known_masks(LUNG).tolist() == [True, True, False, False]


def test_lungs_blanked_with_the_mean_outside():
    out, known = blank_region(IMG, LUNG, "lungs")
    assert known.tolist() == [True, True, False, False]
    # image 0: 380 / 7 = 54.29 -> 54 at the lung pixels, everything else untouched
    assert out[0].tolist() == [[10, 54, 30], [40, 54, 60], [70, 80, 90]]
    assert out[1].tolist() == [[0, 0, 0], [0, 0, 0], [0, 0, 0]]  # the bright lung becomes the black outside
    assert np.array_equal(out[2:], IMG[2:])  # unusable rows come back unchanged
    assert out.dtype == np.uint8 and np.array_equal(IMG[0, 0], [10, 20, 30])  # input not modified


def test_outside_blanked_with_the_mean_inside():
    out, _ = blank_region(IMG, LUNG, "outside")
    assert out[0].tolist() == [[35, 20, 35], [35, 50, 35], [35, 35, 35]]
    assert out[1].tolist() == [[255] * 3, [255] * 3, [255] * 3]


def test_zero_fill_and_wider_dtypes():
    out, _ = blank_region(IMG.astype(np.uint16) * 257, LUNG, "lungs", fill="zero")
    assert out.dtype == np.uint16 and out[0, 0, 1] == 0 and out[0, 0, 0] == 2570
    f, _ = blank_region(IMG[:1].astype(np.float32) / 255, LUNG[:1], "outside")
    assert f[0, 0, 0] == pytest.approx(35 / 255)  # floats are not rounded


def test_ablation_refuses_bad_arguments():
    with pytest.raises(ConfigError, match="region 'heart'.*lungs, outside"):
        blank_region(IMG, LUNG, "heart")
    with pytest.raises(ConfigError, match="fill 'noise'.*kept_mean, zero"):
        blank_region(IMG, LUNG, "lungs", fill="noise")
    with pytest.raises(ValueError, match="same shape"):
        blank_region(IMG, LUNG[:2], "lungs")


# ------------------------------------------------------------------------------------------
# saliency share (hand-made arrays)
# ------------------------------------------------------------------------------------------


def test_lung_share_by_hand():
    maps = np.array(
        [
            [[1.0, 3.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 2.0]],  # lungs hold 3 + 4 of 10 -> 0.7
            [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],  # no mass -> NaN
            [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]],  # all lung -> 1
            [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]],  # unknown pixel -> NaN
        ]
    )
    s = lung_share(maps, LUNG)
    assert s[0] == pytest.approx(0.7) and math.isnan(s[1]) and s[2] == 1.0 and math.isnan(s[3])
    with pytest.raises(ValueError, match="non-negative"):
        lung_share(-maps, LUNG)
    with pytest.raises(ValueError, match="same shape"):
        lung_share(maps[:, :2], LUNG)


def test_image_blind_prior_and_area():
    # the mean of the usable masks (rows 0-2; row 3 has an unknown pixel)
    prior = mean_mask(LUNG)
    expected = (np.stack([LUNG[0], LUNG[1], LUNG[2]]) == 1).mean(0)
    assert np.allclose(prior, expected)
    # prior mass: centre column top 2/3, centre 3/3, others 1/3 each (6 of them) -> total 2/3+1+6/3+... computed directly
    share0 = (prior * (LUNG[0] == 1)).sum() / prior.sum()
    assert prior_share(prior, LUNG)[0] == pytest.approx(share0)
    assert prior_share(prior, LUNG)[0] == pytest.approx((2 / 3 + 3 / 3) / prior.sum())
    assert area_share(LUNG)[:3].tolist() == pytest.approx([2 / 9, 1 / 9, 1.0])
    assert math.isnan(area_share(LUNG)[3])
    assert mean_mask(np.full((2, 3, 3), 255, np.uint8)).sum() == 0  # nothing usable: an empty prior


# ------------------------------------------------------------------------------------------
# config: the source-probe twins, validation
# ------------------------------------------------------------------------------------------


def test_source_probe_trials_twin_every_trial():
    cfg = resolve_study("smoke", overrides=["probes.source=true", "data.phantom_sites=2"])
    own = cfg.study_trials()
    all_ = cfg.trials()
    assert len(all_) == 2 * len(own)
    probes = [t for t in all_ if t.is_probe]
    assert [(t.model, t.train_size, t.optimizer, t.seed, t.schedule) for t in probes] == \
        [(t.model, t.train_size, t.optimizer, t.seed, t.schedule) for t in own]
    assert all(t.train.task == SITE_TASK and t.arm.endswith(PROBE_ARM_SUFFIX) for t in probes)
    assert not any(t.is_probe for t in own)
    assert resolve_study("smoke").trials() == resolve_study("smoke").study_trials()  # off by default


def test_probe_config_is_validated():
    from lungray.study import load_study

    with pytest.raises(ConfigError, match="probes.fill"):
        load_study("smoke", overrides=["probes.fill=noise"])
    with pytest.raises(ConfigError, match="probes.cam_images must be >= 0"):
        load_study("smoke", overrides=["probes.cam_images=-1"])
    with pytest.raises(ConfigError, match="phantom_sites is 1.*at least 2"):
        load_study("smoke", overrides=["probes.source=true", "data.phantom_sites=1"])
    with pytest.raises(ConfigError, match="unknown config key probes.sauce"):
        load_study("smoke", overrides=["probes.sauce=true"])
    cfg = load_study("smoke", overrides=["probes.source=true", "data.phantom_sites=2"])
    assert cfg.probes.source


# ------------------------------------------------------------------------------------------
# the site view of a prepared dataset
# ------------------------------------------------------------------------------------------


def test_site_targets_change_only_the_targets(prepared_phantom):
    from lungray.data.site_targets import SiteTargets
    from lungray.train.tasks import TASKS

    d = prepared_phantom
    v = SiteTargets(d)
    assert np.array_equal(v.labels, d.sites) and v.class_names == tuple(d.info["site_names"])
    assert v.images is d.images and v.resolution == d.resolution
    assert np.array_equal(v.subset(60, 1), d.subset(60, 1))  # the subset is the label trial's
    back = pickle.loads(pickle.dumps(v))
    assert np.array_equal(back.labels, d.sites) and back.root == d.root
    task = TASKS.get(SITE_TASK)
    ds = task.dataset(d, d.eval_idx[:5], augmentation="none", mean=0.0, std=1.0, seed=0)
    assert [ds[i][1] for i in range(5)] == d.sites[d.eval_idx[:5]].tolist()
    assert task.class_names(d) == list(d.info["site_names"])


def test_site_task_refuses_data_without_sites(prepared_phantom):
    import dataclasses

    from lungray.train.tasks import TASKS

    no_sites = dataclasses.replace(prepared_phantom, sites=None)
    with pytest.raises(ConfigError, match="does not know every image's acquisition site.*probes.source=false"):
        TASKS.get(SITE_TASK).check_data(no_sites)
    one = dataclasses.replace(prepared_phantom, info={**prepared_phantom.info, "site_names": ["only"]})
    with pytest.raises(ConfigError, match="one site \\(only\\)"):
        TASKS.get(SITE_TASK).check_data(one)


# ------------------------------------------------------------------------------------------
# one trained model's probe pass
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(prepared_phantom, tmp_path_factory):
    from lungray.config import ModelConfig, OptimizerConfig, ScheduleConfig, TrainConfig, TrialConfig
    from lungray.train import run_trial

    trial = TrialConfig(study="probes", model=ModelConfig(name="simple_cnn", width=8), train_size=80,
                        optimizer=OptimizerConfig(lr=3e-3), seed=0, schedule=ScheduleConfig(batch_size=16, epochs=2),
                        train=TrainConfig(device="cpu"))
    wd = tmp_path_factory.mktemp("probe_trial")
    res = run_trial(trial, prepared_phantom, workdir=wd)
    return trial, res


def test_lung_probe_pass_matches_its_own_table(prepared_phantom, trained, tmp_path):
    import shutil

    from lungray import tracking as T
    from lungray.config import ProbeConfig
    from lungray.metrics import accuracy, roc_auc_binary
    from lungray.sweep.probes import METRICS, PROBES_CSV, trial_probes

    d = prepared_phantom
    trial, res = trained
    art = tmp_path / "artifacts"
    (art / T.CHECKPOINT_DIR).mkdir(parents=True)
    shutil.copy(res.best_checkpoint, art / T.BEST_CHECKPOINT)
    metrics, extra = trial_probes(d, trial, art, ProbeConfig(cam_images=30))
    assert extra == {} and set(metrics) == set(METRICS)
    import pandas as pd

    tab = pd.read_csv(art / PROBES_CSV)
    assert "image_id" not in tab.columns  # rows only, never a file name
    usable = known_masks(np.asarray(d.lung_masks[d.eval_idx]))
    assert tab["row"].tolist() == d.eval_idx[usable].tolist()
    assert tab["y_true"].tolist() == d.labels[tab["row"]].tolist()
    assert metrics["probe_n_images"] == len(tab)
    for view in ("intact", "lungs_blanked", "outside_blanked"):
        p = tab[[f"{view}_prob_0", f"{view}_prob_1"]].to_numpy()
        assert metrics[f"probe_{view}_accuracy"] == pytest.approx(accuracy(tab["y_true"], p.argmax(1)))
        assert metrics[f"probe_{view}_auc"] == pytest.approx(roc_auc_binary(tab["y_true"] == 1, p[:, 1]))
    # the intact pass is the trial's own evaluation of these images
    pred = res.predictions.set_index("row").loc[tab["row"]]
    assert np.allclose(pred[["prob_Normal", "prob_COVID"]].to_numpy(), tab[["intact_prob_0", "intact_prob_1"]].to_numpy(), atol=1e-5)
    assert not np.allclose(tab["intact_prob_1"], tab["lungs_blanked_prob_1"])
    # saliency on the first 30 only; shares in [0, 1]; the blind baseline on every row
    assert tab["cam_lung_share"].iloc[30:].isna().all() and tab["cam_lung_share"].iloc[:30].notna().any()
    assert tab["cam_lung_share"].dropna().between(0, 1).all()
    assert metrics["probe_cam_images"] == 30
    assert metrics["probe_cam_grid"] == 8  # simple_cnn's last convolution at 32 px: an 8 x 8 map
    assert metrics["probe_cam_lung_share"] == pytest.approx(tab["cam_lung_share"].mean())
    assert metrics["probe_lung_area"] == pytest.approx(tab["lung_area"].mean())
    assert tab["blind_lung_share"].notna().all() and (tab["blind_lung_share"] > tab["lung_area"]).mean() > 0.9


def test_probes_skip_what_they_cannot_probe(prepared_phantom, trained, tmp_path):
    import dataclasses

    from lungray.config import ProbeConfig

    trial, _ = trained
    assert trial_probes_of(prepared_phantom, trial, tmp_path, ProbeConfig(lungs=False)) == ({}, {})
    site = dataclasses.replace(trial, train=dataclasses.replace(trial.train, task=SITE_TASK))
    assert trial_probes_of(prepared_phantom, site, tmp_path, ProbeConfig()) == ({}, {})
    broken = tmp_path / "none"
    (broken / "checkpoint").mkdir(parents=True)
    (broken / "checkpoint" / "best.pt").write_bytes(b"not a checkpoint")
    metrics, extra = trial_probes_of(prepared_phantom, trial, broken, ProbeConfig())
    assert metrics == {} and extra["probe_error"] and "\n" not in extra["probe_error"]


def trial_probes_of(*args):
    from lungray.sweep.probes import trial_probes

    return trial_probes(*args)


# ------------------------------------------------------------------------------------------
# the report's decisions on hand-made probe tables
# ------------------------------------------------------------------------------------------


def _table(rows, y, lb1, intact1=None, out1=None, cam=None, rnd=None, blind=0.6, area=0.3):
    import pandas as pd

    n = len(rows)
    intact1 = np.where(np.asarray(y) == 1, 0.9, 0.1) if intact1 is None else np.asarray(intact1, float)
    out1 = np.full(n, 0.5) if out1 is None else np.asarray(out1, float)
    t = {"row": rows, "y_true": y}
    for view, p1 in (("intact", intact1), ("lungs_blanked", np.asarray(lb1, float)), ("outside_blanked", out1)):
        t[f"{view}_prob_0"], t[f"{view}_prob_1"] = 1 - p1, p1
    t["cam_lung_share"] = np.full(n, 0.2) if cam is None else cam
    t["cam_lung_share_randomised"] = np.full(n, np.nan) if rnd is None else rnd
    t["blind_lung_share"], t["lung_area"] = np.full(n, blind), np.full(n, area)
    return pd.DataFrame(t)


def test_cell_ablation_by_hand():
    from lungray.report.shortcut import cell_ablation
    from lungray.report.stats import binom_ci

    # lungs blanked: class-1 probabilities 0.1 0.2 0.9 0.4 for y 0 0 1 1 -> 3 of 4 right, AUC 4/4 pairs = 1
    t = _table([7, 3, 5, 9], [0, 0, 1, 1], [0.1, 0.2, 0.9, 0.4])
    r = cell_ablation([t], n_boot=200, seed=0)
    ci = binom_ci(3, 4)
    assert (r["runs"], r["n_images"], r["chance"]) == (1, 4, 0.5)
    assert (r["lungs_blanked_accuracy"], r["lungs_blanked_accuracy_low"], r["lungs_blanked_accuracy_high"]) == \
        pytest.approx((0.75, ci.low, ci.high))
    # every resample with both classes still separates them perfectly: the AUC interval is [1, 1]
    assert (r["lungs_blanked_auc"], r["lungs_blanked_auc_low"], r["lungs_blanked_auc_high"]) == (1.0, 1.0, 1.0)
    # ...but 3 of 4 is no evidence of accuracy above chance (the low bound 0.19 < 0.5): the accuracy decides
    assert not r["uses_shortcut"] and r["intact_accuracy"] == 1.0
    many = cell_ablation([_table(list(range(40)), [0, 1] * 20, [0.2, 0.8] * 20)], n_boot=100)
    assert many["lungs_blanked_accuracy_low"] == pytest.approx(binom_ci(40, 40).low) and many["uses_shortcut"]
    # a constant answer with the lungs blanked: accuracy = chance, AUC 0.5 -> no shortcut
    flat = cell_ablation([_table([7, 3, 5, 9], [0, 0, 1, 1], [0.3] * 4)], n_boot=200)
    assert flat["lungs_blanked_accuracy"] == 0.5 and flat["lungs_blanked_auc"] == 0.5 and not flat["uses_shortcut"]


def test_cell_ablation_pairs_runs_by_row():
    from lungray.report.shortcut import cell_ablation

    a = _table([1, 2, 3, 4], [0, 0, 1, 1], [0.1, 0.2, 0.9, 0.4])
    # the second run lists the rows in another order and has one more: only the common rows count
    b = _table([4, 9, 3, 2, 1], [1, 0, 1, 0, 0], [0.8, 0.7, 0.8, 0.3, 0.3])
    r = cell_ablation([a, b], n_boot=100)
    assert (r["runs"], r["n_images"]) == (2, 4)
    assert r["lungs_blanked_accuracy"] == pytest.approx((0.75 + 1.0) / 2)  # run b: rows 1-4 all right


def test_cell_saliency_by_hand():
    from lungray.report.shortcut import cell_saliency

    y = [0, 1] * 10  # 20 images, all right intact: Clopper-Pearson low 0.025 ** (1 / 20) = 0.83 > chance 0.5
    cam = np.full(20, 0.2)
    cam[3] = np.nan  # a map with no mass: left out of the cell
    rnd_a = np.full(20, np.nan)
    rnd_a[:2] = [0.5, 0.1]
    rnd_b = np.full(20, np.nan)
    rnd_b[:3] = [0.3, np.nan, 0.4]
    r = cell_saliency([_table(list(range(20)), y, [0.5] * 20, cam=cam, rnd=rnd_a), _table(list(range(20)), y, [0.5] * 20, rnd=rnd_b)])
    assert (r["runs"], r["n_images"], r["learned"]) == (2, 19, True)
    assert (r["cam_share"], r["blind_share"], r["lung_area"]) == pytest.approx((0.2, 0.6, 0.3))
    # randomised: per image the mean of the maps that exist (0.4, 0.1, 0.4; image 3 is out), 4 maps
    assert r["randomised_share"] == pytest.approx(0.3) and r["randomised_images"] == 4
    assert r["looks_outside"]  # 0.2 in the lungs, a uniform map puts 0.3 there
    inside = cell_saliency([_table(list(range(20)), y, [0.5] * 20, cam=np.full(20, 0.55))])
    assert not inside["looks_outside"] and inside["cam_share"] == pytest.approx(0.55)
    # a model at chance: its maps are not interpretable, never flagged
    chance = cell_saliency([_table(list(range(20)), y, [0.5] * 20, intact1=np.full(20, 0.6))])
    assert not chance["learned"] and not chance["looks_outside"]


def test_association_counts_patients_once():
    from lungray.report.shortcut import association

    # four patients with 5 films each; site and label agree per patient on 3 of 4
    site = np.repeat([0, 0, 1, 1], 5)
    label = np.repeat([0, 1, 1, 1], 5)
    films = association(site, label)
    per_patient = association(site, label, groups=np.repeat(["a", "b", "c", "d"], 5))
    assert films["n"] == 20 and per_patient["n"] == 4
    # 2 x 2 table [[5, 5], [0, 10]]: chi2 = 20 * (5*10 - 5*0)^2 / (10 * 10 * 5 * 15) = 6.667, V = sqrt(6.667 / 20)
    assert films["chi2"] == pytest.approx(20 / 3) and films["cramers_v"] == pytest.approx((1 / 3) ** 0.5)
    assert films["p"] < 0.05 < per_patient["p"]  # the same association is no evidence from 4 patients


def test_verdict_and_caveats_words():
    import pandas as pd

    from lungray.report.shortcut import ShortcutFindings, shortcut_caveats, verdict

    empty = ShortcutFindings(pd.DataFrame(), pd.DataFrame(), pd.DataFrame())
    assert verdict(empty).startswith("Not measured") and shortcut_caveats(empty) == []
    ab = pd.DataFrame([{"model": "cnn", "train_size": 50, "optimizer": "adam", "chance": 0.5, "uses_shortcut": False,
                        **{f"lungs_blanked_{m}{s}": v for m in ("accuracy", "auc") for s, v in (("", 0.5), ("_low", 0.4), ("_high", 0.6))}}])
    sal = pd.DataFrame([{"model": "cnn", "train_size": 50, "learned": True, "looks_outside": False}])
    src = pd.DataFrame([{"model": "cnn", "train_size": 50, "predictable": True, "degrave": False, "source_auc": 0.9,
                         "source_auc_low": 0.8, "source_auc_high": 0.95}])
    ok = ShortcutFindings(ab, sal, src, {"cramers_v": 0.02, "p": 0.8, "n": 40})
    assert verdict(ok) == ("Yes, as far as these probes can tell: with the lungs blanked no cell scores above chance; Grad-CAM mass "
                           "is not outside the lungs; the source is predictable but not associated with the label.")
    assert shortcut_caveats(ok) == []
    bad = ShortcutFindings(ab.assign(uses_shortcut=True, lungs_blanked_accuracy=0.9, lungs_blanked_accuracy_low=0.8,
                                     lungs_blanked_accuracy_high=0.95),
                           sal, src.assign(degrave=True), {"cramers_v": 0.8, "p": 1e-9, "n": 40})
    assert verdict(bad).startswith("No: the models use shortcuts outside the lungs (1 of 1 cell(s) still score above chance")
    lines = shortcut_caveats(bad)
    assert lines[0] == ("Shortcut: cnn at n=50 still scores above chance with the lungs blanked (accuracy 0.900 [0.800, 0.950] "
                        "vs chance 0.500; AUC 0.500 [0.400, 0.600]): it reads something outside the lungs.")
    assert lines[1] == ("Source shortcut possible (DeGrave test): the site is predictable from the images (source AUC 0.900 "
                        "[0.800, 0.950], cnn at n=50) and associated with the label on the evaluation images (Cramér's V 0.80, "
                        "p < 0.0001).")


def test_a_source_probe_on_data_without_sites_stops_before_ray(tmp_path, monkeypatch):
    """Bad input: one line naming the dataset and what to do, before Ray or any training starts."""
    import ray

    from lungray.study import load_study
    from lungray.sweep.runner import run_study
    from lungray.sweep.testing import make_prepared

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))
    cfg = load_study("smoke", overrides=["probes.source=true", "data.phantom_sites=2", f"output_dir={tmp_path}",
                                         f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", "sizes=[10]", "seeds=[0]"])
    data = make_prepared(tmp_path / "data")  # no site column
    with pytest.raises(ConfigError) as e:
        run_study(cfg, data=data, echo=lambda s: None, report=False)
    msg = str(e.value)
    assert "\n" not in msg and str(data.root) in msg and "give the manifest a 'site' column" in msg


@pytest.mark.gpu
def test_lung_probes_on_cuda_agree_with_cpu(prepared_phantom, trained):
    """The probe pass on the trial's GPU (a sweep's trials run there) gives the CPU's answers."""
    from lungray.sweep.probes import lung_probes

    trial, res = trained
    cpu, tab_cpu = lung_probes(prepared_phantom, trial, res.best_checkpoint, cam_images=30, device="cpu")
    gpu, tab_gpu = lung_probes(prepared_phantom, trial, res.best_checkpoint, cam_images=30, device="cuda")
    for k in ("probe_intact_accuracy", "probe_lungs_blanked_accuracy", "probe_outside_blanked_accuracy", "probe_cam_grid"):
        assert gpu[k] == cpu[k], k
    assert np.allclose(tab_gpu["lungs_blanked_prob_1"], tab_cpu["lungs_blanked_prob_1"], atol=1e-4)
    assert np.allclose(tab_gpu["cam_lung_share"], tab_cpu["cam_lung_share"], atol=1e-3, equal_nan=True)
