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
