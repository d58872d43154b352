"""The local Ray instance a sweep driver starts, recorded so that a later driver can stop its leftovers.

A sweep without a cluster address starts its own Ray instance (``ray.init()``): GCS, raylet,
dashboard, log monitor and, under the raylet, a dashboard agent and a runtime-env agent. When
the driver is killed (``kill -9``, an out-of-memory kill, a closed laptop lid), most of these
die with it, but the two agents ignore SIGTERM and outlive it: ~180-200 MB per killed driver,
measured with Ray 2.60 (issue 15). ``ray stop`` would kill every Ray process of the user,
including other sweeps and clusters, so lungray never calls it. Instead:

* :func:`record` writes, right after ``ray.init`` started an instance, what it started (the
  driver's pid and start time, Ray's session directory, the pids and start times of Ray's
  processes) to ``<output_dir>/.lungray/ray/<pid>.json`` and the experiment directory;
* :func:`stop_leftovers`, called by the next sweep in that output directory and by
  ``--resume`` before they start Ray, stops what a record lists whose driver is gone: its
  processes (same pid AND start time, so a reused pid is never hit) and any process of this
  user that still holds a file in that instance's session directory (the agents: a session
  directory belongs to exactly one instance). A record whose driver still runs (another sweep)
  is left alone;
* :func:`forget` deletes the records when the driver shuts Ray down normally.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

RECORD_DIR = Path(".lungray") / "ray"
EXPERIMENT_RECORD = "ray_instance.json"


def record_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir).resolve() / RECORD_DIR


def _started(pid: int) -> Optional[float]:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def started_instance() -> Optional[dict[str, Any]]:
    """What this process's ``ray.init`` started, or None when it joined an existing cluster."""
    import psutil
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    procs = getattr(node, "all_processes", None) or {}
    pids = [pi.process.pid for infos in procs.values() for pi in infos if getattr(pi, "process", None) is not None]
    if node is None or not pids:
        return None
    listed: dict[int, dict] = {}
    for pid in pids:
        try:
            p = psutil.Process(pid)
            family = [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for q in family:
            try:
                listed[q.pid] = {"pid": q.pid, "started": q.create_time(), "name": q.name()}
            except psutil.NoSuchProcess:
                continue
    me = os.getpid()
    return {
        "driver_pid": me,
        "driver_started": _started(me),
        "session_dir": str(node.get_session_dir_path()),
        "processes": sorted(listed.values(), key=lambda d: d["pid"]),
        "recorded": time.time(),
    }


def record(path: str | os.PathLike, inst: Optional[dict[str, Any]] = None) -> Optional[dict[str, Any]]:
    """Write ``inst`` (default :func:`started_instance`) to ``path``; None when nothing was started."""
    inst = inst if inst is not None else started_instance()
    if inst is None:
        return None
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(json.dumps(inst, indent=1))
    os.replace(tmp, p)
    return inst


def shutdown() -> None:
    """``ray.shutdown()``, without Ray's one-second wait on the autoscaler's monitor of a local
    instance this process started (issue 22.3).

    Ray 2.60 stops the GCS first and then sends the monitor SIGTERM; the monitor, whose GCS is
    gone, does not exit within Ray's one second of grace and is then killed: a second of every
    sweep's end (``bench/RESULTS.md``). A single-machine instance's monitor has nothing to clean
    up (no node to terminate), so it is killed first, as Ray would a second later. A cluster this
    driver only joined has no processes of its own here: plain ``ray.shutdown()``.
    """
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    for info in (getattr(node, "all_processes", None) or {}).get("monitor", []):
        proc = getattr(info, "process", None)
        try:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
        except Exception:  # noqa: BLE001 - Ray's own shutdown below stops it anyway
            pass
    ray.shutdown()


def forget(paths: Iterable[str | os.PathLike]) -> None:
    for p in paths:
        Path(p).unlink(missing_ok=True)


def _alive(pid: int, started: Optional[float]) -> bool:
    """Whether the process with ``pid`` is the same one that started at ``started``."""
    now = _started(int(pid))
    return now is not None and started is not None and abs(now - float(started)) < 1.0


def _holders(session_dir: str) -> list:
    """Processes of this user with a file open under ``session_dir``."""
    import psutil

    prefix = session_dir.rstrip("/") + "/"
    me = os.getpid()
    out = []
    try:
        uid = os.getuid()
    except AttributeError:  # pragma: no cover - Windows: no agents outlive the driver there
        return out
    for p in psutil.process_iter(["pid", "uids"]):
        try:
            if p.pid == me or p.info["uids"] is None or p.info["uids"].real != uid:
                continue
            if any(f.path.startswith(prefix) for f in p.open_files()):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


def _stop(procs: list, grace_s: float = 3.0) -> list:
    """SIGTERM, then SIGKILL what is still there after ``grace_s`` (the agents ignore SIGTERM)."""
    import psutil

    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace_s)
    return procs


def stop_leftovers(record_files: Iterable[str | os.PathLike], echo: Callable[[str], None] = print) -> int:
    """Stop the Ray processes that the drivers of ``record_files`` started and left behind.

    Records of drivers that still run are kept and nothing of theirs is touched. Returns the
    number of processes stopped and prints one line per record that had any.
    """
    import psutil

    stopped = 0
    seen: set[str] = set()
    for f in record_files:
        f = Path(f)
        try:
            rec = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if _alive(rec.get("driver_pid", -1), rec.get("driver_started")):
            continue  # a sweep that is still running: its instance is in use
        session = str(rec.get("session_dir") or "")
        if session in seen:
            f.unlink(missing_ok=True)
            continue
        seen.add(session)
        procs: dict[int, Any] = {}
        for d in rec.get("processes", []):
            if _alive(d.get("pid", -1), d.get("started")):
                try:
                    procs[int(d["pid"])] = psutil.Process(int(d["pid"]))
                except psutil.NoSuchProcess:
                    pass
        if session and Path(session).name.startswith("session_"):
            for p in _holders(session):
                procs.setdefault(p.pid, p)
        if procs:
            mb, names = 0.0, []
            for p in procs.values():
                try:
                    mb += p.memory_info().rss / 1e6
                    names.append(p.name())
                except psutil.NoSuchProcess:
                    pass
            _stop(list(procs.values()))
            stopped += len(procs)
            echo(f"stopped {len(procs)} Ray process(es) ({mb:.0f} MB: {', '.join(sorted(set(names)))}) left by an earlier "
                 f"driver (pid {rec.get('driver_pid')}) that did not shut down; Ray session {session}")
        f.unlink(missing_ok=True)
    return stopped


def records_for(output_dir: str | os.PathLike, experiment_dir: Optional[str | os.PathLike] = None) -> list[Path]:
    """The record files a sweep in ``output_dir`` (resuming ``experiment_dir``) looks at."""
    files = sorted(record_dir(output_dir).glob("*.json"))
    if experiment_dir is not None and (Path(experiment_dir) / EXPERIMENT_RECORD).exists():
        files.append(Path(experiment_dir) / EXPERIMENT_RECORD)
    return files
