"""One frozen, validated config tree per study.

A study is resolved from three layers, in order (Ray's ``experiment_config.py`` pattern):

1. a named preset (``smoke``, ``default``, ``paper``, ``transfer``... see :mod:`lungray.presets`);
2. an optional YAML file with the same nested keys;
3. ``a.b.c=value`` overrides from the command line (values parsed as YAML scalars/lists).

Unknown keys are rejected at every level with the list of valid keys, and every registry name
(model, head, freeze policy, optimizer, scheduler, augmentation, adapter...) is checked before
any data is read or any GPU is touched. The resolved config is printed, written next to the
results and logged to MLflow, so a run can always be reproduced from its own record.

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
class DataConfig:
    """Where images come from, how they are decoded, cached and split.

    ``source`` names a dataset adapter (``phantom``, ``folder``, ``covid_radiography``,
    ``covid_ct_xray``, ``rsna``, ``csv``, ``medmnist``). ``class_map`` maps source class names to
    study class names (e.g. 4 folders -> "COVID" vs "rest"); a source class mapped to ``null``
    is dropped.
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
    # leakage audit
    leakage: str = "drop"  # "drop" near-duplicates of eval images from the pool, "report", "off"
    leakage_max_distance: int = 6  # Hamming distance on 64-bit perceptual hashes
    strict: bool = False  # fail on any quarantined row instead of dropping it


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

    @property
    def key(self) -> str:
        return self.label or (self.name if self.scheduler == "none" else f"{self.name}+{self.scheduler}")


@dataclass(frozen=True)
class SizeRule:
    """Batch size and epochs for training sizes up to ``max_size`` (inclusive)."""

    max_size: int
    batch_size: int
    epochs: int


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
    monitor: str = "val_loss"  # "val_loss" (min) or a val metric such as "val_accuracy" (max)
    checkpoint_every: int = 1  # epochs between resumable checkpoints...
    checkpoint_min_seconds: float = 60.0  # ...but at most one per this many seconds (0 = every checkpoint_every)

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
            steps_per_epoch = math.ceil(n_train / bs)
            return bs, max(1, math.ceil(self.max_steps / steps_per_epoch))
        raise ConfigError(f"unknown schedule rule '{self.rule}'; valid choices: fixed, size, steps")


@dataclass(frozen=True)
class TrainConfig:
    """Everything about the training loop that is not the model, optimizer or budget."""

    task: str = "classification"  # "classification" now; "segmentation" later
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


@dataclass(frozen=True)
class StudyConfig:
    """A whole study: the grid model x training size x optimizer x seed, and how to run it."""

    name: str = "study"
    data: DataConfig = field(default_factory=DataConfig)
    models: tuple[ModelConfig, ...] = (ModelConfig(),)
    sizes: tuple[int, ...] = (50, 100, 200)
    optimizers: tuple[OptimizerConfig, ...] = (OptimizerConfig(),)
    seeds: tuple[int, ...] = (0, 1, 2)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    output_dir: str = "lungray_runs"
    lr_search: Optional[Mapping[str, Any]] = None  # {"samples": 4, "low": 1e-5, "high": 1e-2}; off by default
    report: bool = True

    # -- derived ---------------------------------------------------------------------------
    def validate(self) -> "StudyConfig":
        validate_study(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def fingerprint(self) -> str:
        """Hash of the grid-defining part of the config (used to refuse a changed grid on resume)."""
        d = self.to_dict()
        for k in ("output_dir", "tracking", "resources", "report"):
            d.pop(k, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def trials(self) -> list["TrialConfig"]:
        """The grid, in a stable order: model x size x optimizer x seed."""
        out = []
        for m in self.models:
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
                                train=self.train,
                            )
                        )
        return out


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

    @property
    def cell(self) -> str:
        return f"{self.model.key}|n={self.train_size}|{self.optimizer.key}"

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


def load_study(
    preset: str = "default",
    yaml_path: Optional[str | Path] = None,
    overrides: Sequence[str] = (),
    validate: bool = True,
) -> StudyConfig:
    """Resolve preset -> YAML -> overrides into a validated :class:`StudyConfig`."""
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
    cfg = from_dict(StudyConfig, d)
    if validate:
        cfg.validate()
    return cfg


def dump_yaml(cfg: Any) -> str:
    import yaml

    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# --------------------------------------------------------------------------------------------
# Validation (registries imported lazily so config stays cheap)
# --------------------------------------------------------------------------------------------


def _one_of(where: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ConfigError(f"{where}: '{value}' is not valid; valid choices: {', '.join(map(str, choices))}")


def validate_study(cfg: StudyConfig) -> None:
    """Every check that needs no data: names, ranges, schedules that yield zero steps."""
    from lungray.data.adapters import ADAPTERS
    from lungray.data.augment import AUGMENTATIONS, NORMALIZATIONS
    from lungray.data.preprocess import PREPROCESSING
    from lungray.models import FREEZE_POLICIES, HEADS, check_model_config, check_model_name
    from lungray.train.optim import OPTIMIZERS, SCHEDULERS

    d = cfg.data
    ADAPTERS.check(d.source)
    PREPROCESSING.check(d.preprocess)
    _one_of("data.resize", d.resize, ["stretch", "letterbox"])
    _one_of("data.cache_dtype", d.cache_dtype, ["uint8", "uint16"])
    _one_of("data.leakage", d.leakage, ["drop", "report", "off"])
    if d.resolution < 8:
        raise ConfigError(f"data.resolution must be >= 8 pixels, got {d.resolution}")
    for k in ("eval_size", "val_size"):
        v = getattr(d, k)
        if v < 0 or (isinstance(v, float) and not v < 1 and not float(v).is_integer()):
            raise ConfigError(f"data.{k} must be a count >= 0 or a fraction in [0, 1), got {v}")
    if d.source != "phantom" and not d.path:
        raise ConfigError(
            f"data.path is required for data.source '{d.source}': pass --data PATH (or set data.path)"
        )

    if not cfg.models:
        raise ConfigError("models: at least one model is required")
    seen = set()
    for i, m in enumerate(cfg.models):
        check_model_name(m.name)
        HEADS.check(m.head)
        FREEZE_POLICIES.check(m.freeze.split(":")[0] if m.freeze.startswith("last:") else m.freeze)
        if m.freeze.startswith("last:"):
            n = m.freeze.split(":", 1)[1]
            if not n.isdigit() or int(n) < 1:
                raise ConfigError(f"models[{i}].freeze '{m.freeze}': N in last:N must be a positive integer")
        _one_of(f"models[{i}].input_mode", m.input_mode, ["in_chans1", "repeat3"])
        _one_of(f"models[{i}].stem", m.stem, ["none", "conv8_conv3"])
        if not 0 <= m.drop_rate < 1:
            raise ConfigError(f"models[{i}].drop_rate must be in [0, 1), got {m.drop_rate}")
        check_model_config(m, f"models[{i}]")  # head/stem/pretrained combinations, weights path exists
        if m.name == "ae_encoder" and (d.resolution % 4 or d.resolution < 128):
            raise ConfigError(
                f"models[{i}]: ae_encoder needs data.resolution divisible by 4 and >= 128 (its 64x64-style "
                f"code at resolution/4 feeds a DenseNet-121, which downsamples 32x), got {d.resolution}"
            )
        if m.key in seen:
            raise ConfigError(f"models[{i}]: two models are both called '{m.key}'; give one a label")
        seen.add(m.key)

    if not cfg.optimizers:
        raise ConfigError("optimizers: at least one optimizer is required")
    seen = set()
    for i, o in enumerate(cfg.optimizers):
        OPTIMIZERS.check(o.name)
        SCHEDULERS.check(o.scheduler)
        if not o.lr > 0:
            raise ConfigError(f"optimizers[{i}].lr must be > 0, got {o.lr}")
        if o.weight_decay < 0:
            raise ConfigError(f"optimizers[{i}].weight_decay must be >= 0, got {o.weight_decay}")
        if o.scheduler == "step" and o.step_size < 1:
            raise ConfigError(f"optimizers[{i}].step_size must be >= 1, got {o.step_size}")
        if o.grad_clip is not None and not o.grad_clip > 0:
            raise ConfigError(f"optimizers[{i}].grad_clip must be > 0 or null, got {o.grad_clip}")
        if o.key in seen:
            raise ConfigError(f"optimizers[{i}]: two optimizers are both called '{o.key}'; give one a label")
        seen.add(o.key)

    if not cfg.sizes:
        raise ConfigError("sizes: at least one training size is required")
    if any(n < 1 for n in cfg.sizes):
        raise ConfigError(f"sizes must be positive counts, got {list(cfg.sizes)}")
    if len(set(cfg.sizes)) != len(cfg.sizes):
        raise ConfigError(f"sizes contain duplicates: {list(cfg.sizes)}")
    if not cfg.seeds:
        raise ConfigError("seeds: at least one seed is required")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError(f"seeds contain duplicates: {list(cfg.seeds)}")

    s = cfg.schedule
    _one_of("schedule.rule", s.rule, ["fixed", "size", "steps"])
    _one_of("schedule.monitor", s.monitor, ["val_loss", "val_accuracy", "val_balanced_accuracy", "val_macro_f1", "val_auc"])
    if s.rule == "size" and not s.size_rules:
        raise ConfigError("schedule.rule 'size' needs schedule.size_rules (max_size, batch_size, epochs)")
    if s.rule == "steps" and not (s.max_steps and s.max_steps > 0):
        raise ConfigError("schedule.rule 'steps' needs schedule.max_steps > 0")
    if s.eval_every < 1 or s.checkpoint_every < 1:
        raise ConfigError("schedule.eval_every and schedule.checkpoint_every must be >= 1")
    if not s.checkpoint_min_seconds >= 0:
        raise ConfigError(f"schedule.checkpoint_min_seconds must be >= 0 (0 = no time floor), got {s.checkpoint_min_seconds}")
    if s.rule in ("fixed", "steps") and s.batch_size < 1:
        raise ConfigError(
            f"schedule.batch_size must be >= 1, got {s.batch_size}: it gives zero optimisation steps"
        )
    if s.early_stopping_patience is not None and s.early_stopping_patience < 1:
        raise ConfigError(
            f"schedule.early_stopping_patience must be >= 1 evaluation or null (off), got {s.early_stopping_patience}"
        )
    for n in cfg.sizes:
        bs, ep = s.resolve(n)
        if bs < 1 or ep < 1:
            raise ConfigError(
                f"schedule gives {ep} epochs x batch {bs} at training size {n}: zero optimisation steps; "
                "set schedule.epochs/batch_size (or size_rules/max_steps) >= 1"
            )

    t = cfg.train
    _one_of("train.task", t.task, ["classification"])
    AUGMENTATIONS.check(t.augmentation)
    NORMALIZATIONS.check(t.normalization)
    _one_of("train.imbalance", t.imbalance, ["none", "weighted_loss", "weighted_sampler"])
    _one_of("train.amp", t.amp, ["auto", "bf16", "fp16", "off"])
    if not 0 <= t.label_smoothing < 1:
        raise ConfigError(f"train.label_smoothing must be in [0, 1), got {t.label_smoothing}")
    if t.eval_batch_size < 1:
        raise ConfigError(f"train.eval_batch_size must be >= 1, got {t.eval_batch_size}")

    r = cfg.resources
    if r.workers < 1:
        raise ConfigError(f"resources.workers must be >= 1, got {r.workers}")
    if r.cpus_per_worker <= 0 and r.gpus_per_worker <= 0:
        raise ConfigError("resources: a worker needs some CPU or GPU (cpus_per_worker/gpus_per_worker)")
    if r.gpus_per_worker > 1 and not float(r.gpus_per_worker).is_integer():
        raise ConfigError(f"resources.gpus_per_worker above 1 must be a whole number, got {r.gpus_per_worker}")
    if not isinstance(r.use_ray_train, bool):
        _one_of("resources.use_ray_train", r.use_ray_train, ["auto"])
    if r.use_ray_train is False and r.workers != 1:
        raise ConfigError(
            f"resources.use_ray_train=false runs each trial in one process but resources.workers={r.workers}: "
            "set resources.workers=1, or use_ray_train=auto/true for DDP through Ray Train"
        )


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
