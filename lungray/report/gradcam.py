"""Grad-CAM panels and their sanity check (issue 4, sections 7 and 8).

The Grad-CAM study (PROTOCOLS.md section 2) and the 4-class study (section 4) show heat maps
from "the last convolutional layer" of each network on a hand-picked image. lungray makes the
same picture reproducible and checkable:

* models are rebuilt from each trial's ``checkpoint/best.pt`` (format in
  :mod:`lungray.tracking`) with :func:`lungray.models.create_model`, unwrapped from DDP, and
  the target layer comes from :func:`lungray.models.gradcam_target` (the model's
  ``gradcam_layer``: one rule per model family, the studies' last convolution, or a module
  path; ViT reshape included), never a hard-coded layer name; the report names the layer;
* a frozen backbone (``freeze: backbone``) still gets a heat map: the input is made to require
  gradients, so the target activation is in the autograd graph even when no parameter before
  it trains (pytorch-grad-cam only records gradients of outputs that require them), and
  in-place activations are switched off while the maps are computed so the recorded
  activation is the layer's own output, not the ReLU applied over it;
* CAM objects are pytorch-grad-cam's, used as context managers (their hooks are released even
  on error) and fed in batches;
* the same evaluation images (per class, a correct and a wrong prediction) are shown for every
  model at the largest training size and one fixed seed;
* on data with lesion masks (the phantom), the pointing game (share of positive images whose
  heat-map maximum lies inside the lesion, with a Clopper-Pearson interval) is compared with a
  fixed point (the best one on the training lesion masks under the same tolerance: where lesions
  usually are), with the
  same architecture with randomised weights (Adebayo et al. 2018) and with a uniformly random
  map (the lesion's share of the image). A heat map from the wrong layer, or from a model that
  learned nothing, scores near those baselines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "LoadedModel",
    "load_checkpoint_model",
    "normalise_images",
    "resize_maps",
    "CamPass",
    "cam_pass",
    "cam_batch_size",
    "compute_cams",
    "graph_from",
    "map_caveat",
    "describe_grid",
    "PointingResult",
    "pointing_game",
    "near_lesion",
    "prior_point",
    "fixed_point_pointing",
    "randomised_copy",
    "pointing_baselines",
    "overlay",
    "layer_names",
    "select_panel_images",
    "panel_figure",
]


@dataclass
class LoadedModel:
    model: Any  # torch.nn.Module, in eval mode, on ``device``
    trial: Any  # lungray.config.TrialConfig
    class_names: tuple[str, ...]
    norm: tuple[Any, Any]
    epoch: int
    device: str


def _unwrap(model):
    """The bare module of a DDP / DataParallel / torch.compile wrapper."""
    while True:
        if hasattr(model, "module") and model.__class__.__name__ in ("DistributedDataParallel", "DataParallel"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _strip_prefixes(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        for p in ("module.", "_orig_mod."):
            while k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_checkpoint_model(path: str | Path, *, resolution: int, device: Optional[str] = None) -> LoadedModel:
    """Rebuild a trial's model from ``checkpoint/best.pt`` (weights only, no pickled code).

    The architecture comes from the checkpoint's own trial config, so the report needs no
    knowledge of the sweep's models; ``module.``/``_orig_mod.`` prefixes left by DDP or
    ``torch.compile`` are stripped.
    """
    import torch

    from lungray.config import TrialConfig
    from lungray.models import create_model

    device = device or default_device()
    ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    trial = TrialConfig.from_dict(ckpt["trial"])
    class_names = tuple(ckpt["class_names"])
    norm = ckpt.get("norm", (0.0, 1.0))
    # the input had one channel per normalisation statistic (3 for a repeat3 model's per-channel
    # statistics, 1 otherwise: also every checkpoint written before repeat3 meant 3 channels)
    in_chans = len(norm[0]) if isinstance(norm[0], (list, tuple)) else 1
    # weights come from the checkpoint: never download pretrained ones to rebuild the network
    spec = dataclasses.replace(trial.model, pretrained=False)
    # a model that read its images at its own input_size (Keras target_size) is rebuilt at it
    model = create_model(spec, len(class_names), in_chans=in_chans, resolution=int(trial.model.input_size or resolution))
    model = _unwrap(model)
    model.load_state_dict(_strip_prefixes(ckpt["model"]))
    model.to(device).eval()
    return LoadedModel(model, trial, class_names, (norm[0], norm[1]), int(ckpt.get("epoch", -1)), device)


def normalise_images(images: np.ndarray, max_value: float, norm: tuple[Any, Any], size: Optional[int] = None):
    """``(B, H, W)`` cached pixels -> ``(B, C, H, W)`` float tensor, normalised as in training
    (``(x / max_value - mean) / std``, the ``norm`` stored in the checkpoint). Per-channel
    statistics (a ``repeat3`` model: ImageNet's three) give C = 3 copies of the gray image,
    each normalised with its own mean/std, exactly as :class:`lungray.data.dataset.ImageDataset`;
    ``size`` (the model's ``input_size``) resizes the pixels first as it does (nearest)."""
    import torch

    imgs = np.asarray(images, dtype=np.float32)
    if size is not None and imgs.shape[-1] != int(size):
        from lungray.data.dataset import resize_nearest

        imgs = np.stack([resize_nearest(a, int(size)) for a in imgs]) if len(imgs) else imgs.reshape(0, int(size), int(size))
    x = torch.from_numpy(imgs / float(max_value))[:, None]
    mean = np.asarray(norm[0], dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(norm[1], dtype=np.float32).reshape(1, -1, 1, 1)
    return (x - torch.from_numpy(mean)) / torch.from_numpy(std)


def resize_maps(maps: np.ndarray, size: int) -> np.ndarray:
    """``(B, h, w)`` heat maps at a model's input size -> ``(B, size, size)`` (bilinear), to lay
    them on the cached images and masks."""
    import cv2

    maps = np.asarray(maps, dtype=np.float32)
    if maps.shape[-1] == int(size) or not len(maps):
        return maps
    return np.stack([cv2.resize(m, (int(size), int(size)), interpolation=cv2.INTER_LINEAR) for m in maps])


@contextlib.contextmanager
def no_inplace(model):
    """Switch every in-place activation of ``model`` off for the duration.

    pytorch-grad-cam keeps the target layer's output tensor; an in-place ReLU right after the
    layer (AlexNet's and VGG's last conv, torchvision ResNet blocks) would overwrite it, so
    the map would be computed from the ReLU's output, not the chosen layer's.
    """
    changed = [m for m in model.modules() if getattr(m, "inplace", None) is True]
    for m in changed:
        m.inplace = False
    try:
        yield
    finally:
        for m in changed:
            m.inplace = True


#: Pixels per CAM batch (images x height x width): 256 images at 64 px, 16 at 256 px. The
#: report scores every image of a model in as few forward/backward passes as memory allows (on 2
#: CPUs a pass over 16 small images costs about what a pass over 200 does: the per-pass overhead
#: of hooks, autograd set-up and the python loop dominated the old 16-image batches, issue 22.4).
CAM_BATCH_PIXELS = 256 * 64 * 64


@dataclass(frozen=True)
class CamPass:
    """What one Grad-CAM computation over a set of images gives.

    ``maps``: ``(B, H, W)`` heat maps in [0, 1] at the input size; ``logits``: ``(B, K)`` the
    model's outputs on the same forward pass (so its predictions need no second pass);
    ``grid``: ``(h, w)`` cells of the target layer's activation, the map's real resolution
    before it is upsampled to the input (2 x 2 for a ResNet-18 at 64 px: such a map can only
    say which quadrant, not where a lesion is).
    """

    maps: np.ndarray
    logits: np.ndarray
    grid: tuple[int, int]


def cam_batch_size(height: int, width: int, pixels: int = CAM_BATCH_PIXELS) -> int:
    """Images per CAM pass for a ``height x width`` input: as many as fit ``pixels``."""
    return max(1, int(pixels) // max(1, int(height) * int(width)))


def cam_pass(
    model,
    x,
    target_classes: Sequence[int],
    *,
    target_layers: Optional[list] = None,
    reshape_transform: Optional[Callable] = None,
    batch_size: Optional[int] = None,
    method: str = "gradcam",
) -> CamPass:
    """Heat maps, logits and the map's grid for ``target_classes`` (one target per image).

    ``target_layers``/``reshape_transform`` default to :func:`lungray.models.gradcam_target`
    (the per-family registry); pass them only to test what a different layer would give. The
    CAM object is a context manager, so its forward/backward hooks are removed afterwards.
    ``batch_size`` defaults to :func:`cam_batch_size` (all of a report's images of one model
    in one pass at 64 px). The maps of an image do not depend on the batch it is in: the model
    is in eval mode and each image's target is its own output, so the gradient of the summed
    targets with respect to an image's activation is that image's own gradient.

    Autograd starts at the target layer (:func:`graph_from`): Grad-CAM needs the gradient of the
    targets with respect to that layer's activation only, so nothing before the layer is
    recorded and no parameter gradient is computed. For a ResNet's last block that skips almost
    the whole backward pass (issue 22.4), and a frozen trunk (``freeze: backbone``: no parameter
    before the layer trains) needs nothing special: the activation is a leaf that requires
    gradients either way.
    """
    import torch
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = _unwrap(model)
    if target_layers is None:
        from lungray.models import gradcam_target

        target_layers, default_reshape = gradcam_target(model)
        reshape_transform = reshape_transform or default_reshape
    cam_cls = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}[method]
    device = next(model.parameters()).device
    targets_all = [int(t) for t in target_classes]
    bs = batch_size or cam_batch_size(*x.shape[-2:])
    maps, logits, grid = [], [], (0, 0)
    # graph_from is entered first so its hook runs before pytorch-grad-cam's on the same layer
    with no_inplace(model), channels_last(model), graph_from(model, target_layers) as cut, \
            cam_cls(model=model, target_layers=list(target_layers), reshape_transform=reshape_transform) as cam:
        for i in range(0, len(targets_all), bs):
            # with several target layers the graph cannot start at one of them: the input then
            # requires gradients, so every target activation does even on a frozen trunk
            xb = x[i : i + bs].detach().to(device).contiguous(memory_format=torch.channels_last).requires_grad_(not cut)
            with torch.enable_grad():
                out = cam(input_tensor=xb, targets=[ClassifierOutputTarget(t) for t in targets_all[i : i + bs]])
            maps.append(np.asarray(out, dtype=np.float32))
            logits.append(cam.outputs.detach().float().cpu().numpy())
            acts = cam.activations_and_grads.activations
            if acts:
                grid = tuple(int(v) for v in acts[0].shape[-2:])
    model.zero_grad(set_to_none=True)
    if not maps:
        return CamPass(np.zeros((0,) + tuple(x.shape[-2:]), dtype=np.float32), np.zeros((0, 0), np.float32), grid)
    return CamPass(np.concatenate(maps), np.concatenate(logits), grid)


@contextlib.contextmanager
def channels_last(model):
    """The model's 4-D weights in channels-last layout for the duration (and the input with
    them): oneDNN's convolutions run 25-40 % faster that way on a CPU (a ResNet-18 at 64 px,
    measured for issue 22.4); the weights are put back in the default layout afterwards."""
    import torch

    model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        model.to(memory_format=torch.contiguous_format)


@contextlib.contextmanager
def graph_from(model, target_layers: Sequence[Any]):
    """Record autograd only from the single target layer on; yields whether it could.

    While active, no parameter of ``model`` requires gradients and a forward hook (prepended,
    so it runs before any CAM hook on the layer) replaces the layer's output by a detached copy
    that requires them: a leaf. The forward pass before the layer then builds no graph, and the
    backward pass of the targets stops at the layer; the gradient with respect to the activation
    is the same as through the whole graph. With several target layers (a later one would cut
    the graph of an earlier one) nothing is changed and ``False`` is yielded. Parameters' flags
    are restored afterwards."""
    import torch

    layers = list(target_layers)
    if len(layers) != 1:
        yield False
        return
    params = [(p, p.requires_grad) for p in model.parameters()]

    def leaf(module, inputs, output):
        return output.detach().requires_grad_(True) if isinstance(output, torch.Tensor) else None

    handle = layers[0].register_forward_hook(leaf, prepend=True)
    try:
        for p, _ in params:
            p.requires_grad_(False)
        yield True
    finally:
        handle.remove()
        for p, flag in params:
            p.requires_grad_(flag)


def compute_cams(
    model,
    x,
    target_classes: Sequence[int],
    *,
    target_layers: Optional[list] = None,
    reshape_transform: Optional[Callable] = None,
    batch_size: Optional[int] = None,
    method: str = "gradcam",
) -> np.ndarray:
    """Heat maps ``(B, H, W)`` in [0, 1] for ``target_classes``: :func:`cam_pass`'s maps."""
    return cam_pass(model, x, target_classes, target_layers=target_layers, reshape_transform=reshape_transform,
                    batch_size=batch_size, method=method).maps


#: A target layer whose map has fewer cells than this per side cannot localise a finding: the
#: report says so next to its panels and its pointing score (a ResNet-18 at 64 px gives 2 x 2).
COARSE_MAP_CELLS = 4


def map_caveat(label: str, grid: tuple[int, int], resolution: int) -> str:
    """The caveat for a map too coarse to localise anything; ``""`` when it is fine."""
    h, w = grid
    if not h or not w or min(h, w) >= COARSE_MAP_CELLS:
        return ""
    return (f"{label}: its target layer's map is only {h}×{w} cells for a {resolution} px input (one cell covers "
            f"{resolution / h:.0f}×{resolution / w:.0f} px), so it cannot localise a lesion: the panel shows which part "
            "of the image weighed most, and its pointing score measures that coarse choice, not localisation. "
            "A larger data.resolution or an earlier layer (model.gradcam_layer: a module path) gives a finer map.")


def describe_grid(grid: tuple[int, int], resolution: int) -> str:
    """``"8×8 (8 px per cell)"``: a map's resolution, for the report's target-layer table."""
    h, w = grid
    if not h or not w:
        return "–"
    return f"{h}×{w} ({resolution / h:.0f} px per cell)" if h == w else f"{h}×{w} ({resolution / h:.0f}×{resolution / w:.0f} px per cell)"


@dataclass(frozen=True)
class PointingResult:
    """Pointing game: ``hits`` of ``n`` heat-map maxima within the tolerance of the lesion;
    ``baseline`` is the mean share of the image within that tolerance (the expected score of a
    uniformly random map); ``hit`` the per-image outcomes (for paired comparisons)."""

    score: float
    hits: int
    n: int
    baseline: float
    hit: np.ndarray = field(default_factory=lambda: np.zeros(0, bool), repr=False, compare=False)

    @property
    def lift(self) -> float:
        return self.score / self.baseline if self.baseline > 0 else float("nan")

    def interval(self, level: float = 0.95):
        """Clopper-Pearson (exact binomial) interval of the score: hits out of n images."""
        from lungray.report.stats import binom_ci

        return binom_ci(self.hits, self.n, level, "clopper-pearson")


#: Pointing-game tolerance as a fraction of the image side: 15 px at 224 px, as in the
#: original pointing game (Zhang et al., "Top-down neural attention by excitation backprop",
#: ECCV 2016). A CAM from the last conv layer is coarse (8x8 cells for a 64 px input), so its
#: peak lands next to a small lesion rather than on it; without a tolerance the score measures
#: the grid size, not whether the map points at the finding.
POINTING_TOLERANCE = 15 / 224


def pointing_game(cams: np.ndarray, masks: np.ndarray, tolerance: float = 0.0) -> PointingResult:
    """Share of images whose heat-map maximum (first one on ties) lies within ``tolerance``
    pixels (Euclidean) of the mask.

    Images with an empty mask are skipped (nothing to point at). ``cams`` and ``masks`` are
    ``(B, H, W)`` of the same size. The baseline is the share of pixels within ``tolerance`` of
    the mask, averaged over images: what a map with a uniformly random maximum would score
    with the same tolerance. That is a weak baseline when lesions sit in the same region of
    every image (a fixed point scored 6-7x it on the phantom, issue 11): compare with
    :func:`prior_point` and a randomised-weights model too (:func:`pointing_baselines`).

    >>> cams = np.zeros((2, 4, 4)); cams[0, 1, 1] = 1; cams[1, 3, 3] = 1
    >>> masks = np.zeros((2, 4, 4)); masks[:, :2, :2] = 1
    >>> pointing_game(cams, masks)
    PointingResult(score=0.5, hits=1, n=2, baseline=0.25)
    """
    cams = np.asarray(cams)
    masks = np.asarray(masks) > 0
    if cams.shape != masks.shape:
        raise ValueError(f"heat maps {cams.shape} and masks {masks.shape} must have the same shape")
    keep = masks.reshape(len(masks), -1).any(1)
    cams, masks = cams[keep], masks[keep]
    n = int(len(cams))
    if n == 0:
        return PointingResult(float("nan"), 0, 0, float("nan"))
    masks = near_lesion(masks, tolerance)
    flat = cams.reshape(n, -1).argmax(1)
    hit = masks.reshape(n, -1)[np.arange(n), flat]
    baseline = float(masks.reshape(n, -1).mean(1).mean())
    return PointingResult(int(hit.sum()) / n, int(hit.sum()), n, baseline, hit)


def near_lesion(masks: np.ndarray, tolerance: float) -> np.ndarray:
    """``(B, H, W)`` booleans: the pixels within ``tolerance`` px (Euclidean) of each mask.

    The pointing game of a model and of its baselines on the same images all need this region;
    computed once and passed to :func:`pointing_game` with ``tolerance=0`` it gives the same
    result as passing the masks and the tolerance (a non-empty mask stays non-empty).
    """
    masks = np.asarray(masks) > 0
    if tolerance <= 0 or not len(masks):
        return masks
    from scipy.ndimage import distance_transform_edt

    return np.stack([distance_transform_edt(~m) <= tolerance if m.any() else m for m in masks])


def prior_point(train_masks: np.ndarray, tolerance: float = 0.0) -> tuple[int, int]:
    """The best image-blind point on the TRAINING masks: the pixel whose pointing-game score on
    them, with the same ``tolerance`` as the model's, is highest (first such pixel on ties). A
    heat map that scores no better than this fixed point in the pointing game shows where
    lesions usually are, not where this image's lesion is.

    With a tolerance the best fixed point is not the peak of the mean mask: a point between two
    usual lesion sites can lie within 15 px of both. The peak of the mean mask, the baseline
    before issue 19, scored up to 0.07 below the best fixed point on the phantom (0.532 vs
    0.600), so a heat map could "beat the prior" while knowing only the prior. ``tolerance`` 0
    gives the peak of the mean mask (the two coincide).
    """
    m = np.asarray(train_masks) > 0
    m = m[m.reshape(len(m), -1).any(1)]
    if not len(m):
        raise ValueError("no training image has a lesion mask: no prior point")
    if tolerance > 0:
        from scipy.ndimage import distance_transform_edt

        hits = np.zeros(m.shape[1:], dtype=np.int64)
        pad = int(math.ceil(tolerance)) + 1
        h, w = m.shape[1:]
        for one in m:  # within the lesion's box grown by the tolerance: nothing farther can be near it
            rows, cols = np.flatnonzero(one.any(1)), np.flatnonzero(one.any(0))
            r0, r1 = max(0, rows[0] - pad), min(h, rows[-1] + pad + 1)
            c0, c1 = max(0, cols[0] - pad), min(w, cols[-1] + pad + 1)
            hits[r0:r1, c0:c1] += distance_transform_edt(~one[r0:r1, c0:c1]) <= tolerance
    else:
        hits = m.sum(0)
    return tuple(int(v) for v in np.unravel_index(int(hits.argmax()), hits.shape))


def fixed_point_pointing(point: tuple[int, int], masks: np.ndarray, tolerance: float = 0.0) -> PointingResult:
    """The pointing game of a heat map that always peaks at ``point``."""
    masks = np.asarray(masks)
    cams = np.zeros(masks.shape, dtype=np.float32)
    cams[:, point[0], point[1]] = 1.0
    return pointing_game(cams, masks, tolerance)


def randomised_copy(model, seed: int = 0):
    """The same architecture with every parameter re-initialised: the full-randomisation model
    of Adebayo et al. (2018, "Sanity checks for saliency maps", NeurIPS). A heat map that looks
    (or points) the same for the trained and the randomised model does not depend on what the
    model learned. Modules' own ``reset_parameters`` are used under a seeded generator
    (``torch.random.fork_rng``: the caller's global RNG state is left as it was); BatchNorm
    running statistics are reset too."""
    import copy

    import torch

    rnd = copy.deepcopy(_unwrap(model))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in rnd.modules():
            if hasattr(m, "reset_running_stats"):
                m.reset_running_stats()
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return rnd.eval()


@dataclass(frozen=True)
class PointingComparison:
    """A model's pointing game next to its baselines, with exact intervals and paired tests."""

    model: PointingResult
    prior: PointingResult
    randomised: Optional[PointingResult]
    p_vs_prior: float  # exact McNemar on the per-image hits (model vs fixed point), two-sided
    p_vs_randomised: float


def pointing_baselines(model: PointingResult, prior: PointingResult,
                       randomised: Optional[PointingResult] = None) -> PointingComparison:
    """Compare a model's hits with the fixed-point prior's and the randomised model's on the
    SAME images (exact McNemar on the paired hits, :func:`lungray.report.stats.mcnemar_exact`)."""
    from lungray.report.stats import mcnemar_exact

    if prior.n != model.n or (randomised is not None and randomised.n != model.n):
        raise ValueError("the model and its baselines must be scored on the same images")
    p_prior = mcnemar_exact(model.hit, prior.hit)[2] if model.n else float("nan")
    p_rand = mcnemar_exact(model.hit, randomised.hit)[2] if randomised is not None and model.n else float("nan")
    return PointingComparison(model, prior, randomised, p_prior, p_rand)


#: The heat maps' colour map, in the overlays and in their colour bar (the same object, so the
#: bar reads the panels exactly).
CAM_CMAP = "jet"


def overlay(image01: np.ndarray, cam: np.ndarray, image_weight: float = 0.55) -> np.ndarray:
    """The heat map (:data:`CAM_CMAP`) blended over a grayscale image in [0, 1]; RGB uint8.

    The blend is ``(1 - image_weight) * colour(cam) + image_weight * image``, not rescaled
    afterwards, so a colour in a panel is the colour bar's colour for that map value (mixed with
    the image underneath)."""
    import matplotlib

    heat = matplotlib.colormaps[CAM_CMAP](np.clip(np.asarray(cam, dtype=np.float32), 0, 1))[..., :3]
    gray = np.repeat(np.clip(np.asarray(image01, dtype=np.float32), 0, 1)[..., None], 3, axis=2)
    return np.round(255 * ((1 - image_weight) * heat + image_weight * gray)).clip(0, 255).astype(np.uint8)


def layer_names(model, layers: Sequence[Any]) -> list[str]:
    """Dotted names of ``layers`` inside ``model`` (shown in the report next to each panel)."""
    names = {id(m): n for n, m in _unwrap(model).named_modules()}
    return [names.get(id(layer), type(layer).__name__) for layer in layers]


def select_panel_images(
    image_ids: np.ndarray,
    y_true: np.ndarray,
    correct: np.ndarray,
    class_names: Sequence[str],
    per_class: int = 1,
) -> list[tuple[int, str]]:
    """Pick the same evaluation images for every model: per class, ``per_class`` that most
    models got right and ``per_class`` that most got wrong (only if any model got it wrong).

    ``correct`` is ``(n_models, n_images)``. Ties go to the lowest image id, so the choice is
    deterministic. Returns ``(column index, "correct"|"wrong")`` pairs.
    """
    n_right = correct.sum(0)
    order = np.argsort(image_ids, kind="stable")
    out = []
    for c in range(len(class_names)):
        idx = [i for i in order if y_true[i] == c]
        if not idx:
            continue
        by_right = sorted(idx, key=lambda i: -n_right[i])
        out += [(i, "correct") for i in by_right[:per_class] if n_right[i] > 0]
        by_wrong = sorted(idx, key=lambda i: n_right[i])
        out += [(i, "wrong") for i in by_wrong[:per_class] if n_right[i] < correct.shape[0]]
    return out


def panel_figure(
    images01: np.ndarray,
    row_titles: Sequence[str],
    model_labels: Sequence[str],
    overlays: Sequence[Sequence[np.ndarray]],
    cell_titles: Sequence[Sequence[str]],
):
    """Rows = evaluation images, first column the image, then one blended heat map per model;
    print width (180 mm) and a colour bar for the heat-map scale under the heat-map columns."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from lungray.report.figures import FULL_WIDTH, _figure

    rows, cols = len(images01), 1 + len(model_labels)
    cell = min(1.75, FULL_WIDTH / cols)
    fig = _figure(FULL_WIDTH, (cell + 0.4) * rows + 0.75)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i in range(rows):
        axes[i, 0].imshow(images01[i], cmap="gray", vmin=0, vmax=1)
        axes[i, 0].set_title(row_titles[i], fontsize=7)
        for j in range(len(model_labels)):
            axes[i, j + 1].imshow(overlays[j][i])
            axes[i, j + 1].set_title(cell_titles[j][i], fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if len(model_labels):
        bar = fig.colorbar(ScalarMappable(Normalize(0, 1), CAM_CMAP), ax=list(axes[:, 1:].ravel()), location="bottom",
                           shrink=0.6, aspect=40, pad=0.02)
        bar.set_label("Grad-CAM weight, each map scaled to [0, 1] (its minimum to its peak)", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    return fig
