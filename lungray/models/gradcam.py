"""Grad-CAM target layers (issue 4, item 7; issue 12; PROTOCOLS.md sections 2 and 4).

``ModelConfig.gradcam_layer`` picks the layer, and the report says which one it used:

``auto``       the backbone family's layer (:mod:`lungray.models._families`): ResNet's last
               block of ``layer4``, DenseNet's ``norm5``, the ReLU after VGG's / AlexNet's last
               conv, EfficientNet's ``conv_head`` (its norm-act), ConvNeXt's last stage, ViT's
               last block ``norm1`` (tokens reshaped to the patch grid, prefix tokens dropped),
               ``simple_cnn``'s last conv ReLU, ``ae_encoder``'s DenseNet;
``last_conv``  the last convolution of the trunk, the studies' layer: ResNet-50
               ``conv5_block3_3_conv`` = ``layer4[-1].conv3``, DenseNet-121
               ``conv5_block16_2_conv`` = ``features.denseblock4.denselayer16.conv2`` (section 2);
               AlexNet "layer 5" = ``features.10``, VGG19-BN "layer 16" = ``features.49``
               (section 4). Transformers have no such layer (their only convolution is the patch
               embedding) and are refused;
a module path  any module of the model, e.g. ``backbone.body.layer4.2.conv2``.

The layer's weights may be frozen (``freeze: backbone``): the report's
:func:`lungray.report.gradcam.compute_cams` makes the *input* require gradients, so the target
activation is always part of the autograd graph.

Use the layers with pytorch-grad-cam as a context manager so its hooks are released::

    from pytorch_grad_cam import GradCAM
    layers, reshape = gradcam_target(model)
    with GradCAM(model=model, target_layers=layers, reshape_transform=reshape) as cam:
        maps = cam(input_tensor=x)  # (B, H, W) in [0, 1]
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch.nn as nn

from lungray.errors import ConfigError
from lungray.models._families import FAMILIES, detect_family
from lungray.models.net import LungrayNet, unwrap_model


def last_conv(body: nn.Module, family: str = "") -> nn.Module:
    """The last ``nn.Conv2d`` of a trunk in module order (the studies' "last convolutional layer")."""
    if family == "vit":
        raise ConfigError(
            "gradcam_layer last_conv: a vision transformer's only convolution is its patch embedding; "
            "use gradcam_layer: auto (the last block's norm1)"
        )
    found = None
    for _, m in body.named_modules():
        if isinstance(m, nn.Conv2d):
            found = m
    if found is None:
        raise ConfigError(f"gradcam_layer last_conv: {type(body).__name__} has no convolution; use gradcam_layer: auto")
    return found


def gradcam_target(model: nn.Module, layer: Optional[str] = None) -> tuple[list[nn.Module], Optional[Callable[..., Any]]]:
    """``(target_layers, reshape_transform or None)`` for a lungray model (DDP-unwrapped).

    ``layer`` defaults to the model's ``gradcam_layer`` (set from ``ModelConfig.gradcam_layer``
    by :func:`lungray.models.create_model`). A bare timm or torchvision-trunk module is
    accepted too: its family is detected directly and a module path is looked up in it.
    """
    net = unwrap_model(model)
    if isinstance(net, LungrayNet):
        body, family = net.backbone.body, net.family
    else:
        body, family = net, detect_family(net)
    choice = (layer or getattr(net, "gradcam_layer", None) or "auto").strip()
    if choice == "auto":
        layers, reshape = FAMILIES.get(family).gradcam(body)
        return list(layers), reshape
    if choice == "last_conv":
        return [last_conv(body, family)], None
    try:
        target = net.get_submodule(choice)
    except AttributeError:
        convs = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)][-3:]
        raise ConfigError(
            f"gradcam_layer '{choice}' is not a module of {getattr(net, 'name', type(net).__name__)}; use auto, "
            f"last_conv or a module path such as {', '.join(convs) or 'backbone.body...'}"
        ) from None
    return [target], (FAMILIES.get(family).gradcam(body)[1] if family == "vit" else None)
