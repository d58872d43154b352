"""Named study presets: the studies of ``shared/PROTOCOLS.md`` as config dictionaries.

Each preset is a plain nested dict (the same keys as a study YAML), so ``load_study`` can layer a
YAML file and ``a.b=value`` overrides on top. Every real preset has a CPU-sized twin
(``smoke``/``default`` for ``paper``, ``transfer_smoke`` for ``transfer``) that exercises the
same code path in CI. Each of the five studies is also spelled out as a YAML file under
``sweeps/configs/`` (``study1_ct_size.yaml`` ... with a ``*_smoke.yaml`` twin each).
"""

from __future__ import annotations

import copy
from typing import Any

from lungray.errors import ConfigError

# The training-size study (PROTOCOLS.md section 1): batch 4 x 200 epochs at 100-200 images,
# batch 16 x 100 epochs at 500-1000 images.
PAPER_SIZE_RULES = [
    {"max_size": 200, "batch_size": 4, "epochs": 200},
    {"max_size": 10**9, "batch_size": 16, "epochs": 100},
]

PRESETS: dict[str, dict[str, Any]] = {
    # CI smoke twin: tiny phantom, tiny models, a couple of minutes on 2 CPUs.
    "smoke": {
        "name": "smoke",
        "data": {"source": "phantom", "phantom_n": 360, "resolution": 32, "eval_size": 120, "val_size": 40},
        "models": [{"name": "simple_cnn", "width": 8}, {"name": "logreg"}],
        "sizes": [40, 120],
        "optimizers": [{"name": "adam", "lr": 3e-3}],
        "seeds": [0, 1],
        "schedule": {"rule": "fixed", "batch_size": 16, "epochs": 3},
        "train": {"augmentation": "none", "normalization": "pool"},
    },
    # What a new user gets with no arguments: the whole flow on one laptop CPU, real
    # architectures at small resolution, report included (< 15 minutes on 2 CPUs).
    "default": {
        "name": "phantom_size_study",
        # difficulty 0.5: a small CNN goes from ~0.55 at 50 images to > 0.9 at 450 within the
        # step budget below (the default 1.0 needs far more compute than a laptop demo has)
        # 0.1 Keras-style augmented copies per film, as in the Kaggle sets: the leakage audit's keypoint
        # stage finds them (and the report shows them); patients, sites and markings as the phantom's defaults
        "data": {"source": "phantom", "phantom_n": 1000, "phantom_difficulty": 0.5, "phantom_copies": 0.1, "resolution": 64,
                 "eval_size": 300, "val_size": 100},
        "models": [
            {"name": "simple_cnn", "width": 16},
            {"name": "resnet18", "head": "linear"},
        ],
        "sizes": [50, 150, 450],
        "optimizers": [{"name": "adam", "lr": 1e-3}],
        "seeds": [0, 1, 2],
        "schedule": {"rule": "steps", "batch_size": 16, "max_steps": 200, "eval_every": 2},
        "train": {"augmentation": "rot_hflip", "normalization": "pool"},
    },
    # PROTOCOLS.md section 1, faithfully: ResNet50, DenseNet121 and the autoencoder-pretrained
    # encoder + DenseNet121, 100/200/500/1000 CT images at 256 px, rotation 30 / zoom 0.1 /
    # flips, Conv2D(8)->Conv2D(3) stem, GAP-BN-dropout-256-BN-dropout head, 3000 eval images.
    "paper": {
        "name": "ct_size_study",
        "data": {
            "source": "covid_ct_xray",
            "modality": "CT",
            "resolution": 256,
            "eval_size": 3000,
            "val_size": 300,
        },
        # 256x256x3 input (repeat3: the stem's first conv and the autoencoder take 3 channels, as
        # the published 24,122,429 / 7,305,981 / 10,714 weights imply); Grad-CAM on the last conv
        "models": [
            {"name": "resnet50", "head": "bn_mlp256", "stem": "conv8_conv3", "pretrained": True, "input_mode": "repeat3", "gradcam_layer": "last_conv"},
            {"name": "densenet121", "head": "bn_mlp256", "stem": "conv8_conv3", "pretrained": True, "input_mode": "repeat3", "gradcam_layer": "last_conv"},
            {"name": "ae_encoder", "head": "bn_mlp256", "pretrained": True, "input_mode": "repeat3", "gradcam_layer": "last_conv"},
        ],
        "sizes": [100, 200, 500, 1000],
        "optimizers": [{"name": "adam", "lr": 1e-4}],
        "seeds": [0, 1, 2],
        "schedule": {"rule": "size", "size_rules": PAPER_SIZE_RULES, "eval_every": 5},
        # the autoencoder trained on 4000 COVID images (of the training pool here)
        "train": {"augmentation": "rot30_zoom_flip", "normalization": "imagenet", "ae_epochs": 30,
                  "ae_pretrain_class": "COVID", "ae_pretrain_images": 4000},
        "resources": {"workers": 1, "cpus_per_worker": 3, "gpus_per_worker": 0.25},
    },
    # PROTOCOLS.md sections 2-4: transfer learning on the 4-class COVID-19 Radiography Database,
    # head-only vs partial fine-tuning, Adam vs SGD(0.9, StepLR 10/0.1). Section 2's heads on
    # frozen trunks (VGG16 pool-MLP64, DenseNet-121 with the BatchNorm before the pooling);
    # section 4's torchvision networks keep their classifier with the last layer replaced and
    # fine-tune the last convolutions with it; Grad-CAM on every network's last convolution.
    "transfer": {
        "name": "transfer_4class",
        "data": {"source": "covid_radiography", "resolution": 224, "eval_size": 0.1, "val_size": 0.1, "split_seed": 1},
        "models": [
            {"name": "vgg16", "freeze": "backbone", "pretrained": True, "head": "pool_mlp64", "input_mode": "repeat3", "gradcam_layer": "last_conv"},
            {"name": "densenet121", "freeze": "backbone", "pretrained": True, "head": "bn_pool_mlp64", "input_mode": "repeat3", "gradcam_layer": "last_conv"},
            {"name": "tv:vgg19_bn", "freeze": "backbone", "pretrained": True, "head": "tv_classifier", "input_mode": "repeat3", "gradcam_layer": "last_conv", "label": "vgg19_bn[classifier]"},
            {"name": "tv:vgg19_bn", "freeze": "last:3", "pretrained": True, "head": "tv_classifier", "input_mode": "repeat3", "gradcam_layer": "last_conv", "label": "vgg19_bn[last3+classifier]"},
            {"name": "tv:resnet50", "freeze": "backbone", "pretrained": True, "input_mode": "repeat3", "gradcam_layer": "last_conv", "label": "resnet50[fc]"},
            {"name": "tv:resnet50", "freeze": "last:2", "pretrained": True, "input_mode": "repeat3", "gradcam_layer": "last_conv", "label": "resnet50[layer3+4+fc]"},
            {"name": "tv:alexnet", "freeze": "last:1", "pretrained": True, "head": "tv_classifier", "input_mode": "repeat3", "gradcam_layer": "last_conv", "label": "alexnet[conv5+classifier]"},
            {"name": "logreg"},
        ],
        "sizes": [500, 2000, 8000],
        "optimizers": [
            {"name": "adam", "lr": 1e-4},
            {"name": "sgd", "lr": 1e-3, "momentum": 0.9, "weight_decay": 0.01, "scheduler": "step", "step_size": 10, "gamma": 0.1},
        ],
        "seeds": [0, 1, 2],
        "schedule": {"rule": "fixed", "batch_size": 32, "epochs": 25, "early_stopping_patience": 5},
        "train": {"augmentation": "rot_hflip", "normalization": "imagenet"},
        "resources": {"workers": 1, "cpus_per_worker": 4, "gpus_per_worker": 0.5},
    },
    # The CI twin of ``transfer`` (the protocol elements of sections 2-4 on the 4-class
    # phantom at 64 px, random init, a few minutes on 2 CPUs): frozen trunks read by
    # Grad-CAM at their last convolution, a torchvision classifier with only its last layer
    # trained, partial fine-tuning, Keras inverse-time decay, and the preprocessing x
    # normalisation variants (ImageNet per channel, fixed radiograph numbers, CLAHE) as one
    # paired sweep.
    "transfer_smoke": {
        "name": "transfer_smoke",
        "data": {"source": "phantom", "phantom_n": 240, "phantom_classes": 4, "resolution": 64, "eval_size": 64,
                 "val_size": 24, "split_seed": 1},
        "models": [
            # torchvision's ResNet: timm zero-initialises each block's last batch norm, so a frozen
            # random timm trunk gives its last conv no gradient (a blank map) until trained
            {"name": "tv:resnet18", "freeze": "backbone", "head": "bn_pool_mlp64", "input_mode": "repeat3", "gradcam_layer": "last_conv"},
            {"name": "tv:alexnet", "freeze": "fc_only", "head": "tv_classifier", "input_mode": "repeat3", "gradcam_layer": "last_conv"},
            {"name": "logreg"},
        ],
        "variants": [
            {"label": "imagenet", "normalization": "imagenet"},
            {"label": "radiograph", "normalization": "fixed", "norm_mean": [0.5], "norm_std": [0.25]},
            {"label": "clahe", "preprocess": "clahe", "normalization": "imagenet"},
        ],
        "sizes": ["all"],
        "optimizers": [{"name": "adam", "lr": 1e-3, "scheduler": "inverse_time"}],
        "seeds": [0],
        "schedule": {"rule": "fixed", "batch_size": 32, "epochs": 2},
        "train": {"augmentation": "rot15_nearest"},
    },
    # PROTOCOLS.md section 3, the RSNA U-Net as a training-size study: the study's Keras U-Net twin
    # (separable convolutions, residual projections, trained from scratch) beside an smp U-Net with
    # an ImageNet ResNet-34 encoder (pretrained weights: the classification presets' offline rules),
    # on the challenge's boxes filled into masks, the study's Dice loss (dice_rsna: foreground
    # channel, smooth 1e-6), Adam at Keras' default 1e-3, early stopping on the validation loss
    # and a checkpoint per epoch. The study trained on the first
    # 200 images; here 100/200/500/1000, nested, x 3 seeds, scored on 2000 held-out images at
    # 256 px (a multiple of 32, so both U-Nets take it; 16 trials fit one GPU at 0.25 each).
    "segmentation": {
        "name": "rsna_unet_size_study",
        "data": {"source": "rsna", "resolution": 256, "eval_size": 2000, "val_size": 300},
        "models": [
            {"name": "unet_keras"},
            {"name": "unet:resnet34", "pretrained": True, "input_mode": "repeat3"},
        ],
        "sizes": [100, 200, 500, 1000],
        "optimizers": [{"name": "adam", "lr": 1e-3}],
        "seeds": [0, 1, 2],
        "schedule": {"rule": "fixed", "batch_size": 16, "epochs": 100, "early_stopping_patience": 10,
                     "monitor": "val_loss", "eval_every": 1},
        "train": {"task": "segmentation", "loss": "dice_rsna", "augmentation": "none", "normalization": "pool"},
        "resources": {"workers": 1, "cpus_per_worker": 3, "gpus_per_worker": 0.25},
    },
    # CPU twin of "segmentation" (CI, the README's measured curve): the phantom's lesion masks
    # (4 classes: three findings with masks, one without), the Keras twin and an smp U-Net with a
    # small timm encoder (ResNet-10-T), both narrowed and from scratch at 32 px, the same step
    # budget at every size so only the data differ, the study's loss (dice_rsna). Why the Keras
    # twin's curve stays flat at this scale (no skip connections, lesions smaller than its 1/16
    # bottleneck cells): bench/diagnose_unet_twin.py and the README.
    "segmentation_smoke": {
        "name": "segmentation_smoke",
        "data": {"source": "phantom", "phantom_classes": 4, "phantom_n": 640, "phantom_difficulty": 0.5,
                 "resolution": 32, "eval_size": 120, "val_size": 40},
        "models": [{"name": "unet_keras", "width": 8}, {"name": "unet:resnet10t", "width": 4}],
        "sizes": [25, 100, 400],
        "optimizers": [{"name": "adam", "lr": 3e-3}],
        "seeds": [0, 1],
        "schedule": {"rule": "steps", "batch_size": 16, "max_steps": 400, "eval_every": 5,
                     "early_stopping_patience": 6, "monitor": "val_loss"},
        "train": {"task": "segmentation", "loss": "dice_rsna", "augmentation": "none", "normalization": "pool"},
    },
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def preset_dict(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; valid choices: {', '.join(preset_names())}")
    return copy.deepcopy(PRESETS[name])
