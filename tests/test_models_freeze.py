"""Freeze policies leave exactly the intended parameters trainable, family by family.

The expected sets are written from the architectures by hand (PROTOCOLS.md section 4:
ResNet-50 layer3+layer4, VGG's last three convs, AlexNet's last conv), not computed with the
code under test. Models are built at 32-64 px; nothing here trains.
"""

from __future__ import annotations

import pytest
import torch

from lungray.config import ModelConfig
from lungray.errors import ConfigError
from lungray.models import backbone_stages, create_model, trainable_parameter_names


def _names(model):
    return [n for n, _ in model.named_parameters()]


def _with_prefixes(model, *prefixes):
    return {n for n in _names(model) if n.startswith(prefixes)}


@pytest.fixture(scope="module")
def resnet50():
    return lambda freeze, **kw: create_model(ModelConfig(name="resnet50", freeze=freeze, **kw), 4, resolution=32)


def test_resnet50_policies(resnet50):
    full = resnet50("none")
    assert set(trainable_parameter_names(full)) == set(_names(full))

    fe = resnet50("backbone")
    assert set(trainable_parameter_names(fe)) == {"head.fc.weight", "head.fc.bias"}

    ft = resnet50("last:2")  # the 4-class study: layer3 + layer4 + fc
    expected = _with_prefixes(ft, "backbone.body.layer3.", "backbone.body.layer4.", "head.")
    assert set(trainable_parameter_names(ft)) == expected
    assert not [n for n in expected if n.startswith(("backbone.body.conv1", "backbone.body.bn1", "backbone.body.layer2"))]

    stem = resnet50("backbone", stem="conv8_conv3", head="bn_mlp256")
    assert set(trainable_parameter_names(stem)) == _with_prefixes(stem, "stem.", "head.")
    assert {"stem.conv1.weight", "head.bn1.weight", "head.fc1.weight"} <= set(trainable_parameter_names(stem))


def test_resnet50_stages_are_layer1_to_layer4(resnet50):
    m = resnet50("none")
    stages = backbone_stages(m)
    assert len(stages) == 4
    for k, group in enumerate(stages, start=1):
        own = {n for n in group if n.startswith(f"backbone.body.layer{k}.")}
        assert own == _with_prefixes(m, f"backbone.body.layer{k}.")
    # the stem (conv1, bn1) rides with the first stage; the stages partition the trunk
    assert {"backbone.body.conv1.weight", "backbone.body.bn1.weight"} <= set(stages[0])
    flat = [n for g in stages for n in g]
    assert len(flat) == len(set(flat)) and set(flat) == _with_prefixes(m, "backbone.")


def test_last_n_larger_than_the_stage_count_is_a_config_error(resnet50):
    with pytest.raises(ConfigError, match=r"freeze 'last:5': its resnet backbone has 4 stage\(s\); use last:1..last:4"):
        resnet50("last:5")


def test_densenet121_stages_are_block_plus_transition():
    m1 = create_model(ModelConfig(name="densenet121", freeze="last:1"), 2, resolution=32)
    assert set(trainable_parameter_names(m1)) == _with_prefixes(
        m1, "backbone.body.features.denseblock4.", "backbone.body.features.norm5.", "head."
    )
    m2 = create_model(ModelConfig(name="densenet121", freeze="last:2"), 2, resolution=32)
    assert set(trainable_parameter_names(m2)) == _with_prefixes(
        m2,
        "backbone.body.features.denseblock3.",
        "backbone.body.features.transition3.",
        "backbone.body.features.denseblock4.",
        "backbone.body.features.norm5.",
        "head.",
    )
    fe = create_model(ModelConfig(name="densenet121", freeze="backbone"), 2, resolution=32)
    assert set(trainable_parameter_names(fe)) == {"head.fc.weight", "head.fc.bias"}


def test_vgg16_bn_last3_is_the_last_three_convs_with_their_bn():
    # vgg16_bn features: 13 x (conv, bn, relu) and 5 max-pools; the last three convs sit at
    # 34, 37, 40 with their batch norms at 35, 38, 41 (43 is the final pool).
    m = create_model(ModelConfig(name="vgg16_bn", freeze="last:3"), 4, resolution=32)
    expected = {
        f"backbone.body.features.{i}.{p}" for i in (34, 35, 37, 38, 40, 41) for p in ("weight", "bias")
    } | {"head.fc.weight", "head.fc.bias"}
    assert set(trainable_parameter_names(m)) == expected
    assert len(backbone_stages(m)) == 13


def test_tv_alexnet_last_convs():
    # torchvision AlexNet features: conv 0, relu, pool, conv 3, relu, pool, conv 6, relu, conv 8, relu, conv 10, relu, pool
    m1 = create_model(ModelConfig(name="tv:alexnet", freeze="last:1"), 4, resolution=64)
    assert set(trainable_parameter_names(m1)) == {
        "backbone.body.features.10.weight",
        "backbone.body.features.10.bias",
        "head.fc.weight",
        "head.fc.bias",
    }
    m2 = create_model(ModelConfig(name="tv:alexnet", freeze="last:2"), 4, resolution=64)
    assert set(trainable_parameter_names(m2)) == _with_prefixes(
        m2, "backbone.body.features.8.", "backbone.body.features.10.", "head."
    )
    assert len(backbone_stages(m2)) == 5


@pytest.mark.parametrize(
    "name, n, prefixes",
    [
        # generic timm families: stages from feature_info, final norms join the last stage
        ("efficientnet_b0", 1, ("blocks.5.", "blocks.6.", "conv_head.", "bn2.")),
        ("convnext_atto", 1, ("stages.3.", "head.norm.")),
        ("vit_tiny_patch16_224", 2, ("blocks.10.", "blocks.11.", "norm.")),
        ("simple_cnn", 1, ("blocks.2.", "dense.")),
    ],
)
def test_feature_info_families(name, n, prefixes):
    m = create_model(ModelConfig(name=name, freeze=f"last:{n}", width=8 if name == "simple_cnn" else None), 2, resolution=32)
    want = _with_prefixes(m, *(f"backbone.body.{p}" for p in prefixes), "head.")
    assert set(trainable_parameter_names(m)) == want


def test_ae_encoder_stages_start_with_the_encoder():
    m = create_model(ModelConfig(name="ae_encoder", freeze="last:5"), 2, resolution=128)
    stages = backbone_stages(m)
    assert len(stages) == 5
    assert set(stages[0]) == _with_prefixes(m, "backbone.body.encoder.")
    last1 = create_model(ModelConfig(name="ae_encoder", freeze="last:1"), 2, resolution=128)
    assert set(trainable_parameter_names(last1)) == _with_prefixes(
        last1, "backbone.body.densenet.features.denseblock4.", "backbone.body.densenet.features.norm5.", "head."
    )


def test_logreg_has_no_stages():
    with pytest.raises(ConfigError, match=r"logreg' has no backbone stages"):
        create_model(ModelConfig(name="logreg", freeze="last:1"), 2, resolution=16)
    m = create_model(ModelConfig(name="logreg", freeze="backbone"), 2, resolution=16)
    assert trainable_parameter_names(m) == ["head.fc.weight", "head.fc.bias"]


def test_frozen_batch_norms_stay_in_eval_mode_and_keep_their_statistics():
    torch.manual_seed(0)
    m = create_model(ModelConfig(name="resnet18", freeze="last:1", head="bn_mlp256"), 2, resolution=32)
    m.train()
    body = m.backbone.body
    assert body.bn1.training is False and body.layer1[0].bn1.training is False and body.layer3[1].bn2.training is False
    assert body.layer4[0].bn1.training is True and m.head.bn1.training is True
    assert "backbone.body.layer2.0.bn1" in m.frozen_norms and "head.bn1" not in m.frozen_norms
    frozen_before = body.layer2[0].bn1.running_mean.clone()
    live_before = body.layer4[0].bn1.running_mean.clone()
    m(torch.randn(4, 1, 32, 32))
    assert torch.equal(body.layer2[0].bn1.running_mean, frozen_before)
    assert not torch.equal(body.layer4[0].bn1.running_mean, live_before)
    m.eval()
    assert body.layer4[0].bn1.training is False
    m.train()
    assert body.layer2[0].bn1.training is False and body.layer4[0].bn1.training is True
