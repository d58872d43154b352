"""Resumable trial checkpoints (``state.pt``) and the best-model file (``best.pt``).

A Ray Tune trial that dies (preempted node, OOM) is restarted from its last reported
checkpoint, and a sweep resumed after a crash does the same (``resources.max_failures``). For
the resumed trial to be the SAME experiment, not merely a similar one, a checkpoint holds
everything that decides the future: model, optimizer, scheduler and grad-scaler state, the
epoch, the early-stopping bookkeeping with the best model's weights, the history, and the RNG
states of Python, NumPy, torch and CUDA. The data order needs no state: it is derived from
(seed, epoch) (:func:`lungray.train.device.torch_generator`).

Both files are written atomically (temporary name, then ``os.replace``/``os.rename``) so a
crash mid-write never leaves a truncated file where a reader expects a checkpoint, and both
load with ``torch.load(weights_only=True)``: nothing but tensors, numbers, strings and
containers goes in.

Atomic renames do not protect against what happens to a file afterwards (a full disk that
truncated a copy, a hostile tester, a half-synced network volume): with every checkpoint
truncated, ``--resume`` used to fail each trial three times with PyTorch's raw "failed reading
zip archive", forever (issue 15). So every checkpoint directory carries a manifest
(:data:`MANIFEST`: size and sha256 of each file, computed from the bytes as they were written)
that is checked before anything is loaded. :func:`find_resumable` returns the newest
checkpoint that passes, says in one line what it skipped and why, and deletes what failed,
so a resumed trial falls back to the previous good checkpoint or starts from scratch instead
of crash-looping.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from lungray.errors import LungrayError

STATE_FILE = "state.pt"
BEST_FILE = "best.pt"
FORMAT_VERSION = 1
#: Beside the files of every committed checkpoint directory: ``{"epoch": int, "files":
#: {name: {"size": bytes, "sha256": hex}}}``. A directory without it was never completed.
MANIFEST = "lungray_checkpoint.json"
_CHUNK = 1 << 20


class CheckpointError(LungrayError):
    """A checkpoint that cannot be used (missing, truncated, corrupt, another format)."""


def rng_state() -> dict[str, Any]:
    """Global RNG states as weights_only-loadable values."""
    import torch

    py = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [str(name), [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only where devices match)."""
    import torch

    v, internal, gauss = state["python"]
    random.setstate((int(v), tuple(int(x) for x in internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"].cpu() if hasattr(state["torch"], "cpu") else state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


class _HashingWriter:
    """A write-only file wrapper that hashes what passes through (no ``seek``: torch.save then
    writes its zip stream front to back, so the digest is the file's)."""

    def __init__(self, f: Any):
        self.f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, b: Any) -> int:
        self.sha.update(b)
        self.size += memoryview(b).nbytes
        return self.f.write(b)

    def flush(self) -> None:
        self.f.flush()


def _atomic_torch_save(obj: Any, path: Path, where: Optional[Path] = None) -> dict[str, Any]:
    """``torch.save`` to a temporary name, fsync, rename; returns ``{"size", "sha256"}`` of the bytes written.

    A failed write (full disk, quota) raises :class:`CheckpointError` naming ``where`` (default
    ``path``).
    """
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            w = _HashingWriter(f)
            torch.save(obj, w)
            f.flush()
            os.fsync(f.fileno())
        if os.path.getsize(tmp) != w.size:
            raise CheckpointError(f"{path}: {os.path.getsize(tmp)} bytes on disk after writing {w.size}")
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise CheckpointError(f"writing checkpoint {where or path} failed: {e.strerror or e}; free space there or point --output elsewhere") from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"size": w.size, "sha256": w.sha.hexdigest()}


def file_digest(path: str | os.PathLike) -> dict[str, Any]:
    """``{"size", "sha256"}`` of a file, read in 1 MiB chunks."""
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": sha.hexdigest()}


def write_manifest(checkpoint_dir: str | os.PathLike, epoch: int, files: Optional[dict[str, dict]] = None) -> Path:
    """Commit a checkpoint directory: the manifest of its files, written last and atomically.

    ``files`` maps names to digests already computed while writing; the other regular files in
    the directory are hashed here (a trial body that writes its own checkpoint format).
    """
    d = Path(checkpoint_dir)
    digests = dict(files or {})
    for p in sorted(d.iterdir()):
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".") and p.name not in digests:
            digests[p.name] = file_digest(p)
    tmp = d / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"format": FORMAT_VERSION, "epoch": int(epoch), "files": digests}, indent=1))
    os.replace(tmp, d / MANIFEST)
    return d / MANIFEST


def read_manifest(checkpoint_dir: str | os.PathLike) -> Optional[dict[str, Any]]:
    p = Path(checkpoint_dir) / MANIFEST
    try:
        m = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and isinstance(m.get("files"), dict) else None


def verify(checkpoint_dir: str | os.PathLike) -> Optional[str]:
    """None when every file of the manifest is there with its size and sha256, else why not."""
    d = Path(checkpoint_dir)
    m = read_manifest(d)
    if m is None:
        return f"no readable {MANIFEST} (an unfinished write)"
    for name, want in m["files"].items():
        p = d / name
        if not p.is_file():
            return f"{name} is missing"
        size = p.stat().st_size
        if size != want.get("size"):
            return f"{name} has {size} bytes, {want.get('size')} were written"
        if file_digest(p)["sha256"] != want.get("sha256"):
            return f"{name} does not match its sha256 (corrupt)"
    return None


def _candidates(root: Path) -> list[tuple[int, float, Path]]:
    """Committed checkpoint directories under ``root`` (one or two levels down), newest first."""
    out = []
    for man in list(root.glob(f"*/{MANIFEST}")) + list(root.glob(f"*/*/{MANIFEST}")):
        d = man.parent
        if any(part.startswith(".") for part in d.relative_to(root).parts):
            continue
        m = read_manifest(d) or {}
        try:
            epoch = int(m.get("epoch", -1))
        except (TypeError, ValueError):
            epoch = -1
        out.append((epoch, man.stat().st_mtime, d))
    return sorted(out, key=lambda t: (t[0], t[1]), reverse=True)


def find_resumable(root: str | os.PathLike, *, clean: bool = True) -> tuple[Optional[Path], list[str]]:
    """The newest checkpoint directory under ``root`` that verifies, and a line per one skipped.

    With ``clean`` (the process that owns ``root``), directories that fail verification and
    unfinished temporary ones (``.epoch_*``, left by a crash mid-write) are deleted, so the next
    attempt neither trips over them nor keeps their bytes. Returns ``(None, notes)`` when
    nothing usable is left: the caller starts the trial from scratch.
    """
    r = Path(root)
    if not r.is_dir():
        return None, []
    notes: list[str] = []
    found: Optional[Path] = None
    for epoch, _, d in _candidates(r):
        if found is not None:
            break
        why = verify(d)
        if why is None:
            found = d
            continue
        notes.append(f"checkpoint {d.name} (epoch {epoch}) is unusable: {why}")
        if clean:
            shutil.rmtree(d, ignore_errors=True)
    if clean:  # what a crash mid-write left: ``.epoch_0007.x1y2/`` directories, ``.best.pt.x1y2.tmp`` files
        for tmp in list(r.glob(".*")) + list(r.glob("*/.*")):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            elif tmp.name.endswith(".tmp"):
                tmp.unlink(missing_ok=True)
    return found, notes


def save_state(checkpoint_dir: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` as ``<checkpoint_dir>/state.pt`` plus its manifest, the directory appearing complete or not at all.

    The directory is assembled under a temporary name next to it and renamed into place, so a
    reader (a resume, :func:`find_resumable`) never sees a half-written checkpoint; the
    manifest holds the sha256 of the bytes written, checked before every load.
    """
    final = Path(checkpoint_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        digest = _atomic_torch_save({"format": FORMAT_VERSION, **state}, tmp_dir / STATE_FILE, where=final)
        write_manifest(tmp_dir, int(state.get("epoch", -1)), {STATE_FILE: digest})
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp_dir, final)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return final


def load_state(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``state.pt`` from a checkpoint directory (or the file itself), verified first.

    Raises :class:`CheckpointError` (one line: which file, what is wrong) for a missing,
    truncated or corrupt checkpoint or another format, never PyTorch's zip-reader error.
    """
    import torch

    p = Path(checkpoint_dir)
    f = p / STATE_FILE if p.is_dir() else p
    if not f.exists():
        raise CheckpointError(
            f"resume_from: no {STATE_FILE} in {p}; pass a checkpoint directory written by run_trial"
        )
    if (f.parent / MANIFEST).exists():
        why = verify(f.parent)
        if why is not None:
            raise CheckpointError(f"{f.parent}: {why}; resume from an older checkpoint or start the trial afresh")
    try:
        state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - zip reader, unpickler: all mean an unusable file
        raise CheckpointError(f"{f}: not a readable checkpoint ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}); start the trial afresh") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{f}: checkpoint format {got} is not {FORMAT_VERSION}; start the trial afresh")
    return state


def _stat(v: Any) -> Any:
    return [float(x) for x in v] if isinstance(v, (list, tuple)) else float(v)


def write_best(
    path: str | os.PathLike,
    *,
    model_state: dict[str, Any],
    class_names: list[str],
    trial: dict[str, Any],
    norm: tuple[Any, Any],
    epoch: int,
) -> Path:
    """``best.pt`` in the :mod:`lungray.tracking` format (the report's Grad-CAM reads it)."""
    p = Path(path)
    _atomic_torch_save(
        {
            "model": {k: v.detach().cpu() for k, v in model_state.items()},
            "class_names": list(class_names),
            "trial": trial,
            "norm": [_stat(norm[0]), _stat(norm[1])],  # floats, or one per channel (repeat3 models)
            "epoch": int(epoch),
        },
        p,
    )
    return p


def read_best(path: str | os.PathLike) -> dict[str, Any]:
    import torch

    return torch.load(Path(path), map_location="cpu", weights_only=True)


def cpu_state_dict(model: Any) -> dict[str, Any]:
    """A detached CPU copy of a (possibly DDP-wrapped) model's state dict."""
    m = getattr(model, "module", model)
    return {k: v.detach().to("cpu", copy=True) for k, v in m.state_dict().items()}


def remove_older(checkpoint_root: Path, keep: Optional[Path]) -> None:
    """Delete every ``epoch_*`` checkpoint directory under ``checkpoint_root`` except ``keep``."""
    if not checkpoint_root.is_dir():
        return
    for d in checkpoint_root.glob("epoch_*"):
        if keep is None or d.resolve() != keep.resolve():
            shutil.rmtree(d, ignore_errors=True)


def remove_committed_except(checkpoint_root: Path, keep: Path) -> None:
    """Delete the other committed checkpoint directories (those with a manifest) next to ``keep``.

    Called once ``keep`` is committed: at most one verified checkpoint per trial stays (plus,
    for an instant, the one being written).
    """
    for _, _, d in _candidates(Path(checkpoint_root)):
        if d.resolve() != Path(keep).resolve():
            shutil.rmtree(d, ignore_errors=True)

