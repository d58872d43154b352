"""Issue 14: kill -9 of a trial process and of the driver at several seeded points.

**Trial processes.** One sweep of 8 trials (4 sizes x 2 seeds, fake bodies, exact metrics).
Every trial's training process is SIGKILLed once, each at a different point of its life, drawn
by a seeded shuffle (``LUNGRAY_FAULT_SEED``, default 0) from:

* after epoch 0, 1 or 2 has been reported (its checkpoint persisted; FakeTrialBody.kill_epochs);
* ``trial.after_run``: its MLflow run exists, nothing trained;
* ``trial.after_result``: ``result.json`` is complete, before the trial's own bookkeeping;
* ``sync.before_artifacts``: mid-upload (final metrics in MLflow, artifacts not yet);
* ``trial.before_report``: everything written, Tune not yet told.

Tune retries each trial once (``resources.max_failures=1``) from its last checkpoint.

**The driver.** The sweep CLI in a subprocess, SIGKILLed with everything it started at a
seeded point (after a seeded number of epochs across trials), or by itself at the failpoint
``driver.before_finish`` (every trial done, the parent run not yet finished); then ``--resume``.

Measured: runs per trial (exactly one, deleted runs counted), lost results (every epoch and
final metric of every ``result.json`` in MLflow; the results of trials finished before a driver
kill unchanged byte for byte and not retrained), statuses (driver, Tune, MLflow agree).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lungray import tracking as T
from lungray.study import load_study
from lungray.sweep import mlflow_run as M
from lungray.sweep.faults import FAILPOINT_DIR_ENV, FAILPOINT_ENV
from lungray.sweep.grid import trial_uid
from lungray.sweep.runner import run_study
from lungray.sweep.testing import FakeTrialBody, make_prepared

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("LUNGRAY_FAULT_SEED", "0"))
EPOCHS = 3
SIZES = (20, 40, 60, 80)
SEEDS = (0, 1)
POINTS = ("epoch:0", "epoch:1", "epoch:2", "trial.after_run", "trial.after_result", "sync.before_artifacts", "trial.before_report")


def kill_plan(seed: int = SEED) -> dict[tuple[int, int], str]:
    """(train_size, seed) -> kill point: a seeded shuffle, every point used at least once."""
    rng = np.random.default_rng(seed)
    cells = [(n, s) for s in SEEDS for n in SIZES]
    order = list(rng.permutation(POINTS)) + list(rng.choice(POINTS, size=len(cells) - len(POINTS)))
    return dict(zip(cells, order))


def _key(n: int, s: int) -> str:
    return f"simple_cnn|n={n}|adam|seed={s}"


def test_kill_plan_is_seeded_and_uses_every_point():
    plan = kill_plan(0)
    assert plan == kill_plan(0) and set(plan.values()) == set(POINTS) and len(plan) == 8
    assert kill_plan(1) != plan


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    from conftest import local_ray

    marks = tmp_path_factory.mktemp("failpoints")
    plan = kill_plan()
    spec = ",".join(f"{p}@{_key(n, s)}!kill" for (n, s), p in plan.items() if not p.startswith("epoch:"))
    with local_ray({FAILPOINT_ENV: spec, FAILPOINT_DIR_ENV: str(marks)}):  # Ray's workers inherit them
        yield plan, marks


def measure(exp_dir: Path, tracking_uri: str, experiment_id: str):
    """(runs per trial, lost results, driver statuses, Tune statuses, MLflow statuses)."""
    from mlflow.entities import ViewType
    from ray.tune import ExperimentAnalysis

    c = M.client(tracking_uri)
    every = [r for r in c.search_runs([experiment_id], run_view_type=ViewType.ALL, max_results=1000) if r.data.tags.get(T.ROLE) == T.ROLE_TRIAL]
    per_trial: dict[str, int] = {}
    for r in every:
        per_trial[r.data.tags[T.TRIAL_ID]] = per_trial.get(r.data.tags[T.TRIAL_ID], 0) + 1
    runs = {r.data.tags[T.TRIAL_ID]: r for r in every}
    lost = []
    for tdir in sorted((exp_dir / "trials").iterdir()):
        res = json.loads((tdir / "result.json").read_text())
        run = runs.get(tdir.name)
        if run is None:
            lost.append(f"{tdir.name}: no run")
            continue
        for k in ("val_loss", "val_accuracy", "train_loss"):
            got = sorted((m.step, m.value) for m in c.get_metric_history(run.info.run_id, k))
            if got != sorted((h["epoch"], h[k]) for h in res["history"]):
                lost.append(f"{tdir.name}: {k} {got}")
        for k, v in res["metrics"].items():
            hist = c.get_metric_history(run.info.run_id, k)
            if len(hist) != 1 or hist[0].value != pytest.approx(v):
                lost.append(f"{tdir.name}: {k} {[m.value for m in hist]} != {v}")
        missing = {p.name for p in (tdir / "artifacts").iterdir()} - {a.path for a in c.list_artifacts(run.info.run_id)}
        if missing:
            lost.append(f"{tdir.name}: artifacts {sorted(missing)}")
    driver = dict(pd.read_csv(exp_dir / "trials.csv")[["trial_id", "status"]].itertuples(index=False))
    tune = sorted(t.status for t in ExperimentAnalysis(str(exp_dir / "tune")).trials)
    mlflow_status = {tid: r.info.status for tid, r in runs.items()}
    return per_trial, lost, driver, tune, mlflow_status


def test_trial_processes_killed_at_seeded_points_recover_into_one_run_each(ray_session, tmp_path):
    plan, marks = ray_session
    data = make_prepared(tmp_path / "data", n=160, eval_n=20, val_n=10)
    epochs = {cell: int(p.split(":")[1]) for cell, p in plan.items() if p.startswith("epoch:")}
    body = FakeTrialBody(n_max=80, epochs=EPOCHS, sleep_s=0.1, kill_epochs=epochs, kill_marker_dir=str(marks))
    cfg = load_study("smoke", overrides=[
        f"output_dir={tmp_path / 'runs'}", "models=[simple_cnn]", f"sizes={list(SIZES)}", f"seeds={list(SEEDS)}",
        f"schedule.epochs={EPOCHS}", "resources.max_failures=1", "resources.max_concurrent_trials=2", "report=false"])
    lines: list[str] = []
    result = run_study(cfg, data=data, trial_body=body, echo=lines.append)

    fired = sorted(p.name for p in marks.iterdir())
    assert len(fired) == len(plan), fired  # every trial's process was killed once, at its point
    assert result.ok, result.trials[["train_size", "seed", "status", "error"]].to_dict("records")
    per_trial, lost, driver, tune, mlflow_status = measure(result.experiment_dir, result.tracking_uri, result.experiment_id)
    assert sorted(per_trial.values()) == [1] * 8  # exactly one MLflow run per trial, none deleted
    assert lost == []
    assert set(driver.values()) == {"done"} and tune == ["TERMINATED"] * 8 and set(mlflow_status.values()) == {"FINISHED"}
    for t in cfg.trials():
        run = M.client(result.tracking_uri).search_runs([result.experiment_id], f"tags.`{T.TRIAL_ID}` = '{trial_uid(t)}'")[0]
        assert run.data.metrics["test_accuracy"] == t.train_size / 80


# ---------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------


def _digests(exp_dir: Path) -> dict[str, str]:
    out = {}
    for res in exp_dir.glob("trials/*/result.json"):
        if json.loads(res.read_text()).get("complete"):
            files = [res, *sorted(p for p in (res.parent / "artifacts").rglob("*") if p.is_file())]
            out[res.parent.name] = hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()
    return out


def _epochs_journaled(out: Path) -> int:
    return sum(len(p.read_text().splitlines()) for p in out.glob("*/trials/*/epochs.jsonl"))


DRIVER_POINTS = ["epochs", "driver.before_finish"]


@pytest.mark.parametrize("point", DRIVER_POINTS)
def test_driver_killed_at_seeded_points_resumes_with_one_run_per_trial(point, tmp_path):
    from test_sweep_resume import GRID, _kill_session, _start

    rng = np.random.default_rng(SEED)
    out, attempts = tmp_path / "runs", tmp_path / "attempts.txt"
    common = ["--output", str(out), "--no-report", "--address", "local"]
    env_before = {k: os.environ.get(k) for k in (FAILPOINT_ENV, FAILPOINT_DIR_ENV)}
    if point == "driver.before_finish":
        os.environ[FAILPOINT_ENV], os.environ[FAILPOINT_DIR_ENV] = "driver.before_finish", str(tmp_path)
    try:
        proc = _start([str(attempts), "--preset", "smoke", *GRID, *common], tmp_path / "first.log")
    finally:
        for k, v in env_before.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    kill_after = int(rng.integers(1, 3 * 3))  # 1..8 of the grid's 9 epochs
    try:
        deadline = time.time() + 900
        while proc.poll() is None:
            assert time.time() < deadline, "the driver never reached its kill point"
            if point == "epochs" and _epochs_journaled(out) >= kill_after:
                break
            time.sleep(0.2)
    finally:
        _kill_session(proc)
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-3000:]
    (exp_dir,) = [p for p in out.iterdir() if (p / "sweep.json").exists()]
    before = _digests(exp_dir)
    if point == "driver.before_finish":
        assert len(before) == 3 and json.loads((exp_dir / "sweep.json").read_text())["status"] == "FINISHED"
    trained_before = attempts.read_text().splitlines()

    resumed = _start([str(attempts), "--resume", str(exp_dir), *common], tmp_path / "resume.log")
    try:
        rc = resumed.wait(timeout=900)
    finally:
        _kill_session(resumed)
    log = (tmp_path / "resume.log").read_text()
    assert rc == 0, log[-3000:]
    assert "removed a stale lock" in log  # the killed driver's lock, taken over

    after = _digests(exp_dir)
    assert len(after) == 3 and all(after[k] == v for k, v in before.items())  # finished results untouched
    retrained = {ln.split(" start_epoch")[0] for ln in attempts.read_text().splitlines()[len(trained_before):]}
    state = json.loads((exp_dir / "sweep.json").read_text())
    per_trial, lost, driver, tune, mlflow_status = measure(exp_dir, state["tracking_uri"], state["experiment_id"])
    assert sorted(per_trial.values()) == [1, 1, 1] and lost == []
    assert set(driver.values()) == {"done"} and tune == ["TERMINATED"] * 3 and set(mlflow_status.values()) == {"FINISHED"}
    names = {json.loads((exp_dir / "trials" / tid / "trial_config.json").read_text())["trial"]["train_size"]: tid for tid in before}
    assert not any(f"n={n}|" in r for n in names for r in retrained)  # finished trials were not trained again
    parent = M.client(state["tracking_uri"]).get_run(state["parent_run_id"])
    assert parent.info.status == "FINISHED"
