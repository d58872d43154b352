"""Does the leakage audit catch Keras-style augmented copies, and how often does it pair distinct images?

Issue 11, item 1. A dataset is built from originals and planted copies, and the audit's full
duplicate search (:func:`lungray.data.leakage.find_duplicates`: sha256, dihedral perceptual
hash, keypoints + RANSAC + photometric check) runs over ALL of it at once, as
``prepare_data`` runs it, so every copy competes with every other image:

* originals: phantom chests at 256 px (:mod:`lungray.data.phantom`; different patients look
  alike, which makes the false-pair rate a hard test) and the real radiographs and other real
  images shipped with pydicom-data, decoded by :func:`lungray.data.decode.decode`;
* copies, per transform (Keras ``ImageDataGenerator`` arithmetic,
  :func:`lungray.data.keypoints.keras_transform`, border fill "nearest" unless said):
  rotation 5/10/20/30 degrees (random sign), zoom 0.9 and 1.1, shift 5 % and 10 % (random
  direction), horizontal flip, brightness x0.7-1.3, and the Keras-style random mix (rotation
  +-30, zoom 0.9-1.1 per axis, shift +-10 %, flip p=0.5, brightness 0.7-1.3, fill "constant"
  in 20 % of draws).

Recall = planted (original, copy) pairs reported, per transform, for the perceptual hash alone
(the old audit) and for the full search. False pairs = reported pairs between images of
different origin (different phantom patients, different real files, and their copies), over
all such pairs. Two different films of one phantom patient share anatomy and are reported
separately: patient grouping keeps them together anyway. Times: per 1000 images, describe
(per image, linear) and search (LSH join + verification).

Run: ``python bench/bench_leakage.py`` (~5 min on 2 CPUs) or ``--quick`` (CI smoke).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

# mlut_18.dcm is vlut_04.dcm's pixels under another LUT (a true duplicate), so it is not listed
REAL_FILES = ["RG1_UNCR.dcm", "RG3_UNCR.dcm", "693_UNCR.dcm", "MR2_UNCR.dcm", "US1_UNCR.dcm", "CT_small.dcm", "MR_small.dcm",
              "JPEG2000_UNC.dcm", "OBXXXX1A.dcm", "liver.dcm", "SC_rgb.dcm", "OT-PAL-8-face.dcm", "vlut_04.dcm",
              "gdcm-US-ALOKA-16.dcm", "rtdose.dcm", "CT1_J2KR.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm"]
TRANSFORMS = ["rotation 5", "rotation 10", "rotation 20", "rotation 30", "zoom 0.9", "zoom 1.1", "shift 5%", "shift 10%",
              "flip", "brightness", "keras mix"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phantoms", type=int, default=800, help="phantom originals (256 px)")
    p.add_argument("--copies", type=int, default=100, help="phantom copies per transform (of the first originals)")
    p.add_argument("--mix-copies", type=int, default=300, help="phantom copies for the Keras-style random mix")
    p.add_argument("--real-draws", type=int, default=4, help="copies per transform of each real radiograph")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="CI smoke: tiny sizes")
    a = p.parse_args(argv)
    if a.quick:
        a.phantoms, a.copies, a.mix_copies, a.real_draws = 40, 8, 16, 1
    return a


def make_copy(name: str, img, rng):
    import numpy as np

    from lungray.data.keypoints import keras_random_params, keras_transform

    h, w = img.shape
    sign = rng.choice([-1.0, 1.0])
    if name.startswith("rotation"):
        return keras_transform(img, theta=sign * float(name.split()[1]))
    if name.startswith("zoom"):
        z = float(name.split()[1])
        return keras_transform(img, zx=z, zy=z)
    if name.startswith("shift"):
        f = float(name.split()[1].rstrip("%")) / 100  # both axes, random directions
        return keras_transform(img, tx=sign * f * h, ty=rng.choice([-1.0, 1.0]) * f * w)
    if name == "flip":
        return keras_transform(img, flip=True)
    if name == "brightness":
        return keras_transform(img, brightness=float(rng.uniform(0.7, 1.3)))
    if name == "keras mix":
        return keras_transform(img, **keras_random_params(rng, img.shape))
    raise ValueError(name)


def real_images():
    """(name, uint8 2-D image at <= 512 px) of the pydicom-data files that decode to one 2-D frame."""
    import numpy as np

    from lungray.data.decode import decode, resize

    try:
        from pydicom.data import get_testdata_file
    except ImportError:  # pragma: no cover
        return []
    out = []
    for name in REAL_FILES:
        try:
            img = decode(get_testdata_file(name))
        except Exception:  # noqa: BLE001 - multi-frame / undecodable test files are simply not used
            continue
        h, w = img.shape
        s = min(1.0, 512 / max(h, w))
        img = resize(img, max(16, int(round(max(h, w) * s))), "stretch") if s < 1 or h != w else img
        out.append((name.split(".")[0], np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)))
    return out


def main(argv=None) -> int:
    import numpy as np
    import pandas as pd

    from lungray.data.hashing import dihedral_hashes, sha256_bytes
    from lungray.data.keypoints import describe_batch
    from lungray.data.leakage import find_duplicates
    from lungray.data.phantom import generate_phantom

    a = parse_args(argv)
    C.print_header("bench_leakage: recall on Keras-style copies, false pairs on distinct images", a)
    rng = np.random.default_rng(a.seed)
    t0 = time.time()
    ph = generate_phantom(a.phantoms, resolution=256, seed=11)
    print(f"phantom: {a.phantoms} originals at 256 px in {time.time() - t0:.0f} s")
    real = real_images()
    print(f"real pydicom-data images: {len(real)} ({', '.join(n for n, _ in real)})")

    images, origin, patient, kind, tname = [], [], [], [], []
    for i in range(a.phantoms):
        images.append(ph.images[i]), origin.append(f"ph{i}"), patient.append(str(ph.patient_ids[i])), kind.append("phantom"), tname.append("original")
    for name, img in real:
        images.append(img), origin.append(f"real:{name}"), patient.append(f"real:{name}"), kind.append("real"), tname.append("original")
    n_orig = len(images)
    for t in TRANSFORMS:
        k = a.mix_copies if t == "keras mix" else a.copies
        for i in range(min(k, a.phantoms)):
            images.append(make_copy(t, ph.images[i], rng)), origin.append(f"ph{i}"), patient.append(str(ph.patient_ids[i]))
            kind.append("phantom"), tname.append(t)
        for name, img in real:
            for _ in range(a.real_draws):
                images.append(make_copy(t, img, rng)), origin.append(f"real:{name}"), patient.append(f"real:{name}")
                kind.append("real"), tname.append(t)
    n = len(images)
    print(f"dataset: {n} images ({n_orig} originals, {n - n_orig} copies)")

    t0, c0 = time.time(), time.process_time()  # CPU time too: wall time on a shared machine is mostly waiting
    feats = describe_batch(images)
    t_desc, c_desc = time.time() - t0, time.process_time() - c0
    hashes = np.stack([dihedral_hashes(im) for im in images])
    sha = [sha256_bytes(np.ascontiguousarray(im).tobytes()) for im in images]
    t0, c0 = time.time(), time.process_time()
    pairs = find_duplicates(hashes, sha, 6, features=feats)
    t_search, c_search = time.time() - t0, time.process_time() - c0
    ph_only = find_duplicates(hashes, sha, 6)

    origin, patient, kind, tname = map(np.asarray, (origin, patient, kind, tname))

    def found_set(df):
        return set(zip(df.row_a.tolist(), df.row_b.tolist()))

    full, old = found_set(pairs), found_set(ph_only)
    orig_row = {o: i for i, o in enumerate(origin[:n_orig])}
    rows = []
    for src in ("phantom", "real"):
        for t in TRANSFORMS:
            cs = np.flatnonzero((tname == t) & (kind == src))
            if not len(cs):
                continue
            want = [(min(orig_row[origin[c]], c), max(orig_row[origin[c]], c)) for c in cs]
            r_new = np.mean([w in full for w in want])
            r_old = np.mean([w in old for w in want])
            missed = sorted({str(origin[c]) for c, w in zip(cs, want) if w not in full})
            rows.append({"images": src, "transform": t, "copies": len(cs), "recall phash only": f"{r_old:.2f}",
                         "recall full audit": f"{r_new:.2f}", "missed": int(sum(w not in full for w in want)),
                         "missed originals": ", ".join(m.replace("real:", "") for m in missed[:4]) if src == "real" else ""})
    C.print_table(rows, "recall per transform (planted original-copy pairs reported)")

    a_, b_ = pairs.row_a.to_numpy(), pairs.row_b.to_numpy()
    diff = origin[a_] != origin[b_]
    same_patient = diff & (patient[a_] == patient[b_])
    false = diff & ~same_patient
    # distinct pairs: different origin and different patient
    _, inv = np.unique(patient, return_inverse=True)
    per_patient = np.bincount(inv)
    n_pairs = n * (n - 1) // 2 - int((per_patient * (per_patient - 1) // 2).sum())
    fp_by_stage = pd.Series(pairs.stage[false]).value_counts().to_dict()
    print(f"\nfalse pairs (different patients / different real files): {int(false.sum())} of {n_pairs:,} distinct pairs "
          f"= {false.sum() / max(n_pairs, 1):.2e} (by stage: {fp_by_stage or 'none'})")
    print(f"pairs between different films of one phantom patient (grouped by patient anyway): {int(same_patient.sum())}")
    if false.any():
        print(pairs[false].head(10).to_string())
    print(f"\nstage counts over the whole dataset: {pairs.stage.value_counts().to_dict()}")
    print(f"time (CPU, one core): describe {c_desc / n * 1000:.1f} s per 1000 images; search (all stages, {n} images) "
          f"{c_search:.1f} s = {c_search / n * 1000:.1f} s per 1000 images at this size "
          f"(wall {t_desc / n * 1000:.1f} and {t_search / n * 1000:.1f} s per 1000 on this machine's load)")
    mix = [r for r in rows if r["transform"] == "keras mix" and r["images"] == "phantom"]
    print(f"RATIO recall_keras_mix = {float(mix[0]['recall full audit']) if mix else float('nan'):.3f}")
    print(f"RATIO false_pair_rate = {false.sum() / max(n_pairs, 1):.3e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
