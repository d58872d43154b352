"""The protocol elements issue 12 added, each with exact expected values.

Name suggestions across timm and torchvision, Keras inverse-time decay per iteration, rotation
with nearest fill, centre crop, per-channel and fixed normalisation, the variants axis, the
``all`` training size, one decoded cache per preprocessing, the autoencoder's one-class
pretraining set, and pretrained weights looked up offline.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lungray.config import ModelConfig, OptimizerConfig, TrialConfig, is_pool_size
from lungray.study import load_study
from lungray.errors import ConfigError

# --------------------------------------------------------------------------- name suggestions


def test_alexnet_suggests_the_torchvision_name_first():
    from lungray.models import check_model_name

    with pytest.raises(ConfigError) as e:
        check_model_name("alexnet")
    assert "close matches: tv:alexnet," in str(e.value)  # the same network in the other namespace first
    with pytest.raises(ConfigError, match=r"unknown torchvision model 'tv:resnet5'; close matches: tv:resnet50, resnet50"):
        check_model_name("tv:resnet5")
    with pytest.raises(ConfigError, match=r"close matches: tv:vgg19_bn, vgg19_bn"):
        check_model_name("tv:vgg19bn")


def test_registry_suggests_a_close_name():
    from lungray.models import HEADS

    with pytest.raises(ConfigError, match=r"unknown head 'mlp_128'; valid choices: .*; did you mean 'mlp128'"):
        HEADS.get("mlp_128")


# --------------------------------------------------------------------------- inverse-time decay


def test_inverse_time_decay_is_per_iteration_like_keras():
    from lungray.train.optim import build_optimizer, build_scheduler

    net = torch.nn.Linear(2, 2)
    cfg = OptimizerConfig(name="adam", lr=1e-3, scheduler="inverse_time")
    opt = build_optimizer(net, cfg)
    sch = build_scheduler(opt, cfg, epochs=15, steps_per_epoch=7)
    lrs = []
    for _ in range(30):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    decay = 1e-3 / 15  # INIT_LR / EPOCHS
    assert lrs == pytest.approx([1e-3 / (1 + decay * t) for t in range(30)], rel=1e-12)
    explicit = OptimizerConfig(name="adam", lr=0.01, scheduler="inverse_time", decay=0.5)
    opt = build_optimizer(net, explicit)
    sch = build_scheduler(opt, explicit, epochs=3, steps_per_epoch=2)
    for _ in range(4):
        opt.step()
        sch.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 / 3)


def test_epoch_schedules_count_epochs_when_stepped_per_iteration():
    from lungray.train.optim import build_optimizer, build_scheduler

    cfg = OptimizerConfig(name="sgd", lr=0.1, scheduler="step", step_size=2, gamma=0.1)
    opt = build_optimizer(torch.nn.Linear(2, 2), cfg)
    sch = build_scheduler(opt, cfg, epochs=6, steps_per_epoch=3)
    lrs = []
    for _ in range(18):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    assert lrs == pytest.approx([0.1] * 6 + [0.01] * 6 + [0.001] * 6)


def test_the_loop_decays_the_rate_every_step(prepared_phantom, tmp_path):
    from lungray.train import run_trial

    trial = TrialConfig(
        study="t", model=ModelConfig(name="simple_cnn", width=4), train_size=40, seed=0,
        optimizer=OptimizerConfig(name="adam", lr=1e-2, scheduler="inverse_time"),
        schedule=load_study("smoke").schedule.__class__(rule="fixed", batch_size=16, epochs=3, checkpoint_min_seconds=0),
        train=load_study("smoke").train,
    )
    res = run_trial(trial, prepared_phantom, workdir=tmp_path)
    spe = res.resolved["steps_per_epoch"]
    assert spe == 3  # 40 images, batch 16
    assert [h["lr"] for h in res.history] == pytest.approx([1e-2 / (1 + (1e-2 / 3) * spe * e) for e in range(3)], rel=1e-9)


# --------------------------------------------------------------------------- augmentation and preprocessing


def test_rotation_only_with_nearest_fill():
    from lungray.data.augment import build_augmentation

    img = np.full((32, 32), 0.8, dtype=np.float32)
    img[:, :4] = 0.2  # a dark left band reaching the corners
    rot = build_augmentation("rot15_nearest", 32)
    black = build_augmentation("rot_hflip", 32)
    outs = []
    for seed in range(8):
        rot.set_random_seed(seed)
        black.set_random_seed(seed)
        a = rot(image=img)["image"]
        b = black(image=img)["image"]
        assert a.min() >= 0.2 - 1e-6  # nearest fill: no black corners, only values of the image
        outs.append(a)
        if abs(b.mean() - img.mean()) > 1e-3:
            assert b.min() < 0.2  # rot_hflip fills with black
    assert any(not np.allclose(o, img) for o in outs)  # it does rotate
    assert not any(np.allclose(o, img[:, ::-1]) for o in outs)  # and never flips


def test_center_crop_drops_the_outer_sixteenth_and_composes():
    from lungray.data.preprocess import apply_preprocessing, check_preprocessing

    img = np.zeros((64, 64), dtype=np.float32)
    img[:4, :] = img[-4:, :] = img[:, :4] = img[:, -4:] = 1.0  # a 4 px frame = (1 - 224/256) / 2 of 64
    img[28:36, 28:36] = 0.5
    out = apply_preprocessing("center_crop", img, 64)
    assert out.shape == (64, 64) and out.max() < 1.0  # the frame is gone
    assert out[32, 32] == pytest.approx(0.5)  # the centre stays, scaled up by 64/56
    both = apply_preprocessing("center_crop+clahe", img, 64)
    np.testing.assert_array_equal(both, apply_preprocessing("clahe", out, 64))
    with pytest.raises(ConfigError, match=r"variants\[0\].preprocess: unknown preprocessing 'clahee'.*did you mean 'clahe'"):
        check_preprocessing("center_crop+clahee", "variants[0].preprocess")


# --------------------------------------------------------------------------- normalisation


def test_per_channel_and_fixed_normalisation(prepared_phantom):
    from lungray.data.augment import IMAGENET_MEAN, IMAGENET_STD, normalization_stats
    from lungray.data.dataset import ImageDataset
    from lungray.report.gradcam import normalise_images

    mean, std = normalization_stats("imagenet", None, 3)
    assert (mean, std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert normalization_stats("fixed", None, 1, fixed=((0.5,), (0.25,))) == (0.5, 0.25)
    assert normalization_stats("fixed", None, 3, fixed=((0.5,), (0.25,))) == ((0.5,) * 3, (0.25,) * 3)
    m1, s1 = normalization_stats("fixed", None, 1, fixed=((0.4, 0.5, 0.6), (0.2, 0.2, 0.2)))
    assert m1 == pytest.approx(0.299 * 0.4 + 0.587 * 0.5 + 0.114 * 0.6) and s1 == pytest.approx(0.2)
    with pytest.raises(ConfigError, match="normalization 'fixed' needs norm_mean and norm_std"):
        normalization_stats("fixed", None, 1, fixed=(None, None))

    data = prepared_phantom
    row = int(data.eval_idx[0])
    ds = ImageDataset(data, [row], mean=mean, std=std)
    x, _, _ = ds[0]
    gray = np.asarray(data.images[row], dtype=np.float32) / data.max_value
    assert x.shape == (3, data.resolution, data.resolution)
    for c in range(3):
        np.testing.assert_allclose(x[c].numpy(), (gray - IMAGENET_MEAN[c]) / IMAGENET_STD[c], rtol=1e-5, atol=1e-5)
    # the report rebuilds the same input from the checkpoint's per-channel norm
    rep = normalise_images(np.asarray(data.images[[row]]), data.max_value, (list(mean), list(std)))
    np.testing.assert_allclose(rep[0].numpy(), x.numpy(), atol=1e-6)
    assert ImageDataset(data, [row], mean=0.5, std=0.25)[0][0].shape == (1, data.resolution, data.resolution)


# --------------------------------------------------------------------------- variants and 'all'


def test_variants_are_an_axis_of_the_grid():
    from lungray.sweep import grid as G
    from lungray.sweep.mlflow_run.runs import trial_params, trial_tags

    cfg = load_study("transfer_smoke")
    trials = cfg.trials()
    assert len(trials) == len(cfg.models) * 3 * len(cfg.sizes) * len(cfg.optimizers) * len(cfg.seeds) == G.n_trials(cfg)
    t = [t for t in trials if t.arm == "tv:resnet18[backbone]@radiograph"][0]
    assert t.train.normalization == "fixed" and t.train.norm_mean == (0.5,) and t.variant.preprocess is None
    assert t.cell == "tv:resnet18[backbone]@radiograph|n=all|adam+inverse_time"
    clahe = [t for t in trials if t.arm == "logreg@clahe"][0]
    assert clahe.variant.preprocess == "clahe" and clahe.train.normalization == "imagenet"
    resolved = cfg.with_pool_size(150)
    axes = G.param_space_axes(resolved)
    assert axes["model"][:3] == ["tv:resnet18[backbone]@imagenet", "tv:resnet18[backbone]@radiograph", "tv:resnet18[backbone]@clahe"]
    assert axes["train_size"] == [150]
    t = resolved.trials()[1]
    assert t.train_size == 150 and trial_tags(t, "x", "p")["lungray.variant"] == "radiograph"
    params = trial_params(t)
    assert params["model"] == t.arm and params["variant"] == "radiograph" and params["train.norm_mean"] == [0.5]
    assert len({G.trial_uid(t) for t in resolved.trials()}) == len(trials)
    # a study without variants keeps its keys: no '@'
    assert all("@" not in t.arm for t in load_study("smoke").trials())


def test_variant_and_size_validation():
    with pytest.raises(ConfigError, match=r"variants\[1\]: two variants are both called 'clahe'"):
        load_study("transfer_smoke", overrides=["variants=[{preprocess: clahe}, {label: clahe}]"])
    with pytest.raises(ConfigError, match=r"variants\[0\]: normalization 'fixed' needs norm_mean and norm_std"):
        load_study("transfer_smoke", overrides=["variants=[{label: r, normalization: fixed}]"])
    with pytest.raises(ConfigError, match="sizes must be positive counts or 'all'"):
        load_study("smoke", overrides=["sizes=[40, most]"])
    cfg = load_study("smoke", overrides=["sizes=[40, -1]"])
    assert is_pool_size(cfg.sizes[1]) and cfg.pool_sizes and cfg.with_pool_size(40).sizes == (40,)
    with pytest.raises(ConfigError, match="simple_cnn with valid padding cannot run at data.resolution 32"):
        load_study("smoke", overrides=["models=[{name: simple_cnn, padding: valid}]"])
    with pytest.raises(ConfigError, match="only simple_cnn takes padding 'valid'"):
        load_study("smoke", overrides=["models=[{name: resnet18, padding: valid}]"])
    with pytest.raises(ConfigError, match="tv_classifier keeps a torchvision classifier; it needs tv:alexnet or tv:vgg"):
        load_study("smoke", overrides=["models=[{name: resnet18, head: tv_classifier}]"])


# --------------------------------------------------------------------------- one cache per preprocessing


def test_each_preprocessing_gets_its_own_cache_with_the_same_rows_and_splits(tmp_path):
    from lungray.config import DataConfig
    from lungray.data import prepare_data

    cfg = DataConfig(source="phantom", phantom_n=120, resolution=32, eval_size=40, val_size=10)
    data = prepare_data(cfg, output_dir=tmp_path, progress=False, preprocess_variants=["clahe", "none"])
    assert set(data.variant_roots) == {"none", "clahe"}
    cl = data.for_preprocess("clahe")
    assert cl.root != data.root and data.for_preprocess("none") is data and data.for_preprocess(None) is data
    np.testing.assert_array_equal(cl.ids, data.ids)
    np.testing.assert_array_equal(cl.eval_idx, data.eval_idx)
    np.testing.assert_array_equal(cl.subset(30, 1), data.subset(30, 1))
    from lungray.data.preprocess import apply_preprocessing

    raw = np.asarray(data.images[3], dtype=np.float32) / 255
    np.testing.assert_allclose(np.asarray(cl.images[3], dtype=np.float32) / 255, apply_preprocessing("clahe", raw, 32), atol=1 / 255 + 1e-6)
    assert not np.array_equal(np.asarray(cl.images[3]), np.asarray(data.images[3]))
    assert data.info["preprocess_roots"]["clahe"] == cl.root
    with pytest.raises(ConfigError, match="preprocessing 'hist_eq' was not prepared"):
        data.for_preprocess("hist_eq")


# --------------------------------------------------------------------------- autoencoder on one class


def test_autoencoder_pretrains_on_the_pool_images_of_one_class(prepared_phantom):
    from lungray.models.autoencoder import pretrain_rows

    data = prepared_phantom
    covid = data.class_names.index("COVID")
    rows = pretrain_rows(data, 0, pretrain_class="COVID")
    pool = np.asarray(data.pool_idx)
    np.testing.assert_array_equal(rows, np.sort(pool[data.labels[pool] == covid]))
    few = pretrain_rows(data, 0, max_images=5, pretrain_class="COVID")
    assert len(few) == 5 and set(few) <= set(rows) and np.array_equal(few, pretrain_rows(data, 0, 5, "COVID"))
    with pytest.raises(ConfigError, match="train.ae_pretrain_class 'Pneumonia' is not a class of the data; classes: Normal, COVID"):
        pretrain_rows(data, 0, pretrain_class="Pneumonia")


def test_autoencoder_on_three_channels_trains_and_is_cached_per_class(prepared_phantom, tmp_path):
    from lungray.models.autoencoder import ensure_autoencoder

    data = replace(prepared_phantom, root=str(tmp_path))  # write the AE next to a private copy of the root
    import shutil

    for f in Path(prepared_phantom.root).iterdir():
        if f.is_file():
            shutil.copy(f, tmp_path / f.name)
    p = ensure_autoencoder(data, 0, epochs=1, in_chans=3, pretrain_class="COVID", max_images=8, mean=[0.4] * 3, std=[0.2] * 3)
    ck = torch.load(p, weights_only=True)
    assert ck["in_chans"] == 3 and ck["n_images"] == 8 and ck["pretrain_class"] == "COVID"
    assert ck["model"]["encoder.conv1.weight"].shape == (16, 3, 3, 3)
    assert "-c3-k" in p.name


# --------------------------------------------------------------------------- weights offline


def test_weights_status_reads_the_caches_the_loaders_use(tmp_path, monkeypatch):
    from lungray.models import weights as W

    hf, hub = tmp_path / "hf", tmp_path / "torch"
    cfg = ModelConfig(name="resnet50", pretrained=True)
    st = W.weights_status(cfg, hf_cache=hf, torch_hub_dir=hub)
    assert not st.cached and st.source == "hf-hub timm/resnet50.a1_in1k" and "NOT cached" in st.line()
    snap = hf / "models--timm--resnet50.a1_in1k" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "model.safetensors").write_bytes(b"x")
    (hf / "models--timm--resnet50.a1_in1k" / "refs").mkdir()
    (hf / "models--timm--resnet50.a1_in1k" / "refs" / "main").write_text("abc123")
    st = W.weights_status(cfg, hf_cache=hf, torch_hub_dir=hub)
    assert st.cached and st.location == str(snap / "model.safetensors")

    alex = ModelConfig(name="tv:alexnet", pretrained=True)
    st = W.weights_status(alex, hf_cache=hf, torch_hub_dir=hub)
    assert not st.cached and st.location == str(hub / "checkpoints" / "alexnet-owt-7be5be79.pth")
    (hub / "checkpoints").mkdir(parents=True)
    (hub / "checkpoints" / "alexnet-owt-7be5be79.pth").write_bytes(b"x")
    assert W.weights_status(alex, hf_cache=hf, torch_hub_dir=hub).cached
    assert W.weights_status(ModelConfig(name="ae_encoder", pretrained=True), hf_cache=hf).source == "hf-hub timm/densenet121.ra_in1k"
    assert W.weights_status(ModelConfig(name="resnet50"), hf_cache=hf) is None

    # a real run fetches once in the driver; offline that is one line, before any trial
    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co'\nmore lines")

    monkeypatch.setattr(W, "weights_status", lambda c, **k: W.WeightsStatus(c.key, "hf-hub timm/resnet50.a1_in1k", str(hf), False))
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(ConfigError) as e:
        W.fetch_weights(cfg)
    msg = str(e.value)
    assert "\n" not in msg and "could not be downloaded (OSError: We couldn't connect" in msg and "local weights file" in msg


def test_dry_run_with_data_checks_sizes_and_exits_with_the_problem(tmp_path, capsys):
    import cv2

    from lungray.sweep.cli import main

    root = tmp_path / "COVID-19_Radiography_Dataset"
    rng = np.random.default_rng(0)  # distinct images: equal bytes under two labels are a label conflict
    for c in ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"):
        d = root / c / "images"
        d.mkdir(parents=True)
        for i in range(10):
            cv2.imwrite(str(d / f"{c}-{i}.png"), rng.integers(0, 256, (16, 16), dtype=np.uint8))
    tiny = ["--set", "data.min_eval_per_class=1", "--set", "data.min_val_per_class=1"]  # 10 images a class: a few-file fixture
    rc = main(["--preset", "transfer", "--data", str(root), "--dry-run", "--output", str(tmp_path / "out"), *tiny], prog="transfer_study.py")
    out, err = capsys.readouterr()
    assert rc == 2
    assert "-> 144 trials" in out and "cluster lacks:" in out  # the grid is printed first
    assert "data: training pool 32 images" in out and "data problem:" in out
    assert len(err.strip().splitlines()) == 1 and "500" in err and err.startswith("transfer_study.py: error:")
    rc = main(["--preset", "transfer", "--data", str(root), "--dry-run", "--set", "sizes=[8, all]", "--output", str(tmp_path / "out"), *tiny],
              prog="transfer_study.py")
    out = capsys.readouterr().out
    assert rc == 0 and "data: training size 'all' = 32 images" in out and "-> 96 trials" in out
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- study 5 as published (issue 21.4)


def test_step_stream_cuts_keras_epochs_from_one_stream_of_passes():
    """schedule.steps_per_epoch: epochs of N batches walk through a shuffled pass and on into
    the next, as Keras' fit(generator, steps_per_epoch=N); each epoch replays alone (resume)."""
    from lungray.train.loop import EpochSampler, StepStream

    s = StepStream(10, batch_size=4, steps=2, seed=3)  # a pass is batches of 4, 4, 2
    epochs = {}
    for e in (1, 2, 3):
        s.set_epoch(e)
        epochs[e] = list(s)
    assert [[len(b) for b in epochs[e]] for e in (1, 2, 3)] == [[4, 4], [2, 4], [4, 2]]
    flat = [pi for e in (1, 2, 3) for b in epochs[e] for pi in b]
    passes = {p: [i for q, i in flat if q == p] for p in (0, 1)}
    ref = EpochSampler(10, 3)
    for p, idx in passes.items():  # pass p is EpochSampler's order of epoch p + 1, each image once
        ref.set_epoch(p + 1)
        assert idx == ref.indices() and sorted(idx) == list(range(10))
    s.set_epoch(2)
    assert list(s) == epochs[2] and len(s) == 2  # epoch 2 alone, after a resume, is the same


def test_published_schedule_counts_nine_steps_at_the_studys_size():
    from lungray.config import ScheduleConfig

    s = ScheduleConfig(rule="fixed", batch_size=32, epochs=100, steps_per_epoch="ceil(n/b)//b")
    # 70 % of 13,808 images = 9,665 -> 303 batches -> 303 // 32 = 9 (the study's logs: "9/9")
    assert s.epoch_steps(9665, 32) == 9 and s.epoch_steps(9184, 32) == 8 and s.epoch_steps(168, 32) == 1
    assert ScheduleConfig(steps_per_epoch=5).epoch_steps(10**6, 32) == 5 and ScheduleConfig().epoch_steps(100, 32) is None
    steps = ScheduleConfig(rule="steps", batch_size=16, max_steps=100, steps_per_epoch=7)
    assert steps.resolve(1000) == (16, 15)  # ceil(100 / 7) epochs of 7 steps
    from lungray.sweep.grid import grid_rows

    row = grid_rows(load_study("smoke", overrides=["schedule.steps_per_epoch=2"]))[0]  # --dry-run's budget
    assert (row["train_size"], row["batch"], row["epochs"], row["steps"]) == (40, 16, 3, 6)


def test_keras_caffe_normalisation_is_vgg19_preprocess_input():
    from lungray.data.augment import normalization_stats

    mean, std = normalization_stats("keras_caffe", None, 3)
    gray = np.array([0.0, 0.5, 1.0])
    for c, m_bgr in enumerate((103.939, 116.779, 123.68)):  # keras: x[..., ::-1] - mean, x in 0-255
        np.testing.assert_allclose((gray - mean[c]) / std[c], 255 * gray - m_bgr, rtol=1e-12)
    m1, s1 = normalization_stats("keras_caffe", None, 1)
    assert m1 * 255 == pytest.approx(0.299 * 123.68 + 0.587 * 116.779 + 0.114 * 103.939) and s1 == pytest.approx(1 / 255)


def test_input_size_reads_the_cache_like_keras_load_img(prepared_phantom):
    """models[i].input_size: the cached image (and mask) resized as PIL's NEAREST (Keras)."""
    from PIL import Image

    from lungray.data.dataset import ImageDataset

    d = prepared_phantom
    row = int(d.pool_idx[5])
    x, _, _ = ImageDataset(d, [row], size=20)[0]
    ref = np.asarray(Image.fromarray(np.asarray(d.images[row])).resize((20, 20), Image.NEAREST))
    assert x.shape == (1, 20, 20)
    np.testing.assert_array_equal(np.rint(x[0].numpy() * 255).astype(np.uint8), ref)
    _, y, _ = ImageDataset(d, [row], size=20, target="mask")[0]
    np.testing.assert_array_equal(y.numpy(), np.asarray(Image.fromarray(np.asarray(d.masks[row])).resize((20, 20), Image.NEAREST)))
    assert ImageDataset(d, [row], size=d.resolution)[0][0].shape == (1, d.resolution, d.resolution)
    # the report rebuilds the same input for Grad-CAM, and lays the maps back on the cached image
    from lungray.report.gradcam import normalise_images, resize_maps

    rep = normalise_images(np.asarray(d.images[[row]]), d.max_value, (0.0, 1.0), size=20)
    np.testing.assert_allclose(rep[0].numpy(), x.numpy(), atol=1e-6)
    assert resize_maps(np.ones((2, 20, 20)), d.resolution).shape == (2, d.resolution, d.resolution)


def test_published_recipe_config_errors():
    with pytest.raises(ConfigError, match=r"data.val_is_eval: .*set data.val_size: 0 \(got 20\)"):
        load_study("smoke", overrides=["data.val_is_eval=true", "data.val_size=20"])
    with pytest.raises(ConfigError, match=r"schedule.steps_per_epoch must be a count >= 1, null .* got 'n//b'"):
        load_study("smoke", overrides=["schedule.steps_per_epoch=n//b"])
    with pytest.raises(ConfigError, match=r"schedule.steps_per_epoch must be .* got 0"):
        load_study("smoke", overrides=["schedule.steps_per_epoch=0"])
    with pytest.raises(ConfigError, match=r"not sharded across DDP workers; set resources.workers: 1 \(got 2\)"):
        load_study("smoke", overrides=["schedule.steps_per_epoch=3", "resources.workers=2"])
    with pytest.raises(ConfigError, match=r"models\[0\].input_size must be >= 8"):
        load_study("smoke", overrides=["models=[{name: simple_cnn, input_size: 4}]"])
    with pytest.raises(ConfigError, match=r"unknown normalization 'caffe'"):
        load_study("smoke", overrides=["models=[{name: simple_cnn, normalization: caffe}]"])
    with pytest.raises(ConfigError, match=r"models\[0\].normalization 'keras_caffe' and the normalization of variant\(s\) imagenet"):
        load_study("transfer_smoke", overrides=["models=[{name: simple_cnn, normalization: keras_caffe}]"])
    with pytest.raises(ConfigError, match=r"simple_cnn with valid padding cannot run at data.resolution 24"):
        load_study("default", overrides=["models=[{name: simple_cnn, padding: valid, input_size: 24}]"])


def test_published_recipe_trains_on_a_stream_and_validates_on_the_test_set(tmp_path):
    """val_is_eval: the validation set IS the evaluation set, so the selected epoch's validation
    loss is the held-out loss; one-step "epochs" decay a per-step rate once per epoch."""
    from lungray.config import DataConfig, ScheduleConfig, TrainConfig
    from lungray.data import prepare_data
    from lungray.train import run_trial

    cfg = DataConfig(source="phantom", phantom_n=120, resolution=32, eval_size=36, val_size=0, val_is_eval=True, leakage="report")
    data = prepare_data(cfg, output_dir=tmp_path / "d", progress=False)
    np.testing.assert_array_equal(data.val_idx, data.eval_idx)
    assert data.info["val_is_eval"] is True and len(data.eval_idx) == 36
    trial = TrialConfig(
        study="published", model=ModelConfig(name="simple_cnn", width=4, input_size=24, normalization="keras_caffe"),
        train_size=60, seed=0, optimizer=OptimizerConfig(name="adam", lr=1e-3, scheduler="inverse_time", decay=0.5),
        schedule=ScheduleConfig(rule="fixed", batch_size=16, epochs=4, steps_per_epoch="ceil(n/b)//b", early_stopping_patience=10,
                                checkpoint_min_seconds=0),
        train=TrainConfig(augmentation="shift_shear_zoom", normalization="none"),
    )
    res = run_trial(trial, data, workdir=tmp_path / "w")
    r = res.resolved
    assert r["steps_per_epoch"] == 1 and r["epochs"] == 4 and r["input_size"] == 24  # ceil(60/16) // 16 = 0 -> 1 step
    assert r["norm_mean"] == pytest.approx(sum(w * m for w, m in zip((0.299, 0.587, 0.114), (123.68, 116.779, 103.939))) / 255)
    assert [h["lr"] for h in res.history] == pytest.approx([1e-3 / (1 + 0.5 * e) for e in range(4)], rel=1e-9)  # 1 step per epoch
    best = [h for h in res.history if h["epoch"] == res.best_epoch][0]
    assert best["val_loss"] == pytest.approx(res.metrics["test_log_loss"], rel=1e-6)  # validated on the test images
    assert best["val_accuracy"] == pytest.approx(res.metrics["test_accuracy"])
