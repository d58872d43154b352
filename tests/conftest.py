"""Shared test set-up: one CPU thread per test process (2-core CI), no GPU assumptions."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Mapping, Optional

import pytest

os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TQDM_MININTERVAL", "5")


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    torch.set_num_threads(1)
    yield


def pytest_collection_modifyitems(config, items):
    import shutil

    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_browser = pytest.mark.skip(reason="needs Debian chromium (apt-get install chromium)")
    _longest_modules_first(items)
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
        if "browser" in item.keywords and not (shutil.which("chromium") or shutil.which("chromium-browser")):
            item.add_marker(skip_browser)


@pytest.fixture(scope="session")
def prepared_phantom(tmp_path_factory):
    """A small prepared phantom shared by every area's tests (owned by the data layer, H2).

    240 phantom images at 32 px, 2 classes ("Normal", "COVID"), a fixed held-out set of 80, a
    validation set of 20 and the rest as the training pool (patient-disjoint, leakage-audited).
    Built once per test session (about a second); read-only for the tests that use it.
    """
    from lungray.config import DataConfig
    from lungray.data import prepare_data

    cfg = DataConfig(source="phantom", phantom_n=240, phantom_classes=2, resolution=32, eval_size=80, val_size=20)
    return prepare_data(cfg, output_dir=tmp_path_factory.mktemp("prepared_phantom"), progress=False)


# The suite runs with pytest-xdist, one test module per worker at a time (``--dist loadfile`` in
# pyproject: a module's Ray session, MLflow server or sweep fixture stays in one process). Most
# end-to-end modules wait on Ray and MLflow start-up far more than they compute, so two of them
# overlap well on 2 CPUs; the longest go first so that none of them starts last and runs alone.
# Seconds measured on 2 CPUs (2026-12-02); a module not listed keeps its place after these.
LONGEST_MODULES = (
    "test_sweep_smoke.py", "test_cluster_mlflow.py", "test_faults_kill.py", "test_transfer_smoke.py", "test_sweep_ray.py",
    "test_protocols.py", "test_external.py", "test_probes_truth.py", "test_stats_simulation.py", "test_probes_sweep.py",
    "test_faults_mlflow_outage.py", "test_sweep_resume.py", "test_faults_credentials.py", "test_cluster_fake.py",
    "test_faults_disk.py", "test_memory_bounds.py", "test_report_build.py", "test_report_smoke.py", "test_data_privacy.py",
    "test_sweep_segmentation.py", "test_gradcam_freeze.py", "test_mlflow_server.py", "test_faults_lock.py",
)


def _longest_modules_first(items) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order inside a module kept


@contextlib.contextmanager
def local_ray(env: Optional[Mapping[str, str]] = None) -> Iterator[None]:
    """A module's own local Ray instance (2 CPUs, never a `ray start` cluster left on the machine),
    started after ``env`` is set so that Ray's worker processes inherit it (failpoints, MLflow
    bounds); ``env`` is restored after ``ray.shutdown()``. Joins an instance already running."""
    import ray

    env = env or {}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        if started:
            ray.shutdown()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
