"""Freeze policies with one meaning across architectures (:data:`lungray.models.FREEZE_POLICIES`).

``none``      every weight trains;
``backbone``  feature extraction: the trunk is frozen, stem and head train (sections 2-3:
              "base frozen");
``fc_only``   everything frozen but the head's final layer ``head.fc`` (section 3: torchvision
              VGG16 "pretrained, frozen, last layer replaced", with ``head: tv_classifier``
              keeping fc6/fc7 frozen);
``last:N``    the trunk's last N *stages* train with stem and head (section 4 fine-tuned
              ResNet-50's layer3 + layer4 = ``last:2`` and VGG19-BN's last three convs =
              ``last:3``). What a stage is comes from the backbone family
              (:mod:`lungray.models._families`), never from a per-model name list.

Batch-norm layers left with no trainable weight are recorded in ``model.frozen_norms`` and held
in eval mode by :meth:`lungray.models.factory.LungrayNet.train` (why: see that class).
"""

from __future__ import annotations

from typing import Optional

import torch.nn as nn

from lungray.errors import ConfigError
from lungray.models._families import FAMILIES, stage_groups
from lungray.models.net import LungrayNet, unwrap_model
from lungray.models.specs import FREEZE_POLICIES, parse_freeze


def _net(model: nn.Module) -> nn.Module:
    net = unwrap_model(model)
    if not isinstance(net, LungrayNet):
        raise TypeError(f"expected a model from lungray.models.create_model, got {type(net).__name__}")
    return net


def backbone_stages(model: nn.Module) -> list[list[str]]:
    """The backbone's stages, first to last, as lists of full parameter names."""
    net = _net(model)
    body = net.backbone.body
    ends = FAMILIES.get(net.family).stage_ends(body)
    return [[f"backbone.body.{n}" for n in group] for group in stage_groups(body, ends)]


def trainable_parameter_names(model: nn.Module) -> list[str]:
    """Names of parameters with ``requires_grad`` (what the optimizer will update), unwrapped."""
    return [n for n, p in unwrap_model(model).named_parameters() if p.requires_grad]


def _set_trainable(net: nn.Module, trainable: set[str]) -> None:
    for n, p in net.named_parameters():
        p.requires_grad_(n in trainable)
    frozen = []
    for name, m in net.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                frozen.append(name)
    net.frozen_norms = frozen


def _non_backbone(net: nn.Module) -> set[str]:
    return {n for n, _ in net.named_parameters() if not n.startswith("backbone.")}


def freeze_none(model: nn.Module, n: Optional[int] = None) -> None:
    """Everything trainable."""
    net = _net(model)
    net.freeze = "none"
    _set_trainable(net, {n for n, _ in net.named_parameters()})


def freeze_backbone(model: nn.Module, n: Optional[int] = None) -> None:
    """Only stem and head trainable (feature extraction)."""
    net = _net(model)
    net.freeze = "backbone"
    _set_trainable(net, _non_backbone(net))


def freeze_fc_only(model: nn.Module, n: Optional[int] = None) -> None:
    """Only the head's final layer (``head.fc``) trainable."""
    net = _net(model)
    keep = {name for name, _ in net.named_parameters() if name.startswith("head.fc.")}
    if not keep:
        raise ConfigError(f"model '{net.name}': freeze fc_only found no final layer head.fc; use freeze backbone")
    net.freeze = "fc_only"
    _set_trainable(net, keep)


def freeze_last(model: nn.Module, n: Optional[int] = None) -> None:
    """The backbone's last ``n`` stages plus stem and head trainable."""
    net = _net(model)
    if n is None or n < 1:
        raise ConfigError(f"model '{net.name}': freeze last:N needs N >= 1, got {n}")
    stages = backbone_stages(net)
    if n > len(stages):
        raise ConfigError(
            f"model '{net.name}' freeze 'last:{n}': its {net.family} backbone has {len(stages)} stage(s); "
            f"use last:1..last:{len(stages)}, or freeze none to train everything"
            if stages
            else f"model '{net.name}' has no backbone stages to unfreeze; use freeze none or backbone"
        )
    net.freeze = f"last:{n}"
    keep = {name for group in stages[-n:] for name in group}
    _set_trainable(net, keep | _non_backbone(net))


def apply_freeze(model: nn.Module, freeze: str) -> None:
    """Apply a ``ModelConfig.freeze`` string (``none``, ``backbone``, ``last:N``)."""
    policy, n = parse_freeze(freeze)
    FREEZE_POLICIES.get(policy)(model, n)
