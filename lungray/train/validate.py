"""Config-time validation of a study: every check that needs no data, before any GPU is touched.

The checks read the registries where each name lives (dataset adapters and preprocessing in
:mod:`lungray.data`, models/heads/freeze policies in :mod:`lungray.models`, tasks and their
monitors in :mod:`lungray.train.tasks`, optimizers and schedulers in
:mod:`lungray.train.optim`); model- and optimizer-specific rules are the registries' own, and
which models a task takes is the task's (:meth:`lungray.train.tasks.Task.check_model`:
classifiers through :func:`lungray.models.check_model_config`, U-Nets through
:func:`lungray.models.segmentation.check_segmentation_model_config`;
:func:`lungray.train.optim.check_optimizer_config`).

It lives in :mod:`lungray.train`, the highest layer whose registries it reads, so that
:func:`lungray.train.run_trial` validates a hand-built trial with the same rules, and
:func:`lungray.study.load_study` (one layer up) validates a whole study. Those registries import
:mod:`lungray.config` for its dataclasses; config imports none of them.

Nothing here imports torch, timm or ray for lungray's own models (a timm or torchvision name
is looked up in timm/torchvision: that is the only way to know it exists).
"""

from __future__ import annotations

from typing import Any, Sequence

from lungray.config import StudyConfig, is_pool_size
from lungray.errors import ConfigError

__all__ = ["validate_study", "one_of", "check_external_sets"]


def one_of(where: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise ``<where>: '<value>' is not valid; valid choices: ...`` unless ``value`` is a choice."""
    if value not in choices:
        raise ConfigError(f"{where}: '{value}' is not valid; valid choices: {', '.join(map(str, choices))}")


def validate_study(cfg: StudyConfig, require_data: bool = True) -> StudyConfig:
    """Every check that needs no data: names, ranges, schedules that yield zero steps; returns ``cfg``.

    ``require_data=False`` accepts a missing ``data.path`` (``--dry-run`` shows a study's grid
    before the dataset is at hand).
    """
    from lungray.data.adapters import ADAPTERS
    from lungray.data.augment import AUGMENTATIONS, NORMALIZATIONS
    from lungray.data.preprocess import check_preprocessing
    from lungray.train.optim import check_optimizer_config
    from lungray.train.tasks import TASKS

    d = cfg.data
    ADAPTERS.check(d.source)
    check_preprocessing(d.preprocess, "data.preprocess")
    one_of("data.resize", d.resize, ["stretch", "letterbox"])
    one_of("data.cache_dtype", d.cache_dtype, ["uint8", "uint16"])
    one_of("data.leakage", d.leakage, ["drop", "report", "off"])
    from lungray.data.decode import WORK_PIXELS

    top = int(WORK_PIXELS ** 0.5)  # lungray decodes at most this side: a larger resolution only upsamples
    if not 8 <= d.resolution <= top:
        raise ConfigError(
            f"data.resolution must be 8 to {top} pixels, got {d.resolution} (images are decoded at most {top} x {top} px; "
            "the paper presets use 224-256)"
        )
    if d.max_classes < 2:
        raise ConfigError(f"data.max_classes must be >= 2 (a classifier needs two classes), got {d.max_classes}")
    for k in ("eval_size", "val_size"):
        v = getattr(d, k)
        if v < 0 or (isinstance(v, float) and not v < 1 and not float(v).is_integer()):
            raise ConfigError(f"data.{k} must be a count >= 0 or a fraction in [0, 1), got {v}")
    if d.val_is_eval and d.val_size != 0:
        raise ConfigError(
            f"data.val_is_eval: the evaluation set is the validation set, so no separate one is carved out; "
            f"set data.val_size: 0 (got {d.val_size})"
        )
    if d.source == "phantom":  # every phantom knob, each error naming its data.phantom_* key
        from lungray.data.adapters import phantom_spec

        phantom_spec(d)
    for k in ("min_eval_per_class", "min_val_per_class", "max_cluster_patients"):
        if getattr(d, k) < 0:
            raise ConfigError(f"data.{k} must be >= 0, got {getattr(d, k)}")
    if not 0 < d.max_cluster_share <= 1:
        raise ConfigError(f"data.max_cluster_share must be a share in (0, 1], got {d.max_cluster_share}")
    if require_data and d.source != "phantom" and not d.path:
        raise ConfigError(
            f"data.path is required for data.source '{d.source}': pass --data PATH (or set data.path)"
        )
    one_of("data.split_unit", d.split_unit, ["group", "image"])
    if d.split_unit == "image" and d.leakage == "drop":
        raise ConfigError(
            "data.split_unit 'image' lets copies cross the split on purpose (the papers' protocol) and data.leakage 'drop' "
            "would remove them again; set data.leakage: report (counts the pairs across the split) or off"
        )
    check_external_sets(d, require_data=require_data)

    t = cfg.train
    task = TASKS.get(t.task)  # before the models and the schedule: both are the task's
    if not cfg.models:
        raise ConfigError("models: at least one model is required")
    seen = set()
    for i, m in enumerate(cfg.models):
        one_of(f"models[{i}].input_mode", m.input_mode, ["in_chans1", "repeat3"])
        if not 0 <= m.drop_rate < 1:
            raise ConfigError(f"models[{i}].drop_rate must be in [0, 1), got {m.drop_rate}")
        if m.input_size is not None and m.input_size < 8:
            raise ConfigError(f"models[{i}].input_size must be >= 8 pixels or null (data.resolution), got {m.input_size}")
        if m.normalization is not None:
            NORMALIZATIONS.check(m.normalization)
            clash = [v.key or "(the study's)" for v in cfg.variants if v.normalization is not None]
            if clash:
                raise ConfigError(
                    f"models[{i}].normalization '{m.normalization}' and the normalization of variant(s) {', '.join(clash)} "
                    "both set this model's input statistics; set it in one place"
                )
        # classifiers: name, head, freeze, stem, pretrained, resolution; U-Nets: their own rules
        task.check_model(m, f"models[{i}]", m.input_size or d.resolution)
        if m.key in seen:
            raise ConfigError(f"models[{i}]: two models are both called '{m.key}'; give one a label")
        seen.add(m.key)

    if not cfg.optimizers:
        raise ConfigError("optimizers: at least one optimizer is required")
    seen = set()
    for i, o in enumerate(cfg.optimizers):
        check_optimizer_config(o, f"optimizers[{i}]")
        if o.key in seen:
            raise ConfigError(f"optimizers[{i}]: two optimizers are both called '{o.key}'; give one a label")
        seen.add(o.key)

    if not cfg.sizes:
        raise ConfigError("sizes: at least one training size is required")
    if any(not is_pool_size(n) and (isinstance(n, str) or n < 1) for n in cfg.sizes):
        raise ConfigError(f"sizes must be positive counts or 'all' (the whole training pool), got {list(cfg.sizes)}")
    if len(set(cfg.sizes)) != len(cfg.sizes):
        raise ConfigError(f"sizes contain duplicates: {list(cfg.sizes)}")
    if not cfg.seeds:
        raise ConfigError("seeds: at least one seed is required")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError(f"seeds contain duplicates: {list(cfg.seeds)}")

    s = cfg.schedule
    one_of("schedule.rule", s.rule, ["fixed", "size", "steps"])
    if s.monitor not in task.monitors:
        raise ConfigError(
            f"schedule.monitor: '{s.monitor}' is not a validation metric of task '{task.name}'; "
            f"valid choices: {', '.join(task.monitors)}"
        )
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
    if s.steps_per_epoch is not None:
        from lungray.config import KERAS_BATCHES_OVER_BATCH

        k = s.steps_per_epoch
        if not ((isinstance(k, int) and not isinstance(k, bool) and k >= 1) or k == KERAS_BATCHES_OVER_BATCH):
            raise ConfigError(
                f"schedule.steps_per_epoch must be a count >= 1, null (one pass per epoch) or "
                f"'{KERAS_BATCHES_OVER_BATCH}' (study 5's code), got {k!r}"
            )
        if cfg.resources.workers > 1:
            raise ConfigError(
                f"schedule.steps_per_epoch={k!r} cuts epochs from one stream of batches that is not sharded across "
                f"DDP workers; set resources.workers: 1 (got {cfg.resources.workers}) or steps_per_epoch: null"
            )
    if s.early_stopping_patience is not None and s.early_stopping_patience < 1:
        raise ConfigError(
            f"schedule.early_stopping_patience must be >= 1 evaluation or null (off), got {s.early_stopping_patience}"
        )
    for n in cfg.sizes:
        if is_pool_size(n):
            continue  # resolved against the pool when the data is prepared
        bs, ep = s.resolve(n)
        if bs < 1 or ep < 1:
            raise ConfigError(
                f"schedule gives {ep} epochs x batch {bs} at training size {n}: zero optimisation steps; "
                "set schedule.epochs/batch_size (or size_rules/max_steps) >= 1"
            )

    one_of("train.loss", t.loss, ["auto", *task.losses])
    AUGMENTATIONS.check(t.augmentation)
    NORMALIZATIONS.check(t.normalization)
    _check_variants(cfg)
    one_of("train.imbalance", t.imbalance, ["none", "weighted_loss", "weighted_sampler"])
    one_of("train.amp", t.amp, ["auto", "bf16", "fp16", "off"])
    if not 0 <= t.label_smoothing < 1:
        raise ConfigError(f"train.label_smoothing must be in [0, 1), got {t.label_smoothing}")
    if t.eval_batch_size < 1:
        raise ConfigError(f"train.eval_batch_size must be >= 1, got {t.eval_batch_size}")
    task.check(cfg)
    _check_probes(cfg)

    from lungray.config import PROTOCOLS

    for i, pname in enumerate(cfg.protocols):
        one_of(f"protocols[{i}]", pname, PROTOCOLS)
    if len(set(cfg.protocols)) != len(cfg.protocols):
        raise ConfigError(f"protocols contain duplicates: {list(cfg.protocols)}")

    r = cfg.resources
    if r.workers < 1:
        raise ConfigError(f"resources.workers must be >= 1, got {r.workers}")
    if r.cpus_per_worker <= 0 and r.gpus_per_worker <= 0:
        raise ConfigError("resources: a worker needs some CPU or GPU (cpus_per_worker/gpus_per_worker)")
    if r.gpus_per_worker > 1 and not float(r.gpus_per_worker).is_integer():
        raise ConfigError(f"resources.gpus_per_worker above 1 must be a whole number, got {r.gpus_per_worker}")
    if not isinstance(r.use_ray_train, bool):
        one_of("resources.use_ray_train", r.use_ray_train, ["auto"])
    if r.use_ray_train is False and r.workers != 1:
        raise ConfigError(
            f"resources.use_ray_train=false runs each trial in one process but resources.workers={r.workers}: "
            "set resources.workers=1, or use_ray_train=auto/true for DDP through Ray Train"
        )
    return cfg


def _check_probes(cfg: StudyConfig) -> None:
    """``probes`` (issue 24): a fill the ablation knows, a CAM image count, and a source probe
    only beside a classification study on data that can have sites."""
    from lungray.config import SITE_TASK
    from lungray.data.ablation import FILLS
    from lungray.train.tasks import TASKS

    p = cfg.probes
    one_of("probes.fill", p.fill, list(FILLS))
    if p.cam_images < 0:
        raise ConfigError(f"probes.cam_images must be >= 0 (0: no saliency probe), got {p.cam_images}")
    if p.source:
        if cfg.train.task != "classification":
            raise ConfigError(
                f"probes.source: the source probe sits beside a classification study, and train.task is '{cfg.train.task}'; "
                "set probes.source=false"
            )
        TASKS.get(SITE_TASK).check(cfg)


def _check_variants(cfg: StudyConfig) -> None:
    """The ``variants`` axis: names exist, keys are unique, ``fixed`` statistics are given."""
    from lungray.data.augment import NORMALIZATIONS, check_fixed_stats
    from lungray.data.preprocess import check_preprocessing

    if not cfg.variants:
        raise ConfigError("variants: at least one variant is required (an empty mapping {} keeps the study's settings)")
    seen = set()
    for i, v in enumerate(cfg.variants):
        if v.preprocess is not None:
            check_preprocessing(v.preprocess, f"variants[{i}].preprocess")
        if v.normalization is not None:
            NORMALIZATIONS.check(v.normalization)
        if v.key in seen:
            raise ConfigError(f"variants[{i}]: two variants are both called '{v.key}'; give one a label")
        seen.add(v.key)
        for j, m in enumerate(cfg.models):
            t = cfg.variant_train(v, m)
            where = f"variants[{i}]" if v.key else (f"models[{j}]" if m.normalization is not None else "train")
            check_fixed_stats(t.normalization, t.norm_mean, t.norm_std, where)


#: an external set's name becomes part of MLflow keys (``ext.<name>.accuracy``) and file names
EXTERNAL_NAME = r"[A-Za-z][A-Za-z0-9_-]{0,39}"


def check_external_sets(d: Any, require_data: bool = True) -> None:
    """``data.external`` (issue 24, point 1): names, kinds and the second datasets' own settings,
    each error one line naming ``data.external[i]``. Whether a held-out site exists in a dataset
    that is not the phantom is only known once its manifest is read (:func:`lungray.data.prepare.prepare_data`,
    still before Ray starts)."""
    import re

    from lungray.data.adapters import ADAPTERS

    seen: set[str] = set()
    for i, e in enumerate(d.external):
        where = f"data.external[{i}]"
        if not re.fullmatch(EXTERNAL_NAME, str(e.name)):
            raise ConfigError(
                f"{where}.name: '{e.name}' is not valid; a letter then up to 39 letters, digits, '_' or '-' "
                "(it names MLflow keys ext.<name>.accuracy and files)"
            )
        if e.name.lower() in ("internal", "test", "eval"):
            raise ConfigError(f"{where}.name: '{e.name}' is reserved for the study's own held-out set; choose another name")
        if e.name in seen:
            raise ConfigError(f"{where}.name: two external sets are both called '{e.name}'; names must be unique")
        seen.add(e.name)
        if (e.hold_out_site is None) == (e.source is None):
            raise ConfigError(
                f"{where} ('{e.name}'): set exactly one of hold_out_site (a site of data.source held out entirely) "
                "or source (another dataset adapter)"
            )
        if e.hold_out_site is not None:
            if e.path is not None or e.class_map is not None or e.modality is not None or e.settings:
                raise ConfigError(
                    f"{where} ('{e.name}'): hold_out_site takes its images from data.source itself; "
                    "path, class_map, modality and settings belong to a source set"
                )
            if d.source == "phantom":
                sites = [f"site-{k}" for k in range(int(d.phantom_sites))]
                if e.hold_out_site not in sites:
                    raise ConfigError(
                        f"{where}.hold_out_site: '{e.hold_out_site}' is not a site of the phantom "
                        f"(data.phantom_sites {d.phantom_sites}); valid choices: {', '.join(sites)}"
                    )
            continue
        ADAPTERS.check(e.source)
        try:
            sub = e.data_config(d)
        except ConfigError as err:
            raise ConfigError(f"{where} ('{e.name}'): {err}") from None
        for k in ("resolution", "resize", "preprocess", "cache_dtype"):
            if getattr(sub, k) != getattr(d, k):
                raise ConfigError(
                    f"{where} ('{e.name}'): settings.{k} differs from data.{k}; an external set is decoded as the "
                    "study's own images are, or the model would see another input"
                )
        if sub.source == "phantom":
            from lungray.data.adapters import phantom_spec

            try:
                phantom_spec(sub)
            except ConfigError as err:
                raise ConfigError(f"{where} ('{e.name}'): {err}") from None
        elif require_data and not sub.path:
            raise ConfigError(f"{where} ('{e.name}'): path is required for source '{sub.source}'")
        elif require_data:
            from pathlib import Path

            if not Path(str(sub.path)).expanduser().exists():
                raise ConfigError(f"{where} ('{e.name}'): path {sub.path} does not exist; fix the path or remove the set")
    sites = [e.hold_out_site for e in d.external if e.hold_out_site is not None]
    if d.source == "phantom" and sites and len(set(sites)) >= int(d.phantom_sites):
        raise ConfigError(
            f"data.external holds out every site of the phantom ({', '.join(sorted(set(sites)))}): nothing is left to train on"
        )
