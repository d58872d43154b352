"""run_trial end to end on a tiny, easy phantom (CPU, 32 px, ~100 training images).

The fixture writes a PreparedData directory by hand (the data contract of
``lungray/data/prepared.py``: images.npy, labels.npy, manifest.parquet, meta.json) so these
tests exercise only the training loop: no Ray, no decoding. Subsets still come from
``PreparedData.subset`` (the nested, stratified subsets of ``lungray.data.splits``).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from lungray.config import ModelConfig, OptimizerConfig, ScheduleConfig, TrainConfig, TrialConfig
from lungray.data.prepared import PreparedData
from lungray.metrics import classification_report
from lungray.tracking import EPOCH_METRICS, per_class_key

RES = 32


def build_prepared(root, n: int, resolution: int, n_eval: int, n_val: int) -> PreparedData:
    from lungray.data.phantom import generate_phantom

    ph = generate_phantom(n, n_classes=2, resolution=resolution, difficulty=0.1, seed=0)
    np.save(root / "images.npy", ph.images)
    np.save(root / "labels.npy", ph.labels.astype(np.int64))
    pd.DataFrame({"image_id": ph.ids, "patient_id": ph.patient_ids, "label": ph.labels}).to_parquet(
        root / "manifest.parquet"
    )
    (root / "meta.json").write_text(json.dumps({"class_names": list(ph.class_names), "resolution": resolution}))
    perm = np.random.default_rng(0).permutation(len(ph.labels))
    return PreparedData(
        root=str(root),
        class_names=tuple(ph.class_names),
        eval_idx=np.sort(perm[:n_eval]),
        val_idx=np.sort(perm[n_eval : n_eval + n_val]),
        pool_idx=np.sort(perm[n_eval + n_val :]),
        fingerprint=f"tiny{resolution}",
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> PreparedData:
    """220 easy phantom images at 32 px: 60 held out, 40 validation, a pool of 120."""
    return build_prepared(tmp_path_factory.mktemp("prepared"), 220, RES, 60, 40)


def make_trial(**changes) -> TrialConfig:
    t = TrialConfig(
        study="test",
        model=ModelConfig(name="simple_cnn", width=8),
        train_size=96,
        optimizer=OptimizerConfig(name="adam", lr=3e-3),
        seed=0,
        schedule=ScheduleConfig(rule="fixed", batch_size=8, epochs=4),
        train=TrainConfig(augmentation="none", normalization="pool", device="cpu", eval_batch_size=64),
    )
    for section, fields in changes.items():
        t = replace(t, **{section: replace(getattr(t, section), **fields) if isinstance(fields, dict) else fields})
    return t


def assert_metrics_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k], k


def test_simple_cnn_learns_the_phantom_and_result_is_complete(tiny, tmp_path):
    reported = []
    trial = make_trial(schedule={"epochs": 8})
    res = run(trial, tiny, tmp_path, report=lambda m, c: reported.append((m, c)))

    # well above chance (0.5) on 60 held-out images after a few CPU epochs
    assert res.metrics["test_accuracy"] >= 0.75, res.metrics
    assert res.metrics["test_auc"] >= 0.8
    assert res.completed and res.epochs_run == 8 and len(res.history) == 8

    # per-epoch reports: every epoch, keys of the tracking schema, lr = the configured rate
    assert [m["epoch"] for m, _ in reported] == list(range(1, 9))
    for m, _ in reported:
        assert set(EPOCH_METRICS) <= set(m)
        assert m["lr"] == 3e-3
    assert [m for m, _ in reported] == res.history
    assert reported[-1][0]["train_accuracy"] > 0.75

    # predictions: one row per held-out image, in eval order, probabilities summing to one
    p = res.predictions
    assert list(p.columns) == ["image_id", "y_true", "prob_Normal", "prob_COVID", "row"]
    np.testing.assert_array_equal(p["row"].to_numpy(), tiny.eval_idx)
    np.testing.assert_array_equal(p["image_id"].to_numpy(), tiny.ids[tiny.eval_idx])
    np.testing.assert_array_equal(p["y_true"].to_numpy(), tiny.labels[tiny.eval_idx])
    np.testing.assert_allclose(p[["prob_Normal", "prob_COVID"]].sum(axis=1), 1.0, atol=1e-6)

    # the metrics ARE the report of those predictions (no second, diverging computation)
    flat, per_class, cm = classification_report(
        p["y_true"].to_numpy(), p[["prob_Normal", "prob_COVID"]].to_numpy(), tiny.class_names
    )
    assert_metrics_identical(res.metrics, {f"test_{k}": v for k, v in flat.items()})
    np.testing.assert_array_equal(res.confusion, cm)
    assert res.confusion.sum() == len(tiny.eval_idx)
    pd.testing.assert_frame_equal(res.per_class, per_class)
    assert per_class_key("recall", "COVID") in res.metrics
    assert "test_missed_as_normal__COVID" in res.metrics

    # best.pt in the tracking format, loadable with weights_only=True, = the selected epoch
    best = torch.load(res.best_checkpoint, weights_only=True)
    assert set(best) == {"model", "class_names", "trial", "norm", "epoch"}
    assert best["class_names"] == ["Normal", "COVID"]
    assert best["epoch"] == res.best_epoch == int(np.argmin([h["val_loss"] for h in res.history])) + 1
    assert TrialConfig.from_dict(best["trial"]) == trial
    assert best["norm"] == pytest.approx(list(tiny.pool_mean_std()))
    assert res.resolved["batch_size"] == 8 and res.resolved["epochs"] == 8
    assert set(res.timings) == {"setup_seconds", "train_seconds", "eval_seconds"}
    mm = res.mlflow_metrics()
    assert mm["best_epoch"] == res.best_epoch and mm["epochs_run"] == 8 and "test_accuracy" in mm


def run(trial, data, workdir, **kw):
    from lungray.train import run_trial

    return run_trial(trial, data, workdir=workdir, **kw)


def test_stop_and_resume_equals_uninterrupted_run_exactly(tiny, tmp_path):
    """Augmentation, dropout, a step schedule and weighted sampling all draw randomness."""
    trial = make_trial(
        schedule={"epochs": 4, "eval_every": 1, "checkpoint_every": 3},
        optimizer={"scheduler": "step", "step_size": 2, "gamma": 0.5},
        train={"augmentation": "rot_hflip", "imbalance": "weighted_sampler"},
    )
    full = run(trial, tiny, tmp_path / "full")
    again = run(trial, tiny, tmp_path / "again")

    part_reports = []
    part = run(trial, tiny, tmp_path / "a", stop_after_epoch=2, report=lambda m, c: part_reports.append(c))
    assert not part.completed and part.epochs_run == 2 and part.metrics == {}
    # a checkpoint at the stop even though checkpoint_every=3
    assert part_reports == [None, part.checkpoint_dir]
    resumed = run(trial, tiny, tmp_path / "b", resume_from=part.checkpoint_dir)

    for other in (again, resumed):  # determinism, and exact resume
        assert_metrics_identical(other.metrics, full.metrics)
        pd.testing.assert_frame_equal(other.predictions, full.predictions, check_exact=True)
        assert other.history == full.history
        assert other.best_epoch == full.best_epoch
        np.testing.assert_array_equal(other.confusion, full.confusion)
    assert [h["lr"] for h in full.history] == [3e-3, 3e-3, 1.5e-3, 1.5e-3]
    # the resumed best.pt holds the very same weights
    a = torch.load(full.best_checkpoint, weights_only=True)["model"]
    b = torch.load(resumed.best_checkpoint, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoints_follow_checkpoint_every_and_the_time_floor(tiny, tmp_path):
    """Every epoch with no floor; with an unreachable floor only the final epoch's checkpoint."""
    every = make_trial(schedule={"epochs": 3, "checkpoint_every": 1, "checkpoint_min_seconds": 0})
    reports = []
    res = run(every, tiny, tmp_path / "every", report=lambda m, c: reports.append(c))
    assert all(c is not None for c in reports) and len(reports) == 3
    assert [p.name for p in (tmp_path / "every" / "checkpoints").iterdir()] == ["epoch_0003"]

    floor = make_trial(schedule={"epochs": 3, "checkpoint_every": 1, "checkpoint_min_seconds": 1e9})
    reports = []
    res_floor = run(floor, tiny, tmp_path / "floor", report=lambda m, c: reports.append(c))
    assert reports[:2] == [None, None] and reports[2] is not None
    # the floor changes when state is written, never what is trained
    assert res_floor.history == res.history
    assert_metrics_identical(res_floor.metrics, res.metrics)

    # a pause still writes the state it needs to resume, floor or not
    reports = []
    part = run(floor, tiny, tmp_path / "part", stop_after_epoch=2, report=lambda m, c: reports.append(c))
    assert reports == [None, part.checkpoint_dir] and part.checkpoint_dir is not None
    resumed = run(floor, tiny, tmp_path / "resumed", resume_from=part.checkpoint_dir)
    assert resumed.history == res.history


def test_persistent_loader_workers_give_the_same_trial_as_in_process_loading(tiny, tmp_path):
    """One DataLoader per trial: the epoch reaches worker processes with each index."""
    base = {"schedule": {"epochs": 3}, "train": {"augmentation": "rot_hflip"}}
    in_proc = run(make_trial(**base), tiny, tmp_path / "w0")
    workers = run(make_trial(schedule={"epochs": 3}, train={"augmentation": "rot_hflip", "num_workers": 2}), tiny, tmp_path / "w2")
    assert workers.history == in_proc.history  # same augmentation draws in every epoch
    pd.testing.assert_frame_equal(workers.predictions, in_proc.predictions, check_exact=True)


def test_epoch_tagged_sampler_carries_the_epoch_to_the_dataset(tiny):
    from lungray.data.dataset import ImageDataset
    from lungray.train.loop import EpochSampler, EpochTagged

    sampler = EpochSampler(5, seed=3)
    tagged = EpochTagged(sampler)
    sampler.set_epoch(4)
    pairs = list(tagged)
    assert pairs == [(4, i) for i in sampler.indices()] and len(tagged) == 5
    ds = ImageDataset(tiny, tiny.pool_idx[:5], augmentation="rot_hflip", seed=3)
    ds.set_epoch(4)
    x_set, y_set, r_set = ds[pairs[0][1]]
    ds.set_epoch(0)  # a worker's stale copy: the pair still selects epoch 4's draw
    x_pair, y_pair, r_pair = ds[pairs[0]]
    assert torch.equal(x_set, x_pair) and (y_set, r_set) == (y_pair, r_pair)
    assert not torch.equal(ds[pairs[0][1]][0], x_pair)  # epoch 0's draw differs


def test_resume_refuses_a_checkpoint_of_another_trial(tiny, tmp_path):
    from lungray.errors import LungrayError

    part = run(make_trial(), tiny, tmp_path / "a", stop_after_epoch=1)
    with pytest.raises(LungrayError, match="different config"):
        run(make_trial(seed=1), tiny, tmp_path / "b", resume_from=part.checkpoint_dir)


def test_early_stopping_selects_and_evaluates_the_best_epoch(tiny, tmp_path):
    trial = make_trial(
        optimizer={"lr": 2e-2},
        schedule={"epochs": 15, "early_stopping_patience": 1, "monitor": "val_loss", "checkpoint_every": 2},
    )
    reports = []
    res = run(trial, tiny, tmp_path, report=lambda m, c: reports.append(c))
    losses = [h["val_loss"] for h in res.history]
    # stopped at the first evaluation that did not improve on the best so far
    first_bad = next(i for i in range(1, len(losses)) if losses[i] >= min(losses[:i]))
    assert res.stopped_early and res.epochs_run == first_bad + 1 < 15
    assert res.best_epoch == int(np.argmin(losses)) + 1 == first_bad  # patience 1: best is the one before
    # a checkpoint on the stopping epoch; only the newest checkpoint directory is kept
    assert reports[-1] is not None
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [f"epoch_{res.epochs_run:04d}"]

    # the held-out predictions come from the best epoch's weights, not the last epoch's
    from lungray.data.augment import normalization_stats
    from lungray.data.dataset import ImageDataset
    from lungray.models import create_model
    from lungray.train.evaluate import predict

    best = torch.load(res.best_checkpoint, weights_only=True)
    model = create_model(trial.model, 2, in_chans=1, resolution=RES)
    model.load_state_dict(best["model"])
    mean, std = normalization_stats("pool", tiny)
    probs, _, _ = predict(
        model, ImageDataset(tiny, tiny.eval_idx, mean=mean, std=std), batch_size=64, device=torch.device("cpu")
    )
    np.testing.assert_array_equal(probs, res.predictions[["prob_Normal", "prob_COVID"]].to_numpy())


def test_class_imbalance_options_reach_the_loss_and_the_sampler(tiny, tmp_path, monkeypatch):
    import lungray.train.loop as loop

    seen = {}
    real_ce = torch.nn.CrossEntropyLoss

    def spy_ce(*args, **kwargs):
        seen["weight"] = kwargs.get("weight")
        seen["label_smoothing"] = kwargs.get("label_smoothing")
        return real_ce(*args, **kwargs)

    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", spy_ce)
    trial = make_trial(schedule={"epochs": 1}, train={"imbalance": "weighted_loss", "label_smoothing": 0.1})
    run(trial, tiny, tmp_path / "w")
    y = tiny.labels[tiny.subset(96, 0)]
    np.testing.assert_allclose(seen["weight"].numpy(), loop.class_weights(y, 2), rtol=1e-6)
    assert seen["label_smoothing"] == 0.1

    real_sampler = loop.EpochSampler
    made = {}

    def spy_sampler(*args, **kwargs):
        made["weights"] = kwargs.get("weights")
        return real_sampler(*args, **kwargs)

    monkeypatch.setattr(loop, "EpochSampler", spy_sampler)
    run(make_trial(schedule={"epochs": 1}, train={"imbalance": "weighted_sampler"}), tiny, tmp_path / "s")
    np.testing.assert_allclose(made["weights"], loop.sample_weights(y, 2))
    run(make_trial(schedule={"epochs": 1}), tiny, tmp_path / "n")
    assert made["weights"] is None and seen["weight"] is None


def test_steps_schedule_and_eval_every(tiny, tmp_path):
    # 40 images, batch 16 -> 3 steps/epoch; 7 steps -> ceil(7/3) = 3 epochs; evaluated at 2 and 3 (last)
    trial = make_trial(train_size=40, schedule={"rule": "steps", "batch_size": 16, "max_steps": 7, "eval_every": 2})
    res = run(trial, tiny, tmp_path)
    assert (res.resolved["batch_size"], res.resolved["epochs"], res.resolved["steps_per_epoch"]) == (16, 3, 3)
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    assert ["val_loss" in h for h in res.history] == [False, True, True]
    assert res.best_epoch in (2, 3)


def test_logreg_is_fitted_full_batch(tiny, tmp_path):
    trial = make_trial(model=ModelConfig(name="logreg"), schedule={"epochs": 50})
    res = run(trial, tiny, tmp_path)
    # one closed-form fit instead of 50 SGD epochs
    assert res.epochs_run == 1 and res.resolved["epochs"] == 1 and len(res.history) == 1
    assert math.isnan(res.history[0]["lr"])
    assert res.metrics["test_accuracy"] > 0.6
    assert torch.load(res.best_checkpoint, weights_only=True)["epoch"] == 1


def test_ae_encoder_pretrains_once_and_is_reused(tmp_path_factory, tmp_path, monkeypatch):
    """The code (res/4) must survive DenseNet-121's /32 downsampling: 128 px is the smallest."""
    import lungray.models.autoencoder as models  # where prepare_ae_encoder looks the pretraining up

    tiny = build_prepared(tmp_path_factory.mktemp("prepared128"), 48, 128, 8, 8)

    calls = []
    real = models.ensure_autoencoder

    def spy(data, seed, **kw):
        path = real(data, seed, **kw)
        calls.append((seed, kw["epochs"], kw["mean"], path, path.stat().st_mtime_ns))
        return path

    monkeypatch.setattr(models, "ensure_autoencoder", spy)
    trial = make_trial(
        model=ModelConfig(name="ae_encoder", head="linear"),
        train_size=8,
        schedule={"epochs": 1},
        train={"ae_epochs": 1, "ae_pretrain_images": 16},
    )
    first = run(trial, tiny, tmp_path / "a")
    second = run(replace(trial, optimizer=replace(trial.optimizer, lr=1e-4)), tiny, tmp_path / "b")
    assert first.completed and second.completed
    (s1, e1, m1, p1, t1), (s2, e2, m2, p2, t2) = calls
    assert (s1, e1) == (0, 1) and m1 == pytest.approx(tiny.pool_mean_std()[0])
    assert p1 == p2 and t1 == t2  # the cached file was reused, not retrained
    assert str(p1).startswith(tiny.root)


def test_runs_on_prepare_data_output(prepared_phantom, tmp_path):
    """The real data layer's PreparedData (patient groups, leakage drops) feeds the loop."""
    data = prepared_phantom
    res = run(make_trial(train_size=40, schedule={"epochs": 1}), data, tmp_path)
    assert res.resolved["n_train"] == 40
    np.testing.assert_array_equal(res.predictions["image_id"].to_numpy(), np.asarray(data.ids)[data.eval_idx])
    assert res.confusion.sum() == len(data.eval_idx)
    assert 0.0 <= res.metrics["test_accuracy"] <= 1.0


@pytest.mark.gpu
def test_cuda_trial_uses_amp_and_channels_last(tiny, tmp_path):
    res = run(make_trial(schedule={"epochs": 2}, train={"device": "auto", "amp": "auto"}), tiny, tmp_path)
    assert res.resolved["device"].startswith("cuda")
    assert res.resolved["amp"] in ("bfloat16", "float16")
    assert all(math.isfinite(h["train_loss"]) for h in res.history)
    assert 0.0 <= res.metrics["test_accuracy"] <= 1.0
