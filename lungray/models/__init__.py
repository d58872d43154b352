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

This module is the package's face: the registries and checks of :mod:`lungray.models.specs`
(no torch), and thin wrappers that import the torch submodules on first use, so config
validation (:mod:`lungray.train.validate`) stays cheap. The submodules import
:mod:`lungray.models.specs`, never this module.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from lungray.models.specs import (
    FREEZE_POLICIES,
    GRADCAM_LAYERS,
    HEADS,
    MODELS,
    TV_CLASSIFIER_PREFIXES,
    TV_PREFIX,
    HeadSpec,
    ModelSpec,
    check_model_config,
    check_model_name,
    input_channels,
    model_spec,
    parse_freeze,
    simple_cnn_feature_side,
    suggest_model_names,
)
from lungray.models.specs import __all__ as _specs_all

if TYPE_CHECKING:  # pragma: no cover
    import torch.nn as nn

    from lungray.config import ModelConfig
    from lungray.data.prepared import PreparedData

__all__ = [  # the registries and checks of :mod:`lungray.models.specs`, then the torch-side wrappers
    *_specs_all,
    "TV_PREFIX",
    "TV_CLASSIFIER_PREFIXES",
    "create_model",
    "gradcam_target",
    "parameter_counts",
    "trainable_parameter_names",
    "backbone_stages",
    "ensure_autoencoder",
    "unwrap_model",
]


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


def gradcam_target(
    model: "nn.Module", layer: Optional[str] = None
) -> tuple[list["nn.Module"], Optional[Callable[..., Any]]]:
    """``(target_layers, reshape_transform or None)`` for pytorch-grad-cam.

    ``layer`` (default: the model's ``ModelConfig.gradcam_layer``): ``auto`` is the backbone
    family's layer, ``last_conv`` the last convolution (the studies' choice), anything else a
    module path inside the model.
    """
    from lungray.models.gradcam import gradcam_target as _target

    return _target(model, layer)


def parameter_counts(model: "nn.Module") -> Any:
    """Trainable, frozen and batch-norm-statistics counts (:class:`~lungray.models.factory.ParamCounts`).

    ``.keras_total`` is what Keras' ``model.summary()`` calls "Total params", the figure the
    studies published (PROTOCOLS.md).
    """
    from lungray.models.factory import parameter_counts as _counts

    return _counts(model)


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
    mean: Optional[Any] = None,
    std: Optional[Any] = None,
    in_chans: int = 1,
    pretrain_class: Optional[str] = None,
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
        in_chans=in_chans,
        pretrain_class=pretrain_class,
    )
