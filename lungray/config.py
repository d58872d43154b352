"""One frozen, validated config tree per study.

A study is resolved from three layers, in order (Ray's ``experiment_config.py`` pattern):

1. a named preset (``smoke``, ``default``, ``paper``, ``transfer``... see :mod:`lungray.presets`);
2. an optional YAML file with the same nested keys;
3. ``a.b.c=value`` overrides from the command line (values parsed as YAML scalars/lists).

Unknown keys are rejected at every level with the list of valid keys, and every registry name
(model, head, freeze policy, optimizer, scheduler, augmentation, adapter, task...) is checked
before any data is read or any GPU is touched (:func:`lungray.study.load_study`, which resolves
with :func:`resolve_study` and validates with :mod:`lungray.train.validate`; this module imports
no registry, because the registries import it: config is the bottom layer). The resolved config is
printed, written next to the results and logged to MLflow, so a run can always be reproduced
from its own record.

The trial-level config (:class:`TrialConfig`) is a study config collapsed to one grid cell: one
model, one training size, one optimizer, one seed. It is what a Ray Train worker receives.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from lungray.errors import ConfigError

# --------------------------------------------------------------------------------------------
# The tree
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExternalSetConfig:
    """One named external evaluation set (issue 24, point 1): every trial's selected model is also
    scored on it, and the report gives its metrics, learning curves and fits beside the internal
    held-out set's, with the internal-external gap per training size.

    Why: the COVID imaging models of 2020 scored AUC ~0.99 on held-out images of their own
    sources and far lower elsewhere (Roberts et al. 2021; DeGrave et al. 2021, Nat Mach Intell):
    an internal test set cannot show a model that learned the hospital. Two kinds, exactly one set:

    - ``hold_out_site``: every image of this acquisition site (the phantom's ``site-0``,
      ``site-1``...; a CSV's ``site`` column) is taken out of the study's data before it is split:
      never trained on, never validated on, and neither is any image sharing a patient or a
      duplicate cluster with it;
    - ``source`` (+ ``path``, ``class_map``, ``modality``): another dataset adapter, decoded at the
      study's resolution and preprocessing; all its usable images are the set. ``settings`` sets
      any other ``data.*`` key of that second dataset (e.g. ``{phantom_seed: 7,
      phantom_site_label_correlation: 0}``); the rest is inherited from ``data``. Its classes
      (after ``class_map``) must be the study's.
    """

    name: str
    hold_out_site: Optional[str] = None
    source: Optional[str] = None
    path: Optional[str] = None
    class_map: Optional[Mapping[str, Optional[str]]] = None
    modality: Optional[str] = None
    settings: Optional[Mapping[str, Any]] = None

    @property
    def kind(self) -> str:
        return "site" if self.hold_out_site is not None else "source"

    def data_config(self, base: "DataConfig") -> "DataConfig":
        """The second dataset's :class:`DataConfig`: ``base`` (decode settings, leakage...) with this
        set's source, path, class map and ``settings``; no external sets of its own."""
        over: dict[str, Any] = {"source": self.source, "path": self.path, "class_map": self.class_map, "modality": self.modality,
                                # never split (every usable image is the set): the check's split refusals off
                                "external": (), "eval_size": 0.5, "val_size": 0, "val_is_eval": False, "split_unit": "group",
                                "min_eval_per_class": 0, "min_val_per_class": 0}
        for k, v in dict(self.settings or {}).items():
            over[k] = v
        d = {**to_dict(base), **to_dict(over)}
        return from_dict(DataConfig, d, "settings")


@dataclass(frozen=True)
class DataConfig:
    """Where images come from, how they are decoded, cached and split.

    ``source`` names a dataset adapter (``phantom``, ``folder``, ``covid_radiography``,
    ``covid_ct_xray``, ``rsna``, ``csv``, ``medmnist``). ``class_map`` maps source class names to
    study class names (e.g. 4 folders -> "COVID" vs "rest"); a source class mapped to ``null``
    is dropped.

    The phantom (``source: phantom``, :mod:`lungray.data.phantom`; issue 18: it looks like the
    public sets, each knob measured by ``tests/test_data_phantom.py``):

    - ``phantom_n`` images (augmented copies included), ``phantom_classes`` 2 or 4,
      ``phantom_difficulty`` (divides every finding's density), ``phantom_seed``;
    - ``phantom_images_per_patient``: mean follow-up films per patient (geometric, >= 1);
    - ``phantom_series_fraction`` of the patients come as a CT-like series of
      ``phantom_series_length`` nearly identical films (adjacent slices);
    - ``phantom_sites`` acquisition sites, differing in contrast, gamma, noise and collimation
      and in where they put their markings; ``phantom_site_label_correlation`` in [0, 1] plants
      a site shortcut (``P(site = the class's home site) = c + (1 - c) / sites``; 0: none);
    - ``phantom_markings``: which of ``marker`` (lead L/R, boxed at some sites), ``text`` (1-4
      burned-in lines), ``label_box``, ``ruler``, ``ecg`` (electrodes and leads) sites may use;
      ``[]`` gives clean films;
    - ``phantom_copies``: mean number of Keras-style augmented copies per film (the Kaggle sets'
      copies, carrying the original's markings; 0 = none);
    - ``phantom_patient_ids``: ``false`` leaves the patient ids out of the manifest, like the
      Kaggle folder sets (then only the leakage audit groups copies).

    Split refusals (issue 18; checked before anything trains and by ``lungray data check``,
    exit 1): the evaluation set must hold at least ``min_eval_per_class`` images of every class
    and the validation set (when ``val_size`` > 0) at least ``min_val_per_class``; no duplicate
    cluster of the leakage audit may hold more than ``max_cluster_share`` of the images (10
    images are always allowed, however small the dataset) or join more than
    ``max_cluster_patients`` distinct patient ids. A duplicate pair whose two images carry different labels is never a
    grouping edge: it is reported as a label conflict or a suspected false pair.
    """

    source: str = "phantom"
    path: Optional[str] = None
    class_map: Optional[Mapping[str, Optional[str]]] = None
    modality: Optional[str] = None  # covid_ct_xray: "CT" or "X-ray" subtree
    # phantom generator (used when source == "phantom")
    phantom_n: int = 1200
    phantom_classes: int = 2
    phantom_difficulty: float = 1.0
    phantom_seed: int = 0
    phantom_images_per_patient: float = 2.0
    phantom_series_fraction: float = 0.1
    phantom_series_length: int = 6
    phantom_sites: int = 3
    phantom_site_label_correlation: float = 0.0
    phantom_markings: tuple[str, ...] = ("marker", "text", "label_box", "ruler", "ecg")
    phantom_copies: float = 0.0
    phantom_patient_ids: bool = True
    # decode / cache
    resolution: int = 64
    resize: str = "stretch"  # "stretch" or "letterbox"
    preprocess: str = "none"  # "none", "clahe", "hist_eq", "local_eq"
    cache_dtype: str = "uint8"  # "uint8" or "uint16"
    cache_dir: Optional[str] = None  # default: <output_dir>/cache
    # splits
    eval_size: Union[int, float] = 0.25  # count (>=1) or fraction (<1) of the dataset
    val_size: Union[int, float] = 0.1  # count or fraction of what remains after eval
    split_seed: int = 0  # the held-out set is fixed across seeds: it has its own seed
    class_balanced: bool = False  # class-balanced nested subsets
    # the held-out evaluation set is ALSO the validation set (early stopping and checkpoint
    # selection read the test images): study 5 as published (PROTOCOLS.md section 5), a flaw kept
    # only to reproduce it; needs val_size 0, and the report flags every sweep that uses it
    val_is_eval: bool = False
    # split refusals: an accuracy on 10 images has a 95 % interval of about +-0.3, below that a
    # per-class metric is noise; a validation set needs each class to pick a checkpoint by
    min_eval_per_class: int = 10
    min_val_per_class: int = 3
    max_cluster_share: float = 0.05  # one duplicate cluster holding more of the data is the audit chaining distinct images
    max_cluster_patients: int = 3  # a copy belongs to one patient: a cluster over more patient ids is false pairs
    # leakage audit
    # duplicate clusters are split groups (no copy crosses a holdout split); "drop" removes training-side
    # copies of val/eval images where a source's own predefined split lets them cross, "report" lists them,
    # "off" skips the duplicate search (patient groups only)
    leakage: str = "drop"
    leakage_max_distance: int = 6  # Hamming distance on 64-bit perceptual hashes (stage 1 of the search)
    strict: bool = False  # fail on any quarantined row instead of dropping it
    # csv rows may only point under the CSV's folder unless this is set (lungray.data.adapters)
    allow_outside_root: bool = False
    # more classes than this is refused before anything trains (issue 23: 400 one-image folders, a
    # folder per patient rather than per class, exhausted memory); chest imaging sets have <= 15
    max_classes: int = 64
    # named external evaluation sets besides the held-out one (issue 24, point 1; ExternalSetConfig):
    # [{name: site_2, hold_out_site: site-2}, {name: other, source: folder, path: /data/other}]
    external: tuple[ExternalSetConfig, ...] = ()
    # what the holdout split keeps together: "group" (patients and the audit's duplicate clusters,
    # lungray's default) or "image" (every image on its own, copies and follow-up films on both sides:
    # the COVID-19 papers' split, kept only to measure what it inflates; issue 24, point 5)
    split_unit: str = "group"


@dataclass(frozen=True)
class ModelConfig:
    """One model of the grid.

    ``name`` is a model-registry name: any timm architecture (``resnet50``), a torchvision one
    with the ``tv:`` prefix (``tv:alexnet``), or lungray's own (``simple_cnn``, ``logreg``,
    ``ae_encoder``). ``freeze`` is ``none``, ``backbone`` or ``last:N`` (last N stages
    trainable). ``pretrained`` is ``false``, ``true`` (timm hub) or a local file/folder path.
    ``label`` is the name shown in tables and MLflow (defaults to ``name``).
    """

    name: str = "simple_cnn"
    head: str = "linear"  # "linear", "bn_mlp256" (training-size study), "pool_mlp64" (Grad-CAM study)
    stem: str = "none"  # "none" or "conv8_conv3" (the training-size study's Conv2D(8)->Conv2D(3) before the backbone)
    freeze: str = "none"
    pretrained: Union[bool, str] = False
    input_mode: str = "in_chans1"  # "in_chans1" (timm folds RGB filters) or "repeat3"
    drop_rate: float = 0.5
    width: Optional[int] = None  # optional width for lungray's own small models
    label: Optional[str] = None
    # Grad-CAM target: "auto" (the family's default: ResNet's last block, DenseNet's norm5, the ReLU
    # after VGG's/AlexNet's last conv), "last_conv" (the studies' layer: the last convolution, e.g.
    # ResNet50 conv5_block3_3_conv = layer4[-1].conv3, PROTOCOLS.md sections 2 and 4) or a module path
    # inside the model ("backbone.body.layer4.2.conv2")
    gradcam_layer: str = "auto"
    padding: str = "same"  # simple_cnn's 3x3 convolutions: "same" or "valid" (section 5: 18,129,890 weights at 299 px)
    # this model's own input, as a Keras application reads its directory iterator
    # (PROTOCOLS.md section 5: the VGG19 reference at 224 px with vgg19.preprocess_input beside a
    # CNN at 299 px in [0, 1]): ``input_size`` resizes the cached image (nearest neighbour, Keras'
    # load_img default) before augmentation; ``normalization`` replaces train.normalization for
    # this model (e.g. "keras_caffe"). None: the study's.
    input_size: Optional[int] = None
    normalization: Optional[str] = None

    @property
    def key(self) -> str:
        return self.label or (
            self.name if self.freeze == "none" else f"{self.name}[{self.freeze}]"
        )


@dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer with its own learning rate and scheduler (adam, adamw, sgd)."""

    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only (the RSNA/4-class studies: 0.9)
    scheduler: str = "none"  # "none", "step", "cosine"
    step_size: int = 10  # StepLR(10, 0.1), as in the RSNA study
    gamma: float = 0.1
    warmup_epochs: int = 0
    grad_clip: Optional[float] = None
    label: Optional[str] = None
    decay: Optional[float] = None  # scheduler "inverse_time": Keras' decay per iteration; None = lr / epochs (section 2)

    @property
    def key(self) -> str:
        return self.label or (self.name if self.scheduler == "none" else f"{self.name}+{self.scheduler}")


@dataclass(frozen=True)
class SizeRule:
    """Batch size and epochs for training sizes up to ``max_size`` (inclusive)."""

    max_size: int
    batch_size: int
    epochs: int


#: ``schedule.steps_per_epoch`` of study 5's code (PROTOCOLS.md section 5)
KERAS_BATCHES_OVER_BATCH = "ceil(n/b)//b"


@dataclass(frozen=True)
class ScheduleConfig:
    """How long to train, as a rule of the training size.

    ``rule``: ``fixed`` (``batch_size`` x ``epochs`` for every size), ``size`` (the first of
    ``size_rules`` whose ``max_size`` >= n; the training-size study used batch 4 x 200 epochs up
    to 200 images and batch 16 x 100 epochs above), or ``steps`` (a fixed budget of
    ``max_steps`` optimisation steps at ``batch_size``, so every size gets the same compute).

    Resumable checkpoints: every ``checkpoint_every`` epochs, but no sooner than
    ``checkpoint_min_seconds`` after the previous one, and always at the end. A resnet18
    checkpoint (model + optimizer + best weights) is 128-171 MB; written every epoch it cost
    12-14 % of a CPU epoch and more than a whole GPU epoch of a small training size
    (``bench/RESULTS.md``). A crash replays at most a minute of epochs, exactly.
    """

    rule: str = "fixed"
    batch_size: int = 16
    epochs: int = 10
    size_rules: tuple[SizeRule, ...] = ()
    max_steps: Optional[int] = None
    eval_every: int = 1
    early_stopping_patience: Optional[int] = None  # in evaluations; None = off
    monitor: str = "val_loss"  # one of the task's validation metrics, each with its direction (lungray.train.tasks)
    checkpoint_every: int = 1  # epochs between resumable checkpoints...
    checkpoint_min_seconds: float = 60.0  # ...but at most one per this many seconds (0 = every checkpoint_every)
    # what one "epoch" is: None = one pass over the training subset; N = N optimisation steps cut
    # from one endless stream of shuffled passes (Keras fit(generator, steps_per_epoch=N); each
    # epoch ends with the validation and early-stopping step); "ceil(n/b)//b" = study 5's code
    # as published, len(train_set) // batch_size with len(train_set) already a count of batches
    # (9 steps of 32 at its ~9,660 training images; PROTOCOLS.md section 5)
    steps_per_epoch: Union[int, str, None] = None

    def epoch_steps(self, n_train: int, batch_size: int) -> Optional[int]:
        """``steps_per_epoch`` as a number of steps at this size (``None``: a full pass).

        >>> ScheduleConfig(steps_per_epoch="ceil(n/b)//b").epoch_steps(9665, 32)  # ceil(9665/32) = 303 -> 303 // 32
        9
        >>> ScheduleConfig(steps_per_epoch="ceil(n/b)//b").epoch_steps(100, 32)  # at least one step
        1
        """
        k = self.steps_per_epoch
        if k is None:
            return None
        if k == KERAS_BATCHES_OVER_BATCH:
            return max(1, math.ceil(int(n_train) / int(batch_size)) // int(batch_size))
        if isinstance(k, str):
            raise ConfigError(f"schedule.steps_per_epoch: '{k}' is not valid; a positive count, null, or '{KERAS_BATCHES_OVER_BATCH}'")
        return int(k)

    def resolve(self, n_train: int) -> tuple[int, int]:
        """(batch_size, epochs) for a training size, per the rule."""
        if self.rule == "fixed":
            return self.batch_size, self.epochs
        if self.rule == "size":
            for r in sorted(self.size_rules, key=lambda r: r.max_size):
                if n_train <= r.max_size:
                    return r.batch_size, r.epochs
            last = max(self.size_rules, key=lambda r: r.max_size)
            return last.batch_size, last.epochs
        if self.rule == "steps":
            assert self.max_steps is not None
            bs = min(self.batch_size, n_train)
            steps_per_epoch = self.epoch_steps(n_train, bs) or math.ceil(n_train / bs)
            return bs, max(1, math.ceil(self.max_steps / steps_per_epoch))
        raise ConfigError(f"unknown schedule rule '{self.rule}'; valid choices: fixed, size, steps")


@dataclass(frozen=True)
class TrainConfig:
    """Everything about the training loop that is not the model, optimizer or budget."""

    task: str = "classification"  # a lungray.train.tasks.TASKS name: "classification" or "segmentation"
    loss: str = "auto"  # the task's loss: "auto" = its default (classification: ce; segmentation: dice); the RSNA study's is dice_rsna
    augmentation: str = "none"  # an augmentation preset name
    normalization: str = "pool"  # "imagenet", "pool" (mean/std of the training pool), "none"
    imbalance: str = "none"  # "none", "weighted_loss", "weighted_sampler"
    label_smoothing: float = 0.0
    amp: str = "auto"  # "auto" (bf16 on GPUs that have it, else fp16; off on CPU), "bf16", "fp16", "off"
    channels_last: bool = True
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1"...
    num_workers: int = 0  # DataLoader workers per Train worker
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)
    eval_batch_size: int = 64
    ae_epochs: int = 20  # ae_encoder reconstruction pretraining epochs
    ae_pretrain_images: Optional[int] = None  # None = the whole unlabelled training pool
    ae_pretrain_class: Optional[str] = None  # pretrain on the pool images of this class only (section 1: 4000 COVID images)
    # normalization "fixed": mean/std in [0, 1] units, one number or one per input channel (the
    # 4-class study's radiograph-specific statistics, PROTOCOLS.md section 4)
    norm_mean: Optional[tuple[float, ...]] = None
    norm_std: Optional[tuple[float, ...]] = None


@dataclass(frozen=True)
class ResourcesConfig:
    """Ray resources for one trial, and whether it trains through Ray Train.

    ``use_ray_train``: ``true`` trains every trial through a Ray Train ``TorchTrainer``;
    ``false`` runs the loop inside the Tune trial process; ``"auto"`` (the default) uses Ray
    Train when a trial has several workers (DDP) and the Tune trial itself for a one-worker
    trial. Why: a ``TorchTrainer`` starts a controller, a worker and three helper processes for
    every trial (about 7 s on an idle 2-CPU machine, 30-40 s on a busy one: ``bench/RESULTS.md``),
    while a one-worker trial gets nothing from it that Tune does not already give (retries from
    the last checkpoint, fractional GPUs, one MLflow run per trial); Tune also re-uses a trial
    process for the next trial (``reuse_actors``) so imports are paid once per slot.

    With Ray Train, the trial function holds almost nothing (``trial_cpu``, default 0.01) and
    its Train workers hold the real CPUs/GPUs: a trial that held a whole CPU while its worker
    waited for another deadlocks a 2-CPU machine; GPUs go on workers, never on the trial.
    Without Ray Train, the trial itself holds one worker's ``cpus_per_worker`` and
    ``gpus_per_worker``.
    """

    workers: int = 1
    cpus_per_worker: float = 0.99
    gpus_per_worker: float = 0.0
    trial_cpu: float = 0.01
    max_concurrent_trials: Optional[int] = None  # None = derived from the cluster
    max_failures: int = 2  # retries of a trial from its last checkpoint
    use_ray_train: Union[bool, str] = "auto"  # true, false, or "auto" (Ray Train only for workers > 1)

    @property
    def ray_train(self) -> bool:
        """Whether trials train through Ray Train (``use_ray_train`` with ``"auto"`` resolved)."""
        if isinstance(self.use_ray_train, bool):
            return self.use_ray_train
        return self.workers > 1


@dataclass(frozen=True)
class TrackingConfig:
    tracking_uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI or sqlite in output_dir
    experiment: Optional[str] = None  # None: the study name
    log_checkpoints: bool = True
    gradcam: bool = True  # Grad-CAM panels in the report
    # also write every report figure as a 300-dpi PNG, SVG and PDF (180 mm) under report/figures/;
    # off by default: the page embeds its figures, and the print files were a quarter of its time
    print_figures: bool = False


@dataclass(frozen=True)
class VariantConfig:
    """One preprocessing x normalisation arm of the grid (the ``variants`` axis).

    The 4-class study (PROTOCOLS.md section 4) compared CLAHE on/off and ImageNet vs
    radiograph-specific normalisation; as variants of one sweep those comparisons are paired
    (same subsets, same evaluation images). ``None`` keeps the study's ``data.preprocess`` /
    ``train.normalization`` / ``train.norm_mean`` / ``train.norm_std``. Each preprocessing gets
    its own decoded cache with the same rows and splits. A trial's *arm* (what the report
    compares and the grid key) is ``<model key>@<variant key>`` when the variant has a key.
    """

    label: Optional[str] = None
    preprocess: Optional[str] = None
    normalization: Optional[str] = None
    norm_mean: Optional[tuple[float, ...]] = None
    norm_std: Optional[tuple[float, ...]] = None

    @property
    def key(self) -> str:
        """``label``, else the settings it changes joined by ``+`` (``""`` for the study's own)."""
        return self.label or "+".join(str(v) for v in (self.preprocess, self.normalization) if v is not None)


#: ``train.task`` of a source-probe trial and the suffix of its arm (``resnet18~source-probe``):
#: the report tells probe trials from the study's own by it (:attr:`TrialConfig.is_probe`)
SITE_TASK = "site"
PROBE_ARM_SUFFIX = "~source-probe"


@dataclass(frozen=True)
class ProbeConfig:
    """Does the model look at the lungs? The shortcut probes of issue 24 (points 2-4).

    The COVID chest-film literature was undone by models that learned the hospital, not the
    disease (DeGrave et al. 2021, Nat Mach Intell; Roberts et al. 2021, Nat Mach Intell). These
    probes measure it inside every study, as trials and evaluation passes of the same sweep:

    - ``source``: for every trial of the grid, a *source-probe* trial trains the same
      architecture, on the same training subset and budget, to predict the acquisition site
      (``train.task = site``; its arm is ``<arm>~source-probe``). The report gives its AUC with
      an interval and warns when the source is predictable AND associated with the label (the
      DeGrave test). Needs every image's site (the phantom; a manifest ``site`` column).
    - ``lungs``: after training, every classification trial evaluates its selected model on its
      evaluation images with the lung fields blanked and with everything outside them blanked
      (:mod:`lungray.data.ablation`, fill ``fill``), and measures the share of its Grad-CAM mass
      inside the lungs next to an image-blind map (the mean training lung mask) and the same
      architecture with randomised weights (:mod:`lungray.metrics.saliency`). Runs when the
      prepared data has lung masks (the phantom's, the Radiography Database's ``masks/``);
      skipped, and said so, otherwise.
    - ``cam_images``: evaluation images per trial in the Grad-CAM pass (0: no saliency probe);
      the ablations always use every evaluation image with a usable lung mask.
    """

    source: bool = False
    lungs: bool = True
    fill: str = "kept_mean"
    cam_images: int = 200


@dataclass(frozen=True)
class StudyConfig:
    """A whole study: the grid model x training size x optimizer x seed, and how to run it."""

    name: str = "study"
    data: DataConfig = field(default_factory=DataConfig)
    models: tuple[ModelConfig, ...] = (ModelConfig(),)
    # training sizes: counts, or "all" (also -1): the whole training pool, resolved when the
    # data is prepared (the 4-class study trained on all 16,932 pool images)
    sizes: tuple[Union[int, str], ...] = (50, 100, 200)
    optimizers: tuple[OptimizerConfig, ...] = (OptimizerConfig(),)
    seeds: tuple[int, ...] = (0, 1, 2)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    output_dir: str = "lungray_runs"
    lr_search: Optional[Mapping[str, Any]] = None  # {"samples": 4, "low": 1e-5, "high": 1e-2}; off by default
    report: bool = True
    variants: tuple[VariantConfig, ...] = (VariantConfig(),)  # preprocessing x normalisation arms (section 4)
    probes: ProbeConfig = field(default_factory=ProbeConfig)  # shortcut probes (issue 24: source, lung ablations, saliency)
    # issue 24, point 5: run the study under each protocol, on the same data, and report what the
    # papers' protocol inflates: [] = as configured, one sweep; [corrected, as_published] = two
    # sweeps (:meth:`for_protocol`) whose reports show the inflation with an interval
    protocols: tuple[str, ...] = ()

    # -- derived ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def fingerprint(self) -> str:
        """Hash of the grid-defining part of the config (used to refuse a changed grid on resume)."""
        d = self.to_dict()
        for k in ("output_dir", "tracking", "resources", "report"):
            d.pop(k, None)
        # keys added after sweeps were recorded hash as before while at their defaults (resume keeps working)
        for k, default in (("external", []), ("split_unit", "group")):
            if d["data"].get(k) == default:
                d["data"].pop(k)
        if d.get("protocols") == []:
            d.pop("protocols")
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def trials(self) -> list["TrialConfig"]:
        """The grid, in a stable order: model x variant x size x optimizer x seed.

        A variant's normalisation is resolved into the trial's ``train`` section, so a trial
        carries the settings it ran with; its preprocessing stays on ``trial.variant``. With
        ``probes.source`` every trial is followed by its source-probe twin (same model, variant,
        size, optimizer, seed and budget; ``train.task = site``), so Tune schedules the probes
        like any trial.
        """
        out = self.study_trials()
        if self.probes.source:
            out += [replace(t, train=replace(t.train, task=SITE_TASK)) for t in list(out)]
        return out

    def study_trials(self) -> list["TrialConfig"]:
        """The study's own trials (:meth:`trials` without the source probes)."""
        out = []
        for m in self.models:
            for v in self.variants:
                train = self.variant_train(v, m)
                for n in self.sizes:
                    for o in self.optimizers:
                        for s in self.seeds:
                            out.append(
                                TrialConfig(
                                    study=self.name,
                                    model=m,
                                    train_size=n,
                                    optimizer=o,
                                    seed=s,
                                    schedule=self.schedule,
                                    train=train,
                                    variant=v,
                                )
                            )
        return out

    def variant_train(self, v: VariantConfig, m: Optional[ModelConfig] = None) -> TrainConfig:
        """``train`` with the model's normalisation (``models[i].normalization``) or the
        variant's settings applied (validation refuses a model and a variant that both set one)."""
        t = self.train
        if m is not None and m.normalization is not None:
            keep = m.normalization == t.normalization
            t = replace(t, normalization=m.normalization, norm_mean=t.norm_mean if keep else None, norm_std=t.norm_std if keep else None)
        if v.normalization is None and v.norm_mean is None and v.norm_std is None:
            return t
        # a variant that switches to another normalisation does not inherit fixed numbers
        keep = v.normalization is None or v.normalization == t.normalization
        return replace(
            t,
            normalization=v.normalization or t.normalization,
            norm_mean=v.norm_mean if v.norm_mean is not None else (t.norm_mean if keep else None),
            norm_std=v.norm_std if v.norm_std is not None else (t.norm_std if keep else None),
        )

    def for_protocol(self, name: str) -> "StudyConfig":
        """This study under protocol ``name`` (one of :data:`PROTOCOLS`; issue 24, point 5).

        ``as_published``: what the COVID-19 papers did (PROTOCOLS.md sections 1 and 5; Roberts et
        al. 2021 list these as the common leaks): an image-level split (``data.split_unit:
        image``: augmented copies and films of one patient on both sides; the leakage audit
        still runs and counts the pairs across the split, ``data.leakage: report``), the test
        set doubling as the validation set of early stopping and checkpoint selection
        (``data.val_is_eval``), and one seed. ``corrected``: lungray's default protocol
        (patients and duplicate clusters kept on one side, copies of held-out images dropped
        from training, a separate validation set: ``data.val_size`` or 0.1 when it was 0).
        Both arms keep the data, models, sizes and budget, and log to one MLflow experiment;
        applying a protocol twice changes nothing (a resumed arm keeps its fingerprint).
        """
        if name not in PROTOCOLS:
            raise ConfigError(f"protocols: '{name}' is not valid; valid choices: {', '.join(PROTOCOLS)}")
        d = self.data
        experiment = self.tracking.experiment or self.name.removesuffix(AS_PUBLISHED_SUFFIX)
        tracking = replace(self.tracking, experiment=experiment)
        if name == "as_published":
            data = replace(d, split_unit="image", leakage="report" if d.leakage == "drop" else d.leakage, val_is_eval=True, val_size=0)
            label = self.name if self.name.endswith(AS_PUBLISHED_SUFFIX) else self.name + AS_PUBLISHED_SUFFIX
            return replace(self, name=label, data=data, seeds=self.seeds[:1], tracking=tracking, protocols=(name,))
        data = replace(d, split_unit="group", leakage="drop", val_is_eval=False, val_size=d.val_size if d.val_size else 0.1)
        return replace(self, name=self.name.removesuffix(AS_PUBLISHED_SUFFIX), data=data, tracking=tracking, protocols=(name,))

    @property
    def pool_sizes(self) -> bool:
        """Whether a training size means "the whole pool" (``all`` / -1), resolved with the data."""
        return any(is_pool_size(n) for n in self.sizes)

    def with_pool_size(self, n_pool: int) -> "StudyConfig":
        """This study with ``all`` / -1 sizes replaced by the pool's real count ``n_pool``."""
        sizes: list[Union[int, str]] = []
        for n in self.sizes:
            n = int(n_pool) if is_pool_size(n) else n
            if n not in sizes:
                sizes.append(n)
        return replace(self, sizes=tuple(sizes))


#: the protocol axis (issue 24, point 5; :meth:`StudyConfig.for_protocol`)
PROTOCOLS = ("corrected", "as_published")
AS_PUBLISHED_SUFFIX = "_as_published"


def is_pool_size(n: Any) -> bool:
    """``"all"`` or -1: a training size meaning the whole training pool."""
    return (isinstance(n, str) and n.strip().lower() == "all") or (isinstance(n, int) and not isinstance(n, bool) and n == -1)


@dataclass(frozen=True)
class TrialConfig:
    """One grid cell x seed: what a single Ray Train run needs besides the data."""

    study: str
    model: ModelConfig
    train_size: int
    optimizer: OptimizerConfig
    seed: int
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    variant: VariantConfig = field(default_factory=VariantConfig)

    @property
    def arm(self) -> str:
        """What the grid and the report compare: the model key, ``@<variant key>`` when set;
        a source probe's ends with :data:`PROBE_ARM_SUFFIX`."""
        arm = f"{self.model.key}@{self.variant.key}" if self.variant.key else self.model.key
        return arm + PROBE_ARM_SUFFIX if self.is_probe else arm

    @property
    def is_probe(self) -> bool:
        """A source-probe trial (``probes.source``): it predicts the site, not the label."""
        return self.train.task == SITE_TASK

    @property
    def cell(self) -> str:
        return f"{self.arm}|n={self.train_size}|{self.optimizer.key}"

    @property
    def name(self) -> str:
        return f"{self.cell}|seed={self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrialConfig":
        return from_dict(cls, d)


# --------------------------------------------------------------------------------------------
# dict <-> dataclass, with unknown keys rejected
# --------------------------------------------------------------------------------------------


def to_dict(obj: Any) -> Any:
    """A plain JSON/YAML-able structure (tuples become lists)."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        # try the most specific first: bool before int/float, then the rest in order
        for a in sorted((a for a in args if a is not type(None)), key=lambda a: a is not bool):
            try:
                return _coerce(a, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(
            f"{where}: {value!r} is not one of {', '.join(_type_name(a) for a in args)}"
        )
    if is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (tuple, Sequence, list) or tp in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            value = [value]
        elem = args[0] if args else Any
        return tuple(_coerce(elem, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return types.MappingProxyType(dict(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(cls: type, d: Mapping[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys raise with the valid keys listed."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls) if f.init]
    unknown = sorted(set(d) - set(names))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key {', '.join(prefix + k for k in unknown)}; "
            f"valid keys{' under ' + where if where else ''}: {', '.join(names)}"
        )
    kwargs = {}
    for k, v in d.items():
        kwargs[k] = _coerce(hints[k], v, f"{where}.{k}" if where else k)
    return cls(**kwargs)


def _parse_scalar(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; lists and scalars in ``update`` replace those in ``base``."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def apply_overrides(d: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides. ``models=[resnet50, densenet121]`` takes names too.

    List entries are addressed by index, ``optimizers[0].lr=0.01`` or ``optimizers.0.lr=0.01``;
    a mistake gets an error that shows the form that works (issue 13: ``optimizers.lr=0.01``
    used to say "index 'lr' is out of range", ``seeds=0,1,2`` did not mention ``[0,1,2]``).
    """
    import re

    out = to_dict(d)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.sub=value")
        key, text = item.split("=", 1)
        parts = re.sub(r"\[(\d+)\]", r".\1", key.strip()).split(".")
        cur: Any = out
        path: list[str] = []
        for i, p in enumerate(parts[:-1]):
            if isinstance(cur, list):  # models.0.freeze=backbone
                cur = cur[_list_index(item, ".".join(path), cur, p, parts[i + 1 :], text)]
                if isinstance(cur, str):  # shorthand "resnet50" -> {"name": "resnet50"}
                    parent = _walk(out, path)
                    parent[int(p)] = cur = {"name": cur}
                path.append(p)
                continue
            if cur.get(p) is None:
                cur[p] = {}
            if not isinstance(cur[p], (dict, list)):
                raise ConfigError(f"override '{item}': '{'.'.join(path + [p])}' is a value, not a section")
            cur = cur[p]
            path.append(p)
        last = parts[-1]
        value = _parse_scalar(text)
        if isinstance(cur, list):
            cur[_list_index(item, ".".join(path), cur, last, [], text)] = value
            continue
        if isinstance(cur.get(last), list) and isinstance(value, str) and "," in value:
            pieces = [_parse_scalar(x.strip()) for x in value.split(",")]
            raise ConfigError(
                f"override '{item}': {'.'.join(path + [last])} takes a list, written in brackets: "
                f"{key.strip()}=[{','.join(str(x) for x in pieces)}]"
            )
        cur[last] = value
    return out


def _walk(d: Any, path: Sequence[str]) -> Any:
    for p in path:
        d = d[int(p)] if isinstance(d, list) else d[p]
    return d


def _list_index(item: str, where: str, lst: list, p: str, rest: Sequence[str], text: str) -> int:
    """``p`` as an index into ``lst`` (the list at ``where``), or an error showing the indexed form."""
    if p.isdigit() and int(p) < len(lst):
        return int(p)
    n = len(lst)
    entries = f"{n} entr{'y' if n == 1 else 'ies'}"
    if not p.isdigit():
        tail = ".".join([p, *rest])
        forms = " or ".join(f"{where}[{i}].{tail}={text}" for i in range(min(n, 2)))
        more = f" (one override per entry, {n} in all)" if n > 2 else ""
        raise ConfigError(f"override '{item}': {where} is a list ({entries}); set an entry by its index: {forms}{more}")
    raise ConfigError(f"override '{item}': index {p} is out of range: {where} has {entries} (0..{n - 1})")


def _normalise_lists(d: dict[str, Any]) -> dict[str, Any]:
    """Allow ``models: [resnet50, ...]`` / ``optimizers: [adam, sgd]`` shorthands."""
    d = dict(d)
    if "models" in d:
        items = d["models"] if isinstance(d["models"], (list, tuple)) else [d["models"]]
        d["models"] = [{"name": m} if isinstance(m, str) else m for m in items]
    if "optimizers" in d:
        items = d["optimizers"] if isinstance(d["optimizers"], (list, tuple)) else [d["optimizers"]]
        d["optimizers"] = [{"name": o} if isinstance(o, str) else o for o in items]
    return d


def resolve_study(
    preset: str = "default",
    yaml_path: Optional[str | Path] = None,
    overrides: Sequence[str] = (),
) -> StudyConfig:
    """Resolve preset -> YAML -> overrides into a :class:`StudyConfig`, structure checked only.

    Unknown keys and wrong types are refused here; the registry names (models, optimizers,
    adapters, tasks...) are checked by :func:`lungray.study.load_study`, which calls this and then
    :func:`lungray.train.validate.validate_study`. The registries import this module for its
    dataclasses, so this module imports none of them: config is the bottom layer.
    """
    import yaml

    from lungray.presets import preset_dict

    d = preset_dict(preset)
    if yaml_path is not None:
        p = Path(yaml_path)
        if not p.exists():
            raise ConfigError(f"config file {p} does not exist")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"{p}: top level must be a mapping of config keys")
        d = merge(d, _normalise_lists(loaded))
    d = _normalise_lists(apply_overrides(d, overrides))
    return from_dict(StudyConfig, d)


def dump_yaml(cfg: Any) -> str:
    import yaml

    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def replace_in(cfg: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` that also accepts ``section__field`` for one nested level."""
    nested: dict[str, dict[str, Any]] = {}
    flat = {}
    for k, v in changes.items():
        if "__" in k:
            sec, f = k.split("__", 1)
            nested.setdefault(sec, {})[f] = v
        else:
            flat[k] = v
    for sec, ch in nested.items():
        flat[sec] = replace(getattr(cfg, sec), **ch)
    return dataclasses.replace(cfg, **flat)
