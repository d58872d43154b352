"""The contract between the data layer and everything that trains: :class:`PreparedData`.

A prepared dataset is a directory written once per (manifest, resolution, preprocessing):

``images.npy``      (N, H, W) uint8 or uint16, decoded, resized, preprocessed; memory-mapped
``labels.npy``      (N,) int64 class indices into ``class_names``
``masks.npy``       optional (N, H, W) uint8 class index per pixel (0 background, 1 foreground,
                    255 unknown), same geometry as the image; ``meta.json`` ``mask_kind`` says
                    what they mark (:mod:`lungray.data.masks`)
``lung_masks.npy``  optional (N, H, W) uint8 0/1 lung fields beside lesion masks (the phantom)
``manifest.parquet`` the validated manifest rows, in array order (quarantined rows excluded)
``meta.json``       class names, fingerprint, resolution, dtype, preprocessing, resize mode

plus, per split setting, ``splits-<key>.json`` (eval / val / pool indices, leakage drops) and
``leakage-<key>.json``. Trials receive a :class:`PreparedData` (a few small index arrays and a
path), never pixels: each worker memory-maps ``images.npy``, so N concurrent trials on a node
share one page-cached copy and nothing is decoded again. On a multi-node cluster the directory
must live on shared storage (NFS/EFS), as ``cluster.yaml`` sets up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Optional

import numpy as np


@dataclass(frozen=True)
class PreparedData:
    """A decoded, cached, split dataset. Cheap to pickle: it holds indices and a path."""

    root: str
    class_names: tuple[str, ...]
    eval_idx: np.ndarray
    val_idx: np.ndarray
    pool_idx: np.ndarray
    fingerprint: str = ""
    groups: Optional[np.ndarray] = None  # patient-group codes per row (None when unknown)
    class_balanced: bool = False
    dropped_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    info: dict = field(default_factory=dict)  # provenance: source, resolution, leakage summary...
    # preprocessing -> cache root holding the same rows (the study's variants); empty: one cache
    variant_roots: dict = field(default_factory=dict)
    # patient codes per row (None: the source has no patient ids); ``groups`` merge them with the
    # leakage audit's duplicate clusters, these do not (cluster bootstraps, per-patient statistics)
    patients: Optional[np.ndarray] = None
    # acquisition-site codes per row (None unless every row's site is known); info["site_names"][k]
    # names code k (source probes, held-out-site evaluations)
    sites: Optional[np.ndarray] = None
    # named external evaluation sets (issue 24, point 1): a held-out site's rows of this cache, or
    # another source's prepared data (:class:`ExternalSet`); every trial scores its model on each
    external: tuple = ()
    # this cache's label code -> the study's class index (an external source whose classes are a
    # subset of the study's, or in another order); None: the codes are the study's
    label_remap: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        # Absolute: Ray workers do not share the driver's working directory, so a relative
        # root (the default output_dir is "lungray_runs") would point nowhere inside a trial.
        object.__setattr__(self, "root", str(Path(self.root).expanduser().resolve()))

    def for_preprocess(self, name: Optional[str]) -> "PreparedData":
        """The same rows, splits and subsets decoded with preprocessing ``name`` (a variant's
        cache); ``None`` or this cache's own preprocessing returns ``self``."""
        if name is None:
            return self
        root = self.variant_roots.get(name)
        if root is None:
            own = self.info.get("preprocessing", name)
            if not self.variant_roots and name == own:
                return self
            from lungray.errors import ConfigError

            prepared = sorted(self.variant_roots) or [own]
            raise ConfigError(f"preprocessing '{name}' was not prepared in {self.root}; prepared: {', '.join(prepared)}")
        if Path(root).resolve() == Path(self.root):
            return self
        import dataclasses

        return dataclasses.replace(self, root=root)

    # -- arrays, memory-mapped lazily per process --------------------------------------------
    def __getstate__(self) -> dict[str, Any]:  # drop cached memmaps when shipped to workers
        state = dict(self.__dict__)
        for k in ("images", "labels", "masks", "lung_masks", "ids"):
            state.pop(k, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @cached_property
    def images(self) -> np.ndarray:
        return np.load(Path(self.root) / "images.npy", mmap_mode="r")

    @cached_property
    def labels(self) -> np.ndarray:
        y = np.load(Path(self.root) / "labels.npy")
        return y if self.label_remap is None else np.asarray(self.label_remap, dtype=np.int64)[y]

    def external_set(self, name: str) -> "ExternalSet":
        """The external evaluation set called ``name``; unknown names raise and list the sets."""
        for e in self.external:
            if e.name == name:
                return e
        from lungray.errors import ConfigError

        raise ConfigError(f"no external evaluation set '{name}'; prepared: {', '.join(e.name for e in self.external) or 'none'}")

    @cached_property
    def mask_kind(self) -> Optional[str]:
        """What the masks mark: ``lesion`` (phantom), ``lesion_boxes`` (RSNA boxes filled),
        ``lung`` (Radiography Database), or ``None`` when the dataset has no masks."""
        return self.meta().get("mask_kind")

    @cached_property
    def masks(self) -> Optional[np.ndarray]:
        """(N, H, W) uint8 masks in row order (memory-mapped), or ``None`` without masks.

        A cache whose ``meta.json`` names no ``mask_kind`` (written before masks existed) has
        no usable masks, whatever files it holds.
        """
        p = Path(self.root) / "masks.npy"
        return np.load(p, mmap_mode="r") if self.mask_kind is not None and p.exists() else None

    @cached_property
    def lung_masks(self) -> Optional[np.ndarray]:
        """(N, H, W) uint8 0/1 lung fields in row order (memory-mapped), or ``None`` when unknown:
        the phantom's ``lung_masks.npy``, or the masks of a ``lung`` mask dataset (the
        Radiography Database, 255 where a mask file was missing). For lung-region ablations and
        the share of a heat map that falls in the lungs."""
        if self.mask_kind == "lung":
            return self.masks
        p = Path(self.root) / "lung_masks.npy"
        return np.load(p, mmap_mode="r") if self.meta().get("lung_masks") and p.exists() else None

    @cached_property
    def ids(self) -> np.ndarray:
        import pandas as pd

        return pd.read_parquet(Path(self.root) / "manifest.parquet", columns=["image_id"])["image_id"].to_numpy()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def resolution(self) -> int:
        return int(self.images.shape[-1])

    @property
    def max_value(self) -> float:
        """Full-scale value of the cached dtype (255 for uint8, 65535 for uint16)."""
        return float(np.iinfo(self.images.dtype).max)

    def manifest(self):
        import pandas as pd

        return pd.read_parquet(Path(self.root) / "manifest.parquet")

    def meta(self) -> dict[str, Any]:
        return json.loads((Path(self.root) / "meta.json").read_text())

    # -- subsets ----------------------------------------------------------------------------
    def subset(self, size: int, seed: int) -> np.ndarray:
        """Row indices of the nested, stratified training subset of ``size`` for ``seed``.

        The same (size, seed) gives the same indices for every model and optimizer (paired
        comparisons); subset(n) is a prefix of subset(m) for n < m (nested).
        """
        from lungray.data.splits import nested_subsets

        return nested_subsets(
            self.labels,
            self.pool_idx,
            [size],
            seed=seed,
            groups=self.groups,
            balanced=self.class_balanced,
            class_names=self.class_names,
        )[size]

    def pool_mean_std(self) -> tuple[float, float]:
        """Mean and std of the training pool in [0, 1] units (the 'radiograph' normalisation)."""
        x = np.asarray(self.images[np.sort(self.pool_idx)], dtype=np.float64) / self.max_value
        return float(x.mean()), float(x.std() + 1e-8)

    def class_counts(self) -> dict[str, dict[str, int]]:
        out = {}
        for name, idx in (("eval", self.eval_idx), ("val", self.val_idx), ("pool", self.pool_idx)):
            counts = np.bincount(self.labels[idx], minlength=self.num_classes)
            out[name] = {c: int(k) for c, k in zip(self.class_names, counts)}
        return out


@dataclass(frozen=True)
class ExternalSet:
    """One named external evaluation set, ready to score (issue 24, point 1).

    ``kind`` ``site``: ``idx`` are rows of the study's own cache (``data`` is None), a site held
    out of every split; ``source``: ``data`` is another source's :class:`PreparedData` (labels in
    the study's class order) and ``idx`` all its usable rows. :meth:`resolve` gives the prepared
    data to read for a trial's preprocessing.
    """

    name: str
    kind: str
    idx: np.ndarray
    data: Optional[PreparedData] = None
    info: dict = field(default_factory=dict)

    def resolve(self, study_data: PreparedData, preprocess: Optional[str] = None) -> PreparedData:
        """Where this set's images are: the study's data as the trial reads it (a held-out site;
        ``study_data`` already in the trial's variant cache), or the external source's cache of
        the trial's ``preprocess`` (a variant's; None: the study's)."""
        if self.data is None:
            return study_data
        return self.data.for_preprocess(preprocess)
