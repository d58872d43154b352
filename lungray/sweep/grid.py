"""The study grid as data: trials, resources per trial, and the resource preflight.

Everything here is pure (no Ray, no torch): the grid is expanded from a
:class:`~lungray.config.StudyConfig`, a trial's resource request is computed from
``resources``, and :func:`preflight` checks the request against a :class:`ClusterSpec`
(a plain description of the nodes a cluster has now or can autoscale to) before any data is
read or any trial is started. A grid that can never be scheduled is refused with the reason,
instead of sitting PENDING forever in Ray Tune (issue 6: "A resource preflight refuses a grid
that can never be scheduled").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Optional, Sequence

from lungray.config import StudyConfig, TrialConfig
from lungray.errors import ConfigError

#: The grid axes, in the order of :meth:`StudyConfig.trials` (model x size x optimizer x seed).
AXES = ("model", "train_size", "optimizer", "seed")

_EPS = 1e-9


# --------------------------------------------------------------------------------------------
# The grid
# --------------------------------------------------------------------------------------------


def trial_key(model: str, train_size: int, optimizer: str, seed: int) -> str:
    """The grid coordinates of a trial as one string (used to look a trial up from Tune's params)."""
    return f"{model}|n={int(train_size)}|{optimizer}|seed={int(seed)}"


def trial_uid(trial: TrialConfig, lr_sampled: bool = False) -> str:
    """A stable, filesystem- and MLflow-safe id for a trial, derived from its grid coordinates.

    It names the trial's MLflow find-or-create tag, its Ray Train run (``train-<uid>``) and its
    directory. Being a function of the grid (not of Tune's random trial ids), a trial keeps its
    id even if a killed driver never saved Tune's experiment state: the restarted sweep finds
    the same MLflow run, the same Train checkpoints and the same finished result. With the
    learning-rate search the sampled rate is part of the id.
    """
    import hashlib
    import re

    key = trial_key(trial.arm, trial.train_size, trial.optimizer.key, trial.seed)
    if lr_sampled:
        key += f"|lr={trial.optimizer.lr:.6g}"
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", f"{trial.arm}_n{trial.train_size}_{trial.optimizer.key}_s{trial.seed}").strip("-")
    if lr_sampled:
        slug += f"_lr{trial.optimizer.lr:.3g}"
    return f"{slug[:80]}-{hashlib.sha1(key.encode()).hexdigest()[:6]}"


def trial_lookup(cfg: StudyConfig) -> dict[str, TrialConfig]:
    """``trial_key(...) -> TrialConfig`` for every trial of the grid."""
    return {
        trial_key(t.arm, t.train_size, t.optimizer.key, t.seed): t for t in cfg.trials()
    }


def param_space_axes(cfg: StudyConfig) -> dict[str, list[Any]]:
    """The values of each grid axis, as Ray Tune ``grid_search`` lists.

    Model and optimizer axes hold their ``key`` (label), so Tune's trial table and the trial
    directory names show ``resnet50[layer3+4]`` rather than an opaque index. With several
    ``variants`` the model axis holds the arms (``alexnet@clahe``: model x variant).
    """
    return {
        "model": list(dict.fromkeys(t.arm for t in cfg.trials())),
        "train_size": [int(n) for n in cfg.sizes],
        "optimizer": [o.key for o in cfg.optimizers],
        "seed": [int(s) for s in cfg.seeds],
    }


def trial_from_params(lookup: Mapping[str, TrialConfig], params: Mapping[str, Any]) -> TrialConfig:
    """The :class:`TrialConfig` of one Tune trial, from its ``config`` dict.

    With the optional learning-rate search, Tune samples ``lr`` per trial; it replaces the
    optimizer's learning rate (the cell keeps its optimizer label, so cells still group).
    """
    key = trial_key(params["model"], params["train_size"], params["optimizer"], params["seed"])
    try:
        trial = lookup[key]
    except KeyError:
        raise ConfigError(
            f"trial {key} is not part of this study's grid; was the study config changed "
            "under a running sweep?"
        ) from None
    if params.get("lr") is not None:
        trial = replace(trial, optimizer=replace(trial.optimizer, lr=float(params["lr"])))
    return trial


@dataclass(frozen=True)
class LrSearch:
    """The optional learning-rate search inside each grid cell (off by default).

    A training-size study wants fixed budgets, so this is off unless ``lr_search`` is set in
    the study config: ``{"samples": 4, "low": 1e-5, "high": 1e-2, "asha": false,
    "grace_period": 2}``. ``samples`` learning rates are drawn log-uniformly per cell (Tune's
    ``num_samples`` repeats the whole grid); with ``asha: true`` an ASHA scheduler stops poor
    learning rates early on ``val_loss``.
    """

    samples: int = 4
    low: float = 1e-5
    high: float = 1e-2
    asha: bool = False
    grace_period: int = 2


def lr_search_spec(cfg: StudyConfig) -> Optional[LrSearch]:
    """Parse and check ``cfg.lr_search``; ``None`` when off."""
    d = cfg.lr_search
    if not d:
        return None
    valid = ("samples", "low", "high", "asha", "grace_period")
    unknown = sorted(set(d) - set(valid))
    if unknown:
        raise ConfigError(
            f"unknown config key {', '.join('lr_search.' + k for k in unknown)}; "
            f"valid keys under lr_search: {', '.join(valid)}"
        )
    try:
        spec = LrSearch(
            samples=int(d.get("samples", 4)),
            low=float(d.get("low", 1e-5)),
            high=float(d.get("high", 1e-2)),
            asha=bool(d.get("asha", False)),
            grace_period=int(d.get("grace_period", 2)),
        )
    except (TypeError, ValueError) as e:
        raise ConfigError(f"lr_search: {e}; expected samples:int, low/high: numbers") from None
    if spec.samples < 1:
        raise ConfigError(f"lr_search.samples must be >= 1, got {spec.samples}")
    if not 0 < spec.low < spec.high:
        raise ConfigError(f"lr_search needs 0 < low < high, got low={spec.low}, high={spec.high}")
    if spec.grace_period < 1:
        raise ConfigError(f"lr_search.grace_period must be >= 1, got {spec.grace_period}")
    return spec


def n_trials(cfg: StudyConfig) -> int:
    """Number of trials Tune will run (grid size x learning-rate samples)."""
    spec = lr_search_spec(cfg)
    grid = len(cfg.models) * len(cfg.variants) * len(cfg.sizes) * len(cfg.optimizers) * len(cfg.seeds)
    return grid * (spec.samples if spec else 1)


# --------------------------------------------------------------------------------------------
# Resources
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialResources:
    """What one trial asks Ray for.

    Through Ray Train (``ray_train``): a near-empty Tune trial plus ``workers`` Train workers.
    The trial function only drives its ``TorchTrainer`` and holds ``trial_cpu`` (0.01 by
    default); the CPUs and GPUs sit on the workers. Measured on Ray 2.60 (issue 6): two trials
    holding a whole CPU each with 1-CPU workers deadlock a 2-CPU machine, 0.01 + 0.99 does not.

    In the Tune trial (``ray_train`` false, one worker): the trial process trains, so it holds
    the one worker's CPUs and GPUs itself and there is no separate driver share.
    """

    trial_cpu: float
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    ray_train: bool = True

    @property
    def worker_bundle(self) -> dict[str, float]:
        """Ray Train's ``resources_per_worker``: CPU and GPU stated together (it replaces the default CPU)."""
        return {"CPU": float(self.cpus_per_worker), "GPU": float(self.gpus_per_worker)}

    @property
    def trial_bundle(self) -> dict[str, float]:
        """``tune.with_resources`` of the trial function."""
        if self.ray_train:
            return {"cpu": float(self.trial_cpu)}
        return {"cpu": float(self.cpus_per_worker), "gpu": float(self.gpus_per_worker)}

    @property
    def total(self) -> dict[str, float]:
        driver = self.trial_cpu if self.ray_train else 0.0
        return {
            "CPU": driver + self.workers * self.cpus_per_worker,
            "GPU": self.workers * self.gpus_per_worker,
        }

    def describe(self) -> str:
        w = f"{self.workers} worker{'s' if self.workers != 1 else ''} x {_num(self.cpus_per_worker)} CPU"
        if self.gpus_per_worker:
            w += f" + {_num(self.gpus_per_worker)} GPU"
        if not self.ray_train:
            return f"{w}, trained in the Tune trial (no Ray Train; use_ray_train=true to force it)"
        return f"{w} through Ray Train (+{_num(self.trial_cpu)} CPU for the trial driver)"


def trial_resources(cfg: StudyConfig) -> TrialResources:
    r = cfg.resources
    return TrialResources(
        trial_cpu=float(r.trial_cpu),
        workers=int(r.workers),
        cpus_per_worker=float(r.cpus_per_worker),
        gpus_per_worker=float(r.gpus_per_worker),
        ray_train=r.ray_train,
    )


def _num(x: float) -> str:
    return f"{x:g}"


# --------------------------------------------------------------------------------------------
# The cluster and the preflight
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeSpec:
    """One node (or one autoscaling node type) of a cluster."""

    name: str
    cpu: float
    gpu: float = 0.0
    count: int = 1  # nodes of this kind up now (or the most the autoscaler may launch)
    autoscaled: bool = False  # True: not up yet, the autoscaler can launch up to ``count``


@dataclass(frozen=True)
class ClusterSpec:
    """What a cluster has now and what it can scale to (a plain, testable description)."""

    nodes: tuple[NodeSpec, ...]
    source: str = "local machine"

    @property
    def cpu(self) -> float:
        return sum(n.cpu * n.count for n in self.nodes)

    @property
    def gpu(self) -> float:
        return sum(n.gpu * n.count for n in self.nodes)

    def describe(self) -> str:
        parts = []
        for n in self.nodes:
            what = f"{_num(n.cpu)} CPU" + (f", {_num(n.gpu)} GPU" if n.gpu else "")
            pre = f"up to {n.count} x " if n.autoscaled else (f"{n.count} x " if n.count != 1 else "")
            parts.append(f"{n.name}: {pre}{what}")
        return f"{self.source}: " + "; ".join(parts)

    @classmethod
    def from_ray_nodes(cls, nodes: Iterable[Mapping[str, Any]], source: str = "Ray cluster") -> "ClusterSpec":
        """From ``ray.nodes()`` (alive nodes only)."""
        out = []
        for i, n in enumerate(nodes):
            if not n.get("Alive", True):
                continue
            res = n.get("Resources", {})
            name = n.get("NodeManagerAddress") or f"node{i}"
            out.append(NodeSpec(name=str(name), cpu=float(res.get("CPU", 0)), gpu=float(res.get("GPU", 0))))
        return cls(nodes=tuple(out), source=source)

    def with_autoscaling(self, autoscaling_config: Mapping[str, Any]) -> "ClusterSpec":
        """Add the worker node types an autoscaler may still launch (from a cluster YAML)."""
        types = autoscaling_config.get("available_node_types") or {}
        head = autoscaling_config.get("head_node_type")
        global_max = int(autoscaling_config.get("max_workers", 0) or 0)
        extra = []
        for name, t in types.items():
            if name == head:
                continue
            res = t.get("resources") or {}
            max_w = int(t.get("max_workers", global_max) or 0)
            if global_max:
                max_w = min(max_w, global_max)
            if max_w <= 0:
                continue
            extra.append(
                NodeSpec(name=str(name), cpu=float(res.get("CPU", 0)), gpu=float(res.get("GPU", 0)), count=max_w, autoscaled=True)
            )
        if not extra:
            return self
        return ClusterSpec(nodes=self.nodes + tuple(extra), source=f"{self.source} + autoscaling")


def _worker_slots(node: NodeSpec, res: TrialResources) -> int:
    """How many Train workers of ``res`` fit on one node."""
    slots = []
    if res.cpus_per_worker > 0:
        slots.append(math.floor(node.cpu / res.cpus_per_worker + _EPS))
    if res.gpus_per_worker > 0:
        if res.gpus_per_worker > 1:
            slots.append(math.floor(node.gpu / res.gpus_per_worker + _EPS))
        else:
            # fractional GPUs pack within one GPU: 0.25 -> 4 per GPU
            slots.append(int(math.floor(node.gpu + _EPS)) * math.floor(1 / res.gpus_per_worker + _EPS))
    return max(0, min(slots)) if slots else 0


@dataclass(frozen=True)
class Preflight:
    """The verdict: how many trials can run at once, and why."""

    max_concurrent_trials: int
    capacity: int  # trials that fit at once on the cluster (at full autoscaled size)
    resources: TrialResources
    cluster: ClusterSpec
    notes: tuple[str, ...] = field(default_factory=tuple)


def preflight(cfg: StudyConfig, cluster: ClusterSpec, n_total: Optional[int] = None) -> Preflight:
    """Refuse a grid that can never be scheduled; derive ``max_concurrent_trials``.

    A trial can run when each of its ``workers`` Train workers fits on some node (CPU and GPU
    of one worker are never split across nodes) and the trial driver's ``trial_cpu`` fits
    next to them. Capacity counts how many whole trials fit across the cluster at once
    (autoscaled node types counted at their ``max_workers``); ``max_concurrent_trials`` is
    that capacity (or the configured value) capped by the number of trials.

    Raises:
        ConfigError: naming the resource, what a trial needs and what the cluster has.
    """
    res = trial_resources(cfg)
    n_total = n_total if n_total is not None else n_trials(cfg)
    notes: list[str] = []
    if not cluster.nodes:
        raise ConfigError("the Ray cluster reports no alive nodes; start Ray (ray start --head) or check --address")
    if res.gpus_per_worker > 0 and cluster.gpu <= 0:
        raise ConfigError(
            f"resources.gpus_per_worker={_num(res.gpus_per_worker)}: a trial needs "
            f"{_num(res.gpus_per_worker * res.workers)} GPU but the cluster has no GPU "
            f"({cluster.describe()}); set resources.gpus_per_worker=0 to train on CPU or add GPU "
            "worker nodes (cluster.yaml)"
        )
    slots = [(n, _worker_slots(n, res)) for n in cluster.nodes]
    if not any(s > 0 for _, s in slots):
        need = f"{_num(res.cpus_per_worker)} CPU" + (f" + {_num(res.gpus_per_worker)} GPU" if res.gpus_per_worker else "")
        biggest = max(cluster.nodes, key=lambda n: (n.gpu, n.cpu))
        raise ConfigError(
            f"resources: one Train worker needs {need} on a single node but the largest node has "
            f"{_num(biggest.cpu)} CPU, {_num(biggest.gpu)} GPU ({cluster.describe()}); lower "
            "resources.cpus_per_worker/gpus_per_worker or use bigger nodes"
        )
    total_slots = sum(s * n.count for n, s in slots)
    if total_slots < res.workers:
        raise ConfigError(
            f"resources.workers={res.workers}: a trial needs {res.workers} Train workers of "
            f"{res.describe()} but the whole cluster fits only {total_slots} "
            f"({cluster.describe()}); lower resources.workers"
        )
    capacity_workers = total_slots // res.workers
    # the trial drivers' own CPU must fit next to the workers
    cpu_total = cluster.cpu
    per_trial_cpu = res.total["CPU"]
    capacity_cpu = math.floor(cpu_total / per_trial_cpu + _EPS) if per_trial_cpu > 0 else capacity_workers
    capacity = max(0, min(capacity_workers, capacity_cpu))
    if capacity < 1:
        raise ConfigError(
            f"resources: a trial needs {_num(per_trial_cpu)} CPU in total ({res.describe()}) but the "
            f"cluster has {_num(cpu_total)} CPU ({cluster.describe()}); lower resources.cpus_per_worker "
            "or resources.trial_cpu"
        )
    configured = cfg.resources.max_concurrent_trials
    if configured is not None:
        if configured < 1:
            raise ConfigError(f"resources.max_concurrent_trials must be >= 1 or null, got {configured}")
        if configured > capacity:
            notes.append(
                f"resources.max_concurrent_trials={configured} exceeds what fits at once ({capacity}); "
                "the extra trials wait in PENDING"
            )
        mct = configured
    else:
        mct = capacity
    mct = max(1, min(mct, max(1, n_total)))
    if any(n.autoscaled for n in cluster.nodes):
        notes.append("capacity counts autoscaled node types at their max_workers; they start on demand")
    return Preflight(max_concurrent_trials=mct, capacity=capacity, resources=res, cluster=cluster, notes=tuple(notes))


# --------------------------------------------------------------------------------------------
# The dry-run table
# --------------------------------------------------------------------------------------------


def grid_rows(cfg: StudyConfig) -> list[dict[str, Any]]:
    """One row per trial: grid coordinates and the resolved budget (batch, epochs, steps).

    A size of ``all`` not yet resolved against a dataset shows ``?`` for its budget.
    """
    from lungray.config import is_pool_size

    rows = []
    for i, t in enumerate(cfg.trials()):
        if is_pool_size(t.train_size):
            bs_eff, ep, steps = "?", "?", "?"
        else:
            bs, ep = cfg.schedule.resolve(t.train_size)
            bs_eff = min(bs, t.train_size)
            # schedule.steps_per_epoch: Keras-style epochs of N steps, not passes
            steps = (cfg.schedule.epoch_steps(t.train_size, bs_eff) or math.ceil(t.train_size / bs_eff)) * ep
        rows.append(
            {
                "#": i,
                "model": t.arm,
                "train_size": t.train_size,
                "optimizer": t.optimizer.key,
                "lr": t.optimizer.lr,
                "seed": t.seed,
                "batch": bs_eff,
                "epochs": ep,
                "steps": steps,
            }
        )
    return rows


def format_table(rows: Sequence[Mapping[str, Any]], columns: Optional[Sequence[str]] = None) -> str:
    """A plain fixed-width text table (no extra dependency, stable for tests and logs)."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(str(c)), *(len(row[j]) for row in cells)) for j, c in enumerate(columns)]
    line = "  ".join(str(c).ljust(w) for c, w in zip(columns, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.rjust(w) if _is_num(v) else v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join([line, sep, *body])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _is_num(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def dry_run_text(
    cfg: StudyConfig,
    pre: Optional[Preflight],
    cluster: Optional[ClusterSpec] = None,
    error: Optional[str] = None,
    checks: Sequence[str] = (),
) -> str:
    """What ``--dry-run`` prints: grid size, the trial table, resources and the cluster.

    ``error`` is what the preflight would refuse a real run for on this cluster (printed as
    what the cluster lacks: a dry run of a GPU study on a CPU laptop still shows its grid);
    ``checks`` are further lines (training sizes against the dataset, missing weights).
    """
    spec = lr_search_spec(cfg)
    n = n_trials(cfg)
    variants = f" x {len(cfg.variants)} variant(s)" if len(cfg.variants) > 1 else ""
    head = (
        f"study '{cfg.name}': {len(cfg.models)} model(s){variants} x {len(cfg.sizes)} size(s) x "
        f"{len(cfg.optimizers)} optimizer(s) x {len(cfg.seeds)} seed(s)"
    )
    if spec:
        head += f" x {spec.samples} sampled learning rate(s) in [{spec.low:g}, {spec.high:g}] -> {n} trials"
    else:
        head += f" -> {n} trials"
    lines = [head, "", format_table(grid_rows(cfg)), ""]
    res = trial_resources(cfg)
    lines.append(f"resources per trial: {res.describe()}")
    cl = pre.cluster if pre else cluster
    if cl is not None:
        lines.append(f"cluster: {cl.describe()}")
    if pre is not None:
        lines.append(f"max concurrent trials: {pre.max_concurrent_trials} (capacity {pre.capacity})")
        lines.extend(f"note: {n}" for n in pre.notes)
    if error:
        lines.append(f"cluster lacks: {error}")
        lines.append("preflight: a real run would be refused on this cluster (a dry run only reports it)")
    lines.extend(checks)
    return "\n".join(lines)
