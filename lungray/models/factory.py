"""Building a lungray model: stem -> channel adapter -> backbone trunk -> head.

:func:`create_model` is what the training loop and the report call. It resolves the name
(lungray's own :data:`~lungray.models.MODELS`, ``tv:`` torchvision, or timm), builds the trunk
without its classifier, runs one dry forward pass to learn the feature-map shape (which also
turns "this resolution is too small for VGG" into a config error before any training), attaches
the head and applies the freeze policy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn as nn

from lungray.errors import ConfigError, LungrayError
from lungray.models._families import detect_family
from lungray.models.freeze import apply_freeze
from lungray.models.gradcam import gradcam_target
from lungray.models.net import Backbone, LungrayNet, RepeatChannels, make_stem, unwrap_model
from lungray.models.specs import HEADS, MODELS, check_model_config

log = logging.getLogger(__name__)

TV_PREFIX = "tv:"
# Classifier-side keys a backbone never has; dropped from a pretrained file before the strict check.
HEAD_KEY_PREFIXES = ("fc.", "classifier.", "head.", "head_dist.", "pre_logits.", "last_linear.", "AuxLogits.", "aux_logits.")


# --------------------------------------------------------------------------------------------
# Pretrained weights from a local file or folder
# --------------------------------------------------------------------------------------------

WEIGHT_FILE_NAMES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def weights_file(path: Union[str, Path]) -> Path:
    """A weights file from a file path or an HF-style folder (model.safetensors / pytorch_model.bin)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(
            f"model.pretrained: weights path {p} does not exist; give a .pth/.pt/.bin/.safetensors file "
            "or a folder holding model.safetensors or pytorch_model.bin"
        )
    if p.is_file():
        return p
    for name in WEIGHT_FILE_NAMES:
        if (p / name).is_file():
            return p / name
    files = sorted(f for f in p.iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))
    if len(files) == 1:
        return files[0]
    found = ", ".join(f.name for f in files) if files else "no weights file"
    raise ConfigError(
        f"model.pretrained: folder {p} holds {found}; put exactly one weights file there "
        "(model.safetensors or pytorch_model.bin) or point at the file itself"
    )


def read_state_dict(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """Tensors from a weights file or folder; pickles are read with ``weights_only=True``.

    Checkpoints that wrap the state dict (``{"state_dict": ...}``, ``{"model": ...}``, timm's EMA
    keys, lungray's own ``best.pt``) are unwrapped and a ``module.`` (DDP) prefix is stripped.
    """
    from timm.models import load_state_dict

    f = weights_file(path)
    try:
        sd = load_state_dict(str(f), use_ema=True, device="cpu", weights_only=True)
    except Exception as e:  # torch/safetensors raise many types for a bad file; re-raise as one
        raise ConfigError(
            f"model.pretrained: cannot read weights file {f} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "it must be a state dict saved with torch.save or safetensors"
        ) from e
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConfigError(f"model.pretrained: {f} does not hold a state dict of tensors")
    # a whole lungray model: keep the trunk
    if any(k.startswith("backbone.body.") for k in sd):
        sd = {k[len("backbone.body.") :]: v for k, v in sd.items() if k.startswith("backbone.body.")}
    return sd


def load_weights(module: nn.Module, path: Union[str, Path], *, what: str, drop_prefixes: tuple[str, ...] = HEAD_KEY_PREFIXES) -> None:
    """Load a pretrained file into ``module`` strictly, after dropping classifier keys.

    First-conv weights for 3 input channels are folded into the module's channel count with
    timm's ``adapt_input_conv`` (summed for grayscale). Any other missing, unexpected or
    mis-shaped key is an error naming the file: timm's own loader is non-strict and would
    silently keep random weights for a file of the wrong architecture.
    """
    from timm.models import adapt_input_conv

    f = weights_file(path)
    sd = read_state_dict(f)
    own = module.state_dict()
    sd = {k: v for k, v in sd.items() if k in own or not k.startswith(drop_prefixes)}
    for k, v in list(sd.items()):
        mine = own.get(k)
        if (
            mine is not None
            and v.ndim == 4
            and mine.ndim == 4
            and v.shape != mine.shape
            and v.shape[0] == mine.shape[0]
            and v.shape[2:] == mine.shape[2:]
            and v.shape[1] == 3
        ):
            sd[k] = adapt_input_conv(mine.shape[1], v.float()).to(mine.dtype)
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in sd if k in own and sd[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} of the wrong shape (e.g. {', '.join(wrong[:2])})")
        raise ConfigError(
            f"model.pretrained: weights file {f} does not fit {what}: keys {'; '.join(parts)}; "
            "is the file for this architecture?"
        )
    module.load_state_dict(sd, strict=False)  # only num_batches_tracked may be absent
    log.info("loaded %d tensors from %s into %s", len(sd), f, what)


def adapt_first_conv(module: nn.Module, in_chans: int) -> None:
    """Replace the first Conv2d by one taking ``in_chans`` channels, RGB filters folded (timm's rule)."""
    from timm.models import adapt_input_conv

    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d):
            if m.in_channels == in_chans:
                return
            new = nn.Conv2d(
                in_chans,
                m.out_channels,
                m.kernel_size,
                stride=m.stride,
                padding=m.padding,
                dilation=m.dilation,
                groups=m.groups,
                bias=m.bias is not None,
                padding_mode=m.padding_mode,
            )
            with torch.no_grad():
                new.weight.copy_(adapt_input_conv(in_chans, m.weight.detach()))
                if m.bias is not None:
                    new.bias.copy_(m.bias.detach())
            parent_name, _, child = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, child, new)
            return
    raise ConfigError(f"{type(module).__name__} has no Conv2d whose input channels could be adapted")


# --------------------------------------------------------------------------------------------
# timm and torchvision trunks
# --------------------------------------------------------------------------------------------


def _hub_error(name: str, e: Exception) -> LungrayError:
    return LungrayError(
        f"model '{name}': could not load pretrained weights from the hub ({type(e).__name__}: "
        f"{str(e).splitlines()[0] if str(e) else ''}); on an air-gapped cluster set model.pretrained "
        "to a local weights file or folder"
    )


def timm_body(name: str, *, in_chans: int, resolution: int, pretrained: Union[bool, str]) -> tuple[nn.Module, str]:
    """A timm model without classifier or pooling; returns (body, how to call it)."""
    import timm
    from timm.models import is_model_in_modules

    kwargs: dict[str, Any] = dict(num_classes=0, global_pool="", in_chans=in_chans)
    try:
        pcfg = timm.get_pretrained_cfg(name)
    except RuntimeError as e:
        raise ConfigError(f"model '{name}': {e}") from None
    if pcfg is not None and getattr(pcfg, "fixed_input_size", False):
        kwargs["img_size"] = resolution  # ViT-style models: position embeddings for this size
    is_vgg = is_model_in_modules(name, ["vgg"])
    if is_vgg and pretrained is not True:
        # timm's VGG builds its fc6/fc7 (~120M weights, part of timm's own head) before we drop
        # them; a 1-unit hidden layer makes that transient cheap. Hub weights need the real shape.
        kwargs["mlp_ratio"] = 1 / 4096
    hub = pretrained is True
    call = "forward"
    try:
        body = timm.create_model(name, pretrained=hub, **kwargs)
    except Exception as e:
        if hub:
            raise _hub_error(name, e) from e
        if not isinstance(e, (TypeError, AssertionError, ValueError)):
            raise
        # a model that does not accept global_pool='': call its forward_features instead
        kwargs.pop("global_pool")
        body = timm.create_model(name, pretrained=False, **kwargs)
        call = "features"
    if is_vgg:
        body.pre_logits = nn.Identity()  # Keras include_top=False: conv trunk only (timm prunes it the same way)
    if isinstance(pretrained, str):
        drop = HEAD_KEY_PREFIXES
        if pcfg is not None and pcfg.classifier:
            cls = pcfg.classifier if isinstance(pcfg.classifier, (tuple, list)) else (pcfg.classifier,)
            drop = drop + tuple(f"{c}." for c in cls)
        load_weights(body, pretrained, what=f"the {name} backbone", drop_prefixes=drop)
    return body, call


class TVFeatures(nn.Module):
    """A torchvision model's ``.features`` trunk (AlexNet, VGG, DenseNet, MobileNet...)."""
    def __init__(self, features: nn.Module, family: str, out_act: bool = False):
        super().__init__()
        self.features = features
        self.out_act = nn.ReLU(inplace=False) if out_act else nn.Identity()
        self.lungray_family = family

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_act(self.features(x))


class TVResNet(nn.Module):
    """A torchvision ResNet/ResNeXt/Wide-ResNet up to layer4 (same names as torchvision)."""
    lungray_family = "resnet"

    def __init__(self, m: nn.Module):
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = m.conv1, m.bn1, m.relu, m.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = m.layer1, m.layer2, m.layer3, m.layer4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class TVClassifierHead(nn.Module):
    """A torchvision classifier kept whole except its last layer (``head: tv_classifier``).

    AlexNet's and VGG's ``avgpool -> flatten -> classifier`` with the final ``Linear(4096,
    1000)`` replaced by ``fc = Linear(4096, num_classes)``: "last layer replaced" of the RSNA
    study (PROTOCOLS.md section 3) and the classifier fine-tuning of the 4-class study
    (section 4: VGG19-BN trains 126,644,740 weights, AlexNet 55,140,612). The pretrained
    fc6/fc7 (``pre``) keep their ImageNet weights when ``pretrained: true``.
    """

    def __init__(self, avgpool: nn.Module, classifier: nn.Sequential, num_classes: int):
        super().__init__()
        layers = list(classifier.children())
        if not layers or not isinstance(layers[-1], nn.Linear):
            raise ConfigError("head tv_classifier: the torchvision classifier does not end in a Linear layer")
        self.pool = avgpool
        self.flatten = nn.Flatten(1)
        self.pre = nn.Sequential(*layers[:-1])
        self.fc = nn.Linear(layers[-1].in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pre(self.flatten(self.pool(x))))


def tv_trunk(model: nn.Module, name: str) -> nn.Module:
    """The convolutional trunk of a torchvision classifier, keeping torchvision's key names."""
    kind = type(model).__module__.rsplit(".", 1)[-1]
    if kind == "resnet" and hasattr(model, "layer4"):
        return TVResNet(model)
    if hasattr(model, "features"):
        family = {"alexnet": "alexnet", "vgg": "vgg", "densenet": "densenet"}.get(kind, "tv_features")
        return TVFeatures(model.features, family, out_act=(family == "densenet"))
    raise ConfigError(
        f"model '{name}': lungray builds torchvision trunks for models with .features (AlexNet, VGG, "
        "DenseNet, MobileNet, EfficientNet, ConvNeXt) or ResNet layers; use the timm model of the same name"
    )


def tv_body(
    name: str, *, in_chans: int, pretrained: Union[bool, str], num_classes: Optional[int] = None
) -> tuple[nn.Module, Optional[nn.Module]]:
    """A torchvision trunk, RGB filters folded into ``in_chans`` channels after loading; and,
    when ``num_classes`` is given, its classifier with the last layer replaced
    (:class:`TVClassifierHead`), else ``None``. A local weights file for the kept classifier
    must hold the whole torchvision model (classifier included)."""
    import torchvision

    tv_name = name[len(TV_PREFIX) :]
    hub = pretrained is True
    try:
        model = torchvision.models.get_model(tv_name, weights="DEFAULT" if hub else None)
    except Exception as e:
        if hub:
            raise _hub_error(name, e) from e
        raise
    head = None
    if num_classes is not None:
        if not isinstance(getattr(model, "classifier", None), nn.Sequential) or not hasattr(model, "avgpool"):
            raise ConfigError(f"model '{name}': head tv_classifier needs a torchvision model with avgpool + a classifier Sequential (tv:alexnet, tv:vgg*)")
        if isinstance(pretrained, str):
            load_weights(model, pretrained, what=f"the whole {name} model (head tv_classifier keeps its classifier)", drop_prefixes=())
        head = TVClassifierHead(model.avgpool, model.classifier, num_classes)
    trunk = tv_trunk(model, name)
    del model
    if isinstance(pretrained, str) and head is None:
        load_weights(trunk, pretrained, what=f"the {name} trunk")
    if in_chans != 3:
        adapt_first_conv(trunk, in_chans)
    return trunk, head


# --------------------------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------------------------


def input_layers(cfg: Any, in_chans: int) -> tuple[nn.Module, nn.Module, int]:
    """(stem, adapter, channels the backbone receives) for ``cfg.stem`` / ``cfg.input_mode``."""
    if cfg.stem != "none":
        return make_stem(cfg.stem, in_chans), nn.Identity(), 3
    if cfg.input_mode == "repeat3":
        if in_chans == 1:
            return nn.Identity(), RepeatChannels(3), 3
        if in_chans == 3:
            return nn.Identity(), nn.Identity(), 3
        raise ConfigError(f"model.input_mode repeat3 needs 1 or 3 input channels, got {in_chans}")
    return nn.Identity(), nn.Identity(), in_chans


def feature_shape(backbone: nn.Module, channels: int, resolution: int, name: str) -> tuple[int, int, int]:
    """The (C, h, w) a backbone gives at this resolution, from one dry forward pass on CPU."""
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            y = backbone(torch.zeros(1, channels, resolution, resolution))
    except (RuntimeError, AssertionError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(
            f"model '{name}' cannot run on {resolution} px inputs ({msg}); raise data.resolution or pick another model"
        ) from None
    finally:
        backbone.train(was_training)
    return tuple(int(v) for v in y.shape[1:])  # type: ignore[return-value]


def assemble(
    cfg: Any,
    *,
    num_classes: int,
    in_chans: int,
    resolution: int,
    stem: nn.Module,
    adapter: nn.Module,
    body: nn.Module,
    channels: int,
    call: str = "forward",
    head: Optional[nn.Module] = None,
    net_cls: type = LungrayNet,
) -> LungrayNet:
    """Wrap ``body`` as a :class:`Backbone`, probe its feature shape and attach the head."""
    backbone = Backbone(body, detect_family(body), call=call)
    fshape = feature_shape(backbone, channels, resolution, cfg.name)
    if head is None:
        head = HEADS.get(cfg.head).build(fshape, num_classes, cfg.drop_rate)
    return net_cls(
        stem=stem,
        adapter=adapter,
        backbone=backbone,
        head=head,
        name=cfg.name,
        head_name=cfg.head,
        num_classes=num_classes,
        in_chans=in_chans,
        resolution=resolution,
        feature_shape=fshape,
    )


def create_model(
    cfg: Any,
    num_classes: int,
    *,
    in_chans: int = 1,
    resolution: int = 64,
    ae_weights: Union[str, Path, None] = None,
) -> LungrayNet:
    """See :func:`lungray.models.create_model`."""
    check_model_config(cfg)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"model '{cfg.name}': num_classes must be an integer >= 2, got {num_classes!r}")
    if in_chans < 1:
        raise ConfigError(f"model '{cfg.name}': in_chans must be >= 1, got {in_chans}")
    if resolution < 8:
        raise ConfigError(f"model '{cfg.name}': resolution must be >= 8 pixels, got {resolution}")
    if cfg.name in MODELS:
        net = MODELS.get(cfg.name).build(
            cfg, num_classes, in_chans=in_chans, resolution=resolution, ae_weights=ae_weights
        )
    else:
        stem, adapter, channels = input_layers(cfg, in_chans)
        head = None
        if cfg.name.startswith(TV_PREFIX):
            keep = num_classes if cfg.head == "tv_classifier" else None
            body, head = tv_body(cfg.name, in_chans=channels, pretrained=cfg.pretrained, num_classes=keep)
            call = "forward"
        else:
            body, call = timm_body(cfg.name, in_chans=channels, resolution=resolution, pretrained=cfg.pretrained)
        net = assemble(
            cfg,
            num_classes=num_classes,
            in_chans=in_chans,
            resolution=resolution,
            stem=stem,
            adapter=adapter,
            body=body,
            channels=channels,
            call=call,
            head=head,
        )
    apply_freeze(net, cfg.freeze)
    net.gradcam_layer = cfg.gradcam_layer

    gradcam_target(net)  # a module path that does not exist fails now, not in the report
    net.train()
    return net


@dataclass(frozen=True)
class ParamCounts:
    """Weights of a model, counted the way Keras' ``model.summary()`` does.

    ``trainable`` and ``frozen`` are parameters (``requires_grad`` or not); ``norm_stats`` the
    batch-norm running means and variances, which Keras counts as non-trainable parameters and
    PyTorch keeps as buffers. The studies' published totals (PROTOCOLS.md) are ``keras_total``.
    """

    trainable: int
    frozen: int
    norm_stats: int

    @property
    def total(self) -> int:
        """Parameters only (PyTorch's count)."""
        return self.trainable + self.frozen

    @property
    def keras_total(self) -> int:
        """Parameters plus batch-norm running statistics (Keras' "Total params")."""
        return self.trainable + self.frozen + self.norm_stats


def parameter_counts(model: nn.Module) -> ParamCounts:
    """:class:`ParamCounts` of a (DDP-unwrapped) model."""
    net = unwrap_model(model)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in net.parameters() if not p.requires_grad)
    stats = 0
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            stats += m.running_mean.numel() + m.running_var.numel()
    return ParamCounts(int(trainable), int(frozen), int(stats))
