"""Classification heads, as the studies built them (registered in :data:`lungray.models.HEADS`).

Every head receives the backbone's feature map ``(B, C, h, w)`` (token models are reshaped to a
grid first) and returns logits ``(B, num_classes)``; softmax lives in the loss. The final
linear layer is always called ``fc``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F


class GlobalAvgPool(nn.Module):
    """(B, C, h, w) -> (B, C): Keras' GlobalAveragePooling2D."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class BatchNorm1dAnyBatch(nn.BatchNorm1d):
    """BatchNorm1d that uses its running statistics for a training batch of one sample.

    Batch statistics of a single sample are undefined (PyTorch raises). With the training-size
    study's batch size 4 (PROTOCOLS.md section 1) a subset of 101 images leaves a last batch of
    one; normalising that one sample with the running statistics is what Keras' layer would do
    at inference and is better than crashing the trial.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


def linear_head(feature_shape: tuple[int, int, int], num_classes: int, drop_rate: float = 0.0) -> nn.Module:
    """Global average pool -> linear: the "last layer replaced" transfer of sections 3-4.

    No dropout: the plain linear probe the studies compare against.
    """
    c = feature_shape[0]
    return nn.Sequential(OrderedDict(pool=GlobalAvgPool(), fc=nn.Linear(c, num_classes)))


def bn_mlp256_head(feature_shape: tuple[int, int, int], num_classes: int, drop_rate: float = 0.5) -> nn.Module:
    """GAP -> BN -> dropout -> dense 256 -> BN -> ReLU -> dropout -> classes (section 1).

    The training-size study lists Dense(256) with no activation; its parameter counts cannot
    tell, and a hidden layer without a nonlinearity collapses into the output layer, so a ReLU
    follows the second batch norm. With a 2048-channel ResNet-50 trunk and 2 classes the head
    holds 534,274 weights counted the Keras way (batch-norm running mean/variance included),
    the protocol's 8,192 + 524,544 + 1,024 + 514.
    """
    c = feature_shape[0]
    return nn.Sequential(
        OrderedDict(
            pool=GlobalAvgPool(),
            bn1=BatchNorm1dAnyBatch(c),
            drop1=nn.Dropout(drop_rate),
            fc1=nn.Linear(c, 256),
            bn2=BatchNorm1dAnyBatch(256),
            act=nn.ReLU(inplace=True),
            drop2=nn.Dropout(drop_rate),
            fc=nn.Linear(256, num_classes),
        )
    )


def pool_mlp64_head(feature_shape: tuple[int, int, int], num_classes: int, drop_rate: float = 0.5) -> nn.Module:
    """AveragePooling2D(4x4) -> flatten -> dense 64 -> ReLU -> dropout 0.5 -> classes (section 2).

    At 224 px the trunks give a 7x7 map, which a 4x4 'valid' pool turns into 1x1, as in the
    Grad-CAM study. Smaller maps (the phantom's 32-64 px) get a pool window clipped to the map;
    larger ones keep several pooled cells, flattened as Keras' Flatten would.
    """
    c, h, w = feature_shape
    k = max(1, min(4, h, w))
    oh, ow = h // k, w // k
    return nn.Sequential(
        OrderedDict(
            pool=nn.AvgPool2d(kernel_size=k, stride=k),
            flatten=nn.Flatten(1),
            fc1=nn.Linear(c * oh * ow, 64),
            act=nn.ReLU(inplace=True),
            drop=nn.Dropout(drop_rate),
            fc=nn.Linear(64, num_classes),
        )
    )


def bn_pool_mlp64_head(feature_shape: tuple[int, int, int], num_classes: int, drop_rate: float = 0.5) -> nn.Module:
    """BatchNorm -> AveragePooling2D(4x4) -> flatten -> dense 64 -> ReLU -> dropout -> classes.

    The Grad-CAM study's DenseNet-121 and ResNet-50 (PROTOCOLS.md section 2) put a
    BatchNormalization on the frozen trunk's feature map before the pooling of
    :func:`pool_mlp64_head`; VGG16 there had none. The batch norm is part of the (trainable) head.
    """
    c = feature_shape[0]
    pool = pool_mlp64_head(feature_shape, num_classes, drop_rate)
    return nn.Sequential(OrderedDict([("bn", nn.BatchNorm2d(c)), *pool.named_children()]))


def mlp128_head(feature_shape: tuple[int, int, int], num_classes: int, drop_rate: float = 0.0) -> nn.Module:
    """Global average pool -> Linear(C, 128) -> ReLU -> Linear(128, classes).

    The RSNA study's ResNet-101 replaced torchvision's ``fc`` with exactly this
    (``Linear(2048, 128) -> ReLU -> Linear(128, 2)``, PROTOCOLS.md section 3): 262,530 weights.
    No dropout, as there.
    """
    c = feature_shape[0]
    return nn.Sequential(
        OrderedDict(
            pool=GlobalAvgPool(),
            fc1=nn.Linear(c, 128),
            act=nn.ReLU(inplace=True),
            fc=nn.Linear(128, num_classes),
        )
    )


class GlobalMaxPool(nn.Module):
    """(B, C, h, w) -> (B, C): Keras' GlobalMaxPooling2D."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(2, 3))


def gmp_mlp128_head(feature_shape: tuple[int, int, int], num_classes: int, drop_rate: float = 0.0) -> nn.Module:
    """GlobalMaxPooling2D -> dense 128 -> ReLU -> classes (the frozen VGG19 reference, section 5).

    The CNN-from-scratch study's reference network: VGG19 frozen, then GlobalMaxPool ->
    Dense 128 -> Dense 2 (PROTOCOLS.md section 5; the usual Keras ReLU on the hidden layer).
    """
    c = feature_shape[0]
    return nn.Sequential(
        OrderedDict(
            pool=GlobalMaxPool(),
            fc1=nn.Linear(c, 128),
            act=nn.ReLU(inplace=True),
            fc=nn.Linear(128, num_classes),
        )
    )


def tv_classifier_head(feature_shape: tuple[int, int, int], num_classes: int, drop_rate: float = 0.0) -> nn.Module:
    """Placeholder: ``tv_classifier`` is built from the torchvision model itself
    (:class:`lungray.models.factory.TVClassifierHead`), never from a feature shape."""
    from lungray.errors import ConfigError

    raise ConfigError("head tv_classifier keeps a torchvision classifier: use it with tv:alexnet or tv:vgg* models")
