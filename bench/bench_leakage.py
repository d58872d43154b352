"""Does the leakage audit catch Keras-style copies on annotated films, and never pair distinct patients?

Issues 11.1 and 18. Every set is searched as ``prepare_data`` searches a dataset: content hashes
and keypoint features of every image (:mod:`lungray.data.burnin`, :mod:`lungray.data.keypoints`),
then :func:`lungray.data.leakage.find_duplicates` over ALL of them at once, so every copy
competes with every other image.

1. **Per transform** (issue 11.1's table, now on annotated films): phantom chests at 256 px with
   their site's markings (:mod:`lungray.data.phantom`) and the real pydicom-data images
   (stamped with one site's markings, :func:`lungray.data.audit_sets.stamp`), each copied by one
   Keras transform (rotation 5/10/20/30, zoom 0.9/1.1, shift 5/10 %, flip, brightness 0.7-1.3)
   and by the Keras-style random mix (rotation +-30, zoom 0.9-1.1 per axis, shift +-10 %, flip,
   brightness, fill black in 20 %), also with another site's markings burned onto the copy
   ("mix + markings"). Recall for the perceptual hash alone and for the full search.
2. **Distinct patients sharing the markings real sets carry** (L/R letter, 1-4 text lines, label
   box, ruler, ECG leads), three generators: the phantom (one site), a second independent
   generator (:func:`lungray.data.audit_sets.scenes`, markings drawn by other code) and real
   anatomy (non-blank tiles of the pydicom-data CRs plus copies of the whole chest CR
   ``RG1_UNCR``, 100 + 100 draws of it: a cluster far larger than the partner cap). False pairs
   over all distinct pairs, clusters joining two patients, recall of the mix and mix + markings
   (the original-copy pair reported) and the share of copies in their original's cluster (what
   keeps a copy on its original's side of the split).
3. **Cost against n** on the issue's reproduction (distinct patients sharing a white label box
   and a boxed "R", 128 px): search CPU time and candidates verified at n, 2n, 4n, the exponent
   of the fit, beside the audit without the issue-18 defences (no annotation mask, no partner
   cap) at the smallest n, in the same run.

Run: ``python bench/bench_leakage.py`` (~25 min on 2 busy CPUs) or ``--quick`` (CI smoke).
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
              "flip", "brightness", "keras mix", "mix + markings"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phantoms", type=int, default=400, help="part 1: annotated phantom originals (256 px)")
    p.add_argument("--copies", type=int, default=60, help="part 1: phantom copies per transform")
    p.add_argument("--mix-copies", type=int, default=200, help="part 1: phantom copies for the random mix (and mix + markings)")
    p.add_argument("--real-draws", type=int, default=3, help="part 1: copies per transform of each real image")
    p.add_argument("--distinct", type=int, default=300, help="part 2: distinct patients per generator (256 px)")
    p.add_argument("--planted", type=int, default=100, help="part 2: mix copies (and as many mix + markings) per generator")
    p.add_argument("--cost-n", type=int, nargs="+", default=[250, 500, 1000], help="part 3: label-box set sizes")
    p.add_argument("--baseline-n", type=int, default=250, help="part 3: size for the audit without the defences (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="CI smoke: tiny sizes")
    a = p.parse_args(argv)
    if a.quick:
        a.phantoms, a.copies, a.mix_copies, a.real_draws = 24, 4, 8, 1
        a.distinct, a.planted, a.cost_n, a.baseline_n = 24, 8, [40, 80], 40
    return a


def make_copy(name: str, img, rng):
    from lungray.data import audit_sets as A
    from lungray.data.kerasaug import keras_random_params, keras_transform

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
    if name == "mix + markings":
        return A.keras_copy(img, rng, A.site_style(int(rng.integers(1000, 2000))))
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


def search(images, max_distance: int = 6):
    """(pairs, CPU seconds describing, CPU seconds searching, candidates verified), as ``prepare_data`` runs it."""
    import numpy as np

    from lungray.data.burnin import content_image
    from lungray.data.hashing import dihedral_hashes, sha256_bytes
    from lungray.data.keypoints import describe_batch
    from lungray.data.leakage import find_duplicates

    c0 = time.process_time()
    feats = describe_batch(list(images))
    hashes = np.stack([dihedral_hashes(content_image(im)) for im in images])
    c1 = time.process_time()
    sha = [sha256_bytes(np.ascontiguousarray(im).tobytes()) for im in images]
    calls: list = []
    pairs = find_duplicates(hashes, sha, max_distance, features=feats, progress=calls.append)
    return pairs, c1 - c0, time.process_time() - c1, len(calls), hashes, sha


def distinct_phantom(n: int, size: int, seed: int, **knobs):
    import numpy as np

    from lungray.data.phantom import PhantomSpec, layout, render_case

    kw = {"sites": 1, "series_fraction": 0.0, **knobs}
    lay = layout(8 * n + 16, PhantomSpec(seed=seed, **kw))
    first = np.flatnonzero(np.r_[True, lay.patient[1:] != lay.patient[:-1]])[:n]
    return np.stack([render_case(int(i), resolution=size, seed=seed, **kw).image for i in first])


def part1(a, rng):
    import numpy as np

    from lungray.data import audit_sets as A
    from lungray.data.leakage import find_duplicates

    t0 = time.time()
    ph = distinct_phantom(a.phantoms, 256, 11, sites=3)  # three sites, their own markings
    print(f"phantom: {a.phantoms} annotated originals (distinct patients, 3 sites) at 256 px in {time.time() - t0:.0f} s")
    style = A.site_style(41)
    real = [(n, A.stamp(im, style, rng)) for n, im in real_images()]
    print(f"real pydicom-data images, stamped with one site's markings: {len(real)} ({', '.join(n for n, _ in real)})")
    images, origin, kind, tname = [], [], [], []
    for i in range(a.phantoms):
        images.append(ph[i]), origin.append(f"ph{i}"), kind.append("phantom"), tname.append("original")
    for name, img in real:
        images.append(img), origin.append(f"real:{name}"), kind.append("real"), tname.append("original")
    n_orig = len(images)
    for t in TRANSFORMS:
        k = a.mix_copies if t in ("keras mix", "mix + markings") else a.copies
        for i in range(min(k, a.phantoms)):
            images.append(make_copy(t, ph[i], rng)), origin.append(f"ph{i}"), kind.append("phantom"), tname.append(t)
        for name, img in real:
            for _ in range(a.real_draws):
                images.append(make_copy(t, img, rng)), origin.append(f"real:{name}"), kind.append("real"), tname.append(t)
    n = len(images)
    print(f"dataset: {n} images ({n_orig} originals, {n - n_orig} copies)")
    pairs, c_desc, c_search, verified, hashes, sha = search(images)
    ph_only = find_duplicates(hashes, sha, 6)
    origin, kind, tname = map(np.asarray, (origin, kind, tname))
    full = set(zip(pairs.row_a.tolist(), pairs.row_b.tolist()))
    old = set(zip(ph_only.row_a.tolist(), ph_only.row_b.tolist()))
    orig_row = {o: i for i, o in enumerate(origin[:n_orig])}
    rows = []
    for src in ("phantom", "real"):
        for t in TRANSFORMS:
            cs = np.flatnonzero((tname == t) & (kind == src))
            if not len(cs):
                continue
            want = [(min(orig_row[origin[c]], c), max(orig_row[origin[c]], c)) for c in cs]
            missed = sorted({str(origin[c]) for c, w in zip(cs, want) if w not in full})
            rows.append({"images": src, "transform": t, "copies": len(cs), "recall phash only": f"{np.mean([w in old for w in want]):.2f}",
                         "recall full audit": f"{np.mean([w in full for w in want]):.2f}", "missed": int(sum(w not in full for w in want)),
                         "missed originals": ", ".join(m.replace("real:", "") for m in missed[:4]) if src == "real" else ""})
    C.print_table(rows, "recall per transform (planted original-copy pairs reported; the originals carry their markings)")
    a_, b_ = pairs.row_a.to_numpy(), pairs.row_b.to_numpy()
    false = origin[a_] != origin[b_]
    _, inv = np.unique(origin, return_inverse=True)
    per = np.bincount(inv)
    n_pairs = n * (n - 1) // 2 - int((per * (per - 1) // 2).sum())
    print(f"false pairs (different patients / different real files): {int(false.sum())} of {n_pairs:,} distinct pairs "
          f"= {false.sum() / max(n_pairs, 1):.2e} (by stage: {pairs.stage[false].value_counts().to_dict() or 'none'})")
    if false.any():
        print(pairs[false].head(10).to_string())
    print(f"stage counts over the whole dataset: {pairs.stage.value_counts().to_dict()}")
    print(f"time (CPU): describe {c_desc / n * 1000:.1f} s per 1000 images; search {c_search:.1f} s for {n} images "
          f"({verified:,} candidates verified, {verified / n:.1f} per image)")
    mix = {r["transform"]: float(r["recall full audit"]) for r in rows if r["images"] == "phantom"}
    return mix, int(false.sum()) / max(n_pairs, 1)


def part2(a, rng):
    import numpy as np

    from lungray.data import audit_sets as A
    from lungray.data.decode import decode
    from lungray.data.leakage import connected_groups

    sets = {}
    t0 = time.time()
    sets["phantom (1 site)"] = list(distinct_phantom(a.distinct, 256, 7))
    style = A.site_style(17)
    sets["second generator"] = [A.stamp(im, style, rng) for im in A.scenes(a.distinct, 256, seed=3)]
    tiles, _ = A.real_tiles(grid=4, size=256)
    real = [A.stamp(t, style, rng) for t in tiles]
    try:
        from pydicom.data import get_testdata_file
        import cv2

        chest = np.rint(np.clip(decode(get_testdata_file("RG1_UNCR.dcm")), 0, 1) * 255).astype(np.uint8)
        chest = cv2.resize(chest, (512, round(512 * chest.shape[0] / chest.shape[1])), interpolation=cv2.INTER_AREA)
        real = [A.stamp(chest, style, rng)] + real
    except Exception:  # noqa: BLE001 - no pydicom-data: the real set is the tiles only
        pass
    sets["real (RG1 + CR tiles)"] = real
    print(f"\npart 2 originals generated in {time.time() - t0:.0f} s")
    rows = []
    out = {}
    for name, originals in sets.items():
        images, origin, variant = list(originals), list(range(len(originals))), ["original"] * len(originals)
        real_set = name.startswith("real")
        planted = range(len(originals)) if not real_set else [0] * a.planted  # the real set: many draws of the chest CR
        for k, i in enumerate(planted if real_set else list(planted)[: a.planted]):
            images.append(A.keras_copy(originals[i], rng)), origin.append(i), variant.append("mix")
            images.append(A.keras_copy(originals[i], rng, A.site_style(500 + k))), origin.append(i), variant.append("mix + markings")
        pairs, _, c_search, verified, _, _ = search(images)
        origin_a, variant_a = np.asarray(origin), np.asarray(variant)
        found = set(zip(pairs.row_a.tolist(), pairs.row_b.tolist()))
        rec = {v: float(np.mean([(int(origin_a[r]), int(r)) in found for r in np.flatnonzero(variant_a == v)])) for v in ("mix", "mix + markings")}
        a_, b_ = pairs.row_a.to_numpy(), pairs.row_b.to_numpy()
        false = int((origin_a[a_] != origin_a[b_]).sum())
        n = len(images)
        per = np.bincount(origin_a)
        distinct = n * (n - 1) // 2 - int((per * (per - 1) // 2).sum())
        lab = connected_groups(n, pairs)
        # what the split needs: the copy in its original's cluster (directly or through other copies)
        in_cluster = float(np.mean([lab[r] == lab[int(origin_a[r])] for r in np.flatnonzero(variant_a != "original")]))
        joined = sum(len(set(origin_a[lab == g].tolist())) > 1 for g in np.unique(lab))
        rows.append({"generator": name, "images": n, "distinct pairs": f"{distinct:,}", "false pairs": false,
                     "rate": f"{false / max(distinct, 1):.1e}", "clusters joining patients": joined,
                     "recall mix": f"{rec['mix']:.3f}", "recall mix + markings": f"{rec['mix + markings']:.3f}",
                     "copies in their original's cluster": f"{in_cluster:.3f}",
                     "verified per image": f"{verified / n:.1f}", "search CPU s": f"{c_search:.1f}"})
        out[name] = (false, distinct, joined, rec, in_cluster)
    C.print_table(rows, "distinct patients sharing one site's markings (letter, text lines, label box, ruler, ECG leads)")
    return out


def part3(a, rng):
    import numpy as np

    from lungray.data import audit_sets as A
    from lungray.data import burnin, keypoints
    from lungray.data.leakage import connected_groups

    import cv2

    style = A.SiteStyle(letter=(0.04, 0.04, "R", True), text=(0.7, 0.06, 1, True), box=(0.6, 0.82, 0.35, 0.14),
                        ruler=(0.02, 0.2, 0.8), font=cv2.FONT_HERSHEY_SIMPLEX, kinds=("letter", "label_box"))
    films = distinct_phantom(max(a.cost_n), 128, 5, markings=())
    images = [A.stamp(f, style, np.random.default_rng(k)) for k, f in enumerate(films)]
    rows, pts = [], []
    for n in sorted(a.cost_n):
        pairs, c_desc, c_search, verified, _, _ = search(images[:n])
        lab = connected_groups(n, pairs)
        rows.append({"audit": "issue 18", "n": n, "pairs": len(pairs), "of pairs": f"{n * (n - 1) // 2:,}",
                     "largest cluster": int(np.bincount(lab).max()), "verified": verified, "verified per image": f"{verified / n:.1f}",
                     "search CPU s": f"{c_search:.1f}", "describe CPU s": f"{c_desc:.1f}"})
        pts.append((n, c_search, verified))
    if a.baseline_n:
        n = a.baseline_n
        real_mask, real_cap = burnin.burnin_mask, keypoints.MAX_PARTNERS
        burnin.burnin_mask = lambda img, size=None: np.zeros((size, size) if size else np.asarray(img).shape[:2], bool)
        keypoints.MAX_PARTNERS = 10**9
        try:
            pairs, c_desc, c_search, verified, _, _ = search(images[:n])
        finally:
            burnin.burnin_mask, keypoints.MAX_PARTNERS = real_mask, real_cap
        lab = connected_groups(n, pairs)
        rows.append({"audit": "without mask and cap", "n": n, "pairs": len(pairs), "of pairs": f"{n * (n - 1) // 2:,}",
                     "largest cluster": int(np.bincount(lab).max()), "verified": verified, "verified per image": f"{verified / n:.1f}",
                     "search CPU s": f"{c_search:.1f}", "describe CPU s": f"{c_desc:.1f}"})
    C.print_table(rows, "cost against n: distinct patients sharing a white label box and a boxed R (128 px)")
    ns, ts, vs = (np.array(x, dtype=float) for x in zip(*pts))
    exp_t = float(np.polyfit(np.log(ns), np.log(np.maximum(ts, 1e-3)), 1)[0]) if len(ns) > 1 else float("nan")
    exp_v = float(np.polyfit(np.log(ns), np.log(np.maximum(vs, 1)), 1)[0]) if len(ns) > 1 else float("nan")
    print(f"cost ~ n^{exp_t:.2f} (search CPU time), candidates verified ~ n^{exp_v:.2f}")
    return exp_t, exp_v, rows


def main(argv=None) -> int:
    import numpy as np

    a = parse_args(argv)
    C.print_header("bench_leakage: recall on Keras-style copies and false pairs, on annotated films", a)
    rng = np.random.default_rng(a.seed)
    mix, fpr1 = part1(a, rng)
    p2 = part2(a, rng)
    exp_t, exp_v, _ = part3(a, rng)
    false = sum(v[0] for v in p2.values())
    distinct = sum(v[1] for v in p2.values())
    C.print_load()
    C.print_ratio("recall_keras_mix", mix.get("keras mix", float("nan")))
    C.print_ratio("recall_keras_mix_markings", min(min(v[3].values()) for v in p2.values()))
    C.print_ratio("false_pair_rate", fpr1)
    C.print_ratio("false_pair_rate_shared_markings", false / max(distinct, 1))
    C.print_ratio("clusters_joining_patients", float(sum(v[2] for v in p2.values())))
    C.print_ratio("copies_in_cluster", min(v[4] for v in p2.values()))
    C.print_ratio("cost_exponent", exp_t)
    C.print_ratio("verified_exponent", exp_v)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
