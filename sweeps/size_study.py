"""Training-size study: how does test accuracy grow with the number of labelled images?

Methods (PROTOCOLS.md section 1, the ``paper`` preset; ``default`` is its laptop twin):

1. Compared: ResNet50, DenseNet121 and an autoencoder-pretrained encoder feeding DenseNet121,
   each with the GAP-BN-dropout-256-BN-dropout head (``default``: a small CNN and ResNet18).
2. Data: COVID vs non-COVID CT images (Kaggle ssarkar445; ``default``: the built-in phantom),
   decoded once into a shared cache. A fixed held-out set (3000 images) is split off first,
   patient-disjoint, and near-duplicates of it are dropped from the training pool.
3. Training sizes 100, 200, 500 and 1000: nested, stratified subsets of the pool, so each
   smaller set sits inside the larger one and every model sees the same images at a size.
4. Budget: batch 4 x 200 epochs up to 200 images, batch 16 x 100 epochs above; Adam;
   rotation 30 / zoom 0.1 / flips; 256 px.
5. Three seeds per cell (the published study ran one), so each point gets a mean and an
   interval and two models can be compared pairwise on the same held-out images.
6. Every trial is one Ray Tune trial (trained through Ray Train when it spans several GPUs)
   and logged to MLflow; the report (learning curves with CIs, per-class metrics, confusion
   matrices, Grad-CAM) closes the run.

Run:  python sweeps/size_study.py               (phantom, one laptop CPU, < 15 min)
      python sweeps/size_study.py --preset paper --data /path/to/covid_ct_xray
      python sweeps/size_study.py --dry-run     (the grid and the resources, nothing runs)
"""

import sys

from lungray.sweep.cli import main

if __name__ == "__main__":
    sys.exit(main(default_preset="default", description=__doc__.splitlines()[0]))
