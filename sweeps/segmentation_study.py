"""Segmentation size study: how many masked radiographs does a U-Net need?

Methods (PROTOCOLS.md section 3, the ``segmentation`` preset):

1. Compared: the RSNA study's U-Net (a twin of the Keras "U-Net-like" example: separable
   convolutions with residual projections, 32 -> 64/128/256 down, 256/128/64/32 up, trained
   from scratch) and an smp U-Net with an ImageNet ResNet-34 encoder.
2. Data: the RSNA Pneumonia Detection Challenge's DICOMs; masks made by filling each patient's
   boxes (1 inside, 0 out; a patient without boxes has an empty mask), at 256 px. A fixed,
   patient-disjoint held-out set of 2000 images and a validation set of 300.
3. Training sizes 100, 200 (the study's "first 200 images"), 500 and 1000, nested, three seeds
   per cell; the study's Dice loss (``dice_rsna``: softmax, Dice of the foreground channel
   pooled over the batch, smooth 1e-6), Adam 1e-3, batch 16, up to 100 epochs with early
   stopping on the validation loss (patience 10) and a checkpoint every epoch; the best epoch
   is scored.
4. Reported: per-image Dice and IoU averaged over images WITH an opacity (the segmentation
   quality; the study's Dice 0.95 pooled every pixel of a batch, where large boxes dominate)
   and over all images, the study's global mean IoU (background included), and detection of
   "any opacity" from the predicted mask (AUC), each with intervals over seeds and paired
   model differences on the same images.

Run:  python sweeps/segmentation_study.py --data /path/to/rsna-pneumonia-detection-challenge
      python sweeps/segmentation_study.py --preset segmentation_smoke     # CPU twin on the phantom
"""

import sys

from lungray.sweep.cli import main

if __name__ == "__main__":
    sys.exit(main(default_preset="segmentation", description=__doc__.splitlines()[0]))
