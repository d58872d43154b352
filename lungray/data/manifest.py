"""The one manifest schema every dataset adapter yields (the torchxrayvision data contract).

Every source, from a Kaggle folder tree to an RSNA DICOM folder or a MedMNIST ``.npz``, becomes
the same pandas DataFrame, one row per image, saved as ``manifest.parquet`` next to the cache.
Nothing downstream (check, cache, splits, leakage, training, report) knows which layout the
images came from.

Columns (all present, in this order; strings are never NaN, empty means unknown):

``image_id``    unique id of the image within the dataset: ``img_<16 hex>``, a salted hash of
                the relative path (file names often hold patient ids, and this id is what
                predictions.csv, MLflow and the report show); RSNA ``rsna_<hash>``; the
                phantom's and MedMNIST's own synthetic ids
``path``        absolute file path or URI (``phantom://...``, ``<file>.npz::<split>/<row>``);
                with ``image_id`` the local map from an id back to its file (manifests stay on
                disk next to the cache and are never logged to MLflow)
``label``       the *study* class name (after ``class_map``); the raw name if unknown
``class_index`` index into the class names, ``-1`` for rows with an unknown label
``patient_id``  salted SHA-256 of the raw patient identifier (never the raw DICOM value)
``modality``    "CR", "DX", "CT", "XR"... when known
``source``      adapter / layout name (``covid_radiography``...)
``sha256``      SHA-256 of the file bytes (filled by the check and the cache; exact duplicates,
                label conflicts)
``phash``       16-hex-digit perceptual hash of the decoded image (filled by ``data check`` and
                the cache)
``width``, ``height``  decoded size in pixels (images over 2048 x 2048 px are decoded reduced by
                an integer factor, see :mod:`lungray.data.decode`; 0 when not decoded yet)
``boxes``       JSON list of ``[x, y, w, h]`` boxes (RSNA), ``"[]"`` otherwise
``mask_path``   the image's segmentation mask file (Radiography Database ``masks/``), else empty
``site``        the acquisition site (hospital, scanner) when the source knows it: the phantom's
                ``site-<k>``, a CSV's ``site`` column; empty otherwise. Studies of shortcuts
                probe it (a site classifier, a held-out site); it is not a patient identifier
``split``       a predefined split (``train``/``val``/``test``) from the source, else empty
``problem``     why the row is quarantined (empty for good rows)

Class names travel in ``df.attrs["class_names"]`` (kept by parquet) in class-index order.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from lungray.errors import DataError

#: Column -> dtype family ("str" or "int"); order is the on-disk column order.
COLUMNS: dict[str, str] = {
    "image_id": "str",
    "path": "str",
    "label": "str",
    "class_index": "int",
    "patient_id": "str",
    "modality": "str",
    "source": "str",
    "sha256": "str",
    "phash": "str",
    "width": "int",
    "height": "int",
    "boxes": "str",
    "mask_path": "str",
    "site": "str",
    "split": "str",
    "problem": "str",
}

_DEFAULTS: dict[str, Any] = {
    "patient_id": "",
    "modality": "",
    "source": "",
    "sha256": "",
    "phash": "",
    "width": 0,
    "height": 0,
    "boxes": "[]",
    "mask_path": "",
    "site": "",
    "split": "",
    "problem": "",
}

#: Predefined split names accepted in the ``split`` column.
SPLIT_NAMES = ("train", "val", "test")


def id_salt(dataset: str) -> str:
    """The salt for patient-id hashes: ``$LUNGRAY_ID_SALT`` or a per-dataset constant.

    A per-dataset constant keeps hashes stable across runs (patient grouping must not change
    between a sweep and its resume) while making them useless for lookup in another dataset;
    set ``LUNGRAY_ID_SALT`` to a secret to make them unlinkable outside your site.
    """
    return os.environ.get("LUNGRAY_ID_SALT") or f"lungray/{dataset}"


def hash_patient_id(raw: Any, salt: str) -> str:
    """Salted SHA-256 (first 16 hex digits) of a raw patient identifier; '' for missing values.

    >>> hash_patient_id("", "s")
    ''
    >>> len(hash_patient_id("PAT-001", "s"))
    18
    """
    if raw is None or (isinstance(raw, float) and np.isnan(raw)):
        return ""
    s = str(raw).strip()
    if not s:
        return ""
    return "p_" + hashlib.sha256(f"{salt}\x00{s}".encode()).hexdigest()[:16]


def hash_image_id(raw: Any, salt: str) -> str:
    """The pseudonymous image id written to every output: ``img_`` + 16 hex digits.

    A salted SHA-256 of the image's own id (its path relative to the dataset root, without
    suffix). Stable for one dataset and salt, so a resumed sweep, its predictions and its
    report agree; the manifest's ``path`` column maps it back. With the default per-dataset
    salt anyone who can guess a file name can confirm it; set ``LUNGRAY_ID_SALT`` to a site
    secret (:func:`id_salt`) to make the ids unlinkable.

    >>> hash_image_id("COVID/PAT-0042", "s")[:4], len(hash_image_id("COVID/PAT-0042", "s"))
    ('img_', 20)
    """
    return "img_" + hashlib.sha256(f"{salt}\x00image\x00{raw}".encode()).hexdigest()[:16]


def make_manifest(
    rows: Iterable[Mapping[str, Any]] | pd.DataFrame,
    class_names: Sequence[str],
    *,
    source: str,
) -> pd.DataFrame:
    """Build a schema-complete manifest from partial rows (``image_id``, ``path``, ``label``...).

    ``class_index`` is derived from ``label`` and ``class_names``; a label outside them gets
    ``-1`` and an ``unknown label`` problem unless the row already has a problem.
    """
    df = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    for col in ("image_id", "path", "label"):
        if col not in df.columns:
            if len(df):
                raise DataError(f"manifest rows from '{source}' lack the '{col}' column")
            df[col] = pd.Series(dtype=object)
    for col, default in _DEFAULTS.items():
        if col not in df.columns:
            df[col] = default
    df["source"] = df["source"].where(df["source"].astype(str) != "", source) if len(df) else df["source"]
    index = {c: i for i, c in enumerate(class_names)}
    labels = df["label"].astype(str)
    df["class_index"] = labels.map(lambda s: index.get(s, -1)).astype(np.int64)
    problems = df["problem"].fillna("").astype(str)
    unknown = (df["class_index"] < 0) & (problems == "")
    problems[unknown] = labels[unknown].map(lambda s: f"unknown label '{s}'")
    df["problem"] = problems
    for col, kind in COLUMNS.items():
        if kind == "int":
            df[col] = pd.to_numeric(df[col], errors="coerce").fillna(0).astype(np.int64)
            if col == "class_index":
                df.loc[unknown, col] = -1
        else:
            df[col] = df[col].fillna("").astype(str).astype(object)
    df = df[list(COLUMNS)].reset_index(drop=True)
    df.attrs["class_names"] = list(class_names)
    df.attrs["source"] = source
    return df


def class_names_of(df: pd.DataFrame) -> list[str]:
    """The class names of a manifest (from ``attrs``, else rebuilt from the good rows)."""
    names = df.attrs.get("class_names")
    if names:
        return list(names)
    good = df[df["class_index"] >= 0][["class_index", "label"]].drop_duplicates()
    if good.empty:
        return []
    by_index = dict(zip(good["class_index"], good["label"]))
    return [by_index.get(i, f"class_{i}") for i in range(int(max(by_index)) + 1)]


def validate_manifest(df: pd.DataFrame, *, where: str = "manifest") -> pd.DataFrame:
    """Check columns, dtypes and label/index consistency; return ``df`` unchanged.

    Raises :class:`DataError` naming the first broken column or row, so a hand-edited manifest
    fails before any decoding.
    """
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(
            f"{where}: missing column(s) {', '.join(missing)}; a manifest needs {', '.join(COLUMNS)}"
        )
    for col, kind in COLUMNS.items():
        s = df[col]
        if kind == "int":
            if not pd.api.types.is_integer_dtype(s):
                raise DataError(f"{where}: column '{col}' must hold integers, found dtype {s.dtype}")
        else:
            bad = ~s.map(lambda v: isinstance(v, str))
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise DataError(f"{where}: column '{col}' row {row} is {s.iloc[row]!r}, expected a string")
    names = class_names_of(df)
    ci = df["class_index"].to_numpy()
    if len(ci) and (ci.max(initial=-1) >= len(names) or ci.min(initial=0) < -1):
        row = int(np.flatnonzero((ci >= len(names)) | (ci < -1))[0])
        raise DataError(
            f"{where}: row {row} has class_index {ci[row]} outside the {len(names)} classes {names}"
        )
    good = df["problem"] == ""
    if (good & (df["class_index"] < 0)).any():
        row = int(np.flatnonzero((good & (df["class_index"] < 0)).to_numpy())[0])
        raise DataError(f"{where}: row {row} has no class (class_index -1) but no problem recorded")
    for i, (idx, lab) in enumerate(zip(ci, df["label"])):
        if idx >= 0 and names[idx] != lab:
            raise DataError(f"{where}: row {i} label '{lab}' does not match class_index {idx} ('{names[idx]}')")
    bad_split = ~df["split"].isin(("",) + SPLIT_NAMES)
    if bad_split.any():
        row = int(np.flatnonzero(bad_split.to_numpy())[0])
        raise DataError(
            f"{where}: row {row} split '{df['split'].iloc[row]}' is not one of {', '.join(SPLIT_NAMES)} (or empty)"
        )
    return df


def flag_duplicate_ids(df: pd.DataFrame) -> pd.DataFrame:
    """Quarantine every row whose ``image_id`` repeats (all copies: which one is right is unknown)."""
    dup = df["image_id"].duplicated(keep=False) & (df["problem"] == "")
    if dup.any():
        df = df.copy()
        df.loc[dup, "problem"] = "duplicate image_id"
    return df


def manifest_fingerprint(df: pd.DataFrame, extra: Sequence[Any] = ()) -> str:
    """Stable hash of what determines the decoded pixels and labels of a manifest.

    Uses image ids, paths, labels, class names and, for files, their size and modification
    time (cheap to stat for 20k images, unlike hashing their bytes), so an edited file or a
    relabelled row invalidates the cache while re-running on the same tree reuses it.
    """
    h = hashlib.sha256()
    h.update(json.dumps([class_names_of(df), list(map(str, extra))]).encode())
    for image_id, path, label, problem in zip(df["image_id"], df["path"], df["label"], df["problem"]):
        stamp = ""
        if problem == "" and "://" not in path and "::" not in path:
            try:
                st = os.stat(path)
                stamp = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                stamp = "missing"
        h.update(f"{image_id}\x00{path}\x00{label}\x00{problem}\x00{stamp}\n".encode())
    return h.hexdigest()[:16]


def save_manifest(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a manifest to parquet (class names kept in the file's metadata via ``attrs``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False)
    return path


def load_manifest(path: str | Path) -> pd.DataFrame:
    """Read and validate a manifest written by :func:`save_manifest`."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"manifest {path} does not exist; run `lungray data check` to build one")
    return validate_manifest(pd.read_parquet(path), where=str(path))


def relabel(
    raw_labels: Sequence[str],
    class_map: Optional[Mapping[str, Optional[str]]],
    canonical: Optional[Sequence[str]] = None,
) -> tuple[list[Optional[str]], list[str], list[bool]]:
    """Map source class names to study classes.

    Returns ``(labels, class_names, unknown)``: ``labels[i]`` is the study label (``None`` when
    the class map drops it), ``unknown[i]`` marks a source class the class map does not
    mention (quarantined as "unknown label", since a silent drop would hide a typo).
    ``class_names`` is ``canonical`` (e.g. every class folder, even an empty one, so that an empty
    class is reported rather than silently vanishing) when there is no map, else the sorted
    target names (the order the COVID-19 Radiography Database folders sort in).
    """
    labels: list[Optional[str]] = []
    unknown: list[bool] = []
    if class_map is None:
        labels = [str(s) for s in raw_labels]
        unknown = [False] * len(labels)
        present = set(labels) - {""}
        if canonical is not None:
            names = list(canonical) + sorted(present - set(canonical))
        else:
            names = sorted(present)
        return labels, names, unknown
    for s in raw_labels:
        if s in class_map:
            labels.append(class_map[s])
            unknown.append(False)
        else:
            labels.append(str(s))
            unknown.append(True)
    targets = {v for v in class_map.values() if v is not None}
    names = sorted(targets)
    if canonical is not None and targets <= set(canonical):
        names = [c for c in canonical if c in targets]
    return labels, names, unknown


def find_image_ids(image_ids: Sequence[str], cache_dir: str | Path) -> dict[str, dict[str, str]]:
    """Look hashed image ids up in the local manifests under ``cache_dir`` (the map back to files).

    Searches every ``<cache_dir>/<key>/manifest.parquet`` and ``quarantined.parquet``; returns
    ``{image_id: {"path": ..., "label": ...}}`` for the ids found.
    """
    wanted = set(map(str, image_ids))
    found: dict[str, dict[str, str]] = {}
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        raise DataError(f"no cache folder at {cache_dir}; pass --output (the sweep's output folder) or --cache-dir")
    for f in sorted(cache_dir.glob("*/manifest.parquet")) + sorted(cache_dir.glob("*/quarantined.parquet")):
        try:
            df = pd.read_parquet(f, columns=["image_id", "path", "label"])
        except (OSError, ValueError, KeyError):
            continue
        hit = df[df["image_id"].isin(wanted - set(found))]
        for r in hit.itertuples(index=False):
            found[str(r.image_id)] = {"path": str(r.path), "label": str(r.label)}
        if len(found) == len(wanted):
            break
    return found
