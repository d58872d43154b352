"""The phantom: deterministic per image, class findings with masks exactly for non-Normal images,
patients that share anatomy and label, findings whose contrast follows ``difficulty``, DICOM
output that pydicom reads back, and a sample sheet a person can look at. (That a small CNN learns
it, and how fast, is measured in the module docstring; the training tests train on it.)"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from lungray.data import phantom
from lungray.data.phantom import CLASS_NAMES, PhantomSpec, generate_phantom, layout, render_case, write_dicom, write_sample_sheet
from lungray.data.phantom.layout import MAX_FILMS
from lungray.errors import ConfigError


@pytest.fixture(scope="module")
def four():
    return generate_phantom(48, n_classes=4, resolution=48, seed=1)


def test_image_i_does_not_depend_on_n():
    small = generate_phantom(5, resolution=32, seed=3)
    big = generate_phantom(23, resolution=32, seed=3)
    for f in ("images", "masks", "lung_masks", "labels", "ids", "patient_ids", "sites", "copy_of"):
        assert np.array_equal(getattr(small, f), getattr(big, f)[:5]), f
    # with copies and series too: row i never depends on n
    a, b = generate_phantom(7, resolution=24, seed=3, copies=1.0), generate_phantom(19, resolution=24, seed=3, copies=1.0)
    assert np.array_equal(a.images, b.images[:7]) and np.array_equal(a.copy_of, b.copy_of[:7])
    assert np.array_equal(render_case(6, resolution=24, seed=3, copies=1.0).image, b.images[6])
    case = render_case(17, resolution=32, seed=3)
    assert np.array_equal(case.image, big.images[17]) and np.array_equal(case.mask, big.masks[17])
    assert (case.label, case.image_id, case.patient_id) == (big.labels[17], big.ids[17], big.patient_ids[17])
    assert case.class_name == big.class_names[big.labels[17]]
    # same call, same bytes; another seed, other images
    again = generate_phantom(5, resolution=32, seed=3)
    assert hashlib.sha256(again.images.tobytes()).digest() == hashlib.sha256(small.images.tobytes()).digest()
    other = generate_phantom(5, resolution=32, seed=4)
    assert not np.array_equal(other.images, small.images)
    assert len(set(other.ids) & set(small.ids)) == 0


def test_shapes_dtypes_and_class_names(four):
    two = generate_phantom(6, resolution=40)
    assert two.images.shape == two.masks.shape == (6, 40, 40)
    assert two.images.dtype == two.masks.dtype == np.uint8 and two.labels.dtype == np.int64
    assert two.class_names == ("Normal", "COVID") == CLASS_NAMES[2]
    assert four.class_names == ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
    assert set(np.unique(four.labels)) == {0, 1, 2, 3}
    assert len(set(four.ids)) == len(four) == 48
    assert set(np.unique(four.masks)) <= {0, 1}
    # a radiograph: dark air outside the body in some corner, bright mediastinum/abdomen, full range
    assert four.images.max() >= 200 and four.images.min() <= 40


def test_masks_are_nonempty_exactly_for_abnormal_classes(four):
    normal = four.class_names.index("Normal")
    area = four.masks.reshape(len(four), -1).sum(axis=1)
    assert np.all(area[four.labels == normal] == 0)
    assert np.all(area[four.labels != normal] > 0)
    # typical extents: patches (COVID) are small, consolidation a lobe, interstitial both lungs
    med = {c: np.median(area[four.labels == four.class_names.index(c)]) for c in ("COVID", "Lung_Opacity", "Viral Pneumonia")}
    assert med["COVID"] < med["Lung_Opacity"] < med["Viral Pneumonia"]


def test_findings_are_denser_where_the_mask_is():
    # the same cases with strong (difficulty 0.25) and faint (4.0) findings: same labels and
    # masks (a mask marks where the finding is, not how visible it is), and the pixels under the
    # mask are brighter when the finding is strong
    strong = generate_phantom(60, n_classes=4, resolution=48, difficulty=0.25, seed=2)
    faint = generate_phantom(60, n_classes=4, resolution=48, difficulty=4.0, seed=2)
    assert np.array_equal(strong.labels, faint.labels) and np.array_equal(strong.masks, faint.masks)
    abnormal = np.flatnonzero(strong.masks.reshape(60, -1).any(axis=1))
    gain = [strong.images[i][strong.masks[i] > 0].mean() - faint.images[i][strong.masks[i] > 0].mean() for i in abnormal]
    assert np.mean(gain) > 5 and np.median(gain) > 0
    outside = [strong.images[i][strong.masks[i] == 0].mean() - faint.images[i][strong.masks[i] == 0].mean() for i in abnormal]
    assert np.mean(gain) > np.mean(outside) + 5


def test_patients_share_label_and_anatomy_and_are_consecutive():
    ph = generate_phantom(200, resolution=8, seed=0)
    pids, first, counts = np.unique(ph.patient_ids, return_index=True, return_counts=True)
    assert counts.min() >= 1 and (counts > 1).sum() > 20
    for p in pids:
        rows = np.flatnonzero(ph.patient_ids == p)
        assert np.array_equal(rows, np.arange(rows[0], rows[-1] + 1))  # consecutive images
        assert len(set(ph.labels[rows])) == 1 and len(set(ph.sites[rows])) == 1
    # labels balanced per block of two patients: patient counts per class differ by at most 1
    per_patient = ph.labels[first]
    assert abs(int((per_patient == 0).sum()) - int((per_patient == 1).sum())) <= 1


# --------------------------------------------------------------------------------------------
# the knobs of issue 18, each measured (layouts are cheap: thousands of patients, no pixels)
# --------------------------------------------------------------------------------------------


def _firsts(lay):
    return np.flatnonzero(np.r_[True, lay.patient[1:] != lay.patient[:-1]])


@pytest.mark.parametrize("mean", [1.0, 1.5, 3.0])
def test_images_per_patient_is_the_mean_number_of_films(mean):
    lay = layout(20000, PhantomSpec(images_per_patient=mean, series_fraction=0.0))
    films = np.bincount(lay.patient)[:-1]  # the last patient may be cut by n
    assert abs(films.mean() - mean) < 0.05 * mean and films.min() == 1 and films.max() <= MAX_FILMS
    if mean == 1.0:
        assert (films == 1).all()


def test_series_fraction_and_length_and_series_films_are_nearly_identical():
    lay = layout(20000, PhantomSpec(series_fraction=0.25, series_length=5))
    first = _firsts(lay)[:-1]
    assert abs(lay.series[first].mean() - 0.25) < 0.02
    sizes = np.bincount(lay.patient)[:-1]
    assert (sizes[lay.series[first]] == 5).all()
    # a series is one acquisition drifting slowly (adjacent CT slices); follow-up films are new
    # acquisitions of the same anatomy: consecutive series films differ far less
    ph = generate_phantom(400, resolution=32, series_fraction=0.5, series_length=4, markings=())
    same = ph.patient_ids[1:] == ph.patient_ids[:-1]
    diff = np.abs(ph.images[1:].astype(float) - ph.images[:-1]).mean(axis=(1, 2))
    in_series, follow_up = diff[same & ph.series[1:]], diff[same & ~ph.series[1:]]
    assert len(in_series) > 20 and len(follow_up) > 20
    assert np.median(in_series) < 0.5 * np.median(follow_up)


@pytest.mark.parametrize("corr", [0.0, 0.6, 1.0])
def test_site_label_correlation_is_the_planted_shortcut(corr):
    lay = layout(20000, PhantomSpec(sites=3, site_label_correlation=corr, n_classes=2))
    first = _firsts(lay)
    home = lay.label[first] % 3
    share = (lay.site[first] == home).mean()
    assert abs(share - (corr + (1 - corr) / 3)) < 0.02
    if corr < 1.0:
        assert sorted(set(lay.site.tolist())) == [0, 1, 2]
    else:  # the site gives the label away (2 classes on their home sites 0 and 1)
        assert set(zip(lay.label.tolist(), lay.site.tolist())) == {(0, 0), (1, 1)}


def test_sites_differ_in_detector_and_put_their_markings_at_their_own_places():
    ph = generate_phantom(300, resolution=32, series_fraction=0.0)
    x = ph.images.reshape(len(ph), -1).astype(float)
    c = 6  # corner windows of the image: where sites put markers, text and label boxes
    corners = [ph.images[:, :c, :c], ph.images[:, :c, -c:], ph.images[:, -c:, :c], ph.images[:, -c:, -c:],
               ph.images[:, :, :3], ph.images[:, :, -3:]]  # and the side edges (rulers)
    feats = np.stack([x.mean(1), x.std(1), np.percentile(x, 10, axis=1), np.percentile(x, 90, axis=1)]
                     + [(w >= 250).mean(axis=(1, 2)) for w in corners], axis=1)
    train = np.arange(len(ph)) % 2 == 0
    mu = {s: feats[train & (ph.sites == s)].mean(0) for s in range(3)}
    sd = feats[train].std(0) + 1e-9
    pred = np.array([min(mu, key=lambda s: float(np.sum(((f - mu[s]) / sd) ** 2))) for f in feats[~train]])
    acc = (pred == ph.sites[~train]).mean()
    chance = np.bincount(ph.sites[~train]).max() / (~train).sum()
    assert acc > 0.85 > chance + 0.3, (acc, chance)  # a nearest-centroid site probe on 10 numbers


@pytest.mark.parametrize("kind", ["marker", "text", "label_box", "ruler"])
def test_each_marking_kind_sits_at_the_same_place_on_every_film_of_a_site(kind):
    # the same films with only this kind and with none: the difference is the marking (the
    # random streams do not depend on which kinds are drawn, except ECG leads)
    kw = dict(resolution=128, series_fraction=0.0, sites=2, seed=4)
    with_ = generate_phantom(24, markings=(kind,), **kw)
    none = generate_phantom(24, markings=(), **kw)
    assert np.array_equal(with_.labels, none.labels) and np.array_equal(with_.masks, none.masks)
    changed = with_.images != none.images
    uses = {"marker": {0, 1}, "text": {0, 1}, "label_box": {0}, "ruler": {1}}[kind]  # label boxes: even sites; rulers: 1, 4, 7...
    for s in (0, 1):
        rows = np.flatnonzero(with_.sites == s)
        if s not in uses:
            assert not changed[rows].any()
            continue
        area = changed[rows].reshape(len(rows), -1).mean(1)
        assert (area > 0).all() and area.max() < 0.15
        # the same place on every film of the site: the changed regions' bounding boxes overlap
        # (a pixel or two of jitter; the text's date and numbers change per film)
        def box(m):
            ys, xs = np.nonzero(m)
            return ys.min(), ys.max() + 1, xs.min(), xs.max() + 1

        def iou(p, q):
            h = max(0, min(p[1], q[1]) - max(p[0], q[0]))
            w = max(0, min(p[3], q[3]) - max(p[2], q[2]))
            area = lambda b: (b[1] - b[0]) * (b[3] - b[2])  # noqa: E731
            return h * w / (area(p) + area(q) - h * w)

        ref = box(changed[rows[0]])
        overlap = [iou(ref, box(changed[r])) for r in rows[1:]]
        assert np.median(overlap) > 0.5, overlap
        vals = with_.images[rows][changed[rows]]
        if kind == "label_box":  # burned in: a flat white box (its text black), no noise
            assert (vals == 255).mean() > 0.6
        if kind == "text":  # burned in: white strokes, anti-aliased at their rims
            assert vals.max() == 255 and (vals >= 240).mean() > 0.2
        if kind in ("marker", "ruler"):  # lead: saturates the detector at the stroke cores
            assert all(with_.images[r][changed[r]].max() >= 250 for r in rows)


def test_ecg_leads_lie_on_the_chest_in_a_share_of_a_sites_films():
    kw = dict(resolution=48, series_fraction=0.0, sites=1, seed=2)
    ecg = generate_phantom(60, markings=("ecg",), **kw)
    none = generate_phantom(60, markings=(), **kw)
    # the leads change the rest of the film's random draws, so compare where the bright thin leads are
    hit = [(np.abs(ecg.images[i].astype(int) - none.images[i]) > 40).mean() for i in range(60)]
    with_leads = np.mean(np.array(hit) > 0.002)
    assert 0.1 < with_leads < 0.9


def test_augmented_copies_are_keras_copies_of_the_film_before_them():
    from lungray.data.kerasaug import keras_random_params, keras_transform
    from lungray.data.phantom.dataset import S_COPY
    from lungray.data.phantom.fields import rng

    lay = layout(20000, PhantomSpec(copies=0.5))
    assert abs((lay.copy_of >= 0).mean() - 0.5 / 1.5) < 0.015  # Poisson(0.5) copies per film
    ph = generate_phantom(60, resolution=32, copies=0.5, seed=3)
    copies = np.flatnonzero(ph.copy_of >= 0)
    assert len(copies) > 5
    for i in copies:
        o = int(ph.copy_of[i])
        assert o < i and ph.copy_of[o] == -1 and ph.patient_ids[o] == ph.patient_ids[i]
        assert ph.labels[o] == ph.labels[i] and ph.sites[o] == ph.sites[i]
        p = keras_random_params(rng(3, S_COPY, int(i)), (32, 32))
        assert np.array_equal(ph.images[i], keras_transform(ph.images[o], **p))  # the original's markings included
        assert np.array_equal(ph.lung_masks[i], keras_transform(ph.lung_masks[o], **{**p, "brightness": 1.0}))
    assert generate_phantom(20, resolution=16, copies=0.0).copy_of.max() == -1


def test_lung_masks_hold_the_findings():
    ph = generate_phantom(40, n_classes=4, resolution=48, seed=6)
    area = ph.lung_masks.reshape(40, -1).mean(1)
    assert ((area > 0.1) & (area < 0.6)).all()
    assert ((ph.masks == 1) <= (ph.lung_masks == 1)).all()  # every finding pixel lies in a lung
    # the lungs are the dark fields of the film
    inside = [ph.images[i][ph.lung_masks[i] == 1].mean() for i in range(40)]
    outside = [ph.images[i][ph.lung_masks[i] == 0].mean() for i in range(40)]
    assert np.mean(inside) < np.mean(outside) - 20


def test_the_spec_key_round_trips_and_bad_knobs_name_their_config_key():
    spec = PhantomSpec(n_classes=4, images_per_patient=2.5, markings=("text",), copies=0.25, sites=5)
    assert PhantomSpec.from_key(spec.key) == spec
    assert PhantomSpec.from_key(PhantomSpec(markings=()).key).markings == ()
    for kw, key in [({"images_per_patient": 0.5}, "phantom_images_per_patient"), ({"series_fraction": 2}, "phantom_series_fraction"),
                    ({"series_length": 1}, "phantom_series_length"), ({"sites": 0}, "phantom_sites"),
                    ({"site_label_correlation": -0.1}, "phantom_site_label_correlation"),
                    ({"markings": ("text", "logo")}, "phantom_markings"), ({"copies": -1}, "phantom_copies")]:
        with pytest.raises(ConfigError, match=f"data.{key}"):
            PhantomSpec(**kw)
    with pytest.raises(ConfigError, match="unknown phantom option.*colour"):
        generate_phantom(4, colour=1)


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="n_classes must be 2 or 4, got 3"):
        generate_phantom(4, n_classes=3)
    with pytest.raises(ConfigError, match="difficulty must be a number > 0"):
        generate_phantom(4, difficulty=0)
    with pytest.raises(ConfigError, match="resolution must be an integer >= 8"):
        generate_phantom(4, resolution=4)
    with pytest.raises(ConfigError, match="size must be a positive integer"):
        generate_phantom(0)
    with pytest.raises(ConfigError, match="seed must be an integer >= 0"):
        generate_phantom(2, seed=-1)


@pytest.mark.parametrize("bits,photometric", [(8, "MONOCHROME2"), (12, "MONOCHROME1"), (16, "MONOCHROME2")])
def test_dicom_roundtrip(tmp_path, bits, photometric):
    import pydicom

    case = render_case(3, n_classes=4, resolution=32, seed=0)
    p = write_dicom(tmp_path / "x.dcm", case.image, bits=bits, photometric=photometric,
                    patient_id=case.patient_id, image_id=case.image_id, class_name=case.class_name)
    ds = pydicom.dcmread(p)
    px = ds.pixel_array
    top = (1 << bits) - 1
    assert (ds.Rows, ds.Columns, ds.BitsStored, ds.PhotometricInterpretation) == (32, 32, bits, photometric)
    assert ds.Modality == "CR" and ds.SamplesPerPixel == 1
    expect = case.image.astype(np.int64) if bits == 8 else np.round(case.image * (top / 255.0)).astype(np.int64)
    if photometric == "MONOCHROME1":
        expect = top - expect
    assert np.array_equal(px.astype(np.int64), expect)
    # synthetic identifiers only
    assert ds.PatientID == case.patient_id and str(ds.PatientName) == "Phantom^Synthetic"
    assert "PatientBirthDate" not in ds and "InstitutionName" not in ds
    assert case.class_name in ds.ImageComments
    # deterministic bytes (UIDs derived from the ids)
    q = write_dicom(tmp_path / "y.dcm", case.image, bits=bits, photometric=photometric,
                    patient_id=case.patient_id, image_id=case.image_id, class_name=case.class_name)
    assert p.read_bytes() == q.read_bytes()


def test_write_phantom_dicoms(tmp_path):
    import pydicom

    ph = generate_phantom(4, resolution=16)
    paths = phantom.write_phantom_dicoms(tmp_path / "dcm", ph, bits=12)
    assert [p.name for p in paths] == [f"{i}.dcm" for i in ph.ids]
    assert len({pydicom.dcmread(p).SOPInstanceUID for p in paths}) == 4


def test_sample_sheet_and_cli(tmp_path):
    from PIL import Image

    out = write_sample_sheet(tmp_path / "sheet.png", n_classes=4, per_class=2, resolution=64, dicom_dir=tmp_path / "d")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 300
        px = np.asarray(im.convert("L"))
    assert px.std() > 20  # not blank
    assert len(list((tmp_path / "d").glob("*.dcm"))) == 8
    assert phantom.main(["--out", str(tmp_path / "cli.png"), "--classes", "2", "--per-class", "1", "--resolution", "32"]) == 0
    assert (tmp_path / "cli.png").stat().st_size > 1000
    assert phantom.main(["--out", str(tmp_path / "bad.png"), "--difficulty", "-1"]) == 2
