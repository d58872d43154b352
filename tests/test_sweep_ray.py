"""Ray Tune (+ Ray Train) + MLflow plumbing with a fake trial body (exact metrics, no training).

One Ray session and ONE sweep per trainer path serve most tests (Ray start-up and per-trial
Train start-up cost seconds each on 2 CPUs): ``ray_train`` (``resources.use_ray_train=true``:
every trial through a ``TorchTrainer``) and ``in_trial`` (the default for one-worker trials:
the loop runs in the re-used Tune trial process). The sweep has three trials of one model,
with ``val_accuracy = test_accuracy = n / 60``:

* n=20 and n=40 meet at a rendezvous at their first epoch: they can only both pass it if
  they train at the same time (two concurrent trials on 2 CPUs; nested Tune -> Train ones
  on the Ray Train path);
* n=40's training process (the Train worker, or the Tune trial) is killed (``os._exit``)
  after epoch 1 once; Ray Train (or Tune) restarts it from the epoch-1 checkpoint;
* n=60 raises on every attempt: the trial finally fails.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lungray import tracking as T
from lungray.study import load_study
from lungray.errors import DataError
from lungray.sweep import mlflow_run as M
from lungray.sweep.grid import trial_uid
from lungray.sweep.runner import run_study
from lungray.sweep.testing import FakeTrialBody, make_prepared

pytestmark = pytest.mark.slow

EPOCHS = 4
N_MAX = 60


@pytest.fixture(scope="module")
def ray_session():
    from conftest import local_ray

    with local_ray():  # conftest sets RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.2 for its workers
        yield


def _study(out: Path, *extra: str):
    return load_study(
        "smoke",
        overrides=[f"output_dir={out}", "models=[simple_cnn]", "sizes=[20,40,60]", "seeds=[0]", f"schedule.epochs={EPOCHS}",
                   "resources.max_failures=1", "report=false", *extra],
    )


@pytest.fixture(scope="module", params=["ray_train", "in_trial"])
def sweep(request, ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"sweep_{request.param}")
    data = make_prepared(out / "data", n=120, eval_n=20, val_n=10)
    body = FakeTrialBody(
        n_max=N_MAX,
        sleep_s=0.2,
        crash_at_epoch=1,
        crash_sizes=(40,),
        crash_marker=str(out / "crashed.marker"),
        fail_always=True,
        fail_sizes=(60,),
        attempts_file=str(out / "attempts.txt"),
        rendezvous_dir=str(out / "rendezvous"),
        rendezvous_sizes=(20, 40),
    )
    lines: list[str] = []
    mode = "true" if request.param == "ray_train" else "auto"
    result = run_study(_study(out, f"resources.use_ray_train={mode}"), data=data, trial_body=body, echo=lines.append)
    assert result.preflight.resources.ray_train == (request.param == "ray_train")
    return result, out, lines


def _runs(result):
    c = M.client(result.tracking_uri)
    runs = c.search_runs([result.experiment_id])
    children = {r.data.tags[T.TRIAL_ID]: r for r in runs if r.data.tags.get(T.ROLE) == T.ROLE_TRIAL}
    parents = [r for r in runs if r.data.tags.get(T.ROLE) == T.ROLE_SWEEP]
    return c, parents, children


def _uid(result, n):
    return trial_uid(next(t for t in result.config.trials() if t.train_size == n))


def test_two_nested_trials_train_concurrently_on_two_cpus(sweep):
    result, out, _ = sweep
    df = result.trials.set_index("train_size")
    assert df.loc[20, "status"] == "done" and df.loc[40, "status"] == "done"
    # both passed the rendezvous: each saw the other's file before its first epoch
    c, _, children = _runs(result)
    assert children[_uid(result, 20)].data.metrics["rendezvous_seen"] == 2
    assert children[_uid(result, 40)].data.metrics["rendezvous_seen"] == 2
    # and their training epochs interleave in time
    h20 = sorted(m.value for m in c.get_metric_history(children[_uid(result, 20)].info.run_id, "wall_time"))
    h40 = sorted(m.value for m in c.get_metric_history(children[_uid(result, 40)].info.run_id, "wall_time"))
    assert max(h20[0], h40[0]) < min(h20[-1], h40[-1]), (h20, h40)
    assert result.preflight.max_concurrent_trials == 2


def test_killed_worker_resumes_from_its_checkpoint_into_one_run(sweep):
    result, out, _ = sweep
    assert (out / "crashed.marker").exists()
    attempts = [ln for ln in (out / "attempts.txt").read_text().splitlines() if "n=40" in ln]
    # the worker died right after reporting epoch 1's checkpoint; the restarted worker resumes from
    # the latest checkpoint Ray Train had registered: epoch 1's, or epoch 0's if the report had not
    # reached the controller yet. Either way not from scratch, and MLflow gets each step once.
    assert attempts[0] == "simple_cnn|n=40|adam|seed=0 start_epoch=0"
    assert attempts[1] in ("simple_cnn|n=40|adam|seed=0 start_epoch=1", "simple_cnn|n=40|adam|seed=0 start_epoch=2")
    assert len(attempts) == 2
    c, _, children = _runs(result)
    run = children[_uid(result, 40)]
    assert run.info.status == "FINISHED"
    hist = c.get_metric_history(run.info.run_id, "val_loss")
    score = 40 / N_MAX
    assert sorted((m.step, round(m.value, 9)) for m in hist) == [(e, round(1 - score + 0.5 / (e + 1), 9)) for e in range(EPOCHS)]
    assert run.data.metrics["test_accuracy"] == pytest.approx(score, abs=1e-12)
    assert len(c.get_metric_history(run.info.run_id, "test_accuracy")) == 1
    assert result.trials.set_index("train_size").loc[40, "resumed"] == True  # noqa: E712 - numpy bool


def test_a_trial_that_finally_fails_is_failed_in_mlflow(sweep):
    result, out, lines = sweep
    assert result.n_errors == 1 and not result.ok
    row = result.trials.set_index("train_size").loc[60]
    assert row["status"] == "error" and "fake failure" in row["error"]
    _, _, children = _runs(result)
    run = children[_uid(result, 60)]
    assert run.info.status == "FAILED"
    assert "RuntimeError" in run.data.tags[T.ERROR] and "fake failure in simple_cnn|n=60|adam|seed=0" in run.data.tags[T.ERROR]
    # attempts: Ray Train (or Tune) retried the trial once (resources.max_failures=1), no more
    assert [ln for ln in (out / "attempts.txt").read_text().splitlines() if "n=60" in ln] == ["simple_cnn|n=60|adam|seed=0 start_epoch=0"] * 2
    assert any(ln.startswith("[") and "FAILED" in ln and "n=60" in ln for ln in lines)


def test_one_parent_and_one_child_per_trial_with_grid_params_and_exact_metrics(sweep):
    result, out, lines = sweep
    c, parents, children = _runs(result)
    assert len(parents) == 1 and parents[0].info.run_id == result.parent_run_id
    assert parents[0].info.status == "FINISHED" and parents[0].data.tags["lungray.failed_trials"] == "1"
    assert len(children) == 3 and {r.data.tags[T.PARENT] for r in children.values()} == {result.parent_run_id}
    for n in (20, 40):
        r = children[_uid(result, n)]
        assert (r.data.params["model"], r.data.params["train_size"], r.data.params["optimizer"], r.data.params["seed"]) == ("simple_cnn", str(n), "adam", "0")
        assert r.data.tags[T.AXIS_TAGS["train_size"]] == str(n) and r.data.tags[M.NODE_ID_TAG] != "unknown"
        assert r.data.metrics["test_accuracy"] == pytest.approx(n / N_MAX, abs=1e-12)
        assert r.data.metrics["epochs_run"] == EPOCHS and r.data.metrics["best_epoch"] == EPOCHS - 1
        assert r.data.metrics["trial_overhead_seconds"] >= 0
        steps = sorted(m.step for m in c.get_metric_history(r.info.run_id, "val_accuracy"))
        assert steps == list(range(EPOCHS))
        arts = {a.path for a in c.list_artifacts(r.info.run_id)}
        assert {T.PREDICTIONS, T.PER_CLASS, T.CONFUSION_PNG, T.CONFUSION_CSV, T.HISTORY, T.TRIAL_CONFIG, T.CHECKPOINT_DIR} <= arts
    parent_arts = {a.path for a in c.list_artifacts(result.parent_run_id)}
    assert {T.CONFIG_YAML, T.LEAKAGE_JSON, T.DATA_SUMMARY, T.SPLITS_JSON, "trials.csv", "summary.csv"} <= parent_arts
    # the driver's files and printed progress
    exp = result.experiment_dir
    assert (exp / "config.yaml").exists() and (exp / "sweep.json").exists() and (exp / "trials.csv").exists()
    assert pd.read_csv(exp / "trials.csv").shape[0] == 3
    # one number per cell (issue 20.3): the console's table is report section 2's, summary.csv its
    # rows, the parent's cell/* metrics the same numbers. They are computed from each trial's
    # predictions.csv, as the report's intervals are: the fake gets the first round(score * 20)
    # evaluation images right, so the cell reads 7/20 = 0.350, by hand (its logged test_accuracy,
    # n/N_MAX = 0.333, is a number 20 images cannot give)
    n_eval = len(result.data.eval_idx)
    acc = round(20 / N_MAX * n_eval) / n_eval
    cell = result.cells.set_index("train_size").loc[20]
    assert cell["mean"] == pytest.approx(acc, abs=1e-12) and cell["n_runs"] == 1 and cell["n_degenerate"] == 0
    assert result.summary.loc["simple_cnn", "n = 20"] == f"{acc:.3f} (n=1, no interval) ☆"
    assert pd.read_csv(exp / "summary.csv").set_index("train_size").loc[20, "mean"] == pytest.approx(acc, abs=1e-12)
    assert c.get_run(result.parent_run_id).data.metrics[cell["mlflow_key"]] == pytest.approx(acc, abs=1e-12)
    assert any(result.summary.loc["simple_cnn", "n = 20"] in ln for ln in lines)
    done_lines = [ln for ln in lines if ln.startswith("[") and " done " in ln]
    assert len(done_lines) == 2 and any("ETA" in ln for ln in done_lines[:1])
    assert any("test_accuracy: mean over the runs that count" in ln for ln in lines)
    assert result.headline and result.headline[0].startswith("What this study found") and lines[-len(result.headline):] == result.headline


def test_trials_can_run_inside_tune_without_ray_train(ray_session, tmp_path):
    """resources.use_ray_train=false: the loop runs in the Tune trial (debugging mode)."""
    data = make_prepared(tmp_path / "data", n=60)
    cfg = load_study("smoke", overrides=[f"output_dir={tmp_path}", "models=[logreg]", "sizes=[30]", "seeds=[0]", "schedule.epochs=2",
                                         "resources.use_ray_train=false", "report=false"])
    result = run_study(cfg, data=data, trial_body=FakeTrialBody(n_max=30), echo=lambda s: None)
    assert result.ok and result.trials.loc[0, "test_accuracy"] == 1.0
    _, _, children = _runs(result)
    (run,) = children.values()
    assert run.info.status == "FINISHED"
    # Tune's own result files, and no TensorBoard logger (it imported tensorboardX and torch into the driver)
    tune_dir = result.experiment_dir / "tune"
    assert list(tune_dir.glob("*/progress.csv")) and list(tune_dir.glob("*/result.json"))
    assert not list(tune_dir.rglob("events.out.tfevents*"))


def test_a_dataset_problem_stops_the_sweep_before_ray_or_mlflow(tmp_path):
    """A training size larger than the pool: refused before any trial, run or file exists."""
    data = make_prepared(tmp_path / "data", n=60, eval_n=20, val_n=10)
    cfg = load_study("smoke", overrides=[f"output_dir={tmp_path / 'out'}", "sizes=[20,500]", "report=false"])
    with pytest.raises(DataError, match=r"\[500\] exceed the training pool of 30"):
        run_study(cfg, data=data, trial_body=FakeTrialBody(n_max=500))
    assert not (tmp_path / "out").exists()  # no experiment dir, no mlflow.db
