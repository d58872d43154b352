"""Against a real ``mlflow server`` process (SQL backend, proxied artifacts), as on a cluster head.

The sweep's find-or-create trial runs and the report builder must work over HTTP exactly as on
the local sqlite store: a cluster's workers and a user's laptop reach MLflow only through the
server, and artifacts travel through its ``mlflow-artifacts:`` proxy.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lungray import tracking as T
from lungray.config import dump_yaml
from lungray.study import load_study
from lungray.sweep import mlflow_run as M
from lungray.sweep.grid import trial_uid

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited {proc.returncode}: {(root / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer: {(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield {"uri": uri, "root": root}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_trial_runs_are_found_or_created_over_http(server, tmp_path):
    uri = server["uri"]
    cfg = load_study("smoke", overrides=[f"output_dir={tmp_path}", "models=[simple_cnn]", "sizes=[20]", "seeds=[0]"])
    exp = M.ensure_experiment(uri, "over_http")
    assert M.ensure_experiment(uri, "over_http") == exp  # created once
    pid = M.create_parent_run(
        uri, exp, study_name=cfg.name, config_dict=cfg.to_dict(), config_fingerprint=cfg.fingerprint(),
        dataset_fingerprint="fp", storage_path=str(tmp_path / "exp"), data_root=str(tmp_path / "data"),
        artifacts={T.CONFIG_YAML: dump_yaml(cfg), T.SPLITS_JSON: {"eval": np.arange(4)}},
    )
    (trial,) = cfg.trials()
    rid, created = M.find_or_create_trial_run(uri, exp, pid, trial_uid(trial), trial)
    M.log_metrics(M.client(uri), rid, {"train_loss": 0.5}, step=1)
    M.finish_run(uri, rid, "FAILED", error="worker died")
    rid2, created2 = M.find_or_create_trial_run(uri, exp, pid, trial_uid(trial), trial)  # the retry
    M.finish_run(uri, rid2, "FINISHED")
    assert created and not created2 and rid2 == rid
    c = M.client(uri)
    runs = c.search_runs([exp])
    assert len(runs) == 2  # one parent, one trial: the retry did not open a second run
    run = c.get_run(rid)
    assert run.info.status == "FINISHED" and run.data.tags[T.PARENT] == pid
    assert run.data.params["train_size"] == "20"
    # artifacts went through the server's proxy, not to a path on this side
    assert c.get_experiment(exp).artifact_location.startswith("mlflow-artifacts:")
    local = c.download_artifacts(pid, T.SPLITS_JSON, str(tmp_path / "dl"))
    assert json.loads(Path(local).read_text()) == {"eval": [0, 1, 2, 3]}


def test_report_reads_a_sweep_through_the_server(server, tmp_path):
    from lungray.report import build_report
    from lungray.report._testing import log_fake_sweep

    uri = server["uri"]
    log_fake_sweep(uri, "fake_over_http", models=("alpha", "beta"), sizes=(25, 100), seeds=(0, 1), identical={})
    html = build_report(uri, "fake_over_http", out_dir=tmp_path / "report", gradcam=False, n_boot=200)
    assert html.is_file() and "Complete: all 8 trials of the grid finished." in html.read_text()
    table = pd.read_csv(html.parent / "table_accuracy.csv")
    c = M.client(uri)
    exp = c.get_experiment_by_name("fake_over_http").experiment_id
    trials = c.search_runs([exp], filter_string=f"tags.`{T.ROLE}` = '{T.ROLE_TRIAL}'")
    held = {}
    for r in trials:
        key = (r.data.tags[T.AXIS_TAGS["model"]], int(r.data.tags[T.AXIS_TAGS["train_size"]]))
        held.setdefault(key, []).append(r.data.metrics["test_accuracy"])
    assert len(table) == len(held) == 4
    for r in table.itertuples():
        assert r.mean == pytest.approx(np.mean(held[(r.model, r.train_size)]), abs=1e-12)
