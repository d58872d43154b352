"""Truncated and corrupt checkpoints (issue 15 item 2, issue 14): verified before use, never a crash loop.

Every checkpoint directory carries a manifest (size and sha256 of its files, computed while
writing). A resumed trial takes the newest checkpoint that verifies, falls back to the previous
good one, or restarts from scratch, and says so in one line. The trial-level tests run the real
training loop through the sweep's trial plumbing (:func:`lungray.sweep.trainable._run_body`, what
every Tune trial and Train worker runs) on the shared 32 px phantom, with MLflow in sqlite.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from lungray import tracking as T
from lungray.config import ModelConfig, OptimizerConfig, ScheduleConfig, TrainConfig, TrialConfig
from lungray.sweep import mlflow_run as M
from lungray.sweep.trainable import NOTE_KEY, WORK_DIR, SweepContext, _run_body, read_result, resume_point
from lungray.train import checkpoint as ckpt


def _truncate(path: Path, keep: int = 100) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def test_save_state_writes_a_manifest_that_catches_truncation_and_bit_flips(tmp_path):
    import hashlib

    import torch

    d = ckpt.save_state(tmp_path / "epoch_0002", {"epoch": 2, "w": torch.arange(1000.0)})
    state = d / ckpt.STATE_FILE
    man = json.loads((d / ckpt.MANIFEST).read_text())
    # the digest computed while writing is the file's
    assert man["epoch"] == 2
    assert man["files"][ckpt.STATE_FILE] == {"size": state.stat().st_size, "sha256": hashlib.sha256(state.read_bytes()).hexdigest()}
    assert ckpt.verify(d) is None and ckpt.load_state(d)["w"][999] == 999.0

    good = state.read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF  # same size, one byte changed
    state.write_bytes(bytes(flipped))
    assert ckpt.verify(d) == f"{ckpt.STATE_FILE} does not match its sha256 (corrupt)"
    _truncate(state)
    assert ckpt.verify(d) == f"{ckpt.STATE_FILE} has 100 bytes, {len(good)} were written"
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.load_state(d)
    msg = str(e.value)
    assert "\n" not in msg and "has 100 bytes" in msg and "PytorchStreamReader" not in msg
    # a file with no manifest beside it (written elsewhere) still gets a clear one-line error
    raw = tmp_path / "raw.pt"
    raw.write_bytes(good[:100])
    with pytest.raises(ckpt.CheckpointError, match="not a readable checkpoint"):
        ckpt.load_state(raw)


def test_find_resumable_falls_back_to_the_previous_good_checkpoint_then_to_none(tmp_path):
    root = tmp_path / "work"
    for e in (1, 2, 3):
        ckpt.save_state(root / "checkpoints" / f"epoch_{e:04d}", {"epoch": e})
    (root / "checkpoints" / ".epoch_0004.x1y2").mkdir()  # a crash mid-write left this
    (root / "checkpoints" / ".state.pt.a1b2.tmp").write_bytes(b"partial")
    assert ckpt.find_resumable(root) == (root / "checkpoints" / "epoch_0003", [])
    assert not (root / "checkpoints" / ".epoch_0004.x1y2").exists()  # unfinished writes are cleaned up
    assert not (root / "checkpoints" / ".state.pt.a1b2.tmp").exists()

    _truncate(root / "checkpoints" / "epoch_0003" / ckpt.STATE_FILE, 10)
    found, notes = ckpt.find_resumable(root)
    assert found == root / "checkpoints" / "epoch_0002"
    assert len(notes) == 1 and notes[0].startswith("checkpoint epoch_0003 (epoch 3) is unusable: state.pt has 10 bytes")
    assert not (root / "checkpoints" / "epoch_0003").exists()  # deleted: the next attempt will not trip over it

    sizes = {}
    for e in (1, 2):
        f = root / "checkpoints" / f"epoch_{e:04d}" / ckpt.STATE_FILE
        sizes[e] = f.stat().st_size
        f.write_bytes(b"")
    found, line = resume_point(root, "simple_cnn|n=64|adam|seed=0", clean=True)
    assert found is None
    assert line == ("simple_cnn|n=64|adam|seed=0: "
                    f"checkpoint epoch_0002 (epoch 2) is unusable: state.pt has 0 bytes, {sizes[2]} were written; "
                    f"checkpoint epoch_0001 (epoch 1) is unusable: state.pt has 0 bytes, {sizes[1]} were written; "
                    "restarting the trial from scratch")
    assert list((root / "checkpoints").iterdir()) == []
    # a directory without a manifest was never committed: not a candidate, and no note either
    (root / "checkpoints" / "epoch_0009").mkdir()
    (root / "checkpoints" / "epoch_0009" / ckpt.STATE_FILE).write_bytes(b"x")
    assert resume_point(root, "t", clean=True) == (None, None)


# ----------------------------------------------------------------------------------- a real trial


def _trial(epochs: int = 3) -> TrialConfig:
    return TrialConfig(
        study="ckpt",
        model=ModelConfig(name="simple_cnn", width=8),
        train_size=64,
        optimizer=OptimizerConfig(name="adam", lr=3e-3),
        seed=0,
        schedule=ScheduleConfig(rule="fixed", batch_size=16, epochs=epochs, checkpoint_every=1, checkpoint_min_seconds=0.0),
        train=TrainConfig(augmentation="none", normalization="pool", device="cpu", eval_batch_size=64),
    )


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """One sqlite store for the module (creating its schema takes seconds); one experiment per test."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture()
def sweep_ctx(db, tmp_path, prepared_phantom, request):
    uri = db
    exp = M.ensure_experiment(uri, request.node.name, artifact_root=str(tmp_path / "mlartifacts"))
    parent = M.create_parent_run(uri, exp, study_name="ckpt", config_dict={}, config_fingerprint="fp", dataset_fingerprint="fp",
                                 storage_path=str(tmp_path / "exp"), data_root=str(prepared_phantom.root), artifacts={})
    trial = _trial()
    ctx = SweepContext(study="ckpt", experiment_dir=str(tmp_path / "exp"), tracking_uri=uri, experiment_id=exp, parent_run_id=parent,
                       data=prepared_phantom, trials={}, tune_report_seconds=0.0)
    run_id, _ = M.find_or_create_trial_run(uri, exp, parent, "t0", trial)
    return ctx, trial, run_id


def _interrupted(ctx, trial, stop_after: int) -> Path:
    """The trial's work folder as a killed attempt leaves it: checkpoints up to ``stop_after``."""
    from lungray.train import run_trial

    work = ctx.trial_dir("t0") / WORK_DIR
    part = run_trial(trial, ctx.data, workdir=work, stop_after_epoch=stop_after)
    assert Path(part.checkpoint_dir).name == f"epoch_{stop_after:04d}"
    return work


def _attempt(ctx, trial, run_id) -> list[dict]:
    """One attempt as ``tune_trial`` makes it: the body writes the trial's files, then they are
    synced into its MLflow run (:func:`lungray.sweep.sync.sync_trial`)."""
    from lungray.sweep.sync import sync_trial

    tdir = ctx.trial_dir("t0")
    tdir.mkdir(parents=True, exist_ok=True)
    (tdir / T.TRIAL_CONFIG).write_text(json.dumps({"trial_id": "t0", "trial": trial.to_dict()}))
    reports: list[dict] = []
    _run_body(ctx, trial, "t0", run_id, rank=0, report_fn=lambda m, d: reports.append(m))
    sync_trial(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id, ctx.trial_dir("t0"), run_id=run_id)
    return reports


def test_an_unbroken_run_keeps_nothing_but_the_best_weights_once(sweep_ctx):
    ctx, trial, run_id = sweep_ctx
    reports = _attempt(ctx, trial, run_id)
    tdir = ctx.trial_dir("t0")
    assert not (tdir / WORK_DIR).exists()  # the resumable checkpoint is gone with the trial
    best = tdir / "artifacts" / T.BEST_CHECKPOINT
    (logged,) = list(Path(ctx.experiment_dir).parent.glob(f"mlartifacts/*/artifacts/{T.BEST_CHECKPOINT}"))
    assert best.stat().st_ino == logged.stat().st_ino and best.stat().st_nlink == 2  # one file, two names
    assert [r["epoch"] for r in reports] == [1, 2, 3] and not any(NOTE_KEY in r for r in reports)
    r = read_result(tdir)
    assert r["complete"] and r["resumed"] is False and "checkpoint_note" not in r


def test_a_truncated_newest_checkpoint_resumes_from_the_previous_one_with_the_same_result(sweep_ctx, tmp_path):
    ctx, trial, run_id = sweep_ctx
    from lungray.train import run_trial

    straight = run_trial(trial, ctx.data, workdir=tmp_path / "straight")
    work = _interrupted(ctx, trial, 1)
    keep = tmp_path / "epoch_0001"
    shutil.copytree(work / "checkpoints" / "epoch_0001", keep)
    run_trial(trial, ctx.data, workdir=work, resume_from=str(keep), stop_after_epoch=2)  # epoch 2 replaces epoch 1
    shutil.copytree(keep, work / "checkpoints" / "epoch_0001")  # as if the kill came before epoch 1 was deleted
    _truncate(work / "checkpoints" / "epoch_0002" / ckpt.STATE_FILE)

    reports = _attempt(ctx, trial, run_id)
    note = reports[0][NOTE_KEY]
    assert note.startswith(f"{trial.name}: checkpoint epoch_0002 (epoch 2) is unusable: state.pt has 100 bytes")
    assert note.endswith("; resuming from epoch_0001 instead")
    assert [r["epoch"] for r in reports] == [2, 3]  # from epoch 1's checkpoint, not from scratch
    r = read_result(ctx.trial_dir("t0"))
    assert r["resumed"] is True and r["checkpoint_note"] == note
    # an exact resume: the same held-out metrics as the uninterrupted run
    for k, v in straight.metrics.items():
        assert (math.isnan(v) and math.isnan(r["metrics"][k])) or r["metrics"][k] == v, k
    # MLflow has each epoch once (epoch 1 from the killed attempt's checkpoint history)
    steps = sorted(m.step for m in M.client(ctx.tracking_uri).get_metric_history(run_id, "train_loss"))
    assert steps == [1, 2, 3]


def test_every_checkpoint_truncated_restarts_the_trial_from_scratch_once(sweep_ctx):
    ctx, trial, run_id = sweep_ctx
    work = _interrupted(ctx, trial, 2)
    for f in work.rglob(ckpt.STATE_FILE):
        _truncate(f)
    reports = _attempt(ctx, trial, run_id)
    note = reports[0][NOTE_KEY]
    assert note == (f"{trial.name}: checkpoint epoch_0002 (epoch 2) is unusable: state.pt has 100 bytes, "
                    f"{note.split(', ')[1].split(' were')[0]} were written; restarting the trial from scratch")
    assert [r["epoch"] for r in reports] == [1, 2, 3] and sum(NOTE_KEY in r for r in reports) == 1
    r = read_result(ctx.trial_dir("t0"))
    assert r["complete"] and r["resumed"] is False and r["checkpoint_note"] == note
    assert not (ctx.trial_dir("t0") / WORK_DIR).exists()


def test_a_verified_but_unloadable_checkpoint_is_dropped_not_retried(sweep_ctx):
    """A checkpoint whose bytes are intact but which this lungray cannot load (another format):
    the attempt restarts from scratch in the same process instead of failing on every retry."""
    ctx, trial, run_id = sweep_ctx
    work = _interrupted(ctx, trial, 1)
    d = work / "checkpoints" / "epoch_0001"
    state = ckpt.load_state(d)
    shutil.rmtree(d)
    ckpt.save_state(d, {**state, "format": 0})  # intact bytes, a format this lungray does not read
    assert ckpt.verify(d) is None
    reports = _attempt(ctx, trial, run_id)
    note = reports[0][NOTE_KEY]
    assert note.startswith(f"{trial.name}: checkpoint epoch_0001 could not be loaded (") and "format 0 is not 1" in note
    assert note.endswith("; restarting the trial from scratch")
    assert [r["epoch"] for r in reports] == [1, 2, 3]
    assert read_result(ctx.trial_dir("t0"))["complete"]


def test_reporter_commits_a_foreign_checkpoint_and_keeps_only_the_newest(tmp_path):
    """A trial body with its own checkpoint files (the fake body's JSON) gets a manifest at report time."""
    from lungray.sweep.trainable import EpochReporter

    rep = EpochReporter(0, lambda m, d: None)
    for e in (1, 2):
        d = tmp_path / f"ckpt-{e}"
        d.mkdir()
        (d / "fake_state.json").write_text(json.dumps({"epoch": e}))
        rep({"epoch": e}, str(d))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-2"]
    assert ckpt.verify(tmp_path / "ckpt-2") is None and ckpt.find_resumable(tmp_path) == (tmp_path / "ckpt-2", [])
    (tmp_path / "ckpt-2" / "fake_state.json").write_text("{}")
    assert ckpt.find_resumable(tmp_path)[0] is None


def test_a_full_disk_names_the_folder(tmp_path, monkeypatch):
    import errno
    import os

    real = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.save_state(tmp_path / "ck" / "epoch_0001", {"epoch": 1})
    monkeypatch.setattr(os, "fsync", real)
    assert str(e.value) == (f"writing checkpoint {tmp_path / 'ck' / 'epoch_0001'} failed: No space left on device; "
                            "free space there or point --output elsewhere")
    assert list((tmp_path / "ck").iterdir()) == []  # nothing half-written left behind
