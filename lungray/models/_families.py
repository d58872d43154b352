"""Backbone families: what a "stage" is and which layer Grad-CAM reads, per architecture family.

Freeze policies (``last:N``) and Grad-CAM target layers must mean the same thing for every
model of a family and must not be a list of hard-coded names per model. So each backbone is
classified into a family (:func:`detect_family`: the timm module the class comes from, the
torchvision trunk type, or lungray's own marker), and the family says:

``stage_ends(body)``  the module names that *end* each stage, first to last. A parameter belongs
                      to the first stage whose end module comes at or after it (in module
                      registration order); stem parameters before the first end fall into
                      stage 1 and final norms after the last end into the last stage.
``gradcam(body)``     ``([layer], reshape_transform or None)``: the last spatial feature map.

Stages per family (the studies' partial fine-tuning, PROTOCOLS.md section 4):

* ResNet: ``layer1`` .. ``layer4`` (``last:2`` = layer3 + layer4, as the 4-class study unfroze);
* DenseNet: dense block *k* with the transition after it; block 4 with ``norm5``;
* VGG and AlexNet: every convolution (with its batch norm) is a stage (``last:3`` = VGG's last
  three convs, as the 4-class study; AlexNet ``last:1`` = its fifth conv);
* anything else from timm: the modules of ``model.feature_info`` (EfficientNet's reduction
  stages, ConvNeXt's ``stages.i``, ViT's blocks);
* lungray's own: ``simple_cnn`` its three conv blocks (the dense layer joins the last);
  ``ae_encoder`` the encoder, then DenseNet-121's four stages; ``logreg`` has none.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from lungray.errors import ConfigError
from lungray.registry import Registry

GradcamFn = Callable[[nn.Module], tuple[list[nn.Module], Optional[Callable[..., Any]]]]


@dataclass(frozen=True)
class Family:
    name: str
    stage_ends: Callable[[nn.Module], list[str]]
    gradcam: GradcamFn
    doc: str = ""


FAMILIES: Registry[Family] = Registry("backbone family")

# timm module -> family. Per family, never per model: every resnet*/resnext*/seresnet* that
# lives in timm.models.resnet shares ResNet's stages and Grad-CAM layer.
TIMM_MODULE_FAMILY = {
    "resnet": "resnet",
    "densenet": "densenet",
    "vgg": "vgg",
    "efficientnet": "efficientnet",
    "convnext": "convnext",
}


def detect_family(body: nn.Module) -> str:
    """The family name of a backbone body (a timm model, a torchvision trunk, or lungray's own)."""
    own = getattr(body, "lungray_family", None)
    if own:
        return own
    module = type(body).__module__
    if module.startswith("timm."):
        fam = TIMM_MODULE_FAMILY.get(module.rsplit(".", 1)[-1])
        if fam:
            return fam
    if _is_vit(body):
        return "vit"
    return "generic"


def _is_vit(body: nn.Module) -> bool:
    return hasattr(body, "patch_embed") and hasattr(body, "blocks") and hasattr(body, "num_prefix_tokens")


# --------------------------------------------------------------------------------------------
# Stage assignment
# --------------------------------------------------------------------------------------------


def stage_groups(body: nn.Module, ends: list[str]) -> list[list[str]]:
    """Parameter names of ``body`` grouped into stages given the stage-end module names.

    A parameter owned by module *m* goes to the first stage whose end module's subtree ends at
    or after *m* in ``named_modules`` order; parameters after the last end join the last stage.
    Every parameter lands in exactly one stage; stages left without parameters are dropped.
    """
    if not ends:
        return []
    order = [name for name, _ in body.named_modules()]
    pos = {name: i for i, name in enumerate(order)}
    missing = [e for e in ends if e not in pos]
    if missing:  # pragma: no cover - a family definition out of step with its models
        raise ConfigError(f"backbone has no module(s) {', '.join(missing)} to end a stage at")
    subtree_end = []
    for e in ends:
        last = pos[e]
        for name in order[pos[e] + 1 :]:
            if name.startswith(e + "."):
                last = pos[name]
            else:
                break
        subtree_end.append(last)
    groups: list[list[str]] = [[] for _ in ends]
    for pname, _ in body.named_parameters():
        owner = pname.rsplit(".", 1)[0] if "." in pname else ""
        p = pos.get(owner, 0)
        k = next((i for i, end in enumerate(subtree_end) if p <= end), len(ends) - 1)
        groups[k].append(pname)
    # an end module with no weights of its own and none before it (e.g. a ReLU) makes an empty
    # stage: drop it, so N in last:N counts stages that have weights
    return [g for g in groups if g]


def _feature_info_ends(body: nn.Module) -> list[str]:
    info = getattr(body, "feature_info", None)
    names: list[str] = []
    if info is not None:
        try:
            items = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
            names = [d["module"] for d in items if d.get("module")]
        except (TypeError, KeyError):  # pragma: no cover - unusual feature_info
            names = []
    modules = dict(body.named_modules())
    names = [n for n in names if n in modules]
    if names:
        return names
    # no feature_info: each top-level child with parameters is a stage
    return [n for n, m in body.named_children() if any(True for _ in m.parameters())]


def _resnet_ends(body: nn.Module) -> list[str]:
    return [n for n in ("layer1", "layer2", "layer3", "layer4") if hasattr(body, n)]


def _densenet_ends(body: nn.Module) -> list[str]:
    feats = body.features
    names = [n for n, _ in feats.named_children()]
    ends = [f"features.{n}" for n in names if n.startswith("transition")]
    ends.append("features.norm5" if "norm5" in names else f"features.{names[-1]}")
    return ends


def _conv_ends(body: nn.Module) -> list[str]:
    """VGG / AlexNet: one stage per convolution, ending at its batch norm when it has one."""
    feats = body.features
    children = list(feats.named_children())
    ends = []
    for i, (name, m) in enumerate(children):
        if isinstance(m, nn.Conv2d):
            nxt = children[i + 1] if i + 1 < len(children) else None
            if nxt is not None and isinstance(nxt[1], nn.modules.batchnorm._BatchNorm):
                ends.append(f"features.{nxt[0]}")
            else:
                ends.append(f"features.{name}")
    return ends


# --------------------------------------------------------------------------------------------
# Grad-CAM targets
# --------------------------------------------------------------------------------------------


def tokens_to_map(tensor: torch.Tensor, num_prefix_tokens: int = 0, grid: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """(B, N, C) transformer tokens -> (B, C, h, w), dropping class/register (prefix) tokens.

    ``grid`` is the model's ``patch_embed.grid_size``; when it does not match the token count
    (dynamic image size) a square grid is inferred.
    """
    x = tensor[:, num_prefix_tokens:, :]
    n = x.shape[1]
    if grid is None or grid[0] * grid[1] != n:
        side = int(round(n**0.5))
        if side * side != n:
            raise ValueError(f"cannot arrange {n} tokens into a square grid; pass the grid size")
        grid = (side, side)
    return x.reshape(x.shape[0], grid[0], grid[1], x.shape[2]).permute(0, 3, 1, 2)


def vit_reshape_transform(body: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The reshape_transform for a ViT-style body, reading prefix count and grid from the model."""
    grid = getattr(getattr(body, "patch_embed", None), "grid_size", None)
    grid = tuple(int(g) for g in grid) if grid is not None else None
    return functools.partial(tokens_to_map, num_prefix_tokens=int(getattr(body, "num_prefix_tokens", 0)), grid=grid)


def _last_module_of(body: nn.Module, kinds: tuple[type, ...]) -> Optional[nn.Module]:
    found = None
    for _, m in body.named_modules():
        if isinstance(m, kinds):
            found = m
    return found


def _conv_then_act(seq: nn.Module) -> nn.Module:
    """VGG / AlexNet: the activation right after the last conv (Keras' Conv2D output), else the conv."""
    children = list(seq.children())
    last_conv = max(i for i, m in enumerate(children) if isinstance(m, nn.Conv2d))
    for m in children[last_conv + 1 :]:
        if isinstance(m, (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.LeakyReLU)):
            return m
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            break
    return children[last_conv]


def _gc_resnet(body: nn.Module):
    return [body.layer4[-1]], None


def _gc_densenet(body: nn.Module):
    # timm's norm5 is BatchNormAct2d (norm + ReLU); torchvision trunks apply ReLU in out_act.
    act = getattr(body, "out_act", None)
    if isinstance(act, nn.ReLU):
        return [act], None
    return [body.features.norm5], None


def _gc_conv_seq(body: nn.Module):
    return [_conv_then_act(body.features)], None


def _gc_efficientnet(body: nn.Module):
    for name in ("bn2", "conv_head"):
        m = getattr(body, name, None)
        if isinstance(m, nn.Module) and not isinstance(m, nn.Identity):
            return [m], None
    return _gc_generic(body)


def _gc_convnext(body: nn.Module):
    return [body.stages[-1]], None


def _gc_vit(body: nn.Module):
    return [body.blocks[-1].norm1], vit_reshape_transform(body)


def _gc_generic(body: nn.Module):
    ends = _feature_info_ends(body)
    modules = dict(body.named_modules())
    if getattr(body, "feature_info", None) is not None and ends:
        return [modules[ends[-1]]], None
    conv = _last_module_of(body, (nn.Conv2d,))
    if conv is None:
        raise ConfigError(f"no convolutional layer found in {type(body).__name__} for Grad-CAM")
    return [conv], None


def _gc_tv_features(body: nn.Module):
    return [body.features[-1]], None


def _gc_simple_cnn(body: nn.Module):
    return [body.blocks[-1].act2], None


def _gc_logreg(body: nn.Module):
    # A linear model has no convolutional layer: Grad-CAM on the pooled pixels reduces to the
    # image weighted by the class weights' mean sign. Kept so every model of a sweep gets a
    # panel (and a pointing-game score that shows what a non-spatial model looks like).
    return [body], None  # PixelPool's own output (made to record gradients)


def _gc_ae_encoder(body: nn.Module):
    return _gc_densenet(body.densenet)


def _ae_ends(body: nn.Module) -> list[str]:
    return ["encoder"] + [f"densenet.{e}" for e in _densenet_ends(body.densenet)]


def _no_stages(body: nn.Module) -> list[str]:
    return []


def _blocks_ends(body: nn.Module) -> list[str]:
    return [f"blocks.{i}" for i in range(len(body.blocks))]


def _tv_features_ends(body: nn.Module) -> list[str]:
    return [f"features.{n}" for n, m in body.features.named_children() if any(True for _ in m.parameters())]


for _fam in (
    Family("resnet", _resnet_ends, _gc_resnet, "ResNet/ResNeXt/SE-ResNet: layer1..layer4; Grad-CAM on layer4's last block"),
    Family("densenet", _densenet_ends, _gc_densenet, "DenseNet: dense block + transition per stage; Grad-CAM on norm5"),
    Family("vgg", _conv_ends, _gc_conv_seq, "VGG: one stage per conv; Grad-CAM on the last conv's ReLU"),
    Family("alexnet", _conv_ends, _gc_conv_seq, "AlexNet (torchvision): one stage per conv; Grad-CAM on conv5's ReLU"),
    Family("efficientnet", _feature_info_ends, _gc_efficientnet, "EfficientNet/MobileNet: feature_info stages; Grad-CAM on conv_head"),
    Family("convnext", _feature_info_ends, _gc_convnext, "ConvNeXt: stages.0..3; Grad-CAM on the last stage"),
    Family("vit", _feature_info_ends, _gc_vit, "ViT-style: one stage per block; Grad-CAM on the last block's norm1, tokens reshaped"),
    Family("tv_features", _tv_features_ends, _gc_tv_features, "other torchvision trunks with .features"),
    Family("generic", _feature_info_ends, _gc_generic, "any other timm model: feature_info stages and last feature module"),
    Family("simple_cnn", _blocks_ends, _gc_simple_cnn, "lungray simple_cnn: three conv blocks"),
    Family("logreg", _no_stages, _gc_logreg, "lungray logreg: no trainable backbone"),
    Family("ae_encoder", _ae_ends, _gc_ae_encoder, "lungray ae_encoder: encoder, then DenseNet-121's stages"),
):
    FAMILIES.register(_fam.name, _fam, doc=_fam.doc)
