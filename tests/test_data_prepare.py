"""prepare_data end to end (phantom and planted leakage), augmentation/normalisation, ImageDataset."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lungray.config import DataConfig
from lungray.data.augment import AUGMENTATIONS, NORMALIZATIONS, build_augmentation, normalization_stats
from lungray.errors import ConfigError, DataError

pytest.importorskip("lungray.data.splits")
pytest.importorskip("lungray.data.leakage")

from lungray.data import PreparedData, prepare_data  # noqa: E402

# the split minimums of a real study (data.min_eval_per_class 10, min_val_per_class 3) refuse
# these few-image fixtures; the tests of other behaviour lift them
TINY = {"min_eval_per_class": 1, "min_val_per_class": 1}


# --------------------------------------------------------------------------------------------
# the shared fixture, end to end
# --------------------------------------------------------------------------------------------


def test_prepared_phantom_splits(prepared_phantom):
    d = prepared_phantom
    assert isinstance(d, PreparedData)
    assert d.class_names == ("Normal", "COVID")
    assert d.images.shape == (240, 32, 32) and d.images.dtype == np.uint8
    assert d.masks is not None and d.masks.shape == (240, 32, 32)
    ev, va, po, dr = map(set, (d.eval_idx, d.val_idx, d.pool_idx, d.dropped_idx))
    # whole patients (follow-up films, CT-like series) are assigned: each class lands within half
    # a patient of its quota, so the total within one patient of the largest size
    big = int(np.bincount(d.patients).max())
    assert abs(len(ev) - 80) <= big and abs(len(va) - 20) <= big
    assert not (ev & va) and not (ev & po) and not (va & po) and not (dr & po)
    assert ev | va | po | dr == set(range(240))
    # stratified: the eval set keeps the class ratio (within one patient's images)
    eval_counts = np.bincount(d.labels[d.eval_idx], minlength=2)
    all_counts = np.bincount(d.labels, minlength=2)
    assert abs(eval_counts[1] / len(ev) - all_counts[1] / 240) < 0.05
    # patient-disjoint: no patient has images on both sides of the held-out boundary
    assert d.groups is not None
    assert not set(d.groups[d.eval_idx]) & set(d.groups[d.pool_idx])
    assert not set(d.groups[d.eval_idx]) & set(d.groups[d.val_idx])
    info = d.info
    assert info["source"] == "phantom" and info["resolution"] == 32 and info["splits"] == "holdout"
    assert info["n_images"] == 240 and info["n_quarantined"] == 0 and info["patient_grouped"]
    assert info["class_counts"]["eval"] == {"Normal": int(eval_counts[0]), "COVID": int(eval_counts[1])}
    assert info["leakage"]["mode"] == "drop"
    # what issue 24 builds on: patients (not merged with clusters), sites and lung masks per row
    assert d.patients is not None and len(d.patients) == 240 and len(set(d.patients.tolist())) < 240
    assert d.sites is not None and sorted(set(d.sites.tolist())) == [0, 1, 2] and len(info["site_names"]) == 3
    assert d.lung_masks is not None and d.lung_masks.shape == (240, 32, 32) and set(np.unique(d.lung_masks)) == {0, 1}
    assert ((d.masks == 1) <= (d.lung_masks == 1)).all()  # a finding lies in the lungs


def test_split_and_leakage_files_match(prepared_phantom):
    d = prepared_phantom
    root = Path(d.root)
    sp = json.loads((root / f"splits-{d.info['split_key']}.json").read_text())
    assert sp["eval"] == d.eval_idx.tolist() and sp["val"] == d.val_idx.tolist()
    assert sp["pool"] == d.pool_idx.tolist() and sp["dropped"] == d.dropped_idx.tolist()
    assert sp["settings"]["eval_size"] == 80 and sp["how"] == "holdout"
    assert (root / f"leakage-{d.info['split_key']}.json").is_file()
    assert d.manifest()["image_id"].tolist() == d.ids.tolist()


def test_prepared_data_pickles_small_and_subsets_are_nested(prepared_phantom):
    d = prepared_phantom
    blob = pickle.dumps(d)
    assert len(blob) < 20_000  # indices and a path, never pixels
    d2 = pickle.loads(blob)
    assert np.array_equal(d2.images, d.images)
    a, b = d.subset(20, seed=1), d.subset(60, seed=1)
    assert set(a) <= set(b) <= set(d.pool_idx)


def test_second_prepare_reuses_cache_and_splits(tmp_path, monkeypatch):
    from lungray.data import cache as C

    cfg = DataConfig(phantom_n=60, resolution=16, eval_size=20, val_size=6, **TINY)
    first = prepare_data(cfg, output_dir=tmp_path, progress=False)

    def boom(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(C, "_phantom_rows", boom)
    monkeypatch.setattr(C, "decode_rows", boom)
    second = prepare_data(cfg, output_dir=tmp_path, progress=False)
    assert second.root == first.root
    for k in ("eval_idx", "val_idx", "pool_idx", "dropped_idx"):
        assert np.array_equal(getattr(first, k), getattr(second, k))
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_sizes_larger_than_the_pool_fail_before_returning(tmp_path):
    cfg = DataConfig(phantom_n=60, resolution=16, eval_size=20, val_size=6, **TINY)
    with pytest.raises(DataError) as e:
        prepare_data(cfg, output_dir=tmp_path, sizes=(10, 1000), seeds=(0, 1), progress=False)
    msg = str(e.value)
    assert "1000" in msg and "Normal" in msg and "COVID" in msg


# --------------------------------------------------------------------------------------------
# leakage: planted flipped / rotated / resized / re-encoded copies
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def leaky_tree(tmp_path_factory):
    """40 phantom images of 40 different patients + copies of the first 12: flip, rot90, resized, JPEG.

    One image per patient: two images of one patient share anatomy and are legitimately close,
    which is what patient grouping (not the leakage audit) is for.
    """
    from lungray.data.phantom import generate_phantom

    root = tmp_path_factory.mktemp("leaky")
    ph = generate_phantom(120, resolution=48, seed=3)
    _, first = np.unique(ph.patient_ids, return_index=True)
    chosen = np.sort(first)[:40]
    assert len(chosen) == 40
    copies: dict[str, str] = {}
    for i, k in enumerate(chosen):
        cls = ph.class_names[int(ph.labels[k])]
        (root / cls).mkdir(exist_ok=True)
        Image.fromarray(ph.images[k]).save(root / cls / f"img{i:02d}.png")
        if i < 12:
            kind = ("flip", "rot90", "small", "jpeg")[i % 4]
            img = {"flip": ph.images[k][:, ::-1], "rot90": np.rot90(ph.images[k]), "small": ph.images[k], "jpeg": ph.images[k]}[kind]
            im = Image.fromarray(np.ascontiguousarray(img))
            if kind == "small":
                im = im.resize((36, 36), Image.Resampling.BILINEAR)
            name = f"img{i:02d}_{kind}." + ("jpg" if kind == "jpeg" else "png")
            im.save(root / cls / name, quality=90)
            copies[f"{cls}/{Path(name).stem}"] = f"{cls}/img{i:02d}"
    return root, copies


def _pairs(d: PreparedData, copies: dict[str, str]) -> list[tuple[int, int]]:
    from lungray.data.manifest import hash_image_id, id_salt

    ids = {v: i for i, v in enumerate(d.ids)}  # ids are salted hashes of the relative paths
    h = lambda rel: hash_image_id(rel, id_salt("folder"))  # noqa: E731
    return [(ids[h(c)], ids[h(o)]) for c, o in copies.items()]


@pytest.mark.parametrize("mode", ["drop", "report", "off"])
def test_planted_copies_are_found_and_never_straddle_the_split(leaky_tree, tmp_path, mode):
    """Duplicate clusters are split groups (issue 11.1): with the audit on, every planted copy is
    found and lands on the same side as its original, so nothing is left to drop; with the audit
    off, the same split seed puts copies across the split, as an image-level split does."""
    root, copies = leaky_tree
    cfg = DataConfig(source="folder", path=str(root), resolution=32, eval_size=20, val_size=4, leakage=mode, split_seed=5, **TINY)
    d = prepare_data(cfg, output_dir=tmp_path, progress=False)
    side = {int(r): name for name, rows in (("eval", d.eval_idx), ("val", d.val_idx), ("pool", d.pool_idx)) for r in rows}
    planted = _pairs(d, copies)
    crossing = [(c, o) for c, o in planted if side[c] != side[o]]
    leak_file = Path(d.root) / f"leakage-{d.info['split_key']}.json"
    if mode == "off":
        assert crossing, "the fixture must put a copy across an image-level split"
        assert d.info["leakage"] == {"mode": "off", "grouping": "image-level split (no patient ids; leakage audit off)"}
        assert not leak_file.exists() and len(d.dropped_idx) == 0
        return
    assert crossing == [] and len(d.dropped_idx) == 0
    pairs = pd.read_parquet(next(Path(d.root).glob("duplicates-*.parquet")))
    found = set(zip(pairs.row_a, pairs.row_b))
    assert {(min(c, o), max(c, o)) for c, o in planted} <= found  # every flip / rot90 / resized / JPEG copy
    # each copy is in its original's group; 12 clusters of 2
    assert all(d.groups[c] == d.groups[o] for c, o in planted)
    doc = json.loads(leak_file.read_text())
    assert doc["clusters"]["n_clusters"] == 12 and doc["clusters"]["largest"] == 2
    assert doc["cross_split"]["pool-eval"] == {"sha256": 0, "phash": 0, "keypoints": 0}
    info = d.info["leakage"]
    assert info["cross_split_pairs"] == 0 and info["clusters"] == 12 and info["mode"] == mode
    assert info["grouping"].startswith("image-level split: folder has no patient ids, so the split is grouped only by the audit's duplicate clusters")


@pytest.mark.parametrize("mode", ["drop", "report"])
def test_predefined_split_copies_are_dropped_or_reported(tmp_path, mode):
    """A source's own train/val/test split cannot be regrouped: a train image that copies a test
    image, and a val image that copies a test image, are what ``drop`` removes."""
    from lungray.data.phantom import generate_phantom

    ph = generate_phantom(30, resolution=48, seed=4)
    _, first = np.unique(ph.patient_ids, return_index=True)
    rows, img_dir = [], tmp_path / "imgs"
    img_dir.mkdir()
    picks = np.sort(first)[:14]
    for i, k in enumerate(picks):
        split = "test" if i < 4 else ("val" if i < 6 else "train")
        Image.fromarray(ph.images[k]).save(img_dir / f"{i}.png")
        rows.append((f"imgs/{i}.png", ph.class_names[int(ph.labels[k])], split))
    Image.fromarray(np.ascontiguousarray(ph.images[picks[0]][:, ::-1])).save(img_dir / "copy_train.png")  # train copy of test 0
    Image.fromarray(ph.images[picks[1]]).save(img_dir / "copy_val.png")  # val copy of test 1
    rows += [("imgs/copy_train.png", ph.class_names[int(ph.labels[picks[0]])], "train"),
             ("imgs/copy_val.png", ph.class_names[int(ph.labels[picks[1]])], "val")]
    pd.DataFrame(rows, columns=["path", "label", "split"]).to_csv(tmp_path / "labels.csv", index=False)
    cfg = DataConfig(source="csv", path=str(tmp_path / "labels.csv"), resolution=32, leakage=mode, **TINY)
    d = prepare_data(cfg, output_dir=tmp_path / "out", progress=False)
    from lungray.data.manifest import hash_image_id, id_salt

    ids = list(d.ids)  # salted hashes of the paths relative to the CSV's folder
    copy_train = ids.index(hash_image_id("imgs/copy_train", id_salt("csv:labels.csv")))
    copy_val = ids.index(hash_image_id("imgs/copy_val", id_salt("csv:labels.csv")))
    info = d.info["leakage"]
    assert d.info["splits"] == "predefined" and info["grouping"].startswith("the source's own train/val/test split")
    assert info["pool_images_flagged"] == 1 and info["val_images_flagged"] == 1 and info["cross_split_pairs"] == 2
    if mode == "drop":
        assert d.dropped_idx.tolist() == sorted([copy_train, copy_val]) and info["dropped"] == 2
        assert copy_train not in d.pool_idx and copy_val not in d.val_idx
    else:
        assert len(d.dropped_idx) == 0 and copy_train in d.pool_idx and copy_val in d.val_idx


def test_predefined_splits_are_kept(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "pneumoniamnist.npz"
    np.savez(
        p,
        train_images=rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
        train_labels=(np.arange(30) % 2)[:, None],
        val_images=rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        val_labels=(np.arange(6) % 2)[:, None],
        test_images=rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        test_labels=(np.arange(10) % 2)[:, None],
    )
    d = prepare_data(DataConfig(source="medmnist", path=str(p), resolution=28, leakage="off", **TINY), output_dir=tmp_path, progress=False)
    split = d.manifest()["split"].to_numpy()
    assert d.info["splits"] == "predefined"
    assert (split[d.eval_idx] == "test").all() and len(d.eval_idx) == 10
    assert (split[d.val_idx] == "val").all() and len(d.val_idx) == 6
    assert (split[d.pool_idx] == "train").all() and len(d.pool_idx) == 30
    assert d.class_names == ("Normal", "Pneumonia")
    np.testing.assert_array_equal(d.images[d.eval_idx[0]], np.load(p)["test_images"][0])


def test_strict_fails_before_decoding(tmp_path):
    from lungray.data.phantom import generate_phantom

    imgs = generate_phantom(4, resolution=16).images
    for i, c in enumerate(("A", "A", "B", "B")):
        (tmp_path / "ds" / c).mkdir(parents=True, exist_ok=True)
        Image.fromarray(imgs[i]).save(tmp_path / "ds" / c / f"{i}.png")
    (tmp_path / "ds" / "B" / "zero.png").write_bytes(b"")
    cfg = DataConfig(source="folder", path=str(tmp_path / "ds"), resolution=16, eval_size=1, val_size=1, strict=True)
    with pytest.raises(DataError, match="strict.*zero-byte file"):
        prepare_data(cfg, output_dir=tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "cache").exists()


# --------------------------------------------------------------------------------------------
# augmentation, normalisation, ImageDataset
# --------------------------------------------------------------------------------------------


def test_registries():
    assert AUGMENTATIONS.names() == ["none", "rot15_nearest", "rot30_zoom_flip", "rot_hflip", "shift_shear_zoom"]
    assert NORMALIZATIONS.names() == ["fixed", "imagenet", "keras_caffe", "none", "pool"]
    with pytest.raises(ConfigError, match="unknown augmentation 'flip'; valid choices"):
        build_augmentation("flip", 32)


def test_normalization_stats(prepared_phantom):
    mean, std = normalization_stats("imagenet", None, channels=1)
    assert mean == pytest.approx(0.299 * 0.485 + 0.587 * 0.456 + 0.114 * 0.406)
    assert std == pytest.approx(0.299 * 0.229 + 0.587 * 0.224 + 0.114 * 0.225)
    assert normalization_stats("imagenet", None, channels=3) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    x = np.asarray(prepared_phantom.images[np.sort(prepared_phantom.pool_idx)], np.float64) / 255.0
    m, s = normalization_stats("pool", prepared_phantom)
    assert m == pytest.approx(x.mean()) and s == pytest.approx(x.std(), rel=1e-6)
    assert normalization_stats("none", None, channels=3) == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    with pytest.raises(ConfigError, match="needs the prepared data"):
        normalization_stats("pool", None)


@pytest.mark.parametrize("name", ["rot30_zoom_flip", "rot_hflip", "shift_shear_zoom"])
def test_augmentation_presets_change_the_image_keep_shape_and_range(name):
    rng = np.random.default_rng(0)
    img = rng.random((32, 32)).astype(np.float32)
    pipe = build_augmentation(name, 32)
    changed = 0
    for s in range(5):
        pipe.set_random_seed(s)
        out = np.asarray(pipe(image=img)["image"])
        out = out[..., 0] if out.ndim == 3 else out
        assert out.shape == (32, 32) and out.dtype == np.float32
        assert out.min() >= 0 and out.max() <= 1
        changed += not np.allclose(out, img)
    assert changed >= 4


def test_image_dataset_items_are_exact_without_augmentation(prepared_phantom):
    torch = pytest.importorskip("torch")
    from lungray.data.dataset import ImageDataset

    d = prepared_phantom
    ds = ImageDataset(d, d.eval_idx[:5], mean=0.5, std=0.25)
    assert len(ds) == 5
    x, y, row = ds[2]
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and tuple(x.shape) == (1, 32, 32)
    assert row == int(d.eval_idx[2]) and y == int(d.labels[row])
    expected = (d.images[row].astype(np.float32) / 255.0 - 0.5) / 0.25
    np.testing.assert_allclose(x[0].numpy(), expected, rtol=1e-6, atol=1e-6)
    assert ds.labels.tolist() == d.labels[d.eval_idx[:5]].tolist()


def test_image_dataset_augmentation_is_a_function_of_seed_epoch_row(prepared_phantom):
    pytest.importorskip("torch")
    from lungray.data.dataset import ImageDataset

    d = prepared_phantom
    idx = d.pool_idx[:6]
    a = ImageDataset(d, idx, augmentation="rot30_zoom_flip", seed=7)
    b = ImageDataset(d, idx[::-1].copy(), augmentation="rot30_zoom_flip", seed=7)  # other order
    a.set_epoch(3)
    b.set_epoch(3)
    for i in range(6):
        xa, _, ra = a[i]
        xb, _, rb = b[5 - i]
        assert ra == rb and np.array_equal(xa.numpy(), xb.numpy())
    x3 = a[0][0].numpy()
    a.set_epoch(4)
    assert not np.array_equal(a[0][0].numpy(), x3)  # a new epoch draws new augmentations
    c = ImageDataset(d, idx, augmentation="rot30_zoom_flip", seed=8)
    c.set_epoch(3)
    assert not np.array_equal(c[0][0].numpy(), x3)  # another seed draws others
    resumed = pickle.loads(pickle.dumps(a))  # a worker process / resumed run
    resumed.set_epoch(3)
    assert np.array_equal(resumed[0][0].numpy(), x3)


def test_image_dataset_rejects_bad_arguments(prepared_phantom):
    pytest.importorskip("torch")
    from lungray.data.dataset import ImageDataset

    with pytest.raises(ConfigError, match="indices must lie in"):
        ImageDataset(prepared_phantom, [0, 10_000])
    with pytest.raises(ConfigError, match="unknown augmentation"):
        ImageDataset(prepared_phantom, [0], augmentation="nope")


def test_prepared_root_is_absolute_so_ray_workers_find_it(prepared_phantom, tmp_path, monkeypatch):
    """Ray workers do not run in the driver's cwd: a relative root must be resolved up front."""
    import os
    import pickle
    from dataclasses import replace

    monkeypatch.chdir(Path(prepared_phantom.root).parent)
    rel = replace(prepared_phantom, root=os.path.basename(prepared_phantom.root))
    assert Path(rel.root).is_absolute() and rel.root == prepared_phantom.root
    monkeypatch.chdir(tmp_path)  # elsewhere, as a worker would be
    shipped = pickle.loads(pickle.dumps(rel))
    assert np.array_equal(shipped.labels, prepared_phantom.labels)
