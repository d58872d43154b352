"""Grad-CAM target layers per backbone family, run through pytorch-grad-cam (issue 4, item 7)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lungray.config import ModelConfig
from lungray.models import create_model, gradcam_target, trainable_parameter_names


def _expected(name, body):
    """The layer each family must resolve to, spelled out per family."""
    return {
        "resnet18": lambda: body.layer4[-1],
        "densenet121": lambda: body.features.norm5,
        "vgg11_bn": lambda: body.features[-2],  # the ReLU after the last conv (features[-1] is the pool)
        "efficientnet_b0": lambda: body.bn2,  # conv_head's norm + activation
        "convnext_atto": lambda: body.stages[-1],
        "vit_tiny_patch16_224": lambda: body.blocks[-1].norm1,
        "tv:alexnet": lambda: body.features[11],  # ReLU after conv5 (features[12] is the pool)
        "simple_cnn": lambda: body.blocks[-1].act2,
        "ae_encoder": lambda: body.densenet.features.norm5,
        "logreg": lambda: body,
    }[name]()


CASES = [
    ("resnet18", 32),
    ("densenet121", 32),
    ("vgg11_bn", 32),
    ("efficientnet_b0", 32),
    ("convnext_atto", 32),
    ("vit_tiny_patch16_224", 32),
    ("tv:alexnet", 64),
    ("simple_cnn", 32),
    ("ae_encoder", 128),
    ("logreg", 32),
]


@pytest.mark.parametrize("name, res", CASES, ids=[c[0] for c in CASES])
def test_target_layer_resolves_and_gradcam_gives_a_finite_map(name, res):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = create_model(ModelConfig(name=name, width=8 if name == "simple_cnn" else None), 3, resolution=res)
    layers, reshape = gradcam_target(model)
    assert len(layers) == 1 and layers[0] is _expected(name, model.backbone.body)
    assert (reshape is not None) == (name == "vit_tiny_patch16_224")
    x = torch.randn(2, 1, res, res)
    with GradCAM(model=model, target_layers=layers, reshape_transform=reshape) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(0), ClassifierOutputTarget(2)])
    assert maps.shape == (2, res, res)
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1


def test_vit_reshape_drops_prefix_tokens_and_reads_the_grid():
    from lungray.models._families import tokens_to_map

    model = create_model(ModelConfig(name="vit_tiny_patch16_224"), 2, resolution=48)
    _, reshape = gradcam_target(model)
    body = model.backbone.body
    assert tuple(body.patch_embed.grid_size) == (3, 3) and body.num_prefix_tokens == 1
    tokens = torch.arange(2 * 10 * 4, dtype=torch.float32).reshape(2, 10, 4)  # 1 class token + 3x3 patches
    grid = reshape(tokens)
    assert grid.shape == (2, 4, 3, 3)
    # patch (i, j) is token 1 + 3 i + j; channel c of it lands at grid[:, c, i, j]
    for i in range(3):
        for j in range(3):
            assert torch.equal(grid[:, :, i, j], tokens[:, 1 + 3 * i + j, :])
    # a dynamic size without a grid: square inferred
    assert tokens_to_map(tokens[:, :5], num_prefix_tokens=1).shape == (2, 4, 2, 2)


def test_ddp_wrapped_model_is_unwrapped(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = create_model(ModelConfig(name="resnet18", freeze="last:1"), 2, resolution=32)
        ddp = DistributedDataParallel(model)
        layers, _ = gradcam_target(ddp)
        assert layers[0] is model.backbone.body.layer4[-1]
        assert trainable_parameter_names(ddp) == trainable_parameter_names(model)
        assert trainable_parameter_names(ddp)[0].startswith("backbone.body.layer4.")
    finally:
        dist.destroy_process_group()


def test_a_bare_timm_model_resolves_by_family():
    import timm

    m = timm.create_model("densenet121", num_classes=2)
    layers, reshape = gradcam_target(m)
    assert layers[0] is m.features.norm5 and reshape is None
