"""MLflow bookkeeping without Ray: one run per trial, exactly-once epochs, FAILED runs, mlflow-sync.

Each test uses its own sqlite store in a temporary directory (a few seconds in all).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lungray import tracking as T
from lungray.config import dump_yaml
from lungray.study import load_study
from lungray.sweep import mlflow_run as M
from lungray.sweep.grid import trial_lookup, trial_uid
from lungray.sweep.testing import FakeTrialBody, make_prepared
from lungray.sweep.trainable import EPOCH_FILE, EpochReporter, SweepContext, _catch_up, read_result, write_trial_outputs


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """One sqlite store for the module (creating its schema takes seconds); one experiment per test."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture()
def store(db, tmp_path, request):
    exp = M.ensure_experiment(db, request.node.name, artifact_root=str(tmp_path / "art"))
    return db, exp, tmp_path


def _cfg(tmp_path, **kw):
    return load_study("smoke", overrides=[f"output_dir={tmp_path}", "models=[simple_cnn]", "sizes=[20,40]", "seeds=[0]"], validate=False)


def _parent(uri, exp, cfg, tmp_path):
    return M.create_parent_run(
        uri, exp, study_name=cfg.name, config_dict=cfg.to_dict(), config_fingerprint=cfg.fingerprint(),
        dataset_fingerprint="fp", storage_path=str(tmp_path / "exp"), data_root=str(tmp_path / "data"),
        artifacts={T.CONFIG_YAML: dump_yaml(cfg), T.SPLITS_JSON: {"eval": np.arange(3)}},
    )


def test_experiment_is_created_once_with_artifacts_next_to_the_store(store):
    uri, exp, tmp_path = store
    assert M.ensure_experiment(uri, "test_experiment_is_created_once_with_artifacts_next_to_the_store") == exp
    loc = M.client(uri).get_experiment(exp).artifact_location
    assert loc == (tmp_path / "art").resolve().as_uri()


def test_parent_run_carries_config_fingerprints_and_artifacts(store):
    uri, exp, tmp_path = store
    cfg = _cfg(tmp_path)
    pid = _parent(uri, exp, cfg, tmp_path)
    run = M.client(uri).get_run(pid)
    tags = run.data.tags
    assert tags[T.ROLE] == T.ROLE_SWEEP and tags[T.CONFIG_FP] == cfg.fingerprint() and tags[T.DATASET_FP] == "fp"
    assert tags[T.VERSION] == "0.1.0" and tags[T.GIT_COMMIT] and tags[T.STORAGE_PATH].endswith("exp")
    assert run.data.params["data.resolution"] == "32" and run.data.params["models.0.name"] == "simple_cnn"
    assert run.data.params["sizes"] == "[20, 40]"
    arts = {a.path for a in M.client(uri).list_artifacts(pid)}
    assert arts == {T.CONFIG_YAML, T.SPLITS_JSON}
    local = M.client(uri).download_artifacts(pid, T.SPLITS_JSON, str(tmp_path / "dl"))
    assert json.loads(Path(local).read_text()) == {"eval": [0, 1, 2]}


def test_find_or_create_returns_one_run_per_trial_and_reopens_it(store):
    uri, exp, tmp_path = store
    cfg = _cfg(tmp_path)
    pid = _parent(uri, exp, cfg, tmp_path)
    t20, t40 = cfg.trials()
    rid, created = M.find_or_create_trial_run(uri, exp, pid, trial_uid(t20), t20)
    assert created
    M.finish_run(uri, rid, "FAILED", error="RuntimeError: boom\n  at line 3")
    rid2, created2 = M.find_or_create_trial_run(uri, exp, pid, trial_uid(t20), t20)
    assert (rid2, created2) == (rid, False)
    run = M.client(uri).get_run(rid)
    assert run.info.status == "RUNNING" and run.data.tags[M.ATTEMPT_TAG] == "2"
    assert run.data.tags[T.ERROR] == "RuntimeError: boom at line 3"  # one line
    M.finish_run(uri, rid, "FINISHED")
    run = M.client(uri).get_run(rid)
    assert run.info.status == "FINISHED" and T.ERROR not in run.data.tags  # the retry succeeded
    # grid coordinates as tags and params, the parent link
    assert run.data.tags[T.PARENT] == pid and run.data.tags[T.AXIS_TAGS["train_size"]] == "20"
    assert run.data.tags[T.CELL] == "simple_cnn|n=20|adam" and run.data.tags[T.TRIAL_ID] == trial_uid(t20)
    p = run.data.params
    assert (p["model"], p["train_size"], p["optimizer"], p["seed"]) == ("simple_cnn", "20", "adam", "0")
    assert p["optimizer.lr"] == "0.003" and p["schedule.batch_size_resolved"] == "16" and p["schedule.epochs_resolved"] == "3"
    # another trial, or the same trial under another sweep, is another run
    rid3, _ = M.find_or_create_trial_run(uri, exp, pid, trial_uid(t40), t40)
    pid2 = _parent(uri, exp, cfg, tmp_path)
    rid4, _ = M.find_or_create_trial_run(uri, exp, pid2, trial_uid(t20), t20)
    assert len({rid, rid3, rid4}) == 3
    assert M.run_counts(uri, exp, pid) == {"FINISHED": 1, "RUNNING": 1}


def test_epochs_are_logged_exactly_once_across_a_restart(store):
    uri, exp, tmp_path = store
    cfg = _cfg(tmp_path)
    pid = _parent(uri, exp, cfg, tmp_path)
    t = cfg.trials()[0]
    rid, _ = M.find_or_create_trial_run(uri, exp, pid, trial_uid(t), t)
    first = M.TrialLogger(uri, rid)
    assert first.log_epoch(1, {"epoch": 1, "train_loss": 0.9, "val_loss": 1.0})
    assert first.log_epoch(2, {"epoch": 2, "train_loss": 0.8, "val_loss": 0.7})
    assert not first.log_epoch(2, {"train_loss": 0.8})
    # a restarted worker resumed from epoch 1's checkpoint re-runs epoch 2 and goes on
    second = M.TrialLogger(uri, rid)
    assert second.logged == {1, 2}
    assert not second.log_epoch(2, {"epoch": 2, "train_loss": 0.85, "val_loss": 0.75})
    assert second.log_epoch(3, {"epoch": 3, "train_loss": 0.5, "val_loss": 0.6})
    hist = M.client(uri).get_metric_history(rid, "val_loss")
    assert sorted((m.step, m.value) for m in hist) == [(1, 1.0), (2, 0.7), (3, 0.6)]
    assert "epoch" not in M.client(uri).get_run(rid).data.metrics


def test_buffered_epochs_reach_mlflow_in_one_batch_and_before_every_checkpoint(store):
    uri, exp, tmp_path = store
    cfg = _cfg(tmp_path)
    pid = _parent(uri, exp, cfg, tmp_path)
    t = cfg.trials()[0]
    rid, _ = M.find_or_create_trial_run(uri, exp, pid, trial_uid(t), t)
    c = M.client(uri)
    logger = M.TrialLogger(uri, rid, flush_seconds=1e9)  # never by time: only explicit flushes
    rep = EpochReporter(0, lambda m, d: None, logger)
    rep({"epoch": 1, "val_loss": 0.9})
    rep({"epoch": 2, "val_loss": float("nan")})  # NaN stays absent
    assert c.get_metric_history(rid, "val_loss") == []  # queued, not written
    ck = tmp_path / "ck3"
    ck.mkdir()
    rep({"epoch": 3, "val_loss": 0.7}, str(ck))
    # the checkpoint's report flushed every earlier epoch; epoch 3 itself is in the checkpoint
    assert [(m.step, m.value) for m in c.get_metric_history(rid, "val_loss")] == [(1, 0.9)]
    assert json.loads((ck / EPOCH_FILE).read_text())["epoch"] == 3
    assert logger.flush() == 1 and logger.flush() == 0
    assert sorted((m.step, m.value) for m in c.get_metric_history(rid, "val_loss")) == [(1, 0.9), (3, 0.7)]
    # a restarted logger sees the flushed steps (epoch 2 logged nothing but NaN)
    assert M.TrialLogger(uri, rid).logged == {1, 3}


def test_tune_reports_are_throttled_except_checkpoints():
    from lungray.sweep.trainable import ReportThrottle

    t = [0.0]
    due = ReportThrottle(1.0, clock=lambda: t[0])
    got = []
    for now, ck in [(0.0, False), (0.3, False), (0.6, True), (0.9, False), (1.7, False), (1.8, False), (2.0, True)]:
        t[0] = now
        got.append(due(ck))
    assert got == [True, False, True, False, True, False, True]
    every = ReportThrottle(0.0, clock=lambda: 5.0)  # with a scheduler: every epoch
    assert [every(False) for _ in range(3)] == [True, True, True]


def test_reporter_writes_the_epoch_into_the_checkpoint_and_catch_up_logs_it(store):
    uri, exp, tmp_path = store
    cfg = _cfg(tmp_path)
    pid = _parent(uri, exp, cfg, tmp_path)
    t = cfg.trials()[0]
    rid, _ = M.find_or_create_trial_run(uri, exp, pid, trial_uid(t), t)
    reported = []
    ck = tmp_path / "ck"
    ck.mkdir()
    # rank 0 without a logger: the worker died after Ray persisted the checkpoint, before MLflow
    rep = EpochReporter(0, lambda m, d: reported.append((m, d)), logger=None)
    rep({"epoch": np.int64(4), "train_loss": np.float32(0.25)}, str(ck))
    assert reported == [({"epoch": 4, "train_loss": 0.25}, str(ck))]
    assert json.loads((ck / EPOCH_FILE).read_text())["epoch"] == 4
    # non-zero ranks report without a checkpoint
    rep1 = EpochReporter(1, lambda m, d: reported.append((m, d)))
    rep1({"epoch": 4, "train_loss": 0.3}, str(ck))
    assert reported[-1][1] is None
    logger = M.TrialLogger(uri, rid)
    _catch_up(logger, str(ck))
    _catch_up(logger, str(ck))  # idempotent
    assert [(m.step, m.value) for m in M.client(uri).get_metric_history(rid, "train_loss")] == [(4, 0.25)]


def _fake_sweep_dir(tmp_path: Path, n_trials_done: int = 2, experiment: str = "synced"):
    """An experiment directory as a sweep leaves it, written without Ray (for mlflow-sync)."""
    cfg = _cfg(tmp_path)
    data = make_prepared(tmp_path / "data", n=60)
    exp_dir = tmp_path / "exp"
    exp_dir.mkdir()
    (exp_dir / "config.yaml").write_text(dump_yaml(cfg))
    (exp_dir / "sweep.json").write_text(json.dumps({"fingerprint": cfg.fingerprint(), "experiment": experiment, "tracking_uri": "sqlite:///nowhere.db", "parent_run_id": "gone"}))
    ctx = SweepContext(study=cfg.name, experiment_dir=str(exp_dir), tracking_uri="", experiment_id="", parent_run_id="", data=data, trials=trial_lookup(cfg))
    body = FakeTrialBody(n_max=40, epochs=3)
    for t in cfg.trials()[:n_trials_done]:
        work = tmp_path / f"work-{t.train_size}"
        work.mkdir()
        result = body(t, data, workdir=str(work), report=None)
        uid = trial_uid(t)
        ctx.trial_dir(uid).mkdir(parents=True)
        (ctx.trial_dir(uid) / T.TRIAL_CONFIG).write_text(json.dumps({"trial_id": uid, "trial": t.to_dict()}))
        write_trial_outputs(ctx, t, uid, result, extra={"node_id": "node-a", "node_ip": "10.0.0.1"})
    return cfg, exp_dir


def test_trial_outputs_are_files_first(tmp_path):
    cfg, exp_dir = _fake_sweep_dir(tmp_path, 1)
    t = cfg.trials()[0]
    tdir = exp_dir / "trials" / trial_uid(t)
    r = read_result(tdir)
    assert r["complete"] and r["metrics"]["test_accuracy"] == 0.5 and r["best_epoch"] == 2
    assert [h["epoch"] for h in r["history"]] == [0, 1, 2] and r["node_id"] == "node-a"
    art = tdir / "artifacts"
    names = {p.name for p in art.iterdir()}
    assert {T.PREDICTIONS, T.PER_CLASS, T.CONFUSION_CSV, T.CONFUSION_PNG, T.HISTORY, T.TRIAL_CONFIG, "checkpoint"} <= names
    import pandas as pd
    import torch

    cm = pd.read_csv(art / T.CONFUSION_CSV, index_col=0)
    assert list(cm.columns) == ["Normal", "COVID"] and cm.to_numpy().trace() == 20
    ck = torch.load(art / T.BEST_CHECKPOINT, weights_only=True)
    assert ck["class_names"] == ["Normal", "COVID"] and ck["trial"]["train_size"] == 20


def test_mlflow_sync_rebuilds_runs_from_the_experiment_dir_idempotently(tmp_path, db):
    from lungray.sweep.sync import sync_mlflow

    cfg, exp_dir = _fake_sweep_dir(tmp_path, 2, experiment="synced")
    uri = db
    assert sync_mlflow(exp_dir, tracking_uri=uri) == 2
    assert sync_mlflow(exp_dir, tracking_uri=uri) == 2  # again: nothing duplicated
    c = M.client(uri)
    exp = c.get_experiment_by_name("synced").experiment_id
    runs = c.search_runs([exp])
    parents = [r for r in runs if r.data.tags.get(T.ROLE) == T.ROLE_SWEEP]
    children = [r for r in runs if r.data.tags.get(T.ROLE) == T.ROLE_TRIAL]
    assert len(parents) == 1 and len(children) == 2
    assert all(r.info.status == "FINISHED" for r in runs)
    by_size = {int(r.data.tags[T.AXIS_TAGS["train_size"]]): r for r in children}
    assert by_size[20].data.metrics["test_accuracy"] == 0.5 and by_size[40].data.metrics["test_accuracy"] == 1.0
    hist = c.get_metric_history(by_size[40].info.run_id, "val_accuracy")
    assert sorted(m.step for m in hist) == [0, 1, 2] and {m.value for m in hist} == {1.0}
    assert len(c.get_metric_history(by_size[40].info.run_id, "test_accuracy")) == 1
    arts = {a.path for a in c.list_artifacts(by_size[20].info.run_id)}
    assert {T.PREDICTIONS, T.CONFUSION_PNG, T.CHECKPOINT_DIR} <= arts
    assert by_size[20].data.tags[M.NODE_ID_TAG] == "node-a"


def test_sync_refuses_a_directory_that_is_not_a_sweep(tmp_path):
    from lungray.errors import ConfigError
    from lungray.sweep.sync import sync_mlflow

    with pytest.raises(ConfigError, match="not a lungray experiment directory"):
        sync_mlflow(tmp_path)


def test_lungray_cli_mlflow_sync(tmp_path, capsys, db):
    from lungray.cli import main

    _, exp_dir = _fake_sweep_dir(tmp_path, 1, experiment="synced-cli")
    assert main(["mlflow-sync", str(exp_dir), "--tracking-uri", db]) == 0
    assert "synced 1 trial(s) to MLflow" in capsys.readouterr().out


def test_flatten_and_param_limits():
    assert M.flatten({"a": {"b": 1, "c": [1, 2]}, "m": [{"name": "x"}, {"name": "y"}]}) == {"a.b": 1, "a.c": [1, 2], "m.0.name": "x", "m.1.name": "y"}
    assert len(M.param_value("x" * 10000)) == M.MAX_PARAM_VALUE
    assert M.param_value([1, 2]) == "[1, 2]"
