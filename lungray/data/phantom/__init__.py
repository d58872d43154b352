"""The phantom: lungray's built-in synthetic chest-radiograph dataset, messy the way the public sets are.

Why a phantom: lungray must run end to end (sweep, MLflow, report, Grad-CAM) on a laptop CPU
with no download, and its tests need images whose ground truth is known exactly: where the
finding is (lesion masks), where the lungs are (lung masks), which patient and which site a film
comes from, and which films are copies of which. The studies it stands in for
(``shared/PROTOCOLS.md``) use the Kaggle COVID-19 sets, so the class names are the Kaggle folder
names: 2-class ``("Normal", "COVID")`` (sections 2 and 5) and 4-class ``("COVID",
"Lung_Opacity", "Normal", "Viral Pneumonia")`` (section 4, alphabetical as the folders sort).

Those sets are messy, and a study on them must survive it (issue 18), so the phantom is too;
every knob is a ``data.phantom_*`` key (:class:`~lungray.data.phantom.layout.PhantomSpec`, the
README's table) and each is measured by ``tests/test_data_phantom.py``:

* **several images per patient** (:mod:`~lungray.data.phantom.layout`): follow-up films (mean
  ``images_per_patient``, 2) and CT-like series (``series_fraction`` 0.1 of the patients, of
  ``series_length`` 6 nearly identical films), so image-level splits leak and group-aware
  statistics matter;
* **acquisition sites** (:mod:`~lungray.data.phantom.sites`, ``sites`` 3) that differ in
  contrast, gamma, noise and collimation (bright margins or black shutters), and a configurable
  **site-label correlation** (``site_label_correlation``, 0 by default): a planted shortcut;
* **markings at site-specific places** (:mod:`~lungray.data.phantom.markings`, ``markings``):
  a lead ``L``/``R`` marker (boxed at some sites), 1-4 burned-in text lines, a white label box,
  a lead ruler, ECG electrodes and leads;
* **Kaggle-style augmented copies** (``copies``, 0 by default: the mean number of Keras
  ``ImageDataGenerator`` copies per film, :mod:`lungray.data.kerasaug`), which carry the
  original's markings;
* anatomy per patient (:mod:`~lungray.data.phantom.anatomy`) and findings with masks per film
  (:mod:`~lungray.data.phantom.findings`), all analytic in continuous coordinates, so any
  resolution is a clean rendering of the same case.

Every film's patient, site, lesion mask and lung mask travel with the prepared data
(:class:`lungray.data.prepared.PreparedData` ``patients``, ``sites``, ``masks``, ``lung_masks``),
and its rows carry keypoint features like a decoded file's, so the leakage audit's keypoint stage
runs on the main job.

Determinism: image ``i`` depends only on the spec, ``i`` and the resolution, never on ``n``:
every random draw comes from ``numpy.random.default_rng([seed, stream, key])``.

Difficulty: ``difficulty`` divides every finding's density and multiplies the quantum noise by
``sqrt(difficulty)``. The default, 1.0, was set (before sites and markings existed) so that a
small CNN's accuracy is far from saturated at 50 training images and still rising at 500. The
same CNN on the current phantom (``bench/bench_phantom.py --curve``: 3 blocks of 16-32-64
channels, BatchNorm, global average pooling, Adam 1e-3, batch 16, 20 epochs, horizontal flips,
nested patient-grouped subsets, 600 held-out images, seeds 0-2, 2 classes at 64 px; mean and the
range over seeds):

    ==========  ================  ================  ================  ================
    difficulty        50                100               200               500
    ==========  ================  ================  ================  ================
    1.0         0.50 (0.50-0.51)  0.53 (0.52-0.54)  0.49 (0.49-0.49)  0.58 (0.51-0.70)
    0.5         0.50 (0.49-0.51)  0.57 (0.52-0.63)  0.50 (0.49-0.52)  0.73 (0.63-0.80)
    ==========  ================  ================  ================  ================

It is harder than before (then 0.52 / 0.63 / 0.64 / 0.77 at 1.0 and 0.54 -> 0.94 at 0.5): the
sites' contrast and gamma, the markings and the CT-like series (several nearly identical
films of one patient in a subset teach little more than one) are variation a small CNN must
learn past, and runs stay on the chance plateau more often (200 images, 20 epochs). That is what
the public sets do to such curves; several seeds per cell show it.

Run ``python -m lungray.data.phantom --out sheet.png [--classes 4] [--resolution 256]`` to look
at it.
"""

from __future__ import annotations

from lungray.data.phantom.dataset import (
    CLASS_NAMES,
    PhantomCase,
    PhantomData,
    class_names_for,
    generate_phantom,
    image_id,
    patient_id,
    render_case,
    spec_of,
)
from lungray.data.phantom.dicom import write_dicom, write_phantom_dicoms
from lungray.data.phantom.findings import FINDINGS
from lungray.data.phantom.layout import Layout, PhantomSpec, layout
from lungray.data.phantom.markings import MARKINGS
from lungray.data.phantom.sheet import main, write_sample_sheet

__all__ = [
    "CLASS_NAMES",
    "FINDINGS",
    "MARKINGS",
    "Layout",
    "PhantomCase",
    "PhantomData",
    "PhantomSpec",
    "class_names_for",
    "generate_phantom",
    "image_id",
    "layout",
    "patient_id",
    "main",
    "render_case",
    "spec_of",
    "write_dicom",
    "write_phantom_dicoms",
    "write_sample_sheet",
]
