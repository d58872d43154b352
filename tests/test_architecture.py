"""The layers and the no-cycle rule of ``pyproject.toml`` (``[tool.importlinter]``), enforced.

``python -m pytest`` (the README's test command, what CI runs) runs import-linter on the package:
entry points -> sweep -> report -> study -> train -> models -> data -> core, imports inside
functions included, and no cycle between the modules of any package. The contracts carry no
ignore list; a planted violation in a copy of the package shows that they catch one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(root))
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(exe), str(root / "pyproject.toml"), "--no-cache"],
        capture_output=True, text=True, cwd=root, env=env, timeout=300,
    )


def test_the_contracts_hold():
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "2 kept, 0 broken" in r.stdout


def test_no_contract_has_an_exception_list():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    contracts = cfg["contracts"]
    assert {c["type"] for c in contracts} == {"layers", "acyclic_siblings"}
    for c in contracts:
        assert not c.get("ignore_imports"), c["name"]
        assert not c.get("skip_descendants"), c["name"]
    layers = next(c for c in contracts if c["type"] == "layers")["layers"]
    assert layers.index("sweep") < layers.index("report") < layers.index("study") < layers.index("train")
    assert layers.index("train") < layers.index("models") < layers.index("data") < layers.index("metrics | config")


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "lungray", root / "lungray", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


@pytest.mark.parametrize(
    "module,planted,expected",
    [
        # a lazy upward import, hidden in a function: config (core) reaching the train layer
        ("config.py", "\n\ndef _planted():\n    from lungray.train.validate import validate_study\n", "lungray.config is not allowed to import lungray.train"),
        # a cycle inside one package: freeze <-> factory
        ("models/freeze.py", "\n\ndef _planted():\n    from lungray.models.factory import create_model\n", "No cycles are allowed in lungray.models"),
    ],
)
def test_a_planted_violation_is_caught(tmp_path, module, planted, expected):
    root = _copy(tmp_path)
    path = root / "lungray" / module
    path.write_text(path.read_text() + planted)
    r = _lint(root)
    assert r.returncode != 0
    assert expected in " ".join(r.stdout.split()), r.stdout[-3000:]
