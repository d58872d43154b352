"""Segmentation models: every registry entry at CPU sizes, the Keras twin's parameter count by hand,
smp U-Nets with timm encoders (local pretrained files, frozen encoders), and config errors."""

from __future__ import annotations

import pytest
from pathlib import Path
import torch

from lungray.config import ModelConfig
from lungray.errors import ConfigError
from lungray.models.segmentation import (
    SEG_MODELS,
    check_segmentation_model_config,
    create_segmentation_model,
    is_segmentation_model,
    parse_segmentation_name,
)


def keras_unet_weights(c: int, k: int, w: int = 32) -> tuple[int, int]:
    """(trainable weights, batch-norm moving statistics) of the Keras example, counted by hand.

    Conv kxk c->f: 9cf + f. SeparableConv c->f: depthwise 9c (no bias) + pointwise cf + f.
    ConvTranspose 3x3 c->f: 9cf + f. BatchNorm f: 2f trainable (gamma, beta) + 2f moving stats.
    """
    train = 9 * c * w + w + 2 * w  # entry conv + BN
    stats = 2 * w
    prev = w
    for f in (2 * w, 4 * w, 8 * w):  # down: 2 separable convs + 2 BN + 1x1 stride-2 residual
        train += (9 * prev + prev * f + f) + 2 * f + (9 * f + f * f + f) + 2 * f + (prev * f + f)
        stats += 4 * f
        prev = f
    for f in (8 * w, 4 * w, 2 * w, w):  # up: 2 transposed convs + 2 BN + 1x1 residual
        train += (9 * prev * f + f) + 2 * f + (9 * f * f + f) + 2 * f + (prev * f + f)
        stats += 4 * f
        prev = f
    train += 9 * w * k + k  # per-pixel classifier
    return train, stats


def _counts(model: torch.nn.Module) -> tuple[int, int]:
    params = sum(p.numel() for p in model.parameters())
    stats = sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))
    return params, stats


def test_hand_count_is_the_keras_example_summary():
    # keras.io oxford_pets_image_segmentation, 160 x 160 x 3, 3 classes: "Total params: 2,058,979,
    # Trainable params: 2,055,203, Non-trainable params: 3,776"
    assert keras_unet_weights(3, 3) == (2_055_203, 3_776)


@pytest.mark.parametrize("c,k,w", [(3, 3, 32), (1, 2, 32), (1, 1, 32), (1, 2, 8)])
def test_keras_twin_has_the_hand_counted_weights(c, k, w):
    model = create_segmentation_model(ModelConfig(name="unet_keras", width=None if w == 32 else w), k, in_chans=c, resolution=32)
    assert _counts(model) == keras_unet_weights(c, k, w)


def test_keras_twin_pads_strided_layers_like_tensorflow():
    from lungray.models.unet import SameConv2d, SameMaxPool2d

    x = torch.arange(36, dtype=torch.float32).reshape(1, 1, 6, 6)
    conv = SameConv2d(1, 1, 3, stride=2, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1.0  # picks the window's top-left input
    # TF "same" on an even side pads the extra row/column at the bottom/right only, so output
    # (i, j) sees inputs (2i..2i+2, 2j..2j+2): its top-left is x[2i, 2j]
    assert torch.equal(conv(x)[0, 0], x[0, 0, ::2, ::2])
    # max pool 3/2: output (i, j) = max of rows 2i..2i+2 (clipped), cols likewise
    pooled = SameMaxPool2d(3, stride=2)(x)[0, 0]
    expected = torch.tensor([[float(min(2 * i + 2, 5) * 6 + min(2 * j + 2, 5)) for j in range(3)] for i in range(3)])
    assert torch.equal(pooled, expected)


# every registry entry, at CPU sizes
MODELS = [
    ModelConfig(name="unet_keras", width=8),
    ModelConfig(name="unet_keras"),
    ModelConfig(name="unet:resnet18", width=4),
    ModelConfig(name="unet:tu-resnet18", width=4, input_mode="repeat3"),
]


def test_every_registry_entry_is_exercised():
    assert {parse_segmentation_name(m.name)[0] for m in MODELS} == set(SEG_MODELS.names())


@pytest.mark.parametrize("cfg", MODELS, ids=lambda c: f"{c.name}-w{c.width}-{c.input_mode}")
@pytest.mark.parametrize("res,k", [(32, 2), (64, 1)])
def test_forward_shape_no_nan_and_gradients_flow(cfg, res, k):
    torch.manual_seed(0)
    model = create_segmentation_model(cfg, k, in_chans=1, resolution=res)
    assert model.task == "segmentation" and model.num_classes == k and model.resolution == res
    x = torch.randn(2, 1, res, res)
    y = model(x)
    assert y.shape == (2, k, res, res) and torch.isfinite(y).all()
    y.square().mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    first = next(iter(grads.values()))
    assert first.abs().sum() > 0  # reaches the first layer
    model.eval()
    with torch.no_grad():
        assert model(x[:1]).shape == (1, k, res, res)


def test_repeat3_feeds_rgb_filters():
    model = create_segmentation_model(MODELS[3], 2, in_chans=1, resolution=32)
    assert model.net.encoder.model.conv1.in_channels == 3
    gray = create_segmentation_model(MODELS[2], 2, in_chans=1, resolution=32)
    assert gray.net.encoder.model.conv1.in_channels == 1


def test_smp_unet_weights_by_hand():
    """Encoder = timm's features_only ResNet-18; decoder blocks counted from smp's U-Net layout."""
    import timm

    w = 4
    model = create_segmentation_model(ModelConfig(name="unet:resnet18", width=w), 2, in_chans=1, resolution=32)
    enc = timm.create_model("resnet18", features_only=True, in_chans=1)
    assert sum(p.numel() for p in model.net.encoder.parameters()) == sum(p.numel() for p in enc.parameters())
    # decoder block i: conv3x3 (in + skip -> out, no bias) + BN + conv3x3 (out -> out) + BN
    dec = (16 * w, 8 * w, 4 * w, 2 * w, w)
    ins = (512,) + dec[:-1]
    skips = (256, 128, 64, 64, 0)  # ResNet-18 features at 1/16, 1/8, 1/4, 1/2; none at full size
    expected = sum(9 * (i + s) * o + 2 * o + 9 * o * o + 2 * o for i, s, o in zip(ins, skips, dec))
    assert sum(p.numel() for p in model.net.decoder.parameters()) == expected
    assert sum(p.numel() for p in model.net.segmentation_head.parameters()) == 9 * w * 2 + 2


# --------------------------------------------------------------------------------------------
# pretrained encoders: the classification rules (local files, strict)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    import timm

    torch.manual_seed(1)
    sd = timm.create_model("resnet18", num_classes=10).state_dict()  # a classifier checkpoint
    path = tmp_path_factory.mktemp("w") / "resnet18.pth"
    torch.save(sd, path)
    return path, sd


def test_local_weights_load_into_the_encoder(resnet18_file):
    path, sd = resnet18_file
    cfg = ModelConfig(name="unet:resnet18", pretrained=str(path), width=4)
    check_segmentation_model_config(cfg)
    model = create_segmentation_model(cfg, 2, in_chans=1, resolution=32)
    enc = model.net.encoder.model
    # grayscale: the RGB filters are summed (timm's rule), everything else is the file's
    assert torch.allclose(enc.conv1.weight, sd["conv1.weight"].sum(dim=1, keepdim=True))
    for k in ("layer1.0.conv1.weight", "layer4.1.bn2.running_var", "layer3.0.downsample.0.weight"):
        assert torch.equal(enc.get_parameter(k) if "running" not in k else enc.get_buffer(k), sd[k]), k
    rgb = create_segmentation_model(cfg, 2, in_chans=3, resolution=32)
    assert torch.equal(rgb.net.encoder.model.conv1.weight, sd["conv1.weight"])


def test_wrong_weights_file_is_a_config_error_naming_it(tmp_path):
    import timm

    path = tmp_path / "resnet34.pth"
    torch.save(timm.create_model("resnet34").state_dict(), path)
    with pytest.raises(ConfigError, match=r"resnet34\.pth does not fit the resnet18 backbone"):
        create_segmentation_model(ModelConfig(name="unet:resnet18", pretrained=str(path)), 2, resolution=32)


def test_freeze_backbone_freezes_the_encoder_and_its_batch_norms():
    model = create_segmentation_model(ModelConfig(name="unet:resnet18", width=4, freeze="backbone"), 2, resolution=32)
    assert model.freeze == "backbone"
    assert not any(p.requires_grad for p in model.net.encoder.parameters())
    assert all(p.requires_grad for p in model.net.decoder.parameters())
    model.train()
    assert not model.net.encoder.model.bn1.training and model.net.decoder.training
    before = model.net.encoder.model.bn1.running_mean.clone()
    model(torch.randn(2, 1, 32, 32))
    assert torch.equal(model.net.encoder.model.bn1.running_mean, before)


# --------------------------------------------------------------------------------------------
# names and config errors (no torch model built)
# --------------------------------------------------------------------------------------------


def test_names():
    assert parse_segmentation_name("unet:resnet34") == ("unet", "resnet34")
    assert parse_segmentation_name("unet:tu-resnet34") == ("unet", "resnet34")
    assert parse_segmentation_name("unet_keras") == ("unet_keras", None)
    assert is_segmentation_model("unet:resnet34") and not is_segmentation_model("resnet34")


@pytest.mark.parametrize(
    "cfg,res,message",
    [
        (ModelConfig(name="unte:resnet18"), None, r"unknown segmentation model 'unte:resnet18' \(did you mean unet"),
        (ModelConfig(name="unet"), None, r"needs an encoder: write unet:<timm name>"),
        (ModelConfig(name="unet_keras:resnet18"), None, "takes no encoder"),
        (ModelConfig(name="unet:resnet181"), None, r"'resnet181' is not a timm model; close timm names: .*resnet18"),
        (ModelConfig(name="unet_keras", pretrained=True), None, "trained from scratch"),
        (ModelConfig(name="unet_keras", freeze="backbone"), None, "valid choices: none$"),
        (ModelConfig(name="unet:resnet18", freeze="last:2"), None, "valid choices: none, backbone"),
        (ModelConfig(name="unet:resnet18", head="bn_mlp256"), None, "own per-pixel head"),
        (ModelConfig(name="unet:resnet18", stem="conv8_conv3"), None, "takes no stem"),
        (ModelConfig(name="unet:resnet18", pretrained="/nope/w.pth"), None, "does not exist"),
        (ModelConfig(name="unet:resnet18"), 48, "multiple of 32"),
        (ModelConfig(name="unet_keras"), 40, "multiple of 16"),
    ],
)
def test_config_errors(cfg, res, message):
    with pytest.raises(ConfigError, match=message):
        check_segmentation_model_config(cfg, resolution=res)


def test_registry_cheap_to_import():
    import subprocess
    import sys

    code = "import sys, lungray.models.segmentation; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_segmentation_map_names_resolve():
    """docs/segmentation.md (the map that replaced ``lungray.segmentation``): every module a heading
    names imports, and every function the section calls (``name(...)``) lives in one of them."""
    import importlib
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "segmentation.md").read_text()
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    checked = 0
    for sec in sections:
        head, body = sec.split("\n", 1)
        mods = [importlib.import_module(m) for m in re.findall(r"`(lungray(?:\.[a-z_]+)+)`", head)]
        if not mods:
            continue
        for name in set(re.findall(r"`(\w+)\(", body)):
            classes = [v for m in mods for v in vars(m).values() if isinstance(v, type)]  # a method: SegNet.forward
            assert any(hasattr(m, name) for m in mods + classes), f"{name} (section '{head}') is in none of {[m.__name__ for m in mods]}"
            checked += 1
    assert checked >= 5, checked  # the map names its calls (a re-worded page must keep this test meaningful)
