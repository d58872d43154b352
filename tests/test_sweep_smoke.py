"""The user's main job, for real: ``python sweeps/size_study.py --preset smoke`` on the phantom.

Real data preparation, the real training loop (``lungray.train.run_trial``) in Ray Train
workers under Ray Tune, MLflow tracking and the HTML report, on 2 CPUs. A dataset problem
is also shown to stop the same command before any trial starts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lungray import tracking as T
from lungray.config import load_study
from lungray.sweep import mlflow_run as M

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "sweeps" / "size_study.py")


def _env():
    import os

    env = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
    for k in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(k, None)
    return env


def test_smoke_preset_end_to_end_with_the_real_training_loop(tmp_path):
    # the smoke preset with one seed instead of two (4 trials, not 8) to fit the CI budget;
    # the full `python sweeps/size_study.py --preset smoke` runs the same code path
    # a RELATIVE --output, as in the README's main job: Ray workers run in another directory
    out = tmp_path / "runs"
    p = subprocess.run([sys.executable, SCRIPT, "--preset", "smoke", "--set", "seeds=[0]", "--output", "runs", "--address", "local"],
                       capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=1500)
    assert p.returncode == 0, (p.stdout[-4000:], p.stderr[-4000:])
    cfg = load_study("smoke", overrides=["seeds=[0]"])
    n = len(cfg.trials())
    # printed: the resolved config, one line per finished trial, the summary table
    assert "# resolved config (smoke)" in p.stdout and "name: smoke" in p.stdout
    assert sum(1 for ln in p.stdout.splitlines() if ln.startswith("[") and " done " in ln) == n
    assert "test_accuracy, mean ± sd over seeds:" in p.stdout and "simple_cnn" in p.stdout and "n=120" in p.stdout
    (exp_dir,) = [d for d in out.iterdir() if (d / "sweep.json").exists()]
    assert cfg.fingerprint() == json.loads((exp_dir / "sweep.json").read_text())["fingerprint"]
    assert (exp_dir / "config.yaml").read_text().startswith("name: smoke")

    state = json.loads((exp_dir / "sweep.json").read_text())
    assert state["tracking_uri"] == f"sqlite:///{out.resolve() / 'mlflow.db'}"
    c = M.client(state["tracking_uri"])
    runs = c.search_runs([state["experiment_id"]])
    parents = [r for r in runs if r.data.tags.get(T.ROLE) == T.ROLE_SWEEP]
    children = [r for r in runs if r.data.tags.get(T.ROLE) == T.ROLE_TRIAL]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == n and all(r.info.status == "FINISHED" for r in children)
    coords = {(r.data.params["model"], int(r.data.params["train_size"]), r.data.params["optimizer"], int(r.data.params["seed"])) for r in children}
    assert coords == {(t.model.key, t.train_size, t.optimizer.key, t.seed) for t in cfg.trials()}
    for r in children:
        m = r.data.metrics
        assert r.data.params["optimizer.lr"] == "0.003" and r.data.params["schedule.epochs_resolved"] == "3"
        assert 0.0 <= m["test_accuracy"] <= 1.0
        # logreg is fitted in closed form: one "epoch"; the CNN trains its 3 epochs
        assert m["epochs_run"] == (1 if r.data.params["model"] == "logreg" else 3)
        for cls in ("Normal", "COVID"):
            assert T.per_class_key("recall", cls) in m and T.per_class_key("precision", cls) in m
        steps = sorted(x.step for x in c.get_metric_history(r.info.run_id, "train_loss"))
        assert steps == list(range(1, int(m["epochs_run"]) + 1))  # one value per epoch, step = epoch
        arts = {a.path for a in c.list_artifacts(r.info.run_id)}
        assert {T.PREDICTIONS, T.PER_CLASS, T.CONFUSION_PNG, T.HISTORY, T.TRIAL_CONFIG, T.CHECKPOINT_DIR} <= arts
    parent_arts = {a.path for a in c.list_artifacts(parents[0].info.run_id)}
    assert {T.CONFIG_YAML, T.LEAKAGE_JSON, T.DATA_SUMMARY, T.SPLITS_JSON} <= parent_arts
    # the report closes the sweep and is logged to the parent run
    assert (exp_dir / "report" / "report.html").exists(), p.stdout[-2000:]
    assert "report" in parent_arts


def test_a_dataset_problem_is_reported_before_any_trial(tmp_path):
    """A training size the pool cannot hold: refused by data preparation, with the pool per class."""
    out = tmp_path / "runs"
    p = subprocess.run([sys.executable, SCRIPT, "--preset", "smoke", "--set", "sizes=[40,5000]", "--output", str(out), "--address", "local"],
                       capture_output=True, text=True, cwd=REPO, env=_env(), timeout=600)
    assert p.returncode == 2, (p.stdout[-2000:], p.stderr[-2000:])
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("size_study.py: error:") and "5000" in err[0]
    assert not list(out.glob("*/sweep.json"))  # no experiment directory
    assert not (out / "mlflow.db").exists()  # no MLflow run, no trial
