"""Transfer-learning study: which pretrained network, how much fine-tuning, which optimizer?

Methods (PROTOCOLS.md sections 2-4, the ``transfer`` preset):

1. Compared: VGG16, VGG19-BN, ResNet50, DenseNet121 and AlexNet with ImageNet weights, the
   backbone frozen (head only) vs partially unfrozen (VGG19-BN last 3 convolutions, ResNet50
   layer3 + layer4, AlexNet last convolution), and a logistic-regression baseline.
2. Optimizers: Adam (lr 1e-4) vs SGD (lr 1e-3, momentum 0.9, weight decay 0.01, StepLR 10/0.1)
   at equal budgets; the 4-class study reported Adam ~6 points ahead.
3. Data: the COVID-19 Radiography Database, 4 classes (COVID, Lung Opacity, Normal, Viral
   Pneumonia), 224 px, 80/10/10 split with seed 1; rotation + horizontal flip; ImageNet
   normalisation.
4. Training sizes 500, 2000 and 8000 (nested subsets), batch 32, up to 25 epochs with early
   stopping on validation loss (patience 5); three seeds per cell.
5. Reported per class: precision, recall, F1 and images missed as Normal, the clinically
   costly error the published studies counted by hand.

Run:  python sweeps/transfer_study.py --data /path/to/COVID-19_Radiography_Dataset
      python sweeps/transfer_study.py --dry-run
"""

import sys

from lungray.sweep.cli import main

if __name__ == "__main__":
    sys.exit(main(default_preset="transfer", description=__doc__.splitlines()[0]))
