"""Disk-full errors in one line, and named fault-injection points for the fault tests.

**Disk full.** A checkpoint that cannot be written (``ENOSPC``/``EDQUOT``: the volume or the
user's quota is full) used to surface as pyarrow's or torch's raw ``OSError`` from deep inside
Ray. :func:`disk_full_error` turns it into one line naming the folder and what to do; results
already written stay (``result.json`` is replaced atomically, never truncated).

**Failpoints** (as in etcd's ``gofail`` / TiKV's ``fail-rs``): :func:`failpoint` is a no-op
unless ``LUNGRAY_FAILPOINTS`` names it. The fault tests set it to kill a trial or the driver
with SIGKILL at an exact step that a signal sent from outside could only hit by luck
(between writing a trial's results and its MLflow upload, say)::

    LUNGRAY_FAILPOINTS="trial.after_result@n=40|!kill,sync.before_artifacts@n=80|!kill"
    LUNGRAY_FAILPOINT_DIR=/tmp/fp   # one marker per point: each fires once, so the retry runs through

Each entry is ``point[@key][!action]``: ``key`` must occur in the key passed at the point (the
trial name, e.g. ``simple_cnn|n=40|adam|seed=0``); ``action`` is ``kill`` (SIGKILL this
process, the default) or ``enospc`` (raise ``OSError(ENOSPC)``, a full disk).
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path
from typing import Optional

from lungray.errors import LungrayError

FAILPOINT_ENV = "LUNGRAY_FAILPOINTS"
FAILPOINT_DIR_ENV = "LUNGRAY_FAILPOINT_DIR"

_DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", -1)}
_DISK_FULL_TEXT = ("no space left on device", "disk quota exceeded", "database or disk is full")


class DiskFullError(LungrayError):
    """A write failed because the volume or the quota is full (one line, names the folder).

    Not an ``OSError`` subclass: Ray re-creates a trial's exception as a class deriving from
    both it and ``RayTaskError``, which recursed without end for ``OSError``'s constructor."""

    errno = errno.ENOSPC


def is_disk_full(e: BaseException) -> bool:
    """``ENOSPC``/``EDQUOT`` anywhere in the exception chain (pyarrow and Ray re-wrap it)."""
    seen = set()
    cur: Optional[BaseException] = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, DiskFullError):
            return True
        if isinstance(cur, OSError) and cur.errno in _DISK_FULL_ERRNOS:
            return True
        if any(s in str(cur).lower() for s in _DISK_FULL_TEXT):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def disk_full_error(e: BaseException, folder: str | os.PathLike, what: str, resume_dir: str | os.PathLike) -> DiskFullError:
    """The one-line error for a full disk while writing ``what`` into ``folder``."""
    name = "EDQUOT, quota exceeded" if getattr(e, "errno", None) == getattr(errno, "EDQUOT", -1) or "quota" in str(e).lower() else "ENOSPC"
    path = getattr(e, "filename", None)
    at = f" ({path})" if path and str(path) != str(folder) else ""
    return DiskFullError(
        f"no space left ({name}) writing {what} to {folder}{at}; "
        f"finished trials are kept: free space or raise the quota, then run with --resume {resume_dir}",
    )


def no_space_left(folder: str | os.PathLike, probe_bytes: int = 1 << 16) -> bool:
    """Whether ``folder``'s volume refuses a small write (ENOSPC/EDQUOT): Tune's driver dies on a
    full disk with unrelated errors (an empty ``error.pkl``: ``EOFError``), so ask the disk."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder) as f:
            f.write(b"\0" * probe_bytes)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        return is_disk_full(e)
    return False


def failpoint(point: str, key: str = "") -> None:
    """Fire the fault ``LUNGRAY_FAILPOINTS`` assigns to ``point`` (for this ``key``), once."""
    spec = os.environ.get(FAILPOINT_ENV)
    if not spec:
        return
    for entry in spec.split(","):
        name, _, rest = entry.strip().partition("@")
        want, _, action = rest.partition("!")
        if "!" in name:
            name, _, action = name.partition("!")
        if name != point or (want and want not in key):
            continue
        marker_dir = os.environ.get(FAILPOINT_DIR_ENV)
        if marker_dir:
            marker = Path(marker_dir) / f"{point}@{want or 'any'}".replace("/", "_").replace("|", "_")
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                continue  # fired before: let the retry through
            os.write(fd, f"{point} {key} pid={os.getpid()}\n".encode())
            os.close(fd)
        if (action or "kill") == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------------------------
# a failed trial in one line
# --------------------------------------------------------------------------------------------

_OOM = ("OutOfMemoryError", "running low on memory")


def trial_error_line(text: str) -> str:
    """A failed trial's traceback as one line for the console (issue 23: Tune printed 50 lines per
    failure). Ray's memory monitor killing the trial is said in words with the node's numbers
    and what to change; otherwise the last exception line (``Type: message``)."""
    import re

    from lungray.redact import redact

    text = str(text or "")
    if any(k in text for k in _OOM):
        m = re.search(r"was ([\d.]+\s*[KMGT]?B) / ([\d.]+\s*[KMGT]?B) \(([\d.]+)\); the memory usage threshold is (\d+(?:\.\d+)?)", text)
        used = f" (node memory {m.group(1)} of {m.group(2)}, over Ray's {m.group(4)} threshold)" if m else ""
        return (f"killed by Ray's memory monitor{used}: run fewer trials at once (raise resources.cpus_per_worker), "
                "or lower the batch size, data.resolution or the class count")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.match(r"^([\w.]+\.)?[A-Z]\w*(Error|Exception|Interrupt|Failure)\b", ln):
            return redact(ln[:300])
    return redact(lines[-1][:300]) if lines else "failed (no error text)"

