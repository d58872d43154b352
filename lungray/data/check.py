"""``lungray data check``: find every problem in a dataset before anything trains.

:func:`check_dataset` builds the manifest with the configured adapter and then looks for:

- per file (:func:`check_file`, with :func:`lungray.data.decode.decode`, the very function the
  cache decodes with, so ``data check`` and the sweep quarantine the same files for the same
  reasons): missing, zero-byte, truncated or non-image files, images over the pixel limit or
  under the size limit, multi-page/animated files, NaN/inf pixels, blank images, DICOM without
  pixel data, multi-frame, oddly encoded, truncated or undecodable-compressed DICOM; the
  ``sha256`` (and, when decoded, ``phash``/``width``/``height``) columns are filled;
- per row (from the adapter): unknown labels (a source class not in ``data.class_map``), CSV
  rows pointing at missing files or outside the dataset root (with the CSV row and line),
  duplicate image ids;
- label errors: the same bytes filed under two labels (both files quarantined, named as a pair);
- per dataset, *errors* (the dataset cannot be used): no images, fewer than two classes with
  usable images, a class with none, a held-out split that cannot be made, a split that would
  leave a class without evaluation, validation or training images or with fewer than
  ``data.min_eval_per_class`` / ``data.min_val_per_class`` of them (:mod:`lungray.data.guards`,
  issue 18), training sizes the pool cannot supply; after the duplicate search
  (:func:`report_duplicates`), a duplicate cluster too large to be copies of one film and the
  split it forces;
- per dataset, *warnings* (it would train, probably not as meant; refused under ``strict``):
  near-identical class names (case, whitespace, ``-``/``_``, look-alike letters ``l/I/1``,
  ``O/0``, Cyrillic/Greek homoglyphs) with the exact ``data.class_map`` line that merges them;
  duplicate pairs across labels (label conflicts or false pairs).

Default: bad rows are *quarantined* (their ``problem`` column says why; every later step skips
them) and the run goes on with warnings. ``strict`` raises :class:`~lungray.errors.DataError`
after everything was reported. Output is one line per problem and a summary with counts per
kind. Lines name the file relative to the dataset root (the user must find it; outputs only ever
carry the hashed image id) with control characters escaped (:func:`printable`: a file name with
a newline cannot forge an output line), and never contain DICOM patient fields; for RSNA, whose
file names are patient ids, lines name the hashed image id and the CSV row instead.
"""

from __future__ import annotations

import os
import json
import re
import unicodedata
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd

from lungray.data.decode import hint_for, problem_kind
from lungray.errors import DataError

__all__ = ["check_dataset", "check_file", "CheckReport", "exit_status", "printable", "problem_kind", "hint_for"]

#: show at most this many lines per problem kind before summarising the rest
MAX_LINES_PER_KIND = 20


@dataclass
class CheckReport:
    """What :func:`check_dataset` found.

    ``manifest`` has every row with its ``problem`` reason (empty = good). ``problems`` holds one
    printable line per problem: quarantined rows, then ``dataset_problems`` (errors: the dataset
    cannot be used), then ``warnings`` (it can, but probably not as meant). ``notes`` are
    information only (ignored files, same-label copies). ``counts`` maps problem kind -> count;
    ``class_counts`` the usable images per class.
    """

    manifest: pd.DataFrame
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    class_counts: dict[str, int] = field(default_factory=dict)
    dataset_problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    summary: str = ""

    @property
    def ok(self) -> bool:
        """Nothing quarantined, no error, no warning."""
        return not self.problems

    @property
    def usable(self) -> bool:
        """The dataset can be trained on (quarantined rows and warnings allowed)."""
        return not self.dataset_problems

    @property
    def n_quarantined(self) -> int:
        return int((self.manifest["problem"] != "").sum())


def printable(text: Any) -> str:
    """``text`` with control and format characters escaped, so that one line stays one line.

    A file or class name may hold a newline, a carriage return, an ANSI escape or a bidi
    override (U+202E); printed raw they forge or hide output lines.

    >>> printable("a\\nb\\u202ec.png")
    'a\\\\nb\\\\u202ec.png'
    >>> printable("Pneumonie virale é")
    'Pneumonie virale é'
    """
    s = str(text)
    if s.isprintable():
        return s
    return "".join(
        c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii")
        for c in s
    )


def _display(row: Any, root: Optional[Path], source: str, name_files: bool = True) -> str:
    """How a row is named in a message: its path under the root (``data check``, the data
    owner's tool), or its hashed image id (the sweep: ``name_files=False``, issue 23 point 6,
    since file names are often patient ids)."""
    if source == "rsna" or not name_files:
        return str(row["image_id"])  # RSNA file names are patient ids: name the hash only
    path = str(row["path"])
    if not path:
        return ""  # an empty CSV path: the reason names the row
    if "://" in path or "::" in path:
        return str(row["image_id"])
    if root is not None:
        try:
            return Path(path).relative_to(root).as_posix()
        except ValueError:
            pass
    return path


def _row_line(row: Any, root: Optional[Path], source: str, name_files: bool = True) -> str:
    """``<file>: <reason>; <what to do>`` (the manifest's problem column holds the reason only)."""
    where = _display(row, root, source, name_files)
    reason = str(row["problem"])
    hint = hint_for(reason)
    line = f"{where}: {reason}" if where else reason
    return f"{line}; {hint}" if hint and hint not in reason else line


# --------------------------------------------------------------------------------------------
# per file: the one check data check and the sweep's preparation share
# --------------------------------------------------------------------------------------------


def check_file(path: str, decode_pixels: bool = True) -> dict[str, Any]:
    """Check one manifest path; return ``problem`` ('' = good), ``sha256``, ``phash``, ``width``, ``height``.

    ``decode_pixels``: decode it fully with :func:`lungray.data.decode.decode` (what the cache
    does, so the verdict is the cache's) and fill ``phash`` (the cache's dihedral hash 0),
    ``width``/``height`` (the decoded size); else only :func:`~lungray.data.decode.probe` (every
    check that needs no decoding, same reasons). ``sha256`` is filled for every readable file.
    """
    from lungray.data.decode import NPZ_SEP, PHANTOM_SCHEME, ImageError, decode, npz_row, probe
    from lungray.data.hashing import sha256_file

    out: dict[str, Any] = {"problem": "", "sha256": "", "phash": "", "width": 0, "height": 0}
    if path.startswith(PHANTOM_SCHEME):
        return out
    if not decode_pixels:
        out["problem"] = probe(path)
    else:
        try:
            img = decode(path)
        except ImageError as e:
            out["problem"] = e.reason
        except DataError as e:
            out["problem"] = str(e)
        except Exception as e:  # a decoder bug on one file must not kill the check (the cache does the same)
            out["problem"] = f"decode failed ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]})"
        else:
            from lungray.data.cache import _hash_input
            from lungray.data.hashing import dihedral_hashes

            out["height"], out["width"] = int(img.shape[0]), int(img.shape[1])
            out["phash"] = f"{int(dihedral_hashes(_hash_input(img))[0]):016x}"
    if out["problem"]:
        return out
    try:
        if NPZ_SEP in path:
            import hashlib

            out["sha256"] = hashlib.sha256(np.ascontiguousarray(npz_row(path)).tobytes()).hexdigest()
        else:
            out["sha256"] = sha256_file(path)
    except (OSError, DataError) as e:
        out["problem"] = f"unreadable file ({type(e).__name__})"
    return out


#: The most one full decode can hold at once: an image at the pixel limit (``MAX_PIXELS``,
#: 89.5 Mpx) as RGBA 16-bit (8 bytes per pixel) plus PIL's and numpy's working copies. Measured
#: (issue 23): four 81-Mpx RGBA16 PNGs decoded in 4 threads peaked at 4.52 GB, 1.13 GB each.
DECODE_PEAK_BYTES = 1_250_000_000


def decode_workers(decode_pixels: bool, most: int = 4, *, cpus: Optional[int] = None, available: Optional[int] = None) -> int:
    """Threads for :func:`check_files`: at most ``most``, one per CPU this process may use, and
    (decoding) as many worst-case decodes as fit in half the memory available now."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = max(1, min(int(most), int(cpus)))
    if decode_pixels:
        if available is None:
            import psutil

            available = int(psutil.virtual_memory().available)
        n = max(1, min(n, int(available // 2 // DECODE_PEAK_BYTES)))
    return n


def check_files(
    manifest: pd.DataFrame, *, decode_pixels: bool = True, workers: Optional[int] = None, progress: bool = False
) -> pd.DataFrame:
    """:func:`check_file` on every good row; fills ``problem``, ``sha256`` (and the decode columns).

    ``workers``: threads (default :func:`decode_workers`: bounded by the CPUs and the memory of
    this machine, not a fixed 4)."""
    df = manifest.copy()
    workers = decode_workers(decode_pixels) if workers is None else workers
    todo = np.flatnonzero((df["problem"] == "").to_numpy() & ~df["path"].str.startswith("phantom://").to_numpy())
    if len(todo) == 0:
        return df
    paths = df["path"].to_numpy()[todo]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
        iterator: Any = ex.map(lambda p: check_file(str(p), decode_pixels), paths)
        if progress and len(todo) > 500:
            from lungray.data.progress import progress_bar

            what = "decoding" if decode_pixels else "checking"
            iterator = progress_bar(iterator, total=len(todo), desc=f"{what} files", unit="img")
        results = list(iterator)
    for col in ("problem", "sha256", "phash", "width", "height"):
        values = df[col].to_numpy().copy()
        new = [r[col] for r in results]
        if col in ("width", "height", "phash"):
            keep = [bool(v) for v in new]  # a probe leaves these to the cache
            values[todo[keep]] = [v for v, k in zip(new, keep) if k]
        else:
            values[todo] = new
        df[col] = values
    return df


# --------------------------------------------------------------------------------------------
# labels
# --------------------------------------------------------------------------------------------

#: letters that look alike in a label typed by hand: digits/Latin (l I 1 |, O 0) and the
#: Cyrillic/Greek letters that render like Latin ones (a COVID folder typed on a Russian layout)
_LOOKALIKE = str.maketrans(
    {
        "1": "l", "i": "l", "|": "l", "!": "l", "0": "o",
        "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p",
        "с": "c", "т": "t", "у": "y", "х": "x", "і": "l", "ј": "j", "ѕ": "s",
        "α": "a", "β": "b", "ε": "e", "ι": "l", "κ": "k", "ν": "v", "ο": "o", "ρ": "p",
        "τ": "t", "υ": "u", "χ": "x",
    }
)


def class_key(name: str) -> str:
    """A key under which near-identical class names collide.

    Unicode-normalised (NFKC), case-folded, with whitespace, ``-``, ``_`` and ``.`` removed and
    look-alike characters folded (``l I 1 |`` -> ``l``, ``O 0`` -> ``o``, Cyrillic/Greek
    homoglyphs -> Latin).

    >>> class_key("COVID") == class_key("COVlD") == class_key("Covid ") == class_key("C0VID")
    True
    >>> class_key("Non-COVID") == class_key("non_covid")
    True
    >>> class_key("Normal") == class_key("Pneumonia")
    False
    """
    s = unicodedata.normalize("NFKC", str(name)).casefold()
    s = re.sub(r"[\s\-_.]+", "", s)
    return s.translate(_LOOKALIKE)


def _yaml_str(s: str) -> str:
    """A YAML double-quoted string; a name not in NFC form keeps its escapes (``\\u0301``), so
    the two spellings of an NFC/NFD pair stay apart in the printed class_map line."""
    import json

    return json.dumps(s, ensure_ascii=unicodedata.normalize("NFC", s) != s)


def _spelled(n: str, k: int, forms: bool) -> str:
    """``'Name' (k images)``; with ``forms`` (names that differ only in Unicode normalisation,
    which print identically) the code points too."""
    import json

    what = f"{k} image{'s' if k != 1 else ''}"
    if forms:
        form = "NFC" if unicodedata.normalize("NFC", n) == n else ("NFD" if unicodedata.normalize("NFD", n) == n else "mixed")
        what += f", {form}: {json.dumps(n)[1:-1]}"
    return f"'{n}' ({what})"


def class_map_line(class_map: dict[str, Optional[str]]) -> str:
    """``data.class_map: {...}`` as one YAML flow mapping (also valid for ``--set``)."""
    items = ", ".join(f"{_yaml_str(k)}: {'null' if v is None else _yaml_str(v)}" for k, v in class_map.items())
    return "data.class_map: {" + items + "}"


def near_duplicate_classes(counts: dict[str, int]) -> list[list[str]]:
    """Groups (>= 2 names) of class names with the same :func:`class_key`, largest class first."""
    groups: dict[str, list[str]] = {}
    for name in counts:
        groups.setdefault(class_key(name), []).append(name)
    out = []
    for names in groups.values():
        if len(names) > 1:
            out.append(sorted(names, key=lambda n: (-counts[n], n)))
    return sorted(out, key=lambda g: g[0])


def _merged_class_map(cfg: Any, names: Sequence[str], merge: dict[str, str]) -> dict[str, Optional[str]]:
    """The full class map that merges ``merge`` (name -> target) into the current one."""
    current = getattr(cfg, "class_map", None)
    if current:
        return {str(k): (None if v is None else merge.get(str(v), str(v))) for k, v in current.items()}
    return {n: merge.get(n, n) for n in names}


def label_conflicts(df: pd.DataFrame, root: Optional[Path], source: str, name_files: bool = True) -> pd.DataFrame:
    """Quarantine good rows whose bytes (sha256) equal a file's under another label.

    Which label is right is unknown, so every copy is quarantined, each naming the other file
    (the pair to look at). Same-label copies are left alone (the leakage audit sees them).
    """
    good = df[(df["problem"] == "") & (df["sha256"] != "")]
    dup = good[good["sha256"].duplicated(keep=False)]
    if dup.empty:
        return df
    df = df.copy()
    col = df["problem"].to_numpy().copy()
    for _, grp in dup.groupby("sha256", sort=False):
        if grp["label"].nunique() < 2:
            continue
        for i, row in grp.iterrows():
            other = grp[grp["label"] != row["label"]].iloc[0]
            col[df.index.get_loc(i)] = (
                f"label conflict: same bytes as '{_display(other, root, source, name_files)}' labelled '{other['label']}'"
            )
    df["problem"] = col
    return df


def _same_label_copies(df: pd.DataFrame, root: Optional[Path], source: str, name_files: bool = True) -> Optional[str]:
    good = df[(df["problem"] == "") & (df["sha256"] != "")]
    dup = good[good["sha256"].duplicated(keep="first")]
    if dup.empty:
        return None
    first = good[good["sha256"] == dup.iloc[0]["sha256"]].iloc[0]
    return (
        f"note: {len(dup)} file(s) are byte-identical copies of another file with the same label "
        f"(e.g. '{_display(dup.iloc[0], root, source, name_files)}' = '{_display(first, root, source, name_files)}'); they count "
        "as separate training images, and copies of evaluation images are handled by the leakage audit"
    )


def _too_many_classes(counts: dict[str, int], most: int) -> Optional[str]:
    """One line when there are more classes than ``most`` (the names are not listed: a folder
    per patient makes them patient ids)."""
    if len(counts) <= most:
        return None
    single = sum(1 for v in counts.values() if v <= 1)
    return (
        f"{len(counts)} classes ({single} with at most one usable image): more than data.max_classes={most}; is there a "
        "folder per patient or per image instead of per class? point data.path at the folder whose subfolders are the "
        "classes, merge classes with data.class_map, or raise data.max_classes"
    )


def _kind_of_line(line: str) -> str:
    """A finding's kind: the line with its quoted names and numbers blanked."""
    return re.sub(r"\d+", "#", re.sub(r"'[^']*'", "'*'", line))[:120]


def capped(lines: Sequence[str], most: int = MAX_LINES_PER_KIND) -> list[str]:
    """``lines`` with at most ``most`` of each kind, then one "... N more" line per kind
    (issue 23: 400 small classes printed 405 warnings)."""
    kinds = Counter(_kind_of_line(x) for x in lines)
    shown: Counter = Counter()
    out = []
    for x in lines:
        k = _kind_of_line(x)
        shown[k] += 1
        if shown[k] <= most:
            out.append(x)
        elif shown[k] == most + 1:
            out.append(f"... {kinds[k] - most} more like the line above (the data check's manifest has every row)")
    return out


def _label_findings(
    df: pd.DataFrame, cfg: Any, names: Sequence[str], counts: dict[str, int]
) -> tuple[list[str], list[str]]:
    """(errors, warnings) about the classes: too few, near-identical names, splits that miss one."""
    errors: list[str] = []
    warnings: list[str] = []
    if not names or not len(df):
        errors.append("no images found: the dataset has no labelled image; check data.path and data.source")
        return errors, warnings
    for c, k in counts.items():
        if k == 0:
            errors.append(
                f"class '{c}' has no usable images; add images, fix the quarantined ones, or drop it with data.class_map"
            )
    if sum(k > 0 for k in counts.values()) < 2:
        per_class = ", ".join(f"{c} {k}" for c, k in counts.items()) or "none"
        errors.append(f"fewer than 2 classes with usable images ({per_class}); a classifier needs at least two")
    for group in near_duplicate_classes(counts):
        # NFC and NFD spellings (macOS writes file names decomposed) print identically: say which is
        # which, and merge into the composed (NFC) form
        forms = len({unicodedata.normalize("NFC", n) for n in group}) < len(group)
        if forms:
            group = sorted(group, key=lambda n: (unicodedata.normalize("NFC", n) != n, -counts[n], n))
        merge = {n: group[0] for n in group}
        spelled = ", ".join(_spelled(n, counts[n], forms) for n in group)
        why = "the same name in two Unicode forms (a folder copied from macOS?);" if forms else "one class under several spellings?"
        warnings.append(
            f"near-identical class names {spelled}: {why} "
            f"merge them with {class_map_line(_merged_class_map(cfg, names, merge))}"
        )
    if errors:
        return errors, warnings
    from lungray.data.guards import split_problems
    from lungray.data.split_plan import groups_of, make_splits

    good = df[df["problem"] == ""].reset_index(drop=True)
    labels = good["class_index"].to_numpy().astype(np.int64)
    try:
        ev, va, po, _ = make_splits(labels, groups_of(good["patient_id"].to_numpy()), good["split"].to_numpy(), cfg)
    except DataError as e:
        errors.append(f"the held-out split cannot be made: {e}")
        return errors, warnings
    # the split by patient alone (the leakage audit's clusters can only make it worse: checked
    # again after the duplicate search, by ``report_duplicates`` and ``prepare_data``)
    errors += split_problems(labels, ev, va, po, list(names), cfg)
    return errors, warnings


# --------------------------------------------------------------------------------------------
# the check
# --------------------------------------------------------------------------------------------


def check_dataset(
    cfg: Any,
    sizes: Sequence[int] = (),
    strict: bool = False,
    echo: Optional[Callable[[str], Any]] = print,
    *,
    manifest: Optional[pd.DataFrame] = None,
    probe_files: bool = True,
    decode_files: bool = False,
    name_files: bool = True,
) -> CheckReport:
    """Validate a dataset (see the module docstring); return a :class:`CheckReport`.

    ``sizes`` are the training sizes the study will request: each is checked against the
    training pool left after the held-out evaluation and validation splits. ``manifest`` skips
    the adapter (``prepare_data`` passes the one it built). ``decode_files`` decodes every file
    (``lungray data check``); else files get the probe only and the cache's decode, the same
    function, quarantines what only the pixels show (the sweep: one decode, not two).
    ``probe_files=False`` checks rows and labels only. ``name_files=False`` (the sweep) names
    images by their hashed id, never by file name. With ``strict`` any quarantined row,
    error or warning raises :class:`DataError` after everything was reported.
    """
    from lungray.data.adapters import build_manifest
    from lungray.data.manifest import class_names_of

    out = (lambda s: echo(printable(s))) if echo is not None else (lambda s: None)
    df = build_manifest(cfg) if manifest is None else manifest
    names = class_names_of(df)
    if probe_files or decode_files:
        df = check_files(df, decode_pixels=decode_files, progress=echo is not None)
    df.attrs["class_names"] = list(names)
    source = str(getattr(cfg, "source", "") or df.attrs.get("source", ""))
    root = Path(str(cfg.path)).expanduser().resolve() if getattr(cfg, "path", None) else None
    if root is not None and root.is_file():
        root = root.parent
    df = label_conflicts(df, root, source, name_files)

    lines: list[str] = []
    bad = df[df["problem"] != ""]
    kinds = Counter(problem_kind(p) for p in bad["problem"])
    shown: Counter = Counter()
    for _, row in bad.iterrows():
        k = problem_kind(row["problem"])
        line = printable(_row_line(row, root, source, name_files))
        lines.append(line)
        shown[k] += 1
        if shown[k] <= MAX_LINES_PER_KIND:
            out(line)
        elif shown[k] == MAX_LINES_PER_KIND + 1:
            out(f"... {kinds[k] - MAX_LINES_PER_KIND} more '{k}' problem(s) (see the manifest's problem column)")

    counts_per_class = class_counts(df, names)
    too_many = _too_many_classes(counts_per_class, int(getattr(cfg, "max_classes", 64) or 64))
    errors, warns = ([too_many], []) if too_many else _label_findings(df, cfg, names, counts_per_class)
    if sizes and not errors:
        errors += _pool_problems(df, cfg, sizes, names)
    errors, warns = [printable(s) for s in errors], [printable(s) for s in warns]
    notes = [n for n in (_ignored_note(df, name_files), _same_label_copies(df, root, source, name_files), _box_space_note(df, source)) if n]
    for line in capped(errors + warns + notes):  # one kind of finding per class: at most MAX_LINES_PER_KIND lines
        out(line)
    lines += errors + warns

    n, n_bad = len(df), len(bad)
    per_class = ", ".join(f"{c} {k}" for c, k in counts_per_class.items())
    if too_many:  # not 400 names (patient folders, maybe) on one line
        v = list(counts_per_class.values())
        per_class = f"{len(v)} classes of {min(v)} to {max(v)} images"
    decoded = decode_files or df["path"].str.startswith("phantom://").all()
    if lines:
        kinds_txt = ", ".join(f"{v} {k}" for k, v in kinds.most_common())
        summary = (
            f"{n_bad} of {n} images quarantined" + (f" ({kinds_txt})" if kinds_txt else "")
            + (f"; {len(errors)} dataset error(s)" if errors else "")
            + (f"; {len(warns)} warning(s)" if warns else "")
            + f"; usable per class: {per_class}"
        )
    elif decoded:
        summary = f"all {n} images OK; per class: {per_class}"
    else:
        summary = f"all {n} files pass the header checks (pixels are checked when decoded); per class: {per_class}"
    out(summary)
    counts = dict(kinds)
    for line in errors + warns:
        counts[problem_kind(line)] = counts.get(problem_kind(line), 0) + 1
    report = CheckReport(
        manifest=df,
        problems=lines,
        counts=counts,
        class_counts=counts_per_class,
        dataset_problems=errors,
        warnings=warns,
        notes=notes,
        summary=printable(summary),
    )
    if strict and lines:
        first = "; ".join(lines[:3]) + (f"; ... ({len(lines) - 3} more)" if len(lines) > 3 else "")
        raise DataError(printable(f"data check failed (strict): {summary}. {first}"))
    return report


def exit_status(report: CheckReport, strict: bool = False) -> int:
    """``lungray data check``'s exit status (issue 12): 0 when the dataset can be used, with
    quarantined files and warnings listed (the sweep would train on it too, so a CI gate must not
    fail where the sweep goes on); 1 when it cannot be used, or under ``strict`` on any problem."""
    if not report.usable or (strict and not report.ok):
        return 1
    return 0


def class_counts(manifest: pd.DataFrame, class_names: Sequence[str]) -> dict[str, int]:
    good = manifest[manifest["problem"] == ""]
    counts = np.bincount(good["class_index"].to_numpy(), minlength=len(class_names))
    return {c: int(k) for c, k in zip(class_names, counts)}


def _ignored_note(df: pd.DataFrame, name_files: bool = True) -> Optional[str]:
    ign = df.attrs.get("ignored_files") or {}
    n = int(ign.get("count", 0) or 0)
    if not n:
        return None
    by = ", ".join(f"{k or '(no suffix)'} {v}" for k, v in sorted(ign.get("by_suffix", {}).items(), key=lambda kv: (-kv[1], kv[0])))
    ex = ign.get("example", "") if name_files else ""
    return (
        f"note: {n} file(s) not read, outside any class folder or not an image suffix ({by})"
        + (f", e.g. '{ex}'" if ex else "")
        + "; lungray reads .png .jpg .jpeg .bmp .tif .tiff .gif .webp .dcm .dicom .dic in class folders"
    )


def _box_space_note(df: pd.DataFrame, source: str) -> Optional[str]:
    """RSNA DICOMs that are not 1024 x 1024: their boxes are scaled (:mod:`lungray.data.masks`);
    sizes are known when the files were decoded (``lungray data check`` without ``--quick``)."""
    if source != "rsna":
        return None
    from lungray.data.masks import box_space_note

    good = df[df["problem"] == ""]
    line = box_space_note(good["image_id"].tolist(), good["width"].tolist(), good["height"].tolist())
    return f"note: {line}" if line else None


def quarantine_report(
    quarantined: pd.DataFrame,
    checked: CheckReport,
    n_usable: int,
    echo: Callable[[str], Any],
    *,
    cfg: Any = None,
    name_files: bool = True,
) -> str:
    """After the cache: print the rows its decode quarantined that the check had not, then the
    totals line (always, so a sweep never drops images silently); returns the totals line."""
    source = str(getattr(cfg, "source", "") or checked.manifest.attrs.get("source", ""))
    root = Path(str(cfg.path)).expanduser().resolve() if cfg is not None and getattr(cfg, "path", None) else None
    if root is not None and root.is_file():
        root = root.parent
    before = set(checked.manifest.loc[checked.manifest["problem"] != "", "image_id"])
    new = quarantined[~quarantined["image_id"].isin(before)] if len(quarantined) else quarantined
    shown: Counter = Counter()
    for _, row in new.iterrows():
        k = problem_kind(str(row["problem"]))
        shown[k] += 1
        if shown[k] <= MAX_LINES_PER_KIND:
            echo(printable(_row_line(row, root, source, name_files)))
    kinds = Counter(problem_kind(str(p)) for p in quarantined["problem"]) if len(quarantined) else Counter()
    total = n_usable + len(quarantined)
    line = f"data: {n_usable} of {total} images usable, {len(quarantined)} quarantined" + (
        " (" + ", ".join(f"{v} {k}" for k, v in kinds.most_common()) + ")" if kinds else ""
    )
    echo(printable(line))
    return line


def _pool_problems(df: pd.DataFrame, cfg: Any, sizes: Sequence[int], names: Sequence[str]) -> list[str]:
    """Training sizes the pool cannot supply (same split as ``prepare_data``, before leakage drops)."""
    from lungray.data.split_plan import groups_of, make_splits

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
    """The leakage audit's duplicate clusters of a checked dataset (issue 11.1), printed, and the
    split they force checked (issue 18).

    Decodes the good rows into the cache (reused by a study with the same cache folder and
    settings) and runs the duplicate search over all of them
    (:func:`lungray.data.duplicates.find_dataset_duplicates`). Duplicates are not problems: a study
    keeps each cluster on one side of its split. But a cluster too large to be copies of one film,
    and a split that then loses a class or starves it, are (:mod:`lungray.data.guards`): they are
    printed and returned in ``problems`` (``lungray data check`` exits 1), as ``prepare_data``
    would refuse them. Pairs across labels are printed as a warning. Returns
    :func:`lungray.data.leakage.cluster_summary` plus ``pairs_by_stage``, ``problems`` and
    ``suspect_pairs``.
    """
    from lungray.data.cache import build_cache
    from lungray.data.duplicates import find_dataset_duplicates
    from lungray.data.guards import cluster_problems, split_problems, suspect_line
    from lungray.data.leakage import cluster_summary
    from lungray.data.split_plan import plan_split

    out = (lambda s: echo(printable(s))) if echo is not None else (lambda s: None)
    good = manifest[manifest["problem"] == ""].reset_index(drop=True)
    good.attrs.update(manifest.attrs)
    if good.empty:
        return {"n_clusters": 0, "n_images_in_clusters": 0, "largest": 0, "examples": [], "pairs_by_stage": {},
                "problems": [], "suspect_pairs": 0}
    root = build_cache(good, cfg, cache_dir, progress=progress)
    pairs = find_dataset_duplicates(root, int(cfg.leakage_max_distance), progress=progress)
    cached = pd.read_parquet(root / "manifest.parquet", columns=["image_id", "path", "patient_id", "split"])
    labels = np.load(root / "labels.npy")
    class_names = list(json.loads((root / "meta.json").read_text())["class_names"])
    # the console of a local check names files (as its problem lines do); outputs carry hashed ids
    top = Path(cfg.path) if getattr(cfg, "path", None) else None
    source = str(manifest.attrs.get("source", getattr(cfg, "source", "")))
    names = [printable(_display(r, top, source)) for _, r in cached.iterrows()]
    s = cluster_summary(pairs, len(cached), names)
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
    problems: list[str] = []
    plan = None
    try:
        plan = plan_split(labels, cached["patient_id"].to_numpy(), cached["split"].to_numpy(), cfg, pairs)
    except DataError as e:
        problems.append(f"the held-out split cannot be made with the duplicate clusters as groups: {e}")
    if plan is not None:
        note = suspect_line(plan.suspects, labels, class_names, names)
        if note:
            out(note)
        problems += cluster_problems(plan.edges, len(labels), labels, class_names, cfg, plan.patients)
        problems += split_problems(labels, plan.eval_idx, plan.val_idx, plan.pool_idx, class_names, cfg)
    for p in problems:
        out(p)
    return {**s, "pairs_by_stage": by, "problems": [printable(p) for p in problems],
            "suspect_pairs": int(len(plan.suspects)) if plan is not None and plan.suspects is not None else 0}
