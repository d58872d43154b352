"""Segmentation networks: the RSNA study's Keras U-Net twin and smp U-Nets with timm encoders.

Both are wrapped in :class:`SegNet` (optional grayscale -> RGB adapter, frozen batch norms kept
in eval mode, the metadata a trainer and a checkpoint need) and return logits ``(B, K, H, W)``
at the input resolution. The registry and the config checks are in
:mod:`lungray.models.segmentation`.

:class:`KerasUNet` is layer for layer the Keras example the study built on (fchollet,
"Image segmentation with a U-Net-like architecture", keras.io ``oxford_pets_image_segmentation``,
PROTOCOLS.md section 3):

* entry: Conv 3x3 stride 2 (32) -> BN -> ReLU;
* down blocks 64, 128, 256: [ReLU -> SeparableConv 3x3 -> BN] x 2 -> MaxPool 3 stride 2, plus a
  residual 1x1 conv stride 2 from the block input, added;
* up blocks 256, 128, 64, 32: [ReLU -> ConvTranspose 3x3 -> BN] x 2 -> UpSample 2, plus a
  residual UpSample 2 -> 1x1 conv from the block input, added;
* head: Conv 3x3 to K classes (the example's softmax is left to the loss: logits out).

Keras details kept: ``padding="same"`` for strided layers pads like TensorFlow (the extra pixel
at the bottom/right, not on both sides), SeparableConv2D is a bias-free depthwise 3x3 followed
by a biased pointwise 1x1, UpSampling2D is nearest-neighbour, BatchNormalization has
``momentum=0.99`` (PyTorch 0.01) and ``epsilon=1e-3``.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from lungray.errors import ConfigError

log = logging.getLogger(__name__)

KERAS_WIDTH = 32  # the example's entry width; blocks are 2x, 4x, 8x of it
SMP_DECODER_WIDTH = 16  # smp's default decoder_channels end at 16: (256, 128, 64, 32, 16)


# --------------------------------------------------------------------------------------------
# the wrapper
# --------------------------------------------------------------------------------------------


class SegNet(nn.Module):
    """adapter -> segmentation network, with what the trainer, checkpoints and reports read.

    ``task`` is ``"segmentation"``; ``frozen_norms`` lists batch-norm modules a freeze policy
    froze, held in eval mode by :meth:`train` (the reason is in
    :class:`lungray.models.factory.LungrayNet`).
    """

    task = "segmentation"

    def __init__(
        self,
        net: nn.Module,
        *,
        adapter: nn.Module,
        name: str,
        num_classes: int,
        in_chans: int,
        resolution: int,
    ):
        super().__init__()
        self.adapter = adapter
        self.net = net
        self.name = name
        self.num_classes = int(num_classes)
        self.in_chans = int(in_chans)
        self.resolution = int(resolution)
        self.freeze = "none"
        self.frozen_norms: list[str] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.adapter(x))

    def train(self, mode: bool = True) -> "SegNet":
        super().train(mode)
        if mode:
            for name in self.frozen_norms:
                self.get_submodule(name).eval()
        return self

    def freeze_encoder(self) -> None:
        """``freeze: backbone``: the encoder's weights frozen, its batch norms in eval mode."""
        encoder = getattr(self.net, "encoder", None)
        if encoder is None:
            raise ConfigError(f"segmentation model '{self.name}' has no encoder to freeze")
        for p in encoder.parameters():
            p.requires_grad_(False)
        self.frozen_norms = [
            f"net.encoder.{n}" if n else "net.encoder"
            for n, m in encoder.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        ]
        self.freeze = "backbone"


def _adapter(cfg: Any, in_chans: int) -> tuple[nn.Module, int]:
    """(adapter, channels the network receives) for ``cfg.input_mode``."""
    from lungray.models.net import RepeatChannels

    if cfg.input_mode == "repeat3" and in_chans == 1:
        return RepeatChannels(3), 3
    return nn.Identity(), in_chans


# --------------------------------------------------------------------------------------------
# the Keras example's U-Net
# --------------------------------------------------------------------------------------------


def _tf_same_pad(x: torch.Tensor, k: int, s: int, value: float = 0.0) -> torch.Tensor:
    """TensorFlow ``padding="same"`` for kernel ``k``, stride ``s``: the odd pixel goes bottom/right."""
    h, w = x.shape[-2:]
    ph = max((math.ceil(h / s) - 1) * s + k - h, 0)
    pw = max((math.ceil(w / s) - 1) * s + k - w, 0)
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=value)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'same' padding (for the strided entry convolution)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_tf_same_pad(x, self.kernel_size[0], self.stride[0]))


class SameMaxPool2d(nn.MaxPool2d):
    """MaxPool2d with TensorFlow 'same' padding (padded cells never win)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_tf_same_pad(x, int(self.kernel_size), int(self.stride), value=float("-inf")))


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)  # Keras defaults (momentum 0.99)


class SeparableConv2d(nn.Module):
    """Keras SeparableConv2D(filters, 3, padding="same"): depthwise 3x3 (no bias) -> pointwise 1x1."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.depthwise = nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False)
        self.pointwise = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class DownBlock(nn.Module):
    """[ReLU -> SeparableConv -> BN] x 2 -> MaxPool 3/2, plus a strided 1x1 residual projection."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.main = nn.Sequential(
            OrderedDict(
                act1=nn.ReLU(),
                sep1=SeparableConv2d(c_in, c_out),
                bn1=_bn(c_out),
                act2=nn.ReLU(),
                sep2=SeparableConv2d(c_out, c_out),
                bn2=_bn(c_out),
                pool=SameMaxPool2d(3, stride=2),
            )
        )
        self.residual = nn.Conv2d(c_in, c_out, 1, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.residual(x)


class UpBlock(nn.Module):
    """[ReLU -> ConvTranspose 3x3 -> BN] x 2 -> UpSample 2, plus UpSample 2 -> 1x1 conv residual."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.main = nn.Sequential(
            OrderedDict(
                act1=nn.ReLU(),
                deconv1=nn.ConvTranspose2d(c_in, c_out, 3, padding=1),
                bn1=_bn(c_out),
                act2=nn.ReLU(),
                deconv2=nn.ConvTranspose2d(c_out, c_out, 3, padding=1),
                bn2=_bn(c_out),
                up=nn.Upsample(scale_factor=2, mode="nearest"),
            )
        )
        self.residual = nn.Sequential(
            OrderedDict(up=nn.Upsample(scale_factor=2, mode="nearest"), proj=nn.Conv2d(c_in, c_out, 1))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.residual(x)


class KerasUNet(nn.Module):
    """The Keras example's U-Net (see the module docstring); ``width`` 32 is the example."""

    def __init__(self, in_chans: int, num_classes: int, width: int = KERAS_WIDTH):
        super().__init__()
        w = int(width)
        self.entry = nn.Sequential(
            OrderedDict(conv=SameConv2d(in_chans, w, 3, stride=2), bn=_bn(w), act=nn.ReLU())
        )
        down, c = [], w
        for f in (2 * w, 4 * w, 8 * w):
            down.append(DownBlock(c, f))
            c = f
        up = []
        for f in (8 * w, 4 * w, 2 * w, w):
            up.append(UpBlock(c, f))
            c = f
        self.down = nn.Sequential(*down)
        self.up = nn.Sequential(*up)
        self.head = nn.Conv2d(w, num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.up(self.down(self.entry(x))))


def build_unet_keras(cfg: Any, num_classes: int, *, in_chans: int = 1, resolution: int = 64, encoder: Optional[str] = None) -> SegNet:
    """``unet_keras``: the study's U-Net (width ``cfg.width`` or 32)."""
    adapter, channels = _adapter(cfg, in_chans)
    net = KerasUNet(channels, num_classes, width=cfg.width or KERAS_WIDTH)
    return SegNet(net, adapter=adapter, name=cfg.name, num_classes=num_classes, in_chans=in_chans, resolution=resolution)


# --------------------------------------------------------------------------------------------
# segmentation_models_pytorch U-Net with a timm encoder
# --------------------------------------------------------------------------------------------


def encoder_state_dict(encoder: str, path: Any, *, in_chans: int, resolution: int) -> dict[str, torch.Tensor]:
    """The timm encoder's weights from a local file, checked strictly, RGB folded to ``in_chans``.

    Reuses the classification loader (:func:`lungray.models.factory.timm_body`): a file of the
    wrong architecture is an error naming the file, never a silently random encoder.
    """
    from lungray.models.factory import timm_body

    body, _ = timm_body(encoder, in_chans=in_chans, resolution=resolution, pretrained=str(path))
    return {k: v.detach().clone() for k, v in body.state_dict().items()}


def build_smp_unet(cfg: Any, num_classes: int, *, in_chans: int = 1, resolution: int = 64, encoder: Optional[str] = None) -> SegNet:
    """``unet:<timm name>``: ``smp.Unet(encoder_name="tu-<timm name>")`` (see the registry doc)."""
    import segmentation_models_pytorch as smp

    from lungray.models.factory import _hub_error

    if not encoder:
        raise ConfigError(f"segmentation model '{cfg.name}' needs an encoder: unet:<timm name>")
    adapter, channels = _adapter(cfg, in_chans)
    w = int(cfg.width or SMP_DECODER_WIDTH)
    kwargs: dict[str, Any] = {}
    weights: Optional[bool] = None
    if cfg.pretrained is True:
        weights = True
    elif isinstance(cfg.pretrained, str):
        # timm loads a state dict given in the pretrained config before it wraps the model for
        # features_only, so the names match the classification model's
        import timm

        sd = encoder_state_dict(encoder, cfg.pretrained, in_chans=channels, resolution=resolution)
        size = tuple(getattr(timm.get_pretrained_cfg(encoder), "input_size", None) or (3, 224, 224))
        # the state dict is already folded to `channels`: say so, or timm warns on every build
        kwargs["pretrained_cfg_overlay"] = {"state_dict": sd, "input_size": (channels,) + size[1:]}
        weights = True
    try:
        net = smp.Unet(
            encoder_name=f"tu-{encoder}",
            encoder_weights=weights,
            in_channels=channels,
            classes=num_classes,
            decoder_channels=(16 * w, 8 * w, 4 * w, 2 * w, w),
            **kwargs,
        )
    except Exception as e:
        if cfg.pretrained is True:
            raise _hub_error(cfg.name, e) from e
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"segmentation model '{cfg.name}': timm '{encoder}' cannot serve as a U-Net encoder ({msg})") from None
    model = SegNet(net, adapter=adapter, name=cfg.name, num_classes=num_classes, in_chans=in_chans, resolution=resolution)
    if cfg.freeze == "backbone":
        model.freeze_encoder()
    return model
