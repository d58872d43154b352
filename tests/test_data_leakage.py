"""Hashing and the leakage audit: planted resized, JPEG re-encoded, flipped and rotated copies of
evaluation images are found with the right transform; distinct phantom images are not."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from lungray.data import leakage
from lungray.data.hashing import (
    DIHEDRAL,
    apply_dihedral,
    dihedral_hashes,
    dihedral_hashes_batch,
    from_hex,
    hamming,
    phash64,
    phash_batch,
    sha256_bytes,
    sha256_file,
    to_hex,
)
from lungray.data.leakage import audit_leakage
from lungray.errors import ConfigError, DataError

MAX_DISTANCE = 6  # data.leakage_max_distance default


@pytest.fixture(scope="module")
def phantom():
    from lungray.data.phantom import generate_phantom

    return generate_phantom(160, n_classes=2, resolution=64, seed=7, series_fraction=0.0)  # one slice per series would match its neighbours


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    import cv2

    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)


def _resize(img: np.ndarray, size: int, interp: str = "area") -> np.ndarray:
    import cv2

    flag = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}[interp]
    return cv2.resize(img, (size, size), interpolation=flag)


# -- hashing -----------------------------------------------------------------------------------


def test_sha256_streams_files(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 300_001, dtype=np.uint8).tobytes()
    p = tmp_path / "blob.bin"
    p.write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    assert sha256_file(p) == want
    assert sha256_file(p, chunk_size=4096) == want  # many chunks, a short last one
    assert sha256_bytes(data) == want
    assert sha256_bytes(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_hamming_by_hand():
    assert hamming(0b1011, 0b0001) == 2
    assert hamming(np.uint64(2**64 - 1), 0) == 64
    assert hamming(5, 5) == 0
    d = hamming(np.array([0, 1, 3], dtype=np.uint64)[:, None], np.array([0, 7], dtype=np.uint64)[None, :])
    assert d.tolist() == [[0, 3], [1, 2], [2, 1]]
    assert from_hex(to_hex(np.uint64(0xDEADBEEF00000001))) == 0xDEADBEEF00000001
    assert to_hex(np.array([1, 255], dtype=np.uint64)).tolist() == ["0000000000000001", "00000000000000ff"]
    assert from_hex(np.array(["ff", "10"])).tolist() == [255, 16]


def test_dihedral_hashes_equal_hashes_of_transformed_images(phantom):
    rng = np.random.default_rng(3)
    images = [phantom.images[0], phantom.images[1][:, 5:53], rng.integers(0, 256, (37, 50), dtype=np.uint8)]
    for img in images:
        h = dihedral_hashes(img)
        assert h.shape == (8,) and h.dtype == np.uint64
        assert int(h[0]) == phash64(img)
        for k, name in enumerate(DIHEDRAL):
            assert int(h[k]) == phash64(apply_dihedral(img, name)), name
    # the transforms themselves: rot90 is counter-clockwise, antitranspose = rot180 of transpose
    a = np.arange(6).reshape(2, 3)
    assert apply_dihedral(a, "rot90").tolist() == [[2, 5], [1, 4], [0, 3]]
    assert apply_dihedral(a, "antitranspose").tolist() == [[5, 2], [4, 1], [3, 0]]
    # batched == one by one
    batch = dihedral_hashes_batch(phantom.images[:5])
    assert np.array_equal(batch, np.stack([dihedral_hashes(im) for im in phantom.images[:5]]))
    assert np.array_equal(phash_batch(phantom.images[:5]), batch[:, 0])


def test_phash_is_robust_to_resizing_reencoding_and_intensity(phantom):
    img = phantom.images[10]
    h = phash64(img)
    copies = {
        "area x0.75": _resize(img, 48),
        "linear x0.75": _resize(img, 48, "linear"),
        "cubic x4": _resize(img, 256, "cubic"),
        "jpeg q85": _jpeg(img, 85),
        "jpeg q50 at x2": _jpeg(_resize(img, 128, "linear"), 50),
        "brighter": np.clip(img.astype(int) + 20, 0, 255).astype(np.uint8),
        "16-bit": img.astype(np.uint16) * 257,
        "rgb": np.repeat(img[..., None], 3, axis=2),
    }
    for name, c in copies.items():
        assert hamming(h, phash64(c)) <= MAX_DISTANCE, name
    assert hamming(h, phash64(img.astype(np.uint16) * 257)) == 0  # a gain changes nothing
    with pytest.raises(ValueError, match="2-D grayscale"):
        phash64(np.zeros((2, 3, 4, 5)))


def test_distinct_phantom_images_are_far_apart(phantom):
    # every pair of different patients: min over the 8 variants of one vs the other's own hash
    H = dihedral_hashes_batch(phantom.images)
    d = hamming(H[:, :, None], H[None, :, 0][:, None, :]).min(axis=1)
    other_patient = phantom.patient_ids[:, None] != phantom.patient_ids[None, :]
    assert d[other_patient].min() > MAX_DISTANCE


# -- the audit ---------------------------------------------------------------------------------


def _planted(phantom):
    """Eval = 40 images, pool = 100 other patients' images + planted copies of eval images."""
    from lungray.data.splits import split_holdout

    e, _, p = split_holdout(phantom.labels, eval_size=40, val_size=0, seed=0, groups=phantom.patient_ids)
    ev = phantom.images[e]
    originals = list(phantom.images)
    ids = list(phantom.ids)
    shas = [sha256_bytes(im.tobytes()) for im in originals]
    plants = {  # name: (eval position, copy, expected transform)
        "identical": (0, ev[0].copy(), "identical"),
        "resized": (1, _resize(ev[1], 48, "linear"), "identity"),
        "jpeg": (2, _jpeg(ev[2], 80), "identity"),
        "hflip": (3, ev[3][:, ::-1], "hflip"),
        "vflip": (4, ev[4][::-1], "vflip"),
        "rot90": (5, np.rot90(ev[5]), "rot90"),
        "rot270+jpeg": (6, _jpeg(np.ascontiguousarray(np.rot90(ev[6], 3)), 90), "rot270"),
        "upsized": (7, _resize(ev[7], 96, "cubic"), "identity"),
    }
    hashes = list(dihedral_hashes_batch(phantom.images))
    expected = {}
    for name, (pos, img, transform) in plants.items():
        row = len(originals)
        originals.append(img)
        ids.append(f"copy-{name}")
        shas.append(shas[e[pos]] if name == "identical" else sha256_bytes(np.ascontiguousarray(img).tobytes()))
        hashes.append(dihedral_hashes(img))
        expected[row] = (int(e[pos]), transform)
    pool = np.r_[p, np.array(sorted(expected))]
    return e, pool, np.stack(hashes), np.array(shas), np.array(ids), expected


def test_audit_finds_planted_copies_and_nothing_else(phantom):
    e, pool, hashes, shas, ids, expected = _planted(phantom)
    rep = audit_leakage(pool, e, hashes, shas, max_distance=MAX_DISTANCE, ids=ids)
    exact = {int(r.pool_row): (int(r.eval_row), r.transform) for r in rep.exact.itertuples()}
    near = {int(r.pool_row): (int(r.eval_row), r.transform) for r in rep.near.itertuples()}
    assert exact == {r: v for r, v in expected.items() if v[1] == "identical"}
    assert near == {r: v for r, v in expected.items() if v[1] != "identical"}
    assert rep.drop_idx.tolist() == sorted(expected)
    assert (rep.exact["distance"] == 0).all() and (rep.near["distance"] <= MAX_DISTANCE).all()
    # ids travel with the pairs
    row = next(r for r, v in expected.items() if v[1] == "hflip")
    hit = rep.near[rep.near["pool_row"] == row].iloc[0]
    assert hit["pool_id"] == "copy-hflip" and hit["eval_id"] == phantom.ids[expected[row][0]]
    assert np.array_equal(rep.filter_pool(pool), np.setdiff1d(pool, sorted(expected)))


def test_report_dict_and_summary(phantom):
    e, pool, hashes, shas, ids, expected = _planted(phantom)
    rep = audit_leakage(pool, e, hashes, shas, ids=ids)
    d = json.loads(json.dumps(rep.to_dict()))  # JSON-able as it is
    assert d["exact_pairs"] == 1 and d["near_pairs"] == len(expected) - 1
    assert d["pool_rows_flagged"] == len(expected) and d["eval_rows_matched"] == len(expected)
    assert d["n_pool"] == len(pool) and d["n_eval"] == len(e) and d["max_distance"] == MAX_DISTANCE
    assert d["by_transform"] == {"hflip": 1, "identical": 1, "identity": 3, "rot270": 1, "rot90": 1, "vflip": 1}
    assert sum(d["by_distance"].values()) == len(expected)
    assert {x["pool_id"] for x in d["examples"]} == {f"copy-{n}" for n in ("identical", "resized", "jpeg", "hflip", "vflip", "rot90", "rot270+jpeg", "upsized")}
    assert len(rep.to_dict(max_examples=2)["examples"]) == 2
    s = rep.summary()
    assert f"{len(pool)} pool x {len(e)} eval images: 1 exact duplicate pairs, 7 near-duplicate pairs (Hamming <= 6)" in s
    assert s.endswith(f"{len(expected)} pool images flagged")


def test_exact_only_and_threshold(phantom):
    e, pool, hashes, shas, ids, expected = _planted(phantom)
    rep = audit_leakage(pool, e, hashes, shas, max_distance=None)
    assert len(rep.exact) == 1 and len(rep.near) == 0 and "not searched" in rep.summary()
    rep0 = audit_leakage(pool, e, hashes, shas, max_distance=0)
    assert (rep0.near["distance"] == 0).all()
    # flips and rotations of the same array are bit-exact in hash space
    exact_hash = {row for row, (_, t) in expected.items() if t in ("hflip", "vflip", "rot90")}
    assert exact_hash <= set(rep0.near["pool_row"].tolist())


def test_hand_made_hashes_distance_transform_and_chunks(monkeypatch):
    # rows 0-1 eval, rows 2-5 pool. Row 2's hflip variant is 3 bits from eval row 0; row 3's
    # rot90 variant equals eval row 1, so row 3 = rot270(eval 1); row 4 is 7 bits away from
    # everything; row 5's identity and transpose are both 1 bit from eval 0 (the tie goes to
    # identity, the lower index).
    far = np.uint64(0xFFFF_FFFF_0000_0000)
    H = np.full((6, 8), far, dtype=np.uint64)
    H[0, 0], H[1, 0] = 0, 0xFF
    H[2, DIHEDRAL.index("hflip")] = 0b111 << 20
    H[3, DIHEDRAL.index("rot90")] = 0xFF
    H[4, :] = np.uint64(0x7F00)  # 7 bits from 0, 15 from 0xFF
    H[5, DIHEDRAL.index("identity")] = 0b1
    H[5, DIHEDRAL.index("transpose")] = 0b10
    sha = ["a", "b", "c", "d", "e", ""]
    want = [(2, 0, 3, "hflip"), (5, 0, 1, "identity"), (3, 1, 0, "rot270")]  # by eval row, then pool row
    rep = audit_leakage([2, 3, 4, 5], [0, 1], H, sha, max_distance=6)
    assert rep.near[["pool_row", "eval_row", "distance", "transform"]].values.tolist() == [list(w) for w in want]
    assert rep.drop_idx.tolist() == [2, 3, 5]
    assert 4 in audit_leakage([2, 3, 4, 5], [0, 1], H, sha, max_distance=7).drop_idx
    # tiny chunks (one pool row per block) give the same answer
    monkeypatch.setattr(leakage, "_BLOCK_ELEMENTS", 1)
    rep1 = audit_leakage([2, 3, 4, 5], [0, 1], H, sha, max_distance=6)
    assert rep1.near.equals(rep.near)
    # nothing found: empty tables, a JSON-able report with zero counts
    none = audit_leakage([4], [0, 1], H, sha, max_distance=6)
    assert len(none.exact) == len(none.near) == len(none.drop_idx) == 0
    d = json.loads(json.dumps(none.to_dict()))
    assert (d["exact_pairs"], d["near_pairs"], d["pool_rows_flagged"], d["by_transform"], d["examples"]) == (0, 0, 0, {}, [])
    assert none.summary().endswith("0 pool images flagged")
    # empty sha256 entries never match: row 5 has "" and so would eval rows with ""
    rep2 = audit_leakage([5], [0], H, ["", "b", "c", "d", "e", ""], max_distance=None)
    assert len(rep2.exact) == 0


def test_chunked_audit_matches_brute_force(monkeypatch):
    rng = np.random.default_rng(5)
    H = rng.integers(0, 2**63, (180, 8), dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, (180, 8), dtype=np.uint64)
    # plant near copies: pool row 100 + k = eval row k with 0..5 bits flipped in some variant
    for k in range(6):
        H[100 + k, k % 8] = H[k, 0] ^ np.uint64((1 << k) - 1)
    ev, pool = np.arange(0, 60), np.arange(60, 180)
    monkeypatch.setattr(leakage, "_BLOCK_ELEMENTS", 420)  # 18 pool chunks of 7 rows
    rep = audit_leakage(pool, ev, H, [""] * 180, max_distance=6)
    brute = [
        (int(p), int(e), int(min(bin(int(H[p, v]) ^ int(H[e, 0])).count("1") for v in range(8))))
        for p in pool
        for e in ev
    ]
    brute = sorted((p, e, d) for p, e, d in brute if d <= 6)
    got = sorted(map(tuple, rep.near[["pool_row", "eval_row", "distance"]].values.tolist()))
    assert got == brute
    assert [(100 + k, k, k) for k in range(6)] == [g for g in got if g[0] - 100 == g[1]]


def test_bad_inputs_are_clear_errors():
    H = np.zeros((4, 8), dtype=np.uint64)
    sha = ["a", "b", "c", "d"]
    with pytest.raises(DataError, match=r"rows are in both the training pool and the evaluation set \(first: \[1\]\)"):
        audit_leakage([0, 1], [1, 2], H, sha)
    with pytest.raises(DataError, match=r"hashes must have shape \(N, 8\)"):
        audit_leakage([0], [1], np.zeros((4, 3), dtype=np.uint64), sha)
    with pytest.raises(DataError, match="outside 0..3"):
        audit_leakage([0, 9], [1], H, sha)
    with pytest.raises(DataError, match="one entry per row"):
        audit_leakage([0], [1], H, sha[:3])
    with pytest.raises(ConfigError, match="leakage_max_distance must be an integer in 0..64"):
        audit_leakage([0], [1], H, sha, max_distance=65)
