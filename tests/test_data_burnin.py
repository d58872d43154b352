"""The leakage audit on annotated films (issue 18), measured as properties on three generators.

Distinct patients of one site share its burned-in markings (side letter, text lines, label box,
ruler) and, per film, ECG-like leads. The audit must pair a film with its Keras-style copies
(also when the copy carries markings the original does not) and never pair two patients:

* the phantom (:mod:`lungray.data.phantom`), one site, its own markings;
* a second, independent generator (:func:`lungray.data.audit_sets.scenes`) with markings drawn
  by other code (:func:`lungray.data.audit_sets.stamp`, OpenCV fonts);
* real anatomy: the non-blank tiles of pydicom-data's CRs as distinct images, and copies of the
  whole real chest CR ``RG1_UNCR``, all stamped.

Each set is searched as ``prepare_data`` searches a dataset (content hashes + keypoint features of
every image, :func:`lungray.data.leakage.find_duplicates` over all of them at once). Goals: recall
>= 0.95, no false pair (the sets hold 2,000-10,000 distinct pairs each, so zero is what a rate
<= 1e-4 allows), no cluster joining two patients. ``bench/bench_leakage.py`` measures the same at
a larger size, with the cost against n.
"""

from __future__ import annotations

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from lungray.data import audit_sets as A  # noqa: E402
from lungray.data.burnin import burnin_mask, content_image  # noqa: E402
from lungray.data.hashing import dihedral_hashes, sha256_bytes  # noqa: E402
from lungray.data.keypoints import describe_batch  # noqa: E402
from lungray.data.leakage import connected_groups, find_duplicates  # noqa: E402

BURNED = ("letter", "text", "label_box", "ruler")  # the digital / lead markings (leads are physical)


def _distinct_phantom(n: int, size: int, seed: int = 3, **knobs):
    """The first film of ``n`` different phantom patients (one site: all share its markings)."""
    from lungray.data.phantom import PhantomSpec, layout, render_case

    kw = {"sites": 1, "series_fraction": 0.0, **knobs}
    lay = layout(8 * n, PhantomSpec(seed=seed, **kw))
    first = np.flatnonzero(np.r_[True, lay.patient[1:] != lay.patient[:-1]])[:n]
    return np.stack([render_case(int(i), resolution=size, seed=seed, **kw).image for i in first])


def _search(images):
    f = describe_batch(list(images))
    h = np.stack([dihedral_hashes(content_image(im)) for im in images])
    sha = [sha256_bytes(np.ascontiguousarray(im).tobytes()) for im in images]
    calls = []
    pairs = find_duplicates(h, sha, 6, features=f, progress=calls.append)
    return pairs, len(calls)


def _measure(images, origin, variant):
    pairs, verified = _search(images)
    origin, variant = np.asarray(origin), np.asarray(variant)
    found = set(zip(pairs.row_a.tolist(), pairs.row_b.tolist()))
    first = {int(o): int(np.flatnonzero((origin == o) & (variant == "original"))[0]) for o in set(origin.tolist())}
    recall = {}
    for v in ("copy", "copy+markings"):
        rows = np.flatnonzero(variant == v)
        recall[v] = float(np.mean([(first[int(origin[r])], int(r)) in found for r in rows]))
    a, b = pairs.row_a.to_numpy(), pairs.row_b.to_numpy()
    false = int((origin[a] != origin[b]).sum())
    n = len(images)
    per = np.bincount(origin)
    distinct = n * (n - 1) // 2 - int((per * (per - 1) // 2).sum())
    lab = connected_groups(n, pairs)
    joined = sum(len(set(origin[lab == g].tolist())) > 1 for g in np.unique(lab))
    return recall, false, distinct, joined, verified


def _planted(originals, copies_of, rng, style_seed=99):
    """originals + a Keras copy and a Keras copy with another site's markings of each of ``copies_of``."""
    images, origin, variant = list(originals), list(range(len(originals))), ["original"] * len(originals)
    for i in copies_of:
        images.append(A.keras_copy(originals[i], rng)), origin.append(i), variant.append("copy")
    for k, i in enumerate(copies_of):
        images.append(A.keras_copy(originals[i], rng, A.site_style(style_seed + k))), origin.append(i), variant.append("copy+markings")
    return images, origin, variant


# --------------------------------------------------------------------------------------------
# the detector
# --------------------------------------------------------------------------------------------


def test_detector_finds_stamped_markings_on_three_generators():
    tiles, _ = A.real_tiles(size=256)
    sets = {"phantom": _distinct_phantom(8, 256, markings=()), "scenes": A.scenes(8, 256, seed=1), "real": tiles[:8]}
    style = A.site_style(7, kinds=BURNED)
    for name, imgs in sets.items():
        assert len(imgs) == 8, name
        rec, extra, clean = [], [], []
        for k, im in enumerate(imgs):
            truth = A.stamp(np.zeros_like(im), style, np.random.default_rng(k)) > 0
            m = burnin_mask(A.stamp(im, style, np.random.default_rng(k)), 256)
            rec.append(m[truth].mean())
            extra.append(m[~truth].mean())
            clean.append(burnin_mask(im, 256).mean())
        # the markings' pixels (their faint anti-aliased rims included) are found; little else is
        assert np.mean(rec) > 0.8 and min(rec) > 0.7, (name, rec)
        assert np.median(extra) < 0.03, (name, extra)
        if name != "real":  # the real tiles are saturated white in places: flat, bright, masked (harmless)
            assert np.median(clean) < 0.03, (name, clean)  # bright unexposed margins of some films: masked too


def test_no_keypoint_on_a_marking_and_the_thumbnail_hides_it():
    from lungray.data.keypoints import SIZE, describe

    im = A.stamp(A.scenes(1, 256, seed=4)[0], A.site_style(5, kinds=("label_box",)), np.random.default_rng(0))
    desc, xy, count, thumb, _ = describe(im)
    box = A.stamp(np.zeros_like(im), A.site_style(5, kinds=("label_box",)), np.random.default_rng(0)) > 0
    ys, xs = np.nonzero(box)
    inside = [(box.shape[1] * 0 + xs.min() <= x * 256 / SIZE <= xs.max()) and (ys.min() <= y * 256 / SIZE <= ys.max())
              for x, y in xy[0, : count[0]]]
    assert count[0] > 50 and not any(inside)
    # the label box is inpainted in the stored thumbnail (it cannot steer the photometric check)
    t = cv2.resize(im, (128, 128), interpolation=cv2.INTER_AREA)
    b = cv2.resize(box.astype(np.uint8), (128, 128), interpolation=cv2.INTER_NEAREST) > 0
    assert t[b].mean() > 200 and thumb[b].mean() < t[b].mean() - 40


# --------------------------------------------------------------------------------------------
# the audit, end to end, on three generators
# --------------------------------------------------------------------------------------------


def test_audit_on_annotated_phantom_films():
    rng = np.random.default_rng(18)
    originals = _distinct_phantom(70, 256)  # one site: every pair shares its marker, text, box, ruler
    images, origin, variant = _planted(originals, range(30), rng)
    recall, false, distinct, joined, verified = _measure(images, origin, variant)
    assert recall["copy"] >= 0.95 and recall["copy+markings"] >= 0.95, recall
    assert false == 0 and distinct > 7000 and joined == 0
    # candidates verified per image stay bounded (the partner cap): 12-14 measured here, against
    # the 130 - 1 other images a shared marking made candidates before; the cost against n is in
    # bench/bench_leakage.py
    assert verified < 16 * len(images)


def test_audit_on_a_second_generator():
    rng = np.random.default_rng(19)
    style = A.site_style(11)
    originals = np.stack([A.stamp(im, style, rng) for im in A.scenes(80, 256, seed=2)])
    images, origin, variant = _planted(originals, range(30), rng)
    recall, false, distinct, joined, verified = _measure(images, origin, variant)
    assert recall["copy"] >= 0.95 and recall["copy+markings"] >= 0.95, recall
    assert false == 0 and distinct > 9000 and joined == 0
    assert verified < 16 * len(images)


def test_audit_on_real_radiographs_with_synthetic_markings():
    from pydicom.data import get_testdata_file

    from lungray.data.decode import decode

    rng = np.random.default_rng(20)
    style = A.site_style(13)
    tiles, names = A.real_tiles(grid=4, size=256)
    assert len(tiles) >= 16 and any(n.startswith("RG1") for n in names)
    chest = np.rint(np.clip(decode(get_testdata_file("RG1_UNCR.dcm")), 0, 1) * 255).astype(np.uint8)
    chest = cv2.resize(chest, (512, round(512 * chest.shape[0] / chest.shape[1])), interpolation=cv2.INTER_AREA)
    originals = [A.stamp(chest, style, rng)] + [A.stamp(t, style, rng) for t in tiles]
    images, origin, variant = list(originals), list(range(len(originals))), ["original"] * len(originals)
    for k in range(24):  # many different Keras draws of the one real chest CR
        images.append(A.keras_copy(originals[0], rng)), origin.append(0), variant.append("copy")
        images.append(A.keras_copy(originals[0], rng, A.site_style(200 + k))), origin.append(0), variant.append("copy+markings")
    recall, false, distinct, joined, _ = _measure(images, origin, variant)
    assert recall["copy"] >= 0.95 and recall["copy+markings"] >= 0.95, recall
    assert false == 0 and joined == 0


def test_label_box_reproduction_no_longer_clusters_patients():
    """Issue 18's reproduction: 250 distinct phantom patients sharing a white label box and a boxed
    "R" were paired 1,987 times (6.4 % of 31,125 pairs) and ended in one cluster."""
    style = A.SiteStyle(letter=(0.04, 0.04, "R", True), text=(0.7, 0.06, 1, True), box=(0.6, 0.82, 0.35, 0.14),
                        ruler=(0.02, 0.2, 0.8), font=cv2.FONT_HERSHEY_SIMPLEX, kinds=("letter", "label_box"))
    films = _distinct_phantom(250, 128, seed=5, markings=())
    images = [A.stamp(f, style, np.random.default_rng(k)) for k, f in enumerate(films)]
    pairs, verified = _search(images)
    assert len(pairs) <= 3  # <= 1e-4 of the 31,125 pairs
    lab = connected_groups(len(images), pairs)
    assert np.bincount(lab).max() <= 2
    assert verified < 16 * len(images)
