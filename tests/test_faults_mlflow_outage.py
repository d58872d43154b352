"""Issue 14/15: the tracking server goes down mid-sweep (a REAL ``mlflow server``, killed, restarted).

The sweep trains one trial at a time (fake bodies, exact metrics: ``test_accuracy = n / N_MAX``).
Trial n=20 pauses after its epoch 1 until the test has SIGKILLed the server, so the outage
starts mid-trial, deterministically:

* ``back``: n=20 finishes while the server is down and n=40 starts without it (its run cannot
  be created); n=40 pauses after its epoch 1 until the server is restarted, then reconnects
  mid-trial (creating its run at its end); n=60 trains live. The sweep replays n=20 by itself
  at its end.
* ``down``: the server stays down to the end of the sweep; the sweep finishes every trial,
  says how to replay, and ``lungray mlflow-sync`` completes the MLflow view once the server is back.

Measured in both: no trial fails; runs per trial (exactly one, counting deleted runs too);
lost results (every epoch and final metric of every ``result.json`` is in MLflow, nothing
else is); statuses that agree between the driver (``trials.csv``), Tune and MLflow; and the
"MLflow tracking unreachable since <time>; N write(s) queued" line. Retry/probe bounds are
shortened to 2 s through their environment variables (the defaults are 20 s / 30 s).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from lungray import tracking as T
from lungray.study import load_study
from lungray.sweep import mlflow_run as M
from lungray.sweep.runner import run_study
from lungray.sweep.testing import FakeTrialBody, make_prepared

pytestmark = pytest.mark.slow

EPOCHS = 3
N_MAX = 60
BOUNDS = {M.RETRY_SECONDS_ENV: "2", M.PROBE_SECONDS_ENV: "2"}


@pytest.fixture(scope="module")
def ray_session():
    from conftest import local_ray

    with local_ray(BOUNDS):  # before Ray starts: its worker processes inherit them
        yield


def _complete(exp_root: Path) -> set[str]:
    out = set()
    for p in exp_root.glob("*/trials/*/result.json"):
        try:
            if json.loads(p.read_text()).get("complete"):
                out.add(p.parent.name)
        except ValueError:
            pass
    return out


def _sweep(tmp: Path, server, sizes: list[int], restart: bool):
    """Run the sweep; a watcher thread kills the server when n=20 pauses after epoch 1 and
    (``restart``) restarts it while n=40 pauses after its epoch 1."""
    out, pause = tmp / "runs", tmp / "pause"
    data = make_prepared(tmp / "data", n=120, eval_n=20, val_n=10)
    points = ((20, 1), (40, 1)) if restart else ((20, 1),)
    body = FakeTrialBody(n_max=N_MAX, epochs=EPOCHS, sleep_s=0.2, pause_at=points, pause_dir=str(pause), rendezvous_timeout_s=300)
    cfg = load_study("smoke", overrides=[
        f"output_dir={out}", f"tracking.tracking_uri={server.uri}", "tracking.experiment=outage", "models=[simple_cnn]",
        f"sizes={sizes}", "seeds=[0]", f"schedule.epochs={EPOCHS}", "resources.max_concurrent_trials=1", "report=false"])
    events: list[str] = []

    def wait_for(name: str) -> None:
        deadline = time.time() + 600
        while not (pause / name).exists() and time.time() < deadline:
            time.sleep(0.1)

    def watch():
        wait_for("at-n20-e1")
        server.stop()
        events.append("stopped")
        (pause / "go-n20-e1").write_text("")
        if not restart:
            return
        wait_for("at-n40-e1")
        events.append(f"restarting, {len(_complete(out))} trial(s) done")
        server.start()
        (pause / "go-n40-e1").write_text("")

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    lines: list[str] = []
    result = run_study(cfg, data=data, trial_body=body, echo=lines.append)
    t.join(timeout=300)
    return result, lines, events


def _measure(result, uri: str):
    """Runs per trial, lost results and the three status views of one sweep."""
    from mlflow.entities import ViewType
    from ray.tune import ExperimentAnalysis

    c = M.client(uri)
    every = c.search_runs([result.experiment_id], run_view_type=ViewType.ALL, max_results=1000)
    runs_per_trial: dict[str, int] = {}
    for r in every:
        if r.data.tags.get(T.ROLE) == T.ROLE_TRIAL:
            runs_per_trial[r.data.tags[T.TRIAL_ID]] = runs_per_trial.get(r.data.tags[T.TRIAL_ID], 0) + 1
    children = {r.data.tags[T.TRIAL_ID]: r for r in every if r.data.tags.get(T.ROLE) == T.ROLE_TRIAL}
    lost = []
    for tdir in sorted((result.experiment_dir / "trials").iterdir()):
        res = json.loads((tdir / "result.json").read_text())
        run = children.get(tdir.name)
        if run is None:
            lost.append(f"{tdir.name}: no run")
            continue
        for k in ("val_loss", "val_accuracy", "train_loss"):
            got = sorted((m.step, m.value) for m in c.get_metric_history(run.info.run_id, k))
            want = sorted((h["epoch"], h[k]) for h in res["history"])
            if got != want:
                lost.append(f"{tdir.name}: {k} {got} != {want}")
        for k, v in res["metrics"].items():
            hist = c.get_metric_history(run.info.run_id, k)
            if len(hist) != 1 or hist[0].value != pytest.approx(v):
                lost.append(f"{tdir.name}: final {k} {[m.value for m in hist]} != {v}")
        arts = {a.path for a in c.list_artifacts(run.info.run_id)}
        want_arts = {p.name for p in (tdir / "artifacts").iterdir()}
        if not want_arts <= arts:
            lost.append(f"{tdir.name}: artifacts missing {want_arts - arts}")
    driver = dict(pd.read_csv(result.experiment_dir / "trials.csv")[["trial_id", "status"]].itertuples(index=False))
    tune_status = sorted(t.status for t in ExperimentAnalysis(str(result.experiment_dir / "tune")).trials)
    mlflow_status = {tid: r.info.status for tid, r in children.items()}
    return runs_per_trial, lost, driver, tune_status, mlflow_status


def test_server_back_mid_sweep_everything_replayed_by_the_sweep_itself(ray_session, tmp_path):
    from mlflow_server import MlflowServer

    server = MlflowServer(tmp_path / "server").start()
    try:
        result, lines, events = _sweep(tmp_path, server, [20, 40, 60], restart=True)
        assert events == ["stopped", "restarting, 1 trial(s) done"]
        assert result.ok and result.n_errors == 0
        text = "\n".join(lines)
        assert "MLflow tracking unreachable since" in text and "write(s) queued" in text, text[-3000:]
        assert "MLflow: replayed the queued writes of 1 trial(s)" in text, text[-3000:]
        assert not list(result.experiment_dir.rglob(M.PENDING_FILE))  # nothing left queued

        runs_per_trial, lost, driver, tune_status, mlflow_status = _measure(result, server.uri)
        assert sorted(runs_per_trial.values()) == [1, 1, 1]  # exactly one run per trial, none deleted
        assert lost == []
        assert set(driver.values()) == {"done"} and tune_status == ["TERMINATED"] * 3
        assert set(mlflow_status.values()) == {"FINISHED"} and set(mlflow_status) == set(driver)
        parent = M.client(server.uri).get_run(result.parent_run_id)
        assert parent.info.status == "FINISHED" and parent.data.tags["lungray.failed_trials"] == "0"
        for tid, r in mlflow_status.items():
            run = M.client(server.uri).search_runs([result.experiment_id], f"tags.`{T.TRIAL_ID}` = '{tid}'")[0]
            assert run.data.metrics["test_accuracy"] == int(run.data.tags[T.AXIS_TAGS["train_size"]]) / N_MAX
    finally:
        server.stop()


def test_server_down_to_the_end_then_mlflow_sync_completes_the_view(ray_session, tmp_path, capsys):
    from lungray.cli import main as lungray_main
    from mlflow_server import MlflowServer

    server = MlflowServer(tmp_path / "server").start()
    try:
        result, lines, events = _sweep(tmp_path, server, [20, 40], restart=False)
        assert events == ["stopped"]
        assert result.ok and result.n_errors == 0  # no trial failed for want of MLflow
        text = "\n".join(lines)
        assert f"once the store is back run: lungray mlflow-sync {result.experiment_dir}" in text, text[-3000:]
        assert "MLflow tracking unreachable since" in text
        state = json.loads((result.experiment_dir / "sweep.json").read_text())
        assert state["status"] == "FINISHED" and state["failed_trials"] == 0
        pend = sorted(p.parent.name for p in result.experiment_dir.rglob(M.PENDING_FILE))
        assert len(pend) == 3  # both trials and the parent run

        server.start()
        capsys.readouterr()
        assert lungray_main(["mlflow-sync", str(result.experiment_dir)]) == 0
        assert "synced 2 trial(s) to MLflow" in capsys.readouterr().out
        assert not list(result.experiment_dir.rglob(M.PENDING_FILE))
        runs_per_trial, lost, driver, tune_status, mlflow_status = _measure(result, server.uri)
        assert sorted(runs_per_trial.values()) == [1, 1]
        assert lost == []
        assert set(driver.values()) == {"done"} and tune_status == ["TERMINATED"] * 2
        assert set(mlflow_status.values()) == {"FINISHED"}
        parent = M.client(server.uri).get_run(result.parent_run_id)
        assert parent.info.status == "FINISHED"
        assert {a.path for a in M.client(server.uri).list_artifacts(result.parent_run_id)} >= {"trials.csv", "summary.csv", T.CONFIG_YAML}
        # idempotent: a second sync changes nothing
        assert lungray_main(["mlflow-sync", str(result.experiment_dir)]) == 0
        assert _measure(result, server.uri)[:2] == (runs_per_trial, [])
    finally:
        server.stop()
