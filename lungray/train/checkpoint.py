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
"""

from __future__ import annotations

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


def _atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_state(checkpoint_dir: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` as ``<checkpoint_dir>/state.pt``, the directory appearing complete or not at all.

    The directory is assembled under a temporary name next to it and renamed into place, so a
    reader (Ray's checkpoint upload, a resume) never sees a half-written checkpoint.
    """
    final = Path(checkpoint_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        _atomic_torch_save({"format": FORMAT_VERSION, **state}, tmp_dir / STATE_FILE)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp_dir, final)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return final


def load_state(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``state.pt`` from a checkpoint directory (or the file itself)."""
    import torch

    p = Path(checkpoint_dir)
    f = p / STATE_FILE if p.is_dir() else p
    if not f.exists():
        raise LungrayError(
            f"resume_from: no {STATE_FILE} in {p}; pass a checkpoint directory written by run_trial"
        )
    state = torch.load(f, map_location="cpu", weights_only=True)
    if state.get("format") != FORMAT_VERSION:
        raise LungrayError(f"{f}: checkpoint format {state.get('format')} is not {FORMAT_VERSION}; start the trial afresh")
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
