"""``simple_cnn``: the X-ray capstone's CNN trained from scratch (PROTOCOLS.md section 5).

[Conv c, Conv c, BN, MaxPool] for c = 32, 64, 128 -> Flatten -> Dense 128 -> classes, on
grayscale input. ``ModelConfig.width`` sets the first block's channels (the next two double
it), so the CI smoke preset can run an 8/16/32 version of the same network.

``ModelConfig.padding``: the study's 3x3 convolutions were 'valid' (``padding: valid``:
18,129,890 weights at 299 px on one channel, counted as Keras does, nearly all in the dense
layer: 33 x 33 x 128 -> 128). The default is 'same', so the network also runs on the phantom's
32 px images, where 'valid' convolutions shrink the map to nothing after the third block
(``valid`` needs at least 36 px). The dense layer grows with resolution either way.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn as nn

from lungray.errors import ConfigError
from lungray.models.specs import simple_cnn_feature_side as feature_side

DEFAULT_WIDTH = 32  # section 5: 32, 64, 128
DENSE_UNITS = 128  # section 5: Dense 128


def conv_block(c_in: int, c_out: int, padding: str = "same") -> nn.Sequential:
    """Conv 3x3 -> ReLU -> Conv 3x3 -> ReLU -> BatchNorm -> MaxPool 2 (the capstone's order)."""
    pad = 1 if padding == "same" else 0
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(c_in, c_out, 3, padding=pad),
            act1=nn.ReLU(inplace=True),
            conv2=nn.Conv2d(c_out, c_out, 3, padding=pad),
            act2=nn.ReLU(inplace=False),  # the Grad-CAM target: keep its output tensor intact
            bn=nn.BatchNorm2d(c_out),
            pool=nn.MaxPool2d(2),
        )
    )


class SimpleCNNTrunk(nn.Module):
    """Three conv blocks -> flatten -> dense 128 -> ReLU; output (B, 128, 1, 1) for the head."""

    lungray_family = "simple_cnn"

    def __init__(self, in_chans: int, resolution: int, width: int = DEFAULT_WIDTH, padding: str = "same"):
        super().__init__()
        if padding not in ("same", "valid"):
            raise ConfigError(f"model 'simple_cnn': padding '{padding}' is not valid; valid choices: same, valid")
        chans = [width, 2 * width, 4 * width]
        blocks, c = [], in_chans
        for co in chans:
            blocks.append(conv_block(c, co, padding))
            c = co
        self.blocks = nn.Sequential(*blocks)
        side = feature_side(resolution, padding)
        if side < 1:
            need = 36 if padding == "valid" else 8
            raise ConfigError(
                f"model 'simple_cnn' with {padding} padding needs a resolution >= {need} px (three [conv, conv, "
                f"2x2 pool] blocks), got {resolution}"
            )
        self.flatten = nn.Flatten(1)
        self.dense = nn.Linear(chans[-1] * side * side, DENSE_UNITS)
        self.act = nn.ReLU(inplace=True)
        # He (Kaiming) initialisation for ReLU layers, as Keras-era CNNs effectively had: with
        # torch's default (kaiming_uniform, a=sqrt(5)) activations shrink ~3x per conv, BatchNorm's
        # running variance (initialised to 1) then dwarfs the real one and the model sits at chance
        # in eval mode for the first ~40 steps -- fatal for short CPU runs and small training sizes.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.dense(self.flatten(self.blocks(x))))
        return y[:, :, None, None]


def build_simple_cnn(
    cfg: Any,
    num_classes: int,
    *,
    in_chans: int = 1,
    resolution: int = 64,
    ae_weights: Optional[Union[str, Path]] = None,
) -> nn.Module:
    """The :data:`~lungray.models.MODELS` factory for ``simple_cnn`` (any head, optional stem)."""
    from lungray.models.factory import assemble, input_layers, load_weights

    stem, adapter, channels = input_layers(cfg, in_chans)
    body = SimpleCNNTrunk(channels, resolution, width=cfg.width or DEFAULT_WIDTH, padding=getattr(cfg, "padding", "same"))
    if isinstance(cfg.pretrained, str):
        load_weights(body, cfg.pretrained, what="the simple_cnn trunk")
    return assemble(
        cfg,
        num_classes=num_classes,
        in_chans=in_chans,
        resolution=resolution,
        stem=stem,
        adapter=adapter,
        body=body,
        channels=channels,
    )
