"""Ray connection, what the cluster has, and the cluster YAML (real and fake).

* :func:`init_ray` connects to a cluster when ``RAY_ADDRESS`` is set or ``--address`` is
  given, and otherwise lets ``ray.init()`` do its usual thing (a ``ray start`` cluster on this
  machine, else a fresh local instance, started lean: :data:`~lungray.sweep.ray_env.LOCAL_RAY_ENV`).
* :func:`cluster_spec` describes the connected cluster for the preflight, including the
  worker node types the autoscaler may still launch (read from the autoscaling config: Ray
  writes it to ``~/ray_bootstrap_config.yaml`` on the head).
* :func:`validate_cluster_yaml` runs Ray's own ``prepare_config`` + ``validate_config`` and
  lungray's rules (inbound SSH only, no stopped-node cache, MLflow bound to the internal
  address) on ``cluster.yaml``.
* :func:`fake_cluster_config` turns ``cluster.yaml``'s node types into a config for Ray's
  fake multi-node provider (``RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=...``),
  scaled to the CPUs of one machine, so the multi-node flow runs in CI.
"""

from __future__ import annotations

import copy
import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional

from lungray.errors import ConfigError
from lungray.sweep.grid import ClusterSpec, NodeSpec

BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
AUTOSCALING_CONFIG_ENV = "LUNGRAY_AUTOSCALING_CONFIG"


def resolve_address(address: Optional[str]) -> Optional[str]:
    """``--address`` wins; else ``"auto"`` when ``RAY_ADDRESS`` is set; else ``None`` (local)."""
    if address:
        return address
    if os.environ.get("RAY_ADDRESS"):
        return "auto"
    return None


def init_ray(address: Optional[str] = None, **kwargs: Any) -> bool:
    """``ray.init`` once; returns True when this call started/connected Ray (caller shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    from lungray.sweep.ray_env import LOCAL_RAY_ENV, check_temp_dir, local_init_kwargs, private_auth_token, scoped_env

    addr = resolve_address(address)
    if addr not in (None, "local"):
        _token_auth_for_existing_cluster()
        ray.init(address=addr, **kwargs)
        return True
    check_temp_dir()  # one line instead of Ray's AF_UNIX traceback
    private_auth_token(create=True)  # 0600, never the umask's 0644
    # a local instance (or a `ray start` cluster this machine runs: Ray ignores both then)
    env = {k: v for k, v in LOCAL_RAY_ENV.items() if k not in os.environ}
    with scoped_env(env):
        ray.init(address=addr, **{**local_init_kwargs(), **kwargs})
    return True


def _token_auth_for_existing_cluster() -> None:
    """Join a token-authenticated cluster without extra setup.

    Ray 2.60's ``ray start`` enables token auth by default, but a client joining it only sends
    the token when ``RAY_AUTH_MODE=token`` is set. When the user left it unset and a token is
    available (``~/.ray/auth_token``, ``$RAY_AUTH_TOKEN`` or ``$RAY_AUTH_TOKEN_PATH``), use it.
    """
    if os.environ.get("RAY_AUTH_MODE"):
        return
    token_file = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or os.path.exists(token_file):
        os.environ["RAY_AUTH_MODE"] = "token"
        try:  # Ray caches its config at import; refresh it as Ray's own token set-up does
            from ray._private.authentication.authentication_token_setup import _enable_token_auth

            _enable_token_auth()
        except ImportError:  # pragma: no cover - other Ray versions read the variable directly
            pass


def _load_yaml(path: str | os.PathLike) -> dict:
    import yaml

    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        raise ConfigError(f"cluster config {p} does not exist")
    d = yaml.safe_load(p.read_text())
    if not isinstance(d, dict):
        raise ConfigError(f"{p}: top level must be a mapping (a Ray cluster config)")
    return d


def autoscaling_config_path(explicit: Optional[str] = None) -> Optional[Path]:
    """The autoscaling config to read node types from: explicit, ``$LUNGRAY_AUTOSCALING_CONFIG``, or Ray's bootstrap file."""
    for cand in (explicit, os.environ.get(AUTOSCALING_CONFIG_ENV), BOOTSTRAP_CONFIG):
        if cand and Path(os.path.expanduser(cand)).exists():
            return Path(os.path.expanduser(cand))
    return None


def cluster_spec(autoscaling_config: Optional[str] = None) -> ClusterSpec:
    """The connected Ray cluster: alive nodes, plus autoscalable worker types when known.

    With an autoscaling config the cluster is the head node plus every worker node type at its
    ``max_workers`` (the live worker nodes are instances of those types, so they are not
    counted twice).
    """
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    path = autoscaling_config_path(autoscaling_config)
    if path is None:
        return ClusterSpec.from_ray_nodes(nodes, source="Ray cluster")
    heads = [n for n in nodes if "node:__internal_head__" in n.get("Resources", {})]
    base = ClusterSpec.from_ray_nodes(heads or nodes[:1], source=f"Ray cluster ({path.name})")
    return base.with_autoscaling(_load_yaml(path))


def local_cluster_spec() -> ClusterSpec:
    """This machine, without starting Ray (for ``--dry-run``)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    gpus = 0
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch or no driver: no GPU
        gpus = 0
    return ClusterSpec(nodes=(NodeSpec(name="local", cpu=float(cpus), gpu=float(gpus)),), source="local machine (Ray not started)")


# --------------------------------------------------------------------------------------------
# cluster.yaml
# --------------------------------------------------------------------------------------------


def validate_cluster_yaml(path: str | os.PathLike, allow_placeholders: bool = False) -> dict:
    """Ray's ``prepare_config`` + ``validate_config``, then lungray's own rules; returns the prepared config.

    ``allow_placeholders`` accepts the ``REPLACE_ME`` values of the template in the repository
    (the security group, the EFS id); a config about to be launched must have them filled in.

    Raises:
        ConfigError: one line naming the file, the key and what to change.
    """
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _load_yaml(path)
    ray_log = logging.getLogger("ray.autoscaler._private.util")
    level = ray_log.level
    ray_log.setLevel(logging.WARNING)  # "setting max workers for head node type to 0" is not for the user
    try:
        prepared = prepare_config(copy.deepcopy(raw))
        validate_config(prepared)
    except Exception as e:  # jsonschema.ValidationError, ValueError, KeyError...
        msg = getattr(e, "message", None) or str(e).splitlines()[0]
        where = "/".join(str(p) for p in getattr(e, "absolute_path", []) or [])
        raise ConfigError(f"{path}: Ray rejects the cluster config{' at ' + where if where else ''}: {msg}") from None
    finally:
        ray_log.setLevel(level)
    check_cluster_policy(prepared, path)
    if not allow_placeholders:
        import yaml

        left = sorted(set(re.findall(r"[\w.-]*REPLACE_ME[\w.-]*", yaml.safe_dump(raw))))
        if left:
            raise ConfigError(f"{path}: still has the template's placeholders {', '.join(left)}; put your security group and EFS ids there (see the comment at its top)")
    return prepared


def check_cluster_policy(cfg: Mapping[str, Any], path: Any = "cluster.yaml") -> None:
    """lungray's rules for a cluster config (on top of Ray's schema), issue 15 item 7 and issue 23
    point 3: the shell commands are read for what they do (:mod:`lungray.sweep.shell`), not
    matched by spelling."""
    from lungray.sweep import shell as SH

    prov = cfg.get("provider", {})
    if prov.get("cache_stopped_nodes", True):
        raise ConfigError(f"{path}: provider.cache_stopped_nodes must be false (stopped GPU nodes keep billing EBS and an old install)")
    ssh_cidrs: list[str] = []
    for rule in (prov.get("security_group") or {}).get("IpPermissions", []) or []:
        ports = (rule.get("FromPort"), rule.get("ToPort"))
        if ports != (22, 22):
            raise ConfigError(
                f"{path}: provider.security_group.IpPermissions opens ports {ports}; inbound must be SSH (22) only, "
                "reach the dashboard and MLflow through SSH port-forwards"
            )
        ssh_cidrs += [r.get("CidrIp", "") for r in rule.get("IpRanges", []) or []]
        ssh_cidrs += [r.get("CidrIpv6", "") for r in rule.get("Ipv6Ranges", []) or []]
    wide = SH.too_wide(ssh_cidrs) if ssh_cidrs else None
    if wide:
        raise ConfigError(f"{path}: provider.security_group.IpPermissions opens SSH to the whole internet: {wide}; allow your CIDR only")
    if prov.get("type") == "aws":
        for name, t in (cfg.get("available_node_types") or {}).items():
            if not (t.get("node_config") or {}).get("SecurityGroupIds"):
                raise ConfigError(
                    f"{path}: available_node_types.{name}.node_config has no SecurityGroupIds: the group Ray would create "
                    "opens SSH to 0.0.0.0/0; name a group that allows SSH from your CIDR only (see the comment at the top)"
                )
    types = cfg.get("available_node_types", {})
    head = cfg.get("head_node_type")
    workers = {k: v for k, v in types.items() if k != head}
    if not any((v.get("resources") or {}).get("GPU", 0) > 0 for v in workers.values()):
        raise ConfigError(f"{path}: available_node_types has no GPU worker type (resources: {{GPU: N}}); add one")
    opened: list[str] = []  # SSH ranges the commands open themselves (aws ec2 authorize-security-group-ingress)
    for key in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands"):
        for line in cfg.get(key, []) or []:
            opened += _check_command_line(str(line), key, path)
    wide = SH.too_wide(opened) if opened else None
    if wide:
        raise ConfigError(f"{path}: the commands' authorize-security-group-ingress calls: opens SSH to the whole internet: {wide}; allow your CIDR only")
    _check_mlflow_server(cfg, path)
    mounts = cfg.get("file_mounts") or {}
    if any(str(v).rstrip("/") in (".", "./") or Path(os.path.expanduser(str(v))).resolve() == Path.cwd().resolve() for v in mounts.values()):
        if ".gitignore" not in (cfg.get("rsync_filter") or []) and not any("lungray_runs" in str(x) for x in cfg.get("rsync_exclude") or []):
            raise ConfigError(
                f"{path}: file_mounts uploads the checkout with its git-ignored run folders (lungray_runs/, mlflow.db) to every node; "
                "add rsync_filter: [.gitignore] (and rsync_exclude for lungray_runs)"
            )


def _short(text: str) -> str:
    t = " ".join(str(text).split())
    return t if len(t) <= 80 else t[:77] + "..."


def _check_command_line(line: str, key: str, path: Any) -> list[str]:
    """One entry of a command list: Ray runs each in its own shell, so the umask starts at the
    login default (022) and variables do not carry over. Returns the CIDRs it opens to SSH
    (judged together with the other entries')."""
    from lungray.sweep import shell as SH

    umask = 0o022
    opened: list[str] = []
    for cmd in SH.Shell().commands(line):
        if cmd.name == "umask":
            u = SH.umask_value(cmd)
            if u is not None:
                if not u & 0o002:
                    raise ConfigError(
                        f"{path}: {key}: '{_short(' '.join(cmd.argv))}' lets every user write the files and folders created after it "
                        "(the experiment directory holds Tune's pickled state, which --resume unpickles); use umask 027"
                    )
                umask = u
            continue
        change = SH.mode_change(cmd, umask)
        if change is not None and (change[0] == 0o7777 or SH.others_can_write(change[0])):
            what = "a mode lungray cannot read" if change[0] == 0o7777 else f"mode {change[0]:04o}"
            raise ConfigError(
                f"{path}: {key}: '{_short(' '.join(cmd.argv))}' makes a folder writable by every user ({what}); the experiment "
                "directory holds Tune's pickled state, which --resume unpickles: keep it the cluster user's (0750)"
            )
        listen = SH.listen_address(cmd)
        if listen is not None:
            what, host = listen
            kind = SH.address_kind(host)
            if kind in ("all", "public") or (what.startswith("ray dashboard") and kind != "loopback"):
                where = "every interface" if kind == "all" else ("a public address" if kind == "public" else "more than this node")
                raise ConfigError(
                    f"{path}: {key} binds a server to {host or repr(host)} ({what}: {where}); bind the dashboard to 127.0.0.1 and "
                    "MLflow to the head's internal address, and reach both through SSH port-forwards"
                )
        opened += SH.ingress_cidrs(cmd)
        if cmd.name == "ray" and cmd.argv[1:2] == ("start",):
            mode = cmd.env.get("RAY_AUTH_MODE") or _exported(line, "RAY_AUTH_MODE")
            if mode != "token":
                raise ConfigError(
                    f"{path}: {key}: 'ray start' runs without RAY_AUTH_MODE=token: Ray 2.60 then accepts jobs from anyone who "
                    "reaches the node; export RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH (a 0600 token every node has) first"
                )
    return opened


def _exported(line: str, name: str) -> Optional[str]:
    from lungray.sweep import shell as SH

    sh = SH.Shell()
    for _ in sh.commands(line):
        pass
    return sh.vars.get(name)


def _check_mlflow_server(cfg: Mapping[str, Any], path: Any) -> None:
    """The head's ``mlflow server``: authenticated, reachable by its own address (MLflow 3's
    Host-header check), SQL-backed with proxied artifacts, one writer on SQLite, and an admin
    that is not the user every node holds."""
    from lungray.sweep import shell as SH

    lines = [str(x) for x in cfg.get("head_start_ray_commands", []) or []]
    found = None
    for line in lines:
        cmds = SH.Shell().commands(line)
        for i, c in enumerate(cmds):
            if SH.is_mlflow_server(c) and c.argv[1 if c.name == "mlflow" else 3] == "server":
                found = (line, c, cmds[:i])
    if found is None:
        raise ConfigError(f"{path}: head_start_ray_commands must start 'mlflow server' (SQL backend, --serve-artifacts)")
    line, cmd, before = found
    args = SH.mlflow_args(cmd)
    if "--serve-artifacts" not in args or not SH._opt(args, ["--backend-store-uri"]):
        raise ConfigError(f"{path}: 'mlflow server' needs --backend-store-uri (SQL) and --serve-artifacts")
    host = (SH.listen_address(cmd) or ("", "127.0.0.1"))[1]
    local_only = SH.address_kind(host) == "loopback"
    app = SH._opt(args, ["--app-name"])
    if not local_only and app != ["basic-auth"]:
        raise ConfigError(
            f"{path}: 'mlflow server' listens on the cluster network without authentication; "
            "run it with --app-name basic-auth (or bind it to 127.0.0.1 and reach it through an SSH tunnel)"
        )
    if not local_only:
        allowed = SH._opt(args, ["--allowed-hosts"]) or [cmd.env.get("MLFLOW_SERVER_ALLOWED_HOSTS", "")]
        entries = [e.strip() for e in ",".join(allowed).split(",") if e.strip()]
        if "*" in entries:
            raise ConfigError(f"{path}: 'mlflow server --allowed-hosts *' turns off MLflow's DNS-rebinding check; list the head's address instead")
        if not any(e == host or e.startswith(host + ":") for e in entries):
            raise ConfigError(
                f"{path}: 'mlflow server --host {host}' without --allowed-hosts naming that address: MLflow 3 answers every API "
                f"call from the cluster with 403 'Invalid Host header'; add --allowed-hosts \"{host}:PORT,localhost:*,127.0.0.1:*\""
            )
    workers = SH._opt(args, ["--workers", "-w"])
    backend = SH._opt(args, ["--backend-store-uri"])[-1]
    if backend.startswith("sqlite:") and (not workers or workers[-1] != "1"):
        raise ConfigError(f"{path}: 'mlflow server' on SQLite over NFS needs --workers 1 (one writing process); use PostgreSQL for more")
    if app == ["basic-auth"]:
        if re.search(r"MLFLOW_AUTH_ADMIN_(PASSWORD|USERNAME)=[\"']?\$\{?MLFLOW_TRACKING_(PASSWORD|USERNAME)", " ".join(lines)):
            raise ConfigError(
                f"{path}: the MLflow admin is the user of mlflow.env, whose password every node holds; keep the admin on the "
                "head and give the runs a non-admin user: run 'lungray mlflow-auth' before 'mlflow server', as cluster.yaml does"
            )
        if not any(c.name == "lungray" and c.argv[1:2] == ("mlflow-auth",) for c in before) and "MLFLOW_FLASK_SERVER_SECRET_KEY" not in cmd.env:
            raise ConfigError(
                f"{path}: 'mlflow server --app-name basic-auth' needs MLFLOW_FLASK_SERVER_SECRET_KEY (MLflow 3 refuses to start "
                "without it) and a non-admin user for the runs: run 'lungray mlflow-auth' before it, as cluster.yaml does"
            )


def fake_cluster_config(
    cluster_yaml: str | os.PathLike,
    *,
    cpus_per_worker_node: int = 1,
    head_cpus: int = 0,
    max_workers_per_type: int = 1,
    min_workers_per_type: int = 1,
    gcs_address: Optional[str] = None,
) -> dict:
    """A config for Ray's fake multi-node provider built from ``cluster.yaml``'s node types.

    Each worker node type of the real cluster becomes a fake type with the same name,
    ``cpus_per_worker_node`` CPUs and no GPU (the fake nodes are processes on this machine),
    at most ``max_workers_per_type`` nodes; the head gets ``head_cpus``. This keeps the shape
    of the cluster (one head, several worker types, autoscaled) at the size of a CI runner.
    ``gcs_address`` points fake nodes at a head on a non-default port.
    """
    real = _load_yaml(cluster_yaml)
    head = real.get("head_node_type")
    types: dict[str, Any] = {
        "ray.head.default": {"resources": {"CPU": head_cpus, "GPU": 0}, "node_config": {}, "max_workers": 0}
    }
    for name, t in real.get("available_node_types", {}).items():
        if name == head:
            continue
        types[str(name)] = {
            "resources": {"CPU": cpus_per_worker_node, "object_store_memory": 200 * 1024 * 1024},
            "node_config": {},
            "min_workers": min_workers_per_type,
            "max_workers": max_workers_per_type,
        }
    n_types = len(types) - 1
    provider: dict[str, Any] = {
        "type": "fake_multinode",
        "use_node_id_as_ip": True,
        "disable_node_updaters": True,
        "disable_launch_config_check": True,
    }
    if gcs_address:
        provider["gcs_address"] = gcs_address
    return {
        "cluster_name": f"{real.get('cluster_name', 'lungray')}-fake",
        "max_workers": max_workers_per_type * n_types,
        "provider": provider,
        "available_node_types": types,
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }
