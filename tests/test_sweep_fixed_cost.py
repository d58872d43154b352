"""What a sweep pays before and after its trials (issue 22.3), as behaviour: the timings are in
``bench/bench_sweep.py`` (section 4) and ``bench/RESULTS.md``, never asserted here.

* The local Ray instance a sweep starts prestarts no worker processes (Tune's trial actors never
  use them) and no dashboard modules unless asked, and its end does not wait a second for the
  autoscaler's monitor; a plain ``ray.init()`` on the same machine is the control, so the check
  is seen to catch what it looks for.
* MLflow's import and store open in a thread while Ray starts: the warm-up creates the sqlite
  schema the driver then reuses, and a store it cannot open is left to the driver's own calls,
  which report it as before.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from lungray.sweep import mlflow_run as M
from lungray.sweep.ray_env import DASHBOARD_ENV, local_init_kwargs

REPO = Path(__file__).resolve().parents[1]

#: Starts Ray (lungray's init_ray, or plain ray.init for the control) in a fresh process and
#: reports what the raylet started: idle worker processes, and the dashboard's command line.
_PROBE = r"""
import json, os, sys, time
import psutil, ray
from lungray.sweep.cluster import init_ray

mode = sys.argv[1]
before = dict(os.environ)
if mode == "plain":
    ray.init(address="local", logging_level="ERROR")
else:
    init_ray("local", logging_level="ERROR")
node = ray._private.worker._global_node
raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
dash = node.all_processes.get("dashboard")
dash_cmd = psutil.Process(dash[0].process.pid).cmdline() if dash else []
workers, deadline = [], time.time() + float(sys.argv[2])
while time.time() < deadline:  # prestarted workers appear within a few seconds of the driver connecting
    workers = [p.pid for p in raylet.children(recursive=True)  # a worker renames itself ray::IDLE once up
               if any("default_worker.py" in a or a == "ray::IDLE" for a in p.cmdline())]
    if workers and mode == "plain":
        break
    time.sleep(0.2)
leaked = [k for k in ("RAY_prestart_worker_first_driver",) if before.get(k) != os.environ.get(k)]
monitor = node.all_processes["monitor"][0].process
if mode == "plain":
    ray.shutdown()
else:
    from lungray.sweep import local_ray as LR

    LR.shutdown()
print(json.dumps({"workers": len(workers), "dashboard_cmd": dash_cmd, "leaked_env": leaked,
                  "monitor_exit": monitor.poll(), "initialized": ray.is_initialized()}))
"""


def _probe(mode: str, wait_s: float, env: dict | None = None) -> dict:
    full = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **(env or {})}
    full.pop("RAY_ADDRESS", None)
    full.pop(DASHBOARD_ENV, None) if DASHBOARD_ENV not in (env or {}) else None
    r = subprocess.run([sys.executable, "-c", _PROBE, mode, str(wait_s)], capture_output=True, text=True, env=full, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_sweeps_local_ray_prestarts_no_worker_and_loads_no_dashboard_unless_asked():
    plain = _probe("plain", 60)
    assert plain["workers"] >= 1  # the control: Ray 2.60 prestarts one idle worker per CPU for the driver
    assert "--modules-to-load=UsageStatsHead" not in plain["dashboard_cmd"]

    lean = _probe("lungray", 10)
    assert lean["workers"] == 0  # nothing in a sweep would ever run in them
    assert lean["monitor_exit"] == -9 and not lean["initialized"]  # killed at once (LR.shutdown), Ray down
    assert "--modules-to-load=UsageStatsHead" in lean["dashboard_cmd"]  # Ray's include_dashboard=False
    assert lean["leaked_env"] == []  # the raylet got RAY_prestart_worker_first_driver=0; the driver's env is as it was

    asked = _probe("lungray", 0, env={DASHBOARD_ENV: "1"})
    assert "--modules-to-load=UsageStatsHead" not in asked["dashboard_cmd"]


def test_the_dashboard_is_on_only_when_asked():
    assert local_init_kwargs({}) == {"include_dashboard": False}
    assert local_init_kwargs({DASHBOARD_ENV: "0"}) == {"include_dashboard": False}
    for on in ("1", "true", "YES", " on "):
        assert local_init_kwargs({DASHBOARD_ENV: on}) == {}  # Ray's default: the dashboard when ray[default] is installed


def test_the_store_warm_up_creates_the_schema_the_driver_then_uses(tmp_path):
    db = tmp_path / "out" / "mlflow.db"
    uri = f"sqlite:///{db}"
    warm = M.StoreWarmUp(uri, quiet=True).start()
    assert warm.wait(timeout=300)
    assert warm.error is None and warm.seconds > 0
    with sqlite3.connect(db) as con:
        tables = {r[0] for r in con.execute("select name from sqlite_master where type = 'table'")}
    assert {"experiments", "runs", "metrics", "alembic_version"} <= tables  # MLflow's migrations ran
    assert logging.getLogger("mlflow").level == logging.WARNING  # its "Creating initial ... tables" lines stay off the console
    exp_id = M.ensure_experiment(uri, "study", artifact_root=str(tmp_path / "out" / "mlartifacts"))
    assert M.client(uri).get_experiment(exp_id).name == "study"


def test_a_store_the_warm_up_cannot_open_is_left_to_the_driver(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the store's folder should be")
    uri = f"sqlite:///{blocker / 'mlflow.db'}"
    warm = M.StoreWarmUp(uri).start()
    assert warm.wait(timeout=300)  # it never raises in the driver ...
    assert warm.error is not None
    with pytest.raises(Exception):  # ... the driver's own call meets the problem and reports it, as before
        M.ensure_experiment(uri, "study")


_PRELOAD = r"""
import json, sys
from lungray.study import load_study
from lungray.sweep.trainable import DEFAULT_BODY, SweepContext, preload_training_stack
from lungray.sweep.testing import FakeTrialBody

model, body = sys.argv[1], sys.argv[2]
cfg = load_study("smoke", overrides=[f"models=[{model}]"])
trial = cfg.trials()[0]
ctx = SweepContext(study="s", experiment_dir="/nonexistent", tracking_uri="sqlite:///x.db", experiment_id="1",
                   parent_run_id="p", data=None, trials={}, use_ray_train=False,
                   body=DEFAULT_BODY if body == "default" else FakeTrialBody(n_max=1))
before = "torch" in sys.modules
t = preload_training_stack(ctx, trial)
if t is not None:
    t.join(300)
print(json.dumps({"before": before, "thread": t is not None, "torch": "torch" in sys.modules,
                  "dynamo": "torch._dynamo" in sys.modules, "loop": "lungray.train.loop" in sys.modules,
                  "pyplot": "matplotlib.pyplot" in sys.modules}))
"""


def _preload(model: str, body: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", _PRELOAD, model, body], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_slots_first_trial_preloads_what_its_body_trains_with():
    cnn = _preload("simple_cnn", "default")
    assert not cnn["before"] and cnn["thread"]
    assert cnn["torch"] and cnn["loop"] and cnn["dynamo"]  # an optimizer's first call imports torch._dynamo
    assert cnn["pyplot"]  # the confusion matrix PNG at the trial's end
    logreg = _preload("logreg", "default")
    assert logreg["torch"] and logreg["loop"] and not logreg["dynamo"]  # fitted in closed form: no optimizer
    fake = _preload("simple_cnn", "fake")  # another body (the tests' fake): nothing is imported for it
    assert not fake["thread"] and not fake["torch"] and not fake["pyplot"]


def test_a_new_local_store_is_a_copy_of_an_empty_one_mlflow_made_once(tmp_path, monkeypatch):
    """MLflow's ~60 schema migrations run once per machine and MLflow version, not per store."""
    import mlflow
    import mlflow.store.db.utils as U

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    migrations = []
    real = U._initialize_tables
    monkeypatch.setattr(U, "_initialize_tables", lambda engine: (migrations.append(str(engine.url)), real(engine))[1])
    uri_a, uri_b = (f"sqlite:///{tmp_path / d / 'mlflow.db'}" for d in ("a", "b"))
    exp_a = M.ensure_experiment(uri_a, "study", artifact_root=str(tmp_path / "a" / "mlartifacts"))
    template = tmp_path / "cache" / "lungray" / "mlflow-schema" / f"mlflow-{mlflow.__version__}.db"
    assert template.exists() and len(migrations) == 1 and "mlflow-schema" in migrations[0]  # made by MLflow itself, once
    exp_b = M.ensure_experiment(uri_b, "study", artifact_root=str(tmp_path / "b" / "mlartifacts"))
    assert len(migrations) == 1  # the second store is a copy: no migration ran for it

    c = M.client(uri_b)
    assert c.get_experiment("0").name == "Default"  # recreated by MLflow for this store
    assert c.get_experiment(exp_b).artifact_location == (tmp_path / "b" / "mlartifacts").resolve().as_uri()
    run = c.create_run(exp_b)
    c.log_metric(run.info.run_id, "m", 0.5, step=3)
    assert [(m.step, m.value) for m in c.get_metric_history(run.info.run_id, "m")] == [(3, 0.5)]
    assert [e.name for e in M.client(uri_a).search_experiments()] == ["study", "Default"]  # stores stay apart
    assert M.client(uri_a).get_experiment_by_name("study").experiment_id == exp_a
    assert c.search_runs([exp_b])[0].info.run_id == run.info.run_id and not M.client(uri_a).search_runs([exp_a])
