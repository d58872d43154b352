"""notebooks/*.ipynb: stored without outputs, and they execute (nbclient) against a sweep.

``sweep_results.ipynb`` runs against a fake sweep with planted numbers (its table must show
them, as the report does) and, in the slow test of test_report_smoke.py's sweep, against a real
smoke sweep. ``explore_dataset.ipynb`` runs on a small phantom.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


#: the variables a notebook reads its store and sweep from; a test that runs it "as is" unsets them
STORE_VARS = ("LUNGRAY_TRACKING_URI", "MLFLOW_TRACKING_URI", "LUNGRAY_EXPERIMENT", "LUNGRAY_RUN_ID")


def run_notebook(name: str, env: dict[str, str], cwd: Path, timeout: int = 300, unset: tuple[str, ...] = (),
                 path: Path | None = None):
    """Execute a notebook (``path``, default the repository's) in a fresh kernel with ``env``
    added to the environment and ``unset`` removed from it."""
    from nbclient import NotebookClient

    nb = nbformat.read(path or NOTEBOOKS / name, as_version=4)
    old = {k: os.environ.get(k) for k in (*env, *unset)}
    for k in unset:
        os.environ.pop(k, None)
    os.environ.update(env)  # the kernel is a child process: it inherits this environment
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            data = out.get("data", {})
            parts.append(data.get("text/plain", ""))
            parts.append(data.get("text/html", ""))
    return "\n".join(parts)


def images_in(nb) -> int:
    return sum("image/png" in out.get("data", {}) for c in nb.cells for out in c.get("outputs", []))


@pytest.mark.parametrize("name", ["sweep_results.ipynb", "explore_dataset.ipynb"])
def test_notebooks_are_stored_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name} has stored outputs"
    src = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "import lungray" in src or "from lungray" in src
    assert "os.environ" in src  # parameterised through the environment


def test_sweep_results_notebook_reproduces_the_report_table(tmp_path):
    from lungray.report._testing import log_fake_sweep

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log_fake_sweep(uri, "nb_sweep", models=("alpha", "beta"), sizes=(25, 50, 100, 200), seeds=(0, 1, 2),
                   artifact_root=(tmp_path / "art").as_uri())
    nb = run_notebook("sweep_results.ipynb", {"LUNGRAY_TRACKING_URI": uri, "LUNGRAY_EXPERIMENT": "nb_sweep"}, tmp_path)
    text = outputs_text(nb)
    # the planted accuracies: alpha 0.5 + 0.4 n/200 - 0.01 seed, beta 10 points lower
    assert "0.540 [0.515, 0.565] ★" in text  # alpha at n=25, clear of beta
    assert "0.440 [0.415, 0.465]" in text  # beta at n=25
    assert "24 complete, 0 failed, 0 expected trials not complete" in text
    assert images_in(nb) == 1  # the learning-curve figure


def test_sweep_results_notebook_run_as_is_finds_the_main_jobs_store_and_latest_sweep(tmp_path):
    """Issue 20.5: opened from notebooks/ with no parameter, the notebook reads the store the
    README's main job wrote (lungray_runs/mlflow.db in the repository root) and shows its latest
    sweep, whatever the experiment is called, and leaves no file behind (MLflow's own default
    would have created notebooks/mlflow.db)."""
    import shutil

    from lungray.report._testing import log_fake_sweep

    repo = tmp_path / "clone"
    (repo / "notebooks").mkdir(parents=True)
    shutil.copy(NOTEBOOKS / "sweep_results.ipynb", repo / "notebooks")
    store = repo / "lungray_runs" / "mlflow.db"
    store.parent.mkdir()
    uri = f"sqlite:///{store}"
    log_fake_sweep(uri, "older_study", models=("alpha", "beta"), sizes=(25, 50), seeds=(0, 1),
                   artifact_root=(tmp_path / "art1").as_uri())
    latest = log_fake_sweep(uri, "phantom_size_study", models=("alpha", "beta"), sizes=(25, 50), seeds=(0, 1, 2),
                            artifact_root=(tmp_path / "art2").as_uri())
    before = sorted(p.name for p in (repo / "notebooks").iterdir())
    nb = run_notebook("sweep_results.ipynb", {}, repo / "notebooks", unset=STORE_VARS,
                      path=repo / "notebooks" / "sweep_results.ipynb")
    text = outputs_text(nb)
    assert f"sweep run {latest.parent_id}" in text and str(store) in text
    assert "12 complete, 0 failed, 0 expected trials not complete" in text  # the latest sweep's 2 x 2 x 3 trials
    assert images_in(nb) == 1
    assert sorted(p.name for p in (repo / "notebooks").iterdir()) == before  # no mlflow.db, nothing else


def test_sweep_results_notebook_without_a_store_says_so_and_creates_none(tmp_path):
    from nbclient.exceptions import CellExecutionError

    shutil = __import__("shutil")
    (tmp_path / "notebooks").mkdir()
    shutil.copy(NOTEBOOKS / "sweep_results.ipynb", tmp_path / "notebooks")
    with pytest.raises(CellExecutionError, match="no MLflow store found: no lungray_runs/mlflow.db in"):
        run_notebook("sweep_results.ipynb", {}, tmp_path / "notebooks", unset=STORE_VARS,
                     path=tmp_path / "notebooks" / "sweep_results.ipynb")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["notebooks", "sweep_results.ipynb"]
    # a named sqlite store that does not exist is refused too, not created
    with pytest.raises(CellExecutionError, match="no MLflow store at sqlite:///"):
        run_notebook("sweep_results.ipynb", {"LUNGRAY_TRACKING_URI": f"sqlite:///{tmp_path / 'nope.db'}"},
                     tmp_path / "notebooks", unset=STORE_VARS, path=tmp_path / "notebooks" / "sweep_results.ipynb")
    assert not (tmp_path / "nope.db").exists()


def test_explore_dataset_notebook_on_the_phantom(tmp_path):
    nb = run_notebook(
        "explore_dataset.ipynb",
        {"LUNGRAY_PHANTOM_N": "240", "LUNGRAY_RESOLUTION": "32", "LUNGRAY_OUTPUT": str(tmp_path / "out")},
        tmp_path,
    )
    text = outputs_text(nb)
    for cls in ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"):
        assert cls in text
    assert "'eval'" in text and "'pool'" in text  # class counts per split
    assert images_in(nb) == 2  # class balance + sample images
