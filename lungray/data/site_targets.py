"""A prepared dataset seen with the acquisition site as its label: the source probe's data.

Issue 24.2 (DeGrave et al. 2021; Zech et al. 2018, PLoS Med: a CNN told the hospital from a
chest film almost perfectly). The source probe trains the grid's architecture to predict the
site instead of the finding, on the SAME training subsets and budget as the label trials. So the
subset must still be drawn from the real labels (:meth:`PreparedData.subset` is stratified and
patient-grouped by label: the probe and the model it probes see the same images), and only the
targets the datasets hand to the loss change. :class:`SiteTargets` is that view: ``labels`` are
the site codes and ``class_names`` the site names; everything else (images, masks, subsets,
splits, normalisation statistics) is the underlying :class:`~lungray.data.prepared.PreparedData`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lungray.errors import ConfigError

__all__ = ["SiteTargets", "site_names"]


def site_names(data: Any) -> list[str]:
    """The site names of a prepared dataset (code k -> name k), or a one-line error saying why
    a source probe cannot be trained on it."""
    sites = getattr(data, "sites", None)
    names = list((getattr(data, "info", None) or {}).get("site_names") or [])
    src = (getattr(data, "info", None) or {}).get("source", "?")
    if sites is None or not names:
        raise ConfigError(
            f"probes.source: the prepared dataset at {getattr(data, 'root', '?')} (source '{src}') does not know every "
            "image's acquisition site; give the manifest a 'site' column (the phantom has one) or set probes.source=false"
        )
    if len(names) < 2:
        raise ConfigError(
            f"probes.source: the prepared dataset at {getattr(data, 'root', '?')} has one site ({names[0]}); a source "
            "probe needs at least 2 (phantom: data.phantom_sites >= 2) or set probes.source=false"
        )
    return [str(s) for s in names]


class SiteTargets:
    """``data`` with ``labels`` = site codes and ``class_names`` = site names (module docstring).

    Picklable (DataLoader workers receive it): only the wrapped dataset and the two overrides
    are stored; every other attribute is looked up on the wrapped dataset.
    """

    def __init__(self, data: Any):
        self._data = data
        self.class_names = tuple(site_names(data))
        self.labels = np.asarray(data.sites, dtype=np.int64)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_data":  # pickle's probes, and before __init__ ran
            raise AttributeError(name)
        return getattr(self._data, name)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
