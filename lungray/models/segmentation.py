"""Segmentation models: a name -> a network returning per-pixel logits ``(B, K, H, W)``.

Every segmentation model takes the cached grayscale batch ``(B, in_chans, H, W)`` and returns
class logits at the INPUT resolution (softmax over ``K`` for ``K >= 2``, sigmoid for ``K == 1``
is the loss's business, :mod:`lungray.train.losses`). Names, in ``ModelConfig.name``:

``unet_keras``
    the RSNA study's U-Net (PROTOCOLS.md section 3): the Keras example "Image segmentation with
    a U-Net-like architecture" (fchollet, keras.io ``oxford_pets_image_segmentation``) as a
    PyTorch twin, same layers and the same parameter count (2,055,203 weights + 3,776
    batch-norm statistics for 3 channels and 3 classes, as the example's summary prints).
    Trained from scratch; ``model.width`` scales its 32/64/128/256 channels (CPU smoke twins).
``unet:<timm name>``
    ``segmentation_models_pytorch.Unet`` with the timm encoder ``<timm name>`` (smp's
    ``tu-<timm name>``), e.g. ``unet:resnet34``, ``unet:densenet121``, ``unet:convnext_tiny``.
    ``model.pretrained`` follows the classification rules (:func:`lungray.models.check_model_config`):
    ``true`` downloads the timm hub weights (an error naming the fix when offline), a local
    ``.pth``/``.safetensors`` file or HF-style folder is checked strictly against the encoder and
    loaded (RGB filters folded into one channel, timm's rule). ``model.freeze: backbone`` freezes
    the encoder (its batch norms stay in eval mode). ``model.width`` sets the decoder's last
    width ``w`` (channels ``16w, 8w, 4w, 2w, w``; smp's default is ``w = 16``).

Not used by segmentation models: ``model.head`` (the per-pixel head is part of the network;
leave it at its default), ``model.stem``, ``model.drop_rate``.

This module imports neither torch nor smp; the networks live in :mod:`lungray.models.unet`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from lungray.errors import ConfigError
from lungray.registry import Registry, lazy

if TYPE_CHECKING:  # pragma: no cover
    import torch.nn as nn

    from lungray.config import ModelConfig

__all__ = [
    "SEG_MODELS",
    "SegModelSpec",
    "parse_segmentation_name",
    "is_segmentation_model",
    "check_segmentation_model_config",
    "create_segmentation_model",
]


@dataclass(frozen=True)
class SegModelSpec:
    """One segmentation architecture.

    ``build(cfg, num_classes, *, in_chans, resolution, encoder)`` returns a
    :class:`lungray.models.unet.SegNet`. ``encoder``: the name takes ``:<timm encoder>``;
    ``pretrained_hub`` / ``pretrained_file``: what ``model.pretrained`` may be; ``freeze``: the
    freeze policies it accepts; ``multiple``: the input side must be a multiple of this (the
    network's total down-sampling), checked at config time.
    """

    name: str
    build: Callable[..., Any]
    encoder: bool = False
    pretrained_hub: bool = False
    pretrained_file: bool = False
    freeze: tuple[str, ...] = ("none",)
    multiple: int = 32
    doc: str = ""


SEG_MODELS: Registry[SegModelSpec] = Registry("segmentation model")
SEG_MODELS.register(
    "unet_keras",
    SegModelSpec(
        name="unet_keras",
        build=lazy("lungray.models.unet", "build_unet_keras"),
        multiple=16,
        doc="Keras-example U-Net: separable-conv residual encoder 32 -> 64/128/256, decoder 256/128/64/32",
    ),
    doc="the RSNA study's U-Net, a twin of the Keras 'U-Net-like' example (PROTOCOLS.md section 3)",
)
SEG_MODELS.register(
    "unet",
    SegModelSpec(
        name="unet",
        build=lazy("lungray.models.unet", "build_smp_unet"),
        encoder=True,
        pretrained_hub=True,
        pretrained_file=True,
        freeze=("none", "backbone"),
        multiple=32,
        doc="segmentation_models_pytorch U-Net with a timm encoder: unet:<timm name>",
    ),
    doc="smp U-Net with any timm encoder: unet:<timm name> (smp's tu-<timm name>)",
)


def _choices() -> str:
    return ", ".join(f"{n}:<timm encoder>" if SEG_MODELS.get(n).encoder else n for n in SEG_MODELS.names())


def parse_segmentation_name(name: str) -> tuple[str, Optional[str]]:
    """``"unet:resnet34"`` -> ``("unet", "resnet34")``; ``"unet_keras"`` -> ``("unet_keras", None)``.

    smp's own spelling ``unet:tu-resnet34`` is accepted too. Unknown architectures, a missing
    or unexpected encoder raise with the valid forms.

    >>> parse_segmentation_name("unet:tu-resnet18")
    ('unet', 'resnet18')
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"segmentation model name must be a non-empty string, got {name!r}; valid: {_choices()}")
    arch, sep, encoder = name.partition(":")
    if arch not in SEG_MODELS:
        close = difflib.get_close_matches(arch, SEG_MODELS.names(), n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"unknown segmentation model '{name}'{hint}; valid: {_choices()}")
    spec = SEG_MODELS.get(arch)
    if spec.encoder:
        encoder = encoder[3:] if encoder.startswith("tu-") else encoder
        if not sep or not encoder:
            raise ConfigError(f"segmentation model '{name}' needs an encoder: write {arch}:<timm name>, e.g. {arch}:resnet34")
        return arch, encoder
    if sep:
        raise ConfigError(f"segmentation model '{arch}' takes no encoder; write '{arch}'")
    return arch, None


def is_segmentation_model(name: str) -> bool:
    """Whether ``name`` is spelled as a segmentation model (its architecture is registered)."""
    return isinstance(name, str) and name.partition(":")[0] in SEG_MODELS


def check_segmentation_model_config(cfg: "ModelConfig", where: str = "model", resolution: Optional[int] = None) -> None:
    """Every check that needs no weights: name, timm encoder, pretrained, freeze, input size.

    Called at config time so a grid that can never be built fails in one readable line.
    ``resolution`` (``data.resolution``) is checked against the architecture's down-sampling.
    """
    from pathlib import Path

    arch, encoder = parse_segmentation_name(cfg.name)
    spec = SEG_MODELS.get(arch)
    if encoder is not None:
        import timm

        if not timm.is_model(encoder):
            close = difflib.get_close_matches(encoder, timm.list_models(), n=5, cutoff=0.6)
            hint = f"; close timm names: {', '.join(close)}" if close else ""
            raise ConfigError(f"{where}.name '{cfg.name}': '{encoder}' is not a timm model{hint}")
    from lungray.config import ModelConfig

    defaults = ModelConfig()
    if cfg.head != defaults.head:
        raise ConfigError(f"{where}.head: segmentation model '{cfg.name}' has its own per-pixel head; remove model.head")
    if cfg.stem != "none":
        raise ConfigError(f"{where}.stem: segmentation model '{cfg.name}' takes no stem; set stem: none")
    if cfg.input_mode not in ("in_chans1", "repeat3"):
        raise ConfigError(f"{where}.input_mode: '{cfg.input_mode}' is not valid; valid choices: in_chans1, repeat3")
    if cfg.freeze not in spec.freeze:
        raise ConfigError(f"{where}.freeze: '{cfg.freeze}' is not valid for '{cfg.name}'; valid choices: {', '.join(spec.freeze)}")
    if cfg.width is not None and cfg.width < 1:
        raise ConfigError(f"{where}.width must be a positive integer or null, got {cfg.width}")
    if cfg.pretrained is True and not spec.pretrained_hub:
        raise ConfigError(f"{where}.pretrained: '{cfg.name}' is trained from scratch (no published weights); set pretrained: false")
    if isinstance(cfg.pretrained, str):
        if not spec.pretrained_file:
            raise ConfigError(f"{where}.pretrained: '{cfg.name}' takes no weights file; set pretrained: false")
        p = Path(cfg.pretrained).expanduser()
        if not p.exists():
            raise ConfigError(
                f"{where}.pretrained: weights path {p} does not exist; give a .pth/.pt/.bin/.safetensors file "
                "or a folder holding model.safetensors or pytorch_model.bin (true = download from the hub)"
            )
    if resolution is not None and (int(resolution) < spec.multiple or int(resolution) % spec.multiple):
        raise ConfigError(
            f"segmentation model '{cfg.name}' needs data.resolution to be a multiple of {spec.multiple} "
            f"(its total down-sampling), got {resolution}"
        )


def create_segmentation_model(cfg: "ModelConfig", num_classes: int, *, in_chans: int = 1, resolution: int = 64) -> "nn.Module":
    """Build a segmentation network (a :class:`lungray.models.unet.SegNet`) for ``cfg``.

    ``num_classes`` is ``K``, the mask's class count (2 for background/foreground, softmax as
    the study's one-hot masks; 1 for a single sigmoid channel). Returns logits ``(B, K, H, W)``.
    """
    check_segmentation_model_config(cfg, resolution=resolution)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"segmentation model '{cfg.name}': num_classes must be an integer >= 1, got {num_classes!r}")
    if in_chans < 1:
        raise ConfigError(f"segmentation model '{cfg.name}': in_chans must be >= 1, got {in_chans}")
    arch, encoder = parse_segmentation_name(cfg.name)
    return SEG_MODELS.get(arch).build(cfg, num_classes, in_chans=in_chans, resolution=resolution, encoder=encoder)
