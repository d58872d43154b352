"""Grad-CAM target layers by backbone family (issue 4, item 7; PROTOCOLS.md sections 2 and 4).

The studies read Grad-CAM from "the last convolutional layer" of each network. Which module
that is depends on the family, not on the model: ResNet's last block of ``layer4``, DenseNet's
``norm5``, the ReLU after VGG's / AlexNet's last conv, EfficientNet's ``conv_head`` (its
norm-act), ConvNeXt's last stage, ViT's last block ``norm1`` (tokens reshaped to the patch grid,
prefix tokens dropped), ``simple_cnn``'s last conv, ``ae_encoder``'s DenseNet. See
:mod:`lungray.models._families` for the registry.

Use the layers with pytorch-grad-cam as a context manager so its hooks are released::

    from pytorch_grad_cam import GradCAM
    layers, reshape = gradcam_target(model)
    with GradCAM(model=model, target_layers=layers, reshape_transform=reshape) as cam:
        maps = cam(input_tensor=x)  # (B, H, W) in [0, 1]
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch.nn as nn

from lungray.models._families import FAMILIES, detect_family


def gradcam_target(model: nn.Module) -> tuple[list[nn.Module], Optional[Callable[..., Any]]]:
    """``(target_layers, reshape_transform or None)`` for a lungray model (DDP-unwrapped).

    A bare timm or torchvision-trunk module is accepted too: its family is detected directly.
    """
    from lungray.models.factory import LungrayNet, unwrap_model

    net = unwrap_model(model)
    if isinstance(net, LungrayNet):
        body, family = net.backbone.body, net.family
    else:
        body, family = net, detect_family(net)
    layers, reshape = FAMILIES.get(family).gradcam(body)
    return list(layers), reshape
