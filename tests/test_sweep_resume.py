"""Kill the sweep driver mid-sweep, then ``--resume``: only the unfinished trials run, no duplicate runs.

The driver is a subprocess running the sweep CLI (``lungray.sweep.cli.main``, what
``sweeps/size_study.py`` calls) on the smoke phantom with a fake trial body, one trial at a
time. Once one of its three trials has finished it is SIGKILLed, alone, as ``kill -9 <pid>``
does: the Ray processes it started that outlive it are on record. The checkpoints of the
unfinished trials are then truncated (one is planted where a trial had none yet).
``--resume <experiment dir>`` has to stop exactly the leftover Ray processes (not an unrelated
process of the same user), restart the trials whose checkpoints are corrupt from scratch with
one line each, and finish the rest into the same MLflow parent run.
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


def _ray_leftovers(record: dict) -> dict[int, float]:
    """pid -> start time of the processes a killed driver's Ray instance left running: those on
    record (same start time) and any holding a file in its session directory."""
    import psutil

    left = {}
    for d in record["processes"]:
        try:
            if abs(psutil.Process(d["pid"]).create_time() - d["started"]) < 1.0:
                left[d["pid"]] = d["started"]
        except psutil.NoSuchProcess:
            pass
    for q in psutil.process_iter():
        try:
            if any(f.path.startswith(record["session_dir"] + "/") for f in q.open_files()):
                left[q.pid] = q.create_time()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return left


def _running(pid: int, started: float) -> bool:
    import psutil

    try:
        q = psutil.Process(pid)
        return abs(q.create_time() - started) < 1.0 and q.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _corrupt_checkpoints(trial_dir: Path) -> None:
    """Truncate every committed checkpoint of a trial; plant a corrupt one if it had none yet."""
    from lungray.train import checkpoint as ckpt

    work = trial_dir / "work"
    states = list(work.glob("*/fake_state.json"))
    for f in states:
        f.write_text(f.read_text()[:5])
    if not states:
        d = work / "ckpt-1"
        d.mkdir(parents=True)
        (d / "fake_state.json").write_text(json.dumps({"epoch": 1, "history": []}))
        ckpt.write_manifest(d, 1)
        (d / "fake_state.json").write_text("{")


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
    except BaseException:
        _kill_session(proc)
        raise
    os.kill(proc.pid, signal.SIGKILL)  # the driver alone
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    (exp_dir,) = [p for p in out.iterdir() if (p / "sweep.json").exists()]
    finished_first = {p.name for p in _complete(out)}
    # at least one finished (the loop above waited for it); not all, or --resume has nothing to do
    assert len(finished_first) < 3, "every trial finished before the kill: nothing left for --resume to show"
    lines_before = attempts.read_text().splitlines()
    # what the killed driver's Ray instance left running (Ray 2.60: its dashboard and runtime-env agents)
    record = json.loads((out / ".lungray" / "ray" / f"{proc.pid}.json").read_text())
    assert record == json.loads((exp_dir / "ray_instance.json").read_text())
    time.sleep(2)
    leftovers = _ray_leftovers(record)
    assert leftovers, "no Ray process outlived the killed driver: this test no longer shows the clean-up"
    bystander = subprocess.Popen(["sleep", "900"])  # another process of this user: never touched
    from lungray.study import load_study
    from lungray.sweep.grid import trial_uid

    unfinished = {trial_uid(t) for t in load_study("smoke", overrides=[g for g in GRID if g != "--set"]).trials()} - finished_first
    for uid in unfinished:
        _corrupt_checkpoints(exp_dir / "trials" / uid)

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
        alive_after = {pid for pid, t in leftovers.items() if _running(pid, t)}
        bystander_alive = bystander.poll() is None
        bystander.kill()
        bystander.wait()
        _kill_session(proc)  # whatever is left of the first driver's session
    log = (tmp_path / "resume.log").read_text()
    assert rc == 0, log[-3000:]
    assert "resuming" in log and f"({len(finished_first)} already finished)" in log
    assert "[3/3] done" in log  # progress counts the trials finished before the kill
    # the killed driver's Ray leftovers were stopped, by record, and nothing else
    assert not alive_after and bystander_alive
    (stopped,) = [ln for ln in log.splitlines() if ln.startswith("stopped ")]
    n_stopped = int(stopped.split()[1])  # some of the leftovers may still have been on their way out
    # (the line is printed only when it stopped at least one); by the killed driver's own record:
    assert n_stopped <= len(leftovers) and f"left by an earlier driver (pid {proc.pid})" in stopped, stopped
    assert stopped.endswith(f"; Ray session {record['session_dir']}"), stopped
    assert not (out / ".lungray" / "ray" / f"{proc.pid}.json").exists()
    # each trial with corrupt checkpoints restarted from scratch, with one line saying why
    # (the killed driver's experiment lock is the other note: stale, taken over, tests/test_faults_lock.py)
    assert sum(ln.startswith("note: removed a stale lock on ") for ln in log.splitlines()) == 1
    notes = [ln for ln in log.splitlines() if ln.startswith("note: ") and "stale lock" not in ln]
    assert len(notes) == len(unfinished) and all(n.endswith("; restarting the trial from scratch") for n in notes), notes

    # every trial finished exactly once; the ones done before the kill were not trained again
    assert len(_complete(out)) == 3
    lines_after = attempts.read_text().splitlines()[len(lines_before):]
    trained_again = {ln.split(" start_epoch")[0] for ln in lines_after}
    assert all(ln.endswith(" start_epoch=0") for ln in lines_after), lines_after
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
