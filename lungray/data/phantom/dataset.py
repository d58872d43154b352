"""The phantom as a dataset: :func:`generate_phantom` and :func:`render_case`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from lungray.data.phantom.anatomy import Anatomy, draw_anatomy
from lungray.data.phantom.fields import rng
from lungray.data.phantom.findings import FINDINGS
from lungray.data.phantom.layout import Layout, PhantomSpec, layout
from lungray.data.phantom.markings import film_text
from lungray.data.phantom.render import Film, render
from lungray.data.phantom.sites import Site, acquisition, site_profile
from lungray.errors import ConfigError

CLASS_NAMES: dict[int, tuple[str, ...]] = {
    2: ("Normal", "COVID"),
    4: ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"),
}
"""Class names per variant: the Kaggle COVID-19 Radiography Database folder names."""

# independent random streams: rng([seed, stream, key])
S_IMAGE, S_SERIES, S_CASE, S_NOISE, S_COPY, S_SERIES_CASE = 14, 16, 17, 18, 19, 20

#: drift between consecutive films of a CT-like series (vertical shift, zoom, inspiration)
SERIES_DRIFT = (0.012, 0.006, 0.004)


@dataclass(frozen=True)
class PhantomData:
    """A generated phantom, row-aligned.

    ``images`` uint8 (n, H, W), bone bright (MONOCHROME2); ``masks`` uint8 (n, H, W) 0/1 lesion
    masks (all 0 for Normal); ``lung_masks`` uint8 (n, H, W) 0/1 lung fields; ``labels`` int64
    (n,) indices into ``class_names``; ``ids`` and ``patient_ids`` (n,) str; ``sites`` int64 (n,)
    acquisition site; ``copy_of`` int64 (n,) row of the original of an augmented copy (-1 for
    originals); ``series`` bool (n,) the patient is a CT-like series.
    """

    images: np.ndarray
    masks: np.ndarray
    lung_masks: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    ids: np.ndarray
    patient_ids: np.ndarray
    sites: np.ndarray
    copy_of: np.ndarray
    series: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class PhantomCase:
    """One rendered image (what :func:`render_case` returns)."""

    image: np.ndarray
    mask: np.ndarray
    lung_mask: np.ndarray
    label: int
    class_name: str
    image_id: str
    patient_id: str
    site: int
    copy_of: int


def class_names_for(n_classes: int) -> tuple[str, ...]:
    """The phantom's class names for ``n_classes`` (2 or 4)."""
    if n_classes not in CLASS_NAMES:
        raise ConfigError(f"phantom n_classes must be 2 or 4, got {n_classes!r} (data.phantom_classes)")
    return CLASS_NAMES[n_classes]


def image_id(seed: int, i: int) -> str:
    return f"phantom-s{seed}-{i:06d}"


def patient_id(seed: int, j: int) -> str:
    return f"phantom-s{seed}-p{j:05d}"


def spec_of(n_classes: int = 2, difficulty: float = 1.0, seed: int = 0, **knobs: Any) -> PhantomSpec:
    """A :class:`PhantomSpec` from ``generate_phantom``'s arguments (unknown knobs listed)."""
    names = {f.name for f in dataclasses.fields(PhantomSpec)}
    bad = sorted(set(knobs) - names)
    if bad:
        raise ConfigError(f"unknown phantom option(s) {', '.join(bad)}; valid: {', '.join(sorted(names - {'n_classes', 'difficulty', 'seed'}))}")
    return PhantomSpec(n_classes=n_classes, difficulty=difficulty, seed=seed, **knobs)


def _check_resolution(resolution: int) -> None:
    if not isinstance(resolution, (int, np.integer)) or isinstance(resolution, bool) or resolution < 8:
        raise ConfigError(f"phantom resolution must be an integer >= 8 pixels, got {resolution!r} (data.resolution)")


def _film(spec: PhantomSpec, lay: Layout, i: int, site: Site) -> Film:
    """The film of original row ``i``: its own acquisition, or its series' with the drift of its place."""
    j, f = int(lay.patient[i]), int(lay.film[i])
    kind = FINDINGS[CLASS_NAMES[spec.n_classes][int(lay.label[i])]]
    if lay.series[i]:
        r = rng(spec.seed, S_SERIES, j)
        q = acquisition(r, site, spec.difficulty)
        dy, dz, di = SERIES_DRIFT
        q = dataclasses.replace(q, shift=(q.shift[0], q.shift[1] + dy * f), zoom=q.zoom * (1 + dz * f), inspiration=q.inspiration + di * f)
        return Film(q, kind, float(r.random()), film_text(site.styles, r), (spec.seed, S_SERIES_CASE, j), (spec.seed, S_NOISE, i))
    r = rng(spec.seed, S_IMAGE, i)
    q = acquisition(r, site, spec.difficulty)
    return Film(q, kind, float(r.random()), film_text(site.styles, r), (spec.seed, S_CASE, i), (spec.seed, S_NOISE, i))


def _copy(spec: PhantomSpec, i: int, image: np.ndarray, masks: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """A Keras-style augmented copy (row ``i``) of an original image and its masks, same geometry."""
    from lungray.data.kerasaug import keras_random_params, keras_transform

    p = keras_random_params(rng(spec.seed, S_COPY, i), image.shape)
    geo = {**p, "brightness": 1.0}
    return (keras_transform(image, **p), *(keras_transform(m, **geo) for m in masks))


class _Renderer:
    """Renders rows of one layout, caching site profiles and the current patient's anatomy."""

    def __init__(self, spec: PhantomSpec, lay: Layout, resolution: int):
        self.spec, self.lay, self.res = spec, lay, resolution
        self.sites: dict[int, Site] = {}
        self.anatomy: tuple[int, Optional[Anatomy]] = (-1, None)
        self.last: tuple[int, Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]] = (-1, None)

    def site(self, s: int) -> Site:
        if s not in self.sites:
            self.sites[s] = site_profile(self.spec.seed, s, self.spec.markings)
        return self.sites[s]

    def original(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.last[0] == i and self.last[1] is not None:
            return self.last[1]
        j = int(self.lay.patient[i])
        if self.anatomy[0] != j:
            self.anatomy = (j, draw_anatomy(self.spec.seed, j))
        site = self.site(int(self.lay.site[i]))
        out = render(self.anatomy[1], site, _film(self.spec, self.lay, i, site), self.res, self.spec.difficulty)
        self.last = (i, out)
        return out

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        o = int(self.lay.copy_of[i])
        if o < 0:
            return self.original(i)
        img, mask, lung = self.original(o)
        return _copy(self.spec, i, img, (mask, lung))


def render_case(i: int, n_classes: int = 2, resolution: int = 64, difficulty: float = 1.0, seed: int = 0, **knobs: Any) -> PhantomCase:
    """Render image ``i`` of the phantom alone (identical to ``generate_phantom(n)`` row ``i``)."""
    spec = spec_of(n_classes, difficulty, seed, **knobs)
    _check_resolution(resolution)
    if not isinstance(i, (int, np.integer)) or i < 0:
        raise ConfigError(f"phantom image index must be >= 0, got {i}")
    lay = layout(int(i) + 1, spec)
    img, mask, lung = _Renderer(spec, lay, resolution).row(int(i))
    lab = int(lay.label[i])
    return PhantomCase(img, mask, lung, lab, CLASS_NAMES[n_classes][lab], image_id(seed, int(i)), patient_id(seed, int(lay.patient[i])),
                       int(lay.site[i]), int(lay.copy_of[i]))


def generate_phantom(n: int, n_classes: int = 2, resolution: int = 64, difficulty: float = 1.0, seed: int = 0, **knobs: Any) -> PhantomData:
    """Generate ``n`` phantom images with lesion and lung masks, labels, ids, patient ids and sites.

    ``knobs`` are the other :class:`~lungray.data.phantom.layout.PhantomSpec` fields
    (``images_per_patient``, ``series_fraction``, ``series_length``, ``sites``,
    ``site_label_correlation``, ``markings``, ``copies``). Image ``i`` depends only on the spec,
    ``i`` and ``resolution``, so a bigger ``n`` extends a smaller one.

    >>> d = generate_phantom(6, resolution=32)
    >>> d.images.shape, d.images.dtype, d.class_names
    ((6, 32, 32), dtype('uint8'), ('Normal', 'COVID'))
    """
    spec = spec_of(n_classes, difficulty, seed, **knobs)
    _check_resolution(resolution)
    lay = layout(n, spec)
    images = np.empty((n, resolution, resolution), dtype=np.uint8)
    masks = np.empty_like(images)
    lungs = np.empty_like(images)
    rend = _Renderer(spec, lay, resolution)
    for i in range(n):
        images[i], masks[i], lungs[i] = rend.row(i)
    return PhantomData(
        images=images,
        masks=masks,
        lung_masks=lungs,
        labels=lay.label.copy(),
        class_names=CLASS_NAMES[n_classes],
        ids=np.array([image_id(seed, i) for i in range(n)]),
        patient_ids=np.array([patient_id(seed, int(j)) for j in lay.patient]),
        sites=lay.site.copy(),
        copy_of=lay.copy_of.copy(),
        series=lay.series.copy(),
    )
