"""Kill the sweep driver mid-sweep, then ``--resume``: only the unfinished trials run, no duplicate runs.

The driver is a subprocess running the sweep CLI (``lungray.sweep.cli.main``, what
``sweeps/size_study.py`` calls) on the smoke phantom with a fake trial body, one trial at a
time. Once one of its three trials has finished it is SIGKILLed with everything it started (its own
session: Ray's processes included). ``--resume <experiment dir>`` then has to finish the rest
into the same MLflow parent run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lungray import tracking as T
from lungray.sweep import mlflow_run as M

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]

DRIVER = """
import sys
from lungray.sweep.cli import main
from lungray.sweep.testing import FakeTrialBody
body = FakeTrialBody(n_max=120, sleep_s=0.3, attempts_file=sys.argv[1])
sys.exit(main(sys.argv[2:], default_preset="smoke", prog="size_study.py", trial_body=body))
"""

GRID = ["--set", "models=[simple_cnn]", "--set", "sizes=[40,80,120]", "--set", "seeds=[0]", "--set", "schedule.epochs=3",
        "--set", "resources.max_concurrent_trials=1"]


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-c", DRIVER, *args], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            cwd=REPO, env=env, start_new_session=True)


def _session_pids(sid: int) -> list[int]:
    """Processes in the session the driver was started in (it and everything it spawned)."""
    out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout.split("\n")
    pids = []
    for line in out:
        parts = line.split()
        if len(parts) == 2 and int(parts[1]) == sid and int(parts[0]) != os.getpid():
            pids.append(int(parts[0]))
    return pids


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and every process of its session, by id (nothing else on the machine)."""
    sid = proc.pid
    for _ in range(3):
        for pid in _session_pids(sid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
    proc.wait(timeout=30)


def _complete(out: Path) -> list[Path]:
    done = []
    for p in out.glob("*/trials/*/result.json"):
        try:
            if json.loads(p.read_text()).get("complete"):
                done.append(p.parent)
        except ValueError:
            pass
    return done


def test_killed_driver_resumes_only_unfinished_trials_without_duplicate_runs(tmp_path, capsys):
    out = tmp_path / "runs"
    attempts = tmp_path / "attempts.txt"
    common = ["--output", str(out), "--no-report", "--address", "local"]
    proc = _start([str(attempts), "--preset", "smoke", *GRID, *common], tmp_path / "first.log")
    try:
        deadline = time.time() + 600
        while len(_complete(out)) < 1:
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "no trial finished in time"
            time.sleep(0.5)
    finally:
        _kill_session(proc)
    assert proc.returncode == -signal.SIGKILL
    (exp_dir,) = [p for p in out.iterdir() if (p / "sweep.json").exists()]
    finished_first = {p.name for p in _complete(out)}
    assert 1 <= len(finished_first) < 3
    lines_before = attempts.read_text().splitlines()

    # a changed grid is refused, before anything runs
    from lungray.sweep.cli import main

    capsys.readouterr()
    rc = main(["--resume", str(exp_dir), "--preset", "smoke", *GRID, "--set", "seeds=[0,1]", *common], "smoke", prog="size_study.py")
    err = capsys.readouterr().err
    assert rc == 2 and "the study changed since this sweep started" in err and "differs in: seeds)" in err

    resumed = _start([str(attempts), "--resume", str(exp_dir), *common], tmp_path / "resume.log")
    try:
        rc = resumed.wait(timeout=900)
    finally:
        _kill_session(resumed)
    log = (tmp_path / "resume.log").read_text()
    assert rc == 0, log[-3000:]
    assert "resuming" in log and f"({len(finished_first)} already finished)" in log
    assert "[3/3] done" in log  # progress counts the trials finished before the kill

    # every trial finished exactly once; the ones done before the kill were not trained again
    assert len(_complete(out)) == 3
    lines_after = attempts.read_text().splitlines()[len(lines_before):]
    trained_again = {ln.split(" start_epoch")[0] for ln in lines_after}
    state = json.loads((exp_dir / "sweep.json").read_text())
    c = M.client(state["tracking_uri"])
    runs = c.search_runs([state["experiment_id"]])
    parents = [r for r in runs if r.data.tags.get(T.ROLE) == T.ROLE_SWEEP]
    children = [r for r in runs if r.data.tags.get(T.ROLE) == T.ROLE_TRIAL]
    assert [p.info.run_id for p in parents] == [state["parent_run_id"]] and parents[0].info.status == "FINISHED"
    assert len(children) == 3 and len({r.data.tags[T.TRIAL_ID] for r in children}) == 3
    assert all(r.info.status == "FINISHED" for r in children)
    for r in children:
        if r.data.tags[T.TRIAL_ID] in finished_first:
            assert r.info.run_name not in trained_again
        steps = [m.step for m in c.get_metric_history(r.info.run_id, "val_accuracy")]
        assert sorted(steps) == [0, 1, 2], (r.info.run_name, steps)  # no repeated step
        assert r.data.metrics["test_accuracy"] == int(r.data.tags[T.AXIS_TAGS["train_size"]]) / 120
    assert len(trained_again) == 3 - len(finished_first)
