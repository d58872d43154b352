"""One writer per experiment directory: a lock file with the holder's PID, host and start time.

Two drivers on one experiment directory (``--resume`` twice, or a resume while
``mlflow-sync`` replays it) would restore the same Tune state and train and upload the same
trials twice. The lock is ``<experiment dir>/.lungray.lock``, created with ``O_CREAT|O_EXCL``
(atomic on local disks and on NFSv3+/EFS), holding ``{"pid", "host", "started", "proc_start",
"what"}``. A second driver is refused with one line naming the holder.

A lock whose holder is gone is stale: a driver killed with SIGKILL never removes its lock. On
the same host that is decided exactly: the PID is not running, or it is running but started at
another time (a recycled PID; ``/proc/<pid>/stat`` field 22). A lock from another host cannot
be checked from here and is never taken over silently: the message says which host to check
and which file to delete.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import time
from pathlib import Path
from typing import Callable, Optional, Union

from lungray.errors import ConfigError

LOCK_FILE = ".lungray.lock"
#: an empty/unreadable lock file older than this is a holder killed between create and write
TORN_LOCK_SECONDS = 60.0


def _proc_start(pid: int) -> Optional[str]:
    """Start time of ``pid`` in clock ticks since boot (Linux), to tell a recycled PID apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class ExperimentLock:
    """``with ExperimentLock(exp_dir, "sweep"):`` - refuses when another live driver holds it."""

    def __init__(self, directory: Union[str, os.PathLike], what: str = "sweep", echo: Callable[[str], None] = print):
        self.path = Path(directory) / LOCK_FILE
        self.what = what
        self.echo = echo
        self.held = False
        self.me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _dt.datetime.now().isoformat(timespec="seconds"),
            "proc_start": _proc_start(os.getpid()),
            "what": what,
        }

    def holder(self) -> Optional[dict]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def stale_reason(self, h: dict) -> Optional[str]:
        """Why the lock ``h`` is stale, or None when its holder may still be running."""
        if not h:
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return "gone"
            return f"an empty lock file {age:.0f}s old" if age > TORN_LOCK_SECONDS else None
        if h.get("host") != self.me["host"]:
            return None
        pid = int(h.get("pid", -1))
        if not _alive(pid):
            return f"pid {pid} is not running"
        if h.get("proc_start") and _proc_start(pid) not in (None, h["proc_start"]):
            return f"pid {pid} is another process now"
        return None

    def acquire(self) -> "ExperimentLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            except FileExistsError:
                h = self.holder()
                if h is None:
                    continue  # released meanwhile
                why = self.stale_reason(h)
                if why is None:
                    raise ConfigError(self._busy_message(h))
                self.echo(f"note: removed a stale lock on {self.path.parent} ({why}; left by a killed {h.get('what', 'driver')})")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.me, f)
            self.held = True
            return self
        raise ConfigError(f"{self.path}: could not take the lock (it keeps changing); is another lungray process starting here?")

    def _busy_message(self, h: dict) -> str:
        who = f"a lungray {h.get('what', 'process')} (pid {h.get('pid', '?')} on {h.get('host', '?')}, since {h.get('started', '?')})"
        same_host = h.get("host") == self.me["host"]
        hint = (
            "wait for it to finish or stop it"
            if same_host
            else f"wait for it to finish; if no lungray runs on {h.get('host')} any more, delete {self.path}"
        )
        return f"{self.path.parent} is in use by {who}; two drivers on one experiment directory would train and log its trials twice: {hint}"

    def release(self) -> None:
        if not self.held:
            return
        h = self.holder()
        if h and h.get("pid") == self.me["pid"] and h.get("host") == self.me["host"]:
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> "ExperimentLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def claim_new_dir(candidate: Path) -> Path:
    """Create a new experiment directory atomically: two sweeps started in the same second get
    ``<name>`` and ``<name>-2`` instead of sharing one (``mkdir`` fails for the second)."""
    candidate.parent.mkdir(parents=True, exist_ok=True)
    d, i = candidate, 1
    while True:
        try:
            d.mkdir()
            return d
        except FileExistsError:
            i += 1
            d = candidate.with_name(f"{candidate.name}-{i}")


def check_private(exp_dir: Union[str, os.PathLike]) -> None:
    """Refuse to resume from Tune state another account could have written (issue 15, item 7).

    ``--resume`` unpickles ``tune/`` (``tuner.pkl``, the experiment state, trial checkpoints'
    metadata): whoever can write a file there, or swap the directory through a parent they can
    write to, can run code as the user who resumes. Refused, with one line naming the path:
    anything in ``tune/`` (or the experiment directory) owned by another user or writable by
    others, and a parent directory writable by others without the sticky bit (``/tmp``'s 1777
    is fine, an NFS root at 0777 is not). Group-writable is allowed (Debian's per-user groups
    make it the default for many accounts).
    """
    exp_dir = Path(exp_dir).resolve()
    me = os.getuid()

    def refuse(path: Path, why: str, fix: str) -> None:
        raise ConfigError(
            f"--resume {exp_dir}: refusing to load Tune's pickled state: {path} {why}, so another account could "
            f"make --resume run its code; {fix}, or start a new sweep"
        )

    for d in exp_dir.parents:
        st = d.stat()
        if st.st_mode & 0o002 and not st.st_mode & 0o1000:
            refuse(d, f"is writable by every user (mode {st.st_mode & 0o7777:o}) without the sticky bit", f"chmod o-w {d} (or chmod +t)")
        if st.st_uid not in (me, 0):
            refuse(d, f"belongs to uid {st.st_uid}", "move the experiment directory under a folder of your own")
    tune = exp_dir / "tune"
    paths = [exp_dir]
    for root, dirs, files in os.walk(tune):
        paths += [Path(root) / n for n in dirs + files]
    paths.insert(1, tune)
    for p in paths:
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue
        if st.st_uid != me:
            refuse(p, f"belongs to uid {st.st_uid}, not you (uid {me})", f"check it, then chown -R $(id -u) {exp_dir}")
        if st.st_mode & 0o002 and not (p.is_symlink()):
            refuse(p, f"is writable by every user (mode {st.st_mode & 0o7777:o})", f"check it, then chmod -R o-w {exp_dir}")
