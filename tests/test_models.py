"""Model registry, name checks, forward passes of every own model and a few timm/torchvision ones."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from lungray.config import ModelConfig
from lungray.errors import ConfigError
from lungray.models import (
    FREEZE_POLICIES,
    HEADS,
    check_model_config,
    check_model_name,
    create_model,
    parse_freeze,
    trainable_parameter_names,
)


def test_import_does_not_pull_torch_or_timm():
    code = (
        "import sys, lungray.models as m; "
        "assert m.MODELS.names() == ['ae_encoder', 'logreg', 'simple_cnn'], m.MODELS.names(); "
        "bad = [k for k in ('torch', 'timm', 'torchvision', 'ray') if k in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registries_hold_the_documented_names():
    assert HEADS.names() == ["bn_mlp256", "bn_pool_mlp64", "gmp_mlp128", "linear", "mlp128", "pool_mlp64", "tv_classifier"]
    assert FREEZE_POLICIES.names() == ["backbone", "fc_only", "last", "none"]
    assert all(HEADS.get(h).task == "classification" for h in HEADS)


@pytest.mark.parametrize("name", ["simple_cnn", "logreg", "ae_encoder", "resnet50", "resnet50.a1_in1k", "vgg19_bn", "tv:alexnet"])
def test_check_model_name_accepts(name):
    assert check_model_name(name) == name


def test_unknown_timm_name_lists_own_models_and_close_matches():
    with pytest.raises(ConfigError) as e:
        check_model_name("resnet5O")
    msg = str(e.value)
    assert "unknown model 'resnet5O'" in msg
    assert "resnet50" in msg.split("close matches:")[1]
    assert "ae_encoder, logreg, simple_cnn" in msg
    assert "tv:<torchvision name>" in msg
    assert "\n" not in msg


def test_unknown_torchvision_name_suggests_tv_names():
    with pytest.raises(ConfigError, match=r"unknown torchvision model 'tv:alexnte'.*tv:alexnet"):
        check_model_name("tv:alexnte")


@pytest.mark.parametrize(
    "cfg, pattern",
    [
        (ModelConfig(name="logreg", head="bn_mlp256"), r"model.head: logreg only takes head linear"),
        (ModelConfig(name="ae_encoder", stem="conv8_conv3"), r"model.stem: ae_encoder cannot take stem"),
        (ModelConfig(name="simple_cnn", pretrained=True), r"simple_cnn has no published weights"),
        (ModelConfig(name="resnet18", pretrained="/nonexistent/w.pth"), r"weights path /nonexistent/w.pth does not exist"),
        (ModelConfig(name="resnet18", freeze="last"), r"model.freeze 'last': write last:N"),
        (ModelConfig(name="resnet18", freeze="last:0"), r"last:N with N a positive"),
        (ModelConfig(name="resnet18", freeze="partial"), r"unknown freeze policy 'partial'; valid choices: backbone, fc_only, last, none"),
        (ModelConfig(name="resnet18", head="mlp"), r"unknown head 'mlp'; valid choices: bn_mlp256, bn_pool_mlp64, gmp_mlp128, linear, mlp128, pool_mlp64, tv_classifier"),
        (ModelConfig(name="resnet18", stem="conv3"), r"model.stem: 'conv3' is not valid"),
        (ModelConfig(name="resnet18", input_mode="rgb"), r"model.input_mode: 'rgb' is not valid"),
    ],
)
def test_check_model_config_rejects(cfg, pattern):
    with pytest.raises(ConfigError, match=pattern):
        check_model_config(cfg)


def test_parse_freeze():
    assert parse_freeze("none") == ("none", None)
    assert parse_freeze("backbone") == ("backbone", None)
    assert parse_freeze("last:3") == ("last", 3)


# name, config overrides, resolution: every own registry entry, the three heads, the stem,
# both input modes, and one model per timm / torchvision family lungray maps.
FORWARD_CASES = [
    ("simple_cnn", dict(width=8), 32),
    ("simple_cnn", dict(width=4, head="bn_mlp256", input_mode="repeat3"), 32),
    ("logreg", dict(), 32),
    ("ae_encoder", dict(), 128),
    ("resnet18", dict(), 32),
    ("resnet18", dict(head="bn_mlp256", stem="conv8_conv3"), 32),
    ("resnet18", dict(head="pool_mlp64", input_mode="repeat3"), 64),
    ("efficientnet_b0", dict(), 32),
    ("convnext_atto", dict(head="bn_mlp256"), 32),
    ("vit_tiny_patch16_224", dict(), 32),
    ("tv:alexnet", dict(), 64),
    ("tv:squeezenet1_1", dict(head="pool_mlp64"), 64),
]


@pytest.mark.parametrize("name, kw, res", FORWARD_CASES, ids=[f"{n}-{'-'.join(map(str, k.values()))}" for n, k, _ in FORWARD_CASES])
@pytest.mark.parametrize("num_classes", [2, 4])
def test_forward_shape_and_every_trainable_weight_gets_a_gradient(name, kw, res, num_classes):
    torch.manual_seed(0)
    model = create_model(ModelConfig(name=name, **kw), num_classes, in_chans=1, resolution=res)
    x = torch.randn(2, 1, res, res)
    out = model(x)
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 1])).backward()
    # a trainable weight without a gradient would make DDP fail (unused parameters)
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    assert model.num_classes == num_classes and model.resolution == res


def test_logreg_binary_logits_are_zero_and_z():
    model = create_model(ModelConfig(name="logreg"), 2, resolution=16)
    out = model(torch.randn(3, 1, 16, 16))
    assert torch.equal(out[:, 0], torch.zeros(3))
    assert model.head.fc.out_features == 1  # scikit-learn's binary parameterisation
    assert create_model(ModelConfig(name="logreg"), 4, resolution=16).head.fc.out_features == 4
    assert create_model(ModelConfig(name="logreg", width=8), 2, resolution=16).feature_shape == (1, 8, 8)


def test_simple_cnn_follows_the_capstone_layout():
    model = create_model(ModelConfig(name="simple_cnn"), 2, resolution=64)
    blocks = model.backbone.body.blocks
    assert [b.conv1.out_channels for b in blocks] == [32, 64, 128]
    assert [type(m).__name__ for m in blocks[0]] == ["Conv2d", "ReLU", "Conv2d", "ReLU", "BatchNorm2d", "MaxPool2d"]
    assert model.backbone.body.blocks[0].conv1.in_channels == 1  # grayscale input
    assert model.backbone.body.dense.in_features == 128 * 8 * 8 and model.backbone.body.dense.out_features == 128
    narrow = create_model(ModelConfig(name="simple_cnn", width=8), 2, resolution=64)
    assert [b.conv2.out_channels for b in narrow.backbone.body.blocks] == [8, 16, 32]


def _keras_count(module: torch.nn.Module) -> int:
    """Weights as Keras counts them: parameters plus batch-norm moving mean and variance."""
    n = sum(p.numel() for p in module.parameters())
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n += m.running_mean.numel() + m.running_var.numel()
    return n


def test_head_and_stem_weight_counts_match_the_protocols():
    from lungray.models.factory import make_stem
    from lungray.models.heads import bn_mlp256_head, linear_head, pool_mlp64_head

    # section 1: BN(2048) 8,192 + Dense 256 524,544 + BN(256) 1,024 + Dense 2 514
    assert _keras_count(bn_mlp256_head((2048, 8, 8), 2)) == 534_274
    # section 1: Conv2D(8, 3x3) on 3 channels 224 + Conv2D(3, 3x3) 219
    assert _keras_count(make_stem("conv8_conv3", 3)) == 443
    # section 2 on VGG16's 7x7x512 map: AveragePooling2D(4x4) -> 1x1x512 -> Dense 64 -> Dense 2
    head = pool_mlp64_head((512, 7, 7), 2)
    assert _keras_count(head) == 512 * 64 + 64 + 64 * 2 + 2
    assert head(torch.randn(2, 512, 7, 7)).shape == (2, 2)
    assert _keras_count(linear_head((2048, 7, 7), 4)) == 2048 * 4 + 4


def test_input_modes():
    torch.manual_seed(0)
    one = create_model(ModelConfig(name="resnet18"), 2, resolution=32)
    assert one.backbone.body.conv1.in_channels == 1
    rep = create_model(ModelConfig(name="resnet18", input_mode="repeat3"), 2, resolution=32).eval()
    assert rep.backbone.body.conv1.in_channels == 3
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        expected = rep.head(rep.backbone(x.repeat(1, 3, 1, 1)))
        assert torch.allclose(rep(x), expected)
    # 3-channel input with repeat3: nothing to repeat
    rgb = create_model(ModelConfig(name="resnet18", input_mode="repeat3"), 2, in_chans=3, resolution=32)
    assert isinstance(rgb.adapter, torch.nn.Identity)
    # the stem maps any input to the 3 channels a pretrained trunk expects
    stem = create_model(ModelConfig(name="resnet18", stem="conv8_conv3"), 2, resolution=32)
    assert stem.stem.conv1.in_channels == 1 and stem.backbone.body.conv1.in_channels == 3


def test_vgg_trunk_has_no_fc_layers():
    model = create_model(ModelConfig(name="vgg11_bn"), 2, resolution=32)
    names = [n for n, _ in model.named_parameters()]
    assert not [n for n in names if "pre_logits" in n]
    assert model.feature_shape == (512, 1, 1)
    assert trainable_parameter_names(model) == names


@pytest.mark.parametrize(
    "name, res, kwargs, pattern",
    [
        ("vgg11_bn", 16, {}, r"model 'vgg11_bn' cannot run on 16 px inputs"),
        ("ae_encoder", 130, {}, r"ae_encoder' needs a resolution divisible by 4"),
        ("ae_encoder", 64, {}, r"model 'ae_encoder' cannot run on 64 px inputs"),
        ("tv:shufflenet_v2_x0_5", 64, {}, r"lungray builds torchvision trunks for models with .features"),
        ("resnet18", 32, {"num_classes": 1}, r"num_classes must be an integer >= 2"),
    ],
)
def test_impossible_models_fail_before_training(name, res, kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        create_model(ModelConfig(name=name), kwargs.get("num_classes", 2), resolution=res)
