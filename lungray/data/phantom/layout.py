"""Who is in the phantom: patients, their films or CT-like series, their sites and labels, and
Kaggle-style augmented copies. A prefix-stable layout, so row ``i`` never depends on ``n``.

Rows come patient by patient (a patient's rows are consecutive):

* a patient is imaged as a **CT-like series** with probability ``series_fraction``:
  ``series_length`` films of one acquisition that differ only by a slow drift and by noise, as
  adjacent slices of the COVID-CT sets do; else as **follow-up films**, a geometric number of
  independent acquisitions with mean ``images_per_patient`` (at most :data:`MAX_FILMS`);
* labels are a random permutation per block of ``n_classes`` consecutive patients (patients are
  balanced across classes);
* a patient's **site** is the class's "home" site (``label % sites``) with probability
  ``site_label_correlation`` and uniform over the sites otherwise, so
  ``P(site = home(label)) = c + (1 - c) / sites``: ``c = 0`` (the default) plants no shortcut,
  ``c = 1`` lets the site give the label away;
* every original film is followed by a Poisson(``copies``) number of **augmented copies**
  (Keras ``ImageDataGenerator`` draws, :mod:`lungray.data.kerasaug`), which carry the original's
  patient, site, label and burned-in markings, as the augmented Kaggle sets do.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from lungray.data.phantom.fields import rng
from lungray.data.phantom.markings import MARKINGS
from lungray.errors import ConfigError

MAX_FILMS = 12  # follow-up films per patient at most (the geometric draw is capped here)

# independent random streams: rng([seed, stream, key])
S_LAYOUT, S_LABEL = 11, 13


@dataclass(frozen=True)
class PhantomSpec:
    """Every knob of the phantom but its size and resolution (each is a ``data.phantom_*`` key).

    ``n_classes`` 2 (``Normal``/``COVID``) or 4 (the Radiography Database's classes);
    ``difficulty`` divides every finding's density and multiplies the quantum noise by its square
    root; ``images_per_patient`` the mean number of follow-up films of a patient (>= 1);
    ``series_fraction`` the share of patients imaged as a CT-like series of ``series_length``
    films; ``sites`` the number of acquisition sites; ``site_label_correlation`` in [0, 1] (see
    the module docstring); ``markings`` the marking kinds sites may use (a subset of
    :data:`~lungray.data.phantom.markings.MARKINGS`; empty: clean films); ``copies`` the mean
    number of augmented copies per original film.
    """

    n_classes: int = 2
    difficulty: float = 1.0
    seed: int = 0
    images_per_patient: float = 2.0
    series_fraction: float = 0.1
    series_length: int = 6
    sites: int = 3
    site_label_correlation: float = 0.0
    markings: tuple[str, ...] = MARKINGS
    copies: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "markings", tuple(self.markings))
        _check(self)

    @property
    def key(self) -> str:
        """The canonical ``k=v/...`` text of the spec (the phantom's manifest paths carry it)."""
        parts = []
        for f in fields(self):
            v = getattr(self, f.name)
            parts.append(f"{f.name}=" + ("+".join(v) if isinstance(v, tuple) else f"{v:g}" if isinstance(v, float) else str(v)))
        return "/".join(parts)

    @classmethod
    def from_key(cls, key: str) -> "PhantomSpec":
        """Inverse of :attr:`key`."""
        kw: dict[str, Any] = {}
        types = {f.name: f.type for f in fields(cls)}
        for part in key.split("/"):
            m = re.fullmatch(r"([a-z_]+)=(.*)", part)
            if not m or m.group(1) not in types:
                raise ConfigError(f"malformed phantom spec '{key}'")
            name, v = m.group(1), m.group(2)
            t = str(types[name])
            kw[name] = tuple(x for x in v.split("+") if x) if "tuple" in t else float(v) if "float" in t else int(v)
        return cls(**kw)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) and math.isfinite(float(v))


def _check(s: PhantomSpec) -> None:
    """Every knob validated, each error naming its config key."""
    if s.n_classes not in (2, 4):
        raise ConfigError(f"phantom n_classes must be 2 or 4, got {s.n_classes!r} (data.phantom_classes)")
    if not (_number(s.difficulty) and s.difficulty > 0):
        raise ConfigError(f"phantom difficulty must be a number > 0 (1.0 = default), got {s.difficulty!r} (data.phantom_difficulty)")
    if not isinstance(s.seed, (int, np.integer)) or isinstance(s.seed, bool) or s.seed < 0:
        raise ConfigError(f"phantom seed must be an integer >= 0, got {s.seed!r} (data.phantom_seed)")
    if not (_number(s.images_per_patient) and 1 <= s.images_per_patient <= MAX_FILMS / 2):
        raise ConfigError(f"phantom images per patient must be a mean in [1, {MAX_FILMS // 2}], got {s.images_per_patient!r} "
                          "(data.phantom_images_per_patient)")
    if not (_number(s.series_fraction) and 0 <= s.series_fraction <= 1):
        raise ConfigError(f"phantom series fraction must be in [0, 1], got {s.series_fraction!r} (data.phantom_series_fraction)")
    if not isinstance(s.series_length, (int, np.integer)) or isinstance(s.series_length, bool) or not 2 <= s.series_length <= 64:
        raise ConfigError(f"phantom series length must be an integer in 2..64, got {s.series_length!r} (data.phantom_series_length)")
    if not isinstance(s.sites, (int, np.integer)) or isinstance(s.sites, bool) or not 1 <= s.sites <= 64:
        raise ConfigError(f"phantom sites must be an integer in 1..64, got {s.sites!r} (data.phantom_sites)")
    if not (_number(s.site_label_correlation) and 0 <= s.site_label_correlation <= 1):
        raise ConfigError(f"phantom site-label correlation must be in [0, 1], got {s.site_label_correlation!r} "
                          "(data.phantom_site_label_correlation)")
    bad = [k for k in s.markings if k not in MARKINGS]
    if bad or len(set(s.markings)) != len(s.markings):
        raise ConfigError(f"phantom markings must be distinct names among {', '.join(MARKINGS)}, got {list(s.markings)} "
                          "(data.phantom_markings)")
    if not (_number(s.copies) and 0 <= s.copies <= 5):
        raise ConfigError(f"phantom copies must be a mean number of augmented copies per film in [0, 5], got {s.copies!r} "
                          "(data.phantom_copies)")


@dataclass(frozen=True)
class Layout:
    """Row-aligned (n,) arrays: ``patient``, ``label``, ``site`` (int), ``film`` (index of the
    row's original among its patient's films), ``series`` (bool: the patient is a CT-like series),
    ``copy_of`` (row of the original, -1 for originals)."""

    patient: np.ndarray
    label: np.ndarray
    site: np.ndarray
    film: np.ndarray
    series: np.ndarray
    copy_of: np.ndarray

    def __len__(self) -> int:
        return int(self.patient.shape[0])


def patient_label(spec: PhantomSpec, patient: int) -> int:
    """Labels are a random permutation per block of ``n_classes`` patients (balanced patients)."""
    block, pos = divmod(int(patient), spec.n_classes)
    return int(rng(spec.seed, S_LABEL, spec.n_classes, block).permutation(spec.n_classes)[pos])


def _patient(spec: PhantomSpec, j: int) -> tuple[int, int, bool, np.ndarray]:
    """(label, site, series, copies per film) of patient ``j``."""
    r = rng(spec.seed, S_LAYOUT, j)
    label = patient_label(spec, j)
    home = label % spec.sites
    site = home if r.random() < spec.site_label_correlation else int(r.integers(spec.sites))
    series = bool(r.random() < spec.series_fraction)
    films = spec.series_length if series else min(int(r.geometric(1.0 / spec.images_per_patient)), MAX_FILMS)
    copies = r.poisson(spec.copies, films) if spec.copies > 0 else np.zeros(films, dtype=np.int64)
    return label, site, series, copies


def layout(n: int, spec: PhantomSpec) -> Layout:
    """The first ``n`` rows of the phantom's layout (cheap: nothing is rendered)."""
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"phantom size must be a positive integer, got {n!r} (data.phantom_n)")
    cols: dict[str, list] = {k: [] for k in ("patient", "label", "site", "film", "series", "copy_of")}
    j = 0
    while len(cols["patient"]) < n:
        label, site, series, copies = _patient(spec, j)
        for f, k in enumerate(copies):
            orig = len(cols["patient"])
            for c in range(1 + int(k)):
                cols["patient"].append(j)
                cols["label"].append(label)
                cols["site"].append(site)
                cols["film"].append(f)
                cols["series"].append(series)
                cols["copy_of"].append(-1 if c == 0 else orig)
        j += 1
    return Layout(
        patient=np.asarray(cols["patient"][:n], np.int64),
        label=np.asarray(cols["label"][:n], np.int64),
        site=np.asarray(cols["site"][:n], np.int64),
        film=np.asarray(cols["film"][:n], np.int64),
        series=np.asarray(cols["series"][:n], bool),
        copy_of=np.asarray(cols["copy_of"][:n], np.int64),
    )
