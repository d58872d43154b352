"""Issue 14: two sweeps writing to one output folder at once; issue 15: --resume of state others could write.

* Two NEW sweeps in one output folder are safe: each claims its own experiment directory with
  an atomic ``mkdir`` (same study, same second: ``<name>`` and ``<name>-2``), and they share the
  sqlite store, whose lock contention is retried (a real run of two sweep processes at once).
* Two drivers on ONE experiment directory (a second ``--resume``, or ``mlflow-sync`` while a
  sweep runs) are refused with one line naming the holder's PID and host; a lock left by a
  killed driver is detected as stale (PID gone or recycled) and taken over with a note.
* ``--resume`` refuses Tune state that another account could have written.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lungray.errors import ConfigError
from lungray.sweep.lock import LOCK_FILE, ExperimentLock, check_private, claim_new_dir

REPO = Path(__file__).resolve().parents[1]


def _holder(path: Path, pid: int, host: str | None = None, proc_start: str | None = None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": "2026-01-01T00:00:00",
                                              "proc_start": proc_start, "what": "sweep"}))


@pytest.fixture()
def live_pid():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield p.pid
    p.kill()
    p.wait()


def test_a_second_driver_on_a_held_directory_is_refused_naming_the_holder(tmp_path, live_pid):
    _holder(tmp_path, live_pid)
    with pytest.raises(ConfigError) as e:
        ExperimentLock(tmp_path).acquire()
    msg = str(e.value)
    assert f"is in use by a lungray sweep (pid {live_pid} on {socket.gethostname()}, since 2026-01-01T00:00:00)" in msg
    assert "would train and log its trials twice" in msg and "\n" not in msg
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == live_pid  # untouched


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    _holder(tmp_path, 1, host="head-node-7")
    with pytest.raises(ConfigError, match=r"if no lungray runs on head-node-7 any more, delete .*\.lungray\.lock"):
        ExperimentLock(tmp_path).acquire()


def test_stale_locks_of_killed_drivers_are_taken_over_with_a_note(tmp_path, live_pid):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    notes: list[str] = []
    _holder(tmp_path, dead.pid)
    with ExperimentLock(tmp_path, echo=notes.append) as lock:
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
        assert lock.held
    assert not (tmp_path / LOCK_FILE).exists()  # released
    assert notes == [f"note: removed a stale lock on {tmp_path} (pid {dead.pid} is not running; left by a killed sweep)"]
    # a recycled PID: alive, but a different process than the one that took the lock
    _holder(tmp_path, live_pid, proc_start="1")
    with ExperimentLock(tmp_path, echo=notes.append):
        pass
    assert notes[-1].endswith(f"(pid {live_pid} is another process now; left by a killed sweep)")
    # an empty lock file (killed between create and write): stale after a minute, not before
    (tmp_path / LOCK_FILE).write_text("")
    with pytest.raises(ConfigError, match="is in use"):
        ExperimentLock(tmp_path).acquire()
    old = time.time() - 120
    os.utime(tmp_path / LOCK_FILE, (old, old))
    with ExperimentLock(tmp_path, echo=notes.append):
        pass
    assert "an empty lock file" in notes[-1]


def test_new_experiment_directories_are_claimed_atomically(tmp_path):
    cand = tmp_path / "out" / "smoke_20260101-000000"
    assert claim_new_dir(cand) == cand
    assert claim_new_dir(cand) == cand.with_name("smoke_20260101-000000-2")
    assert claim_new_dir(cand) == cand.with_name("smoke_20260101-000000-3")


def test_resume_and_mlflow_sync_refuse_a_directory_a_live_sweep_holds(tmp_path, live_pid):
    from lungray.config import dump_yaml
    from lungray.study import load_study
    from lungray.sweep.runner import run_study
    from lungray.sweep.sync import sync_mlflow

    cfg = load_study("smoke", overrides=[f"output_dir={tmp_path}", "report=false"])
    exp = tmp_path / "smoke_x"
    exp.mkdir()
    (exp / "config.yaml").write_text(dump_yaml(cfg))
    (exp / "sweep.json").write_text(json.dumps({"fingerprint": cfg.fingerprint(), "tracking_uri": "sqlite:///x.db", "experiment_id": "1", "parent_run_id": "p"}))
    _holder(exp, live_pid)
    with pytest.raises(ConfigError, match=rf"smoke_x is in use by a lungray sweep \(pid {live_pid}"):
        run_study(cfg, resume_dir=exp, echo=lambda s: None)  # refused before data, Ray or MLflow
    with pytest.raises(ConfigError, match=rf"is in use by a lungray sweep \(pid {live_pid}"):
        sync_mlflow(exp, echo=lambda s: None)
    assert not (tmp_path / "mlflow.db").exists()


def test_resume_refuses_tune_state_others_could_write(tmp_path):
    exp = tmp_path / "private" / "study_1"
    (exp / "tune" / "trial_0").mkdir(parents=True)
    (exp / "tune" / "tuner.pkl").write_bytes(b"\x80")
    os.chmod(tmp_path / "private", 0o750)
    check_private(exp)  # the cluster user's own, 0750 parent: fine

    os.chmod(exp / "tune" / "tuner.pkl", 0o666)
    with pytest.raises(ConfigError, match=r"refusing to load Tune's pickled state: .*tuner.pkl is writable by every user \(mode 666\).*chmod -R o-w"):
        check_private(exp)
    os.chmod(exp / "tune" / "tuner.pkl", 0o644)

    os.chmod(tmp_path / "private", 0o777)  # an NFS root at 777, as the old cluster.yaml made /efs
    with pytest.raises(ConfigError, match=r"private is writable by every user \(mode 777\) without the sticky bit"):
        check_private(exp)
    os.chmod(tmp_path / "private", 0o1777)  # /tmp-like: sticky, others cannot swap our directory
    check_private(exp)
    os.chmod(tmp_path / "private", 0o750)

    if os.getuid() == 0:  # only root can hand a file to another user
        os.chown(exp / "tune" / "trial_0", 12345, 12345)
        with pytest.raises(ConfigError, match=r"trial_0 belongs to uid 12345, not you"):
            check_private(exp)


@pytest.mark.slow
def test_two_sweeps_started_at_once_into_one_output_folder_both_finish_apart(tmp_path):
    """Two sweep processes, same study, same output folder, started together: two experiment
    directories, one shared MLflow store, one run per trial each, no failure."""
    from lungray import tracking as T
    from lungray.sweep import mlflow_run as M

    driver = (
        "import sys\nfrom lungray.sweep.cli import main\nfrom lungray.sweep.testing import FakeTrialBody\n"
        "sys.exit(main(sys.argv[1:], default_preset='smoke', prog='size_study.py', trial_body=FakeTrialBody(n_max=40, sleep_s=0.2)))\n"
    )
    out = tmp_path / "runs"
    args = ["--set", "models=[simple_cnn]", "--set", "sizes=[20,40]", "--set", "seeds=[0]", "--set", "schedule.epochs=2",
            "--set", "resources.max_concurrent_trials=1", "--output", str(out), "--no-report", "--address", "local"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = [subprocess.Popen([sys.executable, "-c", driver, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
             for _ in range(2)]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(x[-2000:] for x in logs)
    exps = sorted(p for p in out.iterdir() if (p / "sweep.json").exists())
    assert len(exps) == 2
    for exp in exps:
        state = json.loads((exp / "sweep.json").read_text())
        runs = M.client(state["tracking_uri"]).search_runs([state["experiment_id"]], f"tags.`{T.PARENT}` = '{state['parent_run_id']}'")
        assert sorted(r.data.tags[T.AXIS_TAGS["train_size"]] for r in runs) == ["20", "40"]
        assert {r.info.status for r in runs} == {"FINISHED"}
        assert not (exp / LOCK_FILE).exists()
