"""Segmentation masks in the prepared cache: RSNA boxes, phantom lesions, Radiography lung masks.

Every expected pixel count below is worked out by hand in the comments (a cache pixel is inside a
box when its centre is: columns j with x0 <= j + 1/2 < x1 after mapping x0, x1 to the cache).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lungray.config import DataConfig
from lungray.data import PreparedData, prepare_data
from lungray.data import cache as C
from lungray.data.adapters import build_manifest
from lungray.data.decode import resize
from lungray.data.manifest import hash_patient_id, id_salt, manifest_fingerprint
from lungray.data.masks import IGNORE, box_mask, fit_mask, mask_fingerprint, mask_kind_of, placement
from lungray.errors import ConfigError


def _rect(r: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """A 0/1 (r, r) mask with rows[0]..rows[1] and cols[0]..cols[1] set (inclusive)."""
    m = np.zeros((r, r), dtype=np.uint8)
    m[rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = 1
    return m


# --------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(40, 30), (30, 40), (512, 1024), (7, 19), (16, 16)])
@pytest.mark.parametrize("mode", ["stretch", "letterbox"])
def test_placement_is_where_resize_puts_the_image(shape, mode):
    nh, nw, top, left = placement(shape[0], shape[1], 16, mode)
    out = resize(np.ones(shape, np.float32), 16, mode)
    rows, cols = np.flatnonzero(out.max(1) > 0), np.flatnonzero(out.max(0) > 0)
    assert (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1) == (top, top + nh, left, left + nw)


def test_box_mask_hand_counts():
    # 1024 -> 32: 32 native px per cache px. x 100..400 -> 3.125..12.5: centres 3.5..11.5 (9 cols);
    # y 200..350 -> 6.25..10.9375: centres 6.5..10.5 (5 rows): 45 pixels
    m = box_mask([[100, 200, 300, 150]], 1024, 1024, 32)
    assert m.dtype == np.uint8 and np.array_equal(m, _rect(32, (6, 10), (3, 11)))
    # a box edge exactly on a pixel centre: x1 = 12.5 excludes column 12, x0 = 3.5 would include 3
    assert box_mask([[112, 0, 288, 32]], 1024, 1024, 32).sum() == 9 * 1  # 3.5..12.5: cols 3..11
    # touching boxes never overlap and never leave a gap (half-open intervals)
    a, b = box_mask([[0, 0, 512, 1024]], 1024, 1024, 32), box_mask([[512, 0, 512, 1024]], 1024, 1024, 32)
    assert (a & b).sum() == 0 and (a | b).sum() == 32 * 32
    # clipped to the image; empty and negative boxes set nothing
    assert box_mask([[-100, -100, 164, 132]], 1024, 1024, 32).sum() == 2 * 1  # 0..2 x 0..1
    assert box_mask([[10, 10, 0, 50], [10, 10, -5, 50]], 1024, 1024, 32).sum() == 0
    # letterbox of a 512 x 1024 image at 32: 16 x 32 at top 8. y 128..384 -> 8 + 4..12
    lb = box_mask([[256, 128, 512, 256]], 512, 1024, 32, "letterbox")
    assert np.array_equal(lb, _rect(32, (12, 19), (8, 23)))


def test_fit_mask_resizes_to_the_image_placement():
    m = np.zeros((32, 32), np.uint8)
    m[8:24, 4:20] = 255  # a 32 px mask for a 40 px image: same field of view
    assert np.array_equal(fit_mask(m, 40, 40, 16), _rect(16, (4, 11), (2, 9)))
    tall = np.zeros((32, 16), np.uint8)
    tall[8:24, 4:12] = 1  # for a 40 x 20 image: letterboxed to 16 x 8 at left 4
    assert np.array_equal(fit_mask(tall, 40, 20, 16, "letterbox"), _rect(16, (4, 11), (6, 9)))


# --------------------------------------------------------------------------------------------
# RSNA: pydicom-made DICOMs + the real labels CSV, through the rsna adapter and prepare_data
# --------------------------------------------------------------------------------------------

# patientId -> (rows, cols, boxes [x, y, w, h] in the challenge's 1024 x 1024 space; [] = Target 0)
RSNA_CASES = {
    "0a0f91dc-6015-4342-b809-d19610854a21": (1024, 1024, [[100, 200, 300, 150], [600, 500, 200, 300], [350, 250, 100, 100]]),
    "0a1b2c3d-0000-4000-8000-000000000002": (1024, 1024, [[0, 0, 64, 32]]),
    "0a1b2c3d-0000-4000-8000-000000000003": (512, 1024, [[256, 256, 512, 512]]),  # boxes in the 1024 x 1024 space
    "0a1b2c3d-0000-4000-8000-000000000004": (1024, 1024, [[700, 100, 96, 600]]),
    "0b1b2c3d-0000-4000-8000-000000000005": (1024, 1024, []),
    "0b1b2c3d-0000-4000-8000-000000000006": (1024, 1024, []),
    "0b1b2c3d-0000-4000-8000-000000000007": (512, 1024, []),
    "0b1b2c3d-0000-4000-8000-000000000008": (1024, 1024, []),
}
P = list(RSNA_CASES)

# the expected masks at 32 px, by hand
# P0 (square, same in both modes): box 1 rows 6..10 x cols 3..11 (45); box 2 x 600..800 ->
#   18.75..25 -> cols 19..24, y 500..800 -> 15.625..25 -> rows 16..24 (54); box 3 x 350..450 ->
#   10.9375..14.0625 -> cols 11..13, y 250..350 -> 7.8125..10.9375 -> rows 8..10 (9), of which
#   col 11 x rows 8..10 (3) lie in box 1: union 45 + 54 + 9 - 3 = 105
# P1: x 0..2 -> cols 0..1, y 0..1 -> row 0: 2
# P2 (512 x 1024): the box y 256..768 of the 1024 space is 128..384 of the DICOM's 512 rows;
#   stretch x 256..768 -> 8..24 (16 cols), y 128..384 at 32/512 -> 8..24 (16 rows):
#   256; letterbox 16 x 32 at top 8: rows 8 + 4..12 -> 12..19 (8 rows) x 16 cols: 128
# P3: x 700..796 -> 21.875..24.875 -> cols 22..24 (3), y 100..700 -> 3.125..21.875 -> rows 3..21 (19): 57
EXPECTED_STRETCH = {
    P[0]: _rect(32, (6, 10), (3, 11)) | _rect(32, (16, 24), (19, 24)) | _rect(32, (8, 10), (11, 13)),
    P[1]: _rect(32, (0, 0), (0, 1)),
    P[2]: _rect(32, (8, 23), (8, 23)),
    P[3]: _rect(32, (3, 21), (22, 24)),
}
COUNTS_STRETCH = {P[0]: 105, P[1]: 2, P[2]: 256, P[3]: 57}
COUNTS_LETTERBOX = {P[0]: 105, P[1]: 2, P[2]: 128, P[3]: 57}


def write_rsna_tree(root: Path) -> Path:
    """The RSNA layout with :data:`RSNA_CASES`: pydicom-made DICOMs (random pixels) and the
    challenge's labels CSV, one row per box (also used by tests/test_sweep_segmentation.py)."""
    from lungray.data.phantom import write_dicom

    rng = np.random.default_rng(0)
    lines = ["patientId,x,y,width,height,Target"]
    for pid, (h, w, boxes) in RSNA_CASES.items():
        write_dicom(root / "stage_2_train_images" / f"{pid}.dcm", rng.integers(0, 256, (h, w), dtype=np.uint8), patient_id=pid, image_id=pid)
        if not boxes:
            lines.append(f"{pid},,,,,0")
        for x, y, bw, bh in boxes:  # one CSV row per box, as in the challenge's file
            lines.append(f"{pid},{float(x)},{float(y)},{float(bw)},{float(bh)},1")
    (root / "stage_2_train_labels.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def rsna_tree(tmp_path_factory):
    return write_rsna_tree(tmp_path_factory.mktemp("rsna"))


def _rsna(rsna_tree, tmp_path, mode):
    cfg = DataConfig(source="rsna", path=str(rsna_tree), resolution=32, resize=mode, eval_size=2, val_size=2, leakage="off",
                     min_eval_per_class=1, min_val_per_class=1)  # a few-file fixture
    d = prepare_data(cfg, output_dir=tmp_path, progress=False, parallel=False)
    ids = list(d.ids)
    row = {pid: ids.index("rsna_" + hash_patient_id(pid, id_salt("rsna"))[2:]) for pid in P}
    return d, row


@pytest.mark.parametrize("mode,counts", [("stretch", COUNTS_STRETCH), ("letterbox", COUNTS_LETTERBOX)])
def test_rsna_masks_are_the_filled_boxes(rsna_tree, tmp_path, mode, counts):
    d, row = _rsna(rsna_tree, tmp_path, mode)
    assert d.mask_kind == "lesion_boxes" and d.info["mask_kind"] == "lesion_boxes"
    assert d.masks.shape == (8, 32, 32) and d.masks.dtype == np.uint8
    for pid in P:
        got = np.asarray(d.masks[row[pid]])
        assert int(got.sum()) == counts.get(pid, 0), pid  # Target=0 patients: empty masks
        assert set(np.unique(got)) <= {0, 1}
        if mode == "stretch" and pid in EXPECTED_STRETCH:
            assert np.array_equal(got, EXPECTED_STRETCH[pid]), pid
    if mode == "letterbox":  # the 512 x 1024 patient: mask inside the image band, none in the bars
        m = np.asarray(d.masks[row[P[2]]])
        assert np.array_equal(m, _rect(32, (12, 19), (8, 23)))
        img = np.asarray(d.images[row[P[2]]])
        assert img[:8].max() == 0 and img[24:].max() == 0  # black bars where the mask cannot be
    # labels still follow Target; the masks agree with them row by row
    pos = np.asarray(d.masks).reshape(8, -1).any(1)
    assert np.array_equal(pos, np.asarray(d.labels) == d.class_names.index("Lung Opacity"))


def test_cache_from_before_masks_is_not_reused(rsna_tree, tmp_path):
    cfg = DataConfig(source="rsna", path=str(rsna_tree), resolution=32)
    m = build_manifest(cfg)
    kind = mask_kind_of(m)
    assert kind == "lesion_boxes" and mask_fingerprint(m, kind) != ""
    old_key = C.cache_key(manifest_fingerprint(m), 32, "stretch", "none", "uint8")  # the key without masks
    old = tmp_path / old_key
    old.mkdir()
    (old / "meta.json").write_text(json.dumps({"key": old_key}))  # a complete, mask-less cache
    root = C.build_cache(m, cfg, tmp_path, progress=False, parallel=False)
    assert root != old and (root / "masks.npy").is_file()
    assert json.loads((root / "meta.json").read_text())["mask_kind"] == "lesion_boxes"
    # and a PreparedData on a cache whose meta names no mask kind has no masks
    np.save(old / "masks.npy", np.zeros((1, 32, 32), np.uint8))
    assert PreparedData(root=str(old), class_names=("a",), eval_idx=np.zeros(0), val_idx=np.zeros(0), pool_idx=np.zeros(0)).masks is None
    # other boxes are another cache
    m2 = m.copy()
    m2.loc[m2["boxes"] != "[]", "boxes"] = "[[0.0, 0.0, 10.0, 10.0]]"
    m2.attrs = dict(m.attrs)
    assert mask_fingerprint(m2, kind) != mask_fingerprint(m, kind)


@pytest.mark.slow
def test_rsna_masks_decoded_by_ray_tasks_equal_serial(rsna_tree, tmp_path):
    pytest.importorskip("ray")
    cfg = DataConfig(source="rsna", path=str(rsna_tree), resolution=32, resize="letterbox")
    m = build_manifest(cfg)
    serial = C.build_cache(m, cfg, tmp_path / "serial", progress=False, parallel=False)
    par = C.build_cache(m, cfg, tmp_path / "ray", progress=False, parallel=True, num_cpus=1, chunk_rows=3)
    assert np.array_equal(np.load(serial / "masks.npy"), np.load(par / "masks.npy"))
    assert np.load(par / "masks.npy").sum() == sum(COUNTS_LETTERBOX.values())


# --------------------------------------------------------------------------------------------
# masks follow every preprocessing (issue 21.2) and RSNA boxes on DICOMs of any size (21.3)
# --------------------------------------------------------------------------------------------

#: (rows, cols) of the planted-box DICOMs: the challenge's 1024, resized copies, a non-square one
PLANTED_SIZES = [(1024, 1024), (256, 256), (64, 64), (64, 64), (200, 160), (96, 128), (256, 256), (64, 64)]
#: boxes in the challenge's 1024 x 1024 space, one or two per image
PLANTED_BOXES = [
    [[100, 200, 300, 150]], [[600, 500, 200, 300]], [[350, 250, 400, 400]], [[60, 600, 250, 250], [700, 100, 200, 500]],
    [[300, 300, 300, 300]], [[500, 100, 320, 480]], [[0, 0, 280, 220]], [[740, 740, 280, 280]],
]


def write_planted_rsna_tree(root: Path, sizes=PLANTED_SIZES, boxes=PLANTED_BOXES, negatives: int = 2) -> Path:
    """RSNA layout whose DICOM pixels show the boxes: 220 inside, 30 +- 12 outside, each box drawn
    at its place in the DICOM's own size (the 1024-space box scaled by rows/1024, cols/1024)."""
    from lungray.data.phantom import write_dicom

    rng = np.random.default_rng(7)
    lines = ["patientId,x,y,width,height,Target"]
    for i, ((h, w), bx) in enumerate(zip(sizes, boxes)):
        pid = f"9a9a9a9a-0000-4000-8000-{i:012d}"
        img = np.clip(30 + rng.normal(0, 12, (h, w)), 0, 255)
        for x, y, bw, bh in bx:
            sx, sy = w / 1024, h / 1024
            img[round(y * sy) : round((y + bh) * sy), round(x * sx) : round((x + bw) * sx)] = 220
        write_dicom(root / "stage_2_train_images" / f"{pid}.dcm", img.astype(np.uint8), patient_id=pid, image_id=pid)
        lines += [f"{pid},{float(x)},{float(y)},{float(bw)},{float(bh)},1" for x, y, bw, bh in bx]
    for j in range(negatives):
        pid = f"9b9b9b9b-0000-4000-8000-{j:012d}"
        img = np.clip(30 + rng.normal(0, 12, (64, 64)), 0, 255).astype(np.uint8)  # not blank: a blank image is quarantined
        write_dicom(root / "stage_2_train_images" / f"{pid}.dcm", img, patient_id=pid, image_id=pid)
        lines.append(f"{pid},,,,,0")
    (root / "stage_2_train_labels.csv").write_text("\n".join(lines) + "\n")
    return root


def _alignment(img: np.ndarray, mask: np.ndarray, margin: int = 4) -> float:
    """IoU of the mask and the image's bright region near it: the ``k`` brightest pixels of the
    box around the mask (``margin`` pixels wider), ``k`` the mask's area. A rank, not a level,
    so a photometric step (equalisation spreads the background over the whole range, locally
    or not) changes nothing: only where the pixels are counts."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    r0, r1 = max(rows[0] - margin, 0), min(rows[-1] + margin + 1, mask.shape[0])
    c0, c1 = max(cols[0] - margin, 0), min(cols[-1] + margin + 1, mask.shape[1])
    win, m = img[r0:r1, c0:c1].astype(float).ravel(), mask[r0:r1, c0:c1].ravel() == 1
    bright = np.zeros(win.size, dtype=bool)
    bright[np.argsort(-win, kind="stable")[: int(m.sum())]] = True
    return float((bright & m).sum() / (bright | m).sum())


def _every_preprocessing() -> list[str]:
    from lungray.data.preprocess import PREPROCESSING

    return sorted(PREPROCESSING.names()) + ["center_crop+clahe"]


@pytest.fixture(scope="module")
def planted_rsna(tmp_path_factory):
    return write_planted_rsna_tree(tmp_path_factory.mktemp("planted_rsna"))


@pytest.mark.parametrize("mode", ["stretch", "letterbox"])
@pytest.mark.parametrize("preprocess", _every_preprocessing())
def test_rsna_masks_follow_every_preprocessing_on_dicoms_of_every_size(planted_rsna, tmp_path, preprocess, mode):
    """Each mask lies on its image's bright box, whatever the preprocessing and the DICOM's size."""
    cfg = DataConfig(source="rsna", path=str(planted_rsna), resolution=64, resize=mode, preprocess=preprocess)
    root = C.build_cache(build_manifest(cfg), cfg, tmp_path, progress=False, parallel=False)
    images, masks = np.load(root / "images.npy"), np.load(root / "masks.npy")
    man = pd.read_parquet(root / "manifest.parquet")
    pos = np.flatnonzero(man["boxes"].to_numpy() != "[]")
    assert len(pos) == len(PLANTED_SIZES) and len(man) == len(PLANTED_SIZES) + 2
    assert (masks[np.setdiff1d(np.arange(len(man)), pos)] == 0).all()
    ious = [_alignment(images[i], masks[i]) for i in pos]
    # only the resampled edge may differ: one pixel ring around boxes of 5-25 px a side
    assert min(ious) > 0.75 and np.median(ious) > 0.85, (preprocess, mode, np.round(ious, 3))
    if "center_crop" in preprocess:
        # the uncropped geometry (the bug of issue 21.2) does not line up: the check has teeth
        naive = [box_mask(json.loads(man["boxes"][i]), int(man["height"][i]), int(man["width"][i]), 64, mode, box_space=(1024, 1024))
                 for i in pos]
        assert np.median([_alignment(images[i], m) for i, m in zip(pos, naive)]) < 0.8


def test_rsna_boxes_on_64_px_dicoms_are_the_1024_masks_scaled_and_data_check_names_them(tmp_path, capsys, caplog):
    """Issue 21.3: 64 x 64 copies of the challenge's DICOMs kept every box (it used to empty them)."""
    from lungray.data.check import check_dataset

    sizes = [(64, 64)] * len(PLANTED_BOXES)
    tree = write_planted_rsna_tree(tmp_path / "rsna64", sizes=sizes)
    ref_tree = write_planted_rsna_tree(tmp_path / "rsna1024", sizes=[(1024, 1024)] * len(PLANTED_BOXES), negatives=0)
    cfg = DataConfig(source="rsna", path=str(tree), resolution=32)
    with caplog.at_level(logging.WARNING, logger="lungray.data.cache"):
        root = C.build_cache(build_manifest(cfg), cfg, tmp_path / "c64", progress=False, parallel=False)
    ref_cfg = DataConfig(source="rsna", path=str(ref_tree), resolution=32)
    ref_root = C.build_cache(build_manifest(ref_cfg), ref_cfg, tmp_path / "c1024", progress=False, parallel=False)
    man, ref_man = pd.read_parquet(root / "manifest.parquet"), pd.read_parquet(ref_root / "manifest.parquet")
    masks, ref = np.load(root / "masks.npy"), dict(zip(ref_man["image_id"], np.load(ref_root / "masks.npy")))
    pos = [i for i, b in enumerate(man["boxes"]) if b != "[]"]
    assert len(pos) == len(PLANTED_BOXES)
    for i in pos:  # the same 1024-space boxes at 32 px: the same masks, exactly
        assert masks[i].sum() > 0 and np.array_equal(masks[i], ref[man["image_id"][i]]), man["image_id"][i]
    # a hand case: [100, 200, 300, 150] at 32 px is columns 3..11 x rows 6..10 on a 64 px copy too
    first = man.index[man["boxes"] == json.dumps([[100.0, 200.0, 300.0, 150.0]])][0]
    assert np.array_equal(masks[first], _rect(32, (6, 10), (3, 11)))
    # the cache says so once; `lungray data check` (decoding) names the files by hashed id only
    assert f"{len(PLANTED_BOXES) + 2} RSNA DICOM(s) are not 1024 x 1024 (64 x 64: {len(PLANTED_BOXES) + 2};" in caplog.text
    report = check_dataset(cfg, echo=print, decode_files=True)
    out = capsys.readouterr().out
    (note,) = [n for n in report.notes if "not 1024 x 1024" in n]
    assert note in out and "scaled to each file's size" in note and "rsna_" in note
    assert "9a9a9a9a" not in out and "9b9b9b9b" not in out  # the patient ids (file names) never appear
    assert not any("1024" in line for line in report.problems)  # information, not a problem
    ref_report = check_dataset(ref_cfg, echo=None, decode_files=True)
    assert not any("not 1024 x 1024" in n for n in ref_report.notes)


def test_phantom_and_lung_masks_follow_center_crop(tmp_path):
    """The raster path (phantom lesions, Radiography lung masks) through a geometric step."""
    from lungray.data.masks import preprocess_mask
    from lungray.data.phantom import generate_phantom
    from lungray.data.preprocess import apply_preprocessing

    cfg = DataConfig(phantom_n=12, resolution=32, preprocess="center_crop")
    root = C.build_cache(build_manifest(cfg), cfg, tmp_path / "ph", progress=False)
    ph = generate_phantom(12, resolution=32)
    masks = np.load(root / "masks.npy")
    assert np.array_equal(masks, np.stack([preprocess_mask(m, "center_crop") for m in ph.masks]))
    assert not np.array_equal(masks, ph.masks)
    crop = np.stack([apply_preprocessing("center_crop", x.astype(np.float32) / 255, 32) for x in ph.images])
    assert np.abs(np.load(root / "images.npy") / 255.0 - crop).max() <= 0.5 / 255 + 1e-6
    # unknown pixels stay unknown and win on the edge; a photometric step moves nothing
    unknown = np.full((32, 32), IGNORE, np.uint8)
    assert (preprocess_mask(unknown, "center_crop") == IGNORE).all()
    assert np.array_equal(preprocess_mask(ph.masks[1], "clahe+hist_eq+local_eq"), ph.masks[1])


@pytest.mark.parametrize("preprocess", _every_preprocessing())
def test_lung_masks_follow_every_preprocessing(tmp_path, preprocess):
    """Radiography layout: each image's bright region IS its (smaller) lung mask file."""
    root = tmp_path / "COVID-19_Radiography_Dataset"
    rng = np.random.default_rng(4)
    for cls in ("COVID", "Normal"):
        for i in range(3):
            m = np.zeros((48, 48), np.uint8)  # the mask file at 48 px for a 60 px image, same field of view
            r, c = rng.integers(4, 20, size=2)
            m[r : r + 22, c : c + 16] = 255
            img = np.clip(30 + rng.normal(0, 10, (60, 60)), 0, 255)
            img[np.asarray(Image.fromarray(m).resize((60, 60), Image.NEAREST)) > 127] = 210
            _png(root / cls / "images" / f"{cls}-{i}.png", img.astype(np.uint8))
            _png(root / cls / "masks" / f"{cls}-{i}.png", m)
    cfg = DataConfig(source="covid_radiography", path=str(root), resolution=64, preprocess=preprocess)
    cache = C.build_cache(build_manifest(cfg), cfg, tmp_path / "c", progress=False, parallel=False)
    images, masks = np.load(cache / "images.npy"), np.load(cache / "masks.npy")
    ious = [_alignment(x, m) for x, m in zip(images, masks)]
    assert min(ious) > 0.75 and np.median(ious) > 0.85, (preprocess, np.round(ious, 3))


# --------------------------------------------------------------------------------------------
# phantom lesion masks round-trip through the cache
# --------------------------------------------------------------------------------------------


def test_phantom_masks_round_trip(prepared_phantom):
    from lungray.data.phantom import generate_phantom

    d = prepared_phantom
    assert d.mask_kind == "lesion"
    ph = generate_phantom(240, n_classes=2, resolution=32)
    order = [list(ph.ids).index(i) for i in d.ids]
    assert np.array_equal(np.asarray(d.masks), ph.masks[order])
    normal = np.asarray(d.labels) == d.class_names.index("Normal")
    area = np.asarray(d.masks).reshape(len(d.labels), -1).sum(1)
    assert (area[normal] == 0).all() and (area[~normal] > 0).mean() > 0.9


# --------------------------------------------------------------------------------------------
# COVID-19 Radiography Database: <Class>/images + <Class>/masks
# --------------------------------------------------------------------------------------------


def _png(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


@pytest.fixture()
def radiography_tree(tmp_path):
    root = tmp_path / "COVID-19_Radiography_Dataset"
    rng = np.random.default_rng(1)
    lung = np.zeros((32, 32), np.uint8)
    lung[8:24, 4:20] = 255  # 32 px masks for 40 px images (the release: 256 for 299)
    for cls in ("COVID", "Normal", "Lung_Opacity", "Viral Pneumonia"):
        for i in range(3):
            _png(root / cls / "images" / f"{cls}-{i + 1}.png", rng.integers(0, 256, (40, 40), dtype=np.uint8))
            _png(root / cls / "masks" / f"{cls}-{i + 1}.png", lung)
    (root / "Normal" / "masks" / "Normal-3.png").unlink()  # an image without its mask
    (root / "COVID" / "masks" / "COVID-2.png").write_bytes(b"not a png")  # an unreadable mask
    return root


def test_radiography_lung_masks(radiography_tree, tmp_path, caplog):
    cfg = DataConfig(source="covid_radiography", path=str(radiography_tree), resolution=16, eval_size=4, val_size=0, leakage="off",
                     min_eval_per_class=1, min_val_per_class=1)  # a few-file fixture
    from lungray.data.manifest import hash_image_id, id_salt

    h = lambda rel: hash_image_id(rel, id_salt("covid_radiography"))  # noqa: E731  (ids are salted hashes)
    m = build_manifest(cfg)
    by_id = dict(zip(m["image_id"], m["mask_path"]))
    assert by_id[h("COVID/images/COVID-1")] == str(radiography_tree / "COVID" / "masks" / "COVID-1.png")
    assert by_id[h("Normal/images/Normal-3")] == ""
    with caplog.at_level(logging.WARNING, logger="lungray.data.cache"):
        d = prepare_data(cfg, output_dir=tmp_path, progress=False, parallel=False)
    assert d.mask_kind == "lung" and d.masks.shape == (12, 16, 16) and len(d.labels) == 12  # no image lost
    rows = {i: k for k, i in enumerate(d.ids)}
    expected = _rect(16, (4, 11), (2, 9))  # 32 -> 16 px: rows 8..23 -> 4..11, cols 4..19 -> 2..9
    for image_id, k in rows.items():
        got = np.asarray(d.masks[k])
        if image_id in (h("Normal/images/Normal-3"), h("COVID/images/COVID-2")):
            assert (got == IGNORE).all(), image_id  # unknown, not "no lung"
        else:
            assert np.array_equal(got, expected), image_id
    assert d.meta()["n_masks_unknown"] == 2
    assert "1 mask file(s) could not be used" in caplog.text and "COVID/masks/COVID-2.png" in caplog.text  # names the mask file (image ids are hashes)


def test_radiography_without_mask_folders_has_no_masks(tmp_path):
    root = tmp_path / "flat"
    rng = np.random.default_rng(2)
    for cls in ("COVID", "Normal"):
        for i in range(6):
            _png(root / cls / f"{cls}-{i}.png", rng.integers(0, 256, (20, 20), dtype=np.uint8))
    cfg = DataConfig(source="covid_radiography", path=str(root), resolution=16, eval_size=2, val_size=2, leakage="off",
                     min_eval_per_class=1, min_val_per_class=1)  # a few-file fixture
    d = prepare_data(cfg, output_dir=tmp_path / "out", progress=False, parallel=False)
    assert d.mask_kind is None and d.masks is None and not (Path(d.root) / "masks.npy").exists()
    with pytest.raises(ConfigError, match="has no masks"):
        from lungray.data.dataset import ImageDataset

        ImageDataset(d, d.pool_idx, target="mask")


# --------------------------------------------------------------------------------------------
# ImageDataset(target="mask"): one geometric transform for image and mask
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def squares(tmp_path_factory):
    """8 images whose bright square IS the mask (value 230 inside, 25 outside)."""
    root = tmp_path_factory.mktemp("squares")
    rng = np.random.default_rng(3)
    masks = np.zeros((8, 32, 32), np.uint8)
    for i in range(8):
        r, c = rng.integers(2, 14, size=2)
        masks[i, r : r + 14, c : c + 12] = 1
    images = np.where(masks == 1, 230, 25).astype(np.uint8)
    np.save(root / "images.npy", images)
    np.save(root / "masks.npy", masks)
    np.save(root / "labels.npy", np.zeros(8, np.int64))
    (root / "meta.json").write_text(json.dumps({"mask_kind": "lesion"}))
    idx = np.arange(8)
    return PreparedData(root=str(root), class_names=("a",), eval_idx=idx[:0], val_idx=idx[:0], pool_idx=idx)


def _moving_augmentations() -> list[str]:
    from lungray.data.augment import AUGMENTATIONS

    return [a for a in AUGMENTATIONS.names() if a != "none"]


def test_every_augmentation_is_checked_for_alignment():
    from lungray.data.augment import AUGMENTATIONS

    assert set(_moving_augmentations()) == set(AUGMENTATIONS.names()) - {"none"}
    assert len(_moving_augmentations()) >= 4


@pytest.mark.parametrize("aug", _moving_augmentations())
def test_joint_augmentation_keeps_image_and_mask_aligned(squares, aug):
    from lungray.data.dataset import ImageDataset

    seg = ImageDataset(squares, np.arange(8), augmentation=aug, seed=5, target="mask")
    cls = ImageDataset(squares, np.arange(8), augmentation=aug, seed=5)
    moved = 0
    for epoch in range(3):
        seg.set_epoch(epoch)
        cls.set_epoch(epoch)
        for i in range(8):
            x, y, row = seg[i]
            xc, label, row_c = cls[i]
            assert torch_equal(x, xc) and row == row_c == i and label == 0  # same image stream
            assert y.shape == (32, 32) and str(y.dtype) == "torch.int64" and set(y.unique().tolist()) <= {0, 1}
            bright = x[0].numpy() > 0.5
            mask = y.numpy() == 1
            inter, union = (bright & mask).sum(), (bright | mask).sum()
            assert inter / union > 0.85, (aug, epoch, i)  # only the bilinear edge may differ
            moved += not np.array_equal(mask, squares.masks[i] == 1)
    assert moved > 12  # the transform really moved the masks


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_mask_target_without_augmentation_is_the_cached_mask(squares):
    from lungray.data.dataset import ImageDataset

    ds = ImageDataset(squares, [3, 5], target="mask")
    assert np.array_equal(ds[1][1].numpy(), squares.masks[5])
    with pytest.raises(ConfigError, match="target 'masks' is not valid"):
        ImageDataset(squares, [0], target="masks")
