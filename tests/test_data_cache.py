"""The decode cache: exact contents, reuse without decoding, quarantine, atomicity, Ray path."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lungray.config import DataConfig
from lungray.data import cache as C
from lungray.data.adapters import build_manifest
from lungray.data.decode import decode, resize, to_storage
from lungray.data.burnin import content_image
from lungray.data.hashing import dihedral_hashes
from lungray.data.preprocess import apply_preprocessing


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A small class-per-folder tree: 8-bit and 16-bit PNGs, an RGB JPEG, a MONOCHROME1 DICOM."""
    from lungray.data.phantom import generate_phantom, write_dicom

    root = tmp_path_factory.mktemp("tree")
    imgs = generate_phantom(8, resolution=40).images
    (root / "COVID").mkdir()
    (root / "Normal").mkdir()
    for i in range(3):
        Image.fromarray(imgs[i]).save(root / "COVID" / f"c{i}.png")
    Image.fromarray(imgs[3].astype(np.uint16) * 257).save(root / "COVID" / "c16.png")
    Image.fromarray(np.dstack([imgs[4]] * 3)).save(root / "Normal" / "n_rgb.jpg", quality=95)
    Image.fromarray(imgs[5][:, 5:35]).save(root / "Normal" / "n_narrow.png")  # 40 x 30
    write_dicom(root / "Normal" / "n_dcm.dcm", imgs[6], bits=12, photometric="MONOCHROME1", patient_id="RAW-PID-77")
    return root


def _cfg(tree, **kw):
    return DataConfig(source="folder", path=str(tree), resolution=kw.pop("resolution", 16), **kw)


def test_cache_contents_match_decode_resize_preprocess(tree, tmp_path):
    cfg = _cfg(tree, preprocess="clahe")
    m = build_manifest(cfg)
    root = C.build_cache(m, cfg, tmp_path, progress=False, parallel=False)
    assert root.parent == tmp_path and C.is_complete(root)
    images = np.load(root / "images.npy")
    labels = np.load(root / "labels.npy")
    hashes = np.load(root / "hashes.npy")
    man = pd.read_parquet(root / "manifest.parquet")
    meta = json.loads((root / "meta.json").read_text())
    assert images.shape == (7, 16, 16) and images.dtype == np.uint8
    assert hashes.shape == (7, 8) and hashes.dtype == np.uint64
    assert labels.tolist() == man["class_index"].tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert not (root / "masks.npy").exists()
    for i, row in man.iterrows():
        img = decode(row["path"])
        expected = to_storage(apply_preprocessing("clahe", resize(img, 16, "stretch"), 16), "uint8")
        assert np.array_equal(images[i], expected), row["image_id"]
        assert row["sha256"] == hashlib.sha256(Path(row["path"]).read_bytes()).hexdigest()
        assert np.array_equal(hashes[i], dihedral_hashes(content_image(img)))  # burned-in annotations inpainted
        assert row["phash"] == f"{int(hashes[i, 0]):016x}"
        assert (row["height"], row["width"]) == img.shape
    narrow = man[man["path"].str.endswith("/Normal/n_narrow.png")].iloc[0]
    assert (narrow["width"], narrow["height"]) == (30, 40)
    dcm = man[man["path"].str.endswith("/Normal/n_dcm.dcm")].iloc[0]
    assert dcm["modality"] == "CR" and dcm["patient_id"].startswith("p_")
    assert "RAW-PID-77" not in (root / "manifest.parquet").read_bytes().decode("latin-1")
    assert meta["class_names"] == ["COVID", "Normal"] and meta["n_images"] == 7 and meta["n_quarantined"] == 0
    assert meta["resolution"] == 16 and meta["preprocess"] == "clahe" and meta["dtype"] == "uint8"
    assert meta["key"] == root.name


def test_second_run_reuses_without_decoding(tree, tmp_path, monkeypatch):
    cfg = _cfg(tree)
    m = build_manifest(cfg)
    root = C.build_cache(m, cfg, tmp_path, progress=False, parallel=False)
    stamp = (root / "images.npy").stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(C, "decode_rows", boom)
    again = C.build_cache(build_manifest(cfg), cfg, tmp_path, progress=False, parallel=False)
    assert again == root and (root / "images.npy").stat().st_mtime_ns == stamp
    # a different resolution, dtype or preprocessing is a different cache (and would decode)
    for other in (_cfg(tree, resolution=24), _cfg(tree, cache_dtype="uint16"), _cfg(tree, preprocess="hist_eq")):
        with pytest.raises(AssertionError, match="decoded again"):
            C.build_cache(m, other, tmp_path, progress=False, parallel=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [root.name]  # failed builds left nothing


def test_uint16_cache_keeps_16_bit_precision(tree, tmp_path):
    cfg = _cfg(tree, cache_dtype="uint16", resize="letterbox")
    m = build_manifest(cfg)
    root = C.build_cache(m, cfg, tmp_path, progress=False, parallel=False)
    images = np.load(root / "images.npy")
    man = pd.read_parquet(root / "manifest.parquet")
    assert images.dtype == np.uint16
    i = int(np.flatnonzero(man["path"].str.endswith("/COVID/c16.png"))[0])
    assert np.array_equal(images[i], to_storage(resize(decode(man["path"][i]), 16, "letterbox"), "uint16"))
    j = int(np.flatnonzero(man["path"].str.endswith("/Normal/n_narrow.png"))[0])
    assert images[j][:, :2].max() == 0 and images[j][:, -2:].max() == 0  # 40 x 30 letterboxed: black bars


def test_decode_failures_are_quarantined_not_fatal(tree, tmp_path):
    cfg = _cfg(tree)
    m = build_manifest(cfg)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "empty.png").write_bytes(b"")
    extra = m.iloc[[0]].copy()
    extra["image_id"], extra["path"] = "COVID/empty", str(broken / "empty.png")
    m2 = pd.concat([m, extra], ignore_index=True)
    m2.attrs = dict(m.attrs)
    root = C.build_cache(m2, cfg, tmp_path / "c", progress=False, parallel=False)
    q = C.load_quarantined(root)
    assert q["image_id"].tolist() == ["COVID/empty"] and q["problem"].tolist() == ["zero-byte file"]
    assert np.load(root / "images.npy").shape[0] == 7
    assert json.loads((root / "meta.json").read_text())["n_quarantined"] == 1


def test_a_crash_leaves_no_half_cache(tree, tmp_path, monkeypatch):
    cfg = _cfg(tree)
    m = build_manifest(cfg)
    real = C.decode_rows
    calls = {"n": 0}

    def dies_on_second_chunk(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(C, "decode_rows", dies_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        C.build_cache(m, cfg, tmp_path, progress=False, parallel=False, chunk_rows=2)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(C, "decode_rows", real)
    root = C.build_cache(m, cfg, tmp_path, progress=False, parallel=False, chunk_rows=2)
    assert C.is_complete(root) and np.load(root / "images.npy").shape == (7, 16, 16)


def test_phantom_cache_has_masks_and_generated_pixels(tmp_path):
    from lungray.data.phantom import generate_phantom

    cfg = DataConfig(phantom_n=12, resolution=16)
    root = C.build_cache(build_manifest(cfg), cfg, tmp_path, progress=False)
    ph = generate_phantom(12, resolution=16)
    assert np.array_equal(np.load(root / "images.npy"), ph.images)
    assert np.array_equal(np.load(root / "masks.npy"), ph.masks)
    assert np.array_equal(np.load(root / "lung_masks.npy"), ph.lung_masks) and json.loads((root / "meta.json").read_text())["lung_masks"]
    assert np.array_equal(np.load(root / "labels.npy"), ph.labels)
    man = pd.read_parquet(root / "manifest.parquet")
    assert man["sha256"].iloc[3] == hashlib.sha256(ph.images[3].tobytes()).hexdigest()
    assert man["site"].tolist() == [f"site-{s}" for s in ph.sites]
    # phantom rows are hashed and described like decoded files (issue 18: the keypoint stage runs)
    assert np.array_equal(np.load(root / "hashes.npy")[5], dihedral_hashes(content_image(ph.images[5])))
    feats = C.load_features(root)
    from lungray.data.keypoints import describe

    want = describe(ph.images[5])
    assert (feats.count > 0).all() and np.array_equal(feats.count[5], want[2]) and np.array_equal(feats.desc[5], want[0])


def test_ray_parallel_decode_equals_serial(tree, tmp_path):
    pytest.importorskip("ray")
    cfg = _cfg(tree)
    m = build_manifest(cfg)
    serial = C.build_cache(m, cfg, tmp_path / "serial", progress=False, parallel=False)
    par = C.build_cache(m, cfg, tmp_path / "ray", progress=True, parallel=True, num_cpus=1, chunk_rows=3)
    for f in ("images.npy", "labels.npy", "hashes.npy"):
        assert np.array_equal(np.load(serial / f), np.load(par / f)), f
    pd.testing.assert_frame_equal(pd.read_parquet(serial / "manifest.parquet"), pd.read_parquet(par / "manifest.parquet"))
    import ray

    assert not ray.is_initialized()  # the cache shut down the Ray it started
