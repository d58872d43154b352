"""Splits that refuse to be degenerate (issue 18): the refusal rules by hand, and the issue's two
reproductions ending in one line before Ray starts.

The reproductions, as the issue found them:

* 250 distinct patients sharing a white label box and a boxed "R" were chained by the audit into
  one cluster; with 120 such images ``prepare_data`` returned eval 0, val 0, pool 120 with no
  error and ``data check`` exited 0. The audit no longer chains them
  (``tests/test_data_burnin.py``); here the same 120-image folder is prepared for real (both
  classes evaluated), and then with the pairs the old audit returned, which must end in a
  one-line refusal from ``data check`` (exit 1) and from the sweep, before Ray starts;
* a folder set of 2 classes x 20 PNGs of one layout: ``data check --sizes 10 20`` exited 0 and
  the smoke sweep trained on an evaluation set of 5 COVID and 0 Normal images. Now both refuse.
"""

from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lungray.data.guards import cluster_limit, cluster_problems, split_problems, suspect_line
from lungray.data.split_plan import grouping_pairs, split_groups

CFG = NS(min_eval_per_class=10, min_val_per_class=3, val_size=0.1, max_cluster_share=0.05, max_cluster_patients=3)
NAMES = ["Normal", "COVID"]


def _pairs(*ab, stage="keypoints"):
    return pd.DataFrame({"row_a": [a for a, _ in ab], "row_b": [b for _, b in ab], "kind": "near", "stage": stage,
                         "distance": 30.0, "ncc": 0.9, "transform": "rot +3 deg, zoom 1.00"})


# --------------------------------------------------------------------------------------------
# the rules, by hand
# --------------------------------------------------------------------------------------------


def test_split_problems_by_hand():
    y = np.array([0] * 30 + [1] * 30)
    ok = split_problems(y, list(range(10)) + list(range(30, 40)), [10, 11, 12, 40, 41, 42], list(range(13, 30)) + list(range(43, 60)), NAMES, CFG)
    assert ok == []
    # an evaluation set without a class is refused whatever the minimum, and names the cause
    lost = split_problems(y, list(range(30, 45)), [0, 1, 2, 45, 46, 47], list(range(3, 30)) + list(range(48, 60)),
                          NAMES, NS(**{**vars(CFG), "min_eval_per_class": 0}), cause="one cluster holds 30 images")
    assert lost == ["the evaluation set would hold no 'Normal' image (one cluster holds 30 images): its metrics would miss "
                    "the class; use more data or a larger data.eval_size, or drop the class with data.class_map"]
    # below the minimum: 9 and 10 -> only the class under it is named
    low = split_problems(y, list(range(9)) + list(range(30, 40)), [10, 11, 12, 40, 41, 42], list(range(13, 30)) + list(range(43, 60)), NAMES, CFG)
    assert low == ["the evaluation set would hold only 9 'Normal' image(s), fewer than data.min_eval_per_class = 10 per class: "
                   "a metric on so few is noise; use more data, a larger data.eval_size, or lower data.min_eval_per_class"]
    # validation: a lost class, then one under the minimum; none asked for (val_size 0): nothing
    val = split_problems(y, list(range(10)) + list(range(30, 40)), [10, 11, 40], list(range(12, 30)) + list(range(41, 60)), NAMES, CFG)
    assert val == ["the validation set would hold only 2 'Normal', 1 'COVID' image(s), fewer than data.min_val_per_class = 3 per class; "
                   "use more data, a larger data.val_size, or lower data.min_val_per_class"]
    none = split_problems(y, list(range(10)) + list(range(30, 40)), [], list(range(10, 30)) + list(range(40, 60)), NAMES,
                          NS(**{**vars(CFG), "val_size": 0}))
    assert none == []
    gone = split_problems(y, list(range(10)) + list(range(30, 40)), [10, 11, 12], list(range(13, 30)) + list(range(40, 60)), NAMES, CFG)
    assert gone[0].startswith("the validation set would hold no 'COVID' image: ")
    pool = split_problems(y, list(range(10)) + list(range(30, 60)), [], list(range(10, 30)), NAMES, NS(**{**vars(CFG), "val_size": 0}))
    assert pool == ["the training pool would hold no 'COVID' image: no model could learn the class; use more data or "
                    "smaller data.eval_size/data.val_size"]


def test_cluster_problems_by_hand():
    assert cluster_limit(100, CFG) == 10 and cluster_limit(1000, CFG) == 50  # never below 10 images
    y = np.array([0] * 60 + [1] * 60)
    chain = _pairs(*[(i, i + 1) for i in range(59)])  # 60 images of one class chained
    msg = cluster_problems(chain, 120, y, NAMES, CFG)
    assert msg == ["one duplicate cluster of the leakage audit holds 60 of 120 images (50 %, more than data.max_cluster_share "
                   "= 0.05 allows: 10) [Normal 60]: copies of one film are a handful, so the audit has chained distinct "
                   "images (shared burned-in markings, borders or blank films?) and the split would have to keep them on "
                   "one side; look at the pairs with `lungray data check`, remove real copies from the data, or set "
                   "data.leakage=off to split by patient only"]
    assert cluster_problems(_pairs(*[(i, i + 1) for i in range(9)]), 120, y, NAMES, CFG) == []  # 10 images: allowed
    # four copies of one film filed under four patient ids: more than data.max_cluster_patients
    patients = np.arange(120)
    four = cluster_problems(_pairs((0, 1), (1, 2), (2, 3)), 120, y, NAMES, CFG, patients)
    assert len(four) == 1 and "holds 4 different patient ids (more than data.max_cluster_patients = 3) [Normal 4]" in four[0]
    assert cluster_problems(_pairs((0, 1), (1, 2)), 120, y, NAMES, CFG, patients) == []
    two = cluster_problems(_pairs(*[(i, i + 1) for i in range(59)], *[(60 + i, 61 + i) for i in range(20)]), 120, y, NAMES, CFG)
    assert two[0].split(": copies")[0].endswith("[Normal 60]; 1 more such cluster(s)")


def test_pairs_across_labels_are_reported_never_grouped():
    y = np.array([0, 0, 1, 1, 0])
    pairs = _pairs((0, 1), (1, 2), (2, 3), (3, 4))
    edges, suspects = grouping_pairs(pairs, y)
    assert edges[["row_a", "row_b"]].values.tolist() == [[0, 1], [2, 3]]
    assert suspects[["row_a", "row_b"]].values.tolist() == [[1, 2], [3, 4]]
    groups, patients, _, _ = split_groups(y, [""] * 5, pairs)
    assert patients is None and groups.tolist() == [0, 0, 1, 1, 2]  # the chain 0-1-2-3-4 is cut at the label changes
    line = suspect_line(suspects, y, NAMES, ids=[f"img{i}" for i in range(5)])
    assert line.startswith("warning: 2 duplicate pair(s) join images with different labels (e.g. img1 'Normal' ~ img2 'COVID', "
                           "found by keypoints): each is a label conflict or a false pair")
    assert suspect_line(suspects.iloc[:0], y, NAMES) is None


# --------------------------------------------------------------------------------------------
# reproduction 1: the label-box set
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def label_box_set(tmp_path_factory):
    """120 PNGs of 120 different phantom patients (60 per class), each with the same white label
    box and boxed "R" (ids and dates change per film), as in the issue."""
    import cv2

    from lungray.data import audit_sets as A
    from lungray.data.phantom import PhantomSpec, layout, render_case

    style = A.SiteStyle(letter=(0.04, 0.04, "R", True), text=(0.7, 0.06, 1, True), box=(0.6, 0.82, 0.35, 0.14),
                        ruler=(0.02, 0.2, 0.8), font=cv2.FONT_HERSHEY_SIMPLEX, kinds=("letter", "label_box"))
    kw = {"sites": 1, "series_fraction": 0.0, "markings": ()}
    lay = layout(1000, PhantomSpec(seed=8, **kw))
    first = np.flatnonzero(np.r_[True, lay.patient[1:] != lay.patient[:-1]])
    root = tmp_path_factory.mktemp("labelbox") / "ds"
    n = {0: 0, 1: 0}
    for i in first:
        lab = int(lay.label[i])
        if n[lab] == 60:
            continue
        c = render_case(int(i), resolution=128, seed=8, **kw)
        (root / c.class_name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(A.stamp(c.image, style, np.random.default_rng(int(i)))).save(root / c.class_name / f"f{i:04d}.png")
        n[lab] += 1
        if n[0] == n[1] == 60:
            break
    return root


def _chained(root, *a, **k):
    """The old audit's outcome on the label-box set: every film paired with the next (one cluster)."""
    n = len(pd.read_parquet(root / "manifest.parquet", columns=["image_id"]))
    return _pairs(*[(i, i + 1) for i in range(n - 1)])


def test_label_box_set_prepares_with_both_classes_evaluated(label_box_set, tmp_path):
    from lungray.config import DataConfig
    from lungray.data.prepare import prepare_data

    d = prepare_data(DataConfig(source="folder", path=str(label_box_set), resolution=32, eval_size=0.25, val_size=0.1),
                     output_dir=tmp_path, progress=False, parallel=False)
    counts = d.class_counts()
    assert min(counts["eval"].values()) >= 10 and min(counts["val"].values()) >= 3 and sum(counts["eval"].values()) == 30
    assert d.info["leakage"]["largest_cluster"] <= 2 and d.info["leakage"]["suspect_pairs"] == 0


def test_label_box_set_chained_by_the_audit_is_refused_in_one_line_before_ray(label_box_set, tmp_path, monkeypatch, capsys):
    import ray

    from lungray.cli import main as lungray_main
    from lungray.data import duplicates, prepare
    from lungray.sweep.cli import main

    monkeypatch.setattr(prepare, "find_dataset_duplicates", _chained)
    monkeypatch.setattr(duplicates, "find_dataset_duplicates", _chained)
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))
    rc = lungray_main(["data", "check", str(label_box_set), "--cache-dir", str(tmp_path / "cache")])
    out = capsys.readouterr()
    assert rc == 1 and "one duplicate cluster of the leakage audit holds 60 of 120 images (50 %" in out.out
    assert out.err.endswith("\ndata check failed: the dataset cannot be used (3 error(s) above)\n")  # after the progress bar
    rc = main(["--preset", "smoke", "--data", str(label_box_set), "--output", str(tmp_path / "runs"), "--set", "data.source=folder",
               "--set", "data.eval_size=0.25", "--set", "data.val_size=0.1"], default_preset="default", prog="size_study.py")
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith("size_study.py: error: folder data cannot be split for a study: one duplicate cluster of the leakage "
                          "audit holds 60 of 120 images (50 %")
    assert "the evaluation set would hold no 'COVID' and no 'Normal' image" in err
    assert not ray.is_initialized()


# --------------------------------------------------------------------------------------------
# reproduction 2: the 2-class x 20-PNG folder set
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def twenty_each(tmp_path_factory):
    """2 classes x 20 PNGs of one layout: phantom films of one site, with its markings."""
    from lungray.data.phantom import generate_phantom

    ph = generate_phantom(120, resolution=64, sites=1, seed=9)
    root = tmp_path_factory.mktemp("twenty") / "ds"
    n = {0: 0, 1: 0}
    for i in range(len(ph)):
        lab = int(ph.labels[i])
        if n[lab] < 20:
            (root / ph.class_names[lab]).mkdir(parents=True, exist_ok=True)
            Image.fromarray(ph.images[i]).save(root / ph.class_names[lab] / f"{n[lab]}.png")
            n[lab] += 1
    assert n == {0: 20, 1: 20}
    return root


def test_twenty_per_class_folder_set_is_refused_by_data_check_and_the_sweep(twenty_each, tmp_path, monkeypatch, capsys):
    import ray

    from lungray.cli import main as lungray_main
    from lungray.sweep.cli import main

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))
    rc = lungray_main(["data", "check", str(twenty_each), "--sizes", "10", "20", "--cache-dir", str(tmp_path / "cache")])
    out = capsys.readouterr()
    line = ("the evaluation set would hold only 5 'COVID', 5 'Normal' image(s), fewer than data.min_eval_per_class = 10 per "
            "class: a metric on so few is noise; use more data, a larger data.eval_size, or lower data.min_eval_per_class")
    assert rc == 1 and line in out.out.splitlines(), out.out
    rc = main(["--preset", "smoke", "--data", str(twenty_each), "--output", str(tmp_path / "runs"), "--set", "data.source=folder",
               "--set", "data.eval_size=0.25", "--set", "data.val_size=0.1", "--set", "sizes=[10,20]"],
              default_preset="default", prog="size_study.py")
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith(f"size_study.py: error: folder data cannot be used: {line}"), err
    assert not ray.is_initialized()
