"""Test doubles for the sweep plumbing: a fake trial body with exact, known metrics.

scikit-learn tests ``learning_curve`` with ``MockImprovingEstimator``, whose score is exactly
``n_train / n_max``; :class:`FakeTrialBody` does the same for a sweep: it has
:func:`lungray.train.run_trial`'s signature, reports ``val_accuracy = n_train / n_max`` every
epoch, writes a resumable checkpoint per epoch, and returns a result with the same fields as
``TrialResult``. So Tune/Train/MLflow/resume behaviour is tested with exact numbers and no real
training. It can also crash its worker once (``os._exit``) at a given epoch, guarded by a
marker file, to test recovery from a killed worker.

:func:`make_prepared` writes a tiny :class:`~lungray.data.prepared.PreparedData` directory
(random pixels) for tests that must not depend on the data layer.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np


@dataclass
class FakeTrialResult:
    """Same fields as ``lungray.train.TrialResult``."""

    metrics: dict
    per_class: Any
    confusion: np.ndarray
    predictions: Any
    history: list
    best_epoch: int
    best_checkpoint: Optional[str]
    timings: dict


@dataclass
class FakeTrialBody:
    """A trial body whose test accuracy is exactly ``train_size / n_max``.

    Args:
        n_max: the largest training size of the grid (the denominator).
        epochs: epochs to run (default: the trial's resolved schedule).
        sleep_s: seconds per epoch (to make concurrent trials overlap measurably).
        crash_at_epoch: kill the worker process (``os._exit(1)``) once, right after this
            epoch's checkpoint has been reported, if ``crash_marker`` does not exist yet
            (it is created just before dying, so the retry runs through).
        crash_marker: path of that marker file (on storage every node sees).
        fail_always: raise on every attempt (a trial that finally fails).
        attempts_file: append one line per attempt (``start_epoch``) to this file, so a test
            can see that a retry resumed from the checkpoint rather than from epoch 0.
        crash_sizes, fail_sizes: restrict the crash / the failure to trials of these training
            sizes (``None``: every trial), so one sweep can mix healthy, crashing and failing trials.
        rendezvous_dir, rendezvous_sizes, rendezvous_timeout_s: trials of these sizes drop a
            file in ``rendezvous_dir`` at their first epoch and wait (up to the timeout) until
            all of them have: they can only all pass at once if they run concurrently, whatever
            the machine's load. The count seen is reported as ``rendezvous_seen``.

        kill_epochs, kill_marker_dir: ``{train_size: epoch}`` (or ``{(train_size, seed): epoch}``): SIGKILL the training process right
            after that epoch's report (its checkpoint), once per trial (a marker file per trial in
            ``kill_marker_dir``): a kill -9 at a chosen point, for the fault tests.
        ckpt_bytes: pad every checkpoint to about this many bytes.
        pause_at, pause_dir: ``((train_size, epoch), ...)``: after that epoch's report, create
            ``pause_dir/at-n<size>-e<epoch>`` and wait (up to ``rendezvous_timeout_s``) for
            ``pause_dir/go-n<size>-e<epoch>``, so a test can act (stop the tracking server, say)
            while the trial is mid-training.

    Every epoch's metrics carry ``wall_time`` (seconds since the epoch, float) so tests can
    compare when trials trained.
    """

    n_max: int
    epochs: Optional[int] = None
    sleep_s: float = 0.0
    crash_at_epoch: Optional[int] = None
    crash_marker: Optional[str] = None
    fail_always: bool = False
    attempts_file: Optional[str] = None
    crash_sizes: Optional[tuple] = None
    fail_sizes: Optional[tuple] = None
    rendezvous_dir: Optional[str] = None
    rendezvous_sizes: tuple = ()
    rendezvous_timeout_s: float = 300.0
    extra_metrics: dict = field(default_factory=dict)
    kill_epochs: dict = field(default_factory=dict)
    ckpt_bytes: int = 0
    kill_marker_dir: Optional[str] = None
    pause_at: tuple = ()
    pause_dir: Optional[str] = None

    def __call__(self, trial, data, *, workdir, report: Optional[Callable] = None, resume_from=None, stop_after_epoch=None):
        import pandas as pd

        t0 = time.time()
        score = trial.train_size / self.n_max
        epochs = self.epochs or trial.schedule.resolve(trial.train_size)[1]
        rank = _rank()
        start, history = 0, []
        if resume_from is not None and (Path(resume_from) / "fake_state.json").exists():
            state = json.loads((Path(resume_from) / "fake_state.json").read_text())
            start, history = state["epoch"] + 1, state["history"]
        if self.attempts_file and rank == 0:
            with open(self.attempts_file, "a") as f:
                f.write(f"{trial.name} start_epoch={start}\n")
        if self.fail_always and (self.fail_sizes is None or trial.train_size in self.fail_sizes):
            raise RuntimeError(f"fake failure in {trial.name}")
        crash = self.crash_at_epoch is not None and (self.crash_sizes is None or trial.train_size in self.crash_sizes)
        seen = 0
        if self.rendezvous_dir and trial.train_size in self.rendezvous_sizes:
            seen = self._rendezvous(trial)
        for epoch in range(start, epochs):
            if self.sleep_s:
                time.sleep(self.sleep_s)
            m = {
                "epoch": epoch,
                "wall_time": time.time(),
                "train_loss": 1.0 - score + 1.0 / (epoch + 1),
                "train_accuracy": score,
                "val_loss": 1.0 - score + 0.5 / (epoch + 1),
                "val_accuracy": score,
                "val_auc": score,
                "lr": trial.optimizer.lr,
            }
            history.append(m)
            ck = Path(workdir) / f"ckpt-{epoch}"
            ck.mkdir(parents=True, exist_ok=True)
            (ck / "fake_state.json").write_text(json.dumps({"epoch": epoch, "history": history}))
            if self.ckpt_bytes:  # a checkpoint of a realistic size, for the disk-full tests
                (ck / "pad.bin").write_bytes(b"\0" * self.ckpt_bytes)
            if report is not None:
                report(dict(m), str(ck) if rank == 0 else None)
            if (
                crash
                and epoch == self.crash_at_epoch
                and self.crash_marker
                and not os.path.exists(self.crash_marker)
            ):
                Path(self.crash_marker).write_text(f"{trial.name} crashed at epoch {epoch}\n")
                os._exit(1)
            if rank == 0:
                self._fault_points(trial, epoch)
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                break
        best = Path(workdir) / "best.pt"
        _save_fake_checkpoint(best, trial, data, epochs - 1)
        cls = list(data.class_names)
        y = np.asarray(data.labels)[np.asarray(data.eval_idx)]
        # predictions that score `score` and are not degenerate (issue 19's rule: a constant output
        # is left out of its cell): the first round(score * n) images right, the rest given the next class
        k = len(cls)
        right = np.arange(len(y)) < int(round(score * len(y)))
        guess = np.where(right, y, (y + 1) % k)
        probs = np.full((len(y), k), 0.4 / max(k - 1, 1))
        probs[np.arange(len(y)), guess] = 0.6
        preds = pd.DataFrame({"image_id": [f"img{i}" for i in np.asarray(data.eval_idx)], "y_true": y})
        for j, c in enumerate(cls):
            preds[f"prob_{c}"] = probs[:, j]
        per_class = pd.DataFrame({"class": cls, "precision": score, "recall": score, "f1": score, "support": np.bincount(y, minlength=len(cls))})
        cm = np.zeros((len(cls), len(cls)), dtype=np.int64)
        for t in y:
            cm[t, t] += 1
        metrics = {
            "test_accuracy": score,
            "test_balanced_accuracy": score,
            "test_macro_f1": score,
            "test_auc": score,
            "test_log_loss": 1.0 - score,
            **{f"test_recall__{c}": score for c in cls},
            **({"rendezvous_seen": seen} if seen else {}),
            **self.extra_metrics,
        }
        return FakeTrialResult(
            metrics=metrics,
            per_class=per_class,
            confusion=cm,
            predictions=preds,
            history=history,
            best_epoch=epochs - 1,
            best_checkpoint=str(best),
            timings={"train_seconds": time.time() - t0, "eval_seconds": 0.0, "setup_seconds": 0.0},
        )


    def _fault_points(self, trial, epoch: int) -> None:
        at = self.kill_epochs.get((trial.train_size, trial.seed), self.kill_epochs.get(trial.train_size))
        if at == epoch and self.kill_marker_dir:
            marker = Path(self.kill_marker_dir) / f"killed-n{trial.train_size}-s{trial.seed}"
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                fd = None
            if fd is not None:
                os.write(fd, f"{trial.name} epoch {epoch}\n".encode())
                os.close(fd)
                import signal

                os.kill(os.getpid(), signal.SIGKILL)
        if self.pause_dir and (trial.train_size, epoch) in {tuple(p) for p in self.pause_at}:
            d = Path(self.pause_dir)
            d.mkdir(parents=True, exist_ok=True)
            (d / f"at-n{trial.train_size}-e{epoch}").write_text(trial.name)
            deadline = time.time() + self.rendezvous_timeout_s
            while not (d / f"go-n{trial.train_size}-e{epoch}").exists() and time.time() < deadline:
                time.sleep(0.1)

    def _rendezvous(self, trial) -> int:
        d = Path(self.rendezvous_dir)
        d.mkdir(parents=True, exist_ok=True)
        (d / f"n{trial.train_size}-s{trial.seed}").write_text(str(time.time()))
        deadline = time.time() + self.rendezvous_timeout_s
        want = len(self.rendezvous_sizes)
        while True:
            seen = len(list(d.iterdir()))
            if seen >= want or time.time() > deadline:
                return seen
            time.sleep(0.2)


def _rank() -> int:
    try:
        import ray.train

        return int(ray.train.get_context().get_world_rank())
    except Exception:  # noqa: BLE001 - outside Ray Train (use_ray_train=false, unit tests)
        return 0


def _save_fake_checkpoint(path: Path, trial, data, epoch: int) -> None:
    """A ``best.pt`` in the tracking.py format (a one-tensor 'model')."""
    import torch

    torch.save(
        {"model": {"w": torch.zeros(1)}, "class_names": list(data.class_names), "trial": trial.to_dict(), "norm": [0.0, 1.0], "epoch": epoch},
        path,
    )


def make_prepared(root: str | os.PathLike, n: int = 60, resolution: int = 16, class_names=("Normal", "COVID"), eval_n: int = 20, val_n: int = 10, seed: int = 0):
    """A tiny PreparedData on disk (random pixels, balanced labels), for plumbing tests."""
    import pandas as pd

    from lungray.data.prepared import PreparedData

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    k = len(class_names)
    labels = np.arange(n, dtype=np.int64) % k
    np.save(root / "images.npy", rng.integers(0, 256, size=(n, resolution, resolution), dtype=np.uint8))
    np.save(root / "labels.npy", labels)
    pd.DataFrame({"image_id": [f"img{i}" for i in range(n)], "label": [class_names[v] for v in labels]}).to_parquet(root / "manifest.parquet")
    (root / "meta.json").write_text(json.dumps({"class_names": list(class_names), "fingerprint": "fake", "resolution": resolution}))
    order = rng.permutation(n)
    return PreparedData(
        root=str(root),
        class_names=tuple(class_names),
        eval_idx=np.sort(order[:eval_n]),
        val_idx=np.sort(order[eval_n : eval_n + val_n]),
        pool_idx=np.sort(order[eval_n + val_n :]),
        fingerprint="fake-" + str(n),
        info={"source": "fake"},
    )
