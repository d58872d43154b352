"""Issue 14: the disk (or the quota) fills up while a sweep writes checkpoints.

Two ways, both measured the same: the failing trial ends with ONE line naming the folder and
what to do (free space, then ``--resume``), the trial finished before keeps its results
byte for byte (``result.json`` and artifacts) and its MLflow run, and the other statuses agree.

* ``simulated`` (any machine, CI): the failpoint ``checkpoint.write`` raises ``OSError(ENOSPC)``
  where trial n=40 commits a checkpoint in its work folder, on every attempt (the disk stays full).
* ``tmpfs`` (root only, skipped otherwise): the output folder is a real 4 MiB tmpfs; once n=20
  has finished, the test fills it while n=40 pauses after epoch 0, so n=40's next checkpoint
  fails with the kernel's own ENOSPC in the trial's work folder. Then the filler is deleted and
  ``--resume`` finishes n=40.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from lungray import tracking as T
from lungray.study import load_study
from lungray.sweep import mlflow_run as M
from lungray.sweep.faults import FAILPOINT_ENV, DiskFullError
from lungray.sweep.runner import run_study
from lungray.sweep.testing import FakeTrialBody, make_prepared
from lungray.sweep.trainable import WORK_DIR

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_session():
    from conftest import local_ray

    # inherited by Ray's workers; only the simulated test's trial (seed 1) matches it
    with local_ray({FAILPOINT_ENV: "checkpoint.write@n=40|adam|seed=1!enospc"}):
        yield


def _cfg(out: Path, uri: str, seed: int):
    return load_study("smoke", overrides=[
        f"output_dir={out}", f"tracking.tracking_uri={uri}", "models=[simple_cnn]", "sizes=[20,40]", f"seeds=[{seed}]",
        "schedule.epochs=3", "resources.max_concurrent_trials=1", "resources.max_failures=1", "report=false"])


def _digest(tdir: Path) -> dict[str, str]:
    """sha256 of a trial's results: result.json and every artifact file."""
    files = [tdir / "result.json", *sorted(p for p in (tdir / "artifacts").rglob("*") if p.is_file())]
    return {str(p.relative_to(tdir)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _trial_dir(exp: Path, size: int, has: str = "result.json") -> Path:
    (d,) = [p.parent for p in exp.glob(f"trials/*/{has}") if json.loads((p.parent / "trial_config.json").read_text())["trial"]["train_size"] == size]
    return d


def _check(result, lines, folder: Path, seed: int):
    exp = result.experiment_dir
    df = pd.read_csv(exp / "trials.csv").set_index("train_size")
    assert df.loc[20, "status"] == "done" and df.loc[40, "status"] == "error"
    want = (f"DiskFullError: no space left (ENOSPC) writing a checkpoint of simple_cnn|n=40|adam|seed={seed} to {folder}; "
            f"finished trials are kept: free space or raise the quota, then run with --resume {exp}")
    assert df.loc[40, "error"].startswith(f"lungray.sweep.faults.{want}"[:300])  # trials.csv: the line, cut at 300
    failure = json.loads((_trial_dir(exp, 40, "failure.json") / "failure.json").read_text())["error"]
    assert failure == want
    assert any(ln.startswith("[") and "FAILED" in ln and "n=40" in ln for ln in lines)
    c = M.client(result.tracking_uri)
    runs = {r.data.tags[T.AXIS_TAGS["train_size"]]: r for r in c.search_runs([result.experiment_id], f"tags.`{T.ROLE}` = 'trial'")}
    assert runs["20"].info.status == "FINISHED" and runs["20"].data.metrics["test_accuracy"] == 0.5
    assert runs["40"].info.status == "FAILED" and runs["40"].data.tags[T.ERROR] == want
    return df


def test_simulated_enospc_on_checkpoint_write_is_one_line_and_keeps_finished_results(ray_session, tmp_path):
    data = make_prepared(tmp_path / "data", n=120, eval_n=20, val_n=10)
    out = tmp_path / "runs"
    lines: list[str] = []
    result = run_study(_cfg(out, f"sqlite:///{tmp_path / 'mlflow.db'}", 1), data=data, trial_body=FakeTrialBody(n_max=40), echo=lines.append)
    assert result.n_errors == 1
    # checkpoints are written (and committed) in the trial's own work folder, never handed to Tune
    _check(result, lines, _trial_dir(result.experiment_dir, 40, "failure.json") / WORK_DIR, 1)
    t20 = _trial_dir(result.experiment_dir, 20)
    assert json.loads((t20 / "result.json").read_text())["complete"] and (t20 / "artifacts" / T.PREDICTIONS).is_file()


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True, capture_output=True, timeout=30)
        return True
    except (OSError, subprocess.SubprocessError):
        return False


def test_a_real_full_tmpfs_fails_the_checkpoint_in_one_line_and_resume_finishes(ray_session, tmp_path):
    if os.geteuid() != 0 or not _mount_tmpfs(tmp_path / "runs", "4m"):
        pytest.skip("needs root to mount a tmpfs (the simulated test covers the rest)")
    out, pause = tmp_path / "runs", tmp_path / "pause"
    try:
        data = make_prepared(tmp_path / "data", n=120, eval_n=20, val_n=10)
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        body = FakeTrialBody(n_max=40, ckpt_bytes=400_000, pause_at=((40, 0),), pause_dir=str(pause), rendezvous_timeout_s=300)
        kept: dict = {}

        def fill():  # once n=20 finished and n=40 has written epoch 0: leave ~100 KB on the volume
            deadline = time.time() + 600
            while not (pause / "at-n40-e0").exists() and time.time() < deadline:
                time.sleep(0.1)
            t20 = _trial_dir(next(out.glob("*/trials")).parent, 20)
            kept.update(dir=t20, digest=_digest(t20))
            st = os.statvfs(out)
            with open(out / "filler", "wb") as f:
                f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - 100_000))
            (pause / "go-n40-e0").write_text("")

        t = threading.Thread(target=fill, daemon=True)
        t.start()
        lines: list[str] = []
        # the trial's checkpoint fails, and so does Tune's own driver when it writes that trial's
        # error (Ray 2.60 then unpickles an empty error.pkl): the sweep stops with one line
        with pytest.raises(DiskFullError) as e:
            run_study(_cfg(out, uri, 0), data=data, trial_body=body, echo=lines.append)
        t.join(timeout=60)
        (exp,) = [p for p in out.iterdir() if (p / "sweep.json").exists()]
        assert str(e.value) == (f"the sweep stopped: no space left on the device of {exp} (Tune could not write its state: EOFError); "
                                f"finished trials are kept: free space or raise the quota, then run with --resume {exp}")
        assert _digest(kept["dir"]) == kept["digest"]  # the finished trial's files, byte for byte
        c = M.client(uri)
        runs = {r.data.tags[T.AXIS_TAGS["train_size"]]: r for r in c.search_runs([x.experiment_id for x in c.search_experiments()], f"tags.`{T.ROLE}` = 'trial'")}
        assert runs["20"].info.status == "FINISHED"
        assert runs["40"].info.status == "FAILED" and runs["40"].data.tags[T.ERROR].startswith(
            f"DiskFullError: no space left (ENOSPC) writing the working files of simple_cnn|n=40|adam|seed=0 to "
            f"{_trial_dir(exp, 40, 'trial_config.json') / WORK_DIR}")  # the body's checkpoint write in the trial's work folder

        (out / "filler").unlink()  # space freed: --resume finishes the failed trial
        again = run_study(_cfg(out, uri, 0), resume_dir=exp, data=data, trial_body=body, echo=lines.append)
        assert again.ok, pd.read_csv(exp / "trials.csv")[["train_size", "status", "error"]].to_dict("records")
        assert set(pd.read_csv(exp / "trials.csv")["status"]) == {"done"}
        assert _digest(kept["dir"]) == kept["digest"]
        c = M.client(uri)
        runs = c.search_runs([again.experiment_id], f"tags.`{T.ROLE}` = 'trial'")
        assert sorted((r.data.tags[T.AXIS_TAGS["train_size"]], r.info.status) for r in runs) == [("20", "FINISHED"), ("40", "FINISHED")]
    finally:
        subprocess.run(["umount", "-l", str(out)], capture_output=True, timeout=60)
