"""The assembled network: stem -> channel adapter -> backbone trunk -> head.

:class:`LungrayNet` and its pieces (:class:`Backbone`, :class:`RepeatChannels`, the
``conv8_conv3`` stem) are what every builder returns and what the freeze policies and Grad-CAM
layer resolution walk; :func:`unwrap_model` strips DDP/``torch.compile`` wrappers. Builders live in
:mod:`lungray.models.factory`, which imports this module, as do :mod:`~lungray.models.freeze`
and :mod:`~lungray.models.gradcam`.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from lungray.errors import ConfigError
from lungray.models._families import tokens_to_map

__all__ = ["RepeatChannels", "make_stem", "Backbone", "LungrayNet", "unwrap_model"]


class RepeatChannels(nn.Module):
    """``input_mode: repeat3``: a grayscale batch (B, 1, H, W) seen as RGB (B, 3, H, W)."""

    def __init__(self, channels: int = 3):
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, self.channels, -1, -1) if x.shape[1] == 1 else x


def make_stem(name: str, in_chans: int) -> nn.Module:
    """``conv8_conv3``: Conv2D(8, 3x3) -> Conv2D(3, 3x3) before the backbone (section 1).

    No activation between or after (the protocol lists none): the stem is a learned linear
    mapping of the input onto the 3 channels a pretrained trunk expects, and a ReLU would clip
    half the normalised intensity range before the pretrained filters see it. 'same' padding
    keeps the backbone's input at the configured resolution (ViT grids and Grad-CAM maps line
    up); the parameter count is the protocol's 224 + 219 at 3 input channels.
    """
    if name == "none":
        return nn.Identity()
    if name == "conv8_conv3":
        return nn.Sequential(
            OrderedDict(conv1=nn.Conv2d(in_chans, 8, 3, padding=1), conv2=nn.Conv2d(8, 3, 3, padding=1))
        )
    raise ConfigError(f"model.stem: '{name}' is not valid; valid choices: none, conv8_conv3")


class Backbone(nn.Module):
    """A trunk without classifier whose output is always a feature map (B, C, h, w).

    ``body`` is the timm model (``num_classes=0, global_pool=''``), the torchvision trunk or
    lungray's own. Transformer tokens (B, N, C) are reshaped to the patch grid with the prefix
    (class/register) tokens dropped; vectors (B, C) become (B, C, 1, 1).
    """

    def __init__(self, body: nn.Module, family: str, *, call: str = "forward"):
        super().__init__()
        self.body = body
        self.family = family
        self.call = call
        self.num_prefix_tokens = int(getattr(body, "num_prefix_tokens", 0) or 0)
        grid = getattr(getattr(body, "patch_embed", None), "grid_size", None)
        self.grid = tuple(int(g) for g in grid) if grid is not None else None
        self.nhwc = str(getattr(body, "output_fmt", "NCHW")) == "NHWC"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x) if self.call == "forward" else self.body.forward_features(x)
        if y.ndim == 3:
            return tokens_to_map(y, self.num_prefix_tokens, self.grid)
        if y.ndim == 2:
            return y[:, :, None, None]
        if self.nhwc:
            return y.permute(0, 3, 1, 2)
        return y


class LungrayNet(nn.Module):
    """stem -> adapter -> backbone -> head, with the metadata the loop and the report need.

    Batch-norm layers whose weights a freeze policy froze are kept in eval mode by
    :meth:`train`: in train mode they would keep updating their running statistics from the
    (tiny: 4 images in the training-size study) training batches and normalise with batch
    statistics, so the "frozen" pretrained features would drift and differ between training and
    evaluation. Keras does the same for a BatchNormalization layer with ``trainable=False``.
    """

    def __init__(
        self,
        *,
        stem: nn.Module,
        adapter: nn.Module,
        backbone: Backbone,
        head: nn.Module,
        name: str,
        head_name: str,
        num_classes: int,
        in_chans: int,
        resolution: int,
        feature_shape: tuple[int, ...],
    ):
        super().__init__()
        self.stem = stem
        self.adapter = adapter
        self.backbone = backbone
        self.head = head
        self.name = name
        self.head_name = head_name
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.resolution = resolution
        self.feature_shape = tuple(int(v) for v in feature_shape)
        self.freeze = "none"
        self.frozen_norms: list[str] = []
        self.gradcam_layer = "auto"  # ModelConfig.gradcam_layer; resolved by lungray.models.gradcam_target

    @property
    def family(self) -> str:
        return self.backbone.family

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(self.adapter(self.stem(x))))

    def train(self, mode: bool = True) -> "LungrayNet":
        super().train(mode)
        if mode:
            for name in self.frozen_norms:
                self.get_submodule(name).eval()
        return self


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside DDP / DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``)."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while True:
        if isinstance(model, (DistributedDataParallel, DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model
