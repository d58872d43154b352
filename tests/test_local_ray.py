"""Leftovers of a killed driver's local Ray instance are stopped by record, and nothing else (issue 15 item 8).

Plain processes stand in for Ray's here (``sleep``), so the rules are tested without starting Ray:
a record whose driver is gone has its processes stopped (same pid AND start time), plus any
process holding a file in its session directory; a record whose driver still runs is left
alone, and so is a reused pid. The real thing (a SIGKILLed sweep driver, then ``--resume``) is
in ``test_sweep_resume.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import psutil
import pytest

from lungray.sweep import local_ray as LR


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen(list(args) or ["sleep", "300"])


def _entry(p: subprocess.Popen) -> dict:
    return {"pid": p.pid, "started": psutil.Process(p.pid).create_time(), "name": "sleep"}


def _gone_driver() -> dict:
    """The pid and start time of a process that has exited (a killed driver)."""
    p = _spawn("true")
    started = psutil.Process(p.pid).create_time() if psutil.pid_exists(p.pid) else time.time()
    p.wait()
    return {"driver_pid": p.pid, "driver_started": started}


def test_leftovers_of_a_dead_driver_are_stopped_and_nothing_else(tmp_path):
    session = tmp_path / "session_2026-01-01_00-00-00_000000_1"
    (session / "logs").mkdir(parents=True)
    recorded = _spawn()  # a process on record, like gcs_server
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; f = open(sys.argv[1], 'a'); time.sleep(300)",
                               str(session / "logs" / "dashboard_agent.log")])  # an agent started after the record
    live_drivers_proc = _spawn()  # belongs to a sweep whose driver still runs
    reused = _spawn()  # same pid as on record, but another process (start time differs)
    bystander = _spawn()  # not on any record
    procs = [recorded, holder, live_drivers_proc, reused, bystander]
    try:
        deadline = time.time() + 30
        while not any(f.path.startswith(str(session)) for f in psutil.Process(holder.pid).open_files()):
            assert time.time() < deadline
            time.sleep(0.1)
        rec_dir = LR.record_dir(tmp_path / "out")
        rec_dir.mkdir(parents=True)
        (rec_dir / "dead.json").write_text(json.dumps({**_gone_driver(), "session_dir": str(session), "processes": [_entry(recorded)]}))
        me = psutil.Process(os.getpid())
        (rec_dir / "alive.json").write_text(json.dumps({"driver_pid": me.pid, "driver_started": me.create_time(),
                                                       "session_dir": str(tmp_path / "session_other"), "processes": [_entry(live_drivers_proc)]}))
        (rec_dir / "reused.json").write_text(json.dumps({**_gone_driver(), "session_dir": str(tmp_path / "session_x"),
                                                        "processes": [{**_entry(reused), "started": _entry(reused)["started"] - 3600}]}))
        lines: list[str] = []
        n = LR.stop_leftovers(LR.records_for(tmp_path / "out"), echo=lines.append)
        for p in (recorded, holder):
            p.wait(timeout=30)  # stopped
        assert n == 2 and len(lines) == 1
        assert lines[0].startswith("stopped 2 Ray process(es) (") and str(session) in lines[0]
        assert all(p.poll() is None for p in (live_drivers_proc, reused, bystander))
        # records of gone drivers are consumed; a running sweep's record stays
        assert sorted(f.name for f in rec_dir.iterdir()) == ["alive.json"]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_a_record_written_in_the_experiment_directory_is_found_on_resume(tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    LR.record(exp / LR.EXPERIMENT_RECORD, {"driver_pid": 1, "driver_started": 0.0, "session_dir": "", "processes": []})
    assert LR.records_for(tmp_path / "out", exp) == [exp / LR.EXPERIMENT_RECORD]
    assert LR.stop_leftovers(LR.records_for(tmp_path / "out", exp), echo=pytest.fail) == 0
    assert not (exp / LR.EXPERIMENT_RECORD).exists()
    LR.forget([exp / LR.EXPERIMENT_RECORD])  # idempotent
