"""Augmentation presets (albumentations 2) and normalisation presets, as registries.

``AUGMENTATIONS``: name -> ``factory(resolution) -> albumentations.Compose | None``. A preset
reproduces the augmentation a study used, so a sweep YAML names a protocol, not a pipeline:

- ``none``: no augmentation (evaluation, and the smoke preset).
- ``rot30_zoom_flip``: rotation +-30 deg, zoom 0.1 (scale 0.9-1.1 per axis), horizontal and
  vertical flips: the training-size study (PROTOCOLS.md section 1, Keras ``rotation_range=30,
  zoom_range=0.1, horizontal_flip, vertical_flip``). Edges replicate, as Keras'
  ``fill_mode="nearest"`` default does.
- ``rot_hflip``: rotation +-15 deg and a horizontal flip (the 4-class study, PROTOCOLS.md
  section 4, torchvision ``RandomRotation`` + ``RandomHorizontalFlip``; its angle is not
  reported, 15 deg is the common choice). Corners fill with black, torchvision's default.
- ``shift_shear_zoom``: rotation +-15 deg, zoom 0.2, width/height shift 0.2 and shear: the
  CNN-from-scratch study (PROTOCOLS.md section 5). Its shear value is not reported; +-10 deg is
  used (Keras reads ``shear_range`` in degrees, so the customary ``0.2`` would be a no-op).
  Edges replicate (Keras ``fill_mode="nearest"``).

- ``rot15_nearest``: rotation +-15 deg only, edges filled with the nearest pixel: the Grad-CAM
  study (PROTOCOLS.md section 2, Keras ``ImageDataGenerator(rotation_range=15,
  fill_mode="nearest")``, the tutorial it followed).

Every transform draws from the Compose's own generator; :class:`lungray.data.dataset.ImageDataset`
reseeds it per (seed, epoch, image), so an epoch is identical on a resumed run or another worker.

``NORMALIZATIONS``: name -> ``fn(data, channels, fixed) -> (mean, std)`` in ``[0, 1]`` units:

- ``imagenet``: ImageNet statistics; for 1 channel the luminance-weighted (ITU-R 601) mean/std
  0.4589/0.2256 (what an ImageNet network sees on a gray image), for 3 channels per channel
  (0.485/0.456/0.406, 0.229/0.224/0.225: torchvision's ``Normalize`` in sections 3-4; a model
  with ``input_mode: repeat3`` receives the gray image as 3 channels normalised this way).
- ``pool``: mean/std of the training pool (the "radiograph-specific" statistics that gave fewer
  COVID/viral-pneumonia images missed as Normal in PROTOCOLS.md section 4), computed per study.
- ``fixed``: the numbers in ``train.norm_mean`` / ``train.norm_std`` (one value, or one per
  channel): published radiograph statistics used as constants, as the 4-class study did.
- ``none``: mean 0, std 1.
- ``keras_caffe``: Keras ``imagenet_utils.preprocess_input`` in ``caffe`` mode, what
  ``vgg16/vgg19.preprocess_input`` do (the VGG19 reference of PROTOCOLS.md section 5): pixels
  in 0-255, RGB turned to BGR, the ImageNet mean subtracted per channel, no scaling. As
  ``(x - mean) / std`` in ``[0, 1]`` units: mean ``(103.939, 116.779, 123.68) / 255`` in the
  network's (BGR) channel order and std ``1 / 255``; a gray image repeated to 3 channels is the
  same in either order, so only the per-channel means matter. One channel: the luminance-weighted
  mean. (The caffe-converted Keras VGG weights expect this input; torchvision's and timm's VGG
  weights were trained on ImageNet-normalised RGB, so with them this reproduces the study's
  preprocessing, not its features.)
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

from lungray.registry import Registry

AugFactory = Callable[[int], Any]

AUGMENTATIONS: Registry[AugFactory] = Registry("augmentation")
NORMALIZATIONS: Registry[Callable[..., tuple]] = Registry("normalization")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_LUMA = (0.299, 0.587, 0.114)


@AUGMENTATIONS.register("none")
def no_augmentation(resolution: int) -> None:
    """No augmentation."""
    return None


@AUGMENTATIONS.register("rot30_zoom_flip")
def rot30_zoom_flip(resolution: int) -> Any:
    """Rotation +-30, zoom 0.1, h+v flips (training-size study, PROTOCOLS.md section 1)."""
    import albumentations as A
    import cv2

    return A.Compose(
        [
            A.Affine(rotate=(-30, 30), scale=(0.9, 1.1), border_mode=cv2.BORDER_REPLICATE, p=1.0),
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
        ]
    )


@AUGMENTATIONS.register("rot_hflip")
def rot_hflip(resolution: int) -> Any:
    """Rotation +-15 and a horizontal flip (4-class study, PROTOCOLS.md section 4)."""
    import albumentations as A
    import cv2

    return A.Compose(
        [
            A.Affine(rotate=(-15, 15), border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0),
            A.HorizontalFlip(p=0.5),
        ]
    )


@AUGMENTATIONS.register("shift_shear_zoom")
def shift_shear_zoom(resolution: int) -> Any:
    """Rotation 15, zoom 0.2, shift 0.2, shear (CNN-from-scratch study, PROTOCOLS.md section 5)."""
    import albumentations as A
    import cv2

    return A.Compose(
        [
            A.Affine(
                rotate=(-15, 15),
                scale=(0.8, 1.2),
                translate_percent=(-0.2, 0.2),
                shear=(-10, 10),
                border_mode=cv2.BORDER_REPLICATE,
                p=1.0,
            )
        ]
    )


@AUGMENTATIONS.register("rot15_nearest")
def rot15_nearest(resolution: int) -> Any:
    """Rotation +-15 only, nearest-pixel fill (Grad-CAM study, PROTOCOLS.md section 2)."""
    import albumentations as A
    import cv2

    return A.Compose([A.Affine(rotate=(-15, 15), border_mode=cv2.BORDER_REPLICATE, p=1.0)])


def build_augmentation(name: str, resolution: int) -> Any:
    """The albumentations pipeline for a preset (``None`` for ``none``)."""
    return AUGMENTATIONS.get(name)(resolution)


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------

Stat = Union[float, tuple[float, ...]]


def _per_channel(value: float, channels: int) -> Stat:
    return float(value) if channels == 1 else tuple(float(value) for _ in range(channels))


@NORMALIZATIONS.register("imagenet")
def imagenet_stats(data: Any = None, channels: int = 1, fixed: Any = None) -> tuple[Stat, Stat]:
    """ImageNet mean/std: luminance-weighted for 1 channel, per channel for 3."""
    if channels == 3:
        return tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)
    mean = sum(w * m for w, m in zip(_LUMA, IMAGENET_MEAN))
    std = sum(w * s for w, s in zip(_LUMA, IMAGENET_STD))
    return _per_channel(mean, channels), _per_channel(std, channels)


@NORMALIZATIONS.register("pool")
def pool_stats(data: Any = None, channels: int = 1, fixed: Any = None) -> tuple[Stat, Stat]:
    """Mean/std of the training pool (``PreparedData.pool_mean_std``), the radiograph statistics."""
    if data is None:
        from lungray.errors import ConfigError

        raise ConfigError("normalization 'pool' needs the prepared data (the training pool) to compute mean/std")
    mean, std = data.pool_mean_std()
    return _per_channel(mean, channels), _per_channel(std, channels)


#: Keras caffe-mode means (B, G, R), 0-255 units (keras.applications.imagenet_utils)
KERAS_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@NORMALIZATIONS.register("keras_caffe")
def keras_caffe_stats(data: Any = None, channels: int = 1, fixed: Any = None) -> tuple[Stat, Stat]:
    """Keras ``preprocess_input`` (caffe mode): x * 255 - the BGR ImageNet mean, no scaling (section 5)."""
    mean = tuple(m / 255.0 for m in KERAS_CAFFE_MEAN_BGR)
    std = 1.0 / 255.0
    if channels == 3:
        return mean, (std, std, std)
    rgb = mean[::-1]
    return _per_channel(sum(w * m for w, m in zip(_LUMA, rgb)), channels), _per_channel(std, channels)


@NORMALIZATIONS.register("none")
def no_normalization(data: Any = None, channels: int = 1, fixed: Any = None) -> tuple[Stat, Stat]:
    """Mean 0, std 1 (pixels stay in [0, 1])."""
    return _per_channel(0.0, channels), _per_channel(1.0, channels)


def check_fixed_stats(name: str, mean: Optional[Sequence[float]], std: Optional[Sequence[float]], where: str = "train") -> None:
    """``fixed`` needs ``norm_mean``/``norm_std`` (1 or 3 numbers each, std > 0); others take none."""
    from lungray.errors import ConfigError

    if name != "fixed":
        if mean is not None or std is not None:
            raise ConfigError(f"{where}: norm_mean/norm_std are only read by normalization 'fixed', not '{name}'")
        return
    if mean is None or std is None:
        raise ConfigError(f"{where}: normalization 'fixed' needs norm_mean and norm_std (in [0, 1] units, 1 or 3 values each)")
    if len(mean) not in (1, 3) or len(std) not in (1, 3):
        raise ConfigError(f"{where}: norm_mean/norm_std take 1 value or one per channel (3), got {list(mean)} / {list(std)}")
    if not all(s > 0 for s in std):
        raise ConfigError(f"{where}: norm_std must be > 0, got {list(std)}")


@NORMALIZATIONS.register("fixed")
def fixed_stats(data: Any = None, channels: int = 1, fixed: Any = None) -> tuple[Stat, Stat]:
    """``train.norm_mean`` / ``train.norm_std`` as given (radiograph statistics, section 4)."""
    mean, std = fixed if fixed is not None else (None, None)
    check_fixed_stats("fixed", mean, std)

    def fit(v: Sequence[float]) -> Stat:
        v = [float(x) for x in v]
        if channels == 1:
            return v[0] if len(v) == 1 else sum(w * x for w, x in zip(_LUMA, v))
        return tuple(v) if len(v) == channels else tuple(v[0] for _ in range(channels))

    return fit(mean), fit(std)


def normalization_stats(
    name: str, data: Any = None, channels: int = 1, fixed: Optional[tuple[Any, Any]] = None
) -> tuple[Stat, Stat]:
    """(mean, std) of the named normalisation: floats for 1 channel, 3-tuples for 3 channels.

    ``fixed`` is ``(train.norm_mean, train.norm_std)`` for the ``fixed`` normalisation.
    """
    if channels not in (1, 3):
        from lungray.errors import ConfigError

        raise ConfigError(f"normalization supports 1 or 3 channels, got {channels}")
    return NORMALIZATIONS.get(name)(data, channels, fixed)
