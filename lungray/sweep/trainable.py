"""What runs inside one Tune trial: one grid cell x seed, trained through Ray Train or in place.

A trial with several workers (DDP) always trains through Ray Train; a one-worker trial does so
only with ``resources.use_ray_train=true``, and by default runs the same trial body in the Tune
trial process (:func:`_fit_in_trial`), which Tune re-uses for the next trial: the per-trial
start-up of a ``TorchTrainer`` dominated short trials (``bench/RESULTS.md``, item 3). Both
paths write the same MLflow run, checkpoints and result files.

Layout of the Ray Train path (Ray's ``doc/source/train/doc_code/train_tune_interop.py``, the supported way in
Ray 2.60, where ``tune.Tuner(TorchTrainer(...))`` fails with "Improper 'run'"):

* :func:`tune_trial` is the Tune *function trainable*. It holds ~nothing (``{"cpu": 0.01}``),
  finds or creates the trial's MLflow run, builds a ``TorchTrainer`` named
  ``train-<trial_id>`` (stable: :func:`~lungray.sweep.grid.trial_uid` derives the id from the
  grid coordinates, so a retried or restored trial finds its own trial directory and MLflow
  run), waits for it, and ends the MLflow run FINISHED or FAILED.
* :func:`train_worker` runs on every Train worker. It calls the trial body (by default
  :func:`lungray.train.run_trial`) with a ``report`` callback that turns each epoch into
  ``ray.train.report(metrics)`` (forwarded to Tune by ``TuneReportCallback``) and, on rank 0,
  into MLflow metrics at ``step=epoch``. A restarted worker resumes from the trial's last
  committed checkpoint (below).
* The trial's results are also written to ``<experiment>/trials/<trial_id>/`` (the Ray
  experiment directory is the source of truth: ``lungray mlflow-sync`` rebuilds MLflow from it).

Checkpoints are lungray's own, not Ray's. Rank 0 trains in ``trials/<trial_id>/work/`` (on the
storage every node sees, like the rest of the experiment directory); the trial body writes its
resumable checkpoint there, a manifest with the checksums of its files commits it, and
:func:`_run_body` of the next attempt (a Tune or Train retry, ``--resume``) resumes from the newest
checkpoint that verifies (:func:`lungray.train.checkpoint.find_resumable`). Nothing is handed to
``tune.report``/``ray.train.report`` as a checkpoint: Ray copied each one into its own storage
(171 MB per resnet18 checkpoint, two kept per trial: 2.8 GB for the laptop demo), and Tune
restored whichever checkpoint its experiment state recorded last, which it saves at most every
10 s (``TUNE_GLOBAL_CHECKPOINT_S`` "auto"), so a driver killed within that window resumed from an
older checkpoint than the newest on disk. At most one committed checkpoint per running trial
is kept, and ``work/`` is deleted once the trial's results are written; the best weights
(``best.pt``) stay once, in ``trials/<trial_id>/artifacts/checkpoint/`` (hard-linked into a
local MLflow artifact store rather than copied).

Data reaches the workers as a :class:`~lungray.data.prepared.PreparedData` (index arrays and
the cache path; workers memory-map the decoded cache), never as pixels.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

from lungray import tracking as T
from lungray.config import TrialConfig
from lungray.sweep import sync as S
from lungray.sweep.expdir import ARTIFACTS_DIR, EPOCH_FILE, RESULT_FILE, WORK_DIR, read_result, remove_work, write_result
from lungray.sweep.progress import NOTE_KEY
from lungray.sweep.faults import DiskFullError, disk_full_error, failpoint, is_disk_full
from lungray.sweep.grid import trial_from_params, trial_uid

log = logging.getLogger(__name__)

DEFAULT_BODY = "lungray.train:run_trial"

#: Per-epoch MLflow metrics are written in batches at most this often (and before every
#: checkpoint and at the end): one sqlite write per epoch cost ~10 ms (bench/RESULTS.md).
EPOCH_FLUSH_SECONDS = 2.0

#: Ray Train knobs that cut the per-trial start-up/teardown cost (issue 6: a 1-worker
#: ``TorchTrainer.fit()`` costs ~16 s with the default 2 s health-check interval, ~8 s at 0.2 s).
TRAIN_ENV_DEFAULTS = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}


@dataclass
class SweepContext:
    """Everything a trial needs besides its Tune params; shipped once via ``tune.with_parameters``."""

    study: str
    experiment_dir: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    data: Any  # PreparedData
    trials: Mapping[str, TrialConfig]
    workers: int = 1
    cpus_per_worker: float = 0.99
    gpus_per_worker: float = 0.0
    max_failures: int = 2
    use_ray_train: bool = True
    log_checkpoints: bool = True
    body: Union[str, Callable[..., Any]] = DEFAULT_BODY
    train_env: Mapping[str, str] = field(default_factory=lambda: dict(TRAIN_ENV_DEFAULTS))
    #: in-trial path: epochs without a checkpoint reach Tune at most this often (0: every
    #: epoch, which an early-stopping scheduler such as ASHA needs)
    tune_report_seconds: float = 1.0
    #: the study's ``probes`` (issue 24: lung ablations and saliency after training,
    #: :mod:`lungray.sweep.probes`); None: none run
    probes: Any = None

    def trial_dir(self, trial_id: str) -> Path:
        return Path(self.experiment_dir) / "trials" / trial_id


def resolve_body(body: Union[str, Callable[..., Any]]) -> Callable[..., Any]:
    """The trial body: a callable, or ``"module:attr"`` imported in the worker process."""
    if callable(body):
        return body
    mod, _, attr = str(body).partition(":")
    return getattr(importlib.import_module(mod), attr or "run_trial")


def node_info() -> dict[str, str]:
    """Where this process runs (recorded per trial: the multi-node test checks it)."""
    import ray

    if not ray.is_initialized():  # a trial body called outside Ray (tests): never start Ray for this
        return {"node_id": "unknown", "node_ip": "unknown"}
    try:
        ctx = ray.get_runtime_context()
        return {"node_id": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address()}
    except Exception:  # noqa: BLE001 - informative only
        return {"node_id": "unknown", "node_ip": "unknown"}


# --------------------------------------------------------------------------------------------
# The Tune trial (the Train driver)
# --------------------------------------------------------------------------------------------


def tune_trial(config: dict, ctx: SweepContext) -> None:
    """Tune function trainable: train one trial (through Ray Train or in this process) and track it in MLflow."""
    from ray import tune

    from lungray.sweep import mlflow_run as M

    t0 = time.time()
    trial = trial_from_params(ctx.trials, config)
    preload_training_stack(ctx, trial)  # torch imports while MLflow finds the run (a slot's first trial)
    trial_id = trial_uid(trial, lr_sampled=config.get("lr") is not None)
    tdir = ctx.trial_dir(trial_id)
    tdir.mkdir(parents=True, exist_ok=True)
    (tdir / T.TRIAL_CONFIG).write_text(
        json.dumps({"trial_id": trial_id, "tune_trial_id": tune.get_context().get_trial_id(), "params": dict(config), "trial": trial.to_dict()}, indent=1)
    )

    (tdir / S.FAILURE_FILE).unlink(missing_ok=True)  # a new attempt supersedes the last failure
    M.OUTAGE.for_sweep(ctx.parent_run_id)
    # Files first, MLflow second: the trial trains even if the store is down (the run is then
    # created when its results are replayed), and what MLflow missed is queued in tdir.
    try:
        run_id: Optional[str] = M.find_or_create_trial_run(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id, trial_id, trial)[0]
        (tdir / "mlflow_run_id").write_text(run_id)
    except M.TrackingUnavailable as e:
        run_id = None
        M.mark_pending(tdir, "result", 1, e)
    failpoint("trial.after_run", trial.name)
    sync = functools.partial(S.sync_or_queue, ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id, tdir, log_checkpoints=ctx.log_checkpoints)
    previous = read_result(tdir)
    if previous is not None and previous.get("complete") and "trial_overhead_seconds" in previous:
        # Finished in an earlier driver's lifetime, before Tune recorded it: nothing to redo.
        remove_work(tdir)
        sync(run_id=run_id)
        tune.report(_final_report(previous, run_id, trial_id))
        return
    try:
        if previous is not None and previous.get("complete"):
            summary = previous  # trained; only the bookkeeping after it was cut off
        elif ctx.use_ray_train:
            summary = _fit_with_ray_train(ctx, trial, trial_id, run_id, tdir)
        else:
            summary = _fit_in_trial(ctx, trial, trial_id, run_id, tdir)
    except Exception as e:  # noqa: BLE001 - recorded (file, then MLflow), then re-raised for Tune
        error = f"{type(e).__name__}: {_root_cause(e)}"
        S.record_failure(tdir, error)
        sync(run_id=run_id, error=error)
        clean = _redacted(e)
        if clean is e:
            raise
        raise clean from None
    failpoint("trial.after_result", trial.name)
    wall = time.time() - t0
    timings = summary.get("timings", {})
    busy = float(timings.get("train_seconds", 0.0)) + float(timings.get("eval_seconds", 0.0))
    busy += float(summary.get("metrics", {}).get("probe_seconds", 0.0))  # the lung probes evaluate too (issue 24)
    overhead = max(0.0, wall - busy)
    metrics = {**summary.get("metrics", {}), "trial_overhead_seconds": overhead, "trial_wall_seconds": wall}
    summary = {**summary, "metrics": metrics, "trial_overhead_seconds": overhead, "trial_wall_seconds": wall, "trial_start": t0, "trial_end": time.time()}
    write_result(tdir, summary)
    sync(run_id=run_id)
    failpoint("trial.before_report", trial.name)
    tune.report(_final_report(summary, run_id, trial_id))


def preload_training_stack(ctx: SweepContext, trial: TrialConfig) -> Optional[threading.Thread]:
    """Import what the default trial body trains with, in a thread, while the trial process
    imports MLflow and finds its run (issue 22.3).

    A slot's first trial imported MLflow and opened its store (~2 s of a quiet CPU), then torch,
    the trial body and, at the optimizer's first call, ``torch._dynamo`` (``torch/_compile.py``
    imports it lazily; ~40 % of torch's import), and at its end matplotlib for the confusion
    matrix: one after the other, with the CPU idle while either read files or waited on the store. Both chains overlap now (measured in one process on
    the shared 2-CPU machine: 7.0 s instead of 9.6-12.7 s for the two). Only the one-worker
    path's default body, only while torch is not yet imported (a re-used trial process has it),
    and never an error: the trial's own imports meet any failure and report it.
    """
    if ctx.use_ray_train or ctx.body != DEFAULT_BODY or "torch" in sys.modules:
        return None

    def _run() -> None:
        try:
            import torch  # noqa: F401

            resolve_body(ctx.body)
            from lungray.models import model_spec

            spec = model_spec(trial.model.name)
            if spec is None or not spec.full_batch:  # trained by an optimizer (logreg is fitted in closed form)
                import torch._dynamo  # noqa: F401
            from lungray.train.tasks import TASKS

            if T.CONFUSION_PNG in TASKS.get(trial.train.task).report_spec.artifacts:  # drawn at the trial's end
                import matplotlib

                matplotlib.use("Agg", force=False)
                import matplotlib.pyplot  # noqa: F401

                import lungray.report.figures  # noqa: F401
        except Exception:  # noqa: BLE001 - the trial's own import reports it
            log.debug("preloading the training stack failed", exc_info=True)

    t = threading.Thread(target=_run, name="lungray-preload", daemon=True)
    t.start()
    return t


def _final_report(summary: Mapping[str, Any], run_id: str, trial_id: str) -> dict:
    """The trial function's last Tune result: test metrics, timings and where it ran."""
    final = {k: v for k, v in summary.get("metrics", {}).items() if _is_number(v)}
    final.update(
        {
            "done": True,
            "best_epoch": summary.get("best_epoch", -1),
            "mlflow_run_id": run_id,
            "lungray_trial_id": trial_id,
            "node_id": summary.get("node_id", "unknown"),
            "node_ip": summary.get("node_ip", "unknown"),
        }
    )
    for k in ("trial_wall_seconds", "trial_overhead_seconds", "trial_start", "trial_end", "worker_start", "worker_end"):
        final[k] = summary.get(k, float("nan"))
    return final


def _fit_with_ray_train(ctx: SweepContext, trial: TrialConfig, trial_id: str, run_id: str, tdir: Path) -> dict:
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    # Ray Train propagates these from the process that calls fit() to its controller and workers.
    for k, v in ctx.train_env.items():
        os.environ[k] = str(v)
    use_gpu = ctx.gpus_per_worker > 0
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"ctx": ctx, "trial": trial, "trial_id": trial_id, "run_id": run_id},
        scaling_config=ray.train.ScalingConfig(
            num_workers=ctx.workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": float(ctx.cpus_per_worker), "GPU": float(ctx.gpus_per_worker)},
        ),
        run_config=ray.train.RunConfig(
            name=f"train-{trial_id}",
            storage_path=str(Path(ctx.experiment_dir).resolve() / "train"),
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=ctx.max_failures),
            # every worker sees the sweep's tracking server (lungray passes the URI explicitly too)
            worker_runtime_env={"env_vars": {"MLFLOW_TRACKING_URI": ctx.tracking_uri}},
        ),
    )
    trainer.fit()  # raises TrainingFailedError once the worker retries are spent
    summary = read_result(tdir)
    if summary is None:
        raise RuntimeError(f"trial {trial_id}: training ended without writing {tdir / RESULT_FILE}")
    return summary


def _fit_in_trial(ctx: SweepContext, trial: TrialConfig, trial_id: str, run_id: str, tdir: Path) -> dict:
    """A one-worker trial without Ray Train (``resources.use_ray_train`` auto or false).

    The loop runs in the Tune trial process. After a crash Tune restarts the trial
    (``FailureConfig``), which resumes from its last committed checkpoint in the trial
    directory: what Ray Train's worker retries would do for one worker, minus a controller and
    a worker process per trial. The process is re-used for the next trial (``reuse_actors``),
    so what this trial allocated is released before it returns.
    """
    from ray import tune

    due = ReportThrottle(ctx.tune_report_seconds)

    def _report(metrics: dict, checkpoint_dir: Optional[str]) -> None:
        if due(checkpoint_dir is not None or NOTE_KEY in metrics):
            tune.report(metrics)

    _freeze_heap()
    try:
        _run_body(ctx, trial, trial_id, run_id, rank=0, report_fn=_report)
    finally:
        _release_memory()
    summary = read_result(tdir)
    if summary is None:
        raise RuntimeError(f"trial {trial_id}: training ended without writing {tdir / RESULT_FILE}")
    return summary


class ReportThrottle:
    """Whether an epoch's result goes to Tune: always on a checkpoint epoch or with a console
    note, else at most every ``seconds`` (0: every epoch).

    Each ``tune.report`` is a round trip through the Tune driver (~6 ms per epoch with two
    trials on 2 CPUs, ``bench/RESULTS.md``). Without a scheduler nothing reads per-epoch Tune
    results: MLflow and ``result.json`` carry every epoch. An early-stopping scheduler (ASHA)
    does, so the sweep sets ``seconds=0`` with one.
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.seconds = float(seconds)
        self.clock = clock
        self.last = -math.inf

    def __call__(self, has_checkpoint: bool) -> bool:
        now = self.clock()
        if not has_checkpoint and now - self.last < self.seconds:
            return False
        self.last = now
        return True


def _freeze_heap() -> None:
    """Move what the process holds before the trial (imported modules: torch, timm, Ray, MLflow)
    out of the garbage collector's view, so :func:`_release_memory` scans only the trial's own
    objects: a full ``gc.collect()`` over those imports took 0.35 s per trial, more than the
    rest of a short trial's overhead."""
    import gc

    gc.freeze()


def _release_memory() -> None:
    """Free the finished trial's tensors in a re-used trial process (host and CUDA caches)."""
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort
        pass


# --------------------------------------------------------------------------------------------
# The Train worker
# --------------------------------------------------------------------------------------------


def train_worker(loop_config: dict) -> None:
    """Ray Train worker loop: run the trial body, report every epoch, rank 0 tracks."""
    import ray.train

    ctx: SweepContext = loop_config["ctx"]
    rank = ray.train.get_context().get_world_rank()

    def _report(metrics: dict, checkpoint_dir: Optional[str]) -> None:
        ray.train.report(metrics)  # the checkpoint stays in the trial directory (module docstring)

    _run_body(ctx, loop_config["trial"], loop_config["trial_id"], loop_config["run_id"], rank=rank, report_fn=_report)


class EpochReporter:
    """The ``report(metrics, checkpoint_dir)`` callback handed to the trial body.

    Every rank must call it once per epoch (Ray Train's ``report`` is collective); only rank
    0 hands over checkpoint directories. Rank 0 commits the checkpoint (its epoch file, and a
    manifest of checksums unless the body's writer made one: :func:`lungray.train.checkpoint.save_state`
    does), deletes the trial's older committed checkpoints, flushes the queued MLflow epochs,
    reports to Tune, and only then logs this epoch to MLflow. A crash after the commit leaves
    an epoch that :func:`_catch_up` logs from the checkpoint on restart; a crash before it
    re-runs the epoch, whose step was never logged. (Whatever a crash cut off is also logged
    from the trial's history when it finishes: :func:`lungray.sweep.sync.sync_trial`.) ``note`` (one line for
    the driver's console) rides along with the first report.
    """

    def __init__(self, rank: int, report_fn: Callable[[dict, Optional[str]], None], logger=None, note: Optional[str] = None):
        self.rank = rank
        self.report_fn = report_fn
        self.logger = logger
        self.note = note
        self.calls = 0

    def __call__(self, metrics: Mapping[str, Any], checkpoint_dir: Optional[str] = None) -> None:
        from lungray.train import checkpoint as ckpt

        epoch = int(metrics.get("epoch", self.calls))
        clean = {k: _plain(v) for k, v in metrics.items()}
        clean["epoch"] = epoch
        if checkpoint_dir is not None and self.rank == 0:
            d = Path(checkpoint_dir)
            (d / EPOCH_FILE).write_text(json.dumps({"epoch": epoch, "metrics": clean}))
            if ckpt.read_manifest(d) is None:
                ckpt.write_manifest(d, epoch)
            ckpt.remove_committed_except(d.parent, d)
            if self.logger is not None:
                self.logger.flush()  # every earlier epoch is in MLflow or in this checkpoint's history
        out = dict(clean)
        if self.note and self.calls == 0 and self.rank == 0:
            out[NOTE_KEY] = self.note
        self.report_fn(out, checkpoint_dir if self.rank == 0 else None)
        if self.logger is not None:
            self.logger.log_epoch(epoch, clean)
        self.calls += 1


def _catch_up(logger, checkpoint_dir: Optional[str]) -> None:
    """Log the checkpoint's epoch if the crash came between persisting it and logging it."""
    if logger is None or checkpoint_dir is None:
        return
    p = Path(checkpoint_dir) / EPOCH_FILE
    try:
        d = json.loads(p.read_text())
        epoch, metrics = int(d["epoch"]), dict(d.get("metrics", {}))
    except (OSError, ValueError, KeyError, TypeError):
        return  # no epoch file (the crash came first) or an unreadable one: logged at the end
    logger.log_epoch(epoch, metrics)


def resume_point(work: Path, trial_name: str, *, clean: bool) -> tuple[Optional[Path], Optional[str]]:
    """The checkpoint a trial attempt resumes from, and one line for the console if any was skipped.

    ``None`` means from scratch. The line says what was wrong with each skipped checkpoint and
    what the trial does instead, e.g. ``simple_cnn|n=40|adam|seed=0: checkpoint epoch_0003
    (epoch 3) is unusable: state.pt has 812 bytes, 17045 were written; restarting the trial
    from scratch``.
    """
    from lungray.train import checkpoint as ckpt

    found, problems = ckpt.find_resumable(work, clean=clean)
    if not problems:
        return found, None
    then = f"resuming from {found.name} instead" if found is not None else "restarting the trial from scratch"
    return found, f"{trial_name}: {'; '.join(problems)}; {then}"


def _run_body(ctx: SweepContext, trial: TrialConfig, trial_id: str, run_id: str, *, rank: int, report_fn) -> None:
    from lungray.sweep import mlflow_run as M
    from lungray.train.checkpoint import CheckpointError

    worker_start = time.time()
    body = resolve_body(ctx.body)
    tdir = ctx.trial_dir(trial_id)
    logger = M.TrialLogger(ctx.tracking_uri, run_id, flush_seconds=EPOCH_FLUSH_SECONDS, trial_dir=tdir) if rank == 0 else None
    # Only rank 0 writes checkpoints; every rank resumes from the same files (shared storage).
    workdir = tdir / WORK_DIR if rank == 0 else Path(tempfile.mkdtemp(prefix=f"lungray-{trial_id}-r{rank}-"))
    resume_dir, note = resume_point(tdir / WORK_DIR, trial.name, clean=rank == 0)

    def attempt(resume: Optional[Path], note: Optional[str]) -> Any:
        reporter = EpochReporter(rank, report_fn, logger, note)

        def report(metrics: dict, checkpoint_dir: Optional[str]) -> None:
            # a checkpoint is committed in the reporter: a full disk there names the trial's folder
            with disk_full_names(ctx, workdir, f"a checkpoint of {trial.name}", checkpoint_dir is not None and rank == 0):
                reporter(metrics, checkpoint_dir)

        with disk_full_names(ctx, workdir, f"the working files of {trial.name}"):
            return body(trial, ctx.data, workdir=str(workdir), report=report, resume_from=str(resume) if resume else None)

    try:
        try:
            _catch_up(logger, str(resume_dir) if resume_dir else None)
            result = attempt(resume_dir, note)
        except CheckpointError as e:
            if resume_dir is None:
                raise
            # verified but unloadable (another format, a torch that cannot read it): never retry it
            note = f"{trial.name}: checkpoint {resume_dir.name} could not be loaded ({e}); restarting the trial from scratch"
            log.warning("%s", note)
            if rank == 0:
                shutil.rmtree(resume_dir, ignore_errors=True)
            resume_dir = None
            result = attempt(None, note)
        finally:
            if logger is not None:
                logger.flush()  # epochs trained before a failure stay visible (or queued)
        if rank == 0:
            extra = {"worker_start": worker_start, "worker_end": time.time(), **node_info(), "resumed": resume_dir is not None}
            if note:
                extra["checkpoint_note"] = note
            with disk_full_names(ctx, tdir, f"the results of {trial.name}"):
                write_trial_outputs(ctx, trial, trial_id, result, extra=extra)
            remove_work(tdir)  # results are complete: the resumable checkpoint has served
    finally:
        if rank != 0:
            shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def disk_full_names(ctx: SweepContext, folder: Union[str, Path], what: str, checkpoint: bool = False):
    """Turn a full disk or quota (``ENOSPC``/``EDQUOT``, however Ray or pyarrow wrap it) into one
    :class:`~lungray.sweep.faults.DiskFullError` line naming ``folder`` (issue 14)."""
    try:
        if checkpoint:
            failpoint("checkpoint.write", what)
        yield
    except Exception as e:  # noqa: BLE001 - re-raised, renamed only when the disk is full
        if is_disk_full(e) and not isinstance(e, DiskFullError):  # an inner one already named its folder
            raise disk_full_error(e, folder, what, ctx.experiment_dir) from e
        raise


# --------------------------------------------------------------------------------------------
# Trial outputs (files first, then MLflow)
# --------------------------------------------------------------------------------------------


def final_metrics(result: Any) -> dict[str, float]:
    """The trial's final MLflow metrics: test_* (incl. per class), best epoch, epochs, timings."""
    out = {k: v for k, v in dict(result.metrics).items() if _is_number(v)}
    if hasattr(result, "mlflow_metrics"):  # lungray.train.TrialResult knows its own MLflow view
        out.update({k: v for k, v in result.mlflow_metrics().items() if _is_number(v)})
    out["best_epoch"] = int(result.best_epoch) if result.best_epoch is not None else -1
    out["epochs_run"] = int(getattr(result, "epochs_run", 0) or len(result.history or []))
    for k in ("train_seconds", "eval_seconds", "setup_seconds"):
        v = (result.timings or {}).get(k)
        if _is_number(v):
            out[k] = float(v)
    return out


def write_trial_outputs(ctx: SweepContext, trial: TrialConfig, trial_id: str, result: Any, extra: Mapping[str, Any]) -> dict:
    """Write the trial's artifacts and ``result.json`` (``complete``) to its trial dir.

    No MLflow call here: the files are the record written first; :func:`tune_trial` then
    uploads them (:func:`lungray.sweep.sync.sync_trial`, the same code ``mlflow-sync`` runs).
    """
    tdir = ctx.trial_dir(trial_id)
    art = tdir / ARTIFACTS_DIR
    if art.exists():
        shutil.rmtree(art)
    art.mkdir(parents=True)
    class_names = list(ctx.data.class_names)
    if result.predictions is not None:
        result.predictions.to_csv(art / T.PREDICTIONS, index=False)
    for name, ext in (getattr(result, "external", None) or {}).items():  # issue 24: one file per external set
        if ext.get("predictions") is not None:
            ext["predictions"].to_csv(art / T.ext_predictions(name), index=False)
    if result.per_class is not None:
        result.per_class.to_csv(art / T.PER_CLASS, index=("class" not in getattr(result.per_class, "columns", [])))
    if result.confusion is not None:
        write_confusion(art, result.confusion, class_names, title=trial.name)
    if result.history:
        import pandas as pd

        pd.DataFrame(result.history).to_csv(art / T.HISTORY, index=False)
    (art / T.TRIAL_CONFIG).write_text(json.dumps({"trial_id": trial_id, **trial.to_dict()}, indent=1))
    if result.best_checkpoint and Path(result.best_checkpoint).exists():
        (art / T.CHECKPOINT_DIR).mkdir(exist_ok=True)
        # moved, not copied: within the trial directory a rename, so the weights exist once
        shutil.move(str(result.best_checkpoint), str(art / T.BEST_CHECKPOINT))
    metrics = final_metrics(result)
    probe_extra: dict[str, Any] = {}
    if ctx.probes is not None and (art / T.BEST_CHECKPOINT).exists():
        from lungray.sweep.probes import trial_probes  # issue 24: does the model look at the lungs?

        probe_metrics, probe_extra = trial_probes(ctx.data, trial, art, ctx.probes)
        metrics.update(probe_metrics)
    summary = {
        "trial_id": trial_id,
        "trial": trial.name,
        "cell": trial.cell,
        "model": trial.arm,
        "train_size": trial.train_size,
        "optimizer": trial.optimizer.key,
        "seed": trial.seed,
        "metrics": metrics,
        "best_epoch": metrics["best_epoch"],
        "history": [{k: _plain(v) for k, v in h.items()} for h in (result.history or [])],
        "timings": {k: _plain(v) for k, v in (result.timings or {}).items()},
        **{k: _plain(v) for k, v in extra.items()},
        **probe_extra,
    }
    summary["complete"] = True
    write_result(tdir, summary)
    return summary


def write_confusion(out_dir: Path, cm: Any, class_names: list[str], title: str = "") -> None:
    """``confusion_matrix.csv`` (rows true, columns predicted) and a labelled PNG."""
    import numpy as np
    import pandas as pd

    cm = np.asarray(cm)
    pd.DataFrame(cm, index=pd.Index(class_names, name="true"), columns=class_names).to_csv(out_dir / T.CONFUSION_CSV)
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from lungray.report.figures import ANNOTATED_CLASSES, class_ticks

    # bounded whatever the class count (issue 23: K = 100 drew a 90-inch figure with 10^4 labels, 2.79 GB)
    k = len(class_names)
    side = min(1.0 + 0.9 * k, 9.0)
    fig, ax = plt.subplots(figsize=(side + 0.2, side), dpi=100)
    ax.imshow(cm, cmap="Blues", interpolation="nearest")
    ticks, named = class_ticks(k)
    ax.set_xticks(ticks, [class_names[i] if named else str(i) for i in ticks], rotation=45 if named else 0,
                  ha="right" if named else "center", fontsize=8 if k <= 8 else 6)
    ax.set_yticks(ticks, [class_names[i] if named else str(i) for i in ticks], fontsize=8 if k <= 8 else 6)
    ax.set_xlabel("predicted" + ("" if named else " (class index; names in confusion_matrix.csv)"))
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize=7)
    vmax = cm.max() if cm.size else 0
    if k <= ANNOTATED_CLASSES:
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8, color="white" if cm[i, j] > vmax / 2 else "black")
    fig.tight_layout()
    fig.savefig(out_dir / T.CONFUSION_PNG)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _is_number(v: Any) -> bool:
    try:
        import numpy as np

        if isinstance(v, np.generic):
            v = v.item()
    except ImportError:  # pragma: no cover
        pass
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _plain(v: Any) -> Any:
    try:
        import numpy as np

        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, np.ndarray):
            return v.tolist()
    except ImportError:  # pragma: no cover
        pass
    return v


def _redacted(e: BaseException) -> BaseException:
    """``e`` itself, unless its text (or its traceback's) holds a credential: then a RuntimeError
    with the redacted traceback as its message, chain cut, so neither Tune's console lines nor
    its ``error.txt``/``error.pkl`` in the experiment directory carry the secret (issue 15)."""
    import traceback

    from lungray.redact import redact_text

    text = "".join(traceback.format_exception(e))
    clean = redact_text(text)
    if clean == text:
        return e
    return RuntimeError(f"{type(e).__name__}: {redact_text(str(e))}\n(original traceback, redacted)\n{clean}")


def _root_cause(e: BaseException) -> str:
    """The innermost error message (Ray wraps worker errors several times); a lungray error
    (written for the user: the disk-full line) is taken as it is, not its low-level cause."""
    from lungray.errors import LungrayError

    seen = set()
    cur: Optional[BaseException] = e
    last = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        last = cur
        if isinstance(cur, LungrayError):
            return str(cur).strip() if cur is e else f"{type(cur).__name__}: {str(cur).strip()}"
        cur = cur.__cause__ or cur.__context__
    msg = str(last).strip().splitlines()
    text = msg[-1] if msg else type(last).__name__
    return text if last is e else f"{text} (from {type(last).__name__})"
