"""Shared test set-up: one CPU thread per test process (2-core CI), no GPU assumptions."""

from __future__ import annotations

import os

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
