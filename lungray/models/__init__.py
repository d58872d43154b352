"""Models: one registry from a name to a network, plus heads, freeze policies and Grad-CAM layers.

A lungray model is always the same four pieces (timm's ``create_model`` split the same way):

``stem``     optional input adapter with weights (``conv8_conv3``: the training-size study's
             Conv2D(8, 3x3) -> Conv2D(3, 3x3), PROTOCOLS.md section 1);
``adapter``  ``repeat3`` copies a grayscale channel three times; otherwise nothing;
``backbone`` the convolutional (or transformer) trunk *without* its classifier, returning a
             feature map (B, C, h, w): any timm architecture, a torchvision one with the ``tv:``
             prefix (AlexNet only exists there), or one of lungray's own (:data:`MODELS`);
``head``     a :data:`HEADS` entry mapping the feature map to class logits.

The trunk is "no top" in every family (Keras ``include_top=False``, which studies 1, 2 and 5
built on), so a head and a freeze policy mean the same thing for ResNet, DenseNet, VGG,
AlexNet, EfficientNet, ConvNeXt and ViT alike.

Grayscale input (the cached images have one channel) is handled in one of two stated ways,
``ModelConfig.input_mode``:

``in_chans1`` (default) the backbone's first convolution takes one channel. timm folds
              pretrained RGB filters into it by summing over the colour axis, so a uniform
              grey image gives the same first-layer response as its RGB copy would;
``repeat3``   the model repeats the channel three times in its forward pass and the backbone
              keeps its RGB filters unchanged (what the studies did with 3-channel JPEGs).

This module only holds registries and thin wrappers: it imports neither torch nor timm, so
config validation (:mod:`lungray.validate`) stays cheap. The networks live in
submodules imported on first use.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from lungray.errors import ConfigError
from lungray.registry import Registry, lazy

if TYPE_CHECKING:  # pragma: no cover
    import torch.nn as nn

    from lungray.config import ModelConfig
    from lungray.data.prepared import PreparedData

__all__ = [
    "MODELS",
    "HEADS",
    "FREEZE_POLICIES",
    "ModelSpec",
    "HeadSpec",
    "check_model_name",
    "check_model_config",
    "model_spec",
    "parse_freeze",
    "create_model",
    "gradcam_target",
    "trainable_parameter_names",
    "backbone_stages",
    "ensure_autoencoder",
    "unwrap_model",
]

TV_PREFIX = "tv:"

# --------------------------------------------------------------------------------------------
# lungray's own models
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """What config validation needs to know about one of lungray's own models, without torch.

    ``build(cfg, num_classes, *, in_chans, resolution, ae_weights)`` returns the whole network.
    ``heads`` lists the heads the model accepts (``None``: any registered head);
    ``stem`` whether ``stem: conv8_conv3`` may precede it; ``pretrained_hub`` whether
    ``pretrained: true`` has a meaning (downloadable weights exist for part of it);
    ``pretrained_file`` whether a local weights file may be given.

    Hooks the training loop and config validation call, so neither names a model:
    ``check(cfg, resolution, where)`` raises a :class:`ConfigError` for a data resolution the
    model cannot use; ``prepare(data, trial, *, device, mean, std)`` runs once per trial before
    the model is built (on rank 0 first, then the others) and returns extra keyword arguments
    for ``build`` (``ae_encoder``: pretrain the autoencoder or find it cached ->
    ``{"ae_weights": path}``); ``full_batch`` says the built network is fitted in one call of
    its ``fit_full_batch(x, y, sample_weight=)`` on the whole training set instead of
    optimizer epochs (``logreg``).
    """

    name: str
    build: Callable[..., Any]
    heads: Optional[tuple[str, ...]] = None
    stem: bool = True
    pretrained_hub: bool = False
    pretrained_file: bool = True
    doc: str = ""
    check: Optional[Callable[..., None]] = None
    prepare: Optional[Callable[..., dict[str, Any]]] = None
    full_batch: bool = False


def _check_ae_resolution(cfg: "ModelConfig", resolution: int, where: str) -> None:
    if resolution % 4 or resolution < 128:
        raise ConfigError(
            f"{where}: ae_encoder needs data.resolution divisible by 4 and >= 128 (its 64x64-style "
            f"code at resolution/4 feeds a DenseNet-121, which downsamples 32x), got {resolution}"
        )


def _prepare_ae_encoder(data: "PreparedData", trial: Any, *, device: Any, mean: float, std: float) -> dict[str, Any]:
    """Pretrain the autoencoder on the unlabelled training pool (or find it cached): section 1's
    encoder is trained on reconstruction before the classifier sees any label."""
    tc = trial.train
    path = ensure_autoencoder(
        data,
        trial.seed,
        epochs=tc.ae_epochs,
        device=device,
        resolution=data.resolution,
        max_images=tc.ae_pretrain_images,
        mean=mean,
        std=std,
    )
    return {"ae_weights": path}


MODELS: Registry[ModelSpec] = Registry("model")

MODELS.register(
    "simple_cnn",
    ModelSpec(
        name="simple_cnn",
        build=lazy("lungray.models.simple_cnn", "build_simple_cnn"),
        doc="the X-ray capstone's CNN from scratch: [conv, conv, BN, maxpool] x 3 (32/64/128), dense 128 (section 5)",
    ),
    doc="CNN from scratch of the X-ray capstone (PROTOCOLS.md section 5); width scales the channels",
)
MODELS.register(
    "logreg",
    ModelSpec(
        name="logreg",
        build=lazy("lungray.models.logreg", "build_logreg"),
        heads=("linear",),
        stem=False,
        pretrained_file=False,
        full_batch=True,
        doc="logistic regression on average-pooled pixels, fitted like scikit-learn (section 4 baseline)",
    ),
    doc="logistic regression on downsampled pixels, fitted in closed form (PROTOCOLS.md section 4 baseline)",
)
MODELS.register(
    "ae_encoder",
    ModelSpec(
        name="ae_encoder",
        build=lazy("lungray.models.autoencoder", "build_ae_encoder"),
        stem=False,
        pretrained_hub=True,
        check=_check_ae_resolution,
        prepare=_prepare_ae_encoder,
        doc="conv autoencoder's encoder (res -> res/4 x res/4 x 3 code) feeding DenseNet-121 (section 1)",
    ),
    doc="the training-size study's encoder-based classifier: AE encoder -> DenseNet-121 (PROTOCOLS.md section 1)",
)

# --------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadSpec:
    """A head: ``build(feature_shape (C, h, w), num_classes, drop_rate) -> nn.Module``.

    ``task`` keeps the task a parameter: a segmentation decoder registers here with
    ``task="segmentation"`` and the training loop picks losses and metrics by task.
    """

    name: str
    build: Callable[..., Any]
    task: str = "classification"
    doc: str = ""


HEADS: Registry[HeadSpec] = Registry("head")
HEADS.register(
    "linear",
    HeadSpec("linear", lazy("lungray.models.heads", "linear_head"), doc="global average pool -> linear"),
    doc="global average pool -> linear (the torchvision 'last layer replaced' of sections 3-4)",
)
HEADS.register(
    "bn_mlp256",
    HeadSpec(
        "bn_mlp256",
        lazy("lungray.models.heads", "bn_mlp256_head"),
        doc="GAP -> BN -> dropout -> dense 256 -> BN -> ReLU -> dropout -> classes",
    ),
    doc="GAP -> BN -> dropout -> dense 256 -> BN -> dropout -> classes (training-size study, section 1)",
)
HEADS.register(
    "pool_mlp64",
    HeadSpec(
        "pool_mlp64",
        lazy("lungray.models.heads", "pool_mlp64_head"),
        doc="avg-pool 4x4 -> flatten -> dense 64 -> ReLU -> dropout -> classes",
    ),
    doc="avg-pool 4x4 -> dense 64 -> ReLU -> dropout 0.5 -> classes (Grad-CAM study, section 2)",
)

# --------------------------------------------------------------------------------------------
# Freeze policies
# --------------------------------------------------------------------------------------------

FREEZE_POLICIES: Registry[Callable[..., Any]] = Registry("freeze policy")
FREEZE_POLICIES.register(
    "none",
    lazy("lungray.models.freeze", "freeze_none"),
    doc="train everything (from scratch, or full fine-tuning)",
)
FREEZE_POLICIES.register(
    "backbone",
    lazy("lungray.models.freeze", "freeze_backbone"),
    doc="feature extraction: backbone frozen, stem and head trainable (sections 2-3 'base frozen')",
)
FREEZE_POLICIES.register(
    "last",
    lazy("lungray.models.freeze", "freeze_last"),
    doc="'last:N': the backbone's last N stages plus stem and head trainable (section 4: ResNet-50 layer3+4 = last:2)",
)


def parse_freeze(freeze: str, where: str = "model.freeze") -> tuple[str, Optional[int]]:
    """``"none"`` -> ("none", None); ``"last:2"`` -> ("last", 2); anything else raises.

    >>> parse_freeze("last:2")
    ('last', 2)
    """
    text = str(freeze).strip()
    if text.startswith("last"):
        _, sep, n = text.partition(":")
        if not sep or not n.isdigit() or int(n) < 1:
            raise ConfigError(
                f"{where} '{freeze}': write last:N with N a positive number of backbone stages (e.g. last:2)"
            )
        return "last", int(n)
    FREEZE_POLICIES.check(text)
    return text, None


# --------------------------------------------------------------------------------------------
# Name and config checks (no torch unless a timm or torchvision name must be looked up)
# --------------------------------------------------------------------------------------------


def _choices_hint() -> str:
    return f"lungray's own: {', '.join(MODELS.names())}; any timm name (timm.list_models()), or tv:<torchvision name>"


def check_model_name(name: str) -> str:
    """Raise a :class:`ConfigError` unless ``name`` can be built; return it.

    Accepts lungray's own names (:data:`MODELS`), ``tv:<name>`` for torchvision
    (``torchvision.models.list_models()``) and any timm architecture, with or without a
    pretrained tag (``resnet50.a1_in1k``). The error lists the own names and the closest timm
    (or torchvision) names, so a typo in a sweep file is fixed in one look.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"model name must be a non-empty string, got {name!r}; {_choices_hint()}")
    if name in MODELS:
        return name
    if name.startswith(TV_PREFIX):
        import torchvision

        tv_name = name[len(TV_PREFIX) :]
        names = torchvision.models.list_models()
        if tv_name in names:
            return name
        close = difflib.get_close_matches(tv_name, names, n=5, cutoff=0.5)
        hint = f"; close torchvision names: {', '.join(TV_PREFIX + c for c in close)}" if close else ""
        raise ConfigError(f"unknown torchvision model '{name}'{hint}; {_choices_hint()}")
    import timm

    if timm.is_model(name):
        return name
    candidates = list(MODELS.names()) + timm.list_models()
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise ConfigError(f"unknown model '{name}'{hint}; {_choices_hint()}")


def model_spec(name: str) -> Optional[ModelSpec]:
    """The :class:`ModelSpec` of one of lungray's own models; None for a timm/torchvision name."""
    return MODELS.get(name) if name in MODELS else None


def check_model_config(cfg: "ModelConfig", where: str = "model", resolution: Optional[int] = None) -> None:
    """Every model check that needs no weights: name, head, stem, freeze, pretrained path.

    Called at config time (before any data is read) so that a combination that can never be
    built (``logreg`` with an MLP head, a stem in front of the autoencoder, a pretrained file
    that does not exist) fails with one readable line. With ``resolution`` (the study's
    ``data.resolution``) the model's own resolution check (``ModelSpec.check``) runs too.
    """
    check_model_name(cfg.name)
    HEADS.check(cfg.head)
    parse_freeze(cfg.freeze, f"{where}.freeze")
    if cfg.stem not in ("none", "conv8_conv3"):
        raise ConfigError(f"{where}.stem: '{cfg.stem}' is not valid; valid choices: none, conv8_conv3")
    if cfg.input_mode not in ("in_chans1", "repeat3"):
        raise ConfigError(f"{where}.input_mode: '{cfg.input_mode}' is not valid; valid choices: in_chans1, repeat3")
    if cfg.width is not None and cfg.width < 1:
        raise ConfigError(f"{where}.width must be a positive integer or null, got {cfg.width}")
    spec = model_spec(cfg.name)
    if spec is not None:
        if resolution is not None and spec.check is not None:
            spec.check(cfg, int(resolution), where)
        if spec.heads is not None and cfg.head not in spec.heads:
            raise ConfigError(
                f"{where}.head: {cfg.name} only takes head {', '.join(spec.heads)}, got '{cfg.head}'"
            )
        if not spec.stem and cfg.stem != "none":
            raise ConfigError(f"{where}.stem: {cfg.name} cannot take stem '{cfg.stem}'; set stem: none")
        if cfg.pretrained is True and not spec.pretrained_hub:
            raise ConfigError(
                f"{where}.pretrained: {cfg.name} has no published weights; set pretrained: false"
                + (" or a local weights file" if spec.pretrained_file else "")
            )
        if isinstance(cfg.pretrained, str) and not spec.pretrained_file:
            raise ConfigError(f"{where}.pretrained: {cfg.name} takes no weights file; set pretrained: false")
    if isinstance(cfg.pretrained, str):
        p = Path(cfg.pretrained).expanduser()
        if not p.exists():
            raise ConfigError(
                f"{where}.pretrained: weights path {p} does not exist; give a .pth/.pt/.bin/.safetensors file "
                "or a folder holding model.safetensors or pytorch_model.bin (true = download from the hub)"
            )


# --------------------------------------------------------------------------------------------
# Thin wrappers over the torch submodules
# --------------------------------------------------------------------------------------------


def create_model(
    cfg: "ModelConfig",
    num_classes: int,
    *,
    in_chans: int = 1,
    resolution: int = 64,
    ae_weights: Union[str, Path, None] = None,
) -> "nn.Module":
    """Build the network for one :class:`~lungray.config.ModelConfig` (see the module docstring).

    ``ae_weights`` is the path returned by :func:`ensure_autoencoder`; only ``ae_encoder``
    uses it. The freeze policy is applied; frozen batch-norm layers stay in eval mode.
    """
    from lungray.models.factory import create_model as _create

    return _create(cfg, num_classes, in_chans=in_chans, resolution=resolution, ae_weights=ae_weights)


def gradcam_target(model: "nn.Module") -> tuple[list["nn.Module"], Optional[Callable[..., Any]]]:
    """``(target_layers, reshape_transform or None)`` for pytorch-grad-cam, by backbone family."""
    from lungray.models.gradcam import gradcam_target as _target

    return _target(model)


def trainable_parameter_names(model: "nn.Module") -> list[str]:
    """Names of the parameters that will be trained (``requires_grad``), DDP unwrapped."""
    from lungray.models.freeze import trainable_parameter_names as _names

    return _names(model)


def backbone_stages(model: "nn.Module") -> list[list[str]]:
    """The backbone's stages as lists of parameter names, first to last (what ``last:N`` counts)."""
    from lungray.models.freeze import backbone_stages as _stages

    return _stages(model)


def unwrap_model(model: "nn.Module") -> "nn.Module":
    """The bare model inside DDP / DataParallel / ``torch.compile`` wrappers."""
    from lungray.models.factory import unwrap_model as _unwrap

    return _unwrap(model)


def ensure_autoencoder(
    data: "PreparedData",
    seed: int,
    *,
    epochs: int,
    device: Any = "cpu",
    resolution: Optional[int] = None,
    batch_size: int = 32,
    max_images: Optional[int] = None,
    mean: Optional[float] = None,
    std: Optional[float] = None,
) -> Path:
    """Pretrain (once) the ``ae_encoder`` autoencoder on the training pool; return its file.

    See :func:`lungray.models.autoencoder.ensure_autoencoder`.
    """
    from lungray.models.autoencoder import ensure_autoencoder as _ensure

    return _ensure(
        data,
        seed,
        epochs=epochs,
        device=device,
        resolution=resolution,
        batch_size=batch_size,
        max_images=max_images,
        mean=mean,
        std=std,
    )
