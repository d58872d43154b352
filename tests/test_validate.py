"""Config validation lives in :mod:`lungray.train.validate`; :mod:`lungray.config` imports no registry.

The registries (data adapters, models, tasks, optimizers) import ``lungray.config`` for its
dataclasses; if config imported them back, whichever side loaded first would find the other
half-initialised. These tests run each import order in a fresh interpreter, and check that
``import lungray.config`` (the CLI's start-up, every Ray worker's unpickling of a trial) pulls
in neither torch, timm nor ray.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import lungray.config

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def test_importing_config_loads_no_heavy_library():
    r = _python(
        "import lungray.config, sys\n"
        "heavy = [m for m in ('torch', 'timm', 'ray', 'mlflow') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        # validating a study of lungray's own models stays light too (the CLI checks before it works)
        "import lungray.study\n"
        "lungray.study.load_study('smoke')\n"
        "heavy = [m for m in ('torch', 'timm', 'ray', 'mlflow') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    assert r.returncode == 0, r.stderr


MODULES = ["lungray.models", "lungray.train.optim", "lungray.train.tasks", "lungray.train.validate", "lungray.config", "lungray.study"]


@pytest.mark.parametrize("first", MODULES + ["lungray.train.loop"])
def test_every_import_order_works(first):
    """Import one module first, then the rest, then validate a study: no partially initialised module."""
    code = f"import {first}\n" + "".join(f"import {m}\n" for m in MODULES if m != first)
    code += "from lungray.study import load_study\nassert load_study('smoke').train.task == 'classification'\n"
    r = _python(code)
    assert r.returncode == 0, r.stderr


def test_config_module_imports_no_registry():
    """Statically, anywhere in lungray/config.py (functions included): only errors and presets."""
    tree = ast.parse(Path(lungray.config.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lungray"):
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names if a.name.startswith("lungray"))
    assert imported == {"lungray.errors", "lungray.presets"}


def test_load_study_validates_and_resolve_study_does_not():
    """``resolve_study`` checks structure only; ``load_study`` adds every registry check."""
    from lungray.config import StudyConfig, resolve_study
    from lungray.errors import ConfigError
    from lungray.study import load_study, validate_study

    cfg = StudyConfig(sizes=(0,))
    with pytest.raises(ConfigError, match=r"sizes must be positive counts or 'all' \(the whole training pool\), got \[0\]"):
        validate_study(cfg)
    assert resolve_study("smoke", overrides=["optimizers=[adagrad]"]).optimizers[0].name == "adagrad"
    with pytest.raises(ConfigError, match=r"unknown optimizer 'adagrad'"):
        load_study("smoke", overrides=["optimizers=[adagrad]"])
    with pytest.raises(ConfigError, match=r"unknown config key data.colour"):
        resolve_study("smoke", overrides=["data.colour=1"])


def test_model_resolution_rule_is_the_model_specs_own():
    """``ae_encoder``'s resolution rule is a ModelSpec hook; config validation just calls it."""
    from lungray.config import ModelConfig
    from lungray.study import load_study
    from lungray.errors import ConfigError
    from lungray.models import MODELS, check_model_config

    assert MODELS.get("ae_encoder").check is not None
    with pytest.raises(ConfigError, match=r"m: ae_encoder needs data.resolution divisible by 4 and >= 128.*got 130"):
        check_model_config(ModelConfig(name="ae_encoder"), "m", resolution=130)
    check_model_config(ModelConfig(name="ae_encoder"), "m", resolution=128)
    check_model_config(ModelConfig(name="ae_encoder"), "m")  # resolution unknown: not checked
    assert load_study("smoke", overrides=["models=[ae_encoder]", "data.resolution=128"]).models[0].name == "ae_encoder"


def test_model_hooks_replace_model_names_in_the_loop():
    """The loop asks the spec (prepare, full_batch), never the name: no model name in loop.py."""
    from lungray.models import MODELS

    assert MODELS.get("logreg").full_batch and not MODELS.get("simple_cnn").full_batch
    assert MODELS.get("ae_encoder").prepare is not None and MODELS.get("logreg").prepare is None
    for module in ("loop.py", "epochs.py", "distributed.py"):  # the loop and what was split from it
        source = (ROOT / "lungray" / "train" / module).read_text()
        for name in MODELS.names():
            assert f'"{name}"' not in source, (module, name)
