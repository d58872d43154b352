"""``lungray data check``: find every problem in a dataset before anything trains.

:func:`check_dataset` builds the manifest with the configured adapter and then looks for:

- per image: missing, zero-byte, truncated or non-image files, DICOM without pixel data,
  multi-frame DICOM, compressed DICOM with no installed decoder (:func:`lungray.data.decode.probe`,
  no full decode), unknown labels (a source class not in ``data.class_map``), CSV rows pointing
  at missing files (with the CSV row and line), duplicate image ids;
- per dataset: classes with no usable image, and training pools too small for the requested
  sizes (the same held-out split ``prepare_data`` will make, so the numbers match).

Default: the bad rows are *quarantined* (their ``problem`` column says why; every later step
skips them) and the run goes on. ``strict`` raises :class:`~lungray.errors.DataError` instead.
Output is one readable line per problem and a summary with counts per kind. Lines name the
file relative to the dataset root and never contain DICOM patient fields; for RSNA, whose file
names are patient ids, lines name the hashed image id and the CSV row instead.
"""

from __future__ import annotations

import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd

from lungray.errors import DataError

#: show at most this many lines per problem kind before summarising the rest
MAX_LINES_PER_KIND = 20


@dataclass
class CheckReport:
    """What :func:`check_dataset` found.

    ``manifest`` has every row with its ``problem`` reason (empty = good); ``problems`` holds one
    readable line per problem (row and dataset level); ``counts`` maps problem kind -> count;
    ``class_counts`` the usable images per class; ``ok`` is true when nothing was found.
    """

    manifest: pd.DataFrame
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    class_counts: dict[str, int] = field(default_factory=dict)
    dataset_problems: list[str] = field(default_factory=list)
    summary: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def n_quarantined(self) -> int:
        return int((self.manifest["problem"] != "").sum())


def problem_kind(reason: str) -> str:
    """The kind of a problem reason, without file names and row numbers.

    >>> problem_kind("missing file 'a/b.png' (labels.csv row 3 (line 4))")
    'missing file'
    >>> problem_kind("multi-frame DICOM (10 frames)")
    'multi-frame DICOM'
    """
    return re.split(r"\s*[('\"]", reason, maxsplit=1)[0].strip() or reason


def _display(row: Any, root: Optional[Path], source: str) -> str:
    if source == "rsna":
        return str(row["image_id"])  # RSNA file names are patient ids: name the hash only
    path = str(row["path"])
    if "://" in path or "::" in path:
        return str(row["image_id"])
    if root is not None:
        try:
            return Path(path).relative_to(root).as_posix()
        except ValueError:
            pass
    return path


def probe_manifest(manifest: pd.DataFrame, *, workers: int = 4, progress: bool = False) -> pd.DataFrame:
    """Fill ``problem`` for good rows whose file fails :func:`~lungray.data.decode.probe`."""
    from lungray.data.decode import probe

    df = manifest.copy()
    is_file = ~df["path"].str.contains("://|::", regex=True).to_numpy()
    todo = np.flatnonzero((df["problem"] == "").to_numpy() & is_file)
    paths = df["path"].to_numpy()[todo]
    if len(todo) == 0:
        return df
    iterator: Any
    with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
        iterator = ex.map(probe, paths, chunksize=64)
        if progress and len(todo) > 500:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, total=len(todo), desc="checking files", unit="img")
        reasons = list(iterator)
    col = df["problem"].to_numpy().copy()
    col[todo] = reasons
    df["problem"] = col
    return df


def class_counts(manifest: pd.DataFrame, class_names: Sequence[str]) -> dict[str, int]:
    good = manifest[manifest["problem"] == ""]
    counts = np.bincount(good["class_index"].to_numpy(), minlength=len(class_names))
    return {c: int(k) for c, k in zip(class_names, counts)}


def check_dataset(
    cfg: Any,
    sizes: Sequence[int] = (),
    strict: bool = False,
    echo: Optional[Callable[[str], Any]] = print,
    *,
    manifest: Optional[pd.DataFrame] = None,
    probe_files: bool = True,
) -> CheckReport:
    """Validate a dataset (see the module docstring); return a :class:`CheckReport`.

    ``sizes`` are the training sizes the study will request: each is checked against the
    training pool left after the held-out evaluation and validation splits. ``manifest`` skips
    the adapter (``prepare_data`` passes the one it built). With ``strict`` any problem raises
    :class:`DataError` after everything was reported.
    """
    from lungray.data.adapters import build_manifest
    from lungray.data.manifest import class_names_of

    out = echo or (lambda s: None)
    df = build_manifest(cfg) if manifest is None else manifest
    names = class_names_of(df)
    if probe_files:
        df = probe_manifest(df, progress=echo is not None)
    df.attrs["class_names"] = list(names)
    source = str(getattr(cfg, "source", "") or df.attrs.get("source", ""))
    root = Path(str(cfg.path)).expanduser().resolve() if getattr(cfg, "path", None) else None
    if root is not None and root.is_file():
        root = root.parent

    lines: list[str] = []
    bad = df[df["problem"] != ""]
    kinds = Counter(problem_kind(p) for p in bad["problem"])
    shown: Counter = Counter()
    for _, row in bad.iterrows():
        k = problem_kind(row["problem"])
        line = f"{_display(row, root, source)}: {row['problem']}"
        lines.append(line)
        shown[k] += 1
        if shown[k] <= MAX_LINES_PER_KIND:
            out(line)
        elif shown[k] == MAX_LINES_PER_KIND + 1:
            out(f"... {kinds[k] - MAX_LINES_PER_KIND} more '{k}' problem(s) (see the manifest's problem column)")

    counts_per_class = class_counts(df, names)
    ds_problems: list[str] = []
    if not names:
        ds_problems.append("no classes found: the dataset has no labelled images")
    for c, k in counts_per_class.items():
        if k == 0:
            ds_problems.append(
                f"class '{c}' has no usable images; add images, fix the quarantined ones, or drop it with data.class_map"
            )
    if sizes and not ds_problems:
        ds_problems += _pool_problems(df, cfg, sizes, names)
    for line in ds_problems:
        out(line)
    lines += ds_problems

    n, n_bad = len(df), len(bad)
    per_class = ", ".join(f"{c} {k}" for c, k in counts_per_class.items())
    if lines:
        kinds_txt = ", ".join(f"{v} {k}" for k, v in kinds.most_common())
        summary = (
            f"{n_bad} of {n} images quarantined" + (f" ({kinds_txt})" if kinds_txt else "")
            + (f"; {len(ds_problems)} dataset problem(s)" if ds_problems else "")
            + f"; usable per class: {per_class}"
        )
    else:
        summary = f"all {n} images OK; per class: {per_class}"
    out(summary)
    counts = dict(kinds)
    for line in ds_problems:
        counts[problem_kind(line)] = counts.get(problem_kind(line), 0) + 1
    report = CheckReport(
        manifest=df,
        problems=lines,
        counts=counts,
        class_counts=counts_per_class,
        dataset_problems=ds_problems,
        summary=summary,
    )
    if strict and lines:
        first = "; ".join(lines[:3]) + (f"; ... ({len(lines) - 3} more)" if len(lines) > 3 else "")
        raise DataError(f"data check failed (strict): {summary}. {first}")
    return report


def _pool_problems(df: pd.DataFrame, cfg: Any, sizes: Sequence[int], names: Sequence[str]) -> list[str]:
    """Training sizes the pool cannot supply (same split as ``prepare_data``, before leakage drops)."""
    from lungray.data.prepare import groups_of, make_splits

    good = df[df["problem"] == ""].reset_index(drop=True)
    labels = good["class_index"].to_numpy().astype(np.int64)
    groups = groups_of(good["patient_id"].to_numpy())
    try:
        eval_idx, val_idx, pool_idx, _ = make_splits(labels, groups, good["split"].to_numpy(), cfg)
    except DataError as e:
        return [str(e)]
    from lungray.data.splits import nested_subsets

    out = []
    for n in sorted(set(int(s) for s in sizes)):
        try:
            nested_subsets(labels, pool_idx, [n], seed=0, groups=groups, balanced=bool(cfg.class_balanced), class_names=tuple(names))
        except DataError as e:
            out.append(str(e))
    return out


def guess_source(path: str | Path) -> str:
    """The adapter name for a dataset path, from its layout (see :mod:`lungray.data.adapters`).

    ``.npz`` -> medmnist, ``.csv`` -> csv; a folder with ``stage_*_train_labels.csv`` -> rsna;
    three or more of the COVID-19 Radiography Database class folders -> covid_radiography; a
    ``CT`` or ``X-ray`` folder holding COVID / Non-COVID folders -> covid_ct_xray; else folder.
    """
    from lungray.data.adapters import (
        CT_XRAY_CLASSES,
        CT_XRAY_MODALITIES,
        RADIOGRAPHY_CLASSES,
        _find_layout_root,
        _subdirs,
        norm_name,
    )

    p = Path(str(path)).expanduser()
    if not p.exists():
        raise DataError(f"dataset path '{p}' does not exist")
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix == ".npz":
            return "medmnist"
        if suffix == ".csv":
            return "csv"
        raise DataError(f"{p}: cannot guess the dataset kind of a '{suffix}' file; pass --source (csv or medmnist)")
    if any(p.glob("stage_*_train_labels.csv")) or any(p.glob("*/stage_*_train_labels.csv")):
        return "rsna"
    if _find_layout_root(p, RADIOGRAPHY_CLASSES, min_hits=3) is not None:
        return "covid_radiography"
    frontier = [p]
    for _ in range(4):
        for d in frontier:
            if norm_name(d.name) in CT_XRAY_MODALITIES and _find_layout_root(d, CT_XRAY_CLASSES, depth=0) is not None:
                return "covid_ct_xray"
        frontier = [s for d in frontier for s in _subdirs(d)]
    return "folder"


def report_duplicates(
    cfg: Any,
    manifest: pd.DataFrame,
    cache_dir: str | Path,
    echo: Optional[Callable[[str], Any]] = print,
    progress: bool = True,
) -> dict[str, Any]:
    """The leakage audit's duplicate clusters of a checked dataset (issue 11.1), printed.

    Decodes the good rows into the cache (reused by a study with the same cache folder and
    settings) and runs the duplicate search over all of them
    (:func:`lungray.data.prepare.find_dataset_duplicates`). Duplicates are not problems: a study
    keeps each cluster on one side of its split. Returns :func:`lungray.data.leakage.cluster_summary`
    plus ``pairs_by_stage``.
    """
    from lungray.data.cache import build_cache
    from lungray.data.leakage import cluster_summary
    from lungray.data.prepare import find_dataset_duplicates

    out = echo or (lambda s: None)
    good = manifest[manifest["problem"] == ""].reset_index(drop=True)
    good.attrs.update(manifest.attrs)
    if good.empty:
        return {"n_clusters": 0, "n_images_in_clusters": 0, "largest": 0, "examples": [], "pairs_by_stage": {}}
    root = build_cache(good, cfg, cache_dir, progress=progress)
    pairs = find_dataset_duplicates(root, int(cfg.leakage_max_distance), progress=progress)
    cached = pd.read_parquet(root / "manifest.parquet", columns=["image_id", "patient_id"])
    s = cluster_summary(pairs, len(cached), cached["image_id"].to_numpy())
    by = {k: int((pairs["stage"] == k).sum()) for k in ("sha256", "phash", "keypoints")}
    out(
        f"duplicates: {by['sha256']} exact pair(s), {by['phash'] + by['keypoints']} near-duplicate pair(s) "
        f"({by['phash']} by perceptual hash, {by['keypoints']} by keypoints); {s['n_clusters']} cluster(s) holding "
        f"{s['n_images_in_clusters']} images, the largest {s['largest']}"
    )
    for e in s["examples"][:3]:
        out(f"  cluster of {e['size']}: {', '.join(map(str, e['members']))}" + (f" and {e['more']} more" if e["more"] else ""))
    if s["n_clusters"] and (cached["patient_id"] == "").all():
        out("  no patient ids: a split of this dataset is image-level, grouped only by these clusters")
    return {**s, "pairs_by_stage": by}
