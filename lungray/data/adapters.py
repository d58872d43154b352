"""Dataset adapters: each turns one on-disk layout into the manifest of :mod:`lungray.data.manifest`.

``ADAPTERS`` maps a ``data.source`` name to ``adapter(cfg: DataConfig) -> manifest DataFrame``.
Adapters only list files and labels (cheap: no pixel decoding); the cache decodes once and fills
``sha256``/``phash``/``width``/``height``. Rows an adapter already knows are bad (a CSV row
pointing at a missing file, a label the class map does not know) carry a ``problem`` reason
instead of raising, so ``lungray data check`` can list every problem at once. Layout errors that
make the whole dataset unreadable (no class folders, a CSV without a ``label`` column) raise
:class:`~lungray.errors.DataError` at once.

Layouts (the real downloads):

``phantom``
    the built-in synthetic radiographs (:mod:`lungray.data.phantom`), the default.
``folder``
    one folder per class (images found recursively; folders named ``masks`` are skipped). A
    top level of ``train``/``val``/``test`` folders, each holding the class folders (Kermany's
    ``chest_xray``), fills the ``split`` column.
``covid_radiography``
    the COVID-19 Radiography Database: ``COVID/``, ``Lung_Opacity/``, ``Normal/``,
    ``Viral Pneumonia/``, each with ``images/*.png`` beside a ``masks/`` folder that is not a
    class (its lung mask of the same name fills ``mask_path``: segmentation masks in the
    cache), and ``<class>.metadata.xlsx`` files (not needed: they hold URLs, not labels). The
    older release with PNGs directly in the class folders is read too. The root may be the
    download folder that contains ``COVID-19_Radiography_Dataset/``.
``covid_ct_xray``
    "Extensive and Augmented COVID-19 X-Ray and CT Chest Images Dataset" (El-Shafai &
    Abd El-Samie, Mendeley 8h65ywd2jr; on Kaggle as ssarkar445's "COVID-19 X-ray and CT"):
    ``COVID-19 Dataset/CT/{COVID,Non-COVID}`` and ``COVID-19 Dataset/X-ray/{COVID,Non-COVID}``.
    ``data.modality`` (``CT`` or ``X-ray``) picks the subtree. Folder names are matched ignoring
    case, spaces, ``-`` and ``_`` (copies circulate as ``non-COVID``, ``NonCOVID``, ``X-Ray``,
    ``Xray``...); study classes are ``COVID`` and ``Non-COVID``.
``rsna``
    RSNA Pneumonia Detection: ``stage_2_train_images/<patientId>.dcm`` and
    ``stage_2_train_labels.csv`` (``patientId,x,y,width,height,Target``, one row per box, empty
    box fields for negatives), optionally ``stage_2_detailed_class_info.csv``
    (``patientId,class``). Classes: 2-class from ``Target`` (``Lung Opacity`` vs
    ``No Lung Opacity``) by default; when ``data.class_map`` names one of the detailed classes
    (``Normal`` or ``No Lung Opacity / Not Normal``), the 3 detailed classes are the source
    labels. Boxes are kept per image (JSON ``[[x, y, w, h], ...]``); the cache fills them into
    segmentation masks (:mod:`lungray.data.masks`). The patientId is also the DICOM PatientID,
    so image ids are salted hashes too.
``csv``
    a CSV with ``path,label[,patient_id][,split][,image_id][,site]``; relative paths are resolved
    against the CSV's folder; missing files are reported with their CSV row and line numbers.
    **Every path must lie under the CSV's folder** (the dataset root): an absolute path
    elsewhere or a ``../`` that climbs out is quarantined as "path outside the dataset root"
    and the file is never opened, so a CSV cannot make lungray read ``/etc/passwd`` or another
    user's files. ``data.allow_outside_root: true`` (``lungray data check --allow-outside-root``)
    lifts the rule for a CSV kept apart from its images.

The rule holds for **resolved** paths in every adapter (issue 23, point 4): a CSV row, a class
folder or a file that is a symlink leading outside the dataset root (``x.png -> /etc/passwd``,
an image elsewhere) is quarantined as "symlink leading outside the dataset root" before
anything opens it; a symlink within the root is followed. ``allow_outside_root`` lifts this too.
``medmnist``
    a MedMNIST ``.npz`` (``train_images``, ``train_labels``, ``val_*``, ``test_*``); the npz
    split fills the ``split`` column. PneumoniaMNIST (real pediatric chest X-rays) gets the
    classes ``Normal``/``Pneumonia``; other files use ``"0"``, ``"1"``...

Image ids are pseudonyms: every adapter that reads files stores ``img_<16 hex>`` (a salted
SHA-256 of the relative path, or of the CSV's ``image_id``, :func:`~lungray.data.manifest.hash_image_id`),
because file names often carry patient identifiers and the image id is what predictions.csv,
MLflow and the report show. The manifest's ``path`` column (a local file, never logged) maps an
id back to its file: ``lungray data which <image_id>``.

Files in the class folders whose suffix is not an image type (and images directly in the root,
outside any class folder) are not read, and ``data check`` says how many.

``data.class_map`` maps source class names to study classes; ``null`` drops a class (e.g.
``{COVID: COVID, Lung_Opacity: rest, Normal: rest, "Viral Pneumonia": rest}``). A source class
the map does not mention is quarantined as an unknown label rather than silently dropped.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from lungray.data.decode import IMAGE_SUFFIXES, NPZ_SEP, PHANTOM_SCHEME
from lungray.data.manifest import flag_duplicate_ids, hash_image_id, hash_patient_id, id_salt, make_manifest, relabel
from lungray.errors import DataError
from lungray.registry import Registry

ADAPTERS: Registry[Any] = Registry("dataset adapter")

#: folders that hold segmentation masks next to images, never a class
MASK_DIRS = {"masks", "mask", "lungmasks", "lungmask"}
SPLIT_DIRS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test", "testing": "test"}

RADIOGRAPHY_CLASSES = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
CT_XRAY_CLASSES = ("COVID", "Non-COVID")
CT_XRAY_MODALITIES = {"ct": ("CT", "CT"), "xray": ("X-ray", "DX")}
RSNA_TARGET_CLASSES = ("Lung Opacity", "No Lung Opacity")
RSNA_DETAILED_CLASSES = ("Lung Opacity", "No Lung Opacity / Not Normal", "Normal")
PNEUMONIAMNIST_CLASSES = ("Normal", "Pneumonia")


def norm_name(name: str) -> str:
    """Folder-name key that ignores case, spaces, '-' and '_' ('Non-COVID' == 'non_covid')."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _class_map(cfg: Any) -> Optional[dict[str, Optional[str]]]:
    return None if cfg.class_map is None else {str(k): (None if v is None else str(v)) for k, v in cfg.class_map.items()}


def _root(cfg: Any, *, file_ok: bool = False, suffix: Optional[str] = None) -> Path:
    if not cfg.path:
        raise DataError(f"data.path is required for data.source '{cfg.source}'")
    p = Path(str(cfg.path)).expanduser()
    if not p.exists():
        raise DataError(f"data.path '{p}' does not exist (data.source '{cfg.source}'); check the path")
    if suffix is not None:
        if not p.is_file() or p.suffix.lower() != suffix:
            raise DataError(f"data.path '{p}' must be a {suffix} file for data.source '{cfg.source}'")
        return p.resolve()
    if not p.is_dir() and not file_ok:
        raise DataError(f"data.path '{p}' must be a folder for data.source '{cfg.source}'")
    return p.resolve()


#: folders a zip tool adds that hold no data: macOS's Archive Utility writes ``__MACOSX/`` with
#: an AppleDouble ``._name`` file per file (issue 23: a root ``__MACOSX/`` became a class)
METADATA_DIRS = ("__MACOSX",)


def _subdirs(p: Path) -> list[Path]:
    return sorted((d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name not in METADATA_DIRS),
                  key=lambda d: d.name)


def list_images(
    folder: Path, *, skip_dirs: Iterable[str] = MASK_DIRS, ignored: Optional[list[Path]] = None
) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted, hidden files and mask folders skipped).

    Selection is by suffix (``.png .jpg .jpeg .bmp .tif .tiff .gif .webp .dcm .dicom .dic``,
    any case); whether the content really is an image is the checker's job, so a text file
    named ``x.png`` is listed and then quarantined with a reason. Other files are appended to
    ``ignored`` (when given), so that ``data check`` can say what it did not read.
    """
    skip = {norm_name(s) for s in skip_dirs}
    out = []
    for f in folder.rglob("*"):
        rel = f.relative_to(folder).parts
        if any(part.startswith(".") or part in METADATA_DIRS for part in rel):
            continue
        if any(norm_name(part) in skip for part in rel[:-1]):
            continue
        if f.is_file():
            if f.suffix.lower() in IMAGE_SUFFIXES:
                out.append(f)
            elif ignored is not None:
                ignored.append(f)
    return sorted(out)


def _ignored_summary(files: Sequence[Path], root: Path) -> dict[str, Any]:
    by: dict[str, int] = {}
    for f in files:
        by[f.suffix.lower()] = by.get(f.suffix.lower(), 0) + 1
    example = ""
    if files:
        f = sorted(files)[0]
        try:
            example = f.relative_to(root).as_posix()
        except ValueError:
            example = f.name
    return {"count": len(files), "by_suffix": by, "example": example}


def _rows_from_class_dirs(
    class_dirs: Sequence[tuple[str, Path]],
    root: Path,
    *,
    image_subdir: Optional[str] = None,
    split: str = "",
    modality: str = "",
    ignored: Optional[list[Path]] = None,
) -> list[dict[str, Any]]:
    rows = []
    for raw_class, d in class_dirs:
        src = d
        if image_subdir is not None:
            sub = [s for s in _subdirs(d) if norm_name(s.name) == norm_name(image_subdir)]
            if sub:
                src = sub[0]
        for f in list_images(src, ignored=ignored):
            rel = f.relative_to(root).with_suffix("").as_posix()
            rows.append({"image_id": rel, "path": str(f), "raw": raw_class, "split": split, "modality": modality})
    return rows


def _finish(
    rows: list[dict[str, Any]],
    cfg: Any,
    source: str,
    *,
    canonical: Optional[Sequence[str]] = None,
    salt: Optional[str] = None,
    ignored: Optional[dict[str, Any]] = None,
) -> pd.DataFrame:
    """Apply the class map, drop mapped-out classes, build and de-duplicate the manifest.

    ``salt``: replace every ``image_id`` (a relative path or a user's id) with its salted hash
    (adapters whose ids are already safe, phantom, MedMNIST rows, RSNA hashes, pass None).
    ``ignored``: the files the adapter did not read (``df.attrs["ignored_files"]``).
    """
    cmap = _class_map(cfg)
    _quarantine_escapes(rows, cfg)
    if salt is not None:
        for r in rows:
            r["image_id"] = hash_image_id(r["image_id"], salt)
    raw = [r.pop("raw") for r in rows]
    labels, names, unknown = relabel(raw, cmap, canonical)
    kept = []
    for r, lab, unk in zip(rows, labels, unknown):
        if lab is None and not unk:
            continue  # the class map drops this class on purpose
        r["label"] = lab
        if unk and not r.get("problem"):
            r["problem"] = f"unknown label '{lab}' (not in data.class_map)"
        kept.append(r)
    df = flag_duplicate_ids(make_manifest(kept, names, source=source))
    if ignored and ignored.get("count"):
        df.attrs["ignored_files"] = ignored
    return df


def _inside(x: Path, root: Path) -> bool:
    return x == root or root in x.parents


def _quarantine_escapes(rows: list[dict[str, Any]], cfg: Any) -> None:
    """Quarantine rows whose file, once symlinks are resolved, lies outside the dataset root
    (the folder of ``data.path``, or of the CSV/npz it names); nothing opens them afterwards."""
    if not getattr(cfg, "path", None) or getattr(cfg, "allow_outside_root", False):
        return
    given = Path(str(cfg.path)).expanduser()
    root = (given if given.is_dir() else given.parent).resolve()
    for r in rows:
        path = str(r.get("path") or "")
        if not path or r.get("problem") or "://" in path:
            continue
        real = Path(path.split(NPZ_SEP)[0]).resolve()
        if not _inside(real, root):
            r["problem"] = (
                f"symlink leading outside the dataset root {root}; copy the file into the dataset, "
                "or set data.allow_outside_root=true"
            )


# --------------------------------------------------------------------------------------------
# phantom
# --------------------------------------------------------------------------------------------


def phantom_spec(cfg: Any) -> Any:
    """The :class:`~lungray.data.phantom.PhantomSpec` of a data config's ``phantom_*`` keys."""
    from lungray.data.phantom import PhantomSpec

    return PhantomSpec(
        n_classes=int(cfg.phantom_classes),
        difficulty=float(cfg.phantom_difficulty),
        seed=int(cfg.phantom_seed),
        images_per_patient=float(cfg.phantom_images_per_patient),
        series_fraction=float(cfg.phantom_series_fraction),
        series_length=int(cfg.phantom_series_length),
        sites=int(cfg.phantom_sites),
        site_label_correlation=float(cfg.phantom_site_label_correlation),
        markings=tuple(cfg.phantom_markings),
        copies=float(cfg.phantom_copies),
    )


@functools.lru_cache(maxsize=2)
def phantom_arrays(n: int, spec: Any, resolution: int) -> Any:
    """The generated phantom, memoised per process (a cache and its preprocessing variants share one draw)."""
    import dataclasses

    from lungray.data.phantom import generate_phantom

    knobs = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    return generate_phantom(n, resolution=resolution, **knobs)


def phantom_uri(spec: Any, i: int) -> str:
    """``phantom://<spec key>/<row>``: the path of row ``i`` of the phantom ``spec``."""
    return f"{PHANTOM_SCHEME}{spec.key}/{i}"


def parse_phantom_uri(uri: str) -> tuple[Any, int]:
    """(spec, index) of a ``phantom://`` path."""
    from lungray.data.phantom import PhantomSpec
    from lungray.errors import ConfigError

    m = re.fullmatch(re.escape(PHANTOM_SCHEME) + r"(.+)/(\d+)", uri)
    if not m:
        raise DataError(f"malformed phantom path '{uri}'")
    try:
        return PhantomSpec.from_key(m.group(1)), int(m.group(2))
    except (ConfigError, TypeError, ValueError) as e:
        raise DataError(f"malformed phantom path '{uri}': {e}") from None


@ADAPTERS.register("phantom")
def phantom_adapter(cfg: Any) -> pd.DataFrame:
    """The built-in phantom (``data.phantom_n`` images; the ``data.phantom_*`` keys): its layout only
    (labels, patients, sites), nothing is rendered here. Patient ids are hashed like a file
    source's, and left out with ``data.phantom_patient_ids: false`` (a Kaggle-like set without
    them: only the leakage audit's clusters then keep copies together)."""
    from lungray.data.phantom import CLASS_NAMES, image_id, layout, patient_id

    spec = phantom_spec(cfg)
    lay = layout(int(cfg.phantom_n), spec)
    names = CLASS_NAMES[spec.n_classes]
    salt = id_salt("phantom")
    expose = bool(getattr(cfg, "phantom_patient_ids", True))
    rows = [
        {
            "image_id": image_id(spec.seed, i),
            "path": phantom_uri(spec, i),
            "raw": names[int(lay.label[i])],
            "patient_id": hash_patient_id(patient_id(spec.seed, int(lay.patient[i])), salt) if expose else "",
            "site": f"site-{int(lay.site[i])}",
            "modality": "CR",
            "width": int(cfg.resolution),
            "height": int(cfg.resolution),
        }
        for i in range(len(lay))
    ]
    return _finish(rows, cfg, "phantom", canonical=names)


# --------------------------------------------------------------------------------------------
# class-per-folder trees
# --------------------------------------------------------------------------------------------


@ADAPTERS.register("folder")
def folder_adapter(cfg: Any) -> pd.DataFrame:
    """One folder per class (optionally under train/val/test folders)."""
    root = _root(cfg)
    dirs = [d for d in _subdirs(root) if norm_name(d.name) not in MASK_DIRS]
    if not dirs:
        raise DataError(f"{root}: no class folders found; the folder layout needs one subfolder per class")
    rows: list[dict[str, Any]] = []
    classes: set[str] = set()
    ignored = _loose_files(root)
    if all(d.name.lower() in SPLIT_DIRS for d in dirs):
        for sd in dirs:
            cdirs = [(d.name, d) for d in _subdirs(sd) if norm_name(d.name) not in MASK_DIRS]
            classes |= {c for c, _ in cdirs}
            ignored += _loose_files(sd)
            rows += _rows_from_class_dirs(cdirs, root, split=SPLIT_DIRS[sd.name.lower()], ignored=ignored)
    else:
        cdirs = [(d.name, d) for d in dirs]
        classes = {c for c, _ in cdirs}
        rows = _rows_from_class_dirs(cdirs, root, ignored=ignored)
    return _finish(
        rows, cfg, "folder", canonical=sorted(classes), salt=id_salt("folder"), ignored=_ignored_summary(ignored, root)
    )


def _loose_files(folder: Path) -> list[Path]:
    """Non-hidden files directly in ``folder`` (no class): images there belong to no class."""
    return [f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")]


def _canonical_class_dirs(dirs: Sequence[Path], canonical: Sequence[str]) -> list[tuple[str, Path]]:
    """(class name, folder): a folder whose :func:`norm_name` is a canonical class's takes that
    spelling ('NORMAL' -> 'Normal'). When several folders claim one class ('COVID' and 'Covid'),
    only one takes it (the exact spelling, else the first) and the others keep their own names, so
    ``data check`` reports them as near-identical classes instead of merging two folders silently.
    """
    canon = {norm_name(c): c for c in canonical}
    claims: dict[str, list[Path]] = {}
    for d in dirs:
        if norm_name(d.name) in canon:
            claims.setdefault(canon[norm_name(d.name)], []).append(d)
    owner = {c: next((d for d in ds if d.name == c), ds[0]) for c, ds in claims.items()}
    out = []
    for d in dirs:
        c = canon.get(norm_name(d.name))
        out.append((c if c is not None and owner[c] == d else d.name, d))
    return out


def _find_layout_root(root: Path, wanted: Sequence[str], min_hits: int = 2, depth: int = 2) -> Optional[Path]:
    """``root`` or a folder at most ``depth`` levels below it holding >= min_hits of ``wanted``."""
    keys = {norm_name(w) for w in wanted}
    frontier = [root]
    for _ in range(depth + 1):
        nxt = []
        for d in frontier:
            subs = _subdirs(d)
            if len({norm_name(s.name) for s in subs} & keys) >= min_hits:
                return d
            nxt += subs
        frontier = nxt
    return None


def _attach_sibling_masks(rows: list[dict[str, Any]], class_dirs: Sequence[Path]) -> None:
    """Set ``mask_path`` of ``<class>/images/<rel>`` rows to ``<class>/masks/<rel>`` when it exists.

    The Radiography Database ships a lung mask per image under the same file name; an image
    without one keeps an empty ``mask_path`` (its mask is unknown, not empty).
    """
    pairs = []
    for d in class_dirs:
        subs = _subdirs(d)
        images = [s for s in subs if norm_name(s.name) == "images"]
        masks = [s for s in subs if norm_name(s.name) in MASK_DIRS]
        if images and masks:
            pairs.append((images[0], masks[0]))
    for r in rows:
        p = Path(r["path"])
        for img_dir, mask_dir in pairs:
            if p.is_relative_to(img_dir):
                cand = mask_dir / p.relative_to(img_dir)
                if cand.is_file():
                    r["mask_path"] = str(cand)
                break


@ADAPTERS.register("covid_radiography")
def covid_radiography_adapter(cfg: Any) -> pd.DataFrame:
    """COVID-19 Radiography Database (class/images/*.png; class/masks/*.png as mask_path)."""
    top = _root(cfg)
    root = _find_layout_root(top, RADIOGRAPHY_CLASSES)
    if root is None:
        raise DataError(
            f"{top}: no COVID-19 Radiography Database class folders ({', '.join(RADIOGRAPHY_CLASSES)}) found "
            "within two levels; point data.path at the extracted download or use data.source=folder"
        )
    cdirs = _canonical_class_dirs([d for d in _subdirs(root) if norm_name(d.name) not in MASK_DIRS], RADIOGRAPHY_CLASSES)
    ignored: list[Path] = []
    rows = _rows_from_class_dirs(cdirs, root, image_subdir="images", modality="XR", ignored=ignored)
    _attach_sibling_masks(rows, [d for _, d in cdirs])
    present = [c for c, _ in cdirs]
    canonical = [c for c in RADIOGRAPHY_CLASSES if c in present] + sorted(set(present) - set(RADIOGRAPHY_CLASSES))
    return _finish(
        rows, cfg, "covid_radiography", canonical=canonical, salt=id_salt("covid_radiography"),
        ignored=_ignored_summary(ignored, root),
    )


@ADAPTERS.register("covid_ct_xray")
def covid_ct_xray_adapter(cfg: Any) -> pd.DataFrame:
    """COVID-19 X-ray and CT dataset (CT/ and X-ray/ trees of COVID / Non-COVID)."""
    top = _root(cfg)
    if not cfg.modality:
        raise DataError(
            f"data.modality is required for data.source 'covid_ct_xray' ({top}); set it to CT or X-ray"
        )
    mkey = norm_name(str(cfg.modality))
    if mkey not in CT_XRAY_MODALITIES:
        raise DataError(f"data.modality '{cfg.modality}' is not valid for covid_ct_xray; valid choices: CT, X-ray")
    mod_name, mod_code = CT_XRAY_MODALITIES[mkey]
    tree = None
    if _find_layout_root(top, CT_XRAY_CLASSES, depth=0) is not None and not any(
        norm_name(s.name) in CT_XRAY_MODALITIES for s in _subdirs(top)
    ):
        tree = top  # data.path already points at one modality subtree
    else:
        frontier = [top]
        for _ in range(3):
            hits = [s for d in frontier for s in _subdirs(d) if norm_name(s.name) == mkey]
            if hits:
                tree = hits[0]
                break
            frontier = [s for d in frontier for s in _subdirs(d)]
    if tree is None:
        raise DataError(
            f"{top}: no '{mod_name}' folder found within three levels; the layout is "
            "'COVID-19 Dataset/CT/{COVID,Non-COVID}' and 'COVID-19 Dataset/X-ray/{COVID,Non-COVID}'"
        )
    cdirs = _canonical_class_dirs([d for d in _subdirs(tree) if norm_name(d.name) not in MASK_DIRS], CT_XRAY_CLASSES)
    if not cdirs:
        raise DataError(f"{tree}: no class folders (COVID, Non-COVID) in the {mod_name} tree")
    ignored: list[Path] = []
    rows = _rows_from_class_dirs(cdirs, tree, modality=mod_code, ignored=ignored)
    for r in rows:
        r["image_id"] = f"{mod_name}/{r['image_id']}"
    present = [c for c, _ in cdirs]
    canonical = [c for c in CT_XRAY_CLASSES if c in present] + sorted(set(present) - set(CT_XRAY_CLASSES))
    return _finish(
        rows, cfg, "covid_ct_xray", canonical=canonical, salt=id_salt("covid_ct_xray"), ignored=_ignored_summary(ignored, tree)
    )


# --------------------------------------------------------------------------------------------
# RSNA
# --------------------------------------------------------------------------------------------


def _read_csv(path: Path, required: Sequence[str]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable CSV ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(df.columns) or 'none'} "
            f"(expected {', '.join(required)})"
        )
    return df


@ADAPTERS.register("rsna")
def rsna_adapter(cfg: Any) -> pd.DataFrame:
    """RSNA Pneumonia Detection (DICOMs named by patientId + the labels/boxes CSV)."""
    top = _root(cfg)
    labels_csv = next(iter(sorted(top.glob("stage_*_train_labels.csv"))), None) or next(iter(sorted(top.rglob("*train_labels*.csv"))), None)
    if labels_csv is None:
        raise DataError(f"{top}: no stage_2_train_labels.csv found; the RSNA layout needs it next to stage_2_train_images/")
    base = labels_csv.parent
    img_dir = next(iter(sorted(d for d in base.glob("stage_*_train_images") if d.is_dir())), None)
    if img_dir is None:
        raise DataError(f"{base}: no stage_2_train_images/ folder next to {labels_csv.name}")
    lab = _read_csv(labels_csv, ["patientId", "x", "y", "width", "height", "Target"])
    detail_csv = next(iter(sorted(base.glob("stage_*_detailed_class_info.csv"))), None)
    cmap = _class_map(cfg)
    detailed = cmap is not None and any(k in cmap for k in RSNA_DETAILED_CLASSES[1:])
    details: dict[str, str] = {}
    if detailed:
        if detail_csv is None:
            raise DataError(
                f"{base}: data.class_map names the detailed RSNA classes but stage_2_detailed_class_info.csv is missing"
            )
        det = _read_csv(detail_csv, ["patientId", "class"])
        details = dict(zip(det["patientId"].str.strip(), det["class"].str.strip()))
    salt = id_salt("rsna")
    rows: dict[str, dict[str, Any]] = {}
    for i, r in enumerate(lab.itertuples(index=False), start=1):
        pid = str(r.patientId).strip()
        where = f"{labels_csv.name} row {i} (line {i + 1})"
        if not pid:
            continue
        row = rows.get(pid)
        if row is None:
            pid_hash = hash_patient_id(pid, salt)
            row = rows[pid] = {
                "image_id": "rsna_" + pid_hash[2:],
                "path": str(img_dir / f"{pid}.dcm"),
                "patient_id": pid_hash,
                "modality": "CR",
                "boxes_list": [],
                "targets": set(),
                "first": where,
                "problem": "",
            }
        t = str(r.Target).strip()
        row["targets"].add(t)
        if t not in ("0", "1"):
            row["problem"] = row["problem"] or f"unknown label Target='{t}' ({where})"
        box = [str(r.x).strip(), str(r.y).strip(), str(r.width).strip(), str(r.height).strip()]
        if all(box):
            try:
                row["boxes_list"].append([float(v) for v in box])
            except ValueError:
                row["problem"] = row["problem"] or f"non-numeric box {box} ({where})"
        elif any(box) and t == "1":
            row["problem"] = row["problem"] or f"incomplete box {box} ({where})"
    out = []
    for pid, row in rows.items():
        if detailed:
            raw = details.get(pid, "")
            if not raw:
                row["problem"] = row["problem"] or f"no class in {detail_csv.name} ({row['first']})"
        else:
            raw = RSNA_TARGET_CLASSES[0] if "1" in row["targets"] else RSNA_TARGET_CLASSES[1]
        if not Path(row["path"]).is_file():
            # the file name is the patient id: the reason names the CSV row instead
            row["problem"] = row["problem"] or f"missing DICOM file ({row['first']})"
        out.append(
            {
                "image_id": row["image_id"],
                "path": row["path"],
                "raw": raw,
                "patient_id": row["patient_id"],
                "modality": "CR",
                "boxes": json.dumps(row["boxes_list"]),
                "problem": row["problem"],
            }
        )
    canonical = RSNA_DETAILED_CLASSES if detailed else RSNA_TARGET_CLASSES
    return _finish(out, cfg, "rsna", canonical=canonical)


# --------------------------------------------------------------------------------------------
# generic CSV
# --------------------------------------------------------------------------------------------

_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test", "testing": "test", "": ""}


@ADAPTERS.register("csv")
def csv_adapter(cfg: Any) -> pd.DataFrame:
    """A CSV of path,label[,patient_id][,split][,image_id][,site] (paths relative to the CSV)."""
    path = _root(cfg, suffix=".csv")
    df = _read_csv(path, ["path", "label"])
    base = path.parent
    salt = id_salt(f"csv:{path.name}")
    has_pid = "patient_id" in df.columns
    has_split = "split" in df.columns
    has_id = "image_id" in df.columns
    has_site = "site" in df.columns
    allow_outside = bool(getattr(cfg, "allow_outside_root", False))
    rows = []
    for i, r in enumerate(df.to_dict("records"), start=1):
        where = f"{path.name} row {i} (line {i + 1})"
        raw_path = str(r["path"]).strip()
        label = str(r["label"]).strip()
        problem = ""
        if not raw_path:
            problem = f"empty path ({where})"
            full = ""
        else:
            full, inside = _under_root(raw_path, base)
            if not inside and not allow_outside:
                problem = (
                    f"path outside the dataset root '{raw_path}' ({where}); rows must point under the CSV's folder "
                    f"{base}, or set data.allow_outside_root=true"
                )
            elif not Path(full).is_file():
                problem = f"missing file '{raw_path}' ({where})"
        if not label and not problem:
            problem = f"empty label ({where})"
        split = str(r.get("split", "")).strip().lower() if has_split else ""
        if split not in _SPLIT_ALIASES:
            problem = problem or f"unknown split '{r.get('split')}' ({where}); use train, val or test"
            split = ""
        image_id = str(r.get("image_id", "")).strip() if has_id else ""
        if not image_id:
            image_id = Path(raw_path).with_suffix("").as_posix() if raw_path else f"row{i}"
        rows.append(
            {
                "image_id": image_id,
                "path": full,
                "raw": label,
                "patient_id": hash_patient_id(r.get("patient_id"), salt) if has_pid else "",
                "split": _SPLIT_ALIASES.get(split, ""),
                "site": str(r.get("site", "") or "").strip() if has_site else "",
                "problem": problem,
            }
        )
    return _finish(rows, cfg, "csv", canonical=None, salt=salt)


def _under_root(raw_path: str, base: Path) -> tuple[str, bool]:
    """(the path to read, whether it lies under ``base``) for a CSV path.

    Under the root means: the real path, after ``..`` and every symlink, lies under the real
    root (so ``img/../../etc/passwd`` and a symlink to it are outside, and an absolute path
    through a symlinked mount of the root is inside).
    """
    p = Path(raw_path).expanduser()
    joined = p if p.is_absolute() else base / p
    real = joined.resolve()
    # the resolved path decides (issue 23): a row spelled inside the root that is a symlink to
    # /etc/passwd is outside, as is img/../../etc/passwd; a path through a symlinked mount of
    # the root itself resolves inside it
    return str(real), _inside(real, base.resolve())


# --------------------------------------------------------------------------------------------
# MedMNIST
# --------------------------------------------------------------------------------------------


@ADAPTERS.register("medmnist")
def medmnist_adapter(cfg: Any) -> pd.DataFrame:
    """A MedMNIST .npz (PneumoniaMNIST: Normal/Pneumonia)."""
    path = _root(cfg, suffix=".npz")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__})") from None
    with z:
        splits = [s for s in ("train", "val", "test") if f"{s}_images" in z.files]
        if not splits:
            raise DataError(f"{path}: no train_images/val_images/test_images arrays (found {', '.join(z.files) or 'none'})")
        labels_by_split = {}
        for s in splits:
            if f"{s}_labels" not in z.files:
                raise DataError(f"{path}: '{s}_images' has no matching '{s}_labels' array")
            y = np.asarray(z[f"{s}_labels"])
            n = z[f"{s}_images"].shape[0]
            if y.ndim == 2 and y.shape[1] == 1:
                y = y[:, 0]
            if y.ndim != 1:
                raise DataError(
                    f"{path}: '{s}_labels' has shape {y.shape}: multi-label MedMNIST sets (ChestMNIST) are not supported"
                )
            if len(y) != n:
                raise DataError(f"{path}: '{s}_labels' has {len(y)} rows but '{s}_images' has {n}")
            labels_by_split[s] = y.astype(np.int64)
    all_y = np.concatenate(list(labels_by_split.values()))
    k = int(all_y.max()) + 1 if len(all_y) else 0
    if "pneumonia" in path.name.lower() and k <= 2:
        names: Sequence[str] = PNEUMONIAMNIST_CLASSES
    else:
        names = [str(i) for i in range(k)]
    rows = []
    for s, y in labels_by_split.items():
        for i, c in enumerate(y):
            rows.append(
                {
                    "image_id": f"{s}/{i}",
                    "path": f"{path}{NPZ_SEP}{s}/{i}",
                    "raw": names[int(c)] if 0 <= c < len(names) else str(int(c)),
                    "split": s,
                    "modality": "XR",
                }
            )
    return _finish(rows, cfg, "medmnist", canonical=list(names))


def build_manifest(cfg: Any) -> pd.DataFrame:
    """Run the adapter named by ``cfg.source``."""
    return ADAPTERS.get(cfg.source)(cfg)
