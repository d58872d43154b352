"""Issue 23, point 5: many classes cannot exhaust memory or flood the console.

400 one-image classes (a folder per patient instead of per class) drove ``write_confusion`` to a
(0.9 K)^2-inch figure with K^2 labels (K = 100: 2.79 GB, 12.6 s); the trial reached 21 GB, Ray
killed it, and the console had 1,170 lines (405 uncapped warnings). Now the class count is
refused in one line before Ray starts, repeated findings are capped, and every figure's size and
number of drawn texts is bounded whatever K.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def _one_image_classes(root: Path, k: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(k):
        d = root / f"PAT{i:05d}"
        d.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(d / "0.png")
    return root


@pytest.fixture(scope="module")
def k400(tmp_path_factory) -> Path:
    return _one_image_classes(tmp_path_factory.mktemp("k400") / "ds", 400)


REFUSAL = ("400 classes (400 with at most one usable image): more than data.max_classes=64; is there a folder per patient or "
           "per image instead of per class? point data.path at the folder whose subfolders are the classes, merge classes "
           "with data.class_map, or raise data.max_classes")


def test_data_check_refuses_400_classes_in_one_line_without_naming_them(k400, capsys):
    from lungray.cli import main

    assert main(["data", "check", str(k400), "--source", "folder", "--no-duplicates"]) == 1
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert REFUSAL in lines and len(lines) <= 3, lines  # the refusal, the summary (no per-class flood)
    assert "PAT0" not in out + err  # class names here are patient folders: never listed
    assert err.strip() == "data check failed: the dataset cannot be used (1 error(s) above)"


def test_the_sweep_refuses_before_ray_starts(k400, tmp_path, capsys, monkeypatch):
    import ray

    from lungray.sweep.cli import main

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray must not start"))
    code = main(["--preset", "smoke", "--data", str(k400), "--source", "folder", "--output", str(tmp_path / "runs")],
                default_preset="smoke", prog="size_study.py")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and REFUSAL in err[0]


def test_repeated_findings_are_capped_with_a_count():
    from lungray.data.check import MAX_LINES_PER_KIND, capped

    lines = [f"class 'c{i}' has {i} usable image(s): ... never validated" for i in range(100)] + ["one other line"]
    out = capped(lines)
    assert len(out) == MAX_LINES_PER_KIND + 2
    assert out[MAX_LINES_PER_KIND] == f"... {100 - MAX_LINES_PER_KIND} more like the line above (the data check's manifest has every row)"
    assert out[-1] == "one other line" and out[:3] == lines[:3]


def test_a_capped_class_flood_in_a_real_check(tmp_path, capsys):
    """70 one-image classes (refused by max_classes=64); with the limit raised, the split refusals
    (issue 18) are one line per split, each naming MAX_NAMED classes and counting the rest, not
    1,300-character lines of 70 names."""
    from lungray.config import DataConfig
    from lungray.data.check import check_dataset
    from lungray.data.guards import MAX_NAMED

    root = _one_image_classes(tmp_path / "ds", 70)
    printed: list[str] = []
    rep = check_dataset(DataConfig(source="folder", path=str(root), max_classes=100), echo=printed.append, probe_files=False)
    splits = [p for p in rep.problems if " set would hold no " in p or "training pool would hold no " in p]
    assert len(splits) == 3, rep.problems  # evaluation, validation, training pool
    for line in splits:
        named = line.count("'PAT")
        assert named == MAX_NAMED and " more classes" in line and len(line) < 500, line
    # with 70 classes of one image, every image lands in one split: the three counts add up
    more = [int(line.split(" or any of ")[1].split()[0]) + MAX_NAMED for line in splits]
    assert sum(70 - m for m in more) == 70, more
    assert len(printed) <= 10, printed


def _texts(fig) -> int:
    from matplotlib.text import Text

    return sum(1 for a in fig.findobj(Text) if a.get_visible() and a.get_text())


@pytest.mark.parametrize("k", [2, 12, 64, 400])
def test_every_figure_is_bounded_by_the_class_count(k, tmp_path):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from PIL import Image

    from lungray.report import figures as F
    from lungray.sweep.trainable import write_confusion

    names = [f"class {i}" for i in range(k)]
    rng = np.random.default_rng(k)
    cm = rng.integers(0, 5, (k, k))

    write_confusion(tmp_path, cm, names, title="t")
    w, h = Image.open(tmp_path / "confusion_matrix.png").size
    assert w <= 920 and h <= 900  # 9.2 x 9 inches at 100 dpi at most (K = 100 was 91 x 91 inches)
    assert (tmp_path / "confusion_matrix.csv").read_text().count("\n") == k + 1  # the CSV keeps every class

    fig = F.confusion_figure({"a": cm / np.maximum(cm.sum(1, keepdims=True), 1), "b": np.eye(k)}, names, "n = 10")
    assert fig.get_size_inches()[0] <= F.FULL_WIDTH + 1e-9 and fig.get_size_inches()[1] <= F.FULL_WIDTH
    assert _texts(fig) <= 2 * (k * k if k <= F.ANNOTATED_CLASSES else 0) + 4 * (F.LABELLED_CLASSES + 1) + 10

    curves = {"m": [(n, np.array([0, 0.5, 1]), np.array([0, 0.7, 1]), 0.7) for n in names]}
    roc = F.roc_figure(curves, "ROC")
    legend = roc.axes[0].get_legend()
    assert len(legend.get_texts()) == min(k, F.MAX_CURVES) + (1 if k > F.MAX_CURVES else 0) + 1  # + chance

    bal = F.class_balance_figure({s: {n: 3 for n in names} for s in ("eval", "val", "pool")})
    assert bal.get_size_inches()[0] <= F.FULL_WIDTH + 1e-9
    assert len([t for t in bal.axes[0].get_xticklabels() if t.get_text()]) <= F.LABELLED_CLASSES + 1

    grid = F.image_grid_figure([np.zeros((8, 8))] * k, names)
    assert len([a for a in grid.axes if a.images]) == min(k, F.MAX_GRID_IMAGES)
    assert grid.get_size_inches()[1] <= 1.8 * (F.MAX_GRID_IMAGES / 6) + 1e-9
