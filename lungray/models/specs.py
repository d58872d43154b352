"""What config validation knows about lungray's models, without torch: the registries.

:data:`MODELS` (lungray's own networks), :data:`HEADS`, :data:`FREEZE_POLICIES`, the name and
config checks (:func:`check_model_name`, :func:`check_model_config`) and the few facts the
data pipeline needs (:func:`input_channels`). Every builder is registered by module path
(:func:`lungray.registry.lazy`), so this module imports neither torch, timm nor the networks, and
the networks import it, never the other way round. :mod:`lungray.models` re-exports all of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from lungray.errors import ConfigError
from lungray.registry import Registry, lazy, suggest

if TYPE_CHECKING:  # pragma: no cover
    from lungray.config import ModelConfig

__all__ = [
    "MODELS",
    "HEADS",
    "FREEZE_POLICIES",
    "ModelSpec",
    "HeadSpec",
    "check_model_name",
    "check_model_config",
    "model_spec",
    "parse_freeze",
    "input_channels",
    "GRADCAM_LAYERS",
    "simple_cnn_feature_side",
    "suggest_model_names",
]

TV_PREFIX = "tv:"

# --------------------------------------------------------------------------------------------
# lungray's own models
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """What config validation needs to know about one of lungray's own models, without torch.

    ``build(cfg, num_classes, *, in_chans, resolution, ae_weights)`` returns the whole network.
    ``heads`` lists the heads the model accepts (``None``: any registered head);
    ``stem`` whether ``stem: conv8_conv3`` may precede it; ``pretrained_hub`` whether
    ``pretrained: true`` has a meaning (downloadable weights exist for part of it);
    ``pretrained_file`` whether a local weights file may be given.

    Hooks the training loop and config validation call, so neither names a model:
    ``check(cfg, resolution, where)`` raises a :class:`ConfigError` for a data resolution the
    model cannot use; ``prepare(data, trial, *, device, mean, std)`` runs once per trial before
    the model is built (on rank 0 first, then the others) and returns extra keyword arguments
    for ``build`` (``ae_encoder``: pretrain the autoencoder or find it cached ->
    ``{"ae_weights": path}``); ``full_batch`` says the built network is fitted in one call of
    its ``fit_full_batch(x, y, sample_weight=)`` on the whole training set instead of
    optimizer epochs (``logreg``).
    """

    name: str
    build: Callable[..., Any]
    heads: Optional[tuple[str, ...]] = None
    stem: bool = True
    pretrained_hub: bool = False
    pretrained_file: bool = True
    doc: str = ""
    check: Optional[Callable[..., None]] = None
    prepare: Optional[Callable[..., dict[str, Any]]] = None
    full_batch: bool = False


def _check_ae_resolution(cfg: "ModelConfig", resolution: int, where: str) -> None:
    if resolution % 4 or resolution < 128:
        raise ConfigError(
            f"{where}: ae_encoder needs data.resolution divisible by 4 and >= 128 (its 64x64-style "
            f"code at resolution/4 feeds a DenseNet-121, which downsamples 32x), got {resolution}"
        )


def _check_simple_cnn_resolution(cfg: "ModelConfig", resolution: int, where: str) -> None:
    if simple_cnn_feature_side(resolution, cfg.padding) < 1:
        raise ConfigError(
            f"{where}: simple_cnn with {cfg.padding} padding cannot run at data.resolution {resolution} "
            "(three [conv, conv, 2x2 pool] blocks leave no pixel); raise the resolution or use padding same"
        )


MODELS: Registry[ModelSpec] = Registry("model")

MODELS.register(
    "simple_cnn",
    ModelSpec(
        name="simple_cnn",
        build=lazy("lungray.models.simple_cnn", "build_simple_cnn"),
        check=_check_simple_cnn_resolution,
        doc="the X-ray capstone's CNN from scratch: [conv, conv, BN, maxpool] x 3 (32/64/128), dense 128 (section 5)",
    ),
    doc="CNN from scratch of the X-ray capstone (PROTOCOLS.md section 5); width scales the channels",
)
MODELS.register(
    "logreg",
    ModelSpec(
        name="logreg",
        build=lazy("lungray.models.logreg", "build_logreg"),
        heads=("linear",),
        stem=False,
        pretrained_file=False,
        full_batch=True,
        doc="logistic regression on average-pooled pixels, fitted like scikit-learn (section 4 baseline)",
    ),
    doc="logistic regression on downsampled pixels, fitted in closed form (PROTOCOLS.md section 4 baseline)",
)
MODELS.register(
    "ae_encoder",
    ModelSpec(
        name="ae_encoder",
        build=lazy("lungray.models.autoencoder", "build_ae_encoder"),
        stem=False,
        pretrained_hub=True,
        check=_check_ae_resolution,
        prepare=lazy("lungray.models.autoencoder", "prepare_ae_encoder"),
        doc="conv autoencoder's encoder (res -> res/4 x res/4 x 3 code) feeding DenseNet-121 (section 1)",
    ),
    doc="the training-size study's encoder-based classifier: AE encoder -> DenseNet-121 (PROTOCOLS.md section 1)",
)


def simple_cnn_feature_side(resolution: int, padding: str = "same") -> int:
    """The side of ``simple_cnn``'s last pooled map: three [conv 3x3, conv 3x3, pool 2] blocks
    (0 when the image is too small). 'valid' convolutions take 4 px per block (section 5).

    >>> simple_cnn_feature_side(299, "valid"), simple_cnn_feature_side(64), simple_cnn_feature_side(32, "valid")
    (33, 8, 0)
    """
    s = int(resolution)
    for _ in range(3):
        s = (s - (4 if padding == "valid" else 0)) // 2
        if s < 1:
            return 0
    return s


# --------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadSpec:
    """A head: ``build(feature_shape (C, h, w), num_classes, drop_rate) -> nn.Module``.

    ``task`` keeps the task a parameter: a segmentation decoder registers here with
    ``task="segmentation"`` and the training loop picks losses and metrics by task.
    """

    name: str
    build: Callable[..., Any]
    task: str = "classification"
    doc: str = ""


HEADS: Registry[HeadSpec] = Registry("head")
HEADS.register(
    "linear",
    HeadSpec("linear", lazy("lungray.models.heads", "linear_head"), doc="global average pool -> linear"),
    doc="global average pool -> linear (the torchvision 'last layer replaced' of sections 3-4)",
)
HEADS.register(
    "bn_mlp256",
    HeadSpec(
        "bn_mlp256",
        lazy("lungray.models.heads", "bn_mlp256_head"),
        doc="GAP -> BN -> dropout -> dense 256 -> BN -> ReLU -> dropout -> classes",
    ),
    doc="GAP -> BN -> dropout -> dense 256 -> BN -> dropout -> classes (training-size study, section 1)",
)
HEADS.register(
    "pool_mlp64",
    HeadSpec(
        "pool_mlp64",
        lazy("lungray.models.heads", "pool_mlp64_head"),
        doc="avg-pool 4x4 -> flatten -> dense 64 -> ReLU -> dropout -> classes",
    ),
    doc="avg-pool 4x4 -> dense 64 -> ReLU -> dropout 0.5 -> classes (Grad-CAM study, section 2)",
)

HEADS.register(
    "bn_pool_mlp64",
    HeadSpec(
        "bn_pool_mlp64",
        lazy("lungray.models.heads", "bn_pool_mlp64_head"),
        doc="BN -> avg-pool 4x4 -> flatten -> dense 64 -> ReLU -> dropout -> classes",
    ),
    doc="BN -> avg-pool 4x4 -> dense 64 -> ReLU -> dropout 0.5 -> classes (Grad-CAM study's DenseNet/ResNet, section 2)",
)
HEADS.register(
    "mlp128",
    HeadSpec("mlp128", lazy("lungray.models.heads", "mlp128_head"), doc="GAP -> Linear(C, 128) -> ReLU -> Linear(128, classes)"),
    doc="GAP -> Linear(C, 128) -> ReLU -> Linear(128, classes) (RSNA study's ResNet-101 fc, section 3)",
)
HEADS.register(
    "gmp_mlp128",
    HeadSpec("gmp_mlp128", lazy("lungray.models.heads", "gmp_mlp128_head"), doc="global max pool -> dense 128 -> ReLU -> classes"),
    doc="global max pool -> dense 128 -> ReLU -> classes (the frozen VGG19 reference, section 5)",
)
HEADS.register(
    "tv_classifier",
    HeadSpec("tv_classifier", lazy("lungray.models.heads", "tv_classifier_head"), doc="torchvision classifier, last layer replaced"),
    doc="torchvision's avgpool + classifier (fc6/fc7) kept, last layer replaced (sections 3-4; tv:alexnet, tv:vgg*)",
)

#: torchvision models whose classifier ``head: tv_classifier`` can keep (``avgpool`` + a
#: ``classifier`` Sequential ending in a Linear layer)
TV_CLASSIFIER_PREFIXES = ("alexnet", "vgg")

# --------------------------------------------------------------------------------------------
# Freeze policies
# --------------------------------------------------------------------------------------------

FREEZE_POLICIES: Registry[Callable[..., Any]] = Registry("freeze policy")
FREEZE_POLICIES.register(
    "none",
    lazy("lungray.models.freeze", "freeze_none"),
    doc="train everything (from scratch, or full fine-tuning)",
)
FREEZE_POLICIES.register(
    "backbone",
    lazy("lungray.models.freeze", "freeze_backbone"),
    doc="feature extraction: backbone frozen, stem and head trainable (sections 2-3 'base frozen')",
)
FREEZE_POLICIES.register(
    "fc_only",
    lazy("lungray.models.freeze", "freeze_fc_only"),
    doc="only the head's final layer trains (section 3: torchvision VGG16 'pretrained, frozen, last layer replaced')",
)
FREEZE_POLICIES.register(
    "last",
    lazy("lungray.models.freeze", "freeze_last"),
    doc="'last:N': the backbone's last N stages plus stem and head trainable (section 4: ResNet-50 layer3+4 = last:2)",
)


def parse_freeze(freeze: str, where: str = "model.freeze") -> tuple[str, Optional[int]]:
    """``"none"`` -> ("none", None); ``"last:2"`` -> ("last", 2); anything else raises.

    >>> parse_freeze("last:2")
    ('last', 2)
    """
    text = str(freeze).strip()
    if text.startswith("last"):
        _, sep, n = text.partition(":")
        if not sep or not n.isdigit() or int(n) < 1:
            raise ConfigError(
                f"{where} '{freeze}': write last:N with N a positive number of backbone stages (e.g. last:2)"
            )
        return "last", int(n)
    FREEZE_POLICIES.check(text)
    return text, None


# --------------------------------------------------------------------------------------------
# Name and config checks (no torch unless a timm or torchvision name must be looked up)
# --------------------------------------------------------------------------------------------


def _choices_hint() -> str:
    return f"lungray's own: {', '.join(MODELS.names())}; any timm name (timm.list_models()), or tv:<torchvision name>"


def check_model_name(name: str) -> str:
    """Raise a :class:`ConfigError` unless ``name`` can be built; return it.

    Accepts lungray's own names (:data:`MODELS`), ``tv:<name>`` for torchvision
    (``torchvision.models.list_models()``) and any timm architecture, with or without a
    pretrained tag (``resnet50.a1_in1k``). The error lists the own names and the closest timm
    (or torchvision) names, so a typo in a sweep file is fixed in one look.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"model name must be a non-empty string, got {name!r}; {_choices_hint()}")
    if name in MODELS:
        return name
    import timm
    import torchvision

    tv_names = torchvision.models.list_models()
    if name.startswith(TV_PREFIX):
        if name[len(TV_PREFIX) :] in tv_names:
            return name
    elif timm.is_model(name):
        return name
    close = suggest_model_names(name, timm.list_models(), tv_names)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    what = "torchvision model" if name.startswith(TV_PREFIX) else "model"
    raise ConfigError(f"unknown {what} '{name}'{hint}; {_choices_hint()}")


def suggest_model_names(name: str, timm_names: Sequence[str], tv_names: Sequence[str], n: int = 5) -> list[str]:
    """Close matches for a mistyped model name across lungray's own, timm's and ``tv:`` names.

    The same architecture in the other namespace comes first (``alexnet``, which timm does not
    have, suggests ``tv:alexnet``), then the closest names of the namespace asked for and of
    the other one, alternating: ``tv:resnet5`` suggests ``tv:resnet50, resnet50, ...``.

    >>> suggest_model_names("alexnet", ["haloregnetz_b", "resnet50"], ["alexnet", "vgg16"])
    ['tv:alexnet', 'haloregnetz_b']
    """
    is_tv = name.startswith(TV_PREFIX)
    bare = name[len(TV_PREFIX) :] if is_tv else name
    timm_side = list(MODELS.names()) + list(timm_names)
    tv_side = list(tv_names)
    counterpart = [bare] if is_tv and bare in set(timm_side) else ([TV_PREFIX + bare] if not is_tv and bare in set(tv_side) else [])
    tv_close = [TV_PREFIX + c for c in suggest(bare, tv_side, n=n)]
    timm_close = suggest(bare, timm_side, n=n)
    same, other = (tv_close, timm_close) if is_tv else (timm_close, tv_close)
    mixed = [c for pair in zip(same + [""] * n, other + [""] * n) for c in pair if c]
    return [c for c in dict.fromkeys(counterpart + mixed) if c != name][:n]


def model_spec(name: str) -> Optional[ModelSpec]:
    """The :class:`ModelSpec` of one of lungray's own models; None for a timm/torchvision name."""
    return MODELS.get(name) if name in MODELS else None


def check_model_config(cfg: "ModelConfig", where: str = "model", resolution: Optional[int] = None) -> None:
    """Every model check that needs no weights: name, head, stem, freeze, pretrained path.

    Called at config time (before any data is read) so that a combination that can never be
    built (``logreg`` with an MLP head, a stem in front of the autoencoder, a pretrained file
    that does not exist) fails with one readable line. With ``resolution`` (the study's
    ``data.resolution``) the model's own resolution check (``ModelSpec.check``) runs too.
    """
    check_model_name(cfg.name)
    HEADS.check(cfg.head)
    parse_freeze(cfg.freeze, f"{where}.freeze")
    if cfg.stem not in ("none", "conv8_conv3"):
        raise ConfigError(f"{where}.stem: '{cfg.stem}' is not valid; valid choices: none, conv8_conv3")
    if cfg.input_mode not in ("in_chans1", "repeat3"):
        raise ConfigError(f"{where}.input_mode: '{cfg.input_mode}' is not valid; valid choices: in_chans1, repeat3")
    if cfg.width is not None and cfg.width < 1:
        raise ConfigError(f"{where}.width must be a positive integer or null, got {cfg.width}")
    if cfg.padding not in ("same", "valid"):
        raise ConfigError(f"{where}.padding: '{cfg.padding}' is not valid; valid choices: same, valid")
    if cfg.padding != "same" and cfg.name != "simple_cnn":
        raise ConfigError(f"{where}.padding: only simple_cnn takes padding '{cfg.padding}'; remove it for {cfg.name}")
    if not isinstance(cfg.gradcam_layer, str) or not cfg.gradcam_layer.strip():
        raise ConfigError(
            f"{where}.gradcam_layer must be {', '.join(GRADCAM_LAYERS)} or a module path inside the model "
            f"(e.g. backbone.body.layer4.2.conv3), got {cfg.gradcam_layer!r}"
        )
    if cfg.head == "tv_classifier":
        bare = cfg.name[len(TV_PREFIX) :] if cfg.name.startswith(TV_PREFIX) else ""
        if not bare.startswith(TV_CLASSIFIER_PREFIXES):
            raise ConfigError(
                f"{where}.head: tv_classifier keeps a torchvision classifier; it needs tv:alexnet or tv:vgg*, "
                f"got '{cfg.name}' (for timm models use linear, mlp128...)"
            )
    spec = model_spec(cfg.name)
    if spec is not None:
        if resolution is not None and spec.check is not None:
            spec.check(cfg, int(resolution), where)
        if spec.heads is not None and cfg.head not in spec.heads:
            raise ConfigError(
                f"{where}.head: {cfg.name} only takes head {', '.join(spec.heads)}, got '{cfg.head}'"
            )
        if not spec.stem and cfg.stem != "none":
            raise ConfigError(f"{where}.stem: {cfg.name} cannot take stem '{cfg.stem}'; set stem: none")
        if cfg.pretrained is True and not spec.pretrained_hub:
            raise ConfigError(
                f"{where}.pretrained: {cfg.name} has no published weights; set pretrained: false"
                + (" or a local weights file" if spec.pretrained_file else "")
            )
        if isinstance(cfg.pretrained, str) and not spec.pretrained_file:
            raise ConfigError(f"{where}.pretrained: {cfg.name} takes no weights file; set pretrained: false")
    if isinstance(cfg.pretrained, str):
        p = Path(cfg.pretrained).expanduser()
        if not p.exists():
            raise ConfigError(
                f"{where}.pretrained: weights path {p} does not exist; give a .pth/.pt/.bin/.safetensors file "
                "or a folder holding model.safetensors or pytorch_model.bin (true = download from the hub)"
            )


#: ``ModelConfig.gradcam_layer`` choices besides a module path (see :mod:`lungray.models.gradcam`)
GRADCAM_LAYERS = ("auto", "last_conv")


def input_channels(cfg: "ModelConfig") -> int:
    """Channels a model takes from the data: 3 for ``input_mode: repeat3``, else 1.

    With ``repeat3`` the data pipeline repeats the gray image into 3 channels and normalises
    each with its own statistics (ImageNet's per-channel mean/std, as torchvision's
    ``Normalize`` did in sections 3-4); a stem or the autoencoder then takes 3 channels, as the
    Keras studies' 256x256x3 inputs did (section 1's 224 + 219 stem weights, 10,714 autoencoder
    weights). ``logreg`` always reads the gray image.
    """
    return 3 if cfg.input_mode == "repeat3" and cfg.name != "logreg" else 1
