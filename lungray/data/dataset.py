"""``ImageDataset``: the torch view of a :class:`~lungray.data.prepared.PreparedData`.

Items are read from the memory-mapped cache (never decoded again), optionally augmented, scaled
to ``[0, 1]`` and normalised: ``(x, y, row)`` with ``x`` a float32 tensor ``(1, H, W)``, ``y``
the class index and ``row`` the dataset row (so predictions and Grad-CAM panels can name the
image). With ``target="mask"`` (segmentation), ``y`` is the row's mask as an int64 tensor
``(H, W)`` of class indices (255 = unknown, see :mod:`lungray.data.masks`), and the augmentation
moves image and mask with the SAME geometric transform (albumentations ``mask=`` target:
nearest-neighbour for the mask, so it stays a class-index map).

Augmentation randomness is a pure function of ``(seed, epoch, row)``: the pipeline is reseeded
from ``numpy.random.SeedSequence([seed, epoch, row])`` before each item. An epoch therefore
produces the same images whatever the DataLoader worker count, order or process, and a run
resumed at epoch ``e`` (``set_epoch(e)``) continues exactly where it stopped.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from lungray.data.augment import build_augmentation
from lungray.data.prepared import PreparedData
from lungray.errors import ConfigError


#: what an item's ``y`` is: the class index or the segmentation mask
TARGETS = ("label", "mask")


def resize_nearest(a: np.ndarray, size: int) -> np.ndarray:
    """``a`` resized to ``size x size`` by nearest neighbour with pixel centres aligned (PIL's
    ``NEAREST``, which Keras' ``load_img`` uses; OpenCV's plain ``INTER_NEAREST`` is offset)."""
    import cv2

    return cv2.resize(np.ascontiguousarray(a), (size, size), interpolation=cv2.INTER_NEAREST_EXACT)


def item_seed(seed: int, epoch: int, row: int) -> int:
    """The augmentation seed of one image in one epoch (independent streams per triple)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(row)]).generate_state(1)[0])


class ImageDataset(Dataset):
    """Rows ``indices`` of a prepared dataset as normalised tensors.

    Parameters
    ----------
    data : PreparedData
        The prepared dataset (images are memory-mapped lazily in each worker process).
    indices : sequence of int
        Dataset rows, e.g. ``data.subset(n, seed)`` for training or ``data.eval_idx``.
    augmentation : str
        An :data:`~lungray.data.augment.AUGMENTATIONS` preset; ``"none"`` for evaluation.
    mean, std : float or sequence of float
        Normalisation in ``[0, 1]`` units (see :func:`~lungray.data.augment.normalization_stats`).
        One value per channel (e.g. ImageNet's three) gives items with that many channels: the
        gray image repeated, each copy normalised with its own statistics.
    seed : int
        The trial seed; with the epoch and the row it fixes every augmentation draw.
    target : str
        ``"label"`` (the class index, classification) or ``"mask"`` (the row's mask,
        segmentation; the prepared data must have masks). The image stream is the same for
        both: the mask rides along with the image's draw.
    size : int, optional
        Resize the cached image (and mask) to ``size x size`` before augmentation, nearest
        neighbour as Keras' ``load_img`` (a model's ``input_size``: study 5's VGG19 read its
        299 px images at 224, PROTOCOLS.md section 5). ``None``: the cache's resolution.
    """

    def __init__(
        self,
        data: PreparedData,
        indices: Sequence[int],
        *,
        augmentation: str = "none",
        mean: Union[float, Sequence[float]] = 0.0,
        std: Union[float, Sequence[float]] = 1.0,
        seed: int = 0,
        target: str = "label",
        size: Optional[int] = None,
    ):
        self.data = data
        self.indices = np.asarray(indices, dtype=np.int64)
        if self.indices.ndim != 1:
            raise ConfigError(f"ImageDataset indices must be 1-D, got shape {self.indices.shape}")
        n = len(data.labels)
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= n):
            raise ConfigError(f"ImageDataset indices must lie in [0, {n}), got {self.indices.min()}..{self.indices.max()}")
        m = np.asarray(mean, dtype=np.float32).reshape(-1)
        sd = np.asarray(std, dtype=np.float32).reshape(-1)
        if not (sd > 0).all():
            raise ConfigError(f"ImageDataset std must be > 0, got {std}")
        if target not in TARGETS:
            raise ConfigError(f"ImageDataset target '{target}' is not valid; valid choices: {', '.join(TARGETS)}")
        if target == "mask" and data.masks is None:
            raise ConfigError(
                f"ImageDataset target 'mask': the prepared data at {data.root} has no masks "
                "(sources with masks: phantom, rsna, covid_radiography with masks/ folders)"
            )
        self.target = target
        if size is not None and int(size) < 1:
            raise ConfigError(f"ImageDataset size must be >= 1 pixel or None, got {size}")
        self.size = None if size is None or int(size) == data.resolution else int(size)
        if m.size != sd.size and min(m.size, sd.size) != 1:
            raise ConfigError(f"ImageDataset mean {mean} and std {std} must have one value or the same number of channels")
        self.channels = max(m.size, sd.size)
        self.augmentation = augmentation
        # (C, 1, 1): broadcast over the image; a single channel stays (1, H, W)
        self.mean = np.broadcast_to(m, (self.channels,)).reshape(-1, 1, 1).copy()
        self.std = np.broadcast_to(sd, (self.channels,)).reshape(-1, 1, 1).copy()
        self.seed = int(seed)
        self.epoch = 0
        self._pipeline: Any = None
        self._built = False
        build_augmentation(augmentation, 8)  # fail now on an unknown preset name
        self._scale = 1.0 / data.max_value

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (call before each epoch, also on resume)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> np.ndarray:
        """Class index of every item (for samplers and class weights)."""
        return np.asarray(self.data.labels)[self.indices]

    def _get_pipeline(self) -> Any:
        if not self._built:  # built lazily: albumentations objects stay out of pickles
            self._pipeline = build_augmentation(self.augmentation, self.size or self.data.resolution)
            self._built = True
        return self._pipeline

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_pipeline"] = None
        state["_built"] = False
        return state

    def __getitem__(self, i: Union[int, tuple[int, int]]) -> tuple[torch.Tensor, Union[int, torch.Tensor], int]:
        """Item ``i`` in the current epoch's stream, or ``(epoch, i)``.

        The pair form carries the epoch with the index: persistent DataLoader workers hold their
        own copy of the dataset, which :meth:`set_epoch` in the main process never reaches,
        whereas the sampler runs in the main process (:class:`lungray.train.loop.EpochTagged`).
        """
        epoch = self.epoch
        if isinstance(i, tuple):
            epoch, i = i
        row = int(self.indices[i])
        img = np.asarray(self.data.images[row], dtype=np.float32) * self._scale
        mask = np.asarray(self.data.masks[row]) if self.target == "mask" else None
        if self.size is not None:
            img, mask = resize_nearest(img, self.size), (None if mask is None else resize_nearest(mask, self.size))
        pipe = self._get_pipeline() if self.augmentation != "none" else None
        if pipe is not None:
            pipe.set_random_seed(item_seed(self.seed, epoch, row))
            if mask is None:
                img = np.asarray(pipe(image=img)["image"], dtype=np.float32)
            else:
                out = pipe(image=img, mask=mask)
                img, mask = np.asarray(out["image"], dtype=np.float32), np.asarray(out["mask"])
            if img.ndim == 3:
                img = img[..., 0]
        x = torch.from_numpy(np.ascontiguousarray((img[None] - self.mean) / self.std, dtype=np.float32))
        if mask is not None:
            return x, torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64)), row
        return x, int(self.data.labels[row]), row
